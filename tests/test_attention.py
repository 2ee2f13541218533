"""Attention inspection: capture, relative-bias tables, rollout and per-query maps."""

from __future__ import annotations

import pytest
import torch

from asca_core.errors import ModelError
from asca_core.inspect import AttentionMap, attention_rollout, capture_attention, query_attention, relative_bias_tables
from asca_core.models import build_model, list_models
from asca_core.models.attention import MultiHeadAttention

ATTENTION_MODELS = [n for n in list_models() if n != "asca_1"] + ["asca_pico:CCTT", "asca_pico:CTTT:w3"]
INPUTS = {"asca_0": (64, 64)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test of this module on one torch thread."""


def _model(spec: str, seed: int = 0) -> torch.nn.Module:
    name, *rest = spec.split(":")
    overrides = {}
    for part in rest:
        if part.startswith("w"):
            overrides["attn_window"] = int(part[1:])
        else:
            overrides["layout"] = part
    torch.manual_seed(seed)
    return build_model(name, 4, **overrides).eval()


def _input(spec: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 1, *INPUTS.get(spec.split(":")[0], (64, 128)), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("spec", ATTENTION_MODELS)
def test_capture_leaves_logits_unchanged_and_rows_sum_to_one(spec):
    model = _model(spec)
    x = _input(spec)
    with torch.no_grad():
        fast = model(x)
        with capture_attention(model) as maps:
            explicit = model(x)
    torch.testing.assert_close(explicit, fast, rtol=1e-5, atol=1e-5)
    n_attention = sum(isinstance(m, MultiHeadAttention) for m in model.modules())
    assert len(maps) == n_attention > 0
    for name, amap in maps.items():
        B, heads, N, N2 = amap.probs.shape
        assert B == 2 and N == N2 == amap.prefix_tokens + amap.grid[0] * amap.grid[1], name
        torch.testing.assert_close(amap.probs.sum(-1), torch.ones(B, heads, N), rtol=0, atol=1e-5)
        assert (amap.probs >= 0).all()


def test_captured_maps_follow_the_relative_attention_formula():
    """softmax_j(q_i . k_j / sqrt(d) + w[h, f_i - f_j, t_i - t_j]) computed by hand from the weights."""
    model = _model("asca_pico")
    block = model.s4[0]
    inputs = {}
    block.attn.register_forward_pre_hook(lambda m, args: inputs.update(x=args[0], grid=args[1]))
    with torch.no_grad(), capture_attention(model) as maps:
        model(_input("asca_pico"))
    x, (h, w) = inputs["x"], inputs["grid"]
    assert maps["s4.0"].grid == (h, w) == (2, 4) and maps["s4.0"].stride == (32, 32)
    heads, d = block.attn.num_heads, block.attn.head_dim
    q, k, _ = block.attn.qkv(x).chunk(3, dim=-1)  # (B, N, heads * d)
    table = block.attn.rel_bias.table.detach()  # (heads, 7, 19) for the 4 x 10 grid of 128 x 320
    cf, ct = table.shape[1] // 2, table.shape[2] // 2
    expected = torch.empty(x.shape[0], heads, h * w, h * w)
    for hd in range(heads):
        qh, kh = q[..., hd * d : (hd + 1) * d], k[..., hd * d : (hd + 1) * d]
        logits = qh @ kh.transpose(1, 2) / d**0.5
        for i in range(h * w):
            for j in range(h * w):
                logits[:, i, j] += table[hd, i // w - j // w + cf, i % w - j % w + ct]
        expected[:, hd] = logits.softmax(-1)
    torch.testing.assert_close(maps["s4.0"].probs, expected, rtol=1e-5, atol=1e-6)


def test_capture_is_removed_on_exit_even_after_an_exception():
    model = _model("asca_pico:CCTT")
    attns = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    x = _input("asca_pico")
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(model) as maps:
            model(x)
            raise RuntimeError("boom")
    assert len(maps) == 2
    assert all(a.capture is None for a in attns)
    maps.clear()
    with torch.no_grad():
        model(x)
    assert maps == {}, "a closed capture must not record"
    with capture_attention(model):  # a new capture starts cleanly
        with pytest.raises(ModelError, match="already being captured"):
            with capture_attention(model):
                pass
    assert all(a.capture is None for a in attns)


def test_capture_on_a_conv_only_model_is_empty():
    model = _model("asca_pico:CCCC")
    with torch.no_grad(), capture_attention(model) as maps:
        model(_input("asca_pico"))
    assert maps == {}
    with pytest.raises(ModelError, match="no attention maps to roll out"):
        attention_rollout(maps)


def test_windowed_maps_are_zero_between_windows():
    model = _model("asca_pico:CTTT:w3")
    with torch.no_grad(), capture_attention(model) as maps:
        model(torch.randn(1, 1, 64, 128))  # S2 grid 8 x 16: windows of 3 x 3, padded to 9 x 18
    amap = maps["s2.0"]
    assert amap.grid == (8, 16)
    h, w = amap.grid
    cell = torch.arange(h * w)
    same_window = ((cell[:, None] // w) // 3 == (cell[None, :] // w) // 3) & (
        (cell[:, None] % w) // 3 == (cell[None, :] % w) // 3
    )
    probs = amap.probs[0]
    assert (probs[:, ~same_window] == 0).all()
    assert (probs[:, same_window] > 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))


def test_relative_bias_tables_report_offsets_in_bins_and_frames():
    model = _model("asca_pico:CCTT")  # built for 128 x 320: S3 grid 8 x 20, S4 grid 4 x 10
    tables = relative_bias_tables(model)
    assert list(tables) == ["s3.0", "s4.0"]
    s3, s4 = tables["s3.0"], tables["s4.0"]
    assert s3.table.shape == (2, 15, 39) and s4.table.shape == (4, 7, 19)
    torch.testing.assert_close(s4.table, model.s4[0].attn.rel_bias.table.detach())
    assert s3.freq_offsets_bins.tolist() == [16 * i for i in range(-7, 8)]
    assert s4.time_offsets_frames.tolist() == [32 * i for i in range(-9, 10)]
    # For a shorter input the model reads the centre of the table: offsets -3..3 in S4 time.
    short = relative_bias_tables(model, (128, 128))["s4.0"]
    torch.testing.assert_close(short.table, s4.table[:, :, 6:13])
    assert short.time_offsets_frames.tolist() == [32 * i for i in range(-3, 4)]
    # For a longer input offsets beyond the table read its edge; offset zero keeps its column.
    long = relative_bias_tables(model, (128, 512))["s4.0"]
    assert long.table.shape == (4, 7, 31)
    torch.testing.assert_close(long.table[:, :, 15], s4.table[:, :, 9])
    windowed = relative_bias_tables(_model("asca_pico:CTTT:w3"))
    assert windowed["s2.0"].table.shape == (1, 5, 5)
    assert windowed["s4.0"].time_offsets_frames.tolist() == [-64, -32, 0, 32, 64]


def _map(probs: torch.Tensor, grid=(2, 2)) -> AttentionMap:
    return AttentionMap(probs=probs, grid=grid, stride=(32, 32))


def test_rollout_adds_the_residual_and_multiplies_blocks_in_order():
    g = torch.Generator().manual_seed(0)
    a1 = torch.rand(1, 2, 4, 4, generator=g).softmax(-1)
    a2 = torch.rand(1, 2, 4, 4, generator=g).softmax(-1)
    eye = torch.eye(4)
    torch.testing.assert_close(attention_rollout({"b1": _map(a1)}, residual=False), a1.mean(1))
    r1, r2 = (a1.mean(1) + eye) / 2, (a2.mean(1) + eye) / 2  # rows of A + I sum to 2
    torch.testing.assert_close(attention_rollout({"b1": _map(a1), "b2": _map(a2)}), r2 @ r1)
    # A finer grid from an earlier stage does not chain with the pooled grid: it is skipped.
    fine = _map(torch.rand(1, 2, 16, 16, generator=g).softmax(-1), grid=(4, 4))
    torch.testing.assert_close(attention_rollout({"s3.0": fine, "b1": _map(a1), "b2": _map(a2)}), r2 @ r1)


def test_rollout_of_a_real_model_is_row_stochastic():
    model = _model("asca_pico:CCTT")
    with torch.no_grad(), capture_attention(model) as maps:
        model(_input("asca_pico"))
    rollout = attention_rollout(maps)
    assert rollout.shape == (2, 8, 8)  # S4 grid 2 x 4 of a 64 x 128 input
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 8))


def test_query_attention_cuts_out_one_row():
    model = _model("asca_pico")
    with torch.no_grad(), capture_attention(model) as maps:
        model(_input("asca_pico"))
    amap = maps["s4.0"]  # grid 2 x 4
    row = query_attention(amap, (1, 2), batch_index=1)
    assert row.shape == (2, 4)
    torch.testing.assert_close(row.flatten(), amap.probs[1, :, 6].mean(0))
    torch.testing.assert_close(query_attention(amap, 6, head=3, batch_index=1).flatten(), amap.probs[1, 3, 6])
    with pytest.raises(ModelError, match=r"query cell \(2, 0\) is outside the 2x4 token grid"):
        query_attention(amap, (2, 0))
    with pytest.raises(ModelError, match="head 9 does not exist"):
        query_attention(amap, 0, head=9)


def test_ast_maps_keep_the_class_token_apart():
    model = _model("ast_tiny")
    with torch.no_grad(), capture_attention(model) as maps:
        model(_input("ast_tiny", batch=1))
    amap = maps["blocks.0"]
    assert amap.grid == (5, 12) and amap.prefix_tokens == 1 and amap.stride == (10, 10)
    assert amap.probs.shape == (1, 3, 61, 61)
    query = query_attention(amap, (0, 0))
    torch.testing.assert_close(query.sum(), 1 - amap.probs[0, :, 1, 0].mean())
    assert attention_rollout(maps).shape == (1, 61, 61)
