"""Tiny training set-ups for the train tests: a 48-clip demo set, a 2-epoch asca_pico config.

Import from a test module as ``from train_factory import tiny_config, TINY_OVERRIDES``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# 8 classes x 6 clips of 1.5 s; 1 s crops at 16 kHz, 32 mel bins -> input (32, 96); 4 steps/epoch
TINY_OVERRIDES = [
    "model.name=asca_pico",
    "features.n_mels=32",
    "features.n_fft=512",
    "features.clip_seconds=1.0",
    "augment.time_mask_width=8",
    "augment.freq_mask_width=4",
    "augment.noise_prob=0.5",
    "train.epochs=2",
    "train.batch_size=8",
    "train.num_threads=1",
]


def make_tiny_data(root: Path) -> Path:
    from asca_core.data import make_demo_dataset

    labels = root / "labels.csv"
    if not labels.is_file():
        make_demo_dataset(root, clips_per_class=6, seconds=1.5)
    return labels


def tiny_config(data: Path, *extra: str):
    from asca_core.config import load_config

    return load_config(None, [f"data.path={data}", *TINY_OVERRIDES, *extra])


def write_tiny_yaml(path: Path, data: Path, *extra: str) -> Path:
    tiny_config(data, *extra).to_yaml(path)
    return path


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``asca ARGS`` in a fresh interpreter (stdout/stderr captured as text)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "asca_core.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=timeout,
        env=full_env,
    )


def cli_popen(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "asca_core.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        **popen,
    )
