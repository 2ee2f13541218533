"""train.select: which weights a run keeps as its model."""

from __future__ import annotations

import pytest
import torch
from train_factory import make_tiny_data, tiny_config

from asca_core.config import Config
from asca_core.errors import ConfigError
from asca_core.train.checkpoint import load_tensors
from asca_core.train.engine import fit
from asca_core.train.runstore import RunStore


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("tiny-data"))


def _weights(path):
    tensors, _ = load_tensors(path)
    return tensors


def test_select_last_keeps_the_end_of_the_schedule(data, tmp_path):
    cfg = tiny_config(data, "train.epochs=3", "train.select=last")
    result = fit(cfg, tmp_path / "run", progress=False)
    assert result["state"] == "finished" and result["best_epoch"] == 3
    best = _weights(tmp_path / "run" / "checkpoints" / "best.safetensors")
    last = _weights(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert best.keys() == last.keys() and all(torch.equal(best[k], last[k]) for k in best)
    assert [row["epoch"] for row in RunStore(tmp_path / "run").metrics()] == [1, 2, 3]


def test_select_is_checked_and_excludes_patience():
    with pytest.raises(ConfigError, match="train.select must be best or last"):
        Config.from_dict({"train": {"select": "final"}})
    with pytest.raises(ConfigError, match="needs train.select=best"):
        Config.from_dict({"train": {"select": "last", "patience": 3}})
