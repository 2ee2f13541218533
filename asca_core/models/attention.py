"""Multi-head self-attention with a learned 2-D relative position bias (CoAtNet eq. 3).

``softmax_j(q_i . k_j / sqrt(d) + w[h, i - j])``: every head owns a table ``w`` with one learned
scalar per 2-D offset between a query and a key on the (freq, time) token grid. The fast path
gathers the table into a ``(1, heads, N, N)`` float mask for ``F.scaled_dot_product_attention``;
the explicit path computes the softmax maps itself and runs only while
:func:`asca_core.inspect.capture_attention` is open in the calling thread.

Capture sinks live in a context variable, not on the modules: a model shared by several threads
(the app's cached model serves every browser session) keeps the fast path and its outputs in every
thread but the one capturing, and two threads can capture the same model at once.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CaptureSink = Callable[[Tensor, tuple[int, int]], None]

# {attention module: sink} of the current thread (each thread starts with its own empty context).
_SINKS: contextvars.ContextVar[Mapping[nn.Module, CaptureSink] | None] = contextvars.ContextVar(
    "asca_attention_capture", default=None
)


@contextmanager
def capture_sinks(sinks: Mapping[nn.Module, CaptureSink]) -> Iterator[None]:
    """Route the softmax maps of these attention modules to their sinks in this thread only.

    Other threads running the same modules meanwhile see no sink and take the fused path. The
    routing ends on exit, also after an exception.
    """
    token = _SINKS.set({**(_SINKS.get() or {}), **sinks})
    try:
        yield
    finally:
        _SINKS.reset(token)


def relative_index(grid: tuple[int, int], table_grid: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """Flat table index of every (query, key) offset on ``grid``.

    The table holds offsets of a ``table_grid`` (TH, TW) >= ``grid``: offset (df, dt) lives at
    row ``df + TH - 1`` and column ``dt + TW - 1``. Indexing with the large grid's strides makes a
    smaller grid read the exact centre sub-range of the table.

    Shapes: returns (N, N) int64 with N = h * w, row-major over (freq, time).
    """
    h, w = grid
    th, tw = table_grid
    freq = torch.arange(h, device=device).repeat_interleave(w)  # (N,) freq row of each token
    time = torch.arange(w, device=device).repeat(h)  # (N,) time column of each token
    d_freq = freq[:, None] - freq[None, :] + th - 1  # (N, N) in [0, 2 TH - 2]
    d_time = time[:, None] - time[None, :] + tw - 1
    return d_freq * (2 * tw - 1) + d_time


def resize_table(table: Tensor, grid: tuple[int, int]) -> Tensor:
    """A bias table resampled bilinearly to the table of another token grid (CoAtNet appendix A.1).

    For a genuine change of resolution (weights trained at one input size loaded into a model
    built for another), where one token covers a different stretch of the spectrogram.

    Shapes: (heads, R, C) -> (heads, 2h - 1, 2w - 1).
    """
    size = (2 * grid[0] - 1, 2 * grid[1] - 1)
    if tuple(table.shape[-2:]) == size:
        return table
    return F.interpolate(table.unsqueeze(0), size=size, mode="bilinear", align_corners=False).squeeze(0)


class RelativePositionBias(nn.Module):
    """A learned (heads, 2H-1, 2W-1) bias table for a token grid of (H, W) = (freq, time).

    A grid up to (H, W) uses the table exactly. A longer or higher grid at the same resolution (an
    inference window longer than the training clip) clamps offsets beyond the trained range to the
    table's edge: every trained offset keeps its learned value ("one token later" means the same
    thing at any length). A change of resolution is a different model size: loading a state dict
    whose table was built for another grid resamples it with :func:`resize_table`.
    Gather indices are cached per grid size and device.
    """

    def __init__(self, num_heads: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.table = nn.Parameter(torch.zeros(num_heads, 2 * self.grid[0] - 1, 2 * self.grid[1] - 1))
        nn.init.trunc_normal_(self.table, std=0.02)
        self._index_cache: dict[tuple[int, int, int, int, str], Tensor] = {}

    def table_for(self, grid: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """The table a ``grid`` reads and the grid that table is laid out for.

        Shapes: returns ((heads, 2 TH - 1, 2 TW - 1), (TH, TW)) with TH >= h, TW >= w.
        """
        th, tw = max(grid[0], self.grid[0]), max(grid[1], self.grid[1])
        if (th, tw) == self.grid:
            return self.table, self.grid
        # Replicating the edge entries outwards is the same as clamping every offset to the
        # trained range: offsets inside it read their own learned entry, longer ones the longest.
        ph, pw = th - self.grid[0], tw - self.grid[1]
        table = F.pad(self.table.unsqueeze(0), (pw, pw, ph, ph), mode="replicate").squeeze(0)
        return table, (th, tw)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        stored = state_dict.get(prefix + "table")
        if (
            isinstance(stored, Tensor)
            and stored.ndim == 3
            and stored.shape[0] == self.table.shape[0]
            and stored.shape[1:] != self.table.shape[1:]
        ):
            state_dict[prefix + "table"] = resize_table(stored, self.grid)  # the caller's dict is a copy
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _index(self, grid: tuple[int, int], table_grid: tuple[int, int], device: torch.device) -> Tensor:
        if torch.compiler.is_compiling():
            return relative_index(grid, table_grid, device)  # traced once into the graph
        key = (*grid, *table_grid, str(device))
        index = self._index_cache.get(key)
        if index is None:
            index = relative_index(grid, table_grid, device).flatten()
            self._index_cache[key] = index
        return index

    def forward(self, grid: tuple[int, int]) -> Tensor:
        """Shapes: returns (1, heads, N, N) with N = h * w."""
        table, table_grid = self.table_for(grid)
        n = grid[0] * grid[1]
        index = self._index(grid, table_grid, table.device).reshape(-1)
        bias = table.flatten(1)[:, index]  # (heads, N * N)
        return bias.view(1, -1, n, n)


def window_partition(x: Tensor, window: tuple[int, int]) -> Tensor:
    """Shapes: (B, H, W, C) with H, W multiples of the window -> (B * nW, kh * kw, C)."""
    B, H, W, C = x.shape
    kh, kw = window
    x = x.view(B, H // kh, kh, W // kw, kw, C).permute(0, 1, 3, 2, 4, 5)  # (B, nH, nW, kh, kw, C)
    return x.reshape(-1, kh * kw, C)


def window_reverse(windows: Tensor, window: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`. Shapes: (B * nW, kh * kw, C) -> (B, H, W, C)."""
    kh, kw = window
    H, W = grid
    C = windows.shape[-1]
    x = windows.view(-1, H // kh, W // kw, kh, kw, C).permute(0, 1, 3, 2, 4, 5)  # (B, nH, kh, nW, kw, C)
    return x.reshape(-1, H, W, C)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention over a (freq, time) token grid, optionally relative and windowed.

    Args:
        dim: input channels. dim_out: output channels (heads = dim_out // head_dim).
        rel_grid: grid the relative-bias table is built for; None = no relative bias.
        window: k for local k x k windows (the table is then built for k x k); None = global.
        prefix_tokens: leading non-grid tokens (a ViT's cls token); only without windows.

    Shapes: forward((B, prefix + h * w, dim), (h, w)) -> (B, prefix + h * w, dim_out).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        head_dim: int = 32,
        rel_grid: tuple[int, int] | None = None,
        window: int | None = None,
        prefix_tokens: int = 0,
    ) -> None:
        super().__init__()
        assert dim_out % head_dim == 0, (dim_out, head_dim)
        assert not (window and prefix_tokens), "windows and prefix tokens do not mix"
        self.num_heads = dim_out // head_dim
        self.head_dim = head_dim
        self.window = window
        self.prefix_tokens = prefix_tokens
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)
        table_grid = (window, window) if window else rel_grid
        self.rel_bias = RelativePositionBias(self.num_heads, table_grid) if table_grid else None

    @property
    def capture(self) -> CaptureSink | None:
        """This thread's sink for (probs (B, heads, N, N), grid), set by
        :func:`asca_core.inspect.capture_attention`; None outside a capture."""
        if torch.compiler.is_compiling():
            return None  # a compiled graph takes the fused path
        sinks = _SINKS.get()
        return sinks.get(self) if sinks else None

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        sink = self.capture  # read once: the same forward computes and delivers the maps
        if self.window is None:
            out, probs = self._attend(x, grid, None, sink is not None)
            if sink is not None and probs is not None:
                sink(probs, grid)
            return out
        return self._forward_windows(x, grid, self.window, sink)

    def _attend(
        self, x: Tensor, grid: tuple[int, int], key_mask: Tensor | None, explicit: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        # q, k, v: (B, heads, N, d)
        mask = None
        if self.rel_bias is not None:
            mask = self.rel_bias(grid)  # (1, heads, N, N)
            if self.prefix_tokens:
                mask = F.pad(mask, (self.prefix_tokens, 0, self.prefix_tokens, 0))
        if key_mask is not None:
            mask = key_mask if mask is None else mask + key_mask  # (B, heads, N, N)
        if mask is not None:
            mask = mask.to(q.dtype)  # SDPA wants the mask in the query's dtype under autocast
        probs = None
        if not explicit:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (B, heads, N, N)
            if mask is not None:
                scores = scores + mask
            probs = scores.softmax(dim=-1)
            out = probs @ v
        out = out.transpose(1, 2).reshape(B, N, -1)  # (B, N, heads * d)
        return self.proj(out), probs

    def _forward_windows(
        self, x: Tensor, grid: tuple[int, int], window: int, sink: CaptureSink | None = None
    ) -> Tensor:
        B, _, C = x.shape
        h, w = grid
        # A grid smaller than the window attends globally through the window's table sub-range.
        kh, kw = min(window, h), min(window, w)
        ph, pw = -h % kh, -w % kw
        hp, wp = h + ph, w + pw
        x = F.pad(x.view(B, h, w, C), (0, 0, 0, pw, 0, ph))  # (B, hp, wp, C)
        windows = window_partition(x, (kh, kw))  # (B * nW, kh * kw, C)
        key_mask = None
        if ph or pw:
            # Padded cells are never attended to: their keys get -inf.
            valid = torch.zeros(1, hp, wp, 1, device=x.device, dtype=torch.bool)
            valid[:, :h, :w] = True
            valid = window_partition(valid, (kh, kw))[..., 0]  # (nW, n)
            key_mask = torch.zeros(valid.shape, device=x.device, dtype=x.dtype).masked_fill(~valid, float("-inf"))
            key_mask = key_mask[:, None, None, :].repeat(B, 1, 1, 1)  # (B * nW, 1, 1, n)
        out, probs = self._attend(windows, (kh, kw), key_mask, sink is not None)
        out = window_reverse(out, (kh, kw), (hp, wp))[:, :h, :w]  # (B, h, w, dim_out)
        if sink is not None and probs is not None:
            sink(_windows_to_grid(probs, (kh, kw), (h, w), (hp, wp)), grid)
        return out.reshape(B, h * w, -1)


def _windows_to_grid(probs: Tensor, window: tuple[int, int], grid: tuple[int, int], padded: tuple[int, int]) -> Tensor:
    """Place per-window maps into one block-sparse map over the whole grid (zeros across windows).

    Shapes: (B * nW, heads, n, n) -> (B, heads, h * w, h * w).
    """
    hp, wp = padded
    heads, n = probs.shape[1], probs.shape[-1]
    cells = torch.arange(hp * wp, device=probs.device).view(1, hp, wp, 1)
    index = window_partition(cells, window)[..., 0]  # (nW, n) padded flat index of each window cell
    nw = index.shape[0]
    full = probs.new_zeros(probs.shape[0] // nw, heads, hp * wp, hp * wp)
    rows, cols = index[:, :, None].expand(nw, n, n), index[:, None, :].expand(nw, n, n)
    full[:, :, rows, cols] = probs.view(-1, nw, heads, n, n).transpose(1, 2)  # (B, heads, nW, n, n)
    h, w = grid
    real = (torch.arange(h, device=probs.device)[:, None] * wp + torch.arange(w, device=probs.device)).flatten()
    return full[:, :, real][:, :, :, real]
