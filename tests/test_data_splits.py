"""Splits: official column, test fold, stratified by seed, group-aware (FSDD speakers)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from asca_core.data import Clip, DatasetIndex, load_dataset, make_splits
from asca_core.data.splits import limit_clips_per_class
from asca_core.errors import DatasetError


def _index(labels: list[str], **columns) -> DatasetIndex:
    clips = []
    for i, label in enumerate(labels):
        extra = {k: v[i] for k, v in columns.items()}
        clips.append(
            Clip(
                path=Path(f"/data/{i}.wav"),
                labels=tuple(label.split(";")),
                split=extra.pop("split", None),
                fold=extra.pop("fold", None),
                group=extra.pop("group", None),
                meta=extra,
            )
        )
    classes = sorted({lab for c in clips for lab in c.labels})
    return DatasetIndex(
        root=Path("/data"),
        format="csv",
        clips=clips,
        classes=classes,
        multi_label=any(len(c.labels) > 1 for c in clips),
        problems=[],
    )


def _check_partition(splits: dict[str, list[int]], n: int) -> None:
    assert set(splits) == {"train", "val", "test"}
    everything = splits["train"] + splits["val"] + splits["test"]
    assert sorted(everything) == list(range(n)), "every clip exactly once"


@pytest.fixture(scope="module")
def fsdd(shared_data):
    return load_dataset(shared_data / "fsdd" / "labels.csv")


def test_official_split_fsdd_carves_val_from_train_only(fsdd):
    splits = make_splits(fsdd, val_fraction=0.1, seed=0)
    _check_partition(splits, 3000)
    assert len(splits["test"]) == 300
    assert all(fsdd.clips[i].split == "test" for i in splits["test"])
    assert all(fsdd.clips[i].split == "train" for i in splits["train"] + splits["val"])
    assert len(splits["val"]) == 270  # 10 % of the 2,700 official train clips
    assert Counter(fsdd.clips[i].label for i in splits["val"]) == {str(d): 27 for d in range(10)}
    assert make_splits(fsdd, val_fraction=0.1, seed=0) == splits
    assert make_splits(fsdd, val_fraction=0.1, seed=1)["val"] != splits["val"]


def test_official_split_keeps_given_val_and_carves_missing_test():
    labels = ["a", "b"] * 20
    idx = _index(labels, split=["val" if i < 4 else "train" for i in range(40)])
    splits = make_splits(idx, val_fraction=0.15, test_fraction=0.25, seed=0)
    _check_partition(splits, 40)
    assert splits["val"] == [0, 1, 2, 3]
    assert len(splits["test"]) == 9  # 25 % of the 36 train clips, stratified: 4.5 per class
    assert Counter(labels[i] for i in splits["test"]) in ({"a": 5, "b": 4}, {"a": 4, "b": 5})


def test_test_fold_protocol():
    labels = ["dog", "cat", "rain", "wind"] * 25
    folds = [1 + (i // 4) % 5 for i in range(100)]
    idx = _index(labels, fold=folds)
    splits = make_splits(idx, val_fraction=0.25, test_fold=3, seed=0)
    _check_partition(splits, 100)
    assert splits["test"] == [i for i in range(100) if folds[i] == 3]
    assert len(splits["val"]) == 20 and all(folds[i] != 3 for i in splits["val"])
    assert Counter(labels[i] for i in splits["val"]) == {"dog": 5, "cat": 5, "rain": 5, "wind": 5}
    with pytest.raises(DatasetError, match="test_fold=9 not found; folds present: 1, 2, 3, 4, 5"):
        make_splits(idx, test_fold=9)
    with pytest.raises(DatasetError, match="has no fold column"):
        make_splits(_index(labels), test_fold=1)


def test_stratified_split_is_deterministic_and_keeps_classes_in_train():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 13 + ["d"] * 2 + ["e"]
    idx = _index(labels)
    splits = make_splits(idx, val_fraction=0.15, test_fraction=0.15, seed=7)
    _check_partition(splits, len(labels))
    assert splits == make_splits(idx, val_fraction=0.15, test_fraction=0.15, seed=7)
    assert splits != make_splits(idx, val_fraction=0.15, test_fraction=0.15, seed=8)
    assert {labels[i] for i in splits["train"]} == {"a", "b", "c", "d", "e"}
    sizes = {k: len(v) for k, v in splits.items()}
    assert abs(sizes["val"] - 14.4) <= 2 and abs(sizes["test"] - 14.4) <= 2
    val = Counter(labels[i] for i in splits["val"])
    assert 7 <= val["a"] <= 8 and 4 <= val["b"] <= 5


def test_multilabel_stratifies_on_rarest_label():
    labels = ["a;rare"] * 10 + ["a"] * 90
    splits = make_splits(_index(labels), val_fraction=0.2, test_fraction=0.2, seed=0)
    held = [i for i in splits["val"] + splits["test"] if i < 10]
    assert 3 <= len(held) <= 5  # the rare label is spread, not left to chance
    assert any(i < 10 for i in splits["train"])


def test_group_aware_fsdd_speakers_never_on_two_sides(fsdd):
    splits = make_splits(fsdd, val_fraction=0.15, test_fraction=0.15, group_column="speaker", seed=0, official=False)
    _check_partition(splits, 3000)
    speakers = {name: {fsdd.clips[i].meta["speaker"] for i in idx} for name, idx in splits.items()}
    assert all(speakers[name] for name in speakers), "each side gets at least one speaker"
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not speakers[a] & speakers[b], f"{a} and {b} share speakers"
    assert len(speakers["train"]) == 4
    # all 10 digits on every side (each speaker says every digit)
    for idx in splits.values():
        assert {fsdd.clips[i].label for i in idx} == {str(d) for d in range(10)}
    again = make_splits(fsdd, group_column="speaker", seed=0, official=False)
    assert again == splits


def test_group_aware_carve_from_official_train(fsdd):
    splits = make_splits(fsdd, val_fraction=0.2, group_column="speaker", seed=3)
    train_speakers = {fsdd.clips[i].meta["speaker"] for i in splits["train"]}
    val_speakers = {fsdd.clips[i].meta["speaker"] for i in splits["val"]}
    assert val_speakers and not train_speakers & val_speakers
    assert len(splits["test"]) == 300


def test_group_aware_many_small_groups_balanced():
    labels, groups = [], []
    for g in range(60):
        for _ in range(1 + g % 3):
            labels.append("ab"[g % 2])
            groups.append(f"g{g}")
    idx = _index(labels, source=groups)
    splits = make_splits(idx, val_fraction=0.2, test_fraction=0.2, group_column="source", seed=0)
    _check_partition(splits, len(labels))
    sides = {name: {groups[i] for i in idx_} for name, idx_ in splits.items()}
    assert not (sides["train"] & sides["val"] or sides["train"] & sides["test"] or sides["val"] & sides["test"])
    n = len(labels)
    for name, frac in (("val", 0.2), ("test", 0.2)):
        assert abs(len(splits[name]) - frac * n) <= 4
        assert {labels[i] for i in splits[name]} == {"a", "b"}


def test_format_group_used_by_default():
    labels = ["a", "b"] * 30
    idx = _index(labels, group=[f"src{i // 3}" for i in range(60)])
    splits = make_splits(idx, seed=0)
    owner = {}
    for name, members in splits.items():
        for i in members:
            assert owner.setdefault(idx.clips[i].group, name) == name


def test_group_column_errors():
    idx = _index(["a", "b"], speaker=["x", "y"])
    with pytest.raises(DatasetError, match="group column 'room' not found .*available: speaker"):
        make_splits(idx, group_column="room")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"val_fraction": 1.0}, "val_fraction must be in"),
        ({"test_fraction": -0.1}, "test_fraction must be in"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "must be below 1"),
    ],
)
def test_bad_fractions(kwargs, message):
    with pytest.raises(DatasetError, match=message):
        make_splits(_index(["a", "b"]), **kwargs)


def test_empty_index_cannot_be_split():
    with pytest.raises(DatasetError, match="no usable clips"):
        make_splits(_index([]))


def test_limit_clips_per_class():
    idx = _index(["a"] * 10 + ["b"] * 3)
    small = limit_clips_per_class(idx, 4, seed=0)
    assert small.label_counts() == {"a": 4, "b": 3}
    assert limit_clips_per_class(idx, 4, seed=0).clips == small.clips
