"""Folder-scale prediction: every file scored once, bad files named and skipped, links kept
inside the folder, results streamed, and a journal that makes a rerun skip finished files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from asca_core.cli import main
from asca_core.errors import AscaError
from asca_core.inference import Classifier, ResultsJournal, audio_files

FSDD = ["0_george_0.wav", "1_jackson_3.wav", "2_lucas_7.wav", "5_nicolas_20.wav", "9_theo_41.wav"]
BIRD = ["abethr1/XC363501.ogg"]


@pytest.fixture
def folder(shared_data, tmp_path):
    """Real recordings in a folder with a subfolder, plus an empty file and a text-as-wav file."""
    root = tmp_path / "field"
    (root / "site_b").mkdir(parents=True)
    for name in FSDD[:3]:
        shutil.copy(shared_data / "fsdd" / "recordings" / name, root / name)
    for name in FSDD[3:]:
        shutil.copy(shared_data / "fsdd" / "recordings" / name, root / "site_b" / name)
    shutil.copy(shared_data / "birdclef2023_sample" / "train_audio" / BIRD[0], root / "site_b" / "bird.ogg")
    (root / "empty.wav").write_bytes(b"")
    (root / "notes.wav").write_text("not audio at all")
    (root / "readme.txt").write_text("ignored: not an audio file name")
    return root


def _asca(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ASCA_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "asca_core.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_audio_files_lists_the_folder_and_keeps_links_inside(folder, tmp_path):
    outside = tmp_path / "elsewhere.wav"
    shutil.copy(folder / FSDD[0], outside)
    (folder / "link_out.wav").symlink_to(outside)
    (folder / "link_in.wav").symlink_to(folder / FSDD[1])
    (folder / ".hidden.wav").write_bytes(b"")
    top, left_out = audio_files(folder)
    assert [p.name for p in top] == sorted([*FSDD[:3], "empty.wav", "link_in.wav", "notes.wav"])
    assert left_out == [(str(folder / "link_out.wav"), "a link leading outside the folder")]
    every, _ = audio_files(folder, recursive=True)
    assert len(every) == len(top) + 3 and folder / "site_b" / "bird.ogg" in every
    with pytest.raises(AscaError, match="is not a folder"):
        audio_files(folder / FSDD[0])


def test_predict_many_streams_and_equals_predict(pico_run, folder):
    clf = Classifier.from_run(pico_run, batch_windows=4)
    files = [folder / n for n in FSDD[:3]] + [folder / "notes.wav", folder / "site_b" / "bird.ogg"]
    results = list(clf.predict_many(files, hop=0.25))
    assert [r[0] for r in results] == files
    assert isinstance(results[3][1], AscaError) and "notes.wav" in str(results[3][1])
    for path, pred in [results[0], results[4]]:
        np.testing.assert_allclose(pred.timeline_array(), clf.predict(path, hop=0.25).timeline_array(), rtol=1e-6)
    assert len(results[4][1].timeline) > 60  # 18.7 s at a 0.25 s hop, decoded in batches of 4 windows
    gen = clf.predict_many(files * 20, hop=0.25)  # closing early stops the decoder thread
    next(gen)
    gen.close()


@pytest.mark.slow
def test_cli_scores_a_folder_names_bad_files_and_resumes(pico_run, folder, tmp_path):
    journal = tmp_path / "journal.jsonl"
    raven = tmp_path / "raven"
    args = [
        "predict",
        str(pico_run),
        str(folder),
        "--recursive",
        "--journal",
        str(journal),
        "--raven",
        str(raven),
        "--threshold",
        "0.3",
        "--detections",
        str(tmp_path / "all.json"),
    ]
    proc = _asca(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("asca predict: error: ") for e in errors)
    assert "empty.wav: empty file" in errors[0] and "notes.wav" in errors[1]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 6 and all(" s  " in line for line in lines)  # one line per scored file
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    assert len(entries) == 6 and len({e["file"] for e in entries}) == 6
    tables = sorted(p.relative_to(raven).as_posix() for p in raven.rglob("*.txt"))
    assert tables == sorted(
        [f"{n[:-4]}.selections.txt" for n in FSDD[:3]]
        + [f"site_b/{n[:-4]}.selections.txt" for n in FSDD[3:]]
        + ["site_b/bird.selections.txt"]
    )
    first = json.loads((tmp_path / "all.json").read_text())

    # A rerun scores nothing again: the finished files come from the journal, tables and all.
    shutil.rmtree(raven)
    again = _asca(*args)
    assert "6 file(s) already finished" in again.stderr
    assert len(journal.read_text().splitlines()) == 6  # nothing new appended
    assert json.loads((tmp_path / "all.json").read_text()) == first
    assert len(list(raven.rglob("*.txt"))) == 6

    # A crash mid-line leaves a torn line: dropped, the other entries still count.
    with open(journal, "ab") as f:
        f.write(b'{"file": "/half-writ')
    # A changed file is scored again; a fixed one is scored for the first time.
    shutil.copy(folder / FSDD[1], folder / FSDD[0])
    shutil.copy(folder / FSDD[2], folder / "notes.wav")
    third = _asca(*args)
    assert third.returncode == 2  # empty.wav still fails
    assert "5 file(s) already finished" in third.stderr
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    assert len(entries) == 8
    assert {os.path.basename(e["file"]) for e in entries[6:]} == {FSDD[0], "notes.wav"}


def test_journal_is_one_writer_and_checks_its_path(tmp_path):
    path = tmp_path / "j.jsonl"
    with ResultsJournal(path):
        with pytest.raises(AscaError, match="in use by another asca predict"):
            ResultsJournal(path)
    ResultsJournal(path).close()  # released on close
    with pytest.raises(AscaError, match="is a folder"):
        ResultsJournal(tmp_path)
    with pytest.raises(AscaError, match="does not exist"):
        ResultsJournal(tmp_path / "no" / "j.jsonl")


def test_cli_folder_errors_are_one_line(pico_run, tmp_path, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert main(["predict", str(pico_run), str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"asca predict: error: {empty}: no audio files in this folder (--recursive scores its subfolders)"]
    assert main(["predict", str(pico_run), str(empty), "--engine", "jax"]) == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "asca predict: error: unknown engine 'jax': choose torch or onnx"
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for sub in ("a", "b"):
        (tmp_path / sub / "x.wav").write_bytes(b"RIFF")
    assert (
        main(
            [
                "predict",
                str(pico_run),
                str(tmp_path / "a" / "x.wav"),
                str(tmp_path / "b" / "x.wav"),
                "--raven",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "would write tables of the same name" in capsys.readouterr().err


@pytest.mark.slow
def test_onnx_engine_without_an_export_is_one_line(pico_run, tmp_path):
    proc = _asca("predict", str(pico_run), str(tmp_path), "--engine", "onnx")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"asca predict: error: no ONNX model at {pico_run / 'export' / 'model.onnx'}: run asca export first"
    )
