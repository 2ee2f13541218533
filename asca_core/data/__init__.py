"""Datasets: formats on disk, splits, the decoded-audio cache, torch datasets and the demo set.

index = load_dataset(resolve_data_path(cfg.data.path), cfg.data.format)
index, skipped = filter_readable(index)
splits = make_splits(index, val_fraction=0.15, test_fraction=0.15, seed=0)
train = ClipDataset(index, splits["train"], cfg.features, FeatureCache(root), train=True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cache import FeatureCache
from .check import CheckReport, check_dataset, filter_readable, probe_file
from .demo import DEMO_CLASSES, demo_dataset_path, make_demo_dataset
from .formats import FORMATS, Clip, DatasetIndex, detect_format, load_dataset
from .splits import limit_clips_per_class, make_splits, official_split_counts

__all__ = [
    "DEMO_CLASSES",
    "FORMATS",
    "CheckReport",
    "Clip",
    "ClipDataset",
    "DatasetIndex",
    "FeatureCache",
    "check_dataset",
    "class_weights_for_sampling",
    "demo_dataset_path",
    "detect_format",
    "filter_readable",
    "fit_length",
    "limit_clips_per_class",
    "load_dataset",
    "make_demo_dataset",
    "make_splits",
    "multi_hot",
    "official_split_counts",
    "probe_file",
    "resolve_data_path",
]


def resolve_data_path(path: str | Path) -> Path:
    """Map ``"demo"`` to the built-in demo set's manifest (generated on first use).

    Write ``./demo`` for a local folder of that name.
    """
    if str(path) == "demo":
        return demo_dataset_path()
    return Path(path).expanduser()


# The torch dataset loads on first use: ``asca data check`` and the demo generator never need torch.
_LAZY = {"ClipDataset", "class_weights_for_sampling", "fit_length", "multi_hot"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import dataset

        value = getattr(dataset, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
