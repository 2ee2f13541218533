"""The classifier head's pooling: global average (CoAtNet) and mean + max over time (PANNs)."""

from __future__ import annotations

import pytest
import torch

from asca_core.config import Config
from asca_core.errors import ConfigError, ModelError
from asca_core.models import build_model, build_model_from_config
from asca_core.models.asca import ClassifierHead
from asca_core.train.checkpoint import model_from_config


def _event_map(length: int, at: int) -> torch.Tensor:
    """A (1, C, 2, length) feature map that is zero except one time step."""
    x = torch.zeros(1, 8, 2, length)
    x[:, :, :, at] = torch.linspace(1.0, 2.0, 8).view(1, 8, 1)
    return x


def test_avgmax_keeps_a_short_event_that_the_average_dilutes():
    torch.manual_seed(0)
    avg, avgmax = ClassifierHead(8, 3, pool="avg"), ClassifierHead(8, 3, pool="avgmax")
    # the pooled vector before LayerNorm: an event in 1 of 16 steps is 1/16 of itself under avg
    pooled_avg = _event_map(16, 5).mean((2, 3))
    x = _event_map(16, 5).mean(2)
    pooled_avgmax = x.mean(-1) + x.amax(-1)
    assert torch.allclose(pooled_avgmax, pooled_avg + torch.linspace(1.0, 2.0, 8))
    # the same event in a four times longer clip: avgmax's max term does not shrink
    short, long = _event_map(4, 1).mean(2), _event_map(16, 1).mean(2)
    assert torch.equal(short.amax(-1), long.amax(-1))
    assert avg(_event_map(16, 5)).shape == avgmax(_event_map(16, 5)).shape == (1, 3)


def test_avgmax_output_depends_on_the_strongest_time_step_not_only_the_mean():
    torch.manual_seed(0)
    head = ClassifierHead(8, 3, pool="avgmax")
    channels = torch.linspace(-1.0, 2.0, 8).view(1, 8, 1, 1)
    spread = channels.expand(1, 8, 2, 16) / 16  # the same mean over time as one step at full level
    peaked = torch.zeros(1, 8, 2, 16)
    peaked[..., 3:4] = channels
    assert torch.allclose(spread.mean((2, 3)), peaked.mean((2, 3)))
    assert not torch.allclose(head(spread), head(peaked))
    avg = ClassifierHead(8, 3, pool="avg")
    avg.load_state_dict(head.state_dict())
    assert torch.allclose(avg(spread), avg(peaked))


def test_head_pool_is_stored_in_the_model_config_and_rebuilt():
    model = build_model("asca_pico", 4, head_pool="avgmax", input_size=(64, 96))
    assert model.config["head_pool"] == "avgmax"
    rebuilt = build_model_from_config(model.config)
    rebuilt.load_state_dict(model.state_dict())
    spec = torch.randn(2, 1, 64, 96)
    model.eval(), rebuilt.eval()
    assert torch.allclose(model(spec), rebuilt(spec))
    # the default stays out of the config, so configs written before the option read the same
    assert "head_pool" not in build_model("asca_pico", 4).config


def test_head_pool_from_a_training_config():
    cfg = Config.from_dict(
        {
            "model": {"name": "asca_pico", "head_pool": "avgmax"},
            "features": {
                "n_mels": 64,
                "clip_seconds": 1.0,
                "sample_rate": 16000,
                "hop_length": 160,
                "win_length": 400,
                "n_fft": 512,
            },
        }
    )
    model = model_from_config(cfg, 5)
    assert model.head.pool == "avgmax"
    assert model(torch.randn(1, 1, 64, 96)).shape == (1, 5)


def test_bad_head_pool_values_are_named():
    with pytest.raises(ConfigError, match="model.head_pool must be avg or avgmax, got 'max'"):
        Config.from_dict({"model": {"head_pool": "max"}})
    with pytest.raises(ModelError, match="head_pool must be one of avg, avgmax"):
        build_model("asca_pico", 3, head_pool="attention")
    with pytest.raises(ModelError, match="head_pool applies to ASCA models only"):
        build_model("ast_tiny", 3, head_pool="avgmax")
