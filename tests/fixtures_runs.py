"""Run directories shared by tests: built once per session, under pytest's temp folder.

The fixtures are registered for every test module by ``pytest_plugins`` in conftest.py.

- ``pico_run``: an untrained ``asca_pico`` (C-C-C-T) saved as a complete run (config.yaml,
  labels.json, best/last safetensors); instant, for shape and plumbing tests.
- ``demo_run``: a model trained with ``configs/demo.yaml`` on the built-in demo set (a few
  minutes on 2 CPU cores), for tests that need a model that actually hears the calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from asca_core.config import Config

ROOT = Path(__file__).resolve().parents[1]
PICO_LABELS = ["chirp", "trill", "whistle", "buzz"]
# A short clip and few mels keep every pico forward pass to milliseconds.
PICO_CONFIG = {
    "features": {"sample_rate": 16000, "n_mels": 64, "clip_seconds": 1.0},
    "model": {"name": "asca_pico", "layout": "CCCT"},
    "train": {"loss": "bce", "device": "cpu"},
}


def write_run(run_dir: Path, cfg: Config, labels: list[str], seed: int = 0) -> Path:
    """Save a freshly initialised model of ``cfg`` as a finished run directory."""
    from asca_core.train.checkpoint import checkpoint_metadata, model_from_config, save_model

    torch.manual_seed(seed)
    model = model_from_config(cfg, len(labels)).eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(run_dir / "config.yaml")
    (run_dir / "labels.json").write_text(json.dumps(labels))
    (run_dir / "status.json").write_text(json.dumps({"state": "finished", "epoch": 0}))
    meta = checkpoint_metadata(cfg, labels, epoch=0)
    for which in ("best", "last"):
        save_model(run_dir / "checkpoints" / f"{which}.safetensors", model, meta)
    return run_dir


@pytest.fixture(scope="session")
def pico_run(tmp_path_factory) -> Path:
    """An untrained asca_pico run: 4 classes, 1 s clips at 16 kHz, 64 mels, BCE."""
    return write_run(tmp_path_factory.mktemp("runs") / "pico", Config.from_dict(PICO_CONFIG), PICO_LABELS)


DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
# The preset as shipped, on CPU with a fixed thread count so the session's one training run is
# reproducible: about 2 minutes on 2 idle cores, 98% accuracy on the held-back clips.
DEMO_OVERRIDES = ("train.device=cpu", "train.num_threads=2")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """A model trained once per session with ``configs/demo.yaml`` on the built-in demo set."""
    from asca_core.config import load_config
    from asca_core.train.engine import fit

    cfg = load_config(DEMO_CONFIG, DEMO_OVERRIDES)
    run_dir = tmp_path_factory.mktemp("demo-runs") / "demo"
    with pytest.MonkeyPatch.context() as mp:  # session fixtures start before the per-test isolation
        mp.setenv("ASCA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "asca-cache"))
        result = fit(cfg, run_dir, progress=False)
    assert result["state"] == "finished", result
    return run_dir
