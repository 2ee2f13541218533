"""Train / validation / test splits: official, by fold, or stratified by seed, optionally by group.

Precedence (first that applies):

1. ``test_fold`` given: that fold is the test set (the ESC-50 protocol); validation is carved
   from the other folds. ``test_group`` given: the clips of that value of the group column are
   the test set (leave-one-group-out, e.g. one speaker); validation is carved from the rest.
2. The dataset has an official ``split`` column: it is used as is; a part it lacks (usually
   ``val``) is carved from its ``train`` part.
3. Otherwise a stratified split by ``seed`` into train/val/test with the given fractions.

Carving and stratified splits keep every class in train whenever it has a clip to spare and are
deterministic for a seed. With a group column (a speaker, a source recording) every group lands
on one side only, so near-duplicate clips cannot leak from train into evaluation. Formats that
define groups themselves (ESC-50: ``src_file``) are split by those groups by default.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import DatasetError
from .formats import DatasetIndex

SPLITS = ("train", "val", "test")
# Manifest columns that name where a clip came from: clips sharing a value are near-duplicates
# (one speaker, one source recording) and must not straddle a split.
GROUP_COLUMNS = (
    "group",
    "speaker",
    "speaker_id",
    "source",
    "source_id",
    "src_file",
    "source_file",
    "recording",
    "recording_id",
    "session",
    "subject",
    "participant",
    "individual",
    "author",
    "user_id",
    "client_id",
    "site",
)


@dataclass
class Protocol:
    """How a dataset is split by default: test fold, group column and the reason, in words."""

    test_fold: int | None
    group_column: str | None
    groups: int
    description: str
    warnings: list[str] = field(default_factory=list)


def detect_group_column(index: DatasetIndex) -> str | None:
    """The first of :data:`GROUP_COLUMNS` present on every clip whose values repeat.

    A column where every clip has its own value groups nothing and is not returned. The format's
    own grouping (ESC-50's ``src_file``) is reported as ``"group"``.
    """
    if not index.clips:
        return None
    if all(c.group for c in index.clips):
        return "group"
    for name in GROUP_COLUMNS:
        values = [c.meta.get(name) for c in index.clips]
        if any(v in (None, "") for v in values):
            continue
        if len(set(values)) < len(values):
            return name
    return None


def resolve_protocol(index: DatasetIndex, test_fold: int | None = None, group_column: str | None = None) -> Protocol:
    """The default, leak-free protocol for ``index`` (explicit arguments win).

    A ``fold`` column makes its lowest fold the test set; a group-like column (speaker, source
    recording, ...) keeps each group on one side of every split that is carved; an official
    ``split`` column is used as it is.
    """
    folds = sorted({c.fold for c in index.clips if c.fold is not None})
    if test_fold is None and folds:
        test_fold = folds[0]
    if group_column is None:
        group_column = detect_group_column(index)
    groups = 0
    if group_column is not None:
        groups = len(set(_groups(index, group_column) or []))
    warnings: list[str] = []
    by = f", grouped by '{group_column}' ({groups:,} groups)" if group_column else ""
    if test_fold is not None:
        text = f"fold {test_fold} of {len(folds)} is the test set; validation carved from the other folds{by}"
        if group_column:
            shared = _shared_groups(index, group_column, [i for i, c in enumerate(index.clips) if c.fold == test_fold])
            if shared:
                warnings.append(
                    f"{shared} group(s) of '{group_column}' have clips in fold {test_fold} and in "
                    "other folds: test results include clips of groups seen in training"
                )
    elif any(c.split for c in index.clips):
        text = f"the official split column{by}"
        if group_column:
            shared = _shared_groups(index, group_column, [i for i, c in enumerate(index.clips) if c.split == "test"])
            if shared:
                text = (
                    f"the official split column; its test set shares {shared} of {groups} '{group_column}' "
                    "groups with train, so validation is carved the same way (not by group)"
                )
                warnings.append(
                    f"the official test set shares {shared} '{group_column}' group(s) with train: "
                    f"its scores are on seen {group_column}s; `asca cv --by {group_column}` measures "
                    "unseen ones"
                )
                group_column, groups = None, 0
    else:
        text = f"stratified train/val/test split{by}"
    if group_column is None and "not by group" not in text:
        candidates = [n for n in GROUP_COLUMNS if index.clips and all(n in c.meta for c in index.clips)]
        if candidates:
            warnings.append(f"column '{candidates[0]}' looks like a group but every clip has its own value")
    return Protocol(test_fold, group_column, groups, text, warnings)


def _shared_groups(index: DatasetIndex, column: str, test: list[int]) -> int:
    groups = _groups(index, column) or []
    inside = {groups[i] for i in test}
    outside = {groups[i] for i in range(len(groups)) if i not in set(test)}
    return len(inside & outside)


def make_splits(
    index: DatasetIndex,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    test_fold: int | None = None,
    group_column: str | None = None,
    seed: int = 0,
    official: bool = True,
    test_group: str | None = None,
) -> dict[str, list[int]]:
    """Split the clips of ``index`` into ``{"train", "val", "test"}`` lists of clip indices.

    ``val_fraction`` and ``test_fraction`` are fractions of the whole dataset for a stratified
    split, and ``val_fraction`` is the fraction of the remaining train pool when validation is
    carved from an official split or from the non-test folds. ``group_column`` names a column of
    the manifest (``Clip.meta``) or ``"group"``; ``official=False`` ignores a split column.
    ``test_group`` (a value of ``group_column``) makes that group the test set.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not (0.0 <= value < 1.0):
            raise DatasetError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError(f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}")
    n = len(index.clips)
    if n == 0:
        raise DatasetError(f"{index.root}: no usable clips to split")
    keys = _stratify_keys(index)
    groups = _groups(index, group_column)
    rng = np.random.default_rng(seed)

    if test_group is not None:
        if group_column is None:
            raise DatasetError(f"test_group={test_group!r} needs a group column (e.g. group_column='speaker')")
        if test_fold is not None:
            raise DatasetError("test_group and test_fold cannot both pick the test set")
        assert groups is not None
        test = [i for i, g in enumerate(groups) if g == str(test_group)]
        if not test:
            values = sorted({g for g in groups if not g.startswith("\x00")})
            shown = ", ".join(values[:10]) + (f", ... ({len(values)} values)" if len(values) > 10 else "")
            raise DatasetError(f"test_group={test_group!r} not found in column {group_column!r}; values: {shown}")
        held = set(test)
        train, val = _carve([i for i in range(n) if i not in held], keys, groups, val_fraction, rng)
        return _result(train, val, test)

    if test_fold is not None:
        folds = sorted({c.fold for c in index.clips if c.fold is not None})
        if not folds:
            raise DatasetError(f"test_fold={test_fold} given but {index.root} has no fold column")
        if test_fold not in folds:
            raise DatasetError(f"test_fold={test_fold} not found; folds present: {', '.join(map(str, folds))}")
        test = [i for i, c in enumerate(index.clips) if c.fold == test_fold]
        pool = [i for i, c in enumerate(index.clips) if c.fold != test_fold]
        train, val = _carve(pool, keys, groups, val_fraction, rng)
        return _result(train, val, test)

    if official and any(c.split for c in index.clips):
        parts: dict[str, list[int]] = {s: [] for s in SPLITS}
        for i, c in enumerate(index.clips):
            parts[c.split or "train"].append(i)
        if not parts["train"]:
            raise DatasetError(f"{index.root}: the split column has no train clips")
        if not parts["test"] and test_fraction > 0:
            parts["train"], parts["test"] = _carve(parts["train"], keys, groups, test_fraction, rng)
        if not parts["val"] and val_fraction > 0:
            parts["train"], parts["val"] = _carve(parts["train"], keys, groups, val_fraction, rng)
        return _result(parts["train"], parts["val"], parts["test"])

    assignment = _assign(
        list(range(n)),
        keys,
        groups,
        {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction},
        rng,
    )
    return _result(assignment["train"], assignment["val"], assignment["test"])


def official_split_counts(index: DatasetIndex) -> dict[str, int]:
    """Clips per value of the official split column (empty when there is none)."""
    counts = Counter(c.split for c in index.clips if c.split)
    return {s: counts[s] for s in SPLITS if counts[s]}


def limit_clips_per_class(index: DatasetIndex, max_per_class: int, seed: int = 0) -> DatasetIndex:
    """Keep at most ``max_per_class`` clips of each (primary) class, chosen by ``seed``."""
    if max_per_class <= 0:
        raise DatasetError(f"max_clips_per_class must be positive, got {max_per_class}")
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, clip in enumerate(index.clips):
        by_class[clip.label].append(i)
    keep: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        if len(members) > max_per_class:
            members = sorted(rng.permutation(members)[:max_per_class].tolist())
        keep.extend(members)
    return index.subset(sorted(keep))


# ---------------------------------------------------------------------------------- internals


def _result(train: Sequence[int], val: Sequence[int], test: Sequence[int]) -> dict[str, list[int]]:
    out = {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
    assert sum(map(len, out.values())) == len(set().union(*map(set, out.values())))
    return out


def _stratify_keys(index: DatasetIndex) -> list[str]:
    """One label per clip to stratify on: the rarest of its labels (the primary when single)."""
    freq = Counter(label for c in index.clips for label in c.labels)
    return [min(c.labels, key=lambda lab: (freq[lab], lab)) if len(c.labels) > 1 else c.labels[0] for c in index.clips]


def _groups(index: DatasetIndex, column: str | None) -> list[str] | None:
    if column is None:
        if index.clips and all(c.group for c in index.clips):
            return [str(c.group) for c in index.clips]  # the format's own grouping (ESC-50 src_file)
        return None
    out: list[str] = []
    for i, clip in enumerate(index.clips):
        if column == "group":
            value = clip.group
        elif column in clip.meta:
            value = clip.meta[column]
        else:
            available = sorted(set(clip.meta) | ({"group"} if clip.group else set()))
            raise DatasetError(
                f"group column {column!r} not found in {index.manifest or index.root} "
                f"(available: {', '.join(available) or 'none'})"
            )
        # a clip without a group value is its own group
        out.append(str(value) if value not in (None, "") else f"\x00clip{i}")
    return out


def _carve(
    pool: list[int], keys: list[str], groups: list[str] | None, fraction: float, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """Move about ``fraction`` of ``pool`` out of train, stratified (and by group)."""
    if fraction <= 0 or not pool:
        return list(pool), []
    parts = _assign(pool, keys, groups, {"train": 1.0 - fraction, "held": fraction}, rng)
    return parts["train"], parts["held"]


def _assign(
    pool: list[int], keys: list[str], groups: list[str] | None, fractions: dict[str, float], rng: np.random.Generator
) -> dict[str, list[int]]:
    if groups is None:
        out = _assign_stratified(pool, keys, fractions, rng)
    else:
        out = _assign_groups(pool, keys, groups, fractions, rng)
    _keep_classes_in_train(out, keys, groups)
    return out


def _assign_stratified(
    pool: list[int], keys: list[str], fractions: dict[str, float], rng: np.random.Generator
) -> dict[str, list[int]]:
    """Per class: shuffle, then cut by the fractions (train keeps at least one clip)."""
    out: dict[str, list[int]] = {name: [] for name in fractions}
    held_names = [name for name in fractions if name != "train"]
    by_key: dict[str, list[int]] = defaultdict(list)
    for i in pool:
        by_key[keys[i]].append(i)
    # Rounding per class would overshoot for many small classes; carrying the remainder across
    # classes keeps the totals close to the fractions.
    carry = dict.fromkeys(held_names, 0.0)
    for key in sorted(by_key):
        members = rng.permutation(by_key[key]).tolist()
        start = 0
        for name in held_names:
            want = len(members) * fractions[name] + carry[name]
            take = min(int(math.floor(want + 0.5)), len(members) - 1 - start)
            take = max(take, 0)
            carry[name] = want - take
            out[name].extend(members[start : start + take])
            start += take
        out["train"].extend(members[start:])
    return out


def _assign_groups(
    pool: list[int], keys: list[str], groups: list[str], fractions: dict[str, float], rng: np.random.Generator
) -> dict[str, list[int]]:
    """Greedy: each group (largest first, ties shuffled) goes where its classes are most needed.

    "Need" is the side's remaining quota of the group's classes, in clips; groups never split.
    """
    members: dict[str, list[int]] = defaultdict(list)
    for i in pool:
        members[groups[i]].append(i)
    names = [str(x) for x in rng.permutation(sorted(members))]
    names.sort(key=lambda g: -len(members[g]))  # stable: equal sizes keep the shuffled order
    class_total = Counter(keys[i] for i in pool)
    sides = [s for s, f in fractions.items() if f > 0 or s == "train"]
    quota = {s: {k: class_total[k] * fractions[s] for k in class_total} for s in sides}
    left = {s: len(pool) * fractions[s] for s in sides}
    out: dict[str, list[int]] = {s: [] for s in fractions}
    for name in names:
        group = members[name]
        counts = Counter(keys[i] for i in group)
        best = max(sides, key=lambda s: (sum(quota[s][k] * n for k, n in counts.items()), left[s]))
        out[best].extend(group)
        for k, n in counts.items():
            quota[best][k] -= n
        left[best] -= len(group)
    return out


def _keep_classes_in_train(out: dict[str, list[int]], keys: list[str], groups: list[str] | None) -> None:
    """Move one clip (or its whole group) of each class missing from train back into train."""
    in_train = {keys[i] for i in out["train"]}
    for name in [n for n in out if n != "train"]:
        for i in sorted(out[name]):
            key = keys[i]
            if key in in_train or i not in out[name]:
                continue
            moving = [i] if groups is None else [j for j in out[name] if groups[j] == groups[i]]
            if len(moving) == len(out[name]) and len(out[name]) > 1 and groups is not None:
                continue  # would empty this side entirely
            for j in moving:
                out[name].remove(j)
                out["train"].append(j)
                in_train.add(keys[j])
