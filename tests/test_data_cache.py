"""The decoded-audio cache: content-keyed, atomic, and a second read decodes nothing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

import asca_core.audio
from asca_core.data import FeatureCache
from asca_core.errors import AudioError


def _noise(path, seconds=0.5, sample_rate=8000, seed=0):
    rng = np.random.default_rng(seed)
    sf.write(path, (0.2 * rng.standard_normal(int(seconds * sample_rate))).astype(np.float32), sample_rate)
    return path


def _forbid_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("load_audio called although the cache holds the wave")

    monkeypatch.setattr(asca_core.audio, "load_audio", fail)


def test_second_read_decodes_nothing(tmp_path, monkeypatch):
    files = [_noise(tmp_path / f"{k}.wav", seed=k) for k in range(3)]
    cache = FeatureCache(tmp_path / "cache")
    first = [cache.get_wave(f, 16000) for f in files]
    assert cache.stats == {"hits": 0, "misses": 3}
    assert all(w.dtype == np.float32 and w.shape == (8000,) for w in first)  # 0.5 s at 16 kHz
    np.testing.assert_array_equal(first[1], asca_core.audio.load_audio(files[1], 16000))

    _forbid_decoding(monkeypatch)
    again = [cache.get_wave(f, 16000) for f in files]
    assert cache.stats == {"hits": 3, "misses": 3}
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)

    # a fresh cache object (a new process, a data-loader worker) also hits the files on disk
    fresh = FeatureCache(tmp_path / "cache")
    np.testing.assert_array_equal(fresh.get_wave(files[0], 16000), first[0])
    assert fresh.stats == {"hits": 1, "misses": 0}


def test_key_follows_content_and_rate(tmp_path, monkeypatch):
    original = _noise(tmp_path / "a.wav", seed=1)
    cache = FeatureCache(tmp_path / "cache")
    wave = cache.get_wave(original, 8000)
    copy = tmp_path / "renamed_copy.wav"
    shutil.copy(original, copy)
    np.testing.assert_array_equal(cache.get_wave(copy, 8000), wave)  # same bytes: a hit
    assert cache.stats == {"hits": 1, "misses": 1}

    cache.get_wave(original, 16000)  # another rate: a miss
    assert cache.stats["misses"] == 2

    _noise(original, seed=2)  # edited in place: new content, new key
    changed = cache.get_wave(original, 8000)
    assert cache.stats["misses"] == 3
    assert not np.array_equal(changed, wave)


def test_entries_are_plain_npy_written_atomically(tmp_path):
    f = _noise(tmp_path / "a.wav")
    cache = FeatureCache(tmp_path / "cache")
    cache.get_wave(f, 8000)
    entries = list((tmp_path / "cache").rglob("*"))
    files = [p for p in entries if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".npy" and not files[0].name.startswith(".tmp")
    loaded = np.load(files[0], allow_pickle=False)
    assert loaded.dtype == np.float32 and loaded.ndim == 1
    assert cache.entry_path(f, 8000) == files[0]


def test_corrupt_entry_is_decoded_again(tmp_path):
    f = _noise(tmp_path / "a.wav")
    cache = FeatureCache(tmp_path / "cache")
    wave = cache.get_wave(f, 8000)
    cache.entry_path(f, 8000).write_bytes(b"garbage")
    np.testing.assert_array_equal(cache.get_wave(f, 8000), wave)
    assert cache.stats == {"hits": 0, "misses": 2}
    assert cache.clear() == 1


def test_missing_file_raises_audio_error(tmp_path):
    with pytest.raises(AudioError, match="missing.wav: file not found"):
        FeatureCache(tmp_path / "cache").get_wave(tmp_path / "missing.wav", 8000)
