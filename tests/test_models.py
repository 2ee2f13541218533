"""Model family: every registered model builds, trains, saves and runs variable inputs correctly."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from asca_core.errors import ModelError
from asca_core.models import ASCA, LAYOUTS, build_model, build_model_from_config, count_params, gmacs, list_models
from asca_core.models.asca import GlobalWindowWarning
from asca_core.models.attention import MultiHeadAttention, relative_index
from asca_core.models.blocks import MBConv, TransformerBlock

NUM_CLASSES = 5
# Small inputs keep CPU time low; the big sizes get the smallest grid that still has 2x2 tokens in S4.
INPUTS = {"asca_0": (64, 64), "asca_1": (64, 64)}
DEFAULT_INPUT = (64, 128)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test of this module on one torch thread."""


def _input(name: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, *INPUTS.get(name, DEFAULT_INPUT), generator=g)


def _build(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, NUM_CLASSES, **overrides)


def _attn_modules(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)}


def test_registry_lists_sizes_and_baseline():
    names = list_models()
    assert {"asca_pico", "asca_tiny", "asca_0", "asca_1", "ast_tiny"} <= set(names)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = _build(name, drop_path=0.0).train()  # a dropped branch would rightly get no gradient
    logits = model(_input(name))
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 3])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", list_models())
def test_safetensors_round_trip_and_eval_determinism(name, tmp_path):
    model = _build(name, seed=0)
    model.train()
    with torch.no_grad():
        model(_input(name, seed=1))  # move BatchNorm running statistics away from their init
    model.eval()
    x = _input(name)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(model(x), expected), "eval mode is not deterministic"
        # Batch-vs-single consistency: one sample alone gives its row of the batch.
        torch.testing.assert_close(model(x[1:]), expected[1:], rtol=1e-5, atol=1e-5)
    path = tmp_path / "weights.safetensors"
    save_file(model.state_dict(), str(path))
    fresh = _build(name, seed=1).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), expected), "differently seeded models should differ"
        fresh.load_state_dict(load_file(str(path)))
        assert torch.equal(fresh(x), expected)


@pytest.mark.parametrize("name", list_models())
def test_config_is_json_and_rebuilds_the_same_architecture(name):
    model = _build(name, drop_path=0.05)
    config = json.loads(json.dumps(model.config))
    assert config["name"] == name and config["num_classes"] == NUM_CLASSES
    assert tuple(model.input_size) == tuple(config["input_size"]) == (128, 320)
    rebuilt = build_model_from_config(config)
    assert rebuilt.config == model.config
    assert {n: p.shape for n, p in rebuilt.named_parameters()} == {n: p.shape for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", list_models())
def test_no_weight_decay_names_norms_biases_tables_positions(name):
    model = _build(name)
    params = dict(model.named_parameters())
    skip = model.no_weight_decay()
    assert skip <= set(params)
    for pname, p in params.items():
        if p.ndim <= 1 or pname.endswith(("rel_bias.table", "pos_embed", "cls_token")):
            assert pname in skip, pname
        else:
            assert pname not in skip, pname  # conv and linear weights are decayed
    assert any(n.endswith(("rel_bias.table", "pos_embed")) for n in skip)


def test_asca_0_ccct_matches_coatnet_0_size():
    model = build_model("asca_0", 264, layout="CCCT", in_chans=1, input_size=(224, 224))
    assert abs(count_params(model) / 23.0e6 - 1) < 0.03
    # CoAtNet-0 proper (C-C-T-T, 3 channels, 1000 classes) is the paper's 25M model.
    coatnet_0 = build_model("asca_0", 1000, layout="CCTT", in_chans=3, input_size=(224, 224))
    assert abs(count_params(coatnet_0) / 25.0e6 - 1) < 0.03


def test_asca_tiny_size_and_macs_match_the_measured_cpu_model():
    paper = build_model("asca_tiny", 10)
    depthwise = build_model("asca_tiny", 10, stride_mode="depthwise")
    assert abs(count_params(paper) / 3.1e6 - 1) < 0.03
    assert count_params(depthwise) == count_params(paper)
    assert abs(gmacs(paper, (128, 320)) - 0.49) < 0.02
    assert abs(gmacs(depthwise, (128, 320)) - 0.61) < 0.02


def test_unknown_name_and_bad_overrides_raise_one_line_model_errors():
    with pytest.raises(ModelError, match="unknown model 'asca_huge'; choose from: asca_pico"):
        build_model("asca_huge", 3)
    with pytest.raises(ModelError, match="unknown override 'depth' for asca_tiny; choose from: layout"):
        build_model("asca_tiny", 3, depth=4)
    with pytest.raises(ModelError, match="layout must be one of CCCT, CCTT, CCCC, CTTT, got 'CTCT'"):
        build_model("asca_pico", 3, layout="CTCT")
    with pytest.raises(ModelError, match="stride_mode must be one of paper, depthwise"):
        build_model("asca_pico", 3, stride_mode="pool")
    with pytest.raises(ModelError, match="input_size must be two positive multiples of 32"):
        build_model("asca_pico", 3, input_size=(128, 300))
    with pytest.raises(ModelError, match="attn_window must be a positive integer"):
        build_model("asca_pico", 3, attn_window=0)
    with pytest.raises(ModelError, match="num_classes must be a positive integer"):
        build_model("asca_pico", 0)
    with pytest.raises(ModelError, match="layout applies to ASCA models only; ast_tiny got layout='CCTT'"):
        build_model("ast_tiny", 3, layout="CCTT")
    for error in (ModelError("x"),):
        assert "\n" not in str(error)
    # The neutral ASCA settings a shared model config always carries are accepted by the baseline.
    assert build_model("ast_tiny", 3, layout="CCCT", stride_mode="paper", attn_window=None).num_classes == 3
    model = _build("asca_pico").eval()
    with pytest.raises(ModelError, match=r"expects input \(batch, 1, freq, time\), got shape \(2, 3, 64, 64\)"):
        model(torch.zeros(2, 3, 64, 64))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_place_transformer_stages_last(layout):
    model = _build("asca_pico", layout=layout)
    for stage, kind in zip(model.stages, layout):
        block = MBConv if kind == "C" else TransformerBlock
        assert all(isinstance(b, block) for b in stage)
    assert len(_attn_modules(model)) == layout.count("T")
    logits = model(_input("asca_pico"))
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()


def test_stride_modes_place_the_stride_where_they_say():
    paper, dw = _build("asca_pico", stride_mode="paper"), _build("asca_pico", stride_mode="depthwise")
    assert paper.s2[0].expand.stride == (2, 2) and paper.s2[0].dw.stride == (1, 1)
    assert dw.s2[0].expand.stride == (1, 1) and dw.s2[0].dw.stride == (2, 2)
    assert gmacs(dw, (64, 128)) > gmacs(paper, (64, 128))
    x = _input("asca_pico")
    assert paper(x).shape == dw(x).shape == (2, NUM_CLASSES)


def test_drop_path_rises_linearly_over_all_blocks():
    model = _build("asca_tiny", drop_path=0.2)
    rates = [b.drop_path.p for stage in model.stages for b in stage]
    assert len(rates) == 8
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.2, 8))


def _hand_gathered_bias(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """bias[h, i, j] = table[h, fi - fj + c_f, ti - tj + c_t], looping over every token pair."""
    heads, rows, cols = table.shape
    cf, ct = rows // 2, cols // 2  # index of offset zero
    h, w = grid
    out = torch.empty(heads, h * w, h * w)
    for i in range(h * w):
        for j in range(h * w):
            out[:, i, j] = table[:, i // w - j // w + cf, i % w - j % w + ct]
    return out


def test_shorter_input_reads_the_exact_table_sub_range():
    big = _build("asca_pico", input_size=(128, 320)).eval()  # S4 grid 4 x 10, table 7 x 19
    rel = big.s4[0].attn.rel_bias
    assert rel.table.shape[1:] == (7, 19)
    torch.testing.assert_close(rel((4, 4))[0], _hand_gathered_bias(rel.table.detach(), (4, 4)), rtol=0, atol=0)
    torch.testing.assert_close(rel((4, 10))[0], _hand_gathered_bias(rel.table.detach(), (4, 10)), rtol=0, atol=0)
    # A model built for 128 x 128 whose table is the centre of the big one computes the same logits.
    small = _build("asca_pico", input_size=(128, 128)).eval()
    state = big.state_dict()
    state["s4.0.attn.rel_bias.table"] = rel.table.detach()[:, :, 9 - 3 : 9 + 4]  # offsets -3..3 in time
    small.load_state_dict(state)
    x = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(big(x), small(x), rtol=1e-6, atol=1e-6)


def test_longer_input_clamps_offsets_beyond_the_trained_range():
    model = _build("asca_pico", input_size=(128, 320)).eval()  # S4 grid 4 x 10, table 7 x 19
    rel = model.s4[0].attn.rel_bias
    table = rel.table.detach()
    # Offsets beyond +-9 in time read the edge column: the table padded by replication.
    clamped = torch.cat([table[:, :, :1].expand(-1, -1, 6), table, table[:, :, -1:].expand(-1, -1, 6)], dim=2)
    torch.testing.assert_close(rel((4, 16))[0], _hand_gathered_bias(clamped, (4, 16)), rtol=0, atol=0)
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 128, 512))
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()


def test_a_change_of_resolution_resamples_the_table_when_loading():
    trained = _build("asca_pico", input_size=(128, 320)).eval()  # table 7 x 19
    finer = _build("asca_pico", input_size=(256, 640)).eval()  # table 15 x 39: twice the resolution
    finer.load_state_dict(trained.state_dict())
    table = trained.s4[0].attn.rel_bias.table.detach()
    expected = F.interpolate(table[None], size=(15, 39), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(finer.s4[0].attn.rel_bias.table.detach(), expected)
    torch.testing.assert_close(expected[:, 7, 19], table[:, 3, 9])  # offset 0 stays put


def test_relative_index_matches_offsets_and_is_cached():
    index = relative_index((2, 3), (2, 3))  # table 3 x 5
    # token 0 = (0, 0), token 5 = (1, 2): offset (-1, -2) -> row 0, column 0
    assert index[0, 5] == 0 and index[5, 0] == 3 * 5 - 1 and index[4, 4] == 1 * 5 + 2
    model = _build("asca_pico").eval()
    rel = model.s4[0].attn.rel_bias
    with torch.no_grad():
        model(torch.randn(1, 1, 64, 128))
        model(torch.randn(1, 1, 64, 128))
    assert list(rel._index_cache) == [(2, 4, 4, 10, "cpu")]


def test_inputs_that_are_not_multiples_of_32_are_zero_padded():
    model = _build("asca_pico").eval()
    x = torch.randn(2, 1, 100, 300)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(F.pad(x, (0, 20, 0, 28))), rtol=0, atol=0)


def test_window_attention_as_large_as_the_grid_equals_global_attention():
    glob = _build("asca_pico", layout="CCCT").eval()  # S4 grid 4 x 10, table 7 x 19
    with pytest.warns(GlobalWindowWarning, match="covers the whole token grid of s4"):
        local = _build("asca_pico", layout="CCCT", attn_window=10).eval()  # table 19 x 19, window 4 x 10
    assert local.s4[0].attn.rel_bias.table.shape[1:] == (19, 19)
    state = glob.state_dict()
    state["s4.0.attn.rel_bias.table"] = local.s4[0].attn.rel_bias.table.detach()
    local.load_state_dict(state)
    glob.s4[0].attn.rel_bias.table.data = local.s4[0].attn.rel_bias.table.detach()[:, 6:13, :]
    x = torch.randn(2, 1, 128, 320)
    with torch.no_grad():
        torch.testing.assert_close(local(x), glob(x), rtol=1e-5, atol=1e-5)


def test_windowed_attention_pads_and_runs_every_layout():
    for layout in ("CCTT", "CTTT"):
        model = _build("asca_pico", layout=layout, attn_window=3)
        assert all(m.rel_bias.table.shape[1:] == (5, 5) for m in _attn_modules(model).values())
        logits = model(torch.randn(2, 1, 96, 160))  # S2 grid 12 x 20: windows pad 20 -> 21
        logits.sum().backward()
        assert torch.isfinite(logits).all()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_channels_last_gives_the_same_logits():
    model = _build("asca_pico", layout="CCTT").eval()
    x = torch.randn(2, 1, 64, 128)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_ast_positions_resample_to_other_grids():
    model = _build("ast_tiny").eval()
    assert model.pos_embed.shape[-2:] == (12, 31)  # (128 - 16) // 10 + 1, (320 - 16) // 10 + 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, 128, 320)).shape == (1, NUM_CLASSES)
        assert model(torch.randn(1, 1, 50, 90)).shape == (1, NUM_CLASSES)
    with pytest.raises(ModelError, match="freq >= 16"):
        model(torch.randn(1, 1, 8, 90))


def test_gmacs_counts_attention_and_leaves_the_model_mode_alone():
    model = _build("asca_pico", layout="CCTT").train()
    conv_only = _build("asca_pico", layout="CCCC")
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    macs = gmacs(model, (128, 320))
    assert model.training
    assert 0.01 < macs < 0.2 and macs != gmacs(conv_only, (128, 320))
    # Doubling the time axis at least doubles the cost (attention grows quadratically).
    assert gmacs(model, (128, 640)) >= 2 * macs


@pytest.mark.slow
def test_torch_compile_traces_one_graph_without_breaks():
    # fullgraph=True fails on any graph break; aot_eager skips inductor's slow C++ code generation
    # (inductor speed is measured in benchmarks/).
    model = _build("asca_pico", layout="CCTT").eval()
    x = torch.randn(2, 1, 64, 128)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_asca_is_exported_at_package_level():
    import asca_core

    assert asca_core.build_model is build_model
    assert isinstance(asca_core.build_model("asca_pico", 2), ASCA)


@pytest.mark.parametrize("overrides", [{}, {"layout": "CTTT", "attn_window": 3}])
def test_bf16_autocast_runs_global_and_windowed_attention(overrides):
    model = _build("asca_pico", **overrides)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(2, 1, 96, 160))  # windows pad the 12 x 20 S2 grid
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    logits.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "model",
    [
        {"name": "asca_pico"},
        {"name": "asca_pico", "layout": "CCTT", "attn_window": 2, "head_pool": "avgmax", "se_act": "silu"},
        {"name": "asca_pico", "layout": "CTTT", "attn_division": 8, "downsample_pool": "max", "drop_path": 0.05},
        {"name": "ast_tiny", "drop_path": 0.0},
    ],
)
def test_a_config_model_section_builds_the_model_its_checkpoint_was_saved_from(model):
    from asca_core.config import Config
    from asca_core.models import build_model_for
    from asca_core.train.checkpoint import model_from_config

    cfg = Config.from_dict({"features": {"n_mels": 64, "clip_seconds": 1.0}, "model": model})
    built = build_model_for(cfg.model, NUM_CLASSES, cfg.features.input_size)
    assert built.config == model_from_config(cfg, NUM_CLASSES).config
    assert tuple(built.input_size) == tuple(cfg.features.input_size)


def test_a_config_model_section_with_asca_settings_is_refused_for_a_baseline():
    from asca_core.config import Config
    from asca_core.models import build_model_for

    cfg = Config.from_dict({"model": {"name": "ast_tiny", "layout": "CCTT"}})
    with pytest.raises(ModelError, match="model.layout applies to ASCA models only; ast_tiny got layout='CCTT'"):
        build_model_for(cfg.model, NUM_CLASSES, cfg.features.input_size)


# ----------------------------------------------------------------------------- one architecture type
def test_stored_config_of_asca_tiny_is_the_one_earlier_checkpoints_hold():
    # the exact dict earlier checkpoints stored: a new field must not change it at its default
    assert build_model("asca_tiny", 10).config == {
        "name": "asca_tiny",
        "family": "asca",
        "num_classes": 10,
        "in_chans": 1,
        "layout": "CCCT",
        "stem_width": 32,
        "widths": [48, 96, 192, 384],
        "depths": [2, 2, 3, 1],
        "head_dim": 32,
        "head_hidden": 384,
        "drop_path": 0.1,
        "stride_mode": "paper",
        "attn_window": None,
        "input_size": [128, 320],
    }


@pytest.mark.parametrize("name", ["asca_pico", "asca_tiny"])
def test_architecture_round_trips_through_the_stored_config(name):
    from asca_core.models.asca import AscaArchitecture

    model = build_model(name, 7, layout="CCTT", head_pool="avgmax", input_size=(64, 96), se_act="silu")
    config = json.loads(json.dumps(model.config))
    assert AscaArchitecture.from_dict(config) == model.architecture
    assert model.architecture.to_dict() == model.config
    assert config["head_pool"] == "avgmax" and config["se_act"] == "silu"


def test_a_stored_architecture_is_rebuilt_as_stored_not_as_its_size():
    from dataclasses import replace

    from asca_core.models.asca import ASCA_SIZES, asca_from_architecture

    narrow = asca_from_architecture(replace(ASCA_SIZES["asca_pico"], num_classes=3, widths=(8, 16, 32, 64)))
    rebuilt = build_model_from_config(json.loads(json.dumps(narrow.config)))
    assert count_params(rebuilt) == count_params(narrow) < count_params(build_model("asca_pico", 3))
    rebuilt.load_state_dict(narrow.state_dict())  # same tensors, same shapes


@pytest.mark.parametrize(
    "change, message",
    [
        ({"widths": "wide"}, "positive integers"),
        ({"depths": [1, 1, 1]}, "positive integers"),
        ({"stem_width": -4}, "positive integers"),
        ({"colour": "red"}, "unknown settings: colour"),
    ],
)
def test_a_damaged_stored_architecture_is_one_model_error(change, message):
    config = {**build_model("asca_pico", 3).config, **change}
    with pytest.raises(ModelError, match=message):
        build_model_from_config(config)


def test_every_architecture_setting_of_the_config_is_an_architecture_field():
    from dataclasses import fields

    from asca_core.config import ModelConfig
    from asca_core.models.asca import OVERRIDABLE
    from asca_core.models.registry import RUN_SETTINGS

    settings = {f.name for f in fields(ModelConfig)} - set(RUN_SETTINGS)
    assert settings <= set(OVERRIDABLE)
