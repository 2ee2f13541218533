"""A small trained run for the app, jobs and browser tests, built once per session.

``tiny_run`` trains ``asca_pico`` for two epochs on a five-clips-per-class demo set (seconds on
CPU), so pages that need a model (Runs, Attention, Classify) have real curves, checkpoints and
evaluation files to show. ``runs_root`` points ``ASCA_RUNS_DIR`` at the folder holding it.
Registered for every test module by ``pytest_plugins`` in conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_SECTIONS = {
    "model": {"name": "asca_pico"},
    "train": {"epochs": 2, "batch_size": 8, "device": "cpu", "warmup_epochs": 0.0, "num_threads": 1},
}


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """``labels.csv`` of a demo set with five 3-second clips per class (40 clips)."""
    from asca_core.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("tiny-demo"), clips_per_class=5, seed=0)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_demo) -> Path:
    """A finished two-epoch ``asca_pico`` run on :func:`tiny_demo`."""
    from asca_core.config import Config
    from asca_core.train.engine import fit

    root = tmp_path_factory.mktemp("app-runs")
    cfg = Config.from_dict({"data": {"path": str(tiny_demo)}, **TINY_SECTIONS})
    with pytest.MonkeyPatch.context() as mp:  # session fixtures start before the per-test isolation
        mp.setenv("ASCA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "asca-cache"))
        result = fit(cfg, root / "tiny-pico", progress=False)
    assert result["state"] == "finished", result
    return root / "tiny-pico"


@pytest.fixture
def runs_root(tiny_run, monkeypatch) -> Path:
    """``ASCA_RUNS_DIR`` set to the folder holding :func:`tiny_run` (and nothing else)."""
    monkeypatch.setenv("ASCA_RUNS_DIR", str(tiny_run.parent))
    return tiny_run.parent


def wait_for_run(run_dir: Path, done, timeout: float = 240.0):
    """Poll ``workbench.jobs.run_info(run_dir)`` until ``done(info)``; fail with the console after ``timeout`` s."""
    import time

    from workbench import jobs

    end = time.monotonic() + timeout
    while True:
        info = jobs.run_info(run_dir)
        if done(info):
            return info
        if time.monotonic() > end:
            raise AssertionError(f"timed out; last state {info.state}, console:\n{jobs.read_console(run_dir)}")
        time.sleep(0.25)
