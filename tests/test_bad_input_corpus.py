"""The bad-input corpus: every case a hostile but realistic user can make, through the library,
the ``asca`` command and the app.

Each case builds its inputs in its own sandbox (data, configs, runs, cache, home and working folder
under pytest's temp folder) and runs one call. Every case must end in one clear line naming the
problem (an ``AscaError`` from the library, exit status > 0 and one line on stderr from the CLI, an
``st.error`` in the app), with no traceback anywhere, no hard crash, and no file outside the
folders the call may write (its run folder, the cache) created, changed or deleted: the snapshot
holds paths, sizes, modification times and the SHA-1 of every file under 1 MB.

Most CLI cases call ``asca_core.cli.main`` in this process; cases that could exhaust memory or
crash the interpreter (absurd sizes and thread counts) run ``python -m asca_core.cli`` in a child
process with a 4 GB address-space limit and a timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_factory import tone, write_empty, write_header_only, write_text, write_tone, write_truncated_to_header
from fixtures_runs import PICO_CONFIG, PICO_LABELS, write_run

from asca_core.config import Config
from asca_core.errors import AscaError

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
SMALL = 1 << 20  # files up to this size are hashed in the snapshot
CHILD_MEMORY = 4 << 30  # address-space limit of a child CLI process
CHILD_TIMEOUT = 45


# ------------------------------------------------------------------------------------ sandbox
@dataclass
class Sandbox:
    root: Path
    work: Path
    runs: Path
    cache: Path
    data: Path  # two classes (low, high) of four 1 s tones
    run: Path  # an untrained asca_pico run (64 mels, 1 s, 4 classes)
    trained: Path  # a finished one-epoch asca_pico run on the tone set (with its resume state)
    outside: Path  # real audio and folders the dataset must never reach
    allowed: list[Path] = field(default_factory=list)  # folders the call may write besides the cache
    before: dict | None = None  # the snapshot taken when the call starts (inputs are in place)

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def config(self, extra: str = "", data: Path | None = None, name: str = "pico.yaml") -> Path:
        """A one-epoch asca_pico config on ``data`` (default: the tone set), with ``extra`` YAML lines."""
        text = (
            "data:\n  path: " + json.dumps(str(data or self.data)) + "\n"
            "model:\n  name: asca_pico\n"
            "features:\n  clip_seconds: 1.0\n  n_mels: 64\n"
            "train:\n  epochs: 1\n  batch_size: 4\n  num_threads: 1\n  device: cpu\n  warmup_epochs: 0.0\n"
        )
        return self.file(name, text + extra)


@dataclass
class Outcome:
    code: int | None  # exit status; None: the library call raised an AscaError (in err)
    out: str
    err: str


def _snapshot(root: Path) -> dict[str, tuple]:
    files: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            files[str(path)] = ("link", os.readlink(path))
        elif path.is_dir():
            files[str(path)] = ("dir",)
        else:
            digest = hashlib.sha1(path.read_bytes()).hexdigest() if st.st_size <= SMALL else None
            files[str(path)] = (st.st_size, st.st_mtime_ns, digest)
    return files


def _changed_outside(before: dict, after: dict, allowed: list[Path]) -> list[str]:
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    prefixes = [str(a) for a in allowed]
    return sorted(p for p in changed if not any(p == a or p.startswith(a + os.sep) for a in prefixes))


_CURRENT: list[Sandbox] = []


def _mark() -> None:
    """The inputs are in place: snapshot the sandbox before the call."""
    _CURRENT[-1].before = _snapshot(_CURRENT[-1].root)


def run_cli(sb: Sandbox, *argv: str | Path) -> Outcome:
    """``asca ARGV`` in this process; an exception escaping ``main`` counts as a traceback."""
    from asca_core.cli import main

    _mark()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:
            code = -1
            err.write(traceback.format_exc())
    return Outcome(code, out.getvalue(), err.getvalue())


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def run_child(sb: Sandbox, *argv: str | Path) -> Outcome:
    """``python -m asca_core.cli ARGV`` in a child process with bounded memory and time."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    _mark()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "asca_core.cli", *map(str, argv)],
            capture_output=True,
            text=True,
            cwd=sb.work,
            env=env,
            timeout=CHILD_TIMEOUT,
            preexec_fn=_limit_memory,
        )
    except subprocess.TimeoutExpired as exc:
        return Outcome(-9, str(exc.stdout or ""), f"timed out after {CHILD_TIMEOUT} s")
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def run_lib(call: Callable[[], object]) -> Outcome:
    """A library call that must raise an AscaError; anything else is reported as a traceback."""
    _mark()
    try:
        call()
    except AscaError as exc:
        return Outcome(None, "", str(exc))
    except BaseException:
        return Outcome(-1, "", traceback.format_exc())
    return Outcome(0, "", "")


# ------------------------------------------------------------------------------------ writers
def _float_wav(path: Path, value: float) -> Path:
    wave = tone(440.0, 1.0, SR)
    wave[SR // 3] = value
    sf.write(path, wave, SR, subtype="FLOAT")
    return path


def _truncated_ogg(path: Path) -> Path:
    full = write_tone(path.with_name("full.ogg"), 660.0, 3.0, SR)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def _wav_header(
    path: Path,
    channels: int = 1,
    rate: int = SR,
    bits: int = 16,
    data_bytes: int | None = None,
    frames: int = SR,
    riff_bytes: int | None = None,
) -> Path:
    """A PCM wav whose header fields can lie: channel count, rate, sample size, chunk sizes."""
    payload = (tone(440.0, frames / SR, SR) * 32767).astype("<i2").tobytes()
    block = max(1, channels * bits // 8)
    size = len(payload) if data_bytes is None else data_bytes
    header = (
        b"RIFF"
        + struct.pack("<I", (36 + size if riff_bytes is None else riff_bytes) & 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate & 0xFFFFFFFF, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
        + b"data"
        + struct.pack("<I", size & 0xFFFFFFFF)
    )
    path.write_bytes(header + payload)
    return path


AUDIO: dict[str, Callable[[Path], Path]] = {
    "zero_length.wav": write_empty,
    "header_only.wav": write_header_only,
    "truncated_to_header.wav": write_truncated_to_header,
    "text_named.wav": write_text,
    "truncated.ogg": _truncated_ogg,
    "nan_float.wav": lambda p: _float_wav(p, float("nan")),
    "inf_float.wav": lambda p: _float_wav(p, float("inf")),
    "rate_zero.wav": lambda p: _wav_header(p, rate=0),
    "channels_zero.wav": lambda p: _wav_header(p, channels=0),
    "huge_header_channels.wav": lambda p: _wav_header(p, channels=65535),
    "huge_header_rate.wav": lambda p: _wav_header(p, rate=0xFFFFFFF0),
    "random_bytes.wav": lambda p: (p.write_bytes(np.random.default_rng(0).bytes(4096)), p)[1],
    "riff_but_not_wave.wav": lambda p: (p.write_bytes(b"RIFF\x24\x00\x00\x00AVI LIST" + bytes(64)), p)[1],
}


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("corpus-templates")
    data = base / "data"
    for cls, freq in (("low", 400.0), ("high", 3000.0)):
        (data / cls).mkdir(parents=True)
        for i in range(4):
            write_tone(data / cls / f"tone_{i}.wav", freq + 50 * i, 1.0, SR)
    run = write_run(base / "run", Config.from_dict(PICO_CONFIG), PICO_LABELS)
    from asca_core.train.engine import fit

    cfg = Config.from_dict(
        {
            "data": {"path": str(data)},
            "model": {"name": "asca_pico"},
            "features": {"clip_seconds": 1.0, "n_mels": 64},
            "train": {"epochs": 1, "batch_size": 4, "num_threads": 1, "device": "cpu", "warmup_epochs": 0.0},
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASCA_CACHE_DIR", str(base / "cache"))
        result = fit(cfg, base / "trained", progress=False)
    assert result["state"] == "finished", result
    return {"data": data, "run": run, "trained": base / "trained"}


@pytest.fixture
def sb(tmp_path, templates, monkeypatch) -> Iterator[Sandbox]:
    names = ("work", "runs", "cache", "home", "tmp", "outside")
    dirs = {n: tmp_path / n for n in names}
    for path in dirs.values():
        path.mkdir()
    shutil.copytree(templates["data"], tmp_path / "data")
    shutil.copytree(templates["run"], dirs["runs"] / "pico")
    shutil.copytree(templates["trained"], dirs["runs"] / "trained")
    write_tone(dirs["outside"] / "secret.wav", 700.0, 1.0, SR)
    (dirs["outside"] / "cls").mkdir()
    write_tone(dirs["outside"] / "cls" / "secret_1.wav", 800.0, 1.0, SR)
    monkeypatch.setenv("ASCA_CACHE_DIR", str(dirs["cache"]))
    monkeypatch.setenv("ASCA_RUNS_DIR", str(dirs["runs"]))
    monkeypatch.setenv("HOME", str(dirs["home"]))
    monkeypatch.setenv("TMPDIR", str(dirs["tmp"]))
    monkeypatch.delenv("ASCA_DEBUG", raising=False)
    monkeypatch.chdir(dirs["work"])
    sandbox = Sandbox(
        root=tmp_path,
        work=dirs["work"],
        runs=dirs["runs"],
        cache=dirs["cache"],
        data=tmp_path / "data",
        run=dirs["runs"] / "pico",
        trained=dirs["runs"] / "trained",
        outside=dirs["outside"],
    )
    _CURRENT.append(sandbox)
    yield sandbox
    _CURRENT.remove(sandbox)


# ------------------------------------------------------------------------------------ cases
# Each case: (sandbox) -> Outcome, and the words its one line must contain.
Case = tuple[Callable[[Sandbox], Outcome], tuple[str, ...]]
CASES: dict[str, Case] = {}
# Cases whose fix has not landed: id -> reason (strict xfail, so a fix flips them to a failure
# that says to remove the entry).
KNOWN: dict[str, str] = {}


def case(cid: str, *words: str) -> Callable:
    def register(fn: Callable[[Sandbox], Outcome]) -> Callable[[Sandbox], Outcome]:
        assert cid not in CASES, cid
        CASES[cid] = (fn, words)
        return fn

    return register


def _audio(sb: Sandbox, name: str) -> Path:
    return AUDIO[name](sb.work / name)


def _classifier(sb: Sandbox):
    from asca_core.inference import Classifier

    return Classifier.from_run(sb.run)


# -- library: audio files ----------------------------------------------------------------------
for _name in AUDIO:

    def _load(sb: Sandbox, name: str = _name) -> Outcome:
        from asca_core.audio import load_audio

        path = _audio(sb, name)
        return run_lib(lambda: load_audio(path, SR))

    case(f"lib-audio-load-{_name}", _name)(_load)

for _name in ("nan_float.wav", "huge_header_channels.wav", "random_bytes.wav"):

    def _predict_file(sb: Sandbox, name: str = _name) -> Outcome:
        path = _audio(sb, name)
        return run_lib(lambda: _classifier(sb).predict(path))

    case(f"lib-predict-{_name}", _name)(_predict_file)


# -- library: waves, windows, classes ------------------------------------------------------------
def _wave_case(cid: str, make: Callable[[], np.ndarray], *words: str, call: str = "predict") -> None:
    def fn(sb: Sandbox) -> Outcome:
        clf = _classifier(sb)
        wave = make()
        if call == "predict":
            return run_lib(lambda: clf.predict(wave, sample_rate=SR))
        from asca_core.inspect.attribution import attribute

        return run_lib(lambda: attribute(clf, wave, method="saliency", sample_rate=SR))

    case(cid, *words)(fn)


def _nan_wave() -> np.ndarray:
    wave = tone(440.0, 1.0, SR)
    wave[100] = np.nan
    return wave


_wave_case("lib-wave-nan", _nan_wave, "NaN or infinite")
_wave_case("lib-wave-inf", lambda: np.full(SR, np.inf, np.float32), "NaN or infinite")
_wave_case("lib-wave-empty", lambda: np.zeros(0, np.float32), "empty")
_wave_case("lib-wave-multichannel", lambda: np.zeros((3, SR), np.float32), "one-dimensional")
_wave_case("lib-wave-3d", lambda: np.zeros((2, 2, SR), np.float32), "one-dimensional")
_wave_case("lib-attribute-nan-wave", _nan_wave, "NaN or infinite", call="attribute")
_wave_case("lib-wave-huge-amplitude", lambda: np.full(SR, 3e29, np.float32), "finite")


@case("lib-predict-rate-zero", "sample")
def _rate_zero(sb):
    return run_lib(lambda: _classifier(sb).predict(tone(440.0, 1.0, SR), sample_rate=0))


@case("lib-predict-window-negative", "window")
def _window_negative(sb):
    return run_lib(lambda: _classifier(sb).predict(tone(440.0, 1.0, SR), window=-1.0))


@case("lib-predict-hop-nan", "hop")
def _hop_nan(sb):
    return run_lib(lambda: _classifier(sb).predict(tone(440.0, 1.0, SR), hop=float("nan")))


@case("lib-predict-top-k-zero", "top_k")
def _top_k_zero(sb):
    return run_lib(lambda: _classifier(sb).predict(tone(440.0, 1.0, SR), top_k=0))


@case("lib-attribute-unknown-label", "unknown class 'owl'")
def _unknown_label(sb):
    from asca_core.inspect.attribution import attribute

    return run_lib(lambda: attribute(_classifier(sb), tone(440.0, 1.0, SR), method="saliency", target="owl"))


@case("lib-attribute-unknown-method", "unknown attribution method")
def _unknown_method(sb):
    from asca_core.inspect.attribution import attribute

    return run_lib(lambda: attribute(_classifier(sb), tone(440.0, 1.0, SR), method="magic"))


@case("lib-attention-start-outside", "outside")
def _attention_start(sb):
    from asca_core.inspect.views import attention_views

    return run_lib(lambda: attention_views(_classifier(sb), tone(440.0, 1.0, SR), sample_rate=SR, start=5.0))


# -- library: datasets --------------------------------------------------------------------------
def _dataset_case(cid: str, build: Callable[[Sandbox], Path], *words: str) -> None:
    def fn(sb: Sandbox) -> Outcome:
        from asca_core.data import load_dataset

        path = build(sb)
        return run_lib(lambda: load_dataset(path))

    case(cid, *words)(fn)


def _csv(sb: Sandbox, content: bytes | str, name: str = "labels.csv") -> Path:
    path = sb.data / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


_dataset_case("lib-csv-missing-columns", lambda sb: _csv(sb, "file,class\nlow/tone_0.wav,low\n"), "missing columns")
_dataset_case("lib-csv-empty", lambda sb: _csv(sb, ""), "labels.csv")
_dataset_case("lib-csv-binary", lambda sb: _csv(sb, b"\x00\xff\xfe\x00" * 64), "labels.csv")
_dataset_case("lib-csv-not-utf8", lambda sb: _csv(sb, "filename,label\ncaf\xe9.wav,a\n".encode("latin-1")), "not UTF-8")
_dataset_case("lib-dataset-missing", lambda sb: sb.root / "no" / "such" / "dataset", "no")
_dataset_case("lib-dataset-is-audio", lambda sb: write_tone(sb.work / "one.wav"), "one.wav")


def _symlink_outside(sb: Sandbox, kind: str) -> Path:
    """The tone set plus an entry that leaves the root through a symlink."""
    if kind == "file":
        (sb.data / "low" / "escape.wav").symlink_to(sb.outside / "secret.wav")
    elif kind == "folder":
        (sb.data / "stolen").symlink_to(sb.outside / "cls", target_is_directory=True)
    else:  # a manifest row through a symlinked folder inside the root
        (sb.data / "linked").symlink_to(sb.outside, target_is_directory=True)
        rows = ["filename,label"] + [f"{c}/tone_{i}.wav,{c}" for c in ("low", "high") for i in range(4)]
        _csv(sb, "\n".join(rows + ["linked/secret.wav,low"]) + "\n")
        return sb.data / "labels.csv"
    return sb.data


for _kind in ("file", "folder", "manifest"):

    def _symlink_lib(sb: Sandbox, kind: str = _kind) -> Outcome:
        from asca_core.data import load_dataset

        path = _symlink_outside(sb, kind)
        _mark()
        try:
            index = load_dataset(path)
        except AscaError as exc:  # refusing the whole dataset is also clear
            return Outcome(None, "", str(exc))
        escaped = [str(c.path) for c in index.clips if sb.outside.resolve() in Path(c.path).resolve().parents]
        named = [r for _, r in index.problems if "outside the dataset root" in r]
        if escaped or not named:  # indexed a file outside the root, or said nothing
            return Outcome(0, "", f"indexed outside the root: {escaped}; problems: {index.problems}")
        return Outcome(None, "", named[0])

    case(f"lib-symlink-{_kind}-outside-root", "outside the dataset root")(_symlink_lib)


# -- library: configs ---------------------------------------------------------------------------
LIB_OVERRIDES = {
    "features.n_fft=100000000": "features.n_fft",
    "features.win_length=100000000": "features.win_length",
    "features.n_mels=100000": "features.n_mels",
    "features.clip_seconds=1000000": "features.clip_seconds",
    "features.sample_rate=1000000000": "features.sample_rate",
    "features.hop_length=0": "features.hop_length",
    "train.num_threads=100000": "train.num_threads",
    "train.epochs=-1": "train.epochs",
    "train.lr=0": "train.lr",
    "train.num_workers=-3": "train.num_workers",
    "model.attn_window=100000": "model.attn_window",
    "model.layout=XYZW": "XYZW",
    "features.f_min=9000": "f_min",
}
for _override, _word in LIB_OVERRIDES.items():

    def _lib_override(sb: Sandbox, override: str = _override) -> Outcome:
        from asca_core.config import load_config

        path = sb.config()
        return run_lib(lambda: load_config(path, [override]))

    case(f"lib-config-{_override}", _word)(_lib_override)


# -- CLI: audio ---------------------------------------------------------------------------------
for _name in (
    "zero_length.wav",
    "text_named.wav",
    "truncated.ogg",
    "nan_float.wav",
    "huge_header_rate.wav",
    "channels_zero.wav",
):

    def _cli_predict(sb: Sandbox, name: str = _name) -> Outcome:
        return run_cli(sb, "predict", sb.run, _audio(sb, name))

    case(f"cli-predict-{_name}", _name)(_cli_predict)


@case("cli-predict-missing-file", "missing.wav")
def _cli_missing(sb):
    return run_cli(sb, "predict", sb.run, sb.work / "missing.wav")


@case("cli-predict-directory", "work")
def _cli_directory(sb):
    return run_cli(sb, "predict", sb.run, sb.work)


@case("cli-predict-window-zero", "window")
def _cli_window(sb):
    return run_cli(sb, "predict", sb.run, write_tone(sb.work / "ok.wav"), "--window", "0")


@case("cli-predict-hop-nan", "hop")
def _cli_hop(sb):
    return run_cli(sb, "predict", sb.run, write_tone(sb.work / "ok.wav"), "--hop", "nan")


@case("cli-predict-top-k-zero", "--top-k")
def _cli_top_k(sb):
    return run_cli(sb, "predict", sb.run, write_tone(sb.work / "ok.wav"), "--top-k", "0")


@case("cli-predict-timeline-csv-is-a-directory", "timeline")
def _cli_timeline(sb):
    (sb.work / "t.csv").mkdir()
    return run_cli(
        sb, "predict", sb.run, write_tone(sb.work / "ok.wav", seconds=2.0), "--timeline-csv", sb.work / "t.csv"
    )


# -- CLI: configs -------------------------------------------------------------------------------
CLI_CONFIG_FILES = {
    "binary": (b"\x00\x01\x02\xff\xfe" * 100, "cfg.yaml"),
    "not-utf8": ("train:\n  lr: 0.1  # caf\xe9\n".encode("latin-1"), "cfg.yaml"),
    "yaml-syntax": (b"train:\n  lr: [0.1\n", "cfg.yaml"),
    "yaml-tabs": (b"train:\n\tlr: 0.1\n", "cfg.yaml"),
    "yaml-list": (b"- 1\n- 2\n", "cfg.yaml"),
    "python-tag": (b"train: !!python/object/apply:os.system ['touch pwned']\n", "cfg.yaml"),
    "wrong-type-epochs": (b"train:\n  epochs: many\n", "train.epochs"),
    "unknown-section": (b"trian:\n  lr: 0.1\n", "trian"),
}
for _cid, (_content, _word) in CLI_CONFIG_FILES.items():

    def _cli_config(sb: Sandbox, content: bytes = _content) -> Outcome:
        return run_cli(sb, "train", "--config", sb.file("cfg.yaml", content), "--run-dir", sb.runs / "new")

    case(f"cli-train-config-{_cid}", _word)(_cli_config)


@case("cli-train-config-is-a-directory", "cfg")
def _cli_config_dir(sb):
    (sb.work / "cfg").mkdir()
    return run_cli(sb, "train", "--config", sb.work / "cfg", "--run-dir", sb.runs / "new")


@case("cli-train-config-missing", "nope.yaml")
def _cli_config_missing(sb):
    return run_cli(sb, "train", "--config", sb.work / "nope.yaml", "--run-dir", sb.runs / "new")


# Values that used to exhaust memory or crash: a child process with bounded memory.
for _override, _word in {
    "features.n_fft=100000000": "features.n_fft",
    "train.num_threads=100000": "train.num_threads",
    "model.attn_window=100000": "model.attn_window",
    "features.n_mels=100000": "features.n_mels",
}.items():

    def _cli_bound(sb: Sandbox, override: str = _override) -> Outcome:
        sb.allowed.append(sb.runs / "new")
        return run_child(
            sb, "train", "--config", sb.config(), "--set", override, "--run-dir", sb.runs / "new", "--quiet"
        )

    case(f"cli-train-set-{_override}", _word)(_cli_bound)

for _override, _word in {
    "train.lr=fast": "train.lr",
    "train.epochs=2.5": "train.epochs",
    "features.sample_rate=abc": "features.sample_rate",
    "nodots=1": "section.key",
    "train.batch_size=0": "train.batch_size",
    "model.name=no_such_model": "no_such_model",
    "train.device=tpu": "tpu",
}.items():

    def _cli_set(sb: Sandbox, override: str = _override) -> Outcome:
        return run_cli(sb, "train", "--config", sb.config(), "--set", override, "--run-dir", sb.runs / "new", "--quiet")

    case(f"cli-train-set-{_override}", _word)(_cli_set)


# -- CLI: datasets ------------------------------------------------------------------------------
@case("cli-train-data-missing", "nowhere")
def _cli_data_missing(sb):
    return run_cli(sb, "train", "--config", sb.config(data=sb.root / "nowhere"), "--run-dir", sb.runs / "new")


@case("cli-train-single-class", "class")
def _cli_single_class(sb):
    shutil.rmtree(sb.data / "high")
    sb.allowed.append(sb.runs / "new")
    return run_cli(sb, "train", "--config", sb.config(), "--run-dir", sb.runs / "new", "--quiet")


@case("cli-train-csv-unknown-files-only", "labels.csv")
def _cli_csv_unknown(sb):
    path = _csv(sb, "filename,label\nnope/a.wav,low\nnope/b.wav,high\n")
    sb.allowed.append(sb.runs / "new")
    return run_cli(sb, "train", "--config", sb.config(data=path), "--run-dir", sb.runs / "new", "--quiet")


@case("cli-data-check-csv-missing-columns", "missing columns")
def _cli_check_columns(sb):
    return run_cli(sb, "data", "check", _csv(sb, "file,class\nlow/tone_0.wav,low\n"))


@case("cli-data-check-csv-binary", "labels.csv")
def _cli_check_binary(sb):
    return run_cli(sb, "data", "check", _csv(sb, bytes(range(256)) * 8))


@case("cli-data-check-csv-is-a-directory", "labels.csv")
def _cli_check_dir(sb):
    (sb.data / "labels.csv").mkdir()
    return run_cli(sb, "data", "check", sb.data / "labels.csv")


# -- CLI: run folders ---------------------------------------------------------------------------
def _damage(sb: Sandbox, rel: str, content: bytes | str | None) -> Path:
    """Replace a run file: bytes/text, or a directory when ``content`` is None."""
    path = sb.run / rel
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


DAMAGED = {  # id: (file, content (None: a directory), words)
    "labels-dict": ("labels.json", '{"a": 1}', "labels.json"),
    "labels-ints": ("labels.json", "[1, 2, 3, 4]", "labels.json"),
    "labels-garbage": ("labels.json", b"\x00\x01garbage", "labels.json"),
    "labels-count": ("labels.json", '["a", "b"]', "labels"),
    "labels-directory": ("labels.json", None, "labels.json"),
    "checkpoint-garbage": ("checkpoints/best.safetensors", b"\x00" * 64, "best.safetensors"),
    "checkpoint-empty": ("checkpoints/best.safetensors", b"", "best.safetensors"),
    "checkpoint-directory": ("checkpoints/best.safetensors", None, "best.safetensors"),
}
for _cid, (_rel, _content, _word) in DAMAGED.items():

    def _cli_damaged(sb: Sandbox, rel: str = _rel, content: bytes | None = _content) -> Outcome:
        _damage(sb, rel, content)
        return run_cli(sb, "predict", sb.run, write_tone(sb.work / "ok.wav"))

    case(f"cli-predict-run-{_cid}", _word)(_cli_damaged)


@case("cli-predict-run-missing", "no_run")
def _cli_run_missing(sb):
    return run_cli(sb, "predict", sb.runs / "no_run", write_tone(sb.work / "ok.wav"))


RESUME_DAMAGE = {  # id: (file, content (None: a directory; ...: deleted), words)
    "status-directory": ("status.json", None, "status.json"),
    "status-garbage": ("status.json", b"\x00{not json", "status.json"),
    "metrics-garbage": ("metrics.jsonl", b"\x00\xff garbage\n{]\n", "metrics.jsonl"),
    "config-binary": ("config.yaml", b"\x00\xff" * 200, "config.yaml"),
    "labels-dict": ("labels.json", '{"a": 1}', "labels.json"),
    "missing-last-state": ("checkpoints/last.state.safetensors", ..., "last.state.safetensors"),
}
for _cid, (_rel, _content, _word) in RESUME_DAMAGE.items():

    def _cli_resume(sb: Sandbox, rel: str = _rel, content=_content) -> Outcome:
        if content is ...:
            (sb.trained / rel).unlink()
        else:
            path = sb.trained / rel
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            path.mkdir() if content is None else path.write_bytes(
                content.encode() if isinstance(content, str) else content
            )
        # a refused resume loses nothing: only the run's lock file may appear
        sb.allowed.append(sb.trained / ".lock")
        return run_cli(sb, "train", "--run-dir", sb.trained, "--resume", "--quiet")

    case(f"cli-resume-{_cid}", _word)(_cli_resume)


@case("cli-train-run-dir-not-a-run", "notes")
def _cli_not_a_run(sb):
    notes = sb.work / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "diary.txt").write_text("my notes\n")
    (notes / ".notes.tmp").write_text("half written\n")
    (notes / "sub" / ".draft.tmp").write_text("draft\n")
    return run_cli(sb, "train", "--config", sb.config(), "--run-dir", notes, "--quiet")


@case("cli-train-run-dir-is-a-file", "file.txt")
def _cli_run_dir_file(sb):
    return run_cli(sb, "train", "--config", sb.config(), "--run-dir", sb.file("file.txt", "x"), "--quiet")


# -- app ----------------------------------------------------------------------------------------
def _page(name: str):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(ROOT / "workbench" / "pages" / f"{name}.py"), default_timeout=240)


def _shown(at, warnings: bool = False) -> Outcome:
    """The page's errors as one Outcome: an exception element or the generic line is a traceback."""
    from workbench.state import GENERIC_ERROR

    if at.exception:
        return Outcome(-1, "", "Traceback (app exception): " + " | ".join(str(e.value) for e in at.exception))
    errors = [e.value for e in [*at.error, *(at.warning if warnings else [])]]
    if any(GENERIC_ERROR in e for e in errors):
        return Outcome(-1, "", "Traceback (generic error shown): " + " | ".join(errors))
    return Outcome(None if errors else 0, "", "\n".join(errors))


def _others_work(sb: Sandbox, outcome: Outcome) -> Outcome:
    """After the bad input, the Classify and Attention pages still render the good run."""
    if outcome.code is not None:
        return outcome
    for name in ("classify", "attention"):
        at = _page(name).run()
        if at.exception or at.error:
            return Outcome(
                -1,
                "",
                f"Traceback? page {name} broke afterwards: "
                + " | ".join(str(e.value) for e in [*at.exception, *at.error]),
            )
    return outcome


def _data_page_case(cid: str, build: Callable[[Sandbox], Path], *words: str) -> None:
    def fn(sb: Sandbox) -> Outcome:
        at = _page("data")
        at.session_state["data_path"] = str(build(sb))  # set before the first run: no demo set is built
        _mark()
        return _others_work(sb, _shown(at.run()))

    case(cid, *words)(fn)


_data_page_case("app-data-missing", lambda sb: sb.root / "no" / "such", "such")
_data_page_case("app-data-csv-binary", lambda sb: _csv(sb, bytes(range(256)) * 8), "labels.csv")
_data_page_case("app-data-csv-missing-columns", lambda sb: _csv(sb, "file,class\nx.wav,a\n"), "missing columns")
_data_page_case(
    "app-data-csv-not-utf8", lambda sb: _csv(sb, "filename,label\ncaf\xe9.wav,a\n".encode("latin-1")), "not UTF-8"
)
_data_page_case("app-data-audio-file", lambda sb: _audio(sb, "text_named.wav"), "text_named.wav")


for _name in ("zero_length.wav", "text_named.wav", "nan_float.wav", "huge_header_channels.wav", "random_bytes.wav"):

    def _upload(sb: Sandbox, name: str = _name) -> Outcome:
        data = _audio(sb, name).read_bytes()
        _mark()
        at = _page("classify").run()
        at.file_uploader(key="cls_upload").set_value((name, data, "audio/wav")).run()
        return _others_work(sb, _shown(at))

    case(f"app-classify-upload-{_name}", _name)(_upload)


@case("app-classify-path-directory", "work")
def _classify_dir(sb):
    _mark()
    at = _page("classify").run()
    at.segmented_control(key="cls_source").set_value("File on this machine").run()
    at.text_input(key="cls_path").input(str(sb.work)).run()
    return _others_work(sb, _shown(at))


APP_DAMAGED = {  # id: (file, content (None: a directory), words)
    "config-binary": ("config.yaml", b"\x00\xff" * 200, "config.yaml"),
    "labels-dict": ("labels.json", b'{"a": 1}', "labels.json"),
    "status-directory": ("status.json", None, "status.json"),
    "metrics-garbage": ("metrics.jsonl", b"\x00\xff{]\n", "metrics.jsonl"),
}
for _cid, (_rel, _content, _word) in APP_DAMAGED.items():

    def _runs_page(sb: Sandbox, rel: str = _rel, content: bytes | None = _content) -> Outcome:
        broken = sb.runs / "broken"
        shutil.copytree(sb.trained, broken)
        path = broken / rel
        path.unlink()
        path.mkdir() if content is None else path.write_bytes(content)
        _mark()
        at = _page("runs").run()
        outcome = _shown(at, warnings=True)
        text = " ".join(str(m.value) for m in [*at.markdown, *at.caption, *at.dataframe])
        if outcome.code is None and "trained" not in text + " ".join(str(s.value) for s in at.multiselect):
            return Outcome(-1, "", "Traceback? the good run is no longer listed")
        return _others_work(sb, outcome)

    case(f"app-runs-damaged-{_cid}", _word)(_runs_page)


for _override, _word in {
    "features.n_fft=100000000": "features.n_fft",
    "model.attn_window=100000": "model.attn_window",
}.items():

    def _train_page(sb: Sandbox, override: str = _override) -> Outcome:
        from asca_core.config import load_config
        from asca_core.errors import ConfigError

        _mark()
        try:  # never start a training that could exhaust memory: the value must be refused first
            load_config(None, [override])
        except ConfigError:
            pass
        else:
            return Outcome(0, "", f"{override} is accepted, so the page would start it")
        _mark()
        at = _page("train").run()
        at.text_area(key="tr_extra").input(override).run()
        at.button(key="tr_start").click().run()
        outcome = _shown(at)
        if any(sb.runs.glob("*/status.json")) and len(list(sb.runs.iterdir())) > 2:
            return Outcome(0, "", "a run was started")
        return outcome

    case(f"app-train-{_override}", _word)(_train_page)


# -- the checks ---------------------------------------------------------------------------------
def _assert_clear(outcome: Outcome, words: tuple[str, ...]) -> None:
    text = outcome.out + outcome.err
    assert "Traceback" not in text, text[-3000:]
    assert outcome.code is None or outcome.code > 0, f"exit {outcome.code}: {text[-2000:]}"
    lines = outcome.err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines[:5]}"
    for word in words:
        assert word in lines[0], (word, lines[0])


def _params() -> list:
    return [
        pytest.param(cid, id=cid, marks=[pytest.mark.xfail(strict=True, reason=KNOWN[cid])] if cid in KNOWN else [])
        for cid in CASES
    ]


@pytest.mark.parametrize("cid", _params())
@pytest.mark.slow
def test_corpus_case(sb, cid):
    fn, words = CASES[cid]
    outcome = fn(sb)
    assert sb.before is not None, "the case never marked the start of its call"
    after = _snapshot(sb.root)
    _assert_clear(outcome, words)
    assert _changed_outside(sb.before, after, [sb.cache, *sb.allowed]) == []
