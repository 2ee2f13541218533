"""Layout ablation (the paper's Table 2): every layout x seed on the same splits and augment stream.

Runs go to ``OUT/<layout>-seed<s>/`` (ordinary run directories); a finished run is reused and an
interrupted one resumed, so an ablation can be continued by running the command again. The
summary is written as ``results.md``, ``results.csv`` (one row per layout: mean and std of each
metric, parameters, GMACs, training minutes), ``runs.csv`` (one row per run) and
``results.svg`` with ``results.html`` (the chart and the table, self-contained).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..config import Config
from .runstore import RunStore, atomic_write_json, atomic_write_text

METRICS = ("test_acc", "test_map", "test_auc", "test_cmap", "val_acc", "val_map")


def _run_one(cfg: Config, run_dir: Path, echo: Callable[[str], None] | None,
             progress: bool | None) -> bool:
    """Train (or resume, or reuse) one variant; False when it was stopped before finishing."""
    from .engine import fit

    store = RunStore(run_dir)
    if store.exists() and store.status().get("state") == "finished":
        if echo:
            echo(f"{run_dir.name}: finished earlier, reused")
        return True
    if store.exists():  # continue with the run's own resolved config (normalisation included)
        return fit(store.config(), run_dir, resume=True, echo=echo, progress=progress)["state"] == "finished"
    return fit(cfg, run_dir, echo=echo, progress=progress)["state"] == "finished"


def _collect(run_dir: Path) -> dict[str, Any]:
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
        "train_minutes": sum(r.get("seconds") or 0.0 for r in rows) / 60.0,
    }


def _cost(cfg: Config, num_classes: int) -> tuple[int, float]:
    from ..models import count_params, gmacs
    from .checkpoint import model_from_config

    model = model_from_config(cfg, num_classes)
    return count_params(model), gmacs(model, tuple(cfg.features.input_size))


def _mean_std(values: Sequence[Any]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def summarize(per_run: list[dict[str, Any]], layouts: Sequence[str]) -> list[dict[str, Any]]:
    """One row per layout: ``<metric>`` mean and ``<metric>_std``, plus cost columns."""
    table = []
    for layout in layouts:
        runs = [r for r in per_run if r["layout"] == layout]
        row: dict[str, Any] = {"layout": layout, "seeds": len(runs),
                               "params": runs[0]["params"] if runs else None,
                               "gmacs": runs[0]["gmacs"] if runs else None}
        for key in METRICS + ("train_minutes",):
            row[key], row[f"{key}_std"] = _mean_std([r.get(key) for r in runs])
        table.append(row)
    return table


def _pm(mean: float | None, std: float | None, digits: int = 3, scale: float = 1.0) -> str:
    if mean is None:
        return "n/a"
    return f"{mean * scale:.{digits}f} ± {(std or 0.0) * scale:.{digits}f}"


def to_markdown(table: list[dict[str, Any]], title: str) -> str:
    has_test = any(r.get("test_acc") is not None for r in table)
    cols = (["test acc", "test mAP", "test ROC-AUC", "test cmAP"] if has_test else []) + ["val acc", "val mAP"]
    keys = (["test_acc", "test_map", "test_auc", "test_cmap"] if has_test else []) + ["val_acc", "val_map"]
    header = ["layout", "seeds", "params (M)", "GMACs"] + cols + ["train min"]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table:
        cells = [r["layout"], str(r["seeds"]),
                 f"{r['params'] / 1e6:.2f}" if r.get("params") else "n/a",
                 f"{r['gmacs']:.3f}" if r.get("gmacs") is not None else "n/a"]
        cells += [_pm(r.get(k), r.get(f"{k}_std")) for k in keys]
        cells.append(_pm(r.get("train_minutes"), r.get("train_minutes_std"), 1))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± standard deviation over seeds; test metrics use each run's best "
                  "validation checkpoint."]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return out.getvalue()


def _esc(text: Any) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_svg(table: list[dict[str, Any]], metric: str, title: str) -> str:
    """A self-contained bar chart of ``metric`` per layout: the mean over seeds, a ±1 std whisker
    and each layout's GMACs (attention layouts blue, all-conv grey). No scripts, nothing to fetch."""
    width, bar_h, gap, left, top = 640, 28, 14, 70, 48
    plot_w = width - left - 150
    height = top + len(table) * (bar_h + gap) + 40
    values = [r.get(metric) for r in table]
    hi = max([1.0] + [float(v) + float(r.get(f"{metric}_std") or 0.0) for v, r in zip(values, table) if v is not None])
    x = lambda v: left + plot_w * float(v) / hi  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
             f'<text x="{left}" y="22" font-size="15" font-weight="bold">{_esc(title)}</text>',
             f'<text x="{left}" y="40" fill="#555">{_esc(metric.replace("_", " "))} '
             f'(mean ± std over seeds)</text>']
    for tick in np.linspace(0.0, hi, 5):
        tx = x(tick)
        parts.append(f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{height - 34}" stroke="#ddd"/>')
        parts.append(f'<text x="{tx:.1f}" y="{height - 18}" text-anchor="middle" fill="#555">{tick:.2f}</text>')
    for i, row in enumerate(table):
        y = top + i * (bar_h + gap) + gap / 2
        parts.append(f'<text x="{left - 8}" y="{y + bar_h * 0.68:.1f}" text-anchor="end" '
                     f'font-weight="bold">{_esc(row["layout"])}</text>')
        mean, std = row.get(metric), float(row.get(f"{metric}_std") or 0.0)
        if mean is None:
            parts.append(f'<text x="{left + 4}" y="{y + bar_h * 0.68:.1f}" fill="#888">n/a</text>')
            continue
        colour = "#4c78a8" if "T" in row["layout"] else "#9d9d9d"
        parts.append(f'<rect x="{left}" y="{y:.1f}" width="{x(mean) - left:.1f}" height="{bar_h}" fill="{colour}"/>')
        if std > 0:
            cy = y + bar_h / 2
            parts.append(f'<line x1="{x(mean - std):.1f}" y1="{cy:.1f}" x2="{x(min(hi, mean + std)):.1f}" '
                         f'y2="{cy:.1f}" stroke="#222" stroke-width="1.5"/>')
        cost = f" · {row['gmacs']:.3f} GMACs" if row.get("gmacs") is not None else ""
        parts.append(f'<text x="{left + plot_w + 8}" y="{y + bar_h * 0.68:.1f}">{mean:.3f}{_esc(cost)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_html(path: Path, table: list[dict[str, Any]], markdown: str, title: str) -> str:
    """Write the ablation chart as ``results.svg`` beside ``path`` and a standalone HTML page
    holding the chart and the table; returns the SVG."""
    metric = "test_acc" if any(r.get("test_acc") is not None for r in table) else "val_acc"
    svg = to_svg(table, metric, title)
    atomic_write_text(Path(path).with_suffix(".svg"), svg)
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{_esc(title)}</title></head>"
            f"<body>\n{svg}<pre>{_esc(markdown)}</pre>\n</body></html>\n")
    atomic_write_text(path, page)
    return svg


def run_ablation(cfg: Config, layouts: Sequence[str], seeds: int, out_dir: str | Path, *,
                 echo: Callable[[str], None] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Train ``layouts`` x ``seeds`` variants of ``cfg`` into ``out_dir`` and write the tables.

    Seeds are ``cfg.train.seed + i``; the data split (``data.seed``) is the same for every run, and
    each seed gives every layout the same sampler order, crops and augmentation draws.
    A run stopped by SIGINT/SIGTERM stops the ablation (``state`` "stopped"); calling this again
    with the same arguments resumes it. Returns ``{"state", "table", "runs", "markdown"}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "ablation.json", {"layouts": list(layouts), "seeds": seeds,
                                              "config": cfg.to_dict()})
    per_run: list[dict[str, Any]] = []
    costs: dict[str, tuple[int, float]] = {}
    for layout in layouts:
        for i in range(seeds):
            seed = cfg.train.seed + i
            run_cfg = cfg.replace("model.layout", layout).replace("train.seed", seed)
            run_dir = out / f"{layout}-seed{seed}"
            if echo:
                echo(f"=== {layout}, seed {seed} -> {run_dir}")
            if not _run_one(run_cfg, run_dir, echo, progress):
                # SIGINT/SIGTERM stop the whole ablation; the same command continues it
                return {"state": "stopped", "table": [], "runs": per_run, "markdown": "",
                        "stopped_at": str(run_dir)}
            if layout not in costs:
                costs[layout] = _cost(run_cfg, len(RunStore(run_dir).labels()))
            params, macs = costs[layout]
            per_run.append({"layout": layout, "seed": seed, "params": params, "gmacs": macs,
                            **_collect(run_dir)})
    table = summarize(per_run, layouts)
    title = f"Layout ablation: {cfg.model.name} on {Path(cfg.data.path).parent.name or cfg.data.path}"
    markdown = to_markdown(table, title)
    atomic_write_text(out / "results.md", markdown)
    atomic_write_text(out / "results.csv", to_csv(table))
    atomic_write_text(out / "runs.csv", to_csv(per_run))
    write_html(out / "results.html", table, markdown, title)
    return {"state": "finished", "table": table, "runs": per_run, "markdown": markdown}


__all__ = ["run_ablation", "summarize", "to_markdown", "to_csv", "to_svg", "write_html", "METRICS"]
