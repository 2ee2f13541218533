"""Layout and window-division ablations (the paper's Table 2 and figure 3): every variant x seed
on the same splits and augment stream.

A variant is a layout, or a layout with a window division (``model.attn_division``: input cells
per token side of the first transformer stage, see :mod:`asca_core.models.asca`). Runs go to
``OUT/<layout>-seed<s>/`` or ``OUT/<layout>-w<division>-seed<s>/`` (ordinary run directories); a
finished run is reused and an interrupted one resumed, so an ablation can be continued by running
the command again. A layout without transformer stages (CCCC) has no window to divide and runs
once. The summary is written as ``results.md``, ``results.csv`` (one row per variant: mean and
std of each metric, parameters, GMACs, training minutes), ``runs.csv`` (one row per run) and
``results.svg`` with ``results.html`` (the chart and the table, self-contained).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import Config
from .runstore import RunStore, atomic_write_json, atomic_write_text
from .sweep import Bar, bar_chart_svg, collect, esc, mean_std, pm, to_csv, train_or_resume

METRICS = ("test_acc", "test_map", "test_auc", "test_cmap", "val_acc", "val_map")


def _cost(cfg: Config, num_classes: int) -> tuple[int, float]:
    from ..models import count_params, gmacs
    from .checkpoint import model_from_config

    model = model_from_config(cfg, num_classes)
    return count_params(model), gmacs(model, cfg.features.input_size)


def variant_name(layout: str, window: int | None) -> str:
    """``"CCCT"`` or ``"CCCT w16"``: how a variant is labelled in tables and charts."""
    return layout if window is None else f"{layout} w{window}"


def variants(layouts: Sequence[str], windows: Sequence[int | None] | None) -> list[tuple[str, int | None]]:
    """(layout, window division) pairs in table order; a layout without transformer stages once."""
    if not windows:
        return [(layout, None) for layout in layouts]
    out: list[tuple[str, int | None]] = []
    for layout in layouts:
        for window in windows if "T" in layout else [None]:
            if (layout, window) not in out:
                out.append((layout, window))
    return out


def summarize(
    per_run: list[dict[str, Any]], layouts: Sequence[str], windows: Sequence[int | None] | None = None
) -> list[dict[str, Any]]:
    """One row per variant: ``<metric>`` mean and ``<metric>_std``, plus cost columns.

    Rows carry ``layout``, and with ``windows`` also ``window`` and ``variant``."""
    table = []
    for layout, window in variants(layouts, windows):
        runs = [r for r in per_run if r["layout"] == layout and r.get("window") == window]
        row: dict[str, Any] = {"layout": layout}
        if windows:
            row.update(window=window, variant=variant_name(layout, window))
        row.update(
            {
                "seeds": len(runs),
                "params": runs[0]["params"] if runs else None,
                "gmacs": runs[0]["gmacs"] if runs else None,
            }
        )
        for key in METRICS + ("train_minutes",):
            row[key], row[f"{key}_std"] = mean_std([r.get(key) for r in runs])
        table.append(row)
    return table


def to_markdown(table: list[dict[str, Any]], title: str) -> str:
    has_test = any(r.get("test_acc") is not None for r in table)
    has_window = any("variant" in r for r in table)
    cols = (["test acc", "test mAP", "test ROC-AUC", "test cmAP"] if has_test else []) + ["val acc", "val mAP"]
    keys = (["test_acc", "test_map", "test_auc", "test_cmap"] if has_test else []) + ["val_acc", "val_map"]
    header = ["layout"] + (["window division", "token grid"] if has_window else [])
    header += ["seeds", "params" if has_window else "params (M)", "GMACs"]
    header += cols + ["train min"]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table:
        cells = [r["layout"]]
        if has_window:
            cells += [f"{r['window']}x{r['window']}" if r.get("window") else "stage stride", r.get("grid") or "n/a"]
        # window variants differ by a few thousand bias-table entries: exact counts show it
        params = (f"{r['params']:,}" if has_window else f"{r['params'] / 1e6:.2f}") if r.get("params") else "n/a"
        cells += [str(r["seeds"]), params, f"{r['gmacs']:.3f}" if r.get("gmacs") is not None else "n/a"]
        cells += [pm(r.get(k), r.get(f"{k}_std")) for k in keys]
        cells.append(pm(r.get("train_minutes"), r.get("train_minutes_std"), 1))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", ("Mean ± standard deviation over seeds; test metrics use each run's best validation checkpoint.")]
    if has_window:
        lines += [
            "",
            (
                "Window division: input cells per token side of the first transformer stage "
                "(model.attn_division); token grid: that stage's (freq x time) tokens at the input size."
            ),
        ]
    return "\n".join(lines) + "\n"


def to_svg(table: list[dict[str, Any]], metric: str, title: str) -> str:
    """A self-contained bar chart of ``metric`` per layout: the mean over seeds, a ±1 std whisker
    and each layout's GMACs (attention layouts blue, all-conv grey). No scripts, nothing to fetch."""
    bars = [
        Bar(
            row.get("variant", row["layout"]),
            row.get(metric),
            float(row.get(f"{metric}_std") or 0.0),
            f" · {row['gmacs']:.3f} GMACs" if row.get("gmacs") is not None else "",
            "#4c78a8" if "T" in row["layout"] else "#9d9d9d",
        )
        for row in table
    ]
    return bar_chart_svg(bars, title=title, subtitle=f"{metric.replace('_', ' ')} (mean ± std over seeds)")


def write_html(path: Path, table: list[dict[str, Any]], markdown: str, title: str) -> str:
    """Write the ablation chart as ``results.svg`` beside ``path`` and a standalone HTML page
    holding the chart and the table; returns the SVG."""
    metric = "test_acc" if any(r.get("test_acc") is not None for r in table) else "val_acc"
    svg = to_svg(table, metric, title)
    atomic_write_text(Path(path).with_suffix(".svg"), svg)
    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{esc(title)}</title></head>'
        f"<body>\n{svg}<pre>{esc(markdown)}</pre>\n</body></html>\n"
    )
    atomic_write_text(path, page)
    return svg


def _grid(cfg: Config) -> str:
    """The (freq x time) token grid of the first transformer stage at the config's input size."""
    from ..models.asca import ASCA

    layout = cfg.model.layout
    if "T" not in layout:
        return "n/a"
    stride = ASCA._token_sizes(layout, cfg.model.attn_division)[layout.index("T")]
    f, t = cfg.features.input_size
    return f"{max(1, f // stride)}x{max(1, t // stride)}"


def run_ablation(
    cfg: Config,
    layouts: Sequence[str],
    seeds: int,
    out_dir: str | Path,
    *,
    windows: Sequence[int | None] | None = None,
    echo: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train every variant (``layouts``, crossed with window divisions ``windows`` when given) x
    ``seeds`` of ``cfg`` into ``out_dir`` and write the tables.

    Seeds are ``cfg.train.seed + i``; the data split (``data.seed``) is the same for every run, and
    each seed gives every variant the same sampler order, crops and augmentation draws.
    A run stopped by SIGINT/SIGTERM stops the ablation (``state`` "stopped"); calling this again
    with the same arguments resumes it. Returns ``{"state", "table", "runs", "markdown"}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan: dict[str, Any] = {"layouts": list(layouts), "seeds": seeds, "config": cfg.to_dict()}
    if windows:
        plan["windows"] = list(windows)
    atomic_write_json(out / "ablation.json", plan)
    per_run: list[dict[str, Any]] = []
    costs: dict[tuple[str, int | None], tuple[int, float]] = {}
    for layout, window in variants(layouts, windows):
        name = layout if window is None else f"{layout}-w{window}"
        for i in range(seeds):
            seed = cfg.train.seed + i
            run_cfg = cfg.replace("model.layout", layout)
            if windows:
                run_cfg = run_cfg.replace("model.attn_division", window)
            run_cfg = run_cfg.replace("train.seed", seed)
            run_dir = out / f"{name}-seed{seed}"
            if echo:
                echo(f"=== {variant_name(layout, window)}, seed {seed} -> {run_dir}")
            if not train_or_resume(run_cfg, run_dir, echo, progress):
                # SIGINT/SIGTERM stop the whole ablation; the same command continues it
                return {"state": "stopped", "table": [], "runs": per_run, "markdown": "", "stopped_at": str(run_dir)}
            if (layout, window) not in costs:
                costs[(layout, window)] = _cost(run_cfg, len(RunStore(run_dir).labels()))
            params, macs = costs[(layout, window)]
            row: dict[str, Any] = {"layout": layout}
            if windows:
                row.update(window=window, grid=_grid(run_cfg))
            per_run.append({**row, "seed": seed, "params": params, "gmacs": macs, **collect(run_dir)})
    table = summarize(per_run, layouts, windows)
    if windows:
        grids = {(r["layout"], r["window"]): r["grid"] for r in per_run}
        for row in table:
            row["grid"] = grids.get((row["layout"], row["window"]))
    kind = "Window-division" if windows else "Layout"
    title = f"{kind} ablation: {cfg.model.name} on {Path(cfg.data.path).parent.name or cfg.data.path}"
    markdown = to_markdown(table, title)
    atomic_write_text(out / "results.md", markdown)
    atomic_write_text(out / "results.csv", to_csv(table))
    atomic_write_text(out / "runs.csv", to_csv(per_run))
    write_html(out / "results.html", table, markdown, title)
    return {"state": "finished", "table": table, "runs": per_run, "markdown": markdown}


__all__ = [
    "METRICS",
    "run_ablation",
    "summarize",
    "to_csv",
    "to_markdown",
    "to_svg",
    "variant_name",
    "variants",
    "write_html",
]
