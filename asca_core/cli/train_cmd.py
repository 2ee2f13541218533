"""``asca train``, ``asca eval`` and ``asca ablate``."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError, DatasetError


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a model on a dataset (automatic recipe) or from a YAML config",
        description="Train a model into a run directory: config.yaml, recipe.json, status.json, "
        "metrics.jsonl, labels.json, checkpoints/, log.txt. Given only DATA, the whole "
        "recipe (front end, loss, augmentation, protocol, epochs) is resolved from the "
        "dataset and a short speed probe so that training ends within --budget; it is "
        "printed with the reason for every choice. --config FILE trains a YAML preset "
        "instead (relative data paths are looked up in the current directory, then above "
        "the config file's folder, then in it).",
    )
    train.add_argument(
        "data",
        nargs="?",
        metavar="DATA",
        help="dataset folder or manifest, or 'demo' (with --config: replaces data.path)",
    )
    train.add_argument(
        "--budget",
        metavar="DURATION",
        help="wall-clock budget, e.g. 3m, 15m, 1h (default with DATA alone: 15m); "
        "epochs are planned to fit and training stops in time",
    )
    train.add_argument("--config", "-c", metavar="FILE", help="YAML config (configs/demo.yaml ...)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one value, e.g. --set train.lr=3e-4 (repeatable)",
    )
    train.add_argument(
        "--run-dir",
        metavar="DIR",
        help="run directory (default: RUNS/<config>-<time>, RUNS being $ASCA_RUNS_DIR or ./runs)",
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    train.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train with N processes (DDP through torchrun; gloo on CPU, nccl on CUDA)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    train.set_defaults(func=_train)

    ev = subparsers.add_parser(
        "eval",
        help="evaluate a trained run (accuracy, mAP, ROC-AUC, cmAP, per class)",
        description="Evaluate a run's checkpoint on its own dataset (test split if it has one, "
        "else val) or on another dataset with the same classes.",
    )
    ev.add_argument("run", metavar="RUN", help="run directory (or a run name under the runs folder)")
    ev.add_argument("--data", metavar="PATH", help="another dataset (default: the run's own)")
    ev.add_argument("--split", metavar="NAME", help="train, val, test or all")
    ev.add_argument("--checkpoint", choices=("best", "last"), default="best")
    ev.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default: cpu)")
    ev.add_argument("--json", action="store_true", help="print the full result as JSON")
    ev.set_defaults(func=_eval)

    ab = subparsers.add_parser(
        "ablate",
        help="train layout variants (CCCT vs CCTT vs CCCC ...) or window divisions and tabulate them",
        description="Train every layout (crossed with every window division given by --windows) with every "
        "seed on the same splits and augmentation stream; write mean +- std tables "
        "(results.md, results.csv) and a chart (results.svg, results.html).",
    )
    ab.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML config of every variant")
    ab.add_argument(
        "--layouts",
        default=None,
        metavar="L1,L2,...",
        help="comma-separated layouts to train (default: CCCT,CCTT,CCCC; with --windows: the config's layout)",
    )
    ab.add_argument(
        "--windows",
        default=None,
        metavar="D1,D2,...",
        help="window divisions to train, the paper's section 4.4.3 study (e.g. 7,14,16,32): input "
        "cells per token side of the first transformer stage (model.attn_division); "
        "'none' = the stage's own stride",
    )
    ab.add_argument("--seeds", type=int, default=2, metavar="N", help="seeds per layout (default: 2)")
    ab.add_argument("--out", metavar="DIR", help="output folder (default: RUNS/ablate-<config>-<time>)")
    ab.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one value for every variant (repeatable)",
    )
    ab.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    ab.set_defaults(func=_ablate)


# ----------------------------------------------------------------------------------- train
def default_run_dir(config: str | None, prefix: str = "") -> Path:
    """``runs_dir()/<prefix><config stem>-<YYYYmmdd-HHMMSS>``, made unique with a suffix."""
    from ..train.runstore import new_run_dir

    return new_run_dir(Path(config).stem if config else "run", prefix=prefix, create=False)


def resolve_data_path(path: str, config_file: str | Path | None = None) -> str:
    """Make a relative ``data.path`` absolute.

    Tried in order: the current directory, the folder above the config file (the project root for
    ``configs/*.yaml``), the config file's own folder. ``demo`` stays as it is.
    """
    if path == "demo":
        return path
    if Path(path).expanduser().is_absolute():
        if not Path(path).expanduser().exists():
            raise DatasetError(f"data.path {path!r} not found")
        return str(Path(path).expanduser())
    candidates = [Path.cwd() / path]
    if config_file is not None:
        folder = Path(config_file).resolve().parent
        candidates += [folder.parent / path, folder / path]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate.resolve())
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetError(f"data.path {path!r} not found (tried {tried})")


def dataset_name(data: str) -> str:
    """A short name for run folders: the dataset's folder for a manifest, else its own name."""
    path = Path(data)
    if data == "demo":
        return "demo"
    return path.parent.name if path.suffix.lower() == ".csv" else path.name


def resolve_train_config(
    data: str | None,
    config: str | None,
    overrides: list[str],
    budget: str | None,
    run_dir: str | None = None,
    resume: bool = False,
    echo: Any = None,
) -> tuple[Any, Any]:
    """The config ``asca train`` runs and, for an automatic recipe, the :class:`Recipe` behind it."""
    from ..train.recipe import DEFAULT_BUDGET_SECONDS, parse_duration, resolve_recipe

    seconds = parse_duration(budget) if budget else None
    if resume or config:
        items = list(overrides)
        if data and not resume:
            items.append(f"data.path={data}")
        if seconds:
            items.append(f"train.budget_seconds={seconds}")
        return load_train_config(config, items, run_dir, resume), None
    if not data:
        raise ConfigError("asca train needs a dataset (asca train DATA) or --config FILE (e.g. configs/demo.yaml)")
    started = time.monotonic()
    budget_seconds = seconds or DEFAULT_BUDGET_SECONDS
    recipe = resolve_recipe(resolve_data_path(data), budget_seconds, overrides, echo=echo)
    # the budget is the user's wall clock: the profile and the speed probe already spent some of it
    left = max(30.0, budget_seconds - (time.monotonic() - started))
    if recipe.config.train.budget_seconds == budget_seconds:
        recipe.config = recipe.config.replace("train.budget_seconds", round(left, 1))
    return recipe.config, recipe


def load_train_config(config: str | None, overrides: list[str], run_dir: str | None, resume: bool):
    """The config a train command runs: the preset (+ overrides), or the run's own when resuming."""
    from ..config import load_config

    if resume:
        if not run_dir:
            raise ConfigError("--resume needs --run-dir DIR (the run to continue)")
        from ..train.runstore import RunLock

        stored = Path(run_dir) / "config.yaml"
        if not stored.exists():
            raise CheckpointError(f"cannot resume: {run_dir} holds no run (no config.yaml)")
        holder = RunLock.holder(run_dir)
        if holder is not None:  # refused before anything is read or written
            who = f"process {holder['pid']}" if isinstance(holder.get("pid"), int) else "another process"
            raise CheckpointError(f"run {run_dir} is being trained by {who}: wait for it to end or stop it first")
        return load_config(stored, overrides)
    if not config:
        raise ConfigError("asca train needs --config FILE (e.g. configs/demo.yaml)")
    cfg = load_config(config, overrides)
    return cfg.replace("data.path", resolve_data_path(cfg.data.path, config))


def _train(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    is_main = int(os.environ.get("RANK", "0")) == 0
    echo = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    if args.nproc > 1 and not under_torchrun and not args.config and not args.resume:
        raise ConfigError("--nproc needs --config FILE: the automatic recipe's speed probe measures one process")
    if args.data and not args.config and not args.resume:
        _wait_for_free_machine(echo)
    # configuration mistakes are reported before a model is built
    cfg, recipe = resolve_train_config(
        args.data, args.config, args.overrides, args.budget, args.run_dir, args.resume, echo=echo if is_main else None
    )
    from ..models import list_models

    if cfg.model.name not in list_models():  # before a run folder is made for it
        raise ConfigError(f"unknown model.name {cfg.model.name!r}; choose from: {', '.join(list_models())}")
    if recipe is not None and is_main:
        print(recipe.describe(), flush=True)
    run_dir = (
        Path(args.run_dir)
        if args.run_dir
        else default_run_dir(args.config or (dataset_name(args.data) if args.data else None))
    )
    if args.nproc > 1 and not under_torchrun:
        return _launch(args, run_dir)
    if is_main:
        print(f"run directory: {run_dir}", flush=True)
    from ..train.engine import fit

    result = fit(
        cfg,
        run_dir,
        resume=args.resume,
        progress=False if args.quiet else None,
        echo=echo,
        recipe=recipe.to_dict() if recipe is not None else None,
    )
    if is_main:
        print(format_result(result))
    return 0 if result["state"] == "finished" else 130


def _wait_for_free_machine(echo: Any) -> None:
    """Under the app's shared training slot, wait until no training holds it before the speed probe.

    The probe times training steps: measured beside another training it would plan far too few
    epochs. The slot itself is taken by the trainer once the recipe is resolved.
    """
    from ..train.runstore import SLOT_ENV, TrainingSlot

    if not os.environ.get(SLOT_ENV):
        return
    slot = TrainingSlot(os.environ[SLOT_ENV])
    if slot.acquire(wait=False):
        slot.release()
        return
    if echo:
        echo("queued: another training holds this machine; the recipe is resolved when it ends")
    slot.acquire(wait=True)
    slot.release()


def _launch(args: argparse.Namespace, run_dir: Path) -> int:
    """Re-run this command in ``--nproc`` processes under torchrun, forwarding stop signals."""
    from ..train.ddp import torchrun_command

    cli_args = ["train", "--run-dir", str(run_dir)]
    if args.config:
        cli_args += ["--config", str(Path(args.config).resolve())]
    if args.data:
        cli_args.append(str(Path(args.data).resolve()) if args.data != "demo" else "demo")
    if args.budget:
        cli_args += ["--budget", args.budget]
    for item in args.overrides:
        cli_args += ["--set", item]
    if args.resume:
        cli_args.append("--resume")
    if args.quiet:
        cli_args.append("--quiet")
    command = torchrun_command(args.nproc, cli_args)
    print(f"run directory: {run_dir}", flush=True)
    print(f"launching {args.nproc} processes: {' '.join(command)}", file=sys.stderr, flush=True)
    # own session: a terminal's Ctrl-C or a group kill reaches the launcher once, through us
    child = subprocess.Popen(command, start_new_session=True)
    previous = {sig: signal.signal(sig, lambda s, f: child.send_signal(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_result(result: dict[str, Any]) -> str:
    """Human summary of :func:`asca_core.train.fit`'s result."""
    lines = [
        (
            f"{result['state']}: {result['epoch']} epochs, {result['steps']} steps, best epoch "
            f"{result['best_epoch']} (val mAP {_fmt(result.get('best_val_map'))})"
        )
    ]
    last = result.get("last")
    if last:
        lines.append(
            f"last epoch: train_loss {_fmt(last.get('train_loss'))}  val_loss {_fmt(last.get('val_loss'))}  "
            f"val_acc {_fmt(last.get('val_acc'))}  val_map {_fmt(last.get('val_map'))}"
        )
    test = result.get("test")
    if test:
        lines.append(
            f"test (best checkpoint, {test.get('n')} clips): acc {_fmt(test.get('acc'))}  "
            f"mAP {_fmt(test.get('map'))}  AUC {_fmt(test.get('auc'))}  cmAP {_fmt(test.get('cmap'))}"
        )
    if result.get("seconds") is not None:
        lines.append(
            f"time: {result['seconds'] / 60:.1f} min" + (f"; {result['trend']}" if result.get("trend") else "")
        )
    lines.append(f"run directory: {result['run_dir']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- eval
def _find_run(name: str) -> Path:
    from ..utils import runs_dir

    path = Path(name)
    if not path.exists() and (runs_dir() / name).exists():
        path = runs_dir() / name
    if not path.exists():
        raise CheckpointError(f"run not found: {name}")
    if not path.is_dir() and path.suffix != ".safetensors":
        raise CheckpointError(f"{path} is not a run directory or a .safetensors checkpoint")
    return path


def _eval(args: argparse.Namespace) -> int:
    run = _find_run(args.run)
    from ..train.evaluation import evaluate

    result = evaluate(run, data=args.data, split=args.split, checkpoint=args.checkpoint, device=args.device)
    if args.json:
        from ..train.runstore import json_safe

        print(json.dumps(json_safe(result), indent=2, allow_nan=False))  # strict JSON: NaN is null
    else:
        print(format_eval(result))
    return 0


def format_eval(result: dict[str, Any]) -> str:
    labels = result["labels"]
    lines = [
        f"run {result['run']}  checkpoint {result['checkpoint']} (epoch {result.get('epoch')})",
        f"data {result['data']}  split {result['split']}  clips {result['n']}",
        "",
        (
            f"accuracy {_fmt(result['acc'])}   mAP {_fmt(result['map'])}   ROC-AUC {_fmt(result['auc'])}   "
            f"padded cmAP {_fmt(result['cmap'])}   loss {_fmt(result['loss'])}"
        ),
        "",
    ]
    width = max(8, max(len(c) for c in labels))
    lines.append(f"{'class':<{width}}  {'AP':>6}  {'prec':>6}  {'recall':>6}  {'support':>7}")
    pc = result["per_class"]
    for i, name in enumerate(labels):
        lines.append(
            f"{name:<{width}}  {_fmt(pc['ap'][i], 3):>6}  {_fmt(pc['precision'][i], 3):>6}  "
            f"{_fmt(pc['recall'][i], 3):>6}  {pc['support'][i]:>7}"
        )
    confusion = result.get("confusion")
    if confusion and len(labels) <= 20:
        lines += ["", "confusion matrix (rows: true, columns: predicted)"]
        cell = max(4, len(str(max(max(r) for r in confusion))) + 1)
        lines.append(" " * width + "".join(f"{i:>{cell}}" for i in range(len(labels))))
        for i, row in enumerate(confusion):
            lines.append(f"{labels[i]:<{width - 3}}{i:>3}" + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- ablate
def _ablate(args: argparse.Namespace) -> int:
    from ..config import LAYOUTS, MAX_ATTN_DIVISION, MIN_ATTN_DIVISION
    from ..train.ablate import run_ablation

    windows: list[int | None] | None = None
    if args.windows is not None:
        windows = []
        for part in (x.strip().lower() for x in args.windows.split(",") if x.strip()):
            if part in ("none", "null"):
                windows.append(None)
            elif part.isdigit() and MIN_ATTN_DIVISION <= int(part) <= MAX_ATTN_DIVISION:
                windows.append(int(part))
            else:
                windows = []
                break
        if not windows:
            raise ConfigError(
                f"--windows must list window divisions in [{MIN_ATTN_DIVISION}, {MAX_ATTN_DIVISION}] "
                f"input cells (or none), e.g. 7,14,16,32; got {args.windows!r}"
            )
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    cfg = load_train_config(args.config, args.overrides, None, False)
    text = args.layouts if args.layouts is not None else (cfg.model.layout if windows else "CCCT,CCTT,CCCC")
    layouts = [x.strip().upper() for x in text.split(",") if x.strip()]
    bad = [x for x in layouts if x not in LAYOUTS]
    if bad or not layouts:
        raise ConfigError(f"--layouts must list layouts from {', '.join(LAYOUTS)}, got {text!r}")
    if windows and not any("T" in x for x in layouts):
        raise ConfigError(f"--windows divide transformer stages: --layouts {','.join(layouts)} has none")
    out = Path(args.out) if args.out else default_run_dir(args.config, prefix="ablate-")
    print(f"ablation folder: {out}", flush=True)
    echo = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    summary = run_ablation(
        cfg, layouts, args.seeds, out, windows=windows, echo=echo, progress=False if args.quiet else None
    )
    if summary["state"] != "finished":
        print(f"stopped during {summary['stopped_at']}; run the same command again to continue")
        return 130
    print(summary["markdown"])
    print(f"wrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'results.svg'}, {out / 'results.html'}")
    return 0
