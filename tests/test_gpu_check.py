"""benchmarks/gpu_check.py runs where an accelerator image has only torch, torchaudio, numpy,
safetensors and pyyaml: here its CPU path runs with every other third-party package blocked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("soundfile", "soxr", "librosa", "scipy", "captum", "streamlit", "plotly", "pandas", "ipywidgets", "timm")

PRELUDE = textwrap.dedent(
    """
    import runpy, sys
    blocked = set(sys.argv[1].split(","))
    for name in blocked:  # import fails as for a package that is not installed; find_spec gives None
        sys.modules[name] = None
    script = sys.argv[2]
    sys.argv = [script] + sys.argv[3:]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        loaded = sorted(name for name in blocked if sys.modules.get(name) is not None)
        print("LOADED-BLOCKED", ",".join(loaded))
    """
)


def test_gpu_check_runs_with_only_the_accelerator_image_packages(tmp_path):
    script = ROOT / "benchmarks" / "gpu_check.py"
    cmd = [
        sys.executable,
        "-c",
        PRELUDE,
        ",".join(BLOCKED),
        str(script),
        "--device",
        "cpu",
        "--quick",
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = next(line for line in result.stdout.splitlines() if line.startswith("LOADED-BLOCKED"))
    assert loaded.split(" ", 1)[1:] in ([], [""]), f"imported although absent from the image: {loaded}"
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    variants = {r["variant"]: r for r in data["models"]}
    assert set(variants) == {"fp32 eager", "bf16 eager", "bf16 channels_last"}  # compile is for CUDA only
    for row in variants.values():
        assert row["loss_finite"] and row["step_ms"] > 0 and row["samples_per_s"] > 0
    assert {r["front end"].split(" ")[0] for r in data["front_end"]} == {"log-Mel", "Kaldi"}
    assert "| asca_pico (quick) | bf16 channels_last |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_gpu_check_says_when_there_is_no_cuda_device(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "gpu_check: no CUDA device is visible to torch; use --device cpu for the CPU path"
