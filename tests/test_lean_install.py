"""The library alone: ``pip install asca-workbench`` (no extras) imports and trains on the demo set.

The test runs ``asca train demo`` in a fresh interpreter in which the packages of the extras
cannot be imported, as in a virtualenv that never installed them. ``scripts/check_lean_install.sh``
does the same in a real fresh virtualenv (slow, downloads the core wheels).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# top-level modules that only the extras (app, notebooks, deploy, bench, test) bring
EXTRAS_ONLY = (
    "streamlit",
    "plotly",
    "pandas",
    "ipywidgets",
    "jupyterlab",
    "jupyter_server",
    "IPython",
    "ipykernel",
    "nbclient",
    "nbformat",
    "onnx",
    "onnxruntime",
    "timm",
    "psutil",
    "playwright",
    "pytest",
)

# Run before anything else: a None entry in sys.modules makes ``import name`` raise
# ModuleNotFoundError and ``importlib.util.find_spec(name)`` return None, as for a module that
# is not installed.
PRELUDE = """
import json, sys
BLOCKED = set(sys.argv[1].split(","))
for name in list(sys.modules):
    if name.partition(".")[0] in BLOCKED:
        del sys.modules[name]
for name in BLOCKED:
    sys.modules[name] = None

import asca_core
from asca_core.cli import main

code = main(sys.argv[2:])
loaded = sorted({m.partition(".")[0] for m, module in sys.modules.items() if module is not None} & BLOCKED)
print("LEAN-REPORT " + json.dumps({"code": code, "loaded": loaded}), flush=True)
sys.exit(code)
"""

TINY = [
    "model.name=asca_pico",
    "features.n_mels=32",
    "features.clip_seconds=1.0",
    "train.epochs=1",
    "train.batch_size=16",
    "train.num_threads=1",
]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()


def test_core_dependencies_leave_out_the_app_and_notebooks():
    core = {_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert not core & {"streamlit", "jupyterlab", "plotly", "ipywidgets", "pandas"}, core
    assert not core & {m.lower() for m in EXTRAS_ONLY}, core & {m.lower() for m in EXTRAS_ONLY}


def test_asca_train_demo_runs_without_the_extras(tmp_path):
    run = tmp_path / "run"
    args = ["train", "demo", "--run-dir", str(run), "--quiet"]
    for override in TINY:
        args += ["--set", override]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONNOUSERSITE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE, ",".join(EXTRAS_ONLY), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("LEAN-REPORT "))
    report = json.loads(line.removeprefix("LEAN-REPORT "))
    assert report["code"] == 0
    assert report["loaded"] == [], f"asca train imported {report['loaded']}"
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished", status
    assert (run / "metrics.jsonl").read_text().strip()
