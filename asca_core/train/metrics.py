"""Classification metrics in NumPy: accuracy, mAP, ROC-AUC, BirdCLEF padded cmAP, per-class tables.

Average precision and ROC-AUC are implemented here (not borrowed) so that ties and classes
without positives behave the same everywhere: AP follows scikit-learn's step definition
(``sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds), ROC-AUC is the Mann-Whitney
statistic with averaged ranks for ties (scikit-learn's trapezoidal AUC). Classes without
positives (or, for AUC, without negatives) are left out of the macro averages.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision of one class; NaN when it has no positives.

    Shapes: scores (N,), targets (N,) in {0, 1}.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0.5
    positives = int(targets.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, targets = scores[order], targets[order]
    # one operating point per distinct score: tied examples enter together
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(targets)[last]
    predicted = last + 1
    precision = tp / predicted
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve of one class; NaN without both positives and negatives.

    Shapes: scores (N,), targets (N,) in {0, 1}.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0.5
    n_pos = int(targets.sum())
    n_neg = targets.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], values.size]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of 1-based ranks start+1..end
    return ranks


def per_class_ap(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP of each class (NaN for classes without positives). Shapes: (N, K), (N, K) -> (K,)."""
    return np.array([average_precision(probs[:, k], targets[:, k]) for k in range(probs.shape[1])])


def mean_average_precision(probs: np.ndarray, targets: np.ndarray) -> float:
    """Macro mAP over the classes that have positives; NaN if none has."""
    ap = per_class_ap(probs, targets)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def macro_roc_auc(probs: np.ndarray, targets: np.ndarray) -> float:
    """Macro ROC-AUC over the classes with both positives and negatives; NaN if none."""
    auc = np.array([roc_auc(probs[:, k], targets[:, k]) for k in range(probs.shape[1])])
    return float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan")


def padded_cmap(probs: np.ndarray, targets: np.ndarray, padding: int = 5) -> float:
    """BirdCLEF 2023 metric: append ``padding`` rows of ones to scores and targets, then macro AP.

    The padding gives every class positives, so rare or absent classes cannot be skipped.
    """
    k = probs.shape[1]
    pad = np.ones((padding, k))
    return mean_average_precision(np.vstack([probs, pad]), np.vstack([targets, pad]))


def top1_accuracy(probs: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of examples whose highest-scoring class is one of their labels."""
    if probs.shape[0] == 0:
        return float("nan")
    pred = probs.argmax(axis=1)
    return float((targets[np.arange(len(pred)), pred] > 0.5).mean())


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``C[i, j]`` of examples of class ``i`` predicted as ``j``. Shapes: (N,), (N,) -> (K, K)."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return matrix


def compute_metrics(
    probs: np.ndarray, targets: np.ndarray, multi_label: bool, threshold: float = 0.5
) -> dict[str, Any]:
    """Every metric the run store and ``asca eval`` report.

    Single-label: predictions are the argmax, targets one-hot; a confusion matrix is included.
    Multi-label: a class is predicted when its probability is at least ``threshold``; ``acc`` is
    the share of examples whose top class is one of their labels.
    Shapes: probs (N, K) in [0, 1], targets (N, K) multi-hot (soft targets are rounded at 0.5).

    Returns ``acc, map, auc, cmap, n`` (floats / int, NaN when undefined) and ``per_class``
    (lists of ``ap, precision, recall, support``), ``confusion`` (K x K list or None).
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = (np.asarray(targets, dtype=np.float64) > 0.5).astype(np.float64)
    if probs.ndim != 2 or probs.shape != targets.shape:
        raise ValueError(f"probs {probs.shape} and targets {targets.shape} must both be (N, K)")
    n, k = probs.shape
    if multi_label:
        predicted = probs >= threshold
        confusion = None
    else:
        pred = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
        predicted = np.zeros_like(probs, dtype=bool)
        predicted[np.arange(n), pred] = True
        true = targets.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
        confusion = confusion_matrix(true, pred, k).tolist()
    positive = targets > 0.5
    tp = (predicted & positive).sum(axis=0)
    n_pred = predicted.sum(axis=0)
    support = positive.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), np.nan)
        recall = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
    ap = per_class_ap(probs, targets) if n else np.full(k, np.nan)
    return {
        "n": int(n),
        "acc": top1_accuracy(probs, targets),
        "map": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        "auc": macro_roc_auc(probs, targets) if n else float("nan"),
        "cmap": padded_cmap(probs, targets) if n else float("nan"),
        "per_class": {
            "ap": _clean(ap),
            "precision": _clean(precision),
            "recall": _clean(recall),
            "support": support.astype(int).tolist(),
        },
        "confusion": confusion,
    }


def _clean(values: np.ndarray) -> list[float | None]:
    """NaN becomes None so the lists serialise as valid JSON (``null``)."""
    return [None if not np.isfinite(v) else float(v) for v in values]


__all__ = [
    "average_precision",
    "compute_metrics",
    "confusion_matrix",
    "macro_roc_auc",
    "mean_average_precision",
    "padded_cmap",
    "per_class_ap",
    "roc_auc",
    "top1_accuracy",
]
