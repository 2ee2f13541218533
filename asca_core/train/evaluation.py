"""Offline evaluation: scores of a model over a loader, and a trained run evaluated on a split or another dataset."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import ConfigError, DatasetError
from ..scores import probabilities
from ..utils import resolve_device, setup_torch
from .amp import autocast
from .checkpoint import load_model_from_run, read_metadata
from .data import _collate, make_cache, prepare_data
from .losses import loss_per_example
from .metrics import compute_metrics
from .runstore import RunStore, json_safe


@torch.no_grad()
def predict(
    model: nn.Module, features: nn.Module, loader: DataLoader, device: torch.device, amp: str = "off", loss: str = "bce"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, targets and per-example losses of ``model`` over ``loader``.

    Shapes: returns (N, K), (N, K), (N,) NumPy arrays.
    """
    model.eval()
    probs, targets, losses = [], [], []
    for wave, target in loader:
        spec = features(wave.to(device))
        with autocast(device, amp):
            logits = model(spec)
        target = target.to(device)
        losses.append(loss_per_example(logits, target, loss).cpu())
        probs.append(probabilities(logits, loss).cpu())
        targets.append(target.cpu())
    if not probs:
        k = getattr(model, "num_classes", 0)
        return np.zeros((0, k)), np.zeros((0, k)), np.zeros(0)
    return (
        torch.cat(probs).numpy().astype(np.float64),
        torch.cat(targets).numpy(),
        torch.cat(losses).numpy().astype(np.float64),
    )


def evaluate(
    run_dir: str | Path,
    data: str | Path | None = None,
    split: str | None = None,
    checkpoint: str = "best",
    device: str = "cpu",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Evaluate a trained run.

    Without ``data``: the run's own dataset and splits (``split`` default: test if the run has a
    test split, else val). With ``data``: another dataset whose classes are a subset of the run's;
    ``split`` picks its official split, default all clips (``"all"``).
    Returns metrics (``acc, map, auc, cmap, loss, n``), ``per_class``, ``confusion``, ``labels``,
    ``split``, ``checkpoint``, ``epoch``, ``data``.
    """
    from ..data import ClipDataset

    setup_torch()
    dev = resolve_device(device)
    model, cfg, labels = load_model_from_run(run_dir, checkpoint, dev)
    store = RunStore(run_dir) if Path(run_dir).is_dir() else None
    epoch = None
    if data is None:
        bundle = prepare_data(cfg)
        if split is None:
            split = "test" if bundle.splits["test"] else "val"
        if split == "all":
            items = list(range(len(bundle.index.clips)))
        elif split in bundle.splits:
            items = bundle.splits[split]
        else:
            raise ConfigError(f"unknown split {split!r}: choose train, val, test or all")
        source = cfg.data.path
    else:
        data_cfg = replace(cfg, data=replace(cfg.data, path=str(data), format="auto", max_clips_per_class=None))
        bundle = prepare_data(data_cfg)
        split = split or "all"
        if split == "all":
            items = list(range(len(bundle.index.clips)))
        else:
            items = [i for i, c in enumerate(bundle.index.clips) if c.split == split]
            if not items:
                raise DatasetError(f"{data} has no clips in split {split!r}")
        source = str(data)
    if not items:
        raise DatasetError(f"split {split!r} of {source} is empty")
    unknown = sorted(set(bundle.labels) - set(labels))
    if unknown:
        raise DatasetError(f"{source} has classes the run was not trained on: {', '.join(unknown[:5])}")
    index = replace(bundle.index, classes=list(labels))  # targets in the model's output order
    from ..features import FeatureExtractor

    features = FeatureExtractor(cfg.features).to(dev).eval()
    dataset = ClipDataset(index, items, cfg.features, make_cache(cfg), train=False)
    loader = DataLoader(dataset, batch_size=batch_size or cfg.train.batch_size, shuffle=False, collate_fn=_collate)
    probs, targets, losses = predict(model, features, loader, dev, "off", cfg.train.loss)
    metrics = compute_metrics(probs, targets, bundle.multi_label)
    if store is not None and store.has_checkpoint(checkpoint):
        epoch = int(read_metadata(store.checkpoint_path(checkpoint)).get("epoch", 0)) or None
    return json_safe(
        {
            "run": str(run_dir),
            "checkpoint": checkpoint,
            "epoch": epoch,
            "data": source,
            "split": split,
            "loss": float(losses.mean()),
            "labels": labels,
            **metrics,
        }
    )
