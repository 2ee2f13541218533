"""Metrics against hand-computed values and scikit-learn on random data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asca_core.train import metrics as M

sk = pytest.importorskip("sklearn.metrics")


def test_average_precision_by_hand():
    # ranking: + - + -  -> precision at the positives 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    targets = np.array([1, 0, 1, 0])
    assert M.average_precision(scores, targets) == pytest.approx((1 + 2 / 3) / 2)


def test_average_precision_ties_enter_together():
    # both examples tie: one operating point with precision 1/2, recall 1
    assert M.average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)


def test_roc_auc_by_hand_with_tie():
    # positives 0.8, 0.4; negatives 0.4, 0.1 -> pairs: (0.8>0.4)=1,(0.8>0.1)=1,(0.4=0.4)=.5,(0.4>0.1)=1
    scores = np.array([0.8, 0.4, 0.4, 0.1])
    targets = np.array([1, 1, 0, 0])
    assert M.roc_auc(scores, targets) == pytest.approx(3.5 / 4)


def test_undefined_classes_are_nan_and_skipped():
    assert math.isnan(M.average_precision(np.array([0.3, 0.2]), np.array([0, 0])))
    assert math.isnan(M.roc_auc(np.array([0.3, 0.2]), np.array([1, 1])))
    probs = np.array([[0.9, 0.1, 0.2], [0.2, 0.8, 0.3]])
    targets = np.array([[1, 0, 0], [0, 1, 0]])
    assert M.mean_average_precision(probs, targets) == pytest.approx(1.0)  # class 2 skipped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n, k = 200, 7
    targets = (rng.random((n, k)) < 0.3).astype(int)
    probs = np.clip(targets * 0.3 + rng.random((n, k)) * 0.7, 0, 1)
    probs = np.round(probs, 2)  # create ties on purpose
    for c in range(k):
        assert M.average_precision(probs[:, c], targets[:, c]) == pytest.approx(
            sk.average_precision_score(targets[:, c], probs[:, c])
        )
        assert M.roc_auc(probs[:, c], targets[:, c]) == pytest.approx(sk.roc_auc_score(targets[:, c], probs[:, c]))
    assert M.mean_average_precision(probs, targets) == pytest.approx(
        sk.average_precision_score(targets, probs, average="macro")
    )
    assert M.macro_roc_auc(probs, targets) == pytest.approx(sk.roc_auc_score(targets, probs, average="macro"))


def test_padded_cmap_matches_birdclef_definition():
    rng = np.random.default_rng(3)
    targets = np.zeros((30, 5), dtype=int)
    targets[np.arange(30), rng.integers(0, 4, 30)] = 1  # class 4 never occurs
    probs = rng.random((30, 5))
    pad = np.ones((5, 5))
    expected = sk.average_precision_score(np.vstack([targets, pad]), np.vstack([probs, pad]), average="macro")
    assert M.padded_cmap(probs, targets) == pytest.approx(expected)
    # the absent class counts (AP 1 from the padding) instead of being skipped
    assert M.padded_cmap(probs, targets) != pytest.approx(M.mean_average_precision(probs, targets))


def test_compute_metrics_single_label_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]])
    targets = np.eye(3)[[0, 1, 1, 2]]
    out = M.compute_metrics(probs, targets, multi_label=False)
    assert out["acc"] == pytest.approx(0.75)
    assert out["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert out["per_class"]["precision"] == pytest.approx([0.5, 1.0, 1.0])
    assert out["per_class"]["recall"] == pytest.approx([1.0, 0.5, 1.0])
    assert out["per_class"]["support"] == [1, 2, 1]
    # class 1 scores: 0.8(+) 0.3(+,tie with neg 0.3) 0.3(-) 0.2(-) ... AP = (1 + 2/3)/2
    assert out["per_class"]["ap"][1] == pytest.approx((1 + 2 / 3) / 2)
    assert out["map"] == pytest.approx((1.0 + (1 + 2 / 3) / 2 + 1.0) / 3)
    assert out["n"] == 4


def test_compute_metrics_multi_label_threshold():
    probs = np.array([[0.9, 0.6, 0.1], [0.4, 0.2, 0.7]])
    targets = np.array([[1, 0, 0], [0, 0, 1]])
    out = M.compute_metrics(probs, targets, multi_label=True)
    assert out["confusion"] is None
    assert out["per_class"]["precision"] == [1.0, 0.0, 1.0]
    assert out["per_class"]["recall"] == [1.0, None, 1.0]  # class 1 has no positives
    assert out["acc"] == 1.0


def test_confusion_matrix_counts():
    cm = M.confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
