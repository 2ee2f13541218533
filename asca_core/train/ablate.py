"""Layout ablation (the paper's Table 2): every layout x seed on the same splits and augment stream.

Runs go to ``OUT/<layout>-seed<s>/`` (ordinary run directories); a finished run is reused and an
interrupted one resumed, so an ablation can be continued by running the command again. The
summary is written as ``results.md``, ``results.csv`` (one row per layout: mean and std of each
metric, parameters, GMACs, training minutes), ``runs.csv`` (one row per run) and
``results.svg`` with ``results.html`` (the chart and the table, self-contained).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import Config
from .runstore import RunStore, atomic_write_json, atomic_write_text
from .sweep import Bar, bar_chart_svg, collect, esc, mean_std, pm, to_csv, train_or_resume

METRICS = ("test_acc", "test_map", "test_auc", "test_cmap", "val_acc", "val_map")


def _cost(cfg: Config, num_classes: int) -> tuple[int, float]:
    from ..models import count_params, gmacs
    from .checkpoint import model_from_config

    model = model_from_config(cfg, num_classes)
    return count_params(model), gmacs(model, tuple(cfg.features.input_size))


def summarize(per_run: list[dict[str, Any]], layouts: Sequence[str]) -> list[dict[str, Any]]:
    """One row per layout: ``<metric>`` mean and ``<metric>_std``, plus cost columns."""
    table = []
    for layout in layouts:
        runs = [r for r in per_run if r["layout"] == layout]
        row: dict[str, Any] = {"layout": layout, "seeds": len(runs),
                               "params": runs[0]["params"] if runs else None,
                               "gmacs": runs[0]["gmacs"] if runs else None}
        for key in METRICS + ("train_minutes",):
            row[key], row[f"{key}_std"] = mean_std([r.get(key) for r in runs])
        table.append(row)
    return table


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
        cells += [pm(r.get(k), r.get(f"{k}_std")) for k in keys]
        cells.append(pm(r.get("train_minutes"), r.get("train_minutes_std"), 1))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± standard deviation over seeds; test metrics use each run's best "
                  "validation checkpoint."]
    return "\n".join(lines) + "\n"


def to_svg(table: list[dict[str, Any]], metric: str, title: str) -> str:
    """A self-contained bar chart of ``metric`` per layout: the mean over seeds, a ±1 std whisker
    and each layout's GMACs (attention layouts blue, all-conv grey). No scripts, nothing to fetch."""
    bars = [Bar(row["layout"], row.get(metric), float(row.get(f"{metric}_std") or 0.0),
                f" · {row['gmacs']:.3f} GMACs" if row.get("gmacs") is not None else "",
                "#4c78a8" if "T" in row["layout"] else "#9d9d9d") for row in table]
    return bar_chart_svg(bars, title=title, subtitle=f"{metric.replace('_', ' ')} (mean ± std over seeds)")


def write_html(path: Path, table: list[dict[str, Any]], markdown: str, title: str) -> str:
    """Write the ablation chart as ``results.svg`` beside ``path`` and a standalone HTML page
    holding the chart and the table; returns the SVG."""
    metric = "test_acc" if any(r.get("test_acc") is not None for r in table) else "val_acc"
    svg = to_svg(table, metric, title)
    atomic_write_text(Path(path).with_suffix(".svg"), svg)
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title></head>"
            f"<body>\n{svg}<pre>{esc(markdown)}</pre>\n</body></html>\n")
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
            if not train_or_resume(run_cfg, run_dir, echo, progress):
                # SIGINT/SIGTERM stop the whole ablation; the same command continues it
                return {"state": "stopped", "table": [], "runs": per_run, "markdown": "",
                        "stopped_at": str(run_dir)}
            if layout not in costs:
                costs[layout] = _cost(run_cfg, len(RunStore(run_dir).labels()))
            params, macs = costs[layout]
            per_run.append({"layout": layout, "seed": seed, "params": params, "gmacs": macs,
                            **collect(run_dir)})
    table = summarize(per_run, layouts)
    title = f"Layout ablation: {cfg.model.name} on {Path(cfg.data.path).parent.name or cfg.data.path}"
    markdown = to_markdown(table, title)
    atomic_write_text(out / "results.md", markdown)
    atomic_write_text(out / "results.csv", to_csv(table))
    atomic_write_text(out / "runs.csv", to_csv(per_run))
    write_html(out / "results.html", table, markdown, title)
    return {"state": "finished", "table": table, "runs": per_run, "markdown": markdown}


__all__ = ["run_ablation", "summarize", "to_markdown", "to_csv", "to_svg", "write_html", "METRICS"]
