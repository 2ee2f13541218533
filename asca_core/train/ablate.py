"""Layout ablation (the paper's Table 2): every layout x seed on the same splits and augment stream.

Runs go to ``OUT/<layout>-seed<s>/`` (ordinary run directories); a finished run is reused and an
interrupted one resumed, so an ablation can be continued by running the command again. The
summary is written as ``results.md``, ``results.csv`` (one row per layout: mean and std of each
metric, parameters, GMACs, training minutes), ``runs.csv`` (one row per run) and
``results.html`` (a plotly figure).
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


def write_html(path: Path, table: list[dict[str, Any]], markdown: str, title: str) -> None:
    """The ablation figure as a standalone HTML page (plotly, drawn by workbench.figures)."""
    metric = "test_map" if any(r.get("test_map") is not None for r in table) else "val_map"
    try:
        # Figures are presentation and live in workbench; imported here only to write this file.
        from workbench.figures import ablation as ablation_figure
    except ImportError:
        rows = "".join(f"<tr><td>{r['layout']}</td><td>{r.get(metric)}</td></tr>" for r in table)
        atomic_write_text(path, f"<html><body><h3>{title}</h3><table>{rows}</table></body></html>\n")
        return
    fig = ablation_figure(table, label="layout", metric=metric, error=f"{metric}_std", cost="gmacs",
                          cost_title="GMACs per clip", metric_title=metric.replace("_", " "), title=title)
    body = fig.to_html(full_html=True, include_plotlyjs="cdn")
    table_html = "<pre>" + markdown.replace("&", "&amp;").replace("<", "&lt;") + "</pre>"
    atomic_write_text(path, body.replace("</body>", table_html + "</body>"))


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


__all__ = ["run_ablation", "summarize", "to_markdown", "to_csv", "write_html", "METRICS"]
