"""Attention views of one clip as plain arrays in seconds and Hz, ready to draw.

:func:`attention_views` runs the model once inside :func:`capture_attention` and returns, for
every attention block, where a chosen query token looks (per head and head-averaged) on the
block's (freq, time) token grid, the rollout over the last grid, and each block's learned
relative-position bias with its offsets in seconds and Hz::

    views = attention_views(clf, "clip.wav", query=(1, 4))
    block = views.blocks["s4.0"]
    block.heads.shape        # (heads, H, W): the query's attention, one map per head
    block.token_times        # (W,) seconds of each token column, block.token_freqs (H,) Hz
    views.bias["s4.0"].time_offsets_s, views.bias["s4.0"].freq_offsets_hz

Plotting lives in ``workbench.figures`` (``attention_map``, ``attention_heads``, ``relative_bias``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..audio import load_audio
from ..errors import AscaError
from .attention import attention_rollout, capture_attention, query_attention, relative_bias_tables
from .grid import frame_times, mel_frequencies, mel_position_to_hz, window_grid


@dataclass
class BlockAttention:
    """One block's attention for one query token.

    ``heads`` (heads, H, W) and ``mean`` (H, W) are the query's attention over the block's token
    grid; ``token_times`` (W,) and ``token_freqs`` (H,) place each token's centre in seconds and
    Hz; ``stride`` is (mel bins, frames) of model input per token.
    """

    name: str
    grid: tuple[int, int]
    stride: tuple[int, int]
    query: tuple[int, int]
    heads: np.ndarray
    mean: np.ndarray
    token_times: np.ndarray
    token_freqs: np.ndarray


@dataclass
class BiasView:
    """A block's relative-position bias over physical offsets (query minus key).

    ``table`` (heads, 2H-1, 2W-1); ``time_offsets_s`` (2W-1,); ``freq_offsets_bins`` (2H-1,) in
    mel bins and ``freq_offsets_hz`` (2H-1,) in Hz measured from ``ref_freq_hz`` (the mel scale is
    not linear, so an offset in bins spans a different number of Hz at each height).
    """

    name: str
    table: np.ndarray
    time_offsets_s: np.ndarray
    time_offsets_frames: np.ndarray
    freq_offsets_bins: np.ndarray
    freq_offsets_hz: np.ndarray
    ref_freq_hz: float


@dataclass
class AttentionViews:
    """Everything the attention pages draw for one clip.

    ``spec`` (F', T') is the model input (padding included, so token grids tile it); ``times``
    (T',) and ``freqs`` (F',) give its columns in seconds from the clip start and its rows in Hz
    (padded rows extrapolate the mel scale). ``rollout`` (H, W) is the rolled-out attention of the
    query token over the last grid and ``rollout_relevance`` (H, W) the mean over all queries
    (what global average pooling passes to the head).
    """

    spec: np.ndarray
    times: np.ndarray
    freqs: np.ndarray
    sample_rate: int
    hop_length: int
    n_mels: int
    blocks: dict[str, BlockAttention]
    rollout: np.ndarray | None
    rollout_relevance: np.ndarray | None
    rollout_grid: tuple[int, int] | None
    query: tuple[int, int]
    bias: dict[str, BiasView] = field(default_factory=dict)
    probs: np.ndarray | None = None  # (K,) class probabilities of the clip


def _token_centres(model, grid: tuple[int, int], stride: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Model-input (mel bin, frame) centre of every token row and column."""
    patch = getattr(model, "config", {}).get("patch_size") if hasattr(model, "config") else None
    h, w = grid
    if patch:  # overlapping ViT patches: patch k starts at k * stride
        return (np.arange(h) * stride[0] + (patch - 1) / 2, np.arange(w) * stride[1] + (patch - 1) / 2)
    return (np.arange(h) + 0.5) * stride[0] - 0.5, (np.arange(w) + 0.5) * stride[1] - 0.5


def _clip_wave(classifier, audio, sample_rate: int | None, start: float) -> np.ndarray:
    if isinstance(audio, (str, Path)):
        return load_audio(audio, classifier.sample_rate, offset=float(start), duration=classifier.clip_seconds)
    wave = classifier._as_wave(audio, sample_rate)
    first = int(round(float(start) * classifier.sample_rate))
    if not 0 <= first < wave.size:
        raise AscaError(f"start {start} s is outside the {wave.size / classifier.sample_rate:.2f} s wave")
    return wave[first:]


def attention_views(
    classifier,
    audio: str | Path | np.ndarray | Tensor,
    *,
    sample_rate: int | None = None,
    block: str | None = None,
    head: int | None = None,
    query: tuple[int, int] | None = None,
    start: float = 0.0,
) -> AttentionViews:
    """Attention of one clip: per block and head query maps, head average, rollout, bias tables.

    ``audio`` is a file or a wave at ``sample_rate``; one clip of the run's length from ``start``
    seconds is used, centre-cropped or padded exactly as the model sees it. ``query`` = (freq,
    time) token cell on the last attention block's grid (default: its centre); other blocks use
    the cell at the same relative position of their grid. ``block`` keeps one block, ``head`` one
    head (``heads`` then has length 1).

    Shapes: returns grids (H, W) per block, spec (F', T') the model input.
    """
    wave = _clip_wave(classifier, audio, sample_rate, start)
    spec = classifier.spectrogram(wave)  # (1, 1, F', T')
    model = classifier.model
    cfg = classifier.cfg.features
    with torch.no_grad(), capture_attention(model) as maps:
        logits = model(spec)
    if not maps:
        raise AscaError(
            f"model {getattr(model, 'name', type(model).__name__)} (layout "
            f"{getattr(model, 'layout', '?')}) has no attention blocks to show"
        )
    if block is not None and block not in maps:
        raise AscaError(f"no attention block {block!r}: the model has {', '.join(maps)}")
    names = [block] if block is not None else list(maps)
    last_grid = maps[names[-1]].grid
    if query is None:
        query = (last_grid[0] // 2, last_grid[1] // 2)
    qf, qt = int(query[0]), int(query[1])
    if not (0 <= qf < last_grid[0] and 0 <= qt < last_grid[1]):
        raise AscaError(f"query cell {tuple(query)} is outside the {last_grid[0]}x{last_grid[1]} token grid")

    frame_s = cfg.hop_length / cfg.sample_rate
    # Column i of the model input is raw frame i + offset (centre crop) of the clip.
    geom = window_grid(classifier.extractor, int(round(classifier.clip_seconds * classifier.sample_rate)))
    offset = 0 if geom.resize else geom.offset
    tpad = spec.shape[-1]
    if geom.resize:
        scale = geom.raw_frames / tpad
        times = frame_times(cfg, geom.raw_frames)[0] + (np.arange(tpad) + 0.5) * scale * frame_s - 0.5 * frame_s
    else:
        times = frame_times(cfg, tpad, offset)
    fscale = geom.n_mels / spec.shape[-2] if geom.resize else 1.0
    freqs = mel_position_to_hz(cfg, (np.arange(spec.shape[-2]) + 0.5) * fscale - 0.5)

    step = float(times[1] - times[0]) if tpad > 1 else frame_s

    def to_seconds(cols: np.ndarray) -> np.ndarray:
        return times[0] + np.asarray(cols, dtype=np.float64) * step  # columns are evenly spaced

    blocks: dict[str, BlockAttention] = {}
    for name in names:
        amap = maps[name]
        h, w = amap.grid
        cell = (min(h - 1, int((qf + 0.5) * h / last_grid[0])), min(w - 1, int((qt + 0.5) * w / last_grid[1])))
        n_heads = amap.probs.shape[1]
        if head is not None and not 0 <= int(head) < n_heads:
            raise AscaError(f"head {head} does not exist; block {name} has {n_heads} heads")
        per_head = torch.stack([query_attention(amap, cell, head=k) for k in range(n_heads)])
        mean = per_head.mean(0)
        rows, cols = _token_centres(model, amap.grid, amap.stride)
        blocks[name] = BlockAttention(
            name=name,
            grid=(h, w),
            stride=(int(amap.stride[0]), int(amap.stride[1])),
            query=cell,
            heads=(per_head if head is None else per_head[int(head) : int(head) + 1]).cpu().numpy(),
            mean=mean.cpu().numpy(),
            token_times=to_seconds(cols),
            token_freqs=mel_position_to_hz(cfg, rows * fscale),
        )

    rollout = relevance = None
    roll_grid = None
    if block is None or block == list(maps)[-1]:
        roll = attention_rollout(maps)[0]  # (N, N) over the last grid
        last = maps[list(maps)[-1]]
        roll_grid = last.grid
        p = last.prefix_tokens
        H, W = last.grid
        rollout = roll[p + qf * W + qt, p:].reshape(H, W).cpu().numpy()
        relevance = roll[p:, p:].mean(0).reshape(H, W).cpu().numpy()

    bias = bias_views(classifier, ref_bin=None, input_size=tuple(spec.shape[-2:]))
    if block is not None:
        bias = {k: v for k, v in bias.items() if k == block}
    probs = classifier.probabilities(logits.float())[0].cpu().numpy()
    return AttentionViews(
        spec=spec[0, 0].cpu().numpy(),
        times=times,
        freqs=freqs,
        sample_rate=cfg.sample_rate,
        hop_length=cfg.hop_length,
        n_mels=cfg.n_mels,
        blocks=blocks,
        rollout=rollout,
        rollout_relevance=relevance,
        rollout_grid=roll_grid,
        query=(qf, qt),
        bias=bias,
        probs=probs,
    )


def bias_views(
    classifier, ref_bin: float | None = None, input_size: tuple[int, int] | None = None
) -> dict[str, BiasView]:
    """Every block's relative-position bias with offsets in seconds and Hz.

    Time offsets are frames x hop / sample rate. Frequency offsets are given in mel bins and in Hz
    measured from ``ref_bin`` (default: the middle of the mel axis): offset d maps to
    ``hz(ref_bin + d) - hz(ref_bin)``.

    Shapes: table (heads, 2H-1, 2W-1), offsets (2W-1,) and (2H-1,).
    """
    cfg = classifier.cfg.features
    size = input_size or tuple(cfg.input_size)
    ref = (cfg.n_mels - 1) / 2 if ref_bin is None else float(ref_bin)
    ref_hz = float(mel_position_to_hz(cfg, np.array([ref]))[0])
    fscale = cfg.n_mels / size[0] if cfg.shape == "resize224" else 1.0
    tscale = 1.0
    if cfg.shape == "resize224":
        from ..features import frames_for

        tscale = frames_for(cfg.clip_seconds, cfg.sample_rate, cfg.hop_length) / size[1]
    out = {}
    for name, table in relative_bias_tables(classifier.model, size).items():
        bins = table.freq_offsets_bins.cpu().numpy().astype(np.float64) * fscale
        frames = table.time_offsets_frames.cpu().numpy().astype(np.float64) * tscale
        out[name] = BiasView(
            name=name,
            table=table.table.cpu().numpy(),
            time_offsets_s=frames * cfg.hop_length / cfg.sample_rate,
            time_offsets_frames=frames,
            freq_offsets_bins=bins,
            freq_offsets_hz=mel_position_to_hz(cfg, ref + bins) - ref_hz,
            ref_freq_hz=ref_hz,
        )
    return out


__all__ = ["AttentionViews", "BiasView", "BlockAttention", "attention_views", "bias_views", "mel_frequencies"]
