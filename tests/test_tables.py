"""Thresholds, detections and the tables Raven Pro and Audacity read, parsed back; the Classify
page's downloads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from fixtures_runs import PICO_CONFIG, PICO_LABELS, write_run
from streamlit.testing.v1 import AppTest

from asca_core import tables
from asca_core.cli import main
from asca_core.config import Config
from asca_core.inference import Prediction, TimelineWindow

ROOT = Path(__file__).resolve().parents[1]
BIRD = "birdclef2023_sample/train_audio/abethr1/XC363501.ogg"


def _prediction(rows: list[list[float]], labels=("a", "b"), window=3.0, hop=1.5) -> Prediction:
    probs = np.asarray(rows, dtype=np.float32)
    timeline = [TimelineWindow(i * hop, i * hop + window, p) for i, p in enumerate(probs)]
    return Prediction(
        source="rec.wav",
        duration=timeline[-1].end,
        labels=list(labels),
        top=[],
        probs=probs.max(0),
        probs_max=probs.max(0),
        probs_mean=probs.mean(0),
        timeline=timeline,
        window=window,
        hop=hop,
    )


def test_choose_threshold_reaches_the_precision_with_the_most_recall():
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    positive = np.array([1, 1, 1, 0, 1, 0, 0, 1], bool)
    best = tables.choose_threshold(scores, positive, 0.8)
    # at 0.6: 4 of 5 taken are positive (0.8) with recall 4/5; lower thresholds fall below 0.8
    assert best == {
        "threshold": 0.6,
        "precision": 0.8,
        "recall": 0.8,
        "positives": 5,
        "reached": True,
        "source": "validation",
    }
    assert tables.choose_threshold(scores, positive, 1.0)["threshold"] == 0.8
    unreachable = tables.choose_threshold(np.array([0.9, 0.2]), np.array([False, True]), 0.9)
    assert not unreachable["reached"] and unreachable["threshold"] == 0.2 and unreachable["precision"] == 0.5
    none = tables.choose_threshold(scores, np.zeros(8, bool), 0.9)
    assert none["threshold"] == tables.FALLBACK_THRESHOLD and none["positives"] == 0
    tied = tables.choose_threshold(np.array([0.5, 0.5, 0.5]), np.array([1, 0, 0], bool), 0.3)
    assert tied["threshold"] == 0.5 and tied["precision"] == pytest.approx(1 / 3)


def test_detections_merge_overlapping_windows_per_class():
    pred = _prediction([[0.9, 0.1], [0.8, 0.7], [0.2, 0.9], [0.1, 0.1], [0.95, 0.1]])
    found = tables.detections(pred, {"a": 0.5, "b": 0.6})
    assert [(d.label, d.start, d.end, d.score) for d in found] == [
        ("a", 0.0, 4.5, pytest.approx(0.9)),  # windows 0-3 s and 1.5-4.5 s overlap: one call
        ("b", 1.5, 6.0, pytest.approx(0.9)),
        ("a", 6.0, 9.0, pytest.approx(0.95)),
    ]
    assert tables.detections(pred, {"a": 0.99, "b": 0.99}) == []


def test_raven_and_audacity_tables_parse_back(tmp_path):
    found = tables.detections(
        _prediction([[0.9, 0.1], [0.2, 0.8], [0.1, 0.1]], labels=("song\tthrush", "b")), {"song\tthrush": 0.5, "b": 0.5}
    )
    raven = tables.write_raven(tmp_path / "rec.selections.txt", found, 50.0, 8000.0)
    rows = list(csv.DictReader(raven.open(newline=""), delimiter="\t"))
    assert list(rows[0]) == [
        "Selection",
        "View",
        "Channel",
        "Begin Time (s)",
        "End Time (s)",
        "Low Freq (Hz)",
        "High Freq (Hz)",
        "Label",
        "Score",
    ]
    assert [r["Selection"] for r in rows] == ["1", "2"]
    assert {r["View"] for r in rows} == {"Spectrogram 1"} and {r["Channel"] for r in rows} == {"1"}
    assert [(float(r["Begin Time (s)"]), float(r["End Time (s)"])) for r in rows] == [(0.0, 3.0), (1.5, 4.5)]
    assert rows[0]["Label"] == "song thrush" and float(rows[1]["Score"]) == pytest.approx(0.8)
    assert float(rows[0]["Low Freq (Hz)"]) == 50.0 and float(rows[0]["High Freq (Hz)"]) == 8000.0
    audacity = tables.write_audacity(tmp_path / "rec.labels.txt", found)
    lines = [line.split("\t") for line in audacity.read_text().splitlines()]
    assert [(float(a), float(b), c) for a, b, c in lines] == [(0.0, 3.0, "song thrush"), (1.5, 4.5, "b")]
    csv_rows = list(csv.DictReader(tables.write_detections(tmp_path / "d.csv", found).open()))
    assert list(csv_rows[0]) == ["file", "start", "end", "label", "score"] and len(csv_rows) == 2
    doc = json.loads(tables.write_detections(tmp_path / "d.json", found).read_text())
    assert doc["detections"][1] == {"file": "rec.wav", "start": 1.5, "end": 4.5, "label": "b", "score": 0.8}
    assert tables.raven_text([], 0, 1).splitlines() == ["\t".join(tables.RAVEN_COLUMNS)]


def test_thresholds_on_the_validation_split_are_stored_in_the_run(tiny_run, capsys):
    assert main(["thresholds", str(tiny_run), "--precision", "0.8"]) == 0
    out = capsys.readouterr().out
    record = json.loads((tiny_run / "thresholds.json").read_text())
    labels = json.loads((tiny_run / "labels.json").read_text())
    assert record["precision_target"] == 0.8 and record["split"] == "val" and record["clips"] > 0
    assert list(record["classes"]) == labels
    for name, entry in record["classes"].items():
        assert 0.0 <= entry["threshold"] <= 1.0 and name in out
        if entry["positives"]:
            assert entry["source"] == "validation"
            assert entry["reached"] == (entry["precision"] >= 0.8)
    assert tables.run_thresholds(tiny_run) == record  # stored: not computed again
    assert main(["thresholds", str(tiny_run), "--precision", "1.5"]) == 2
    assert "--precision must be in (0, 1]" in capsys.readouterr().err


def test_a_run_whose_data_is_gone_falls_back_to_one_threshold(tmp_path):
    cfg = Config.from_dict({**PICO_CONFIG, "data": {"path": str(tmp_path / "moved-away")}})
    run = write_run(tmp_path / "run", cfg, PICO_LABELS)
    record = tables.run_thresholds(run)
    assert set(tables.thresholds_by_label(record).values()) == {tables.FALLBACK_THRESHOLD}
    assert "validation data unavailable" in record["note"]


def test_predict_writes_tables_for_a_real_recording(tiny_run, shared_data, tmp_path, capsys):
    args = [
        "predict",
        str(tiny_run),
        str(shared_data / BIRD),
        "--threshold",
        "0.05",
        "--raven",
        str(tmp_path / "raven"),
        "--audacity",
        str(tmp_path / "aud"),
        "--detections",
        str(tmp_path / "all.csv"),
    ]
    assert main(args) == 0
    capsys.readouterr()
    rows = list(csv.DictReader((tmp_path / "raven" / "XC363501.selections.txt").open(), delimiter="\t"))
    labels = json.loads((tiny_run / "labels.json").read_text())
    assert rows and all(r["Label"] in labels for r in rows)
    assert all(0 <= float(r["Begin Time (s)"]) < float(r["End Time (s)"]) <= 18.8 for r in rows)
    marks = (tmp_path / "aud" / "XC363501.labels.txt").read_text().splitlines()
    assert len(marks) == len(rows)
    detected = list(csv.DictReader((tmp_path / "all.csv").open()))
    assert len(detected) == len(rows) and all(float(r["score"]) >= 0.05 for r in detected)
    assert main(["predict", str(tiny_run), str(shared_data / BIRD), "--detections", str(tmp_path / "x.txt")]) == 2
    assert "must end in .csv or .json" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main(["predict", str(tiny_run), str(shared_data / BIRD), "--raven", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err.strip().endswith("is a file: give a folder")


def test_classify_page_offers_the_tables_and_the_onnx_file(shared_data, runs_root, tiny_run):
    pytest.importorskip("onnxruntime")
    at = AppTest.from_file(str(ROOT / "workbench" / "pages" / "classify.py"), default_timeout=240)
    at.run()
    at.segmented_control(key="cls_source").set_value("File on this machine").run()
    at.text_input(key="cls_path").input(str(shared_data / BIRD)).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    buttons = {b.proto.label: b for b in at.get("download_button")}
    assert {"Raven selection table", "Audacity labels", "Detections CSV"} <= set(buttons)
    at.toggle(key="cls_onnx").set_value(True).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    buttons = {b.proto.label: b for b in at.get("download_button")}
    assert "Download ONNX (zip)" in buttons
    assert any("ONNX opset 17" in c.value for c in at.caption)
    assert {p.name for p in (tiny_run / "export").iterdir()} == {
        "model.onnx",
        "labels.json",
        "thresholds.json",
        "config.yaml",
        "export.json",
    }


class _Loudness(torch.nn.Module):
    """A stand-in model whose every class scores the window's mean log-Mel level."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return spec.flatten(1).mean(1, keepdim=True).repeat(1, self.classes)  # (B, K)


def test_generated_call_is_detected_where_it_is(tiny_run, tmp_path):
    """A 30 s recording, silent but for a chirp from 12 to 15 s: through the real front end,
    windowing and merging, the one detection spans exactly the windows that overlap the call."""
    from asca_core.inference import Classifier

    trained = Classifier.from_run(tiny_run)
    clf = Classifier(_Loudness(len(trained.labels)), trained.cfg, trained.labels)
    sr = clf.sample_rate
    wave = np.zeros(30 * sr, dtype=np.float32)
    t = np.arange(3 * sr) / sr
    wave[12 * sr : 15 * sr] = 0.5 * np.sin(2 * np.pi * (1500 + 800 * t) * t)
    path = tmp_path / "burst.wav"
    sf.write(path, wave, sr, subtype="FLOAT")
    pred = clf.predict(path)
    scores = pred.timeline_array()[:, 0]
    limit = (scores.min() + scores.max()) / 2
    found = tables.detections(pred, dict.fromkeys(pred.labels, limit))
    assert {d.label for d in found} == set(pred.labels)
    overlapping = [w for w in pred.timeline if w.start < 15 and w.end > 12]
    for d in found:
        assert d.start >= overlapping[0].start and d.end <= overlapping[-1].end
        assert d.start < 15 and d.end > 12 and d.score == pytest.approx(scores.max())
    assert len(found) == len(pred.labels)  # one detection per class: its windows merged
