"""The data of a training run: the dataset and its splits as a config describes them, and the wave cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import Config
from ..errors import ConfigError, DatasetError


@dataclass
class DataBundle:
    """A dataset, its splits and class names, as a config describes them."""

    index: Any  # asca_core.data.DatasetIndex
    splits: dict[str, list[int]]
    labels: list[str]
    multi_label: bool
    skipped: list[tuple[str, str]]


def prepare_data(cfg: Config, check_files: bool = True) -> DataBundle:
    """Load ``cfg.data.path``, drop unreadable clips, apply the per-class cap and split.

    A model input, batch and model that could not fit in this machine's memory are refused first.
    """
    from ..data import filter_readable, limit_clips_per_class, load_dataset, make_splits, resolve_data_path
    from ..models.profile import activation_bytes

    need = activation_bytes(
        cfg.model.name,
        cfg.features.input_size,
        cfg.train.batch_size,
        cfg.model.layout,
        cfg.model.attn_window,
        cfg.model.attn_division,
    )
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    if have and need > have:
        f, t = cfg.features.input_size
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} with model.name={cfg.model.name} on a {f}x{t} "
            f"input (features.n_mels={cfg.features.n_mels}, features.clip_seconds="
            f"{cfg.features.clip_seconds:g}) needs at least {need / 2**30:,.0f} GiB of activation "
            f"memory, this machine has {have / 2**30:,.0f} GiB: lower the batch size or the input size"
        )
    index = load_dataset(
        resolve_data_path(cfg.data.path), cfg.data.format, labels=cfg.data.labels, classes=cfg.data.classes
    )
    skipped: list[tuple[str, str]] = list(index.problems)
    if check_files:
        index, unreadable = filter_readable(index, deep=False)
        skipped += unreadable
    if cfg.data.max_clips_per_class:
        index = limit_clips_per_class(index, cfg.data.max_clips_per_class, seed=cfg.data.seed)
    if len(index.clips) == 0:
        raise DatasetError(f"{cfg.data.path}: no readable clips")
    splits = make_splits(
        index,
        val_fraction=cfg.data.val_fraction,
        test_fraction=cfg.data.test_fraction,
        test_fold=cfg.data.test_fold,
        group_column=cfg.data.group_column,
        seed=cfg.data.seed,
        test_group=cfg.data.test_group,
    )
    if not splits["train"]:
        raise DatasetError(f"{cfg.data.path}: the train split is empty")
    return DataBundle(index, splits, list(index.classes), bool(index.multi_label), skipped)


class _MemoryCache:
    """Cached waves kept in memory (16-bit, up to a byte budget) in front of the on-disk cache.

    Small datasets are then read from disk once per run instead of once per epoch; waves past
    the budget stay mapped from disk, read a crop at a time.
    """

    def __init__(self, disk: Any, budget_bytes: int = 1 << 30) -> None:
        self.disk = disk
        self.budget = budget_bytes
        self.used = 0
        self.waves: dict[tuple[str, int], Any] = {}

    def get(self, path: Any, sample_rate: int) -> Any:
        """The stored wave of ``path`` (:class:`~asca_core.data.cache.StoredWave`)."""
        key = (str(path), int(sample_rate))
        stored = self.waves.get(key)
        if stored is None:
            stored = self.disk.get(path, sample_rate)
            if self.used + stored.nbytes <= self.budget:
                stored = self.waves[key] = stored.in_memory()
                self.used += stored.nbytes
        return stored

    def get_wave(self, path: Any, sample_rate: int) -> np.ndarray:
        """Shapes: returns (T,) float32, the whole file."""
        return self.get(path, sample_rate).read()


def make_cache(cfg: Config) -> _MemoryCache:
    from ..data import FeatureCache
    from ..utils import cache_dir

    root = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else cache_dir() / "waves"
    # every DataLoader worker holds its own copy: share one budget between them
    return _MemoryCache(FeatureCache(root), budget_bytes=(1 << 30) // max(1, cfg.data.num_workers))


def _collate(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    waves, targets = zip(*batch)
    return torch.stack(waves), torch.stack(targets)
