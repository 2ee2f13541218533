"""Shared fixtures: the real recordings beside the project, generated audio, temp folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from asca_core.utils import setup_torch

setup_torch()

# fixtures shared by several test modules (trained runs, app roots) live in their own modules
pytest_plugins = ["fixtures_app", "fixtures_runs"]

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ASCA_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: FSDD and the BirdCLEF 2023 sample. Missing under CI is a failure."""
    if not (SHARED_DATA / "fsdd").is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"shared test data not found at {SHARED_DATA}")
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small ops on 2 shared cores run many times faster on one thread than on two contended ones."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session writes caches and runs under pytest's temp folder, never the user's."""
    cache = tmp_path_factory.getbasetemp() / "asca-cache"
    monkeypatch.setenv("ASCA_CACHE_DIR", str(cache))
    monkeypatch.setenv("ASCA_RUNS_DIR", str(tmp_path_factory.getbasetemp() / "asca-runs"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
