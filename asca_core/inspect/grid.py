"""Where a spectrogram cell sits: mel bins in Hz, frames in seconds, model input against front end.

The model input of one window is the front end's frames, centre-cropped or padded in time
(``crop``) or resized to 224 x 224 (``resize224``), with the mel axis padded up to a multiple of
32. :func:`window_grid` says how one window's raw frames sit inside that input, so attributions
and attention maps on the model grid can be cropped back to the frames the model saw and placed
in seconds and Hz of the recording.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from .. import geometry
from ..config import FeatureConfig
from ..features import FeatureExtractor


def _f_max(cfg: FeatureConfig) -> float:
    return float(cfg.f_max) if cfg.f_max is not None else cfg.sample_rate / 2


def mel_frequencies(cfg: FeatureConfig) -> np.ndarray:
    """Centre frequency (Hz) of every mel bin of a feature config (HTK mel scale, as both front ends).

    Shapes: returns (n_mels,).
    """
    return geometry.mel_frequencies(cfg.n_mels, cfg.f_min, _f_max(cfg))


def mel_position_to_hz(cfg: FeatureConfig, bins: np.ndarray) -> np.ndarray:
    """Frequency (Hz) at fractional mel-bin positions of a feature config, extrapolating the mel
    scale past the ends (padded rows of the model input).

    Shapes: bins (...) -> (...).
    """
    return geometry.mel_position_to_hz(cfg.n_mels, cfg.f_min, _f_max(cfg), bins)


def frame_times(cfg: FeatureConfig, n_frames: int, first: int = 0) -> np.ndarray:
    """Centre time (s) of STFT frames ``first .. first + n_frames - 1`` of a feature config.

    The torchaudio front end centres frame k on sample ``k * hop``; Kaldi frames start at
    ``k * hop`` and are centred half a window later.

    Shapes: returns (n_frames,).
    """
    k = np.arange(first, first + n_frames, dtype=np.float64)
    offset = 0.0 if cfg.frontend == "torchaudio" else cfg.win_length / 2
    return (k * cfg.hop_length + offset) / cfg.sample_rate


def total_frames(cfg: FeatureConfig, n_samples: int) -> int:
    """Front-end frames of a recording of ``n_samples`` samples."""
    if cfg.frontend == "torchaudio":
        return n_samples // cfg.hop_length + 1
    return max(1, 1 + (n_samples - cfg.win_length) // cfg.hop_length)


@dataclass(frozen=True)
class WindowGrid:
    """How one window's raw front-end frames sit inside the model input."""

    n_mels: int
    raw_frames: int  # front-end frames of one window
    model_frames: int  # time axis of the model input
    offset: int  # model frame i shows raw frame i + offset (crop mode)
    resize: bool  # resize224: the model input is a bilinear resize of the raw spectrogram

    @property
    def raw_span(self) -> tuple[int, int]:
        """Raw frames ``[lo, hi)`` the model sees."""
        if self.resize:
            return 0, self.raw_frames
        return max(0, self.offset), min(self.raw_frames, self.offset + self.model_frames)

    @property
    def model_span(self) -> tuple[int, int]:
        """Model-input frames ``[lo, hi)`` that show :attr:`raw_span`."""
        lo, hi = self.raw_span
        return lo - self.offset, hi - self.offset


def window_grid(extractor: FeatureExtractor, window_samples: int) -> WindowGrid:
    """Where the raw frames of a window of ``window_samples`` samples sit in the model input.

    In ``crop`` mode the front end's centre crop (``fit_time(..., "center")``) drops
    ``excess // 2`` frames at the start, or pads ``-excess // 2`` there; in ``resize224`` mode the
    whole window is resized onto 224 frames.
    """
    cfg = extractor.cfg
    raw = total_frames(cfg, window_samples)
    if cfg.shape == "resize224":
        return WindowGrid(cfg.n_mels, raw, 224, 0, True)
    frames = cfg.frames
    excess = raw - frames
    offset = excess // 2 if excess >= 0 else -((-excess) // 2)
    return WindowGrid(cfg.n_mels, raw, frames, offset, False)


def to_raw(values: Tensor, grid: WindowGrid) -> Tensor:
    """Model-input grid to the raw frames the model saw. Shapes: (F', T') -> (n_mels, hi - lo)."""
    if grid.resize:
        return F.interpolate(
            values[None, None], size=(grid.n_mels, grid.raw_frames), mode="bilinear", align_corners=False
        )[0, 0]
    lo, hi = grid.model_span
    return values[: grid.n_mels, lo:hi]


__all__ = [
    "WindowGrid",
    "frame_times",
    "mel_frequencies",
    "mel_position_to_hz",
    "to_raw",
    "total_frames",
    "window_grid",
]
