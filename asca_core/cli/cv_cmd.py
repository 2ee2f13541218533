"""``asca cv``: k-fold cross-validation over the fold column, or leave-one-group-out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .train_cmd import dataset_name, default_run_dir, load_train_config, resolve_data_path

if TYPE_CHECKING:
    from ..config import Config


def register(subparsers) -> None:
    cv = subparsers.add_parser(
        "cv",
        help="cross-validate: one run per fold (the ESC-50 protocol) or per group, mean ± std",
        description="Train one run per fold of the dataset's fold column, that fold being the test set "
        "and validation carved from the others (with --by COLUMN: one run per value of that "
        "group column, e.g. leave-one-speaker-out). Writes OUT/fold-<k>/ run folders, "
        "results.md and results.csv (one row per fold, then mean ± std) and results.svg. "
        "Running the same command again with --out OUT continues: finished folds are reused, "
        "a stopped one resumes.",
    )
    cv.add_argument(
        "data",
        nargs="?",
        metavar="DATA",
        help="dataset folder or manifest, or 'demo' (alone: the automatic recipe of asca train "
        "DATA; with --config: replaces data.path)",
    )
    cv.add_argument("--config", "-c", metavar="FILE", help="YAML config every fold trains")
    cv.add_argument(
        "--budget", metavar="DURATION", help="wall-clock budget per fold, e.g. 5m (default with DATA alone: 15m)"
    )
    cv.add_argument(
        "--folds", metavar="K1,K2,...", help="comma-separated folds (or --by values) to hold out (default: all)"
    )
    cv.add_argument(
        "--by", metavar="COLUMN", help="leave one group out: one fold per value of this column (e.g. speaker)"
    )
    cv.add_argument("--out", metavar="DIR", help="output folder (default: RUNS/cv-<name>-<time>)")
    cv.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one value for every fold (repeatable)",
    )
    cv.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    cv.set_defaults(func=_cv)


def _config(args: argparse.Namespace, out: Path | None, echo) -> tuple[Config, float | None, str | None]:
    """The config every fold shares, the per-fold budget and, for a recipe, its description."""
    from ..train.cv import _read_plan

    seconds = None
    if args.budget:
        from ..train.recipe import parse_duration

        seconds = parse_duration(args.budget)
    if args.config:
        items = list(args.overrides) + ([f"data.path={args.data}"] if args.data else [])
        return load_train_config(args.config, items, None, False), seconds, None
    if not args.data:
        raise ConfigError("asca cv needs a dataset (asca cv DATA) or --config FILE (e.g. configs/demo.yaml)")
    try:
        from ..train.recipe import DEFAULT_BUDGET_SECONDS, resolve_recipe
    except ImportError:
        raise ConfigError("automatic recipes are not available in this installation: use --config FILE") from None
    data = resolve_data_path(args.data)
    plan = _read_plan(out) if out is not None else None
    if plan is not None:
        # continuing: the recipe resolved when the CV started (its speed probe is not repeated)
        from ..config import Config, apply_overrides

        cfg = Config.from_dict(apply_overrides(dict(plan.get("config") or {}), args.overrides))
        if _same_place(cfg.data.path) != _same_place(data):
            raise ConfigError(f"{out} holds a cross-validation of {cfg.data.path}, not {data}: choose another --out")
        return cfg, seconds if args.budget else plan.get("fold_budget_seconds"), None
    seconds = seconds or DEFAULT_BUDGET_SECONDS
    recipe = resolve_recipe(data, seconds, list(args.overrides), echo=echo)
    return recipe.config, seconds, recipe.describe()


def _same_place(path: str) -> str:
    return path if path == "demo" else str(Path(path).expanduser().resolve())


def _folds(text: str | None) -> list[str] | None:
    if text is None:
        return None
    folds = [x.strip() for x in text.split(",") if x.strip()]
    if not folds:
        raise ConfigError(f"--folds must list folds, e.g. 1,2,3, got {text!r}")
    return folds


def _cv(args: argparse.Namespace) -> int:
    from ..train.cv import run_cv

    echo = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    folds = _folds(args.folds)
    out = Path(args.out) if args.out else None
    cfg, seconds, described = _config(args, out, echo)
    if described:
        print(described, flush=True)
    if out is None:
        out = default_run_dir(args.config or dataset_name(args.data), prefix="cv-")
    print(f"cross-validation folder: {out}", flush=True)
    summary = run_cv(
        cfg,
        out,
        folds=folds,
        by=args.by,
        echo=echo,
        progress=False if args.quiet else None,
        fold_budget_seconds=seconds,
    )
    if summary["state"] != "finished":
        print(f"stopped during {summary['stopped_at']}; run the same command with --out {out} to continue")
        return 130
    print(summary["markdown"])
    print(f"wrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'results.svg'}")
    return 0
