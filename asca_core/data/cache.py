"""Decoded-audio cache on disk, so later epochs read a stored wave instead of decoding again.

Entries are keyed by the SHA-1 of the file's bytes and the sample rate, so a renamed or copied
file hits the cache and an edited one misses it. The hash is computed once per (path, size,
mtime) in a process.

An entry holds the mono wave at the dataset's rate as 16-bit samples with one scale per file: half
the disk of float32, and exact for 16-bit sources at their own rate (their samples are multiples
of 1/32768, kept as they are). Other waves are scaled to their peak, so the rounding error is at
most peak / 65534 (-96 dB below the peak), the resolution of a 16-bit recording. Readers map the
file and fetch only the samples a training crop or a labelled span needs, so an epoch over long
recordings reads a few seconds of each, not whole files.

The format is a 32-byte header (magic ``ASCAWAV2``, sample rate, reserved, sample count, scale:
little-endian ``<8sIIQf4x``) followed by the little-endian int16 samples: nothing is unpickled, and
an entry whose header or size does not match is decoded again and rewritten. Entries are written
atomically (temporary file, then ``os.replace``), so parallel data-loader workers never see a
half-written one.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import audio as _audio
from ..errors import AudioError, DatasetError

CACHE_VERSION = "wave-v2"  # bump when decoding, resampling or the entry format changes
SUFFIX = ".a16"
MAGIC = b"ASCAWAV2"
_HEADER = struct.Struct("<8sIIQf4x")
PCM16 = 1.0 / 32768.0  # the scale of a wave that is 16-bit PCM already
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """SHA-1 hex digest of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class StoredWave:
    """A cached wave: 16-bit samples (mapped from disk, or held in memory) and their scale.

    Shapes: ``samples`` (T,) int16; :meth:`read` returns float32.
    """

    samples: np.ndarray
    scale: float

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.samples.nbytes)

    def read(self, first: int = 0, last: int | None = None) -> np.ndarray:
        """Samples ``[first, last)`` as float32 (to the end for ``None``). Shapes: (last - first,)."""
        part = self.samples[first:last]
        return np.multiply(part, np.float32(self.scale), dtype=np.float32)

    def in_memory(self) -> StoredWave:
        """The same wave with its samples copied off the disk mapping."""
        return StoredWave(np.array(self.samples), self.scale)


def quantize(wave: np.ndarray) -> StoredWave:
    """A float wave as 16-bit samples: exactly when it is 16-bit PCM already, else scaled to its peak.

    Shapes: (T,) float -> StoredWave of T samples.
    """
    wave = np.asarray(wave, dtype=np.float32)
    pcm = wave * np.float32(32768.0)
    if wave.size and float(np.abs(pcm).max()) <= 32767.0 and np.array_equal(np.round(pcm), pcm):
        return StoredWave(pcm.astype(np.int16), PCM16)
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    scale = peak / 32767.0 if peak > 0 else PCM16
    return StoredWave(np.round(wave / np.float32(scale)).astype(np.int16), scale)


def write_entry(target: Path, stored: StoredWave, sample_rate: int) -> None:
    """Write ``stored`` as a cache entry at ``target``, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_HEADER.pack(MAGIC, int(sample_rate), 0, len(stored), float(stored.scale)))
            f.write(np.ascontiguousarray(stored.samples, dtype="<i2").tobytes())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_entry(entry: Path, sample_rate: int) -> StoredWave | None:
    """The wave stored at ``entry``, mapped from disk; ``None`` for a missing, foreign or damaged entry."""
    try:
        with open(entry, "rb") as f:
            header = f.read(_HEADER.size)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    if len(header) != _HEADER.size:
        return None
    magic, rate, _reserved, frames, scale = _HEADER.unpack(header)
    if magic != MAGIC or rate != int(sample_rate) or size != _HEADER.size + 2 * frames:
        return None
    if not (np.isfinite(scale) and scale > 0):
        return None
    if frames == 0:
        return StoredWave(np.zeros(0, dtype=np.int16), float(scale))
    try:
        samples = np.memmap(entry, dtype="<i2", mode="r", offset=_HEADER.size, shape=(frames,))
    except (OSError, ValueError):
        return None
    return StoredWave(samples, float(scale))


class FeatureCache:
    """Decoded mono waves of audio files at a given rate, stored under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"{self.root}: cannot create the feature cache ({exc.strerror})") from exc
        self._digests: dict[tuple[str, int, int], str] = {}
        self.hits = 0
        self.misses = 0

    @property
    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}

    def key(self, path: str | Path, sample_rate: int) -> str:
        """Cache key of ``path`` decoded at ``sample_rate``: content hash + rate + version."""
        path = Path(path)
        try:
            st = path.stat()
        except OSError as exc:
            raise AudioError(f"{path}: file not found") from exc
        memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        digest = self._digests.get(memo)
        if digest is None:
            digest = self._digests[memo] = file_digest(path)
        return f"{digest}-{int(sample_rate)}-{CACHE_VERSION}"

    def entry_path(self, path: str | Path, sample_rate: int) -> Path:
        key = self.key(path, sample_rate)
        return self.root / key[:2] / f"{key}{SUFFIX}"

    def get(self, path: str | Path, sample_rate: int) -> StoredWave:
        """The whole file, mono at ``sample_rate``, as stored: from the cache, or decoded once."""
        entry = self.entry_path(path, sample_rate)
        stored = read_entry(entry, sample_rate)
        if stored is not None:
            self.hits += 1
            return stored
        stored = quantize(_audio.load_audio(path, sample_rate=int(sample_rate)))
        try:
            write_entry(entry, stored, sample_rate)
        except OSError:
            pass  # a full or read-only disk only costs speed: the decoded wave is still returned
        self.misses += 1
        return stored

    def get_wave(self, path: str | Path, sample_rate: int) -> np.ndarray:
        """The whole file as mono float32 at ``sample_rate``. Shapes: returns (T,) float32."""
        return self.get(path, sample_rate).read()

    def clear(self) -> int:
        """Delete every entry (earlier formats' too); return how many were removed."""
        removed = 0
        for pattern in (f"*/*{SUFFIX}", "*/*.npy"):
            for entry in self.root.glob(pattern):
                entry.unlink(missing_ok=True)
                removed += 1
        return removed
