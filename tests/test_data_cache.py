"""The decoded-audio cache: content-keyed, atomic, 16-bit on disk, read a crop at a time, and a
second read decodes nothing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

import asca_core.audio
from asca_core.data import FeatureCache
from asca_core.data.cache import MAGIC, StoredWave, quantize, read_entry
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
    decoded = asca_core.audio.load_audio(files[1], 16000)
    assert np.abs(first[1] - decoded).max() <= np.abs(decoded).max() / 65534 * 1.001  # 16-bit rounding

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


def test_entries_are_16_bit_written_atomically_and_half_the_size_of_float32(tmp_path):
    f = _noise(tmp_path / "a.wav", seconds=1.0)
    cache = FeatureCache(tmp_path / "cache")
    cache.get_wave(f, 8000)
    entries = list((tmp_path / "cache").rglob("*"))
    files = [p for p in entries if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".a16" and not files[0].name.startswith(".tmp")
    assert files[0].read_bytes()[:8] == MAGIC
    assert files[0].stat().st_size == 32 + 2 * 8000  # header + 16-bit samples (float32: 32,000 bytes)
    assert cache.entry_path(f, 8000) == files[0]
    stored = read_entry(files[0], 8000)
    assert stored is not None and stored.samples.dtype == np.int16 and len(stored) == 8000
    assert read_entry(files[0], 16000) is None  # the header's rate is checked too


def test_16_bit_sources_are_stored_exactly_and_others_within_their_resolution(tmp_path):
    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32767, 4000).astype(np.int16)
    f = tmp_path / "pcm16.wav"
    sf.write(f, pcm, 8000, subtype="PCM_16")
    cache = FeatureCache(tmp_path / "cache")
    np.testing.assert_array_equal(cache.get_wave(f, 8000), asca_core.audio.load_audio(f, 8000))  # lossless

    loud = (3.0 * rng.standard_normal(4000)).astype(np.float32)  # float audio beyond full scale
    stored = quantize(loud)
    peak = float(np.abs(loud).max())
    assert abs(float(np.abs(stored.read()).max()) - peak) <= peak / 65534 * 1.001  # not clipped
    assert np.abs(stored.read() - loud).max() <= peak / 65534 * 1.001
    assert quantize(np.zeros(10, np.float32)).read().tolist() == [0.0] * 10


def test_a_crop_reads_only_its_samples(tmp_path):
    samples = np.arange(-500, 500, dtype=np.int16)
    stored = StoredWave(samples, 0.5)
    np.testing.assert_array_equal(stored.read(10, 14), np.array([-490, -489, -488, -487], np.float32) * 0.5)
    assert stored.read(10, 14).dtype == np.float32 and stored.in_memory().nbytes == 2000

    f = _noise(tmp_path / "long.wav", seconds=4.0)
    cache = FeatureCache(tmp_path / "cache")
    whole = cache.get_wave(f, 8000)
    mapped = cache.get(f, 8000)
    assert isinstance(mapped.samples, np.memmap)  # read from the disk on demand
    np.testing.assert_array_equal(mapped.read(12000, 20000), whole[12000:20000])


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
