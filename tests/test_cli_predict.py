"""``asca predict``: tables, JSON, CSV timeline, and one clear line per unreadable file."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from fixtures_runs import PICO_LABELS

from asca_core.cli import main

SR = 16000


def _asca(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ASCA_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "asca_core.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_files")
    rng = np.random.default_rng(0)
    short = root / "short.wav"
    sf.write(short, (0.2 * rng.standard_normal(SR)).astype(np.float32), SR)
    minute = root / "minute.flac"
    t = np.arange(60 * SR) / SR
    sf.write(minute, (0.2 * rng.standard_normal(t.size) * (0.3 + np.abs(np.sin(t / 5)))).astype(np.float32), SR)
    broken = root / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return {"short": short, "minute": minute, "broken": broken, "missing": root / "missing.ogg"}


@pytest.mark.slow
def test_sixty_second_recording_prints_a_timeline(pico_run, files):
    proc = _asca("predict", str(pico_run), str(files["minute"]), "--top-k", "2")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].startswith(f"{files['minute']}  (60.00 s, 119 windows of 1 s")
    assert out[1].split() == ["rank", "label", "prob"] and len(out) == 2 + 2 + 2 + 119
    assert "timeline (window 1 s, hop 0.5 s):" in out[4]
    rows = [line.split() for line in out[6:]]
    assert [float(r[0]) for r in rows] == pytest.approx(np.arange(119) * 0.5)
    assert float(rows[-1][1]) == pytest.approx(60.0)
    assert all(r[2] in PICO_LABELS and 0.0 < float(r[3]) < 1.0 for r in rows)


def test_one_window_file_prints_no_timeline(pico_run, files, capsys):
    assert main(["predict", str(pico_run), str(files["short"]), "--top-k", "9"]) == 0
    out = capsys.readouterr().out
    assert "timeline" not in out
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == len(PICO_LABELS)


@pytest.mark.slow
def test_unreadable_files_give_one_line_each_and_the_rest_is_scored(pico_run, files, tmp_path):
    csv_path = tmp_path / "timeline.csv"
    proc = _asca(
        "predict",
        str(pico_run),
        str(files["broken"]),
        str(files["short"]),
        str(files["missing"]),
        "--window",
        "0.5",
        "--hop",
        "0.25",
        "--timeline-csv",
        str(csv_path),
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("asca predict: error: ") and "broken.wav" in errors[0]
    assert "missing.ogg" in errors[1] and "not found" in errors[1]
    assert str(files["short"]) in proc.stdout and "timeline (window 0.5 s, hop 0.25 s)" in proc.stdout
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 3 and {r["source"] for r in rows} == {str(files["short"])}
    assert list(rows[0]) == ["source", "start", "end", *PICO_LABELS]


@pytest.mark.slow
def test_only_bad_file_exits_2_with_one_line(pico_run, files):
    proc = _asca("predict", str(pico_run), str(files["broken"]))
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_json_output_for_machines(pico_run, files, capsys):
    code = main(["predict", str(pico_run), str(files["short"]), str(files["broken"]), "--json", "--top-k", "2"])
    captured = capsys.readouterr()
    assert code == 2
    doc = json.loads(captured.out)
    assert doc["labels"] == PICO_LABELS and doc["checkpoint"] == "best"
    (pred,) = doc["predictions"]
    assert pred["source"] == str(files["short"]) and len(pred["top"]) == 2
    assert pred["activation"] == "sigmoid" and len(pred["timeline"]) == 1
    assert doc["errors"][0]["file"] == str(files["broken"]) and "broken.wav" in doc["errors"][0]["error"]
    assert "broken.wav" in captured.err


@pytest.mark.slow
def test_bad_run_directory_is_one_line(tmp_path, files):
    proc = _asca("predict", str(tmp_path / "no_run"), str(files["short"]))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"asca predict: error: run directory not found: {tmp_path / 'no_run'}"]


def test_last_checkpoint_and_bad_arguments(pico_run, files, capsys):
    assert main(["predict", str(pico_run), str(files["short"]), "--checkpoint", "last"]) == 0
    assert main(["predict", str(pico_run), str(files["short"]), "--top-k", "0"]) == 2
    assert "--top-k must be >= 1" in capsys.readouterr().err
