"""Every plotly figure of ASCA Workbench, shared by the Streamlit app and the notebooks.

Functions take plain arrays (NumPy or torch, any leading singleton dims are squeezed) and return a
``plotly.graph_objects.Figure``; nothing here computes features or runs a model. Spectrogram-like
figures put seconds on x and mel bins on y, labelled with each bin's centre frequency in Hz::

    fig = figures.spectrogram(spec, sample_rate=16000, hop_length=160, f_min=50)
    fig.show()

Heatmaps of attention, bias tables and attributions follow the same conventions, so a token of a
model stage and the spectrogram region it covers line up on the same axes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from asca_core.geometry import mel_frequencies, stage_strides
from asca_core.scores import trapezoid_auc

__all__ = [
    "DEFAULT_STAGES",
    "ablation",
    "attention_heads",
    "attention_map",
    "attribution_overlay",
    "before_after",
    "class_counts",
    "confusion_matrix",
    "cv_figure",
    "deletion_insertion",
    "duration_histogram",
    "format_hz",
    "mel_frequencies",
    "per_class_ap",
    "prediction_timeline",
    "relative_bias",
    "spectrogram",
    "stage_grids",
    "token_grid",
    "top_k_bars",
    "training_curves",
    "waveform",
]

#: CoAtNet stages: name and cumulative stride (S0 is the two-conv stem, S1 is always MBConv).
DEFAULT_STAGES: tuple[tuple[str, int], ...] = tuple(stage_strides().items())

SPEC_COLORS = "Magma"
UNDERLAY = "Greys"  # spectrogram under an overlay: silence white, energy dark
COLORS = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC", "#EECA3B")
# Overlays fade in from fully transparent, so the spectrogram stays readable where weights are low.
HEAT_OVERLAY = [
    [0.0, "rgba(255,200,0,0)"],
    [0.2, "rgba(255,170,0,0.15)"],
    [0.6, "rgba(255,100,0,0.5)"],
    [1.0, "rgba(200,0,40,0.85)"],
]
SIGNED_OVERLAY = [
    [0.0, "rgba(40,120,255,0.95)"],
    [0.4, "rgba(40,120,255,0.25)"],
    [0.5, "rgba(255,255,255,0)"],
    [0.6, "rgba(255,60,40,0.25)"],
    [1.0, "rgba(255,60,40,0.95)"],
]
_MAX_HOVER_CELLS = 80_000


# ----------------------------------------------------------------------------- helpers
def _np(x: Any, ndim: int | None = None) -> np.ndarray:
    """Array from NumPy/torch/list, float64, with leading singleton dims squeezed to ``ndim``."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if ndim is not None:
        while arr.ndim > ndim and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != ndim:
            raise ValueError(f"expected a {ndim}-D array, got shape {tuple(arr.shape)}")
    return arr


def _layout(fig: go.Figure, *, title: str | None = None, height: int | None = None, **kwargs: Any) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        title=title,
        height=height,
        margin=dict(l=60, r=20, t=50 if title else 30, b=45),
        font=dict(size=12),
        **kwargs,
    )
    return fig


def format_hz(f: float) -> str:
    """``440`` → ``"440 Hz"``, ``2500`` → ``"2.5 kHz"``."""
    if abs(f) >= 1000:
        return f"{f / 1000:.3g} kHz"
    return f"{f:.0f} Hz"


def _bin_freqs(
    n_bins: int, sample_rate: int, f_min: float, f_max: float | None, freqs_hz: Sequence[float] | None
) -> np.ndarray:
    if freqs_hz is not None:
        freqs = np.asarray(freqs_hz, dtype=np.float64)
        if len(freqs) >= n_bins:
            return freqs[:n_bins]
        # a padded model input has extra bins above the top mel band: extend the last spacing
        step = freqs[-1] - freqs[-2] if len(freqs) > 1 else 1.0
        return np.concatenate([freqs, freqs[-1] + step * np.arange(1, n_bins - len(freqs) + 1)])
    return mel_frequencies(n_bins, f_min, f_max or sample_rate / 2)


def _freq_ticks(freqs: np.ndarray, n_ticks: int = 7) -> dict[str, Any]:
    """Y-axis ticks at round frequencies (100 Hz, 1 kHz, 2 kHz...), placed between mel bins."""
    bins = np.arange(len(freqs))
    if len(freqs) < 2 or not np.all(np.diff(freqs) > 0):
        idx = np.unique(np.linspace(0, len(freqs) - 1, min(n_ticks, len(freqs))).round().astype(int))
        return dict(tickmode="array", tickvals=idx.tolist(), ticktext=[format_hz(freqs[i]) for i in idx])
    decades = 10.0 ** np.arange(1, 6)
    nice = np.sort(np.concatenate([decades, 2 * decades, 5 * decades]))
    nice = nice[(nice >= freqs[0]) & (nice <= freqs[-1])]
    positions = np.interp(nice, freqs, bins)
    # keep ticks at least a few bins apart, preferring the higher (more spread-out) frequencies
    min_gap = (len(freqs) - 1) / (n_ticks + 1)
    keep: list[int] = []
    for i in range(len(nice) - 1, -1, -1):
        if not keep or positions[keep[-1]] - positions[i] >= min_gap:
            keep.append(i)
    keep.reverse()
    return dict(
        tickmode="array", tickvals=[float(positions[i]) for i in keep], ticktext=[format_hz(nice[i]) for i in keep]
    )


def _pool_time(spec: np.ndarray, max_frames: int) -> tuple[np.ndarray, int]:
    """Average neighbouring frames so at most ``max_frames`` columns are drawn; returns the factor."""
    factor = max(1, math.ceil(spec.shape[-1] / max_frames))
    if factor == 1:
        return spec, 1
    t = spec.shape[-1] // factor * factor
    pooled = spec[..., :t].reshape(*spec.shape[:-1], t // factor, factor).mean(-1)
    return pooled, factor


def _spec_trace(
    spec: np.ndarray,
    *,
    sample_rate: int,
    hop_length: int,
    freqs: np.ndarray,
    t0: float = 0.0,
    max_frames: int = 1500,
    colorscale: Any = SPEC_COLORS,
    showscale: bool = True,
    zmin: float | None = None,
    zmax: float | None = None,
    name: str = "log-Mel",
    colorbar: dict | None = None,
) -> go.Heatmap:
    spec, factor = _pool_time(spec, max_frames)
    frame_s = hop_length / sample_rate
    times = t0 + (np.arange(spec.shape[1]) * factor + (factor - 1) / 2) * frame_s
    if colorscale == UNDERLAY and zmin is None and zmax is None and spec.size:
        # under an overlay only the loud cells matter: the noise floor (below the median) stays white
        zmin, zmax = float(np.percentile(spec, 50)), float(np.percentile(spec, 99.5))
    kwargs: dict[str, Any] = {}
    if spec.size <= _MAX_HOVER_CELLS:
        kwargs["customdata"] = np.broadcast_to(freqs[:, None].round(0), spec.shape)
        kwargs["hovertemplate"] = "%{x:.2f} s · %{customdata:.0f} Hz (bin %{y})<br>%{z:.2f}<extra></extra>"
    else:
        kwargs["hovertemplate"] = "%{x:.2f} s · bin %{y}<br>%{z:.2f}<extra></extra>"
    return go.Heatmap(
        z=spec,
        x=times,
        y=np.arange(spec.shape[0]),
        colorscale=colorscale,
        showscale=showscale,
        zmin=zmin,
        zmax=zmax,
        name=name,
        colorbar=colorbar or dict(title=dict(text=name, side="right"), thickness=12),
        **kwargs,
    )


def _spec_axes(
    fig: go.Figure, freqs: np.ndarray, row: int | None = None, col: int | None = None, x_title: str | None = "time (s)"
) -> None:
    where = dict(row=row, col=col) if row is not None else {}
    fig.update_yaxes(title_text="frequency", **_freq_ticks(freqs), **where)
    fig.update_xaxes(title_text=x_title, **where)


# ----------------------------------------------------------------------------- audio & data
def waveform(
    wave: Any, sample_rate: int, *, title: str | None = None, height: int = 220, max_points: int = 4000
) -> go.Figure:
    """Amplitude over time; long signals are drawn as their min/max envelope.

    Shapes: wave (T,) or (1, T).
    """
    wave = _np(wave, 1)
    if len(wave) == 0:
        raise ValueError("cannot draw an empty waveform")
    fig = go.Figure()
    if len(wave) <= max_points:
        t = np.arange(len(wave)) / sample_rate
        fig.add_trace(
            go.Scatter(
                x=t,
                y=wave,
                mode="lines",
                line=dict(width=1, color=COLORS[0]),
                name="amplitude",
                hovertemplate="%{x:.3f} s<br>%{y:.3f}<extra></extra>",
            )
        )
    else:
        chunk = math.ceil(len(wave) / (max_points // 2))
        n = len(wave) // chunk * chunk
        blocks = wave[:n].reshape(-1, chunk)
        t = (np.arange(blocks.shape[0]) + 0.5) * chunk / sample_rate
        fig.add_trace(
            go.Scatter(
                x=t, y=blocks.max(1), mode="lines", line=dict(width=0.5, color=COLORS[0]), name="max", hoverinfo="skip"
            )
        )
        fig.add_trace(
            go.Scatter(
                x=t,
                y=blocks.min(1),
                mode="lines",
                line=dict(width=0.5, color=COLORS[0]),
                fill="tonexty",
                name="min",
                hoverinfo="skip",
            )
        )
    peak = float(np.abs(wave).max()) or 1.0
    fig.update_yaxes(title_text="amplitude", range=[-1.05 * peak, 1.05 * peak], zeroline=True)
    fig.update_xaxes(title_text="time (s)", range=[0, len(wave) / sample_rate])
    return _layout(fig, title=title, height=height, showlegend=False)


def spectrogram(
    spec: Any,
    sample_rate: int,
    hop_length: int,
    *,
    f_min: float = 0.0,
    f_max: float | None = None,
    freqs_hz: Sequence[float] | None = None,
    title: str | None = None,
    height: int = 340,
    max_frames: int = 1500,
    colorscale: Any = SPEC_COLORS,
    zmin: float | None = None,
    zmax: float | None = None,
    t0: float = 0.0,
) -> go.Figure:
    """Log-Mel spectrogram heatmap: seconds on x, mel bins labelled in Hz on y (zoomable).

    Frame ``j`` is drawn at ``t0 + j * hop_length / sample_rate`` seconds (centred STFT frames).
    Shapes: spec (F, T) or (1, 1, F, T). ``freqs_hz`` overrides the HTK centre frequencies.
    """
    spec = _np(spec, 2)
    freqs = _bin_freqs(spec.shape[0], sample_rate, f_min, f_max, freqs_hz)
    if zmin is None and spec.size:
        # from the 1st percentile: a few empty mel bands or padded frames at the silence floor
        # would otherwise take half of the colour range
        zmin = float(np.percentile(spec, 1.0))
    fig = go.Figure(
        _spec_trace(
            spec,
            sample_rate=sample_rate,
            hop_length=hop_length,
            freqs=freqs,
            t0=t0,
            max_frames=max_frames,
            colorscale=colorscale,
            zmin=zmin,
            zmax=zmax,
        )
    )
    _spec_axes(fig, freqs)
    return _layout(fig, title=title, height=height)


def class_counts(
    counts: Mapping[str, int] | Mapping[str, Mapping[str, int]],
    *,
    title: str | None = "Clips per class",
    height: int = 320,
) -> go.Figure:
    """Bar per class; ``{split: {label: n}}`` stacks the splits.

    Classes are sorted by total count so imbalance is visible at a glance.
    """
    nested = bool(counts) and all(isinstance(v, Mapping) for v in counts.values())
    groups = cast(Mapping[str, Mapping[str, int]], counts if nested else {"clips": counts})
    totals: dict[str, int] = {}
    for per_label in groups.values():
        for label, n in per_label.items():
            totals[label] = totals.get(label, 0) + int(n)
    order = sorted(totals, key=lambda k: (-totals[k], k))
    fig = go.Figure()
    for i, (group, per_label) in enumerate(groups.items()):
        fig.add_trace(
            go.Bar(
                x=order,
                y=[int(per_label.get(k, 0)) for k in order],
                name=str(group),
                marker_color=COLORS[i % len(COLORS)],
                hovertemplate="%{x}: %{y} clips<extra>" + str(group) + "</extra>",
            )
        )
    fig.update_yaxes(title_text="clips")
    crowded = sum(len(k) for k in order) > 60
    fig.update_xaxes(title_text="class", tickangle=-35 if crowded else 0)
    return _layout(
        fig,
        title=title,
        height=height,
        barmode="stack",
        showlegend=nested,
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"),
    )


def duration_histogram(
    durations: Sequence[float],
    *,
    clip_seconds: float | None = None,
    nbins: int = 40,
    title: str | None = "Clip durations",
    height: int = 320,
) -> go.Figure:
    """Histogram of clip lengths in seconds, with the training crop length marked."""
    d = _np(durations, 1)
    fig = go.Figure(
        go.Histogram(x=d, nbinsx=nbins, marker_color=COLORS[0], hovertemplate="%{x} s: %{y} clips<extra></extra>")
    )
    if clip_seconds:
        fig.add_vline(
            x=clip_seconds,
            line_dash="dash",
            line_color=COLORS[3],
            annotation_text=f"training crop {clip_seconds:g} s",
            annotation_position="top left",
        )
    fig.update_xaxes(title_text="duration (s)", rangemode="tozero")
    fig.update_yaxes(title_text="clips")
    return _layout(fig, title=title, height=height, bargap=0.05)


# ----------------------------------------------------------------------------- model view
def stage_grids(
    input_size: tuple[int, int], layout: str = "CCCT", stages: Sequence[tuple[str, int]] = DEFAULT_STAGES
) -> list[dict[str, Any]]:
    """What each stage sees: name, block kind, stride and its (freq, time) token grid.

    ``layout`` gives the kinds of S1..S4 (``"CCCT"``); S0 is the convolutional stem.
    """
    f, t = input_size
    kinds = {"C": "MBConv", "T": "Transformer"}
    out = []
    for i, (name, stride) in enumerate(stages):
        kind = "stem" if i == 0 else kinds.get(layout[i - 1] if i - 1 < len(layout) else "C", "?")
        grid = (max(1, math.ceil(f / stride)), max(1, math.ceil(t / stride)))
        out.append(dict(name=name, kind=kind, stride=stride, grid=grid, tokens=grid[0] * grid[1]))
    return out


def _pool2d(spec: np.ndarray, stride: int) -> np.ndarray:
    f, t = spec.shape
    fp, tp = math.ceil(f / stride) * stride, math.ceil(t / stride) * stride
    padded = np.pad(spec, ((0, fp - f), (0, tp - t)), mode="edge")
    return padded.reshape(fp // stride, stride, tp // stride, stride).mean(axis=(1, 3))


def token_grid(
    spec: Any,
    sample_rate: int,
    hop_length: int,
    *,
    layout: str = "CCCT",
    stages: Sequence[tuple[str, int]] = DEFAULT_STAGES,
    f_min: float = 0.0,
    f_max: float | None = None,
    height_per_stage: int = 150,
    title: str | None = "What each stage sees",
) -> go.Figure:
    """The spectrogram averaged over each stage's receptive cells: one panel per stage.

    A stage with stride s turns an F x T input into an F/s x T/s grid of positions (tokens); a
    transformer stage attends over all of them, so its grid size is the attention cost.
    Shapes: spec (F, T).
    """
    spec = _np(spec, 2)
    f, t = spec.shape
    freqs = _bin_freqs(f, sample_rate, f_min, f_max, None)
    grids = stage_grids((f, t), layout, stages)
    titles = [
        f"{g['name']} · {g['kind']} · stride {g['stride']} → {g['grid'][0]} × {g['grid'][1]}"
        f" = {g['tokens']:,} positions"
        for g in grids
    ]
    fig = make_subplots(
        rows=len(grids), cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.35 / len(grids)
    )
    frame_s = hop_length / sample_rate
    zmin, zmax = float(np.percentile(spec, 1)), float(np.percentile(spec, 99.5))
    for row, g in enumerate(grids, start=1):
        s = g["stride"]
        pooled = _pool2d(spec, s)
        # cell centres in input coordinates, so every panel shares the seconds/bins axes
        times = ((np.arange(pooled.shape[1]) + 0.5) * s - 0.5) * frame_s
        bins = (np.arange(pooled.shape[0]) + 0.5) * s - 0.5
        gap = 1 if pooled.shape[1] <= 40 else 0  # cell borders only where cells are wide enough
        fig.add_trace(
            go.Heatmap(
                z=pooled,
                x=times,
                y=bins,
                colorscale=SPEC_COLORS,
                zmin=zmin,
                zmax=zmax,
                showscale=False,
                xgap=gap,
                ygap=gap,
                hovertemplate=f"{g['name']}<br>%{{x:.2f}} s · bin %{{y:.0f}}<extra></extra>",
            ),
            row=row,
            col=1,
        )
        fig.update_yaxes(range=[-0.5, f - 0.5], row=row, col=1, **_freq_ticks(freqs, 3))
    fig.update_xaxes(title_text="time (s)", row=len(grids), col=1)
    for ann in fig.layout.annotations:
        ann.font.size = 12
    return _layout(fig, title=title, height=height_per_stage * len(grids) + 60)


def before_after(
    before: Any,
    after: Any,
    sample_rate: int,
    hop_length: int,
    *,
    titles: tuple[str, str] = ("before", "after"),
    f_min: float = 0.0,
    f_max: float | None = None,
    height: int = 440,
    title: str | None = None,
) -> go.Figure:
    """Two spectrograms stacked on shared axes and one colour scale (the ``before`` range).

    Shapes: before (F, T), after (F, T').
    """
    a, b = _np(before, 2), _np(after, 2)
    freqs = _bin_freqs(a.shape[0], sample_rate, f_min, f_max, None)
    zmin, zmax = float(np.min(a)), float(np.max(a))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.12)
    for row, spec in ((1, a), (2, b)):
        fig.add_trace(
            _spec_trace(
                spec,
                sample_rate=sample_rate,
                hop_length=hop_length,
                freqs=freqs,
                zmin=zmin,
                zmax=zmax,
                showscale=row == 1,
            ),
            row=row,
            col=1,
        )
        _spec_axes(fig, freqs, row=row, col=1, x_title="time (s)" if row == 2 else None)
    return _layout(fig, title=title, height=height)


# ----------------------------------------------------------------------------- training & runs
_CURVE_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("train_loss", "val_loss")),
    ("accuracy", ("val_acc",)),
    ("mAP", ("val_map",)),
)


def training_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    panels: Sequence[tuple[str, Sequence[str]]] = _CURVE_PANELS,
    title: str | None = None,
    height: int = 320,
) -> go.Figure:
    """Loss, accuracy and mAP per epoch; several runs overlaid (one colour per run).

    ``histories`` maps a run name to its ``metrics.jsonl`` records (dicts with ``epoch`` and the
    metric keys). One run: train in blue, validation in orange. Several runs: one colour per run,
    training curves dashed, validation solid.
    """
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=0.07)
    several = len(histories) > 1
    shown: set[str] = set()
    for i, (run, records) in enumerate(histories.items()):
        epochs = [r.get("epoch") for r in records]
        for col, (_, keys) in enumerate(panels, start=1):
            for key in keys:
                ys = [r.get(key) for r in records]
                if all(y is None for y in ys):
                    continue
                is_train = key.startswith("train")
                if several:
                    color, group = COLORS[i % len(COLORS)], run
                    dash = "dash" if is_train else "solid"
                else:
                    color, group, dash = COLORS[0 if is_train else 1], ("train" if is_train else "validation"), "solid"
                fig.add_trace(
                    go.Scatter(
                        x=epochs,
                        y=ys,
                        mode="lines+markers",
                        name=group,
                        legendgroup=group,
                        showlegend=group not in shown,
                        line=dict(color=color, dash=dash, width=2),
                        marker=dict(size=5),
                        hovertemplate=f"{run} · {key}<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>",
                    ),
                    row=1,
                    col=col,
                )
                shown.add(group)
    fig.update_xaxes(title_text="epoch")
    for col, (label, _) in enumerate(panels, start=1):
        if label in ("accuracy", "mAP"):
            fig.update_yaxes(rangemode="tozero", row=1, col=col)
    if several:
        fig.add_annotation(
            text="dashed: training · solid: validation",
            xref="paper",
            yref="paper",
            x=1,
            y=-0.32,
            showarrow=False,
            xanchor="right",
            font=dict(size=11, color="#666"),
        )
    return _layout(fig, title=title, height=height, legend=dict(orientation="h", y=-0.25, x=0))


def confusion_matrix(
    matrix: Any,
    labels: Sequence[str],
    *,
    normalize: bool = True,
    title: str | None = "Confusion matrix",
    height: int | None = None,
) -> go.Figure:
    """Rows are true classes, columns predicted; ``normalize`` shows each row as fractions.

    Shapes: matrix (K, K) of counts.
    """
    m = _np(matrix, 2)
    if m.shape[0] != m.shape[1] or m.shape[0] != len(labels):
        raise ValueError(f"confusion matrix of shape {m.shape} does not match {len(labels)} labels")
    counts = m.astype(int)
    z = m / np.maximum(m.sum(1, keepdims=True), 1) if normalize else m
    k = len(labels)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(labels),
            y=list(labels),
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalize else None,
            customdata=counts,
            text=counts,
            texttemplate="%{text}" if k <= 20 else None,
            hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata} clips"
            + (" (%{z:.0%})" if normalize else "")
            + "<extra></extra>",
            colorbar=dict(title=dict(text="row fraction" if normalize else "clips"), thickness=12),
        )
    )
    fig.update_yaxes(title_text="true class", autorange="reversed")
    fig.update_xaxes(title_text="predicted class", tickangle=-35 if sum(len(x) for x in labels) > 60 else 0)
    return _layout(fig, title=title, height=height or max(320, 28 * k + 140))


def per_class_ap(
    ap: Mapping[str, float] | Mapping[str, Mapping[str, float]],
    *,
    title: str | None = "Average precision per class",
    height: int = 340,
) -> go.Figure:
    """Bars of AP per class; ``{run: {label: ap}}`` draws grouped bars, one colour per run.

    Classes are sorted by the first run's AP, weakest first, so problems stand out.
    """
    nested = bool(ap) and all(isinstance(v, Mapping) for v in ap.values())
    runs = cast(Mapping[str, Mapping[str, float]], ap if nested else {"AP": ap})
    first = next(iter(runs.values()), {})
    order = sorted(first, key=lambda k: (first[k] if first[k] is not None else -1, k))
    fig = go.Figure()
    for i, (run, values) in enumerate(runs.items()):
        fig.add_trace(
            go.Bar(
                x=order,
                y=[values.get(k) for k in order],
                name=run,
                marker_color=COLORS[i % len(COLORS)],
                hovertemplate="%{x}: AP %{y:.3f}<extra>" + run + "</extra>",
            )
        )
    fig.update_yaxes(title_text="average precision", range=[0, 1.02])
    fig.update_xaxes(tickangle=-35 if sum(len(x) for x in order) > 60 else 0)
    return _layout(
        fig,
        title=title,
        height=height,
        barmode="group",
        showlegend=nested,
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"),
    )


def ablation(
    rows: Sequence[Mapping[str, Any]],
    *,
    label: str = "layout",
    metric: str = "val_map",
    error: str | None = None,
    cost: str | None = None,
    cost_title: str | None = None,
    metric_title: str | None = None,
    title: str | None = "Layout ablation",
    height: int = 360,
) -> go.Figure:
    """Bar of ``metric`` per variant (± ``error``), and metric against ``cost`` when given.

    ``rows`` is the ablation's results table (one dict per variant, e.g. ``{"layout": "CCCT",
    "val_map": 0.81, "val_map_std": 0.02, "params": 3.1e6}``).
    """
    names = [str(r.get(label)) for r in rows]
    ys = [r.get(metric) for r in rows]
    errs = [r.get(error) for r in rows] if error else None
    cols = 2 if cost else 1
    metric_title = metric_title or metric
    fig = make_subplots(
        rows=1,
        cols=cols,
        horizontal_spacing=0.12,
        subplot_titles=[metric_title] + ([f"{metric_title} vs {cost_title or cost}"] if cost else []),
    )
    fig.add_trace(
        go.Bar(
            x=names,
            y=ys,
            marker_color=[COLORS[i % len(COLORS)] for i in range(len(rows))],
            error_y=dict(type="data", array=errs, visible=True) if errs else None,
            text=[f"{y:.3f}" if isinstance(y, (int, float)) else "" for y in ys],
            textposition="outside",
            showlegend=False,
            hovertemplate="%{x}: %{y:.4f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.update_yaxes(title_text=metric_title, rangemode="tozero", row=1, col=1)
    if cost:
        fig.add_trace(
            go.Scatter(
                x=[r.get(cost) for r in rows],
                y=ys,
                mode="markers+text",
                text=names,
                textposition="top center",
                showlegend=False,
                error_y=dict(type="data", array=errs, visible=True) if errs else None,
                marker=dict(size=12, color=[COLORS[i % len(COLORS)] for i in range(len(rows))]),
                hovertemplate="%{text}<br>%{x:.4g}: %{y:.4f}<extra></extra>",
            ),
            row=1,
            col=2,
        )
        fig.update_xaxes(title_text=cost_title or cost, row=1, col=2)
        fig.update_yaxes(title_text=metric_title, row=1, col=2)
    return _layout(fig, title=title, height=height)


# ----------------------------------------------------------------------------- attention
def _token_centres(
    grid: tuple[int, int], spec_shape: tuple[int, int], frame_s: float, t0: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Seconds (x) and mel-bin (y) centres of every token of an (H, W) grid over an (F, T) input."""
    (h, w), (f, t) = grid, spec_shape
    ys = (np.arange(h) + 0.5) * (f / h) - 0.5
    xs = t0 + ((np.arange(w) + 0.5) * (t / w) - 0.5) * frame_s
    return xs, ys


def _range(a: np.ndarray) -> tuple[float, float]:
    low, high = float(np.min(a)), float(np.max(a))
    return low, high if high > low else low + 1e-9


def attention_map(
    spec: Any,
    attn: Any,
    sample_rate: int,
    hop_length: int,
    *,
    query: tuple[int, int] | None = None,
    f_min: float = 0.0,
    f_max: float | None = None,
    freqs_hz: Sequence[float] | None = None,
    t0: float = 0.0,
    title: str | None = None,
    height: int = 380,
    clickable: bool = True,
    colorbar_title: str = "attention",
) -> go.Figure:
    """Attention weights over a token grid, drawn over the spectrogram the grid came from.

    ``attn`` is one query's row reshaped to the stage grid (a single head, a head average or a
    rollout row); ``query`` = (freq_index, time_index) of that query token, outlined in white.
    With ``clickable`` an invisible marker sits on each token centre, so a click (Streamlit's
    ``on_select``) returns ``customdata = [freq_index, time_index]`` of the clicked token.
    ``t0`` is the time of the first frame (a centre crop starts inside the clip); ``freqs_hz``
    the centre frequency of every row, padded rows included.
    Shapes: spec (F, T), attn (H, W) with H, W dividing the padded F, T.
    """
    spec, a = _np(spec, 2), _np(attn, 2)
    frame_s = hop_length / sample_rate
    freqs = _bin_freqs(spec.shape[0], sample_rate, f_min, f_max, freqs_hz)
    xs, ys = _token_centres(a.shape, spec.shape, frame_s, t0)
    background = _spec_trace(
        spec, sample_rate=sample_rate, hop_length=hop_length, freqs=freqs, t0=t0, colorscale=UNDERLAY, showscale=False
    )
    # the colour range spans the map's own min..max: nearly uniform attention still shows its
    # structure, and the colour bar keeps the true weights
    low, peak = _range(a)
    overlay = go.Heatmap(
        z=a,
        x=xs,
        y=ys,
        colorscale=HEAT_OVERLAY,
        zmin=low,
        zmax=peak,
        colorbar=dict(title=dict(text=colorbar_title, side="right"), thickness=12),
        hovertemplate="token (%{y:.0f}, %{x:.2f} s)<br>weight %{z:.4f}<extra></extra>",
    )
    fig = go.Figure([background, overlay])
    if clickable:
        # hover and clicks go to one invisible marker per token (heatmap cells are not selectable)
        background.update(hoverinfo="skip", hovertemplate=None)
        overlay.update(hoverinfo="skip", hovertemplate=None)
        fig = go.Figure([background, overlay])
        gx, gy = np.meshgrid(xs, ys)
        t_idx, f_idx = np.meshgrid(np.arange(a.shape[1]), np.arange(a.shape[0]))
        fig.add_trace(
            go.Scatter(
                x=gx.ravel(),
                y=gy.ravel(),
                mode="markers",
                marker=dict(size=max(6, min(30, 600 // max(a.shape))), opacity=0.0),
                customdata=np.stack([f_idx.ravel(), t_idx.ravel(), a.ravel()], 1),
                hovertemplate="token (%{customdata[0]:.0f}, %{customdata[1]:.0f}) · "
                "%{x:.2f} s<br>weight %{customdata[2]:.4f}"
                "<extra>click: make it the query</extra>",
                showlegend=False,
                name="tokens",
            )
        )
        fig.update_layout(hoverdistance=-1)  # the nearest token answers wherever the pointer is
    if query is not None:
        qi, qj = query
        hh, ww = spec.shape[0] / a.shape[0], spec.shape[1] / a.shape[1] * frame_s
        fig.add_shape(
            type="rect",
            x0=xs[qj] - ww / 2,
            x1=xs[qj] + ww / 2,
            y0=ys[qi] - hh / 2,
            y1=ys[qi] + hh / 2,
            line=dict(color="white", width=2.5),
        )
    _spec_axes(fig, freqs)
    fig.update_xaxes(range=[t0 - frame_s / 2, t0 + (spec.shape[1] - 0.5) * frame_s])
    fig.update_yaxes(range=[-0.5, spec.shape[0] - 0.5])
    return _layout(fig, title=title, height=height, clickmode="event+select", dragmode="zoom")


def attention_heads(
    spec: Any,
    maps: Any,
    sample_rate: int,
    hop_length: int,
    *,
    query: tuple[int, int] | None = None,
    cols: int = 4,
    t0: float = 0.0,
    title: str | None = "Every head",
    height_per_row: int = 170,
) -> go.Figure:
    """Small multiples: one query's attention for every head, over the spectrogram.

    Shapes: spec (F, T), maps (heads, H, W).
    """
    spec, m = _np(spec, 2), _np(maps, 3)
    heads = m.shape[0]
    rows = math.ceil(heads / cols)
    fig = make_subplots(
        rows=rows,
        cols=min(cols, heads),
        subplot_titles=[f"head {h}" for h in range(heads)],
        shared_xaxes=True,
        shared_yaxes=True,
        horizontal_spacing=0.02,
        vertical_spacing=0.25 / max(rows, 1),
    )
    frame_s = hop_length / sample_rate
    xs, ys = _token_centres(m.shape[1:], spec.shape, frame_s, t0)
    spec_small, factor = _pool_time(spec, 300)
    times = t0 + (np.arange(spec_small.shape[1]) * factor + (factor - 1) / 2) * frame_s
    for h in range(heads):
        r, c = h // cols + 1, h % cols + 1
        fig.add_trace(
            go.Heatmap(
                z=spec_small,
                x=times,
                y=np.arange(spec.shape[0]),
                colorscale=UNDERLAY,
                zmin=float(np.percentile(spec_small, 50)),
                zmax=float(np.percentile(spec_small, 99.5)),
                showscale=False,
                hoverinfo="skip",
            ),
            row=r,
            col=c,
        )
        low, peak = _range(m[h])
        fig.add_trace(
            go.Heatmap(
                z=m[h],
                x=xs,
                y=ys,
                colorscale=HEAT_OVERLAY,
                zmin=low,
                zmax=peak,
                showscale=False,
                hovertemplate=f"head {h}<br>weight %{{z:.4f}}<extra></extra>",
            ),
            row=r,
            col=c,
        )
        if query is not None:
            qi, qj = query
            fig.add_trace(
                go.Scatter(
                    x=[xs[qj]],
                    y=[ys[qi]],
                    mode="markers",
                    showlegend=False,
                    marker=dict(symbol="square-open", size=9, color="white", line=dict(width=2)),
                    hoverinfo="skip",
                ),
                row=r,
                col=c,
            )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return _layout(fig, title=title, height=height_per_row * rows + 60)


def relative_bias(
    table: Any,
    time_offsets_s: Sequence[float],
    freq_offsets_hz: Sequence[float],
    *,
    head: int | None = None,
    cols: int = 4,
    freq_title: str = "frequency offset (Hz)",
    title: str | None = "Relative position bias",
    height_per_row: int = 240,
) -> go.Figure:
    """The learned bias ``w[h, Δf, Δt]`` added to attention logits, over physical offsets.

    Positive (red) offsets are favoured, negative (blue) ones suppressed; the centre is a token
    attending to itself. A 3-D table draws every head (or only ``head``).
    Shapes: table (heads, 2H-1, 2W-1) or (2H-1, 2W-1); offsets (2W-1,) and (2H-1,).
    """
    t = _np(table)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ValueError(f"a bias table must be 2-D or 3-D, got shape {t.shape}")
    heads = [head] if head is not None else list(range(t.shape[0]))
    xs, hz = np.asarray(time_offsets_s, float), np.asarray(freq_offsets_hz, float)
    if len(xs) != t.shape[2] or len(hz) != t.shape[1]:
        raise ValueError(f"offsets ({len(hz)}, {len(xs)}) do not match the table {t.shape[1:]}")
    # rows are evenly spaced token offsets; on the mel scale they span uneven Hz, so the Hz value
    # of each row is a tick label rather than a coordinate
    ys = np.arange(len(hz)) - (len(hz) - 1) / 2
    picks = np.unique(np.linspace(0, len(hz) - 1, min(len(hz), 7)).round().astype(int))
    ticks = dict(
        tickmode="array",
        tickvals=ys[picks].tolist(),
        ticktext=[("+" if hz[i] > 0 else "") + format_hz(hz[i]).replace(" Hz", "").replace(" kHz", "k") for i in picks],
    )
    custom = np.broadcast_to(hz[:, None], t.shape[1:])
    ncols = min(cols, len(heads))
    rows = math.ceil(len(heads) / ncols)
    fig = make_subplots(
        rows=rows,
        cols=ncols,
        subplot_titles=[f"head {h}" for h in heads],
        shared_xaxes=True,
        shared_yaxes=True,
        horizontal_spacing=0.03,
        vertical_spacing=0.3 / max(rows, 1),
    )
    lim = float(np.abs(t[heads]).max()) or 1.0
    for i, h in enumerate(heads):
        r, c = i // ncols + 1, i % ncols + 1
        fig.add_trace(
            go.Heatmap(
                z=t[h],
                x=xs,
                y=ys,
                colorscale="RdBu_r",
                zmin=-lim,
                zmax=lim,
                customdata=custom,
                showscale=i == 0,
                colorbar=dict(title=dict(text="bias"), thickness=12),
                hovertemplate=f"head {h}<br>Δt %{{x:.2f}} s · Δf %{{customdata:.0f}} Hz"
                "<br>bias %{z:.3f}<extra></extra>",
            ),
            row=r,
            col=c,
        )
    fig.update_xaxes(title_text="time offset (s)", row=rows)
    fig.update_yaxes(title_text=freq_title, col=1)
    fig.update_yaxes(**ticks)
    return _layout(fig, title=title, height=height_per_row * rows + 70)


# ----------------------------------------------------------------------------- predictions
def top_k_bars(
    labels: Sequence[str], probs: Sequence[float], *, title: str | None = None, height: int | None = None
) -> go.Figure:
    """Horizontal bars of the top classes, the most likely on top."""
    p = _np(probs, 1)
    fig = go.Figure(
        go.Bar(
            x=p,
            y=list(labels),
            orientation="h",
            marker_color=COLORS[0],
            text=[f"{v:.1%}" for v in p],
            textposition="auto",
            hovertemplate="%{y}: %{x:.2%}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="probability", range=[0, 1], tickformat=".0%")
    return _layout(fig, title=title, height=height or 60 + 34 * max(len(labels), 2))


def prediction_timeline(
    starts: Sequence[float],
    probs: Any,
    labels: Sequence[str],
    *,
    window: float,
    top: int = 8,
    title: str | None = "Predictions over time",
    height: int | None = None,
) -> go.Figure:
    """Per-window probabilities of the classes that ever score highest, along the recording.

    Shapes: starts (W,) window starts in seconds, probs (W, K).
    """
    p = _np(probs, 2)
    s = _np(starts, 1)
    if p.shape[0] != len(s) or p.shape[1] != len(labels):
        raise ValueError(f"probabilities {p.shape} do not match {len(s)} windows and {len(labels)} labels")
    order = np.argsort(-p.max(0))[:top]
    fig = go.Figure(
        go.Heatmap(
            z=p[:, order].T,
            x=s + window / 2,
            y=[labels[i] for i in order],
            colorscale="Viridis",
            zmin=0,
            zmax=1,
            colorbar=dict(title=dict(text="p"), thickness=12),
            hovertemplate="%{y}<br>window centre %{x:.1f} s<br>p = %{z:.2f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="time (s, window centre)")
    return _layout(fig, title=title, height=height or 80 + 30 * len(order))


def attribution_overlay(
    spec: Any,
    attr: Any,
    sample_rate: int,
    hop_length: int,
    *,
    signed: bool = True,
    f_min: float = 0.0,
    f_max: float | None = None,
    freqs_hz: Sequence[float] | None = None,
    t0: float = 0.0,
    title: str | None = None,
    height: int = 360,
    clip_percentile: float = 99.0,
) -> go.Figure:
    """Attribution drawn over the spectrogram: red raised the class score, blue lowered it.

    Values are clipped at the ``clip_percentile`` of their magnitude so one hot pixel does not
    wash out the rest; with ``signed=False`` the magnitude is shown.
    Shapes: spec (F, T), attr (F, T) (or any grid that tiles it, e.g. a stage's token grid).
    """
    spec, a = _np(spec, 2), _np(attr, 2)
    freqs = _bin_freqs(spec.shape[0], sample_rate, f_min, f_max, freqs_hz)
    frame_s = hop_length / sample_rate
    fig = go.Figure(
        _spec_trace(
            spec,
            sample_rate=sample_rate,
            hop_length=hop_length,
            freqs=freqs,
            t0=t0,
            colorscale=UNDERLAY,
            showscale=False,
        )
    )
    if a.shape != spec.shape:
        xs, ys = _token_centres(a.shape, spec.shape, frame_s, t0)
    else:
        a, factor = _pool_time(a, 1500)
        xs = t0 + (np.arange(a.shape[1]) * factor + (factor - 1) / 2) * frame_s
        ys = np.arange(a.shape[0])
    lim = float(np.percentile(np.abs(a), clip_percentile)) or float(np.abs(a).max()) or 1.0
    z = np.clip(a, -lim, lim) if signed else np.clip(np.abs(a), 0, lim)
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=xs,
            y=ys,
            colorscale=SIGNED_OVERLAY if signed else HEAT_OVERLAY,
            zmin=-lim if signed else 0,
            zmax=lim,
            colorbar=dict(title=dict(text="attribution", side="right"), thickness=12),
            hovertemplate="%{x:.2f} s · bin %{y:.0f}<br>attribution %{z:.3g}<extra></extra>",
        )
    )
    _spec_axes(fig, freqs)
    return _layout(fig, title=title, height=height)


def deletion_insertion(
    fractions: Sequence[float] | np.ndarray,
    deletion: Sequence[float] | np.ndarray,
    insertion: Sequence[float] | np.ndarray,
    *,
    target: str | None = None,
    title: str | None = "Deletion and insertion",
    height: int = 320,
) -> go.Figure:
    """Class probability as the most-attributed cells are removed (deletion) or revealed (insertion).

    A faithful attribution makes deletion drop fast (low area) and insertion rise fast (high area);
    the areas under the curves are shown in the legend.
    Shapes: fractions, deletion, insertion (S,).
    """
    x, d, i = _np(fractions, 1), _np(deletion, 1), _np(insertion, 1)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=x,
            y=d,
            mode="lines+markers",
            name=f"deletion (AUC {trapezoid_auc(d, x):.3f})",
            line=dict(color=COLORS[3], width=2),
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=i,
            mode="lines+markers",
            name=f"insertion (AUC {trapezoid_auc(i, x):.3f})",
            line=dict(color=COLORS[2], width=2),
        )
    )
    fig.update_xaxes(title_text="fraction of cells removed / revealed", range=[0, 1], tickformat=".0%")
    fig.update_yaxes(title_text=f"p({target})" if target else "class probability", range=[0, 1.02])
    return _layout(
        fig, title=title, height=height, legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right")
    )


# ----------------------------------------------------------------------------- cross-validation
def cv_figure(
    summary: Mapping[str, Any], *, metric: str = "test_acc", title: str | None = None, height: int = 340
) -> go.Figure:
    """Bar of ``metric`` per fold (or per held-out group) with the mean ± std as a band and line.

    ``summary`` is :func:`asca_core.train.cv.cv_summary`'s dict; folds not finished yet are left out.
    """
    rows = [r for r in summary.get("rows", []) if r.get("state") == "finished"]
    by = summary.get("by") or "fold"
    names = [str(r["fold"]) if summary.get("by") else f"fold {r['fold']}" for r in rows]
    ys = [r.get(metric) for r in rows]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=ys,
            marker_color=COLORS[0],
            showlegend=False,
            text=[f"{y:.3f}" if isinstance(y, (int, float)) else "" for y in ys],
            textposition="outside",
            hovertemplate="%{x}: %{y:.4f}<extra></extra>",
        )
    )
    mean, std = (summary.get("mean") or {}).get(metric), (summary.get("std") or {}).get(metric)
    if mean is not None and rows:
        std = float(std or 0.0)
        fig.add_hrect(y0=mean - std, y1=mean + std, fillcolor=COLORS[3], opacity=0.12, line_width=0)
        fig.add_hline(
            y=mean,
            line=dict(color=COLORS[3], dash="dash", width=2),
            annotation_text=f"mean {mean:.3f} ± {std:.3f}",
            annotation_position="top left",
        )
    label = metric.replace("_", " ").replace("map", "mAP")
    fig.update_xaxes(title_text=by)
    fig.update_yaxes(title_text=label, rangemode="tozero")
    return _layout(fig, title=title if title is not None else summary.get("title"), height=height)
