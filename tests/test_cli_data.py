"""``asca data check`` and ``asca demo-data`` end to end, in process and as the installed command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from asca_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
ASCA = ROOT / ".venv" / "bin" / "asca"


def _asca_command() -> list[str]:
    """The installed console script when present, else the same entry point via the module."""
    return [str(ASCA)] if ASCA.exists() else [sys.executable, "-m", "asca_core.cli"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _bad_folder(folder: Path, with_good: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.wav").write_text("plain text, not audio\n" * 10)
    t = np.arange(16000) / 16000
    sf.write(folder / "cut.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    data = (folder / "cut.wav").read_bytes()
    (folder / "cut.wav").write_bytes(data[: len(data) // 3])
    if with_good:
        sf.write(folder / "good.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    return folder


def test_check_fsdd(shared_data, capsys):
    code, out, err = _run(capsys, "data", "check", str(shared_data / "fsdd" / "labels.csv"))
    assert code == 0, err
    lines = {line.split("  ")[0]: line for line in out.splitlines()}
    assert "csv (CSV manifest)" in lines["Format"]
    assert "3,000 listed, 3,000 readable" in lines["Clips"]
    assert lines["Classes"].split()[-1] == "10"
    assert "8,000 Hz (3,000)" in lines["Sample rates"]
    assert "train 2,700, test 300" in lines["Split column"]
    assert "test 300" in lines["Splits"] and "official split column" in lines["Splits"]
    assert "min 0.14 s" in lines["Durations"] and "max 2.28 s" in lines["Durations"]
    assert "Problems      none" in out


def test_check_fsdd_json_quick(shared_data, capsys):
    code, out, _ = _run(capsys, "data", "check", str(shared_data / "fsdd"), "--json", "--quick")
    assert code == 0
    report = json.loads(out)
    assert report["format"] == "csv" and report["clips"] == 3000 and report["num_classes"] == 10
    assert report["official_split"] == {"train": 2700, "test": 300}
    assert report["classes"] == {str(d): 300 for d in range(10)}
    assert report["splits"]["test"] == 300
    assert report["splits"]["train"] + report["splits"]["val"] == 2700
    assert report["ok"] and report["problems"] == []


def test_check_fsdd_installed_command(shared_data):
    proc = subprocess.run(
        [*_asca_command(), "data", "check", str(shared_data / "fsdd" / "labels.csv")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3,000 listed, 3,000 readable" in proc.stdout
    assert "train 2,700, test 300" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_check_birdclef_sample(shared_data, capsys):
    code, out, err = _run(capsys, "data", "check", str(shared_data / "birdclef2023_sample"))
    assert code == 0, err
    assert "birdclef (BirdCLEF 2023)" in out
    assert "18 listed, 18 readable" in out
    assert "Species       5 (primary labels)" in out
    assert "7 of 18 recordings have secondary labels (8 distinct)" in out
    assert "primary abhori1, secondary blbpuf2, fotdro5, reedov1" in out
    assert "18 usable recordings of 5 species" in out
    assert "32,000 Hz (18)" in out

    code, out, _ = _run(capsys, "data", "check", str(shared_data / "birdclef2023_sample"), "--json")
    report = json.loads(out)
    assert len(report["primary_labels"]) == 5 and report["usable_clips"] == 18
    assert report["multi_label"]["secondary"]["afrgos1"] == 2
    assert report["multi_label"]["example"]["labels"] == ["abhori1", "blbpuf2", "fotdro5", "reedov1"]


def test_check_bad_files_in_process(tmp_path, capsys):
    folder = _bad_folder(tmp_path / "bad")
    code, out, err = _run(capsys, "data", "check", str(folder))
    assert code == 1
    assert "Traceback" not in err + out
    lines = out.splitlines()
    for name, reason in (
        ("empty.wav", "empty file (0 bytes)"),
        ("notes.wav", "not a readable audio file"),
        ("cut.wav", "truncated: the header declares"),
    ):
        hit = [line for line in lines if name in line]
        assert len(hit) == 1 and reason in hit[0], (name, hit)
    assert "UNUSABLE" in out


def test_check_bad_files_installed_command(tmp_path):
    folder = _bad_folder(tmp_path / "bad", with_good=True)
    env = {**os.environ, "ASCA_DEBUG": ""}
    proc = subprocess.run(
        [*_asca_command(), "data", "check", str(folder), "--json"], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    reasons = {p["file"]: p["reason"] for p in report["problems"]}
    assert set(reasons) == {"empty.wav", "notes.wav", "cut.wav", "good.wav"}
    assert reasons["good.wav"].startswith("not inside a class folder")
    assert reasons["cut.wav"].startswith("truncated")
    assert report["unreadable"] == 3 and not report["ok"]


def test_check_errors_are_one_line(tmp_path, capsys):
    code, _out, err = _run(capsys, "data", "check", str(tmp_path / "nowhere"))
    assert code == 2 and err.count("\n") == 1 and "no such file or folder" in err
    (tmp_path / "labels.csv").write_text("name,category\nx.wav,a\n")
    code, _out, err = _run(capsys, "data", "check", str(tmp_path / "labels.csv"))
    assert code == 2 and "missing columns filename, label" in err and err.count("\n") == 1


def test_demo_data_command(tmp_path, capsys):
    code, out, err = _run(capsys, "demo-data", str(tmp_path / "demo"), "--clips-per-class", "3", "--seed", "1")
    assert code == 0, err
    assert "wrote 24 clips (8 classes x 3)" in out
    assert (tmp_path / "demo" / "labels.csv").is_file()
    code, out, _ = _run(capsys, "data", "check", str(tmp_path / "demo"), "--json")
    report = json.loads(out)
    assert code == 0 and report["usable_clips"] == 24 and report["num_classes"] == 8
    assert report["official_split"] == {"train": 8, "val": 8, "test": 8}

    code, _, err = _run(capsys, "demo-data", str(tmp_path / "x"), "--clips-per-class", "0")
    assert code == 2 and "clips_per_class must be between 1 and 100000" in err


def test_help_lists_data_commands(capsys):
    code, out, _ = _run(capsys, "data")
    assert code == 0 and "check" in out
