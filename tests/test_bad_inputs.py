"""The bad input corpus, end to end: every kind of broken file, manifest and config goes through
the library, the ``asca`` command and the app, and gets a clear one-line error or a documented
skip. Nothing is written outside the run and cache folders.

The corpus is generated into pytest's temp folder: truncated wav and ogg, zero-length,
header-only, text named .wav, NaN/inf float wavs (broken: an error naming the file); a truncated
wav (decoded up to the damage and flagged by ``data check``), a 0.01 s clip (one padded window),
8 channels (averaged to mono), 192 kHz (resampled), a 3 h recording (read lazily by windows, a
whole read is refused) (usable); manifests with missing columns, unknown files, duplicate rows and
paths escaping the dataset root; configs with wrong types.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_factory import (
    tone,
    write_empty,
    write_header_only,
    write_text,
    write_tone,
    write_truncated,
    write_truncated_to_header,
)
from fixtures_runs import PICO_CONFIG, PICO_LABELS, write_run

from asca_core import audio
from asca_core.cli import main as cli_main
from asca_core.config import Config, load_config
from asca_core.data import check_dataset, filter_readable, load_dataset
from asca_core.errors import AudioError, ConfigError, DatasetError

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
LONG_SECONDS = 3 * 3600
LONG_RATE = 8000


# ------------------------------------------------------------------------------ corpus writers
def _truncated_ogg(path: Path) -> Path:
    """An Ogg Vorbis file cut in the middle (an interrupted download)."""
    full = path.with_name("full-" + path.name)
    write_tone(full, 660.0, 3.0, SR)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def _float_wav_with(value: float, at_seconds: float) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        wave = tone(440.0, 1.0, SR)
        wave[int(at_seconds * SR)] = value
        sf.write(path, wave, SR, subtype="FLOAT")
        return path

    return write


def _short(path: Path) -> Path:
    return write_tone(path, 1000.0, 0.01, SR)


def _eight_channels(path: Path) -> Path:
    base = tone(440.0, 1.0, SR)
    sf.write(path, np.stack([base * (c + 1) / 8 for c in range(8)], axis=1), SR)
    return path


def _rate_192k(path: Path) -> Path:
    return write_tone(path, 1000.0, 1.0, 192000)


def write_long_sparse(
    path: Path, seconds: int = LONG_SECONDS, sample_rate: int = LONG_RATE, marker_seconds: int = 10
) -> Path:
    """A PCM16 wav of ``seconds`` (3 h: 173 MB) written sparsely: header, a hole, a marker tone.

    The hole reads as digital silence and costs no disk blocks on file systems with sparse files;
    the last ``marker_seconds`` hold a 440 Hz tone, so a read near the end can be checked.
    """
    n = seconds * sample_rate
    data_bytes = 2 * n
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, 2 * sample_rate, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )
    marker = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(marker_seconds * sample_rate) / sample_rate)
    with open(path, "wb") as f:
        f.write(header)
        f.seek(len(header) + 2 * (n - marker_seconds * sample_rate))
        f.write((marker * 32767).astype("<i2").tobytes())
    return path


# name -> (writer, words the one-line error must contain)
BROKEN: dict[str, tuple[Callable[[Path], Path], str]] = {
    "zero_length.wav": (write_empty, "empty file"),
    "header_only.wav": (write_header_only, "no audio frames"),
    "truncated_to_header.wav": (write_truncated_to_header, "no audio frames"),
    "text_named.wav": (write_text, "not a readable audio file"),
    "truncated.ogg": (_truncated_ogg, "not a readable audio file"),
    "nan_float.wav": (_float_wav_with(float("nan"), 0.25), "NaN or infinite samples"),
    "inf_float.wav": (_float_wav_with(float("inf"), 0.75), "NaN or infinite samples"),
}
# Broken files only decoding finds (their headers are fine).
DECODE_ONLY = {"nan_float.wav", "inf_float.wav"}
# Odd but usable: each has a documented behaviour instead of an error.
USABLE: dict[str, Callable[[Path], Path]] = {
    "truncated.wav": write_truncated,  # header says 1 s, 0.25 s present: decoded up to the damage
    "short_10ms.wav": _short,
    "eight_channels.wav": _eight_channels,
    "rate_192k.wav": _rate_192k,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Every corpus audio file in one folder (the 3 h file included)."""
    folder = tmp_path_factory.mktemp("corpus")
    for name, (writer, _) in BROKEN.items():
        writer(folder / name)
    for name, writer in USABLE.items():
        writer(folder / name)
    write_long_sparse(folder / "three_hours.wav")
    return folder


@pytest.fixture(scope="module")
def pico_clf_run(tmp_path_factory) -> Path:
    """An untrained asca_pico run (1 s windows at 16 kHz) alone in its runs folder."""
    return write_run(tmp_path_factory.mktemp("bad-input-runs") / "pico", Config.from_dict(PICO_CONFIG), PICO_LABELS)


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> dict[str, Path]:
    """Cache, runs, home, temp and working folders under ``tmp_path``; the env points at them."""
    dirs = {name: tmp_path / name for name in ("cache", "runs", "home", "tmp", "work")}
    for path in dirs.values():
        path.mkdir()
    monkeypatch.setenv("ASCA_CACHE_DIR", str(dirs["cache"]))
    monkeypatch.setenv("ASCA_RUNS_DIR", str(dirs["runs"]))
    monkeypatch.setenv("HOME", str(dirs["home"]))
    monkeypatch.setenv("TMPDIR", str(dirs["tmp"]))
    monkeypatch.delenv("ASCA_DEBUG", raising=False)
    monkeypatch.chdir(dirs["work"])
    dirs["root"] = tmp_path
    return dirs


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``roots``: path -> (size, mtime_ns)."""
    files = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() or path.is_symlink():
                st = path.lstat()
                files[str(path)] = (st.st_size, st.st_mtime_ns)
    return files


def changed_outside(before: dict, after: dict, allowed: list[Path]) -> list[str]:
    """Files created, modified or deleted outside the ``allowed`` folders."""
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    allowed_s = [str(a) + os.sep for a in allowed]
    return sorted(p for p in changed if not any(p.startswith(a) for a in allowed_s))


def assert_one_line(message: str, *words: str) -> None:
    assert message.strip() and "\n" not in message.strip(), message
    assert "Traceback" not in message
    for word in words:
        assert word in message, (word, message)


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m asca_core.cli ...`` in a fresh interpreter with the sandbox environment."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "asca_core.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


# ================================================================================ library: audio
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_audio_is_one_audio_error_naming_the_file(corpus, name):
    path = corpus / name
    words = BROKEN[name][1]
    calls = [lambda: audio.load_audio(path, SR), lambda: list(audio.iter_windows(path, SR, 1.0, 0.5))]
    if name not in DECODE_ONLY:
        calls.append(lambda: audio.audio_info(path))
    for call in calls:
        with pytest.raises(AudioError) as err:
            call()
        assert_one_line(str(err.value), name, words)


def test_float_wav_error_says_where_the_bad_sample_is(corpus):
    with pytest.raises(AudioError, match=r"first at 0\.250 s"):
        audio.load_audio(corpus / "nan_float.wav")
    with pytest.raises(AudioError, match=r"first at 0\.750 s"):
        audio.load_audio(corpus / "inf_float.wav")
    # a window before the bad sample is clean audio
    assert audio.load_audio(corpus / "inf_float.wav", duration=0.5).shape == (SR // 2,)


def test_truncated_wav_decodes_up_to_the_damage_and_says_so(corpus):
    info = audio.audio_info(corpus / "truncated.wav")
    assert info.truncated and info.frames == SR // 4
    wave = audio.load_audio(corpus / "truncated.wav", SR)
    np.testing.assert_allclose(wave, tone(440.0, 0.25, SR), atol=2e-4)


def test_short_eight_channel_and_192k_files_are_usable(corpus):
    short = audio.load_audio(corpus / "short_10ms.wav", SR)
    assert short.shape == (160,)
    windows = list(audio.iter_windows(corpus / "short_10ms.wav", SR, 1.0, 0.5))
    assert len(windows) == 1 and windows[0][1].shape == (SR,)  # one window, zero-padded
    assert np.all(windows[0][1][160:] == 0)

    assert audio.audio_info(corpus / "eight_channels.wav").channels == 8
    mono = audio.load_audio(corpus / "eight_channels.wav")
    np.testing.assert_allclose(mono, tone(440.0, 1.0, SR) * 4.5 / 8, atol=2e-4)  # mean of 1/8..8/8

    assert audio.audio_info(corpus / "rate_192k.wav").sample_rate == 192000
    wave = audio.load_audio(corpus / "rate_192k.wav", SR)
    assert wave.shape == (SR,)
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) == 1000  # 1 Hz bins over 1 s: the tone stays at 1 kHz


def test_three_hour_file_is_read_lazily(corpus, monkeypatch):
    path = corpus / "three_hours.wav"
    info = audio.audio_info(path)
    assert info.duration == LONG_SECONDS and info.sample_rate == LONG_RATE
    frames_read = []
    real_read = sf.SoundFile.read

    def counting_read(self, *args, **kwargs):
        out = real_read(self, *args, **kwargs)
        frames_read.append(len(out))
        return out

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    tracemalloc.start()
    try:
        wave = audio.load_audio(path, SR, offset=LONG_SECONDS - 7.0, duration=5.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert wave.shape == (5 * SR,)
    # the marker tone is there: the read landed 7 s before the end, not at the start
    assert 0.45 < np.abs(wave[SR:]).max() < 0.55
    assert sum(frames_read) <= 5 * LONG_RATE + 1024  # only the window was decoded
    assert peak < 8 * 2**20  # a few MB, not the 173 MB (or 1.4 GB as float32 at 16 kHz) file

    frames_read.clear()
    start, first = next(audio.iter_windows(path, SR, 5.0, 5.0))
    assert start == 0.0 and first.shape == (5 * SR,) and not first.any()
    assert sum(frames_read) <= 5 * LONG_RATE + 1024

    with pytest.raises(AudioError) as err:
        audio.load_audio(path)  # a whole read is refused before anything is decoded
    assert_one_line(str(err.value), "three_hours.wav", "10800.0 s", "3600 s limit")
    assert sum(frames_read) <= 5 * LONG_RATE + 1024


def test_classifier_errors_name_the_file_and_odd_files_predict(corpus, pico_clf_run):
    from asca_core.inference import Classifier

    clf = Classifier.from_run(pico_clf_run)
    for name in BROKEN:
        with pytest.raises(AudioError) as err:
            clf.predict(corpus / name)
        assert_one_line(str(err.value), name)
    for name in USABLE:
        pred = clf.predict(corpus / name)
        assert len(pred.timeline) >= 1 and np.all(np.isfinite(pred.probs))
    assert clf.predict(corpus / "short_10ms.wav").duration == pytest.approx(0.01)


# ================================================================================ library: datasets
def _tones(folder: Path, freq: float, n: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_tone(folder / f"tone_{i}.wav", freq + 50 * i, 1.0, SR)


@pytest.fixture(scope="module")
def corpus_dataset(tmp_path_factory, corpus) -> Path:
    """Folder-per-class dataset: good tones plus every corpus file, spread over two classes."""
    root = tmp_path_factory.mktemp("corpus-dataset")
    _tones(root / "low", 400.0)
    _tones(root / "high", 3000.0)
    for i, src in enumerate(sorted(corpus.iterdir())):
        dst = root / ("low" if i % 2 else "high") / src.name
        if src.name == "three_hours.wav":
            write_long_sparse(dst)
        else:
            dst.write_bytes(src.read_bytes())
    (root / "low" / "notes.txt").write_text("recorded at dawn\n")  # not audio: ignored
    return root


def _problems(report) -> dict[str, str]:
    return {Path(f).name: r for f, r in report.problems}


def test_data_check_names_every_broken_file_and_keeps_the_rest(corpus_dataset):
    report = check_dataset(corpus_dataset)
    problems = _problems(report)
    for name, (_, words) in BROKEN.items():
        assert words in problems[name], (name, problems.get(name))
    assert "truncated" in problems["truncated.wav"]
    assert "notes.txt" not in problems
    usable = {"short_10ms.wav", "eight_channels.wav", "rate_192k.wav", "three_hours.wav"}
    assert report.usable == 8 + len(usable) and report.ok
    assert report.durations["max"] == LONG_SECONDS
    assert report.sample_rates == {LONG_RATE: 1, SR: 10, 192000: 1}


def test_training_index_skips_what_headers_reveal(corpus_dataset):
    index, skipped = filter_readable(load_dataset(corpus_dataset), deep=False)
    names = {Path(f).name for f, _ in skipped}
    assert names == (set(BROKEN) - DECODE_ONLY) | {"truncated.wav"}
    assert {c.path.name for c in index.clips} >= DECODE_ONLY  # only decoding finds these


def _csv(root: Path, text: str, name: str = "labels.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)
    return root / name


def _latin1_csv(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_bytes("filename,label\ncaf\xe9.wav,a\n".encode("latin-1"))
    return root / "labels.csv"


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> dict[str, Path]:
    """CSV manifests: missing columns, every kind of bad row, only escaping rows."""
    base = tmp_path_factory.mktemp("manifests")
    outside = write_tone(base / "outside.wav", 700.0, 1.0, SR)  # real audio the manifests must not reach
    root = base / "ds"
    _tones(root / "a", 500.0, 2)
    _tones(root / "b", 2500.0, 2)
    (root / "a" / "notes.txt").write_text("not audio\n")
    rows = [
        "filename,label",
        "a/tone_0.wav,a",
        "a/tone_1.wav,a",
        "b/tone_0.wav,b",
        "b/tone_1.wav,b",
        "a/tone_0.wav,a",  # duplicate row
        "b/tone_1.wav,a",  # listed again with another label
        "a/missing.wav,a",  # unknown file
        "a/notes.txt,a",  # not an audio type
        "../outside.wav,b",  # escapes the root
        f"{outside},b",  # absolute path outside the root
        "a/../../outside.wav,b",  # escapes through a class folder
    ]
    return {
        "mixed": _csv(root, "\n".join(rows) + "\n"),
        "missing_columns": _csv(base / "cols", "file,class\na/tone_0.wav,a\n"),
        "only_escaping": _csv(root, "filename,label\n../outside.wav,a\n", "escape.csv"),
        "not_utf8": _latin1_csv(base / "latin"),
        "outside": outside,
    }


def test_manifest_with_missing_columns_is_one_dataset_error(manifests):
    with pytest.raises(DatasetError) as err:
        load_dataset(manifests["missing_columns"])
    assert_one_line(str(err.value), "labels.csv", "missing columns filename, label", "found: file, class")


def test_manifest_rows_that_cannot_be_used_are_skipped_with_reasons(manifests):
    index = load_dataset(manifests["mixed"])
    root = manifests["mixed"].parent.resolve()
    assert len(index.clips) == 4
    assert all(root in c.path.parents for c in index.clips)  # nothing outside the root is indexed
    reasons = [r for _, r in index.problems]
    by_file = dict(index.problems)
    assert by_file["a/missing.wav"].startswith("file not found")
    assert by_file["a/notes.txt"].startswith("unsupported file type .txt")
    assert "duplicate row (line 6 repeats line 2)" in by_file["a/tone_0.wav"]
    assert "labels merged as b;a" in by_file["b/tone_1.wav"]
    escaping = [f for f, r in index.problems if r.startswith("outside the dataset root")]
    assert sorted(escaping) == sorted(["../outside.wav", str(manifests["outside"]), "a/../../outside.wav"])
    assert len(reasons) == 7


def test_manifest_with_only_escaping_rows_is_unusable(manifests):
    report = check_dataset(manifests["only_escaping"])
    assert not report.ok and report.usable == 0
    assert _problems(report)["outside.wav"].startswith("outside the dataset root")


# ================================================================================ library: configs
BAD_CONFIGS = {
    "lr_text": ("train:\n  lr: fast\n", "train.lr must be a number, got 'fast'"),
    "epochs_fraction": ("train:\n  epochs: 2.5\n", "train.epochs must be an integer, got 2.5"),
    "batch_nan": ("train:\n  batch_size: .nan\n", "train.batch_size must be an integer, got nan"),
    "epochs_inf": ("train:\n  epochs: .inf\n", "train.epochs must be an integer, got inf"),
    "lr_list": ("train: {lr: [1, 2]}\n", "train.lr must be a number, got [1, 2]"),
    "layout_number": ("model:\n  layout: 7\n", "model.layout must be text, got 7"),
    "flag_text": ("data:\n  balanced_sampling: 'yes'\n", "data.balanced_sampling must be true or false"),
    "section_list": ("features: [1, 2]\n", "config section 'features' must be a mapping"),
    "unknown_section": ("trian:\n  lr: 0.1\n", "unknown config section 'trian'"),
    "unknown_key": ("train:\n  learning_rate: 0.1\n", "unknown config key 'train.learning_rate'"),
    "not_a_mapping": ("- a\n- b\n", "must hold a mapping of sections"),
    "python_tag": ("train:\n  epochs: !!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
    "rate_out_of_range": ("features:\n  sample_rate: 100\n", "features.sample_rate must be between"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_one_config_error_naming_the_key(tmp_path, name):
    text, words = BAD_CONFIGS[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert_one_line(str(err.value), words)


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.batch_size=abc", "train.batch_size must be an integer, got 'abc'"),
        ("train.epochs=.nan", "train.epochs must be an integer, got nan"),
        ("train.lr=1e400", "train.lr must be finite"),
        ("train.nope=1", "unknown config key 'train.nope'"),
        ("lr=0.1", "must look like section.key"),
    ],
)
def test_bad_override_is_one_config_error(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert_one_line(str(err.value), words)


# ================================================================================ CLI
def test_cli_train_bad_configs_in_process(sandbox, capsys):
    """Every bad config through ``asca train``: exit 2, one line, no run folder created."""
    for name, (text, words) in BAD_CONFIGS.items():
        path = sandbox["work"] / f"{name}.yaml"
        path.write_text(text)
        code = cli_main(["train", "--config", str(path), "--run-dir", str(sandbox["runs"] / name)])
        _out, err = capsys.readouterr()
        assert code == 2, name
        assert_one_line(err, "asca train: error:", words)
        assert not (sandbox["runs"] / name).exists()


@pytest.mark.slow
def test_cli_predict_names_each_broken_file_on_one_line(sandbox, corpus, pico_clf_run):
    files = sorted(p for p in corpus.iterdir() if p.name != "three_hours.wav")
    before = snapshot(sandbox["root"], corpus, pico_clf_run)
    proc = cli("predict", str(pico_clf_run), *map(str, files), "--top-k", "2", cwd=sandbox["work"])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == len(BROKEN), lines
    for name, (_, words) in BROKEN.items():
        line = next(line for line in lines if f"{name}:" in line)
        assert line.startswith("asca predict: error:") and words in line
    for name in USABLE:  # the other files are still scored
        assert f"{name}  (" in proc.stdout
    assert (
        changed_outside(before, snapshot(sandbox["root"], corpus, pico_clf_run), [sandbox["cache"], sandbox["runs"]])
        == []
    )


def test_cli_data_check_lists_every_broken_file(sandbox, corpus_dataset):
    before = snapshot(sandbox["root"], corpus_dataset)
    proc = cli("data", "check", str(corpus_dataset), cwd=sandbox["work"])
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    for name in list(BROKEN) + ["truncated.wav"]:
        assert name in proc.stdout
    assert "OK: 12 usable clips in 2 classes" in proc.stdout
    assert changed_outside(before, snapshot(sandbox["root"], corpus_dataset), [sandbox["cache"], sandbox["runs"]]) == []


def test_cli_bad_manifests_and_config(sandbox, manifests):
    bad = sandbox["work"] / "bad.yaml"
    bad.write_text(BAD_CONFIGS["epochs_inf"][0])
    before = snapshot(sandbox["root"], manifests["outside"].parent)
    proc = cli("data", "check", str(manifests["missing_columns"]), cwd=sandbox["work"])
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_line(proc.stderr, "asca data: error:", "missing columns filename, label")

    proc = cli("data", "check", str(manifests["only_escaping"]), cwd=sandbox["work"])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "outside the dataset root" in proc.stdout and "UNUSABLE" in proc.stdout

    proc = cli("data", "check", str(manifests["mixed"]), "--json", cwd=sandbox["work"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["usable_clips"] == 4 and len(report["problems"]) == 7

    proc = cli("train", "--config", str(bad), "--run-dir", str(sandbox["runs"] / "never"), cwd=sandbox["work"])
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_line(proc.stderr, "asca train: error: train.epochs must be an integer, got inf")
    proc = cli("train", "--config", str(bad), "--set", "train.lr=-1", cwd=sandbox["work"])
    assert proc.returncode == 2
    assert_one_line(proc.stderr, "asca train: error:")
    assert not (sandbox["runs"] / "never").exists()
    assert (
        changed_outside(
            before, snapshot(sandbox["root"], manifests["outside"].parent), [sandbox["cache"], sandbox["runs"]]
        )
        == []
    )


def test_cli_output_into_a_closed_pipe_ends_quietly(sandbox, corpus_dataset):
    """``asca data check DATA | head -1``: the reader leaves early; no traceback, exit 141."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "asca_core.cli", "data", "check", str(corpus_dataset), "--quick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=sandbox["work"],
        env=env,
    )
    proc.stdout.close()  # before the command prints anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""


def _train_yaml(path: Path, data: Path) -> Path:
    path.write_text(
        "data:\n  path: " + json.dumps(str(data)) + "\n"
        "model:\n  name: asca_pico\n"
        "features:\n  clip_seconds: 1.0\n  n_mels: 64\n"
        "train:\n  epochs: 1\n  batch_size: 4\n  num_threads: 1\n  device: cpu\n  warmup_epochs: 0.0\n"
    )
    return path


@pytest.mark.slow
def test_cli_training_skips_broken_files_and_names_undecodable_ones(sandbox, corpus, tmp_path):
    """Files broken in the header are skipped and logged up front; a NaN file (found only by
    decoding) is skipped when first read, named in the log and counted in status.json."""
    data = tmp_path / "data"
    _tones(data / "low", 400.0)
    _tones(data / "high", 3000.0)
    header_broken = sorted(set(BROKEN) - DECODE_ONLY) + ["truncated.wav"]
    for i, name in enumerate(header_broken + ["short_10ms.wav", "eight_channels.wav", "rate_192k.wav"]):
        (data / ("low", "high")[i % 2] / name).write_bytes((corpus / name).read_bytes())
    config = _train_yaml(sandbox["work"] / "pico.yaml", data)
    before = snapshot(sandbox["root"], corpus)
    proc = cli(
        "train", "--config", str(config), "--run-dir", str(sandbox["runs"] / "ok"), "--quiet", cwd=sandbox["work"]
    )
    assert proc.returncode == 0, proc.stderr
    log = (sandbox["runs"] / "ok" / "log.txt").read_text()
    assert "11 clips, 2 classes (single-label)" in log and f"{len(header_broken)} skipped" in log
    assert json.loads((sandbox["runs"] / "ok" / "status.json").read_text())["state"] == "finished"
    assert changed_outside(before, snapshot(sandbox["root"], corpus), [sandbox["cache"], sandbox["runs"]]) == []

    (data / "low" / "nan_float.wav").write_bytes((corpus / "nan_float.wav").read_bytes())
    before = snapshot(sandbox["root"], corpus)
    proc = cli(
        "train", "--config", str(config), "--run-dir", str(sandbox["runs"] / "nan"), "--quiet", cwd=sandbox["work"]
    )
    assert proc.returncode == 0, proc.stderr  # the clip is skipped, not the run
    assert "Traceback" not in proc.stderr
    status = json.loads((sandbox["runs"] / "nan" / "status.json").read_text())
    assert status["state"] == "finished" and status["skipped_clips"] == 1
    log = (sandbox["runs"] / "nan" / "log.txt").read_text()
    assert "skipped low/nan_float.wav: contains NaN or infinite samples" in log
    assert changed_outside(before, snapshot(sandbox["root"], corpus), [sandbox["cache"], sandbox["runs"]]) == []


# ================================================================================ app
def _page(name: str):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(ROOT / "workbench" / "pages" / f"{name}.py"), default_timeout=240)


def _no_crash(at) -> None:
    from workbench.state import GENERIC_ERROR

    assert not at.exception, [e.value for e in at.exception]
    assert all(GENERIC_ERROR not in e.value for e in at.error), [e.value for e in at.error]


def test_data_page_shows_one_line_for_bad_dataset_paths(sandbox, manifests, corpus):
    cases = {
        str(sandbox["root"] / "no" / "such" / "dataset"): "not found",
        str(corpus / "text_named.wav"): "not a dataset",
        str(manifests["missing_columns"]): "missing columns filename, label",
        str(manifests["not_utf8"]): "not UTF-8",
    }
    before = snapshot(sandbox["root"], corpus, manifests["outside"].parent)
    for path, words in cases.items():
        at = _page("data")
        at.session_state["data_path"] = path  # set before the first run: the demo set is never built
        at.run()
        _no_crash(at)
        assert len(at.error) == 1, [e.value for e in at.error]
        assert_one_line(at.error[0].value, words)
        assert Path(path).name in at.error[0].value

    at = _page("data")
    at.session_state["data_path"] = str(manifests["only_escaping"])
    at.run()
    _no_crash(at)
    assert not at.error
    skipped = next(m for m in at.metric if m.label == "Skipped files")
    assert skipped.value == "1"
    assert (
        changed_outside(
            before, snapshot(sandbox["root"], corpus, manifests["outside"].parent), [sandbox["cache"], sandbox["runs"]]
        )
        == []
    )


@pytest.mark.slow
def test_classify_page_names_each_bad_upload(sandbox, corpus, pico_clf_run, monkeypatch):
    monkeypatch.setenv("ASCA_RUNS_DIR", str(pico_clf_run.parent))
    before = snapshot(sandbox["root"], corpus, pico_clf_run)
    for name in sorted(BROKEN):
        at = _page("classify").run()
        _no_crash(at)
        at.file_uploader(key="cls_upload").set_value((name, (corpus / name).read_bytes(), "audio/wav")).run()
        _no_crash(at)
        assert at.error, name
        assert_one_line(at.error[0].value, name)
    for path, words in (
        (corpus / "nan_float.wav", "NaN or infinite samples"),
        (corpus, "no such file"),
        (corpus / "missing.wav", "no such file"),
    ):
        at = _page("classify").run()
        at.segmented_control(key="cls_source").set_value("File on this machine").run()
        at.text_input(key="cls_path").input(str(path)).run()
        _no_crash(at)
        assert at.error, path
        assert_one_line(at.error[0].value, path.name, words)
    assert (
        changed_outside(
            before,
            snapshot(sandbox["root"], corpus, pico_clf_run),
            [sandbox["cache"], sandbox["runs"], pico_clf_run.parent],
        )
        == []
    )


@pytest.mark.parametrize(
    "extra, words",
    [
        ("train.epochs=2.5", "train.epochs must be an integer, got 2.5"),
        ("train.lr=fast", "train.lr must be a number, got 'fast'"),
        ("train.batch_size=.nan", "train.batch_size must be an integer, got nan"),
        ("augment.mixup=maybe", "augment.mixup must be true or false"),
        ("train.learning_rate=0.1", "unknown config key 'train.learning_rate'"),
    ],
)
def test_train_page_names_a_bad_override_and_starts_nothing(sandbox, extra, words):
    before = snapshot(sandbox["root"])
    at = _page("train").run()
    _no_crash(at)
    at.text_area(key="tr_extra").input(extra).run()
    at.button(key="tr_start").click().run()
    _no_crash(at)
    assert len(at.error) == 1, [e.value for e in at.error]
    assert_one_line(at.error[0].value, words)
    assert not any(sandbox["runs"].iterdir())  # no run folder, no background process
    assert changed_outside(before, snapshot(sandbox["root"]), [sandbox["cache"], sandbox["runs"]]) == []
