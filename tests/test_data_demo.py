"""The built-in demo set: deterministic, labelled where the calls really are, readable as CSV."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import stft

from asca_core.data import DEMO_CLASSES, load_dataset, make_demo_dataset, resolve_data_path
from asca_core.data.demo import BACKGROUNDS, demo_dataset_path, make_clip
from asca_core.errors import DatasetError


def _rows(labels_csv: Path) -> list[dict[str, str]]:
    with open(labels_csv, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return make_demo_dataset(root, clips_per_class=5, seed=3)


def test_demo_is_deterministic(small_demo, tmp_path):
    again = make_demo_dataset(tmp_path / "again", clips_per_class=5, seed=3)
    assert again.read_bytes() == small_demo.read_bytes()
    for row in _rows(small_demo)[::7]:
        assert (again.parent / row["filename"]).read_bytes() == (small_demo.parent / row["filename"]).read_bytes()
    other = make_demo_dataset(tmp_path / "other", clips_per_class=5, seed=4)
    assert other.read_bytes() != small_demo.read_bytes()


def test_demo_layout_and_manifest(small_demo):
    assert len(DEMO_CLASSES) >= 6
    rows = _rows(small_demo)
    assert list(rows[0]) == [
        "filename",
        "label",
        "split",
        "call_start",
        "call_end",
        "f_low",
        "f_high",
        "background",
        "snr_db",
    ]
    assert Counter(r["label"] for r in rows) == dict.fromkeys(DEMO_CLASSES, 5)
    assert {r["background"] for r in rows} <= set(BACKGROUNDS)
    assert len({r["background"] for r in rows}) == 3
    snrs = [float(r["snr_db"]) for r in rows]
    assert 0 <= min(snrs) < 5 and 15 < max(snrs) <= 20
    for label in DEMO_CLASSES:
        assert Counter(r["split"] for r in rows if r["label"] == label) == {"train": 3, "val": 1, "test": 1}
    row = rows[0]
    path = small_demo.parent / row["filename"]
    assert row["filename"] == f"{row['label']}/{row['label']}_000.wav"
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 48000, "PCM_16")
    index = load_dataset(small_demo)
    assert index.classes == sorted(DEMO_CLASSES) and len(index.clips) == 40 and not index.problems


def test_calls_lie_where_the_manifest_says(small_demo):
    """In the call's band, energy inside [call_start, call_end] clearly exceeds energy outside."""
    ratios = []
    for row in _rows(small_demo):
        start, end = float(row["call_start"]), float(row["call_end"])
        assert 0.0 < start < end < 3.0
        assert 0.25 <= end - start <= 1.25
        assert 0 < float(row["f_low"]) < float(row["f_high"]) <= 8000
        wave, sr = sf.read(small_demo.parent / row["filename"], dtype="float32")
        freqs, times, z = stft(wave, sr, nperseg=512, noverlap=352)
        band = (freqs >= float(row["f_low"])) & (freqs <= float(row["f_high"]))
        energy = (np.abs(z[band]) ** 2).sum(axis=0)
        inside = (times >= start) & (times <= end)
        ratios.append(energy[inside].mean() / energy[~inside].mean())
    assert min(ratios) > 1.5, f"a call is buried or misplaced: ratio {min(ratios):.2f}"
    assert np.median(ratios) > 10


def test_calls_vary_in_pitch_and_length():
    fields = [make_clip("rising_chirp", 0, k)[1] for k in range(12)]
    lows = [f["f_low"] for f in fields]
    lengths = [f["call_end"] - f["call_start"] for f in fields]
    starts = [f["call_start"] for f in fields]
    assert max(lows) - min(lows) > 1000 and max(lengths) - min(lengths) > 0.2
    assert max(starts) - min(starts) > 1.0


def test_demo_argument_errors(tmp_path):
    with pytest.raises(DatasetError, match="clips_per_class must be between 1 and 100000, got 0"):
        make_demo_dataset(tmp_path, clips_per_class=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="exists and is not a folder"):
        make_demo_dataset(tmp_path / "file", clips_per_class=1)


def test_demo_dataset_path_generates_once(monkeypatch, tmp_path):
    monkeypatch.setenv("ASCA_CACHE_DIR", str(tmp_path))
    import asca_core.data.demo as demo

    calls = []
    real = demo.make_demo_dataset
    monkeypatch.setattr(demo, "make_demo_dataset", lambda root: calls.append(root) or real(root, clips_per_class=2))
    labels = demo_dataset_path()
    assert labels == tmp_path / "demo-v1" / "labels.csv" and labels.is_file()
    assert calls and calls[0] != labels.parent  # generated elsewhere, then renamed into place
    assert resolve_data_path("demo") == labels and len(calls) == 1  # second call reuses it
    assert load_dataset("demo").manifest == labels
    assert [p.name for p in tmp_path.iterdir()] == ["demo-v1"]  # no temporary folder left
    assert resolve_data_path("some/folder") == Path("some/folder")
