"""``asca embed``, ``asca search`` and ``asca openset``: output, files written, one line per bad input."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_factory import write_noise
from fixtures_runs import write_run
from train_factory import make_tiny_data, tiny_config

from asca_core.cli import main
from asca_core.data.demo import DEMO_CLASSES

SR = 16000


def _tone(path: Path, freq: float, seconds: float, phase: float) -> Path:
    """A sine in faint noise (a pure sine leaves most mel bands at the log floor, where rounding rules)."""
    t = np.arange(int(seconds * SR)) / SR
    hiss = 0.005 * np.random.default_rng(int(freq + 10 * phase)).standard_normal(t.size)
    sf.write(path, (0.5 * np.sin(2 * np.pi * freq * t + phase) + hiss).astype(np.float32), SR)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_search") / "recs"
    root.mkdir()
    _tone(root / "tone_a.wav", 1000.0, 4.0, 0.0)
    _tone(root / "tone_b.wav", 1000.0, 3.0, 1.1)
    _tone(root / "high.wav", 3000.0, 3.0, 0.3)
    write_noise(root / "noise.wav", seconds=3.0, seed=2)
    return root


@pytest.fixture(scope="module")
def index(pico_run, folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli_index") / "emb"
    assert main(["embed", str(pico_run), str(folder), "--out", str(out)]) == 0
    return out


def _err_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


# ------------------------------------------------------------------------------------ embed


def test_embed_prints_what_it_stored(pico_run, folder, index, capsys):
    assert main(["embed", str(pico_run), str(folder), "--out", str(index)]) == 0  # again: nothing to redo
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("4 recording(s), 22 windows of 1 s every 0.5 s, ") and out[0].endswith(f" each: {index}")
    assert out[-1] == f"search: asca search {index} FILE --start SECONDS"
    record = json.loads((index / "index.json").read_text())
    assert [e["file"] for e in record["files"]] == ["high.wav", "noise.wav", "tone_a.wav", "tone_b.wav"]


def test_embed_writes_into_the_run_by_default_and_names_bad_files(pico_run, folder, tmp_path, capsys):
    run = shutil.copytree(pico_run, tmp_path / "run")
    recs = shutil.copytree(folder, tmp_path / "field")
    (recs / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    assert main(["embed", str(run), str(recs), "--window", "0.5", "--hop", "0.5"]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("asca embed: error:")]
    assert len(errors) == 1 and "broken.wav" in errors[0] and "Traceback" not in captured.err
    assert captured.out.startswith("4 recording(s), ") and "windows of 0.5 s every 0.5 s" in captured.out
    assert (run / "embeddings" / "field" / "index.json").is_file()


def test_embed_bad_inputs_are_one_line(pico_run, folder, tmp_path, capsys):
    assert main(["embed", str(tmp_path / "no-run"), str(folder), "--out", str(tmp_path / "e")]) == 2
    assert "run not found" in _err_line(capsys)
    assert main(["embed", str(pico_run), str(tmp_path / "nowhere")]) == 2
    assert "is not a folder of recordings" in _err_line(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["embed", str(pico_run), str(tmp_path / "empty")]) == 2
    assert "holds no audio files" in _err_line(capsys)
    assert main(["embed", str(pico_run), str(folder), "--out", str(tmp_path / "e"), "--hop", "0"]) == 2
    assert "hop must be a positive number" in _err_line(capsys)
    (tmp_path / "file").write_text("x")
    assert main(["embed", str(pico_run), str(folder), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in _err_line(capsys)


# ----------------------------------------------------------------------------------- search


def _table(out: str) -> list[list[str]]:
    lines = out.splitlines()
    assert lines[1].split() == ["rank", "similarity", "start", "end", "file"]
    return [line.split() for line in lines[2:]]


def test_search_prints_the_nearest_windows(folder, index, capsys):
    assert main(["search", str(index), str(folder / "tone_a.wav"), "--start", "1", "-k", "4"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"query: {folder / 'tone_a.wav'} 1.00-2.00 s (1 window(s)); 4 nearest of 22")
    rows = _table(out)
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    sims = [float(r[1]) for r in rows]
    assert sims == sorted(sims, reverse=True)
    for _rank, _sim, start, end, file in rows:
        assert Path(file).name in ("tone_a.wav", "tone_b.wav"), rows  # the same tone
        if Path(file).name == "tone_a.wav":  # never a window sharing time with the query
            assert float(end) <= 1.0 or float(start) >= 2.0
    # other recordings only, a recording named as in the index
    assert main(["search", str(index), "tone_a.wav", "--start", "1", "-k", "5", "--other-files"]) == 0
    rows = _table(capsys.readouterr().out)
    assert [Path(r[4]).name for r in rows] == ["tone_b.wav"] * 5


def test_search_span_and_csv(folder, index, tmp_path, capsys):
    path = tmp_path / "hits.csv"
    args = ["search", str(index), "noise.wav", "--start", "0", "--end", "3", "-k", "3", "--csv", str(path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "0.00-3.00 s (5 window(s))" in out and f"written: {path}" in out
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["rank", "file", "start", "end", "similarity"] and len(rows) == 3
    assert all(Path(r["file"]).name != "noise.wav" for r in rows)  # the span holds every noise window
    assert main(["search", str(index), "tone_b.wav", "--start", "0.5", "-k", "2", "--csv", "-"]) == 0
    stdout = capsys.readouterr().out
    table = list(csv.DictReader(io.StringIO(stdout)))
    assert stdout.startswith("rank,file,start,end,similarity\n") and [r["rank"] for r in table] == ["1", "2"]
    assert -1.0 <= float(table[0]["similarity"]) <= 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["tone_a.wav", "--start", "40"], "no window starting near 40"),
        (["missing.wav", "--start", "0"], "is not in the embeddings index"),
        (["tone_a.wav", "--start", "0", "-k", "0"], "-k must be >= 1"),
        (["tone_a.wav", "--start", "2", "--end", "1"], "--end (1 s) must come after --start (2 s)"),
        (["tone_a.wav", "--start", "nan"], "--start must be a number of seconds"),
    ],
)
def test_search_bad_queries_are_one_line(index, args, message, capsys):
    assert main(["search", str(index), *args]) == 2
    line = _err_line(capsys)
    assert line.startswith("asca search: error: ") and message in line


def test_search_in_a_damaged_index_is_one_line(index, tmp_path, capsys):
    assert main(["search", str(tmp_path / "none"), "a.wav", "--start", "0"]) == 2
    assert "is not a folder of embeddings" in _err_line(capsys)
    damaged = shutil.copytree(index, tmp_path / "emb")
    record = json.loads((damaged / "index.json").read_text())
    (damaged / record["files"][0]["store"]).write_bytes(b"garbage")
    assert main(["search", str(damaged), "tone_a.wav", "--start", "0"]) == 2
    assert "is not a readable safetensors file" in _err_line(capsys)
    (damaged / "index.json").write_text("{")
    assert main(["search", str(damaged), "tone_a.wav", "--start", "0"]) == 2
    assert "index.json is not valid JSON" in _err_line(capsys)


# ---------------------------------------------------------------------------------- openset


@pytest.fixture(scope="module")
def calibratable_run(tmp_path_factory) -> Path:
    """An (untrained) asca_pico run of the 8 demo classes whose data is a tiny demo set."""
    root = tmp_path_factory.mktemp("cli_openset")
    data = make_tiny_data(root / "data")
    return write_run(root / "run", tiny_config(data, "train.loss=ce"), DEMO_CLASSES)


def test_openset_calibrates_and_says_what_the_threshold_means(calibratable_run, capsys):
    assert main(["openset", str(calibratable_run)]) == 0
    out = capsys.readouterr().out.splitlines()
    record = json.loads((calibratable_run / "openset.json").read_text())
    assert record["score"] == "max_prob" and record["known_rate"] == 0.95 and record["clips"] == 8
    assert out[0].startswith(f"max_prob threshold {record['threshold']:.4g}, calibrated on 8 validation clip(s)")
    assert "'none of these'" in out[1] and "95% of the validation clips" in out[1]
    assert out[-1].startswith(f"written: {calibratable_run / 'openset.json'}")
    assert main(["openset", str(calibratable_run), "--score", "energy", "--known-rate", "0.5"]) == 0
    record = json.loads((calibratable_run / "openset.json").read_text())
    assert record["score"] == "energy" and record["known_rate"] == 0.5
    assert "energy threshold" in capsys.readouterr().out


def test_openset_bad_inputs_are_one_line(calibratable_run, pico_run, tmp_path, capsys):
    assert main(["openset", str(tmp_path / "no-run")]) == 2
    assert "run not found" in _err_line(capsys)
    assert main(["openset", str(calibratable_run), "--known-rate", "0"]) == 2
    assert "--known-rate must be in (0, 1]" in _err_line(capsys)
    assert main(["openset", str(calibratable_run / "checkpoints" / "best.safetensors")]) == 2
    assert "give the run directory" in _err_line(capsys)
    # a run whose dataset is not here, a run without a model
    gone = write_run(tmp_path / "gone", tiny_config(tmp_path / "moved" / "labels.csv"), DEMO_CLASSES)
    assert main(["openset", str(gone)]) == 2
    assert "moved" in _err_line(capsys)
    (tmp_path / "bare").mkdir()
    assert main(["openset", str(tmp_path / "bare")]) == 2
    _err_line(capsys)
    with pytest.raises(SystemExit) as info:
        main(["openset", str(calibratable_run), "--score", "entropy"])
    assert info.value.code == 2 and "invalid choice: 'entropy'" in capsys.readouterr().err
