"""ClipDataset: fixed-length waves, multi-hot targets, seeded crops; balanced sampling weights."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from asca_core.config import FeatureConfig
from asca_core.data import Clip, ClipDataset, FeatureCache, class_weights_for_sampling, fit_length, load_dataset


def _ramp(path, seconds, sample_rate=8000):
    """A ramp: each sample's value tells where in the file it came from."""
    n = int(round(seconds * sample_rate))
    sf.write(path, np.linspace(-0.9, 0.9, n).astype(np.float32), sample_rate, subtype="FLOAT")
    return path


@pytest.fixture
def dataset_dir(tmp_path):
    (tmp_path / "x").mkdir()
    _ramp(tmp_path / "long.wav", 2.0)
    _ramp(tmp_path / "short.wav", 0.5)
    _ramp(tmp_path / "x" / "exact.wav", 1.0)
    (tmp_path / "labels.csv").write_text("filename,label\nlong.wav,a;c\nshort.wav,b\nx/exact.wav,c\n", encoding="utf-8")
    return tmp_path


def _cfg(**kw):
    return FeatureConfig(sample_rate=8000, n_fft=256, win_length=200, hop_length=25, clip_seconds=1.0, n_mels=32, **kw)


@pytest.mark.parametrize("use_cache", [False, True])
def test_eval_items_centre_crop_and_pad(dataset_dir, tmp_path, use_cache):
    index = load_dataset(dataset_dir)
    cache = FeatureCache(tmp_path / "cache") if use_cache else None
    ds = ClipDataset(index, [0, 1, 2], _cfg(), cache=cache, train=False)
    assert len(ds) == 3
    long_wave, target = ds[0]
    assert long_wave.shape == (8000,) and long_wave.dtype == torch.float32
    assert index.classes == ["a", "b", "c"]
    assert target.tolist() == [1.0, 0.0, 1.0]
    full = np.linspace(-0.9, 0.9, 16000).astype(np.float32)
    np.testing.assert_allclose(long_wave.numpy(), full[4000:12000], atol=1e-3)  # centre second

    short_wave, target = ds[1]
    assert target.tolist() == [0.0, 1.0, 0.0]
    w = short_wave.numpy()
    nz = np.flatnonzero(w)
    assert nz[0] in (2000, 2001) and nz[-1] in (5998, 5999)  # 0.5 s in the middle, zeros around
    assert np.all(w[:2000] == 0) and np.all(w[6001:] == 0)
    assert ds.targets().shape == (3, 3)


@pytest.mark.parametrize("use_cache", [False, True])
def test_train_crops_seeded_by_epoch(dataset_dir, tmp_path, use_cache):
    index = load_dataset(dataset_dir)
    cache = FeatureCache(tmp_path / "cache") if use_cache else None
    ds = ClipDataset(index, [0], _cfg(), cache=cache, train=True, seed=5)
    starts = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        a, b = ds[0][0], ds[0][0]
        torch.testing.assert_close(a, b)  # same epoch, same crop
        starts.append(round(float(a[0]), 3))
    assert len(set(starts)) > 3, "crops move between epochs"
    ds2 = ClipDataset(index, [0], _cfg(), cache=cache, train=True, seed=5)
    ds2.set_epoch(2)
    assert round(float(ds2[0][0][0]), 3) == starts[2]  # reproducible across dataset objects


def test_cached_train_crops_are_the_decoded_ones(dataset_dir, tmp_path):
    """The cache reads just the crop from its mapped entry: the same crop, to 16-bit rounding."""
    from asca_core.train.data import _MemoryCache

    index = load_dataset(dataset_dir)
    plain = ClipDataset(index, [0, 1, 2], _cfg(), cache=None, train=True, seed=7)
    disk = ClipDataset(index, [0, 1, 2], _cfg(), cache=FeatureCache(tmp_path / "c"), train=True, seed=7)
    memory = ClipDataset(index, [0, 1, 2], _cfg(), cache=_MemoryCache(FeatureCache(tmp_path / "c")), train=True, seed=7)
    for epoch in (0, 3):
        for ds in (plain, disk, memory):
            ds.set_epoch(epoch)
        for i in range(3):
            expected = plain[i][0]
            torch.testing.assert_close(disk[i][0], expected, atol=1e-4, rtol=0)
            torch.testing.assert_close(memory[i][0], expected, atol=1e-4, rtol=0)


def test_resampled_and_real_clips(shared_data, tmp_path):
    index = load_dataset(shared_data / "birdclef2023_sample")
    ds = ClipDataset(index, list(range(2)), FeatureConfig(clip_seconds=2.0), cache=None, train=True)
    wave, target = ds[1]
    assert wave.shape == (32000,) and torch.isfinite(wave).all() and wave.abs().max() > 0
    assert target.sum() == len(index.clips[1].labels)


def test_fit_length():
    w = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(w, 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(fit_length(w, 4, start=0), [0, 1, 2, 3])
    np.testing.assert_array_equal(fit_length(w[:2], 6), [0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(fit_length(w[:2], 4, start=99), [0, 0, 0, 1])


def test_class_weights_balance_classes(dataset_dir):
    index = load_dataset(dataset_dir)
    index.clips += [Clip(path=index.clips[2].path, labels=("c",)) for _ in range(7)]
    indices = list(range(len(index.clips)))
    weights = class_weights_for_sampling(index, indices)
    assert weights.shape == (10,) and abs(float(weights.sum()) - 1) < 1e-9
    # a clip weighs 1 / (clips of its rarest label): the lone "b" clip counts as much as all
    # nine "c" clips together, and the "a;c" clip is weighted by its rare "a"
    w = weights.tolist()
    assert w[1] == pytest.approx(9 * w[2])
    assert w[0] == pytest.approx(w[1])
    assert sum(w[2:]) == pytest.approx(8 * w[2])
