"""Probing files and whole datasets: every broken file named with its reason."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from asca_core.data import check_dataset, filter_readable, load_dataset, probe_file


def _wav(path, seconds=1.0, sample_rate=16000, freq=440.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sample_rate)
    return path


def _truncated(path, keep=0.4):
    _wav(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is a text file, not audio\n" * 20)
    _truncated(folder / "truncated.wav")
    return folder


@pytest.mark.parametrize("deep", [True, False])
def test_probe_names_each_problem(tmp_path, deep):
    make_bad_files(tmp_path)
    assert probe_file(_wav(tmp_path / "good.wav"), deep) is None
    assert probe_file(tmp_path / "empty.wav", deep) == "empty file (0 bytes)"
    assert probe_file(tmp_path / "text.wav", deep).startswith("not a readable audio file")
    reason = probe_file(tmp_path / "truncated.wav", deep)
    assert reason.startswith("truncated: the header declares 32000 bytes of audio, the file holds")
    assert probe_file(tmp_path / "missing.wav", deep) == "file not found"


def test_probe_header_only_and_truncated_flac(tmp_path):
    good = _wav(tmp_path / "good.wav").read_bytes()
    (tmp_path / "header_only.wav").write_bytes(good[:44])
    assert "header" in probe_file(tmp_path / "header_only.wav")
    flac = _wav(tmp_path / "long.flac", seconds=4.0)
    data = flac.read_bytes()
    flac.write_bytes(data[: len(data) // 2])
    assert probe_file(flac, deep=True) is not None  # the end the header promises is missing


def test_filter_readable_reports_skipped(tmp_path):
    make_bad_files(tmp_path / "a")
    _wav(tmp_path / "a" / "good.wav")
    _wav(tmp_path / "b" / "good.wav")
    index = load_dataset(tmp_path)
    assert len(index.clips) == 5
    usable, skipped = filter_readable(index)
    assert sorted(c.path.relative_to(tmp_path).as_posix() for c in usable.clips) == ["a/good.wav", "b/good.wav"]
    assert sorted(f for f, _ in skipped) == ["a/empty.wav", "a/text.wav", "a/truncated.wav"]
    assert usable.classes == index.classes


def test_check_report_flat_folder_of_bad_files(tmp_path):
    make_bad_files(tmp_path)
    report = check_dataset(tmp_path)
    assert report.exit_code == 1 and report.usable == 0
    reasons = dict(report.problems)
    assert reasons["empty.wav"].startswith("empty file (0 bytes)")
    assert reasons["text.wav"].startswith("not a readable audio file")
    assert reasons["truncated.wav"].startswith("truncated")
    assert report.unreadable == 3
    assert "no usable clips" in report.fatal[0]


def test_check_report_partly_usable(tmp_path):
    make_bad_files(tmp_path / "cat")
    _wav(tmp_path / "cat" / "ok.wav", freq=300)
    _wav(tmp_path / "dog" / "ok.wav", seconds=2.0, sample_rate=8000)
    report = check_dataset(tmp_path)
    assert report.ok and report.exit_code == 0
    assert (report.listed, report.usable, report.unreadable) == (5, 2, 3)
    assert report.classes == {"cat": 1, "dog": 1}
    assert report.sample_rates == {8000: 1, 16000: 1}
    assert report.durations["min"] == pytest.approx(1.0) and report.durations["max"] == pytest.approx(2.0)
    assert sum(report.splits.values()) == 2
    text = report.format_text()
    assert "cat/truncated.wav" in text and "Result" in text


def test_single_class_is_unusable(tmp_path):
    _wav(tmp_path / "only" / "a.wav")
    _wav(tmp_path / "only" / "b.wav")
    report = check_dataset(tmp_path)
    assert report.exit_code == 1 and "needs two or more" in report.fatal[0]


def test_check_esc50_fold_protocol(tmp_path):
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in (1, 2, 3):
        for cat in ("dog", "rain"):
            name = f"{fold}-{cat}-A.wav"
            _wav(tmp_path / "audio" / name, seconds=0.2)
            rows.append(f"{name},{fold},0,{cat},False,{fold}{cat},A")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    report = check_dataset(tmp_path, test_fold=2, val_fraction=0.25)
    assert report.format == "esc50" and report.folds == {1: 2, 2: 2, 3: 2}
    assert report.splits["test"] == 2 and report.ok
    assert "fold 2 of 3 is the test set" in report.split_method
