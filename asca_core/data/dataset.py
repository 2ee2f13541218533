"""Torch dataset of fixed-length waves and multi-hot targets.

Training crops a random window per item, drawn from a generator seeded by (seed, epoch, clip), so
a run is reproducible and every epoch sees different windows (call :meth:`ClipDataset.set_epoch`).
Evaluation takes the centre window; clips shorter than the window are zero-padded (symmetrically
in evaluation, at a random offset in training). A clip with a span (``Clip.start``/``Clip.end``,
from a review manifest) is that span of its file only.

Filter the index with :func:`asca_core.data.check.filter_readable` before training, so a broken
file is reported up front. A clip that still fails when read (NaN or infinite samples found only
by decoding, a file over the length limit, one that became unreadable since) is skipped: the item
is taken from the next readable clip, the clip is named in :attr:`ClipDataset.skipped` (and passed
to ``on_skip``) and never read again by this dataset.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import audio as _audio
from ..config import FeatureConfig
from ..errors import AscaError, DatasetError
from ..geometry import crop_range, fit_length
from .cache import FeatureCache
from .formats import DatasetIndex

log = logging.getLogger(__name__)


def multi_hot(labels: Sequence[str], class_to_idx: dict[str, int]) -> torch.Tensor:
    """Shapes: returns (K,) float32 with 1.0 at each label's class."""
    target = torch.zeros(len(class_to_idx), dtype=torch.float32)
    for label in labels:
        target[class_to_idx[label]] = 1.0
    return target


class ClipDataset(Dataset):
    """Items ``(wave, target)`` for the clips ``indices`` of ``index``.

    A training dataset needs two or more classes. ``on_skip(file, reason)`` hears of each clip
    skipped because it failed when read (see :attr:`skipped`).

    Shapes: wave (S,) float32 with S = round(clip_seconds * sample_rate); target (K,) float32
    multi-hot over ``index.classes``.
    """

    def __init__(
        self,
        index: DatasetIndex,
        indices: Sequence[int],
        feature_cfg: FeatureConfig,
        cache: FeatureCache | None = None,
        train: bool = False,
        seed: int = 0,
        on_skip: Callable[[str, str], None] | None = None,
    ):
        if train and len(index.classes) < 2:
            raise DatasetError(
                f"{index.root}: only {len(index.classes)} class "
                f"({', '.join(index.classes) or 'none'}); a classifier needs two or more"
            )
        self.index = index
        self.indices = list(indices)
        self.sample_rate = int(feature_cfg.sample_rate)
        self.clip_samples = int(round(feature_cfg.clip_seconds * self.sample_rate))
        self.cache = cache
        self.train = train
        self.seed = int(seed)
        self.epoch = 0
        self.class_to_idx = {c: i for i, c in enumerate(index.classes)}
        self.on_skip = on_skip
        self.skipped: dict[str, str] = {}  # clip (relative to the dataset root) -> why it was skipped
        self._bad: set[int] = set()  # items skipped (positions in ``indices``)

    @property
    def skipped_count(self) -> int:
        """Clips skipped so far because they failed when read."""
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Choose the crops of ``epoch`` (training only; evaluation crops never change)."""
        self.epoch = int(epoch)

    def targets(self) -> torch.Tensor:
        """Every item's target without decoding audio. Shapes: (N, K)."""
        if not self.indices:
            return torch.zeros(0, len(self.class_to_idx))
        return torch.stack([multi_hot(self.index.clips[i].labels, self.class_to_idx) for i in self.indices])

    def _offset(self, clip_index: int, total: int) -> int | None:
        if not self.train:
            return None
        rng = np.random.default_rng([self.seed, self.epoch, clip_index])
        return int(rng.integers(0, abs(total - self.clip_samples) + 1))

    def load_wave(self, i: int) -> np.ndarray:
        """Shapes: returns (S,) float32 for item ``i``."""
        clip_index = self.indices[i]
        clip = self.index.clips[clip_index]
        path = clip.path
        if clip.start is not None or clip.end is not None:
            span = self.load_span(clip.path, clip.start or 0.0, clip.end)
            return fit_length(span, self.clip_samples, self._offset(clip_index, span.shape[0]))
        if self.cache is not None:
            stored = self.cache.get(path, self.sample_rate)
            start = self._offset(clip_index, len(stored))
            crop = stored.read(*crop_range(len(stored), self.clip_samples, start))  # only the crop's samples
            return fit_length(crop, self.clip_samples, start)
        # Without a cache only the needed window is decoded: long recordings stay cheap.
        info = _audio.audio_info(path)
        total = int(round(info.frames * self.sample_rate / info.sample_rate))
        if total <= self.clip_samples:
            wave = _audio.load_audio(path, sample_rate=self.sample_rate)
            return fit_length(wave, self.clip_samples, self._offset(clip_index, wave.shape[0]))
        start = self._offset(clip_index, total)
        start = (total - self.clip_samples) // 2 if start is None else start
        wave = _audio.load_audio(
            path,
            sample_rate=self.sample_rate,
            offset=start / self.sample_rate,
            duration=self.clip_samples / self.sample_rate,
        )
        return fit_length(wave, self.clip_samples, 0)

    def load_span(self, path: Path | str, start: float, end: float | None) -> np.ndarray:
        """Samples ``start``-``end`` seconds of ``path`` (to its end for ``None``) at the dataset's
        rate: sliced from the cached whole file, or decoded alone without a cache.

        Shapes: returns (round(end * rate) - round(start * rate),) float32, shorter where the
        file ends first.
        """
        first = int(round(start * self.sample_rate))
        if self.cache is not None:
            stored = self.cache.get(path, self.sample_rate)
            last = len(stored) if end is None else int(round(end * self.sample_rate))
            span = stored.read(first, max(first, last))
        else:
            duration = None if end is None else end - start
            span = _audio.load_audio(path, sample_rate=self.sample_rate, offset=start, duration=duration)
            if end is not None:
                span = span[: int(round(end * self.sample_rate)) - first]
        if span.shape[0] == 0:
            raise DatasetError(
                f"{path}: the span {start:g}-{end if end is not None else 'end'} s lies past the end of the file"
            )
        return span

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``key``: an index, or ``(epoch, index)`` as :class:`~asca_core.train.ddp.EpochSampler`
        yields with ``tag_epoch`` (loader workers that live across epochs get each epoch's crops
        from the index, not from :meth:`set_epoch` on the main process's copy)."""
        if isinstance(key, tuple):
            self.set_epoch(key[0])
            key = key[1]
        i = int(key)
        n = len(self.indices)
        for j in ((i + k) % n for k in range(n)):  # a skipped clip's place goes to the next one
            if j in self._bad:
                continue
            try:
                wave = self.load_wave(j)
            except (AscaError, OSError) as exc:
                self._skip(j, exc)
                continue
            target = multi_hot(self.index.clips[self.indices[j]].labels, self.class_to_idx)
            return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), target
        first, reason = next(iter(self.skipped.items()), ("", "no clips"))
        raise DatasetError(f"{self.index.root}: none of the {n} clip(s) could be read (first {first}: {reason})")

    def _skip(self, j: int, exc: Exception) -> None:
        path = self.index.clips[self.indices[j]].path
        name = self.index.relpath(path)
        text = str(exc) if isinstance(exc, AscaError) else f"cannot read ({getattr(exc, 'strerror', None) or exc})"
        for prefix in (f"{path}: ", f"{path.name}: "):
            text = text[len(prefix) :] if text.startswith(prefix) else text
        self._bad.add(j)
        self.skipped[name] = text
        log.warning("skipped %s: %s", name, text)
        if self.on_skip is not None:
            self.on_skip(name, text)


def class_weights_for_sampling(index: DatasetIndex, indices: Sequence[int]) -> torch.Tensor:
    """Per-item weights for ``WeightedRandomSampler`` that draw every class equally often.

    A clip's weight is the inverse frequency (within ``indices``) of its rarest label.

    Shapes: returns (len(indices),) float64, summing to 1.
    """
    if not indices:
        return torch.zeros(0, dtype=torch.float64)
    freq = Counter(label for i in indices for label in index.clips[i].labels)
    weights = torch.tensor(
        [1.0 / min(freq[label] for label in index.clips[i].labels) for i in indices], dtype=torch.float64
    )
    return weights / weights.sum()
