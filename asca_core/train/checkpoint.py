"""Checkpoints as safetensors: model weights plus the resolved config in the file header.

A checkpoint is self-describing: its safetensors metadata holds ``format``, ``config`` (YAML),
``labels`` (JSON list), ``epoch`` and ``model``, so a single ``best.safetensors`` copied out of
its run still rebuilds the model. Loading never unpickles anything; every file is written
atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from ..config import Config
from ..errors import AscaError, CheckpointError
from .runstore import RunStore, atomic_write_bytes, check_labels

FORMAT = "asca-checkpoint/1"


def _cpu_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # clone: tied weights would otherwise share storage, which safetensors refuses
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def save_tensors(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` to a safetensors file atomically (temporary file, fsync, rename)."""
    from safetensors.torch import save

    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    atomic_write_bytes(path, save(_cpu_tensors(tensors), metadata=meta))


def save_model(path: str | Path, model: nn.Module | Mapping[str, Tensor], metadata: Mapping[str, str]) -> None:
    """Save a model's ``state_dict`` (or a state dict) with string ``metadata`` in the header."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    meta = {"format": FORMAT, **{str(k): str(v) for k, v in metadata.items()}}
    save_tensors(path, state, meta)


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file: ``(tensors, metadata)``; CheckpointError if missing or corrupt."""
    from safetensors import SafetensorError, safe_open

    path = _regular_file(path)
    try:
        tensors: dict[str, Tensor] = {}
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            metadata = dict(handle.metadata() or {})
            for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                tensors[key] = handle.get_tensor(key)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"corrupt or unreadable checkpoint {path}: {exc}") from exc
    return tensors, metadata


def read_metadata(path: str | Path) -> dict[str, str]:
    """Only the header metadata of a safetensors file (no tensors are read)."""
    from safetensors import SafetensorError, safe_open

    path = _regular_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"corrupt or unreadable checkpoint {path}: {exc}") from exc


def _regular_file(path: str | Path) -> Path:
    """``path`` when it is a regular file; opening a FIFO would wait for a writer forever."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "a special file (FIFO, socket or device)"
        raise CheckpointError(f"{path} is {kind}, not a checkpoint file")
    return path


def checkpoint_metadata(cfg: Config, labels: list[str], epoch: int, **extra: Any) -> dict[str, str]:
    return {
        "config": cfg.to_yaml(),
        "labels": json.dumps(list(labels)),
        "epoch": str(int(epoch)),
        "model": cfg.model.name,
        **{k: str(v) for k, v in extra.items()},
    }


def model_from_config(cfg: Config, num_classes: int) -> nn.Module:
    """Build the model a config describes (architecture only, weights random)."""
    from ..models import build_model_for

    return build_model_for(cfg.model, num_classes, tuple(cfg.features.input_size))


def config_from_metadata(metadata: Mapping[str, str], source: str) -> tuple[Config, list[str]]:
    """Config and labels stored in a checkpoint header."""
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{source} is not an ASCA checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        raw = yaml.safe_load(metadata["config"])
        if not isinstance(raw, dict):
            raise CheckpointError("its config is not a mapping of sections")
        cfg = Config.from_dict(raw)
        labels = json.loads(metadata["labels"])
    except (KeyError, yaml.YAMLError, json.JSONDecodeError, AscaError) as exc:
        detail = f"no {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())
        raise CheckpointError(f"{source} has an unreadable config or label list: {detail}") from None
    check_labels(labels, f"{source} (header)")
    try:
        int(metadata.get("epoch", 0))
    except ValueError:
        raise CheckpointError(f"{source}: the epoch in its header is not a number") from None
    return cfg, labels


def load_weights(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line CheckpointError on any mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise CheckpointError(
            f"{source} does not fit the model ({what}, {len(missing)} missing / {len(unexpected)} unexpected tensors)"
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise CheckpointError(
                f"{source} does not fit the model: {key} has shape "
                f"{tuple(value.shape)}, the model expects {tuple(own[key].shape)}"
            )
    model.load_state_dict(state, strict=True)


def load_model_from_run(
    run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, Config, list[str]]:
    """Rebuild a trained model from a run directory (or a ``.safetensors`` file).

    Returns ``(model in eval mode on device, config, labels)``. The config and labels come from
    the checkpoint header, so they always match the weights.
    """
    path = Path(run_dir)
    if path.suffix == ".safetensors":
        ckpt_path = path
    else:
        store = RunStore(path)
        if not path.is_dir():
            raise CheckpointError(f"run directory not found: {path}")
        ckpt_path = store.checkpoint_path(checkpoint)
        if not ckpt_path.exists():
            other = "last" if checkpoint == "best" else "best"
            hint = f" (the run has a {other} checkpoint)" if store.has_checkpoint(other) else ""
            raise CheckpointError(f"run {path} has no {checkpoint} checkpoint yet{hint}")
    state, metadata = load_tensors(ckpt_path, device="cpu")
    cfg, labels = config_from_metadata(metadata, str(ckpt_path))
    if path.suffix != ".safetensors" and store.labels_path.exists() and store.labels() != labels:
        raise CheckpointError(
            f"{store.labels_path} does not match the classes in {ckpt_path} "
            f"({len(store.labels())} vs {len(labels)} names, or a different order)"
        )
    try:
        model = model_from_config(cfg, len(labels))
    except AscaError as exc:
        raise CheckpointError(f"{ckpt_path} describes a model this version cannot build: {exc}") from exc
    try:
        load_weights(model, state, str(ckpt_path))
    except CheckpointError as exc:  # most often a label list of another length than the head
        raise CheckpointError(f"{exc}; its header lists {len(labels)} classes") from None
    return model.to(device).eval(), cfg, labels


__all__ = [
    "FORMAT",
    "checkpoint_metadata",
    "config_from_metadata",
    "load_model_from_run",
    "load_tensors",
    "load_weights",
    "model_from_config",
    "read_metadata",
    "save_model",
    "save_tensors",
]
