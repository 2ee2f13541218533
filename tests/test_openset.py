"""Open-set scoring: score values, calibration on a run's validation split, "none of these", bad files."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from audio_factory import write_noise
from fixtures_runs import write_run
from train_factory import make_tiny_data, tiny_config

from asca_core.cli import main
from asca_core.data.demo import DEMO_CLASSES
from asca_core.errors import AscaError, CheckpointError
from asca_core.openset import (
    NONE_LABEL,
    OPENSET_FILE,
    OpenSet,
    StaleOpenSetWarning,
    calibrate_openset,
    load_openset,
    read_openset,
    threshold_for,
    unknown_score,
    validation_logits,
)

LOGITS = np.array(
    [
        [10.0, 0.0, 0.0],  # one class, confidently
        [1.0, 1.0, 1.0],  # every class a little
        [0.0, 0.0, 0.0],  # nothing
        [-5.0, -6.0, -7.0],  # less than nothing
    ]
)


# ------------------------------------------------------------------------------ the scores


def test_softmax_scores_have_their_closed_form_values():
    ln3 = math.log(3.0)
    energy = unknown_score(LOGITS, "energy", "softmax")
    lse0 = 10.0 + math.log(1.0 + 2.0 * math.exp(-10.0))
    assert energy == pytest.approx([-lse0, -(1.0 + ln3), -ln3, -(-5.0 + math.log(1 + math.exp(-1) + math.exp(-2)))])
    assert unknown_score(LOGITS, "max_logit", "softmax") == pytest.approx([-10.0, -1.0, 0.0, 5.0])
    p0 = 1.0 / (1.0 + 2.0 * math.exp(-10.0))
    p3 = 1.0 / (1.0 + math.exp(-1) + math.exp(-2))
    assert unknown_score(LOGITS, "max_prob", "softmax") == pytest.approx([-p0, -1 / 3, -1 / 3, -p3])


def test_every_score_ranks_a_confident_window_as_the_most_known():
    for kind in ("energy", "max_logit", "max_prob"):
        for activation in ("softmax", "sigmoid"):
            values = unknown_score(LOGITS, kind, activation)
            assert values.shape == (4,) and values.dtype == np.float64
            assert int(np.argmin(values)) == 0, (kind, activation)
    # energy and max-logit see how large the logits are, max-prob only how peaked the softmax is
    energy = unknown_score(LOGITS, "energy", "softmax")
    assert energy[1] < energy[2] < energy[3]
    max_prob = unknown_score(LOGITS, "max_prob", "softmax")
    assert max_prob[1] == pytest.approx(max_prob[2]) and max_prob[3] < max_prob[2]


def test_sigmoid_scores_are_joint_energy_and_the_best_probability():
    softplus = np.log1p(np.exp(LOGITS))
    assert unknown_score(LOGITS, "energy", "sigmoid") == pytest.approx(-softplus.sum(axis=1))
    assert unknown_score(LOGITS, "max_prob", "sigmoid") == pytest.approx(-1.0 / (1.0 + np.exp(-LOGITS.max(axis=1))))
    # sigmoid energy counts every confident class: two present classes are more known than one
    two = unknown_score(np.array([[8.0, 8.0, -8.0], [8.0, -8.0, -8.0]]), "energy", "sigmoid")
    assert two[0] < two[1]


def test_huge_logits_give_finite_scores_without_warnings():
    huge = np.array([[1000.0, -1000.0], [-1000.0, -1000.0], [-1e6, 3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind in ("energy", "max_logit", "max_prob"):
            for activation in ("softmax", "sigmoid"):
                values = unknown_score(huge, kind, activation)
                assert np.isfinite(values).all(), (kind, activation, values)
    assert unknown_score(huge, "max_prob", "sigmoid") == pytest.approx([-1.0, -0.0, -1 / (1 + math.exp(-3))])


def test_one_row_gives_a_scalar_and_bad_logits_are_one_error():
    single = unknown_score(np.array([2.0, 0.0]), "max_logit")
    assert np.ndim(single) == 0 and float(single) == -2.0
    with pytest.raises(AscaError, match="unknown open-set score 'entropy'"):
        unknown_score(LOGITS, "entropy")
    with pytest.raises(AscaError, match="unknown activation"):
        unknown_score(LOGITS, "energy", "relu")
    with pytest.raises(AscaError, match="shape"):
        unknown_score(np.zeros((2, 0)))
    with pytest.raises(AscaError, match="shape"):
        unknown_score(np.zeros((2, 3, 4)))
    with pytest.raises(AscaError, match="NaN"):
        unknown_score(np.array([[0.0, math.nan]]))


def test_threshold_keeps_the_known_rate_of_scores():
    values = np.arange(1.0, 21.0)[::-1]  # 20 scores, unsorted
    assert threshold_for(values, 0.95) == 19.0  # 19 of 20 at or below
    assert threshold_for(values, 1.0) == 20.0
    assert threshold_for(values, 0.5) == 10.0
    assert threshold_for(values, 0.01) == 1.0
    assert threshold_for(np.array([3.0]), 0.95) == 3.0
    for rate in (0.0, 1.5, -1.0, True, "0.9"):
        with pytest.raises(AscaError, match="known-rate"):
            threshold_for(values, rate)  # type: ignore[arg-type]
    with pytest.raises(AscaError, match="no validation clips"):
        threshold_for(np.zeros(0), 0.95)


def test_openset_flags_windows_above_its_threshold():
    openset = OpenSet("max_logit", threshold=-0.5, known_rate=0.95, checkpoint_sha=None, labels=["a", "b", "c"])
    assert openset.is_unknown(LOGITS).tolist() == [False, False, True, True]
    assert openset.scores(LOGITS) == pytest.approx([-10.0, -1.0, 0.0, 5.0])
    with pytest.raises(AscaError, match="finite"):
        OpenSet("energy", threshold=math.inf, known_rate=0.95, checkpoint_sha=None, labels=["a"])


# -------------------------------------------------------------------- calibration on a run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 2-epoch asca_pico run on the 48-clip demo set (8 classes, 1 validation clip each)."""
    from asca_core.train.engine import fit

    root = tmp_path_factory.mktemp("openset")
    data = make_tiny_data(root / "data")
    cache = tmp_path_factory.getbasetemp() / "asca-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASCA_CACHE_DIR", str(cache))
        result = fit(tiny_config(data, "train.loss=ce"), root / "run", progress=False)
    assert result["state"] == "finished", result
    return root / "run"


def test_calibration_writes_openset_json_and_reloads_it(tiny_run):
    logits, targets, labels, activation = validation_logits(tiny_run)
    assert logits.shape == targets.shape == (8, 8) and sorted(labels) == sorted(DEMO_CLASSES)
    assert activation == "softmax" and targets.sum(axis=0).tolist() == [1.0] * 8  # one clip of each class
    openset = calibrate_openset(tiny_run, score="energy", known_rate=0.75)
    values = unknown_score(logits, "energy", "softmax")
    assert openset.threshold == pytest.approx(np.sort(values)[5])  # 6 of 8 clips at or below
    assert openset.clips == 8 and openset.labels == labels
    assert np.mean(values <= openset.threshold) >= 0.75
    record = json.loads((tiny_run / OPENSET_FILE).read_text())
    assert record["format"] == "asca-openset/1" and record["score"] == "energy" and record["split"] == "val"
    assert record["threshold"] == openset.threshold and record["checkpoint_sha256"] == openset.checkpoint_sha
    back = load_openset(tiny_run)
    assert back is not None
    assert (back.score, back.threshold, back.known_rate, back.labels, back.activation) == (
        "energy",
        openset.threshold,
        0.75,
        labels,
        "softmax",
    )
    assert back.to_dict() == record  # a stored calibration survives a round trip unchanged
    # the classifier of the run picks it up and marks windows above it
    from asca_core.inference import Classifier

    clf = Classifier.from_run(tiny_run)
    assert clf.openset is not None and clf.openset.threshold == openset.threshold
    pred = clf.predict((0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32))
    assert pred.openset_score == "energy" and pred.unknown_score is not None
    assert pred.unknown == (pred.unknown_score > openset.threshold)
    assert pred.label == (NONE_LABEL if pred.unknown else pred.best_class)
    # calibrating again with another score replaces the file
    calibrate_openset(tiny_run, score="max_prob")
    assert load_openset(tiny_run).score == "max_prob"  # type: ignore[union-attr]


def test_a_calibration_of_another_checkpoint_version_is_not_used(tiny_run, tmp_path):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run")
    calibrate_openset(run)
    assert load_openset(run) is not None
    with pytest.raises(CheckpointError, match="other classes"):
        load_openset(run, labels=list(reversed(load_openset(run).labels)))  # type: ignore[union-attr]
    write_run(tmp_path / "other", tiny_config(tmp_path / "unused.csv"), DEMO_CLASSES, seed=7)
    shutil.copy(tmp_path / "other" / "checkpoints" / "best.safetensors", run / "checkpoints" / "best.safetensors")
    with pytest.warns(StaleOpenSetWarning, match="another version"):
        assert load_openset(run) is None
    assert load_openset(tmp_path / "no-such-run") is None
    (run / OPENSET_FILE).unlink()
    assert load_openset(run) is None  # never calibrated: no open-set scores, no error


def test_calibration_needs_validation_clips_and_a_good_score(tiny_run, tmp_path):
    with pytest.raises(AscaError, match="unknown open-set score"):
        calibrate_openset(tiny_run, score="entropy")
    with pytest.raises(AscaError, match="known-rate"):
        calibrate_openset(tiny_run, known_rate=0)
    data = make_tiny_data(tmp_path / "data")  # its split column, with the validation clips moved to training
    rows = list(csv.DictReader(data.open()))
    with data.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "split": "train" if r["split"] == "val" else r["split"]} for r in rows)
    run = write_run(tmp_path / "run", tiny_config(data, "data.val_fraction=0"), DEMO_CLASSES)
    with pytest.raises(AscaError, match="no validation clips"):
        calibrate_openset(run)
    assert not (run / OPENSET_FILE).exists()


# --------------------------------------------------------------------- damaged openset.json

GOOD = {
    "format": "asca-openset/1",
    "score": "energy",
    "threshold": -3.5,
    "known_rate": 0.95,
    "activation": "softmax",
    "checkpoint": "best",
    "checkpoint_sha256": None,
    "clips": 8,
    "labels": ["a", "b"],
}


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ("", "not valid JSON"),
        (json.dumps({**GOOD, "format": "other/1"}), "not an open-set calibration"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "threshold"}), "'threshold' must be a finite number"),
        (json.dumps({**GOOD, "threshold": "low"}), "'threshold' must be a finite number"),
        (json.dumps({**GOOD, "threshold": True}), "'threshold' must be a finite number"),
        ('{"format": "asca-openset/1", "labels": ["a"], "threshold": NaN}', "'threshold' must be a finite number"),
        (json.dumps({**GOOD, "labels": []}), "'labels' must be a non-empty list"),
        (json.dumps({**GOOD, "labels": [1, 2]}), "'labels' must be a non-empty list"),
        (json.dumps({**GOOD, "score": "entropy"}), "unknown open-set score"),
        (json.dumps({**GOOD, "activation": "tanh"}), "unknown activation"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "activation"}), "unknown activation"),
        (json.dumps({**GOOD, "known_rate": 2}), "known-rate"),
        (json.dumps({**GOOD, "known_rate": None}), "known-rate"),
        (json.dumps({**GOOD, "clips": -1}), "'clips' must be a non-negative integer"),
        (json.dumps({**GOOD, "checkpoint_sha256": 5}), "'checkpoint_sha256' must be a string"),
        (json.dumps({**GOOD, "checkpoint": ["best"]}), "'checkpoint' must be a string"),
    ],
)
def test_a_damaged_openset_json_is_one_checkpoint_error(tmp_path, text, message):
    path = tmp_path / OPENSET_FILE
    path.write_text(text)
    with pytest.raises(CheckpointError, match=message) as info:
        read_openset(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_binary_or_folder_openset_json_is_one_error(tmp_path):
    binary = tmp_path / "binary" / OPENSET_FILE
    binary.parent.mkdir()
    binary.write_bytes(b"\x00\x01\x02")
    with pytest.raises(CheckpointError, match="binary"):
        read_openset(binary)
    folder = tmp_path / "folder" / OPENSET_FILE
    folder.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="folder"):
        read_openset(folder)


def test_prediction_with_a_damaged_openset_json_stops_with_one_line(pico_run, tmp_path, capsys):
    import shutil

    run = shutil.copytree(pico_run, tmp_path / "run")
    (run / OPENSET_FILE).write_text('{"format": "asca-openset/1", "score": "energy"')
    clip = write_noise(tmp_path / "noise.wav", seconds=1.0)
    assert main(["predict", str(run), str(clip)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "openset.json is not valid JSON" in err[0] and "Traceback" not in err[0]
