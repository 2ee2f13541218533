"""Resume state of a training run: what ``last.state.safetensors`` holds, writing it and reading it back.

The state file is the resume commit point. Its tensors are the optimizer state, the raw weights
and the EMA weights (``optimizer.<param>.<key>``, ``model.<name>``, ``ema.<name>``); its header
holds the JSON state (counters, best scores, optimizer groups, the GradScaler), and
``last.state.json`` is a readable copy of that JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import AscaError, CheckpointError
from .checkpoint import checkpoint_metadata, load_tensors, load_weights, read_metadata, save_model, save_tensors
from .runstore import RunStore, atomic_write_json, json_safe

if TYPE_CHECKING:
    from .engine import Trainer

STATE_FORMAT = "asca-train-state/1"


def state_path(run: RunStore) -> Path:
    """The run's resume state file."""
    return run.checkpoints_dir / "last.state.safetensors"


def state_tensors(trainer: Trainer) -> dict[str, Tensor]:
    """Optimizer state, raw weights and EMA weights under their prefixes."""
    tensors: dict[str, Tensor] = {}
    opt = trainer.optimizer.state_dict()
    for idx, entry in opt["state"].items():
        for key, value in entry.items():
            tensors[f"optimizer.{idx}.{key}"] = torch.as_tensor(value)
    # the raw weights live here too, so this one file restores the whole run
    tensors.update({f"model.{k}": v for k, v in trainer.model.state_dict().items()})
    if trainer.ema is not None:
        tensors.update({f"ema.{k}": v for k, v in trainer.ema.module.state_dict().items()})
    return tensors


def state_json(trainer: Trainer) -> dict[str, Any]:
    """Counters, best scores, optimizer groups and the GradScaler state, as JSON."""
    opt = trainer.optimizer.state_dict()
    return json_safe(
        {
            "format": STATE_FORMAT,
            "epoch": trainer.epoch,
            "batch": trainer.batch,
            "step": trainer.step,
            "steps_per_epoch": trainer.steps_per_epoch,
            "world_size": trainer.env.world_size,
            "loss_sum": trainer.loss_sum,
            "loss_count": trainer.loss_count,
            "best_val_map": None if trainer.best_val_map == -math.inf else trainer.best_val_map,
            "best_val_loss": None if trainer.best_val_loss == math.inf else trainer.best_val_loss,
            "best_epoch": trainer.best_epoch,
            "bad_epochs": trainer.bad_epochs,
            "clean_steps": trainer.clean_steps,
            "optimizer_param_groups": opt["param_groups"],
            "optimizer_state_keys": {str(i): sorted(e) for i, e in opt["state"].items()},
            "scaler": trainer.scaler.state_dict() if trainer.scaler.is_enabled() else None,
        }
    )


def save_last(trainer: Trainer) -> None:
    """last.safetensors (the evaluated weights) and the resume state; rank 0 only."""
    if not trainer.env.is_main:
        return
    meta = checkpoint_metadata(
        trainer.cfg,
        trainer.data.labels,
        trainer.epoch,
        step=trainer.step,
        batch=trainer.batch,
        ema=str(trainer.ema is not None).lower(),
    )
    save_model(trainer.run.checkpoint_path("last"), trainer.eval_module(), meta)
    state = state_json(trainer)
    save_tensors(
        state_path(trainer.run),
        state_tensors(trainer),
        {"format": STATE_FORMAT, "state": json.dumps(state)},
    )
    atomic_write_json(trainer.run.checkpoints_dir / "last.state.json", state)


def first_save_interrupted(run: RunStore) -> bool:
    """Killed while writing the end of epoch 1: its metrics row (and maybe its best checkpoint)
    are there, the resume state and the status that follow them are not. Starting over redoes
    exactly that epoch; a run whose status records a finished epoch lost its state otherwise."""
    return len(run.metrics()) <= 1 and not (run.status().get("epoch") or 0)


def _state_missing(run: RunStore, trained: int) -> str:
    """Why a run that has trained cannot go on: its resume state is gone."""
    return (
        f"cannot resume {run.path}: its resume state {state_path(run)} is missing, though the run has "
        f"trained ({trained} epoch(s) in metrics.jsonl"
        f"{', a best checkpoint' if run.has_checkpoint('best') else ''}); its files are left as they are"
    )


def resume_problem(run: RunStore) -> str | None:
    """Why the run cannot be continued, found before anything in it is written (None: it can)."""
    try:
        run.status()
        trained = len(run.metrics())
        if run.labels_path.exists():
            run.labels()
        path = state_path(run)
        if path.exists():
            meta = read_metadata(path)
            json.loads(meta["state"])
        elif (trained or run.has_checkpoint("best")) and not first_save_interrupted(run):
            return _state_missing(run, trained)
    except (KeyError, TypeError, json.JSONDecodeError):
        return f"cannot resume {run.path}: {state_path(run)} holds no readable training state"
    except AscaError as exc:
        return f"cannot resume {run.path}: {exc}"
    return None


def load_last(trainer: Trainer) -> bool:
    """Restore weights, optimizer and counters from the last checkpoint (False if none)."""
    path = state_path(trainer.run)
    if not path.exists():
        trained = len(trainer.run.metrics())
        if trained or trainer.run.has_checkpoint("best"):
            if not first_save_interrupted(trainer.run):
                raise CheckpointError(_state_missing(trainer.run, trained))
            trainer.log("starting over: the run was stopped while saving its first epoch")
        return False  # killed before or during its first checkpoint: start from scratch
    tensors, meta = load_tensors(path)
    try:
        state = json.loads(meta["state"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} has no readable training state") from exc
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: unknown training state format {state.get('format')!r}")
    if state.get("world_size") != trainer.env.world_size or state.get("steps_per_epoch") != trainer.steps_per_epoch:
        raise CheckpointError(
            f"cannot resume {trainer.run.path}: it was trained with {state.get('world_size')} process(es) "
            f"and {state.get('steps_per_epoch')} steps per epoch, now {trainer.env.world_size} and "
            f"{trainer.steps_per_epoch}; resume with the same --nproc and batch size"
        )
    load_weights(trainer.model, _prefixed(tensors, "model."), str(path))
    if trainer.ema is not None:
        load_weights(trainer.ema.module, _prefixed(tensors, "ema."), str(path))
    opt_state: dict[int, dict[str, Any]] = {}
    for idx, keys in state["optimizer_state_keys"].items():
        opt_state[int(idx)] = {k: tensors[f"optimizer.{idx}.{k}"].to(trainer.device) for k in keys}
        if "step" in opt_state[int(idx)]:  # AdamW keeps its step count on the CPU
            opt_state[int(idx)]["step"] = opt_state[int(idx)]["step"].cpu()
    trainer.optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer_param_groups"]})
    if state.get("scaler") and trainer.scaler.is_enabled():
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.epoch, trainer.batch, trainer.step = state["epoch"], state["batch"], state["step"]
    trainer.loss_sum, trainer.loss_count = state["loss_sum"], state["loss_count"]
    trainer.best_val_map = state["best_val_map"] if state["best_val_map"] is not None else -math.inf
    trainer.best_val_loss = state["best_val_loss"] if state["best_val_loss"] is not None else math.inf
    trainer.best_epoch, trainer.bad_epochs = state["best_epoch"], state["bad_epochs"]
    trainer.clean_steps = int(state.get("clean_steps", trainer.clean_steps))  # moved by augment.clean_until_fit
    return True


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
