"""Look inside the attention of ASCA (and AST) models.

- :func:`capture_attention` records the softmax maps of every attention block during a forward.
- :func:`relative_bias_tables` returns each block's learned relative-position bias with its
  offsets in mel bins and frames of the model input.
- :func:`attention_rollout` (Abnar & Zuidema 2020) chains the maps of successive blocks.
- :func:`query_attention` cuts out the (freq, time) map that one query position attends to.

A token at grid cell (f, t) of a block with stride (sf, st) covers model-input mel bins
``f*sf .. (f+1)*sf - 1`` and frames ``t*st .. (t+1)*st - 1`` (for AST the patches overlap:
16 x 16 patches every 10).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import cast

import torch
from torch import Tensor, nn

from ..errors import ModelError
from ..models.attention import MultiHeadAttention, capture_sinks


@dataclass
class AttentionMap:
    """Softmax attention of one block for the last forward pass inside the capture.

    ``probs`` is (B, heads, N, N) with rows (queries) summing to 1 and N = prefix_tokens + H * W;
    grid tokens are row-major over ``grid`` = (H, W) = (freq, time). ``stride`` gives model-input
    (mel bins, frames) per token. With local windows, pairs in different windows hold 0.
    """

    probs: Tensor
    grid: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    prefix_tokens: int = 0


@dataclass
class BiasTable:
    """One block's relative-position bias: ``table[h, i, j]`` is added to the attention logit of
    head h between tokens ``freq_offsets_bins[i]`` mel bins and ``time_offsets_frames[j]`` frames
    apart (query minus key). Shapes: table (heads, 2H-1, 2W-1); offsets (2H-1,) and (2W-1,).
    """

    table: Tensor
    freq_offsets_bins: Tensor
    time_offsets_frames: Tensor


def _attention_modules(model: nn.Module) -> list[tuple[str, MultiHeadAttention, tuple[int, int]]]:
    """(block name, attention module, token stride) for every attention layer, in forward order."""
    stage_strides = getattr(model, "stage_strides", None)
    strides = stage_strides() if callable(stage_strides) else {}
    found = []
    for path, module in model.named_modules():
        if isinstance(module, MultiHeadAttention):
            name = path.removeprefix("_orig_mod.").removesuffix(".attn")  # torch.compile wraps as _orig_mod
            stride = strides.get(name.split(".")[0], 1)
            found.append((name, module, (stride, stride)))
    return found


def _store(
    maps: dict[str, AttentionMap],
    name: str,
    stride: tuple[int, int],
    prefix: int,
    detach: bool,
    probs: Tensor,
    grid: tuple[int, int],
) -> None:
    maps[name] = AttentionMap(probs.detach() if detach else probs, (int(grid[0]), int(grid[1])), stride, prefix)


@contextmanager
def capture_attention(model: nn.Module, detach: bool = True) -> Iterator[dict[str, AttentionMap]]:
    """Record every attention block's softmax maps while the context is open.

    Inside the context the blocks switch from the fused ``scaled_dot_product_attention`` kernel to
    an explicit softmax (same outputs within float rounding); on exit, also after an exception,
    they switch back. Each forward overwrites the previous maps. A model without attention yields
    an empty dict. ``detach=False`` keeps the maps in the autograd graph.

    The capture belongs to the calling thread: forwards of the same model in other threads are
    neither recorded nor slowed, and each thread may hold its own capture of a shared model.

    Shapes: dict values hold probs (B, heads, N, N).
    """
    modules = _attention_modules(model)
    if any(attn.capture is not None for _, attn, _ in modules):
        raise ModelError("attention is already being captured on this model; close the other capture first")
    maps: dict[str, AttentionMap] = {}
    sinks: dict[nn.Module, Callable[[Tensor, tuple[int, int]], None]] = {
        attn: partial(_store, maps, name, stride, attn.prefix_tokens, detach) for name, attn, stride in modules
    }
    with capture_sinks(sinks):
        yield maps


def relative_bias_tables(model: nn.Module, input_size: tuple[int, int] | None = None) -> dict[str, BiasTable]:
    """Per-block relative-bias tables as the model applies them to an input of ``input_size``.

    ``None`` means the size the model was built for (its tables as stored). For a smaller input
    this is the centre sub-range of each table, for a larger one the table with offsets beyond its
    range clamped to its edge; with local windows it is the window's table (cut to the grid if the
    grid is smaller).

    Shapes: table (heads, 2H-1, 2W-1) for the block's (H, W) token grid or window.
    """
    size = tuple(input_size or cast(tuple[int, int], model.input_size))
    tables = {}
    for name, attn, (sf, st) in _attention_modules(model):
        if attn.rel_bias is None:
            continue
        h, w = (math.ceil(size[0] / 32) * 32 // sf, math.ceil(size[1] / 32) * 32 // st)
        if attn.window:
            h, w = min(h, attn.window), min(w, attn.window)
        with torch.no_grad():
            table, (th, tw) = attn.rel_bias.table_for((h, w))
            table = table[:, th - h : th + h - 1, tw - w : tw + w - 1].detach().clone()  # centre sub-range
        tables[name] = BiasTable(table, torch.arange(-(h - 1), h) * sf, torch.arange(-(w - 1), w) * st)
    return tables


def attention_rollout(maps: dict[str, AttentionMap], residual: bool = True) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020) over the captured blocks.

    Each block's map is averaged over heads; with ``residual`` the identity is added (the skip
    connection) and rows renormalised; the maps are multiplied in forward order. Only blocks on the
    last block's grid take part: a downsampling stage pools tokens, so maps of earlier, finer
    grids do not chain with it (in C-C-T-T this is the S4 stage; in C-C-C-T every transformer block).

    Shapes: returns (B, N, N) over the last grid (plus prefix tokens); row i says how much output
    token i draws on each input token of that grid.
    """
    if not maps:
        raise ModelError(
            "no attention maps to roll out: the model has no attention blocks, "
            "or no forward ran inside capture_attention"
        )
    blocks = list(maps.values())
    last = blocks[-1]
    rollout = torch.eye(last.probs.shape[-1], device=last.probs.device)  # no block yet: every token itself
    for amap in blocks:
        if amap.grid != last.grid or amap.probs.shape != last.probs.shape:
            continue
        attn = amap.probs.float().mean(dim=1)  # (B, N, N)
        if residual:
            attn = attn + torch.eye(attn.shape[-1], device=attn.device)
            attn = attn / attn.sum(dim=-1, keepdim=True)
        rollout = attn @ rollout
    return rollout


def query_attention(
    amap: AttentionMap, query: int | tuple[int, int], head: int | None = None, batch_index: int = 0
) -> Tensor:
    """Where one query token looks: its attention over the grid, mean over heads unless ``head``.

    ``query`` is a flat grid index or a (freq, time) grid cell. Prefix tokens (a class token) are
    left out of the returned map, so it sums to 1 minus their share.

    Shapes: returns (H, W).
    """
    H, W = amap.grid
    if isinstance(query, int):
        index = query
    else:
        f, t = query
        if not (0 <= f < H and 0 <= t < W):
            raise ModelError(f"query cell {tuple(query)!r} is outside the {H}x{W} token grid")
        index = f * W + t
    if not 0 <= index < H * W:
        raise ModelError(f"query index {index} is outside the {H}x{W} token grid")
    heads = amap.probs.shape[1]
    if head is not None and not 0 <= head < heads:
        raise ModelError(f"head {head} does not exist; the block has {heads} heads")
    p = amap.prefix_tokens
    row = amap.probs[batch_index, :, p + index, p:]  # (heads, H * W)
    row = row.mean(0) if head is None else row[head]
    return row.view(H, W)
