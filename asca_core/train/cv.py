"""Cross-validation: k-fold over the dataset's ``fold`` column (the ESC-50 protocol) or
leave-one-group-out over a group column (one speaker, one source recording at a time).

:func:`run_cv` trains one ordinary run per fold; the fold (or group) is that run's test set and
validation is carved from the rest, group-aware when the config names a group column::

    summary = run_cv(cfg, "runs/cv-esc")                    # folds 1..5 of the fold column
    summary = run_cv(cfg, "runs/loso-fsdd", by="speaker")   # leave-one-speaker-out

Layout of ``OUT``::

    OUT/cv.json        the plan: the folds, the group column, the config every fold shares
    OUT/fold-<k>/      one run directory per fold
    OUT/results.md     one row per fold (test acc, mAP, ROC-AUC, cmAP, loss, epochs, minutes),
                       then mean ± std over the folds
    OUT/results.csv    the same rows, then a ``mean`` and a ``std`` row
    OUT/results.svg    test accuracy per fold and the mean, as self-contained SVG

Calling :func:`run_cv` again with the same config continues: finished folds are reused, a
stopped or killed fold resumes from its last checkpoint. :func:`cv_summary` reads a CV folder
back (finished or not) for the app.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import SECTIONS, Config
from ..errors import ConfigError, DatasetError
from .runstore import RunStore, atomic_write_json, atomic_write_text
from .sweep import Bar, bar_chart_svg, collect, mean_std, pm, to_csv, train_or_resume

PLAN = "cv.json"
METRICS = ("test_acc", "test_map", "test_auc", "test_cmap", "test_loss")
# leave-one-group-out over more values than this needs the held-out values named (folds=...)
MAX_GROUPS = 40


# ------------------------------------------------------------------------------------ plan
def fold_values(cfg: Config, by: str | None = None) -> list[Any]:
    """The values a CV of ``cfg`` iterates over: the folds (ints) or the ``by`` column's values."""
    from ..data import limit_clips_per_class, load_dataset, resolve_data_path
    from ..data.splits import _groups

    index = load_dataset(resolve_data_path(cfg.data.path), cfg.data.format)
    if cfg.data.max_clips_per_class:
        index = limit_clips_per_class(index, cfg.data.max_clips_per_class, seed=cfg.data.seed)
    if by is None:
        values: list[Any] = sorted({c.fold for c in index.clips if c.fold is not None})
        if not values:
            raise DatasetError(
                f"{cfg.data.path} has no fold column: leave one group out instead "
                "(e.g. by speaker: asca cv --by speaker)"
            )
    else:
        groups = _groups(index, by) or []
        values = sorted({g for g in groups if not g.startswith("\x00")})  # "\x00..": a clip without a value
        if not values:
            raise DatasetError(f"column {by!r} of {cfg.data.path} has no values")
    if len(values) < 2:
        what = "fold" if by is None else f"value of column {by!r}"
        raise DatasetError(f"{cfg.data.path} has one {what} only ({values[0]}): cross-validation needs two or more")
    return values


def _pick(available: list[Any], folds: Sequence[Any] | None, by: str | None) -> list[Any]:
    if folds is None:
        if by is not None and len(available) > MAX_GROUPS:
            raise ConfigError(
                f"column {by!r} has {len(available):,} values: leave-one-{by}-out would train "
                f"{len(available):,} runs; name the held-out values with --folds"
            )
        return list(available)
    shown = ", ".join(map(str, available[:12])) + (f", ... ({len(available)} in all)" if len(available) > 12 else "")
    picked: list[Any] = []
    for value in folds:
        if by is None:
            try:
                value = int(str(value).strip())
            except ValueError:
                raise ConfigError(f"fold {value!r} is not a fold number; folds present: {shown}") from None
        else:
            value = str(value).strip()
        if value not in available:
            what = "fold" if by is None else f"{by}"
            raise ConfigError(f"{what} {value!r} not found; {'folds' if by is None else 'values'} present: {shown}")
        if value not in picked:
            picked.append(value)
    if not picked:
        raise ConfigError("no folds given")
    return picked


def fold_config(cfg: Config, value: Any, by: str | None = None, budget_seconds: float | None = None) -> Config:
    """``cfg`` with fold ``value`` (or, with ``by``, that group) as the test set."""
    raw = cfg.to_dict()
    if by is None:
        raw["data"].update(test_fold=int(value), test_group=None)
    else:
        raw["data"].update(test_fold=None, group_column=by, test_group=str(value))
    if budget_seconds is not None:
        raw["train"]["budget_seconds"] = float(budget_seconds)
    return Config.from_dict(raw)


def _run_name(value: Any, taken: set[str]) -> str:
    base = "fold-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).strip("._") or "x")
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def _read_plan(out: Path) -> dict[str, Any] | None:
    try:
        plan = json.loads((out / PLAN).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return plan if isinstance(plan, dict) and isinstance(plan.get("folds"), list) else None


def _differences(a: Config, b: Config) -> list[str]:
    keys = []
    for section in SECTIONS:
        left, right = getattr(a, section).__dict__, getattr(b, section).__dict__
        keys += [f"{section}.{k}" for k in left if left[k] != right.get(k)]
    return keys


def _check_plan(
    out: Path, plan: dict[str, Any] | None, cfg: Config, by: str | None, budget_seconds: float | None
) -> None:
    """Refuse to mix a CV of another config (or another grouping) into ``out``."""
    if plan is None:
        if out.is_dir() and any(out.iterdir()):
            raise ConfigError(
                f"{out} is not empty and holds no {PLAN}: choose a new output folder for the cross-validation"
            )
        return
    if plan.get("by") != by:
        raise ConfigError(
            f"{out} holds a cross-validation by {plan.get('by') or 'fold'}, not by {by or 'fold'}: "
            "choose another output folder"
        )
    try:
        before = Config.from_dict(plan.get("config"))
    except ConfigError as exc:
        raise ConfigError(f"{out / PLAN} holds an unreadable config: {exc}") from None
    diff = _differences(before, cfg)
    if plan.get("fold_budget_seconds") != budget_seconds:
        diff.append("budget per fold")
    if diff:
        more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
        raise ConfigError(
            f"{out} holds a cross-validation of another config ({', '.join(diff[:3])}{more} "
            f"{'differs' if len(diff) == 1 else 'differ'}): choose another output folder"
        )


# ------------------------------------------------------------------------------------ run
def run_cv(
    cfg: Config,
    out: str | Path,
    *,
    folds: list | None = None,
    by: str | None = None,
    echo: Callable[[str], None] | None = None,
    progress: bool | None = None,
    fold_budget_seconds: float | None = None,
    stop_after_folds: int | None = None,
) -> dict[str, Any]:
    """Train one run of ``cfg`` per fold into ``out/fold-<k>/`` and write the results.

    ``folds``: the fold numbers (or ``by`` values) to hold out, default all. ``by``: a group
    column for leave-one-group-out. ``fold_budget_seconds`` sets each fold's
    ``train.budget_seconds``. A fold stopped by SIGINT/SIGTERM stops the CV (``state``
    ``"stopped"``); the same call continues it. ``stop_after_folds`` ends the call after that many
    folds were trained (reused ones not counted). Returns :func:`cv_summary` plus ``state``,
    ``markdown`` and, when stopped, ``stopped_at``.
    """
    out = Path(out)
    if by == "fold":
        by = None
    if stop_after_folds is not None and stop_after_folds < 1:
        raise ConfigError(f"stop_after_folds must be >= 1, got {stop_after_folds}")
    plan = _read_plan(out)
    _check_plan(out, plan, cfg, by, fold_budget_seconds)
    picked = _pick(fold_values(cfg, by), folds, by)
    runs: dict[str, str] = dict(plan.get("runs") or {}) if plan else {}
    planned: list[Any] = list(plan["folds"]) if plan else []
    for value in picked:
        if value not in planned:
            planned.append(value)
        if str(value) not in runs:
            runs[str(value)] = _run_name(value, set(runs.values()))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out / PLAN,
        {"by": by, "folds": planned, "runs": runs, "fold_budget_seconds": fold_budget_seconds, "config": cfg.to_dict()},
    )
    trained = 0
    for i, value in enumerate(picked, 1):
        run_dir = out / runs[str(value)]
        if echo:
            echo(f"=== {'fold' if by is None else by} {value} ({i}/{len(picked)}) -> {run_dir}")
        fresh = not (RunStore(run_dir).exists() and RunStore(run_dir).status().get("state") == "finished")
        if not train_or_resume(fold_config(cfg, value, by, fold_budget_seconds), run_dir, echo, progress):
            # SIGINT/SIGTERM stop the whole CV; the same call continues it
            return {**(cv_summary(out) or {}), "state": "stopped", "stopped_at": str(run_dir), "markdown": ""}
        trained += fresh
        if stop_after_folds is not None and trained >= stop_after_folds and i < len(picked):
            return {
                **(cv_summary(out) or {}),
                "state": "stopped",
                "stopped_at": str(out / runs[str(picked[i])]),
                "markdown": "",
            }
    summary = cv_summary(out)
    assert summary is not None
    markdown = to_markdown(summary)
    atomic_write_text(out / "results.md", markdown)
    atomic_write_text(out / "results.csv", to_csv(result_rows(summary)))
    atomic_write_text(out / "results.svg", to_svg(summary))
    return {**summary, "state": "finished", "markdown": markdown}


# ------------------------------------------------------------------------------------ read
def _dataset_name(path: str) -> str:
    p = Path(path)
    return p.parent.name if p.suffix.lower() == ".csv" else (p.name or path)


def cv_summary(folder: str | Path) -> dict[str, Any] | None:
    """Read a CV folder: ``None`` when it holds no ``cv.json``.

    Returns ``{"folder", "name", "title", "by", "folds", "rows", "mean", "std", "finished",
    "complete"}``: one row per planned fold (``fold``, ``state``: finished, running, stopped,
    crashed, failed or pending, and for a finished fold its test metrics, ``epochs`` and
    ``train_minutes``), mean and sample std over the finished folds.
    """
    folder = Path(folder)
    plan = _read_plan(folder)
    if plan is None:
        return None
    by = plan.get("by")
    runs = plan.get("runs") or {}
    rows = []
    for value in plan["folds"]:
        run_dir = folder / str(runs.get(str(value), f"fold-{value}"))
        store = RunStore(run_dir)
        row: dict[str, Any] = {"fold": value, "state": store.state() if store.exists() else "pending"}
        if row["state"] == "finished":
            row.update(collect(run_dir))
        rows.append(row)
    done = [r for r in rows if r["state"] == "finished"]
    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for key in METRICS + ("epochs", "train_minutes"):
        mean[key], std[key] = mean_std([r.get(key) for r in done])
    raw = plan.get("config") or {}
    data, model = raw.get("data") or {}, raw.get("model") or {}
    kind = f"{len(rows)}-fold cross-validation" if by is None else f"leave-one-{by}-out ({len(rows)} {by}s)"
    title = f"{kind}: {model.get('name', 'model')} on {_dataset_name(str(data.get('path', '')))}"
    return {
        "folder": str(folder),
        "name": folder.name,
        "title": title,
        "by": by,
        "folds": list(plan["folds"]),
        "rows": rows,
        "mean": mean,
        "std": std,
        "finished": len(done),
        "complete": len(done) == len(rows),
    }


def result_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``results.csv``: one per fold, then ``mean`` and ``std``."""
    keys = ("test_clips",) + METRICS + ("best_epoch", "epochs", "train_minutes", "val_acc", "val_map")
    rows = [{"fold": r["fold"], "state": r["state"], **{k: r.get(k) for k in keys}} for r in summary["rows"]]
    for name in ("mean", "std"):
        rows.append({"fold": name, "state": "", **{k: summary[name].get(k) for k in keys}})
    return rows


def _num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def to_markdown(summary: dict[str, Any]) -> str:
    """``results.md``: one row per fold, then mean ± std of every metric."""
    by = summary["by"] or "fold"
    header = [by, "test clips", "test acc", "test mAP", "test ROC-AUC", "test cmAP", "test loss", "epochs", "train min"]
    lines = [f"### {summary['title']}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in summary["rows"]:
        if r["state"] != "finished":
            lines.append("| " + " | ".join([str(r["fold"]), r["state"]] + [""] * (len(header) - 2)) + " |")
            continue
        cells = [str(r["fold"]), str(r.get("test_clips") or "n/a")] + [_num(r.get(k)) for k in METRICS]
        cells += [str(r.get("epochs")), _num(r.get("train_minutes"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    m, s = summary["mean"], summary["std"]
    cells = ["**mean ± std**", ""] + [pm(m.get(k), s.get(k)) for k in METRICS]
    cells += [pm(m.get("epochs"), s.get("epochs"), 1), pm(m.get("train_minutes"), s.get("train_minutes"), 1)]
    lines.append("| " + " | ".join(cells) + " |")
    n = summary["finished"]
    lines += [
        "",
        (
            f"Test metrics of each {by}'s best validation checkpoint; mean ± sample standard deviation "
            f"over {n} {by}{'s' if n != 1 else ''}."
        ),
    ]
    if not summary["complete"]:
        missing = [str(r["fold"]) for r in summary["rows"] if r["state"] != "finished"]
        lines.append(f"Not finished yet: {by} {', '.join(missing)}.")
    return "\n".join(lines) + "\n"


def to_svg(summary: dict[str, Any]) -> str:
    """Test accuracy (mAP when no fold has an accuracy) per fold, with the mean as a dashed line."""
    done = [r for r in summary["rows"] if r["state"] == "finished"]
    metric = "test_acc" if any(r.get("test_acc") is not None for r in done) else "test_map"
    by = summary["by"] or "fold"
    bars = [
        Bar(
            str(r["fold"])[:10] if summary["by"] else f"fold {r['fold']}",
            r.get(metric),
            note=f" · {r['test_clips']} clips" if r.get("test_clips") else "",
        )
        for r in done
    ]
    mean, std = summary["mean"].get(metric), summary["std"].get(metric)
    subtitle = f"{metric.replace('_', ' ')} per {by}" + (f"; dashed: mean {pm(mean, std)}" if mean is not None else "")
    return bar_chart_svg(bars, title=summary["title"], subtitle=subtitle, mean=mean)


__all__ = [
    "METRICS",
    "cv_summary",
    "fold_config",
    "fold_values",
    "result_rows",
    "run_cv",
    "to_markdown",
    "to_svg",
]
