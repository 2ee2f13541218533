"""Where things sit: a short clip in its window, mel bins in Hz, model stages on the input grid.

Plain NumPy, no torch, so the library, the app's figures and the notebooks share one answer::

    fit_length(wave, 48000)              # a 1 s clip centred in a 3 s window, as training pads it
    mel_frequencies(128, 50.0, 8000.0)   # (128,) Hz, HTK mel scale, as both front ends
    n_fft_for(400)                       # 512: the next power of two that holds the window
    stage_strides()                      # {"S0": 2, "S1": 4, "S2": 8, "S3": 16, "S4": 32}
"""

from __future__ import annotations

import math

import numpy as np

STEM_STRIDE = 2  # S0, the two-conv stem
STAGE_STRIDES = (4, 8, 16, 32)  # S1..S4, each stage halving the map in its first block
INPUT_MULTIPLE = STAGE_STRIDES[-1]  # model inputs are padded up to a multiple of the last stride


# -- samples ------------------------------------------------------------------------------------
def pad_offset(length: int, n: int) -> int:
    """Where a clip of ``length`` samples starts inside a window of ``n`` (centred; 0 if it fills it)."""
    return max(0, n - length) // 2


def fit_length(wave: np.ndarray, n: int, start: int | None = None) -> np.ndarray:
    """Crop or zero-pad ``wave`` to ``n`` samples, centred unless ``start`` is given.

    ``start`` is the crop start (longer waves) or the pad offset (shorter waves), clamped to the
    room there is. Training draws it at random; evaluation, predict and every view of one clip
    leave it ``None``, so a short clip sits in the middle of its window wherever it is shown.

    Shapes: (T,) -> (n,).
    """
    t = wave.shape[0]
    if t == n:
        return wave
    if t > n:
        first, last = crop_range(t, n, start)
        return wave[first:last]
    first = _place(n - t, start)
    out = np.zeros(n, dtype=np.float32)
    out[first : first + t] = wave
    return out


def crop_range(t: int, n: int, start: int | None = None) -> tuple[int, int]:
    """The samples ``[first, last)`` of a ``t``-sample wave that :func:`fit_length` keeps for ``n``
    (all of them when ``t <= n``): what a reader of a stored wave needs to fetch."""
    if t <= n:
        return 0, t
    first = _place(t - n, start)
    return first, first + n


def _place(room: int, start: int | None) -> int:
    """A crop start or pad offset within ``room``: centred for ``None``, else ``start`` clamped."""
    return room // 2 if start is None else int(min(max(start, 0), room))


def centre_pad(wave: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad a wave shorter than ``n`` samples on both sides (:func:`fit_length`); longer waves
    are returned as they are, for the front end to crop.

    Shapes: (T,) -> (max(T, n),).
    """
    return wave if wave.shape[0] >= n else fit_length(wave, n)


# -- windows over a signal ---
def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Start indices of fixed windows covering ``n_samples`` (the last one may be partial).

    A signal no longer than one window gives one window; otherwise windows step by ``hop`` until
    one reaches the end.
    """
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive sample counts, got {window}, {hop}")
    if n_samples <= window:
        return [0]
    return [k * hop for k in range(1 + math.ceil((n_samples - window) / hop))]


# -- frequency ----------------------------------------------------------------------------------
def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_position_to_hz(n_mels: int, f_min: float, f_max: float, bins: np.ndarray | float) -> np.ndarray:
    """Frequency (Hz) at fractional mel-bin positions (bin ``i`` is the centre of filter ``i``),
    extrapolating the mel scale past both ends.

    Shapes: bins (...) -> (...).
    """
    lo, hi = hz_to_mel(f_min), hz_to_mel(f_max)
    step = (hi - lo) / (n_mels + 1)
    return mel_to_hz(lo + (np.asarray(bins, dtype=np.float64) + 1.0) * step)


def mel_frequencies(n_mels: int, f_min: float = 0.0, f_max: float = 8000.0) -> np.ndarray:
    """Centre frequency (Hz) of every mel bin (HTK mel scale, as torchaudio and Kaldi use).

    Shapes: returns (n_mels,).
    """
    return mel_position_to_hz(n_mels, f_min, f_max, np.arange(n_mels))


def n_fft_for(win_length: int) -> int:
    """The FFT size for a window: the smallest power of two that holds ``win_length`` samples."""
    if int(win_length) < 1:
        raise ValueError(f"win_length must be >= 1, got {win_length}")
    return 1 << (int(win_length) - 1).bit_length()


# -- model grid ---------------------------------------------------------------------------------
def stage_strides() -> dict[str, int]:
    """Cumulative stride of every CoAtNet stage: the stem S0 and S1..S4."""
    return {"S0": STEM_STRIDE, **{f"S{i}": s for i, s in enumerate(STAGE_STRIDES, start=1)}}
