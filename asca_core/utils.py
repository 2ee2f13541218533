"""Small process-wide helpers: torch set-up, devices, seeding and default folders."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError


def setup_torch(num_threads: int | None = None) -> None:
    """Prepare torch for CPU work.

    Denormal floats make CPU kernels erratically slow (a training step measured here jumped from
    1.4 s to 9 s), so they are flushed to zero.
    """
    torch.set_flush_denormal(True)
    if num_threads:
        torch.set_num_threads(int(num_threads))


# Spectrogram cells per forward pass on a CPU. Measured with asca_tiny on 2 cores: a 128 x 512
# input scores fastest 4 at a time and a 64 x 160 one 16 at a time (both 2^18 cells); twice that
# runs 1.4-2x slower, as the activations outgrow the caches.
CPU_BATCH_CELLS = 1 << 18


def rows_per_pass(cells_per_row: int, device: torch.device | str, most: int) -> int:
    """How many inputs of ``cells_per_row`` cells one forward pass should take, at most ``most``:
    all of them on a GPU; on a CPU the largest power of two within :data:`CPU_BATCH_CELLS` cells
    (at least one)."""
    most = max(1, int(most))
    if torch.device(device).type != "cpu":
        return most
    fits = max(1, CPU_BATCH_CELLS // max(1, int(cells_per_row)))
    return min(2 ** int(math.log2(fits)), most)  # the largest power of two within the budget


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:1"`` into a usable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu or cuda[:index]") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def cache_dir() -> Path:
    """Folder for decoded-audio caches and the generated demo set."""
    root = os.environ.get("ASCA_CACHE_DIR") or os.path.join(Path.home(), ".cache", "asca-workbench")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    """Folder holding one sub-folder per training run."""
    return Path(os.environ.get("ASCA_RUNS_DIR") or "runs").expanduser()
