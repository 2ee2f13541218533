"""Safety of files: nothing a user hands over is ever unpickled or evaluated, uploads are bounded,
manifest paths stay inside the dataset root, and the app listens on localhost unless told not to.

The malicious files here carry a pickle payload that would create a marker file when unpickled:
every loader must reject them with a one-line CheckpointError and the marker must never appear.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import struct
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from audio_factory import write_tone
from fixtures_runs import PICO_CONFIG, PICO_LABELS, write_run
from safetensors.torch import save_file

from asca_core.config import Config
from asca_core.data import load_dataset
from asca_core.data.cache import FeatureCache
from asca_core.errors import AudioError, CheckpointError, ConfigError
from asca_core.train.checkpoint import load_model_from_run, load_tensors, read_metadata

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("asca_core", "workbench", "benchmarks", "scripts", "tests")
PRODUCT_DIRS = ("asca_core", "workbench")


# ------------------------------------------------------------------------------ source scan
def _call_name(func: ast.expr) -> str:
    """Dotted name of a call target: ``torch.load``, ``np.load``, ``eval``; '' otherwise."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
        return ".".join(reversed(parts))
    return ""


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


UNPICKLERS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "cPickle.load",
    "cPickle.loads",
    "dill.load",
    "dill.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "joblib.load",
    "pd.read_pickle",
    "pandas.read_pickle",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "yaml.unsafe_load",
    "yaml.full_load",
    "torch.jit.load",
    "torch.package.PackageImporter",
}
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """Every way ``source`` could unpickle or evaluate data: calls (and, in product code, imports)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call):
            name = _call_name(node.func)
            where = f"{filename}:{node.lineno}: {name}("
            if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
                found.append(where)
            elif name == "torch.load" and not _keyword_is(node, "weights_only", True):
                found.append(where + " without weights_only=True")
            elif name in ("np.load", "numpy.load") and not _keyword_is(node, "allow_pickle", False):
                found.append(where + " without allow_pickle=False")
            elif name == "yaml.load" and not any(
                k.arg == "Loader" and _call_name(k.value) in ("yaml.SafeLoader", "yaml.CSafeLoader")
                for k in node.keywords
            ):
                found.append(where + " without Loader=yaml.SafeLoader")
            elif name in UNPICKLERS or name.endswith(".read_pickle"):
                found.append(where)
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and not filename.startswith("tests"):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.module in ("numpy", "torch", "builtins"):
                modules += [f"{node.module}.{a.name}" for a in node.names]
            for module in modules:
                if module.split(".")[0] in UNSAFE_MODULES or module in (
                    "numpy.load",
                    "torch.load",
                    "builtins.eval",
                    "builtins.exec",
                ):
                    found.append(f"{filename}:{node.lineno}: import {module}")
    return found


def _sources() -> list[Path]:
    files = [ROOT / "app.py"]
    for folder in SOURCE_DIRS:
        files += sorted((ROOT / folder).rglob("*.py"))
    return [f for f in files if ".venv" not in f.parts]


def test_scanner_catches_each_unsafe_pattern():
    snippet = "\n".join(
        [
            "import pickle",
            "import numpy as np",
            "import torch",
            "import yaml",
            "pickle.load(f)",
            "pickle.loads(b)",
            "np.load(p)",
            "np.load(p, allow_pickle=True)",
            "torch.load(p)",
            "torch.load(p, weights_only=False)",
            "yaml.load(s)",
            "eval('1')",
            "exec('x = 1')",
            "pd.read_pickle(p)",
            "from numpy import load",
            # safe forms, none reported:
            "np.load(p, allow_pickle=False)",
            "torch.load(p, weights_only=True)",
            "yaml.safe_load(s)",
            "yaml.load(s, Loader=yaml.SafeLoader)",
            "model.eval()",
            "ast.literal_eval(s)",
        ]
    )
    found = unsafe_calls(snippet, "asca_core/x.py")
    assert len(found) == 12, found
    assert not any(
        ":16:" in f or ":17:" in f or ":18:" in f or ":19:" in f or ":20:" in f or ":21:" in f for f in found
    )


def test_no_source_file_or_notebook_unpickles_or_evaluates():
    files = _sources()
    assert len(files) > 40 and ROOT / "asca_core" / "train" / "checkpoint.py" in files
    found = []
    for path in files:
        found += unsafe_calls(path.read_text(), str(path.relative_to(ROOT)))
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
        found += unsafe_calls(code, f"notebooks/{notebook.name}")
    assert found == []


# ------------------------------------------------------------------------------ malicious files
class _Payload:
    """Unpickling this creates ``marker``: proof that a loader executed the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _malicious_files(folder: Path, marker: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "pickle": folder / "pickle.safetensors",
        "torch_zip": folder / "torch_zip.safetensors",
        "header_bomb": folder / "header_bomb.safetensors",
    }
    files["pickle"].write_bytes(pickle.dumps({"stem.weight": _Payload(marker)}))
    torch.save({"stem.weight": _Payload(marker)}, files["torch_zip"])  # torch's zip of a pickle
    files["header_bomb"].write_bytes(struct.pack("<Q", 2**60) + b"{}")
    assert not marker.exists()
    return files


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a malicious file was executed"


def test_malicious_checkpoints_are_rejected_and_never_executed(tmp_path, marker):
    for kind, path in _malicious_files(tmp_path / "files", marker).items():
        for load in (load_tensors, read_metadata, load_model_from_run):
            with pytest.raises(CheckpointError) as err:
                load(path)
            message = str(err.value)
            assert "\n" not in message and path.name in message, (kind, message)
        assert not marker.exists(), kind


def test_run_with_a_malicious_checkpoint_fails_cleanly_everywhere(tmp_path, marker):
    from asca_core.inference import Classifier

    run = write_run(tmp_path / "run", Config.from_dict(PICO_CONFIG), PICO_LABELS)
    files = _malicious_files(tmp_path / "files", marker)
    for path in files.values():
        for which in ("best", "last"):
            (run / "checkpoints" / f"{which}.safetensors").write_bytes(path.read_bytes())
            with pytest.raises(CheckpointError, match=f"{which}.safetensors"):
                load_model_from_run(run, which)
            with pytest.raises(CheckpointError):
                Classifier.from_run(run, checkpoint=which)
    assert not marker.exists()


def test_checkpoint_header_with_a_python_yaml_tag_is_not_executed(tmp_path, marker):
    run = write_run(tmp_path / "run", Config.from_dict(PICO_CONFIG), PICO_LABELS)
    best = run / "checkpoints" / "best.safetensors"
    tensors, meta = load_tensors(best)
    meta["config"] = f"train: !!python/object/apply:builtins.open [{json.dumps(str(marker))}, w]\n"
    save_file(tensors, str(best), metadata=meta)
    with pytest.raises(CheckpointError, match="unreadable config"):
        load_model_from_run(run)
    (run / "config.yaml").write_text(meta["config"])
    from asca_core.train.runstore import RunStore

    with pytest.raises(CheckpointError, match="config.yaml is not valid YAML"):
        RunStore(run).config()
    with pytest.raises(ConfigError, match="not valid YAML"):
        from asca_core.config import load_config

        load_config(run / "config.yaml")


def test_resume_from_a_malicious_training_state_fails_cleanly(tmp_path, marker):
    from train_factory import make_tiny_data, tiny_config

    from asca_core.train.engine import fit

    cfg = tiny_config(make_tiny_data(tmp_path / "data"), "train.epochs=2")
    run = tmp_path / "run"
    assert fit(cfg, run, stop_after_epochs=1)["state"] == "stopped"
    state = run / "checkpoints" / "last.state.safetensors"
    state.write_bytes(_malicious_files(tmp_path / "files", marker)["pickle"].read_bytes())
    with pytest.raises(CheckpointError, match="last.state.safetensors"):
        fit(None, run, resume=True)


@pytest.mark.slow
def test_cli_rejects_a_malicious_checkpoint_in_one_line(tmp_path, marker):
    run = write_run(tmp_path / "run", Config.from_dict(PICO_CONFIG), PICO_LABELS)
    files = _malicious_files(tmp_path / "files", marker)
    (run / "checkpoints" / "best.safetensors").write_bytes(files["torch_zip"].read_bytes())
    clip = write_tone(tmp_path / "clip.wav", 1000.0, 1.0, 16000)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args in (["predict", str(run), str(clip)], ["eval", str(run)]):
        proc = subprocess.run(
            [sys.executable, "-m", "asca_core.cli", *args], capture_output=True, text=True, env=env, timeout=300
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "best.safetensors" in proc.stderr


def test_cache_entry_holding_a_pickle_is_ignored(tmp_path, marker):
    clip = write_tone(tmp_path / "clip.wav", 440.0, 0.5, 16000)
    cache = FeatureCache(tmp_path / "cache")
    entry = cache.entry_path(clip, 16000)
    entry.parent.mkdir(parents=True)
    np.save(entry, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    wave = cache.get_wave(clip, 16000)  # the entry is refused and the file decoded again
    assert wave.shape == (8000,) and cache.stats == {"hits": 0, "misses": 1}
    assert entry.read_bytes()[:8] == b"ASCAWAV2" and entry.stat().st_size == 32 + 2 * 8000  # rewritten


@pytest.mark.slow
def test_app_pages_show_one_line_for_a_malicious_checkpoint(tmp_path, monkeypatch, marker):
    from streamlit.testing.v1 import AppTest

    from workbench.state import GENERIC_ERROR

    root = tmp_path / "runs"
    write_run(root / "good", Config.from_dict(PICO_CONFIG), PICO_LABELS)
    bad = write_run(root / "bad", Config.from_dict(PICO_CONFIG), PICO_LABELS)
    files = _malicious_files(tmp_path / "files", marker)
    (bad / "checkpoints" / "best.safetensors").write_bytes(files["torch_zip"].read_bytes())
    monkeypatch.setenv("ASCA_RUNS_DIR", str(root))
    monkeypatch.setenv("ASCA_CACHE_DIR", str(tmp_path / "cache"))
    for page in ("classify", "attention", "runs"):
        at = AppTest.from_file(str(ROOT / "workbench" / "pages" / f"{page}.py"), default_timeout=240).run()
        if page != "runs":
            at.selectbox(key="selected_run").set_value("bad").run()
            assert len(at.error) == 1 and "bad/checkpoints/best.safetensors" in at.error[0].value, page
            assert "\n" not in at.error[0].value
        assert not at.exception, page
        assert all(GENERIC_ERROR not in e.value for e in at.error), page


# ------------------------------------------------------------------------------ uploads
def _streamlit_config() -> dict:
    return tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())


def test_upload_limit_is_set_and_matches_the_classify_page():
    from workbench import state

    limit = _streamlit_config()["server"]["maxUploadSize"]
    assert isinstance(limit, int) and 0 < limit < 200  # below Streamlit's 200 MB default
    assert limit == state.MAX_UPLOAD_MB
    for page in sorted((ROOT / "workbench" / "pages").glob("*.py")):
        for node in ast.walk(ast.parse(page.read_text())):
            if isinstance(node, ast.Call) and _call_name(node.func).endswith("file_uploader"):
                kinds = {k.arg: k.value for k in node.keywords}
                assert "max_upload_size" in kinds and "type" in kinds, f"{page.name}:{node.lineno}"


def test_save_upload_refuses_large_and_non_audio_files_and_strips_folders(tmp_path, monkeypatch):
    from workbench import state

    monkeypatch.setenv("ASCA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(state, "MAX_UPLOAD_MB", 1)
    with pytest.raises(AudioError, match=r"big\.wav is 2 MB; the limit is 1 MB"):
        state.save_upload(b"\0" * (2 * 2**20), "big.wav")
    for name in ("model.pkl", "weights.safetensors", "run.exe", "noext", ".."):
        with pytest.raises(AudioError, match="unsupported file type"):
            state.save_upload(b"RIFF", name)
    path = state.save_upload(b"RIFF....", "../../../escape.wav")
    assert (tmp_path / "cache" / "uploads") in path.parents and path.name == "escape.wav"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [path]


def test_classify_page_refuses_an_upload_over_the_limit(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from workbench import state

    run = write_run(tmp_path / "runs" / "pico", Config.from_dict(PICO_CONFIG), PICO_LABELS)
    monkeypatch.setenv("ASCA_RUNS_DIR", str(run.parent))
    monkeypatch.setenv("ASCA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(state, "MAX_UPLOAD_MB", 1)
    at = AppTest.from_file(str(ROOT / "workbench" / "pages" / "classify.py"), default_timeout=240).run()
    at.file_uploader(key="cls_upload").set_value(("long.wav", b"\0" * (3 * 2**20), "audio/wav")).run()
    assert not at.exception
    assert at.error and at.error[0].value == "long.wav is 3 MB; the limit is 1 MB"
    assert not (tmp_path / "cache" / "uploads").exists() or not any((tmp_path / "cache" / "uploads").rglob("*.wav"))


# ------------------------------------------------------------------------------ dataset roots
def _tone_at(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_tone(path, 500.0, 0.5, 16000)


def test_manifest_paths_stay_inside_the_dataset_root(tmp_path):
    secret = _tone_at(tmp_path / "secret.wav")
    csv_root = tmp_path / "csv"
    _tone_at(csv_root / "a" / "ok.wav")
    _tone_at(csv_root / "b" / "ok.wav")
    (csv_root / "labels.csv").write_text(
        f"filename,label\na/ok.wav,a\nb/ok.wav,b\n../secret.wav,a\n{secret},b\na/../../secret.wav,a\n"
        "./a/./../../secret.wav,b\n"
    )
    bird = tmp_path / "bird"
    _tone_at(bird / "train_audio" / "x" / "ok.ogg")
    (bird / "train_metadata.csv").write_text(
        f"primary_label,secondary_labels,type,filename\nx,[],[],x/ok.ogg\nx,[],[],../../secret.wav\nx,[],[],{secret}\n"
    )
    esc = tmp_path / "esc"
    _tone_at(esc / "audio" / "1-1-A-0.wav")
    (esc / "meta").mkdir()
    (esc / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category\n1-1-A-0.wav,1,0,dog\n../../secret.wav,1,0,dog\n"
    )
    for root, kept, escaping in ((csv_root, 2, 4), (bird, 1, 2), (esc, 1, 1)):
        index = load_dataset(root)
        resolved = root.resolve()
        assert len(index.clips) == kept
        assert all(resolved in clip.path.parents for clip in index.clips)
        outside = [f for f, reason in index.problems if reason.startswith("outside the dataset root")]
        assert len(outside) == escaping, index.problems


# ------------------------------------------------------------------------------ localhost
def test_app_listens_on_localhost_by_default():
    assert _streamlit_config()["server"]["address"] == "127.0.0.1"
    makefile = (ROOT / "Makefile").read_text()
    assert "ADDRESS ?= 127.0.0.1" in makefile and "--server.address $(ADDRESS)" in makefile
    for path in _sources():
        if path.is_relative_to(ROOT / "tests"):
            continue
        assert "0.0.0.0" not in path.read_text(), path  # no code path binds every interface
