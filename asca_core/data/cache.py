"""Decoded-audio cache on disk, so later epochs read a ``.npy`` instead of decoding again.

Entries are keyed by the SHA-1 of the file's bytes and the sample rate, so a renamed or copied
file hits the cache and an edited one misses it. The hash is computed once per (path, size,
mtime) in a process. Entries are plain float32 ``.npy`` files read with ``allow_pickle=False``
and written atomically (temporary file, then ``os.replace``), so parallel data-loader workers
never see a half-written entry.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from .. import audio as _audio
from ..errors import AudioError, DatasetError

CACHE_VERSION = "wave-v1"  # bump when decoding or resampling changes what an entry holds
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """SHA-1 hex digest of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class FeatureCache:
    """Decoded mono float32 waves of audio files, stored under ``root``."""

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
        return self.root / key[:2] / f"{key}.npy"

    def get_wave(self, path: str | Path, sample_rate: int) -> np.ndarray:
        """The whole file as mono float32 at ``sample_rate``: from the cache, or decoded once.

        Shapes: returns (T,) float32.
        """
        entry = self.entry_path(path, sample_rate)
        if entry.is_file():
            try:
                wave = np.load(entry, allow_pickle=False)
            except (OSError, ValueError, EOFError):
                wave = None  # unreadable entry (disk trouble): decode again and overwrite it
            if wave is not None and wave.dtype == np.float32 and wave.ndim == 1:
                self.hits += 1
                return wave
        wave = _audio.load_audio(path, sample_rate=int(sample_rate))
        self._store(entry, np.ascontiguousarray(wave, dtype=np.float32))
        self.misses += 1
        return wave

    def _store(self, entry: Path, wave: np.ndarray) -> None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-", suffix=".npy")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, wave, allow_pickle=False)
                os.replace(tmp, entry)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass  # a full or read-only disk only costs speed: the decoded wave is still returned

    def clear(self) -> int:
        """Delete every entry; return how many were removed."""
        removed = 0
        for entry in self.root.glob("*/*.npy"):
            entry.unlink(missing_ok=True)
            removed += 1
        return removed
