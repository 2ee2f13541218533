"""asca_0 is timm's CoAtNet-0: timm's weights ported into it give the same outputs.

timm builds its model with ``pretrained=False`` (nothing is downloaded); its random weights, with
BatchNorm statistics and relative-bias tables made non-trivial, are what is ported.
"""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm")

from asca_core.errors import ModelError
from asca_core.models import build_model, count_params
from asca_core.models.timm_port import _qkv_rows, match_timm_norm_eps, timm_coatnet_state_dict

SIZE = (224, 224)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test of this module on one torch thread."""


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Fresh BatchNorms are the identity in eval mode and timm starts bias tables at zero: give
    them values, so a mistake in porting either shows in the outputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=g))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=g))
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
            table = getattr(module, "relative_position_bias_table", None)
            if table is not None:
                table.copy_(0.5 * torch.randn(table.shape, generator=g))
    return model.eval()


def _compare(theirs: torch.nn.Module, ours: torch.nn.Module) -> None:
    assert count_params(ours) == count_params(theirs)
    ours.load_state_dict(timm_coatnet_state_dict(theirs.state_dict(), ours))
    ours.eval()
    x = torch.randn(2, 1, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(x)
        # Only LayerNorm's eps differs (timm 1e-6, torch's default 1e-5 here).
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=5e-5)
        torch.testing.assert_close(match_timm_norm_eps(ours)(x), expected, rtol=0, atol=2e-6)


def test_timm_coatnet_0_ports_into_asca_0_cctt():
    torch.manual_seed(0)
    theirs = _randomise(timm.create_model("coatnet_0_224", pretrained=False, in_chans=1, num_classes=264))
    # timm's CoAtNet-0 strides in the depthwise conv and gates SE with SiLU.
    ours = build_model("asca_0", 264, layout="CCTT", input_size=SIZE, stride_mode="depthwise", se_act="silu")
    _compare(theirs, ours)


def test_timm_c_c_c_t_ports_into_the_paper_layout():
    from timm.models.maxxvit import MaxxVit, MaxxVitCfg, MaxxVitConvCfg

    cfg = MaxxVitCfg(
        embed_dim=(96, 192, 384, 768),
        depths=(2, 3, 5, 2),
        block_type=("C", "C", "C", "T"),
        stem_width=64,
        head_hidden_size=768,
        conv_cfg=MaxxVitConvCfg(stride_mode="1x1"),
    )
    torch.manual_seed(0)
    theirs = _randomise(MaxxVit(cfg, img_size=SIZE, in_chans=1, num_classes=264))
    ours = build_model("asca_0", 264, input_size=SIZE, se_act="silu")  # CCCT, the paper's stride
    _compare(theirs, ours)


def test_qkv_rows_regroup_head_first_channels():
    # timm (head first): [h0: q k v | h1: q k v]; ours: [q: h0 h1 | k: h0 h1 | v: h0 h1]
    assert _qkv_rows(heads=2, head_dim=1).tolist() == [0, 3, 1, 4, 2, 5]
    assert _qkv_rows(heads=2, head_dim=2).tolist() == [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11]


def test_a_model_of_other_widths_is_refused_by_name():
    """(Sizes without a pre-logits layer, like asca_pico, port too but differ: timm norms the map
    before pooling there, ours after, as CoAtNet's pre-logits head does.)"""
    from timm.models.maxxvit import MaxxVit, MaxxVitCfg

    cfg = MaxxVitCfg(
        embed_dim=(16, 32, 64, 128),
        depths=(1, 1, 1, 1),
        block_type=("C", "C", "C", "T"),
        stem_width=16,
        head_hidden_size=None,
    )
    theirs = MaxxVit(cfg, img_size=(64, 64), in_chans=1, num_classes=5)
    ours = build_model("asca_tiny", 5, input_size=(64, 64))
    with pytest.raises(
        ModelError, match=r"timm tensor 'stem.conv1.weight' \(16, 1, 3, 3\) does not fit 's0.conv1.weight'"
    ):
        timm_coatnet_state_dict(theirs.state_dict(), ours)
