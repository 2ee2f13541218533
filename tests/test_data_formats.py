"""Dataset formats on real recordings (FSDD, BirdCLEF 2023 sample) and generated layouts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asca_core.data import Clip, DatasetIndex, detect_format, load_dataset
from asca_core.errors import DatasetError


def _wav(path: Path, freq: float = 1000.0, seconds: float = 0.5, sample_rate: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sample_rate)
    return path


def _csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


# ------------------------------------------------------------------------------ folder-per-class


def test_folder_per_class(tmp_path):
    for label, n in (("dog", 3), ("cat", 2)):
        for k in range(n):
            _wav(tmp_path / label / f"{label}{k}.wav", freq=300 + 100 * k)
    _wav(tmp_path / "cat" / "nested" / "deep.WAV")  # nested, upper-case extension
    (tmp_path / "cat" / "notes.txt").write_text("not audio")
    (tmp_path / ".hidden").mkdir()
    _wav(tmp_path / ".hidden" / "x.wav")

    assert detect_format(tmp_path) == "folder"
    index = load_dataset(tmp_path)
    assert index.format == "folder"
    assert index.classes == ["cat", "dog"]
    assert index.label_counts() == {"cat": 3, "dog": 3}
    assert not index.multi_label and not index.problems
    assert {c.path.name for c in index.clips if c.label == "cat"} == {"cat0.wav", "cat1.wav", "deep.WAV"}


def test_folder_loose_files_are_not_labelled(tmp_path):
    _wav(tmp_path / "a" / "1.wav")
    _wav(tmp_path / "b" / "1.wav")
    _wav(tmp_path / "loose.wav")
    index = load_dataset(tmp_path, "folder")
    assert len(index.clips) == 2
    assert [p.name for p in index.unlabelled] == ["loose.wav"]
    assert index.problems == [("loose.wav", "not inside a class folder (expected ROOT/<label>/file)")]


# ----------------------------------------------------------------------------------- CSV manifest


def test_csv_manifest_multilabel_fold_and_meta(tmp_path):
    for name in ("a.wav", "b.flac", "sub/c.wav", "d.wav"):
        _wav(tmp_path / "audio" / name)
    manifest = _csv(
        tmp_path / "meta.csv",
        [
            ["filename", "label", "fold", "group", "site"],
            ["audio/a.wav", "bird", "1", "rec1", "north"],
            ["audio/b.flac", "bird;rain", "2", "rec1", "south"],
            ["audio/sub/c.wav", " rain ", "2", "rec2", ""],
            [str((tmp_path / "audio" / "d.wav").resolve()), "wind", "3", "", "east"],  # absolute inside
        ],
    )
    assert detect_format(manifest) == "csv"
    index = load_dataset(manifest)
    assert index.format == "csv" and index.manifest == manifest
    assert index.classes == ["bird", "rain", "wind"]
    assert index.multi_label
    by_name = {c.path.name: c for c in index.clips}
    assert by_name["b.flac"].labels == ("bird", "rain")
    assert by_name["c.wav"].labels == ("rain",)
    assert [by_name[n].fold for n in ("a.wav", "b.flac", "c.wav", "d.wav")] == [1, 2, 2, 3]
    assert by_name["a.wav"].group == "rec1" and by_name["d.wav"].group is None
    assert by_name["a.wav"].meta == {"site": "north"}
    assert by_name["b.flac"].path == (tmp_path / "audio" / "b.flac").resolve()
    assert not index.problems


def test_csv_split_names_are_normalised(tmp_path):
    rows = [["filename", "label", "split"]]
    for k, split in enumerate(["train", "Valid", "validation", "dev", "TEST", ""]):
        _wav(tmp_path / f"{k}.wav")
        rows.append([f"{k}.wav", "x" if k % 2 else "y", split])
    index = load_dataset(_csv(tmp_path / "labels.csv", rows))
    assert [c.split for c in index.clips] == ["train", "val", "val", "val", "test", None]
    # a folder holding labels.csv is read through its manifest
    assert detect_format(tmp_path) == "csv"
    assert len(load_dataset(tmp_path).clips) == 6


def test_fsdd_manifest(shared_data):
    index = load_dataset(shared_data / "fsdd" / "labels.csv")
    assert index.format == "csv"
    assert len(index.clips) == 3000
    assert index.classes == [str(d) for d in range(10)]
    assert set(index.label_counts().values()) == {300}
    assert sum(c.split == "test" for c in index.clips) == 300
    clip = next(c for c in index.clips if c.path.name == "7_jackson_32.wav")
    assert clip.labels == ("7",) and clip.meta["speaker"] == "jackson" and clip.split == "train"
    assert clip.path.is_file()
    assert not index.problems


# ------------------------------------------------------------------------------ malformed CSVs


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty manifest"),
        (b"   \n\n", "empty manifest"),
        (b"file,category\na.wav,x\n", "missing columns filename, label"),
        (b"filename,split\na.wav,train\n", "missing column label"),
        (b"filename,label\n", "header but no rows"),
        (b"filename,label\na.wav,x,extra\n", "line 2 has 3 fields"),
        (b"filename,label\n\xff\xfe.wav,x\n", "not UTF-8"),
        (b"filename,label,split\na.wav,x,holdout\n", "unknown split 'holdout'"),
        (b"filename,label,fold\na.wav,x,one\n", "fold must be an integer"),
        (b"filename,label\na.wav,\n", "empty label"),
        (b"filename,label,label\na.wav,x,y\n", "duplicate column label"),
    ],
)
def test_malformed_csv_raises_one_line(tmp_path, content, message):
    _wav(tmp_path / "a.wav")
    manifest = tmp_path / "labels.csv"
    manifest.write_bytes(content)
    with pytest.raises(DatasetError) as info:
        load_dataset(manifest)
    text = str(info.value)
    assert message in text and str(manifest) in text and "\n" not in text


def test_unknown_duplicate_and_escaping_rows_become_problems(tmp_path):
    root = tmp_path / "ds"
    _wav(root / "a.wav")
    _wav(root / "b.wav")
    _wav(tmp_path / "outside.wav")
    manifest = _csv(
        root / "labels.csv",
        [
            ["filename", "label"],
            ["a.wav", "x"],
            ["missing.wav", "x"],
            ["a.wav", "x"],  # exact duplicate
            ["b.wav", "y"],
            ["b.wav", "z"],  # same file, another label: merged
            ["../outside.wav", "y"],
            [str((tmp_path / "outside.wav").resolve()), "y"],
            ["notes.txt", "x"],
        ],
    )
    index = load_dataset(manifest)
    assert [c.path.name for c in index.clips] == ["a.wav", "b.wav"]
    assert index.clips[1].labels == ("y", "z") and index.multi_label
    reasons = dict()
    for file, reason in index.problems:
        reasons.setdefault(file, []).append(reason)
    assert reasons["missing.wav"] == ["file not found (labels.csv line 3)"]
    assert "duplicate row (line 4 repeats line 2)" in reasons["a.wav"][0]
    assert "labels merged as y;z" in reasons["b.wav"][0]
    assert reasons["../outside.wav"][0].startswith("outside the dataset root")
    assert reasons[str((tmp_path / "outside.wav").resolve())][0].startswith("outside the dataset root")
    assert reasons["notes.txt"][0].startswith("unsupported file type .txt")
    assert len(index.problems) == 6


# ------------------------------------------------------------------------------------- BirdCLEF


def test_birdclef_sample(shared_data):
    root = shared_data / "birdclef2023_sample"
    assert detect_format(root) == "birdclef"
    assert detect_format(root / "train_metadata.csv") == "birdclef"
    index = load_dataset(root)
    assert index.format == "birdclef" and len(index.clips) == 18
    primaries = {c.label for c in index.clips}
    assert primaries == {"abethr1", "abhori1", "abythr1", "helgui", "subbus1"}
    by_name = {c.path.name: c for c in index.clips}
    # row: abhori1,"['blbpuf2', 'fotdro5', 'reedov1']",['song'],...,abhori1/XC127317.ogg
    clip = by_name["XC127317.ogg"]
    assert clip.labels == ("abhori1", "blbpuf2", "fotdro5", "reedov1")
    assert clip.meta["secondary_labels"] == ["blbpuf2", "fotdro5", "reedov1"]
    assert clip.meta["type"] == ["song"] and clip.meta["rating"] == 3.5
    assert clip.meta["author"] == "David Moyer" and "NonCommercial" in clip.meta["license"]
    assert by_name["XC363504.ogg"].meta["type"] == ["call", "song"]
    assert by_name["XC128013.ogg"].labels == ("abethr1",)  # secondary_labels == []
    assert index.multi_label
    secondary = {"afdfly1", "afrgos1", "blbpuf2", "combul2", "fotdro5", "rbsrob1", "reedov1", "rindov"}
    assert index.classes == sorted(primaries | secondary)
    assert all(c.path.is_file() and c.path.parent.parent.name == "train_audio" for c in index.clips)


def _birdclef(tmp_path: Path, secondary: str) -> Path:
    _wav(tmp_path / "train_audio" / "sp1" / "XC1.ogg")
    return _csv(
        tmp_path / "train_metadata.csv",
        [
            ["primary_label", "secondary_labels", "type", "rating", "filename"],
            ["sp1", secondary, "['call']", "4.0", "sp1/XC1.ogg"],
        ],
    )


def test_birdclef_secondary_labels_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    _birdclef(tmp_path, f"__import__('pathlib').Path({str(marker)!r}).touch()")
    with pytest.raises(DatasetError, match="secondary_labels is not a list literal"):
        load_dataset(tmp_path)
    assert not marker.exists()


def test_birdclef_secondary_must_be_list_of_names(tmp_path):
    _birdclef(tmp_path, "[1, 2]")
    with pytest.raises(DatasetError, match="must be a list of names"):
        load_dataset(tmp_path)


# -------------------------------------------------------------------------------------- ESC-50


def _esc50(root: Path) -> Path:
    rows = [["filename", "fold", "target", "category", "esc10", "src_file", "take"]]
    for fold in range(1, 6):
        for cat, target in (("dog", 0), ("rain", 10), ("crow", 9)):
            for take in "AB":
                name = f"{fold}-{100 * target + fold}-{take}-{target}.wav"
                _wav(root / "audio" / name, freq=200 + 50 * target, seconds=0.2)
                rows.append([name, str(fold), str(target), cat, str(cat == "dog"), str(100 * target + fold), take])
    return _csv(root / "meta" / "esc50.csv", rows)


def test_esc50_layout(tmp_path):
    csv_path = _esc50(tmp_path)
    assert detect_format(tmp_path) == "esc50"
    assert detect_format(csv_path) == "esc50"
    for index in (load_dataset(tmp_path), load_dataset(csv_path)):
        assert index.format == "esc50" and len(index.clips) == 30
        assert index.classes == ["crow", "dog", "rain"]
        clip = next(c for c in index.clips if c.path.name == "3-3-B-0.wav")
        assert clip.labels == ("dog",) and clip.fold == 3 and clip.group == "3"
        assert clip.meta == {"target": "0", "esc10": True, "src_file": "3", "take": "B"}
        assert clip.path == (tmp_path / "audio" / "3-3-B-0.wav").resolve()


# ----------------------------------------------------------------------------------- detection


def test_detect_format_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        detect_format(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DatasetError, match="not a dataset"):
        detect_format(tmp_path / "x.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no audio files"):
        load_dataset(empty)
    with pytest.raises(DatasetError, match="unknown dataset format 'kaggle'"):
        load_dataset(tmp_path, "kaggle")


def test_index_subset_keeps_classes(tmp_path):
    clips = [Clip(path=tmp_path / f"{i}.wav", labels=(lab,)) for i, lab in enumerate("aab")]
    index = DatasetIndex(root=tmp_path, format="csv", clips=clips, classes=["a", "b"], multi_label=False, problems=[])
    sub = index.subset([2])
    assert sub.classes == ["a", "b"] and [c.label for c in sub.clips] == ["b"]
    assert sub.label_counts() == {"a": 0, "b": 1}
