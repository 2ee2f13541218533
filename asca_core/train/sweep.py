"""What the commands that train a set of runs share (``asca ablate``, ``asca cv``).

Training or continuing one member run, reading its metrics back, mean ± std over runs, the
Markdown / CSV cells and a self-contained SVG bar chart (no scripts, nothing fetched).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from .runstore import RunStore


# ------------------------------------------------------------------------------------ runs
def train_or_resume(cfg: Config, run_dir: Path, echo: Callable[[str], None] | None, progress: bool | None) -> bool:
    """Train (or resume, or reuse) one run; False when it was stopped before finishing."""
    from .engine import fit

    store = RunStore(run_dir)
    if store.exists() and store.status().get("state") == "finished":
        if echo:
            echo(f"{run_dir.name}: finished earlier, reused")
        return True
    if store.exists():  # continue with the run's own resolved config (normalisation included)
        return fit(store.config(), run_dir, resume=True, echo=echo, progress=progress)["state"] == "finished"
    return fit(cfg, run_dir, echo=echo, progress=progress)["state"] == "finished"


def collect(run_dir: Path) -> dict[str, Any]:
    """Metrics of one finished run: best epoch's validation row and the test evaluation."""
    store = RunStore(run_dir)
    status = store.status()
    rows = store.metrics()
    best = next((r for r in rows if r.get("epoch") == status.get("best_epoch")), rows[-1] if rows else {})
    test = store.eval_details()
    return {
        "run": run_dir.name,
        "best_epoch": status.get("best_epoch"),
        "epochs": len(rows),
        "val_acc": best.get("val_acc"),
        "val_map": best.get("val_map"),
        "test_acc": test.get("acc"),
        "test_map": test.get("map"),
        "test_auc": test.get("auc"),
        "test_cmap": test.get("cmap"),
        "test_loss": test.get("loss"),
        "test_clips": test.get("n"),
        "train_minutes": sum(r.get("seconds") or 0.0 for r in rows) / 60.0,
    }


# ------------------------------------------------------------------------------------ tables
def mean_std(values: Sequence[Any]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the finite values (std 0 for one value)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def pm(mean: float | None, std: float | None, digits: int = 3, scale: float = 1.0) -> str:
    """``"0.912 ± 0.031"`` (``"n/a"`` without a mean)."""
    if mean is None:
        return "n/a"
    return f"{mean * scale:.{digits}f} ± {(std or 0.0) * scale:.{digits}f}"


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV text, columns in the first row's order; None as an empty cell."""
    if not rows:
        return ""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return out.getvalue()


def esc(text: Any) -> str:
    """Text escaped for SVG / HTML."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ------------------------------------------------------------------------------------ chart
@dataclass
class Bar:
    """One bar of :func:`bar_chart_svg`: ``note`` is written after the value, right of the plot."""

    label: str
    value: float | None
    std: float = 0.0
    note: str = ""
    colour: str = "#4c78a8"


def bar_chart_svg(
    bars: Sequence[Bar], *, title: str, subtitle: str, mean: float | None = None, mean_label: str = "mean"
) -> str:
    """A horizontal bar chart as standalone SVG: one bar per item, a ±1 std whisker where given,
    and optionally a dashed vertical line at ``mean``. No scripts, nothing to fetch."""
    width, bar_h, gap, left, top = 640, 28, 14, 70, 48
    plot_w = width - left - 150
    height = top + len(bars) * (bar_h + gap) + 40
    hi = max([1.0] + [float(b.value) + float(b.std or 0.0) for b in bars if b.value is not None])
    x = lambda v: left + plot_w * float(v) / hi
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">'
        ),
        f'<text x="{left}" y="22" font-size="15" font-weight="bold">{esc(title)}</text>',
        f'<text x="{left}" y="40" fill="#555">{esc(subtitle)}</text>',
    ]
    for tick in np.linspace(0.0, hi, 5):
        tx = x(tick)
        parts.append(f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{height - 34}" stroke="#ddd"/>')
        parts.append(f'<text x="{tx:.1f}" y="{height - 18}" text-anchor="middle" fill="#555">{tick:.2f}</text>')
    for i, bar in enumerate(bars):
        y = top + i * (bar_h + gap) + gap / 2
        parts.append(
            f'<text x="{left - 8}" y="{y + bar_h * 0.68:.1f}" text-anchor="end" '
            f'font-weight="bold">{esc(bar.label)}</text>'
        )
        if bar.value is None:
            parts.append(f'<text x="{left + 4}" y="{y + bar_h * 0.68:.1f}" fill="#888">n/a</text>')
            continue
        value, std = float(bar.value), float(bar.std or 0.0)
        parts.append(
            f'<rect x="{left}" y="{y:.1f}" width="{x(value) - left:.1f}" height="{bar_h}" fill="{bar.colour}"/>'
        )
        if std > 0:
            cy = y + bar_h / 2
            parts.append(
                f'<line x1="{x(value - std):.1f}" y1="{cy:.1f}" x2="{x(min(hi, value + std)):.1f}" '
                f'y2="{cy:.1f}" stroke="#222" stroke-width="1.5"/>'
            )
        parts.append(f'<text x="{left + plot_w + 8}" y="{y + bar_h * 0.68:.1f}">{value:.3f}{esc(bar.note)}</text>')
    if mean is not None:
        mx = x(mean)
        parts.append(
            f'<line x1="{mx:.1f}" y1="{top - 4}" x2="{mx:.1f}" y2="{height - 34}" stroke="#e45756" '
            'stroke-width="2" stroke-dasharray="6 4"/>'
        )
        parts.append(f'<text x="{mx + 4:.1f}" y="{height - 38}" fill="#e45756">{esc(mean_label)} {mean:.3f}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


__all__ = ["Bar", "bar_chart_svg", "collect", "esc", "mean_std", "pm", "to_csv", "train_or_resume"]
