"""Log-Mel front ends, normalisation and the shaping of model inputs.

Two front ends produce ``spec`` (B, 1, n_mels, frames) in natural-log units:

- :class:`LogMel` / :func:`log_mel`: torchaudio ``MelSpectrogram`` (power 2) then
  ``log(mel + 1e-6)``; batched, on any device. The default for training.
- :func:`kaldi_fbank`: the AST / paper front end (Kaldi-compatible fbank, 25 ms Hamming window,
  10 ms hop, HTK mel scale, no dither); batched, the same numbers as
  ``torchaudio.compliance.kaldi.fbank`` clip by clip.

:class:`FeatureExtractor` turns a config into the exact model input: front end, time fit
(crop/pad to a multiple of 32 frames, or the paper's 224x224 resize) and AST normalisation
``(x - mean) / (2 * std)``::

    extractor = FeatureExtractor(cfg.features)
    spec = extractor(wave)        # (B, T) -> (B, 1, *cfg.features.input_size)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from .config import FeatureConfig
from .errors import ConfigError
from .geometry import INPUT_MULTIPLE, n_fft_for, window_starts

LOG_OFFSET = 1e-6  # added before the log: bounds silence at log(1e-6) instead of -inf
SILENCE = math.log(LOG_OFFSET)  # log-Mel value of digital silence (torchaudio front end)
KALDI_SILENCE = math.log(torch.finfo(torch.float32).eps)  # Kaldi floors energies at float eps
CHUNK_SAMPLES = 1 << 19  # samples per STFT call: batches split so that the spectra stay in cache


def _window_fn(name: str):
    if name == "hamming":
        return torch.hamming_window
    if name == "hann":
        return torch.hann_window
    if name == "povey":  # Kaldi's default: a Hann window raised to 0.85
        return lambda n, **kw: torch.hann_window(n, **kw).pow(0.85)
    raise ConfigError(f"window must be hamming, hann or povey, got {name!r}")


def _as_batch(wave: Tensor) -> Tensor:
    wave = torch.as_tensor(wave)
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2:
        raise ValueError(f"wave must be (T,) or (B, T), got shape {tuple(wave.shape)}")
    return wave if wave.is_floating_point() else wave.float()


def _pad_short(wave: Tensor, n_fft: int) -> Tensor:
    # Centred frames reflect-pad n_fft // 2 samples, which needs more samples than that.
    short = n_fft // 2 + 1 - wave.shape[-1]
    return F.pad(wave, (0, short)) if short > 0 else wave


def frames_for(seconds: float, sample_rate: int, hop_length: int) -> int:
    """Frames of a centred STFT over ``seconds`` of audio (``samples // hop_length + 1``).

    Shapes: none (a count).
    """
    return int(round(seconds * sample_rate)) // int(hop_length) + 1


class LogMel(nn.Module):
    """Batched log-Mel spectrogram: torchaudio ``MelSpectrogram`` (power 2), then ``log(x + 1e-6)``.

    Shapes: wave (T,) or (B, T) -> spec (B, 1, n_mels, T // hop_length + 1).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        win_length: int | None = 400,
        hop_length: int = 160,
        n_mels: int = 128,
        f_min: float = 50.0,
        f_max: float | None = None,
        window: str = "hamming",
    ) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop_length,
            f_min=f_min,
            f_max=f_max,
            n_mels=n_mels,
            window_fn=_window_fn(window),
            power=2.0,
            center=True,
            pad_mode="reflect",
            norm=None,
            mel_scale="htk",
        )

    @classmethod
    def from_config(cls, cfg: FeatureConfig) -> LogMel:
        return cls(
            cfg.sample_rate, cfg.n_fft, cfg.win_length, cfg.hop_length, cfg.n_mels, cfg.f_min, cfg.f_max, cfg.window
        )

    def forward(self, wave: Tensor) -> Tensor:
        wave = _pad_short(_as_batch(wave), self.n_fft).to(self.mel.spectrogram.window.dtype)
        # Features stay float32 under mixed precision: log(x + 1e-6) needs the dynamic range.
        with torch.autocast(device_type=wave.device.type, enabled=False):
            rows = max(1, CHUNK_SAMPLES // wave.shape[-1]) if wave.device.type == "cpu" else wave.shape[0]
            if rows >= wave.shape[0]:
                return self._log_mel(wave)
            return torch.cat([self._log_mel(part) for part in wave.split(rows)])

    def _log_mel(self, wave: Tensor) -> Tensor:
        """The numbers of ``torchaudio.transforms.MelSpectrogram`` then ``log(x + 1e-6)``, with the
        power taken as re² + im² (no square root) and the log in place when nothing needs a gradient.

        Shapes: wave (B, T) -> spec (B, 1, n_mels, frames).
        """
        stft, mel = self.mel.spectrogram, self.mel.mel_scale
        spec = torch.stft(
            wave,
            n_fft=stft.n_fft,
            hop_length=stft.hop_length,
            win_length=stft.win_length,
            window=stft.window,
            center=True,
            pad_mode="reflect",
            onesided=True,
            return_complex=True,
        )
        power = torch.view_as_real(spec).square().sum(-1)  # (B, freqs, frames)
        energies = torch.matmul(mel.fb.transpose(0, 1), power)  # (B, n_mels, frames)
        if torch.is_grad_enabled() and wave.requires_grad:
            return torch.log(energies + LOG_OFFSET).unsqueeze(1)
        return energies.add_(LOG_OFFSET).log_().unsqueeze(1)


def log_mel(
    wave: Tensor,
    sample_rate: int = 16000,
    n_fft: int = 512,
    win_length: int | None = 400,
    hop_length: int = 160,
    n_mels: int = 128,
    f_min: float = 50.0,
    f_max: float | None = None,
    window: str = "hamming",
) -> Tensor:
    """Functional :class:`LogMel`, computed with ``torchaudio.functional`` (same numbers).

    Shapes: wave (T,) or (B, T) -> spec (B, 1, n_mels, T // hop_length + 1).
    """
    wave = _pad_short(_as_batch(wave), n_fft)
    win_length = win_length or n_fft
    win = _window_fn(window)(win_length, dtype=wave.dtype, device=wave.device)
    power = torchaudio.functional.spectrogram(
        wave,
        pad=0,
        window=win,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        power=2.0,
        normalized=False,
        center=True,
        pad_mode="reflect",
        onesided=True,
    )
    fb = torchaudio.functional.melscale_fbanks(
        n_fft // 2 + 1,
        f_min,
        float(f_max if f_max is not None else sample_rate / 2),
        n_mels,
        sample_rate,
        norm=None,
        mel_scale="htk",
    ).to(wave)  # (freqs, n_mels)
    mel = torch.matmul(power.transpose(-1, -2), fb).transpose(-1, -2)  # (B, n_mels, frames)
    return torch.log(mel + LOG_OFFSET).unsqueeze(1)


@functools.lru_cache(maxsize=16)
def _kaldi_mel_banks(n_mels: int, padded: int, sample_rate: float, f_min: float, f_max: float) -> Tensor:
    """Kaldi's triangular mel filters, zero at Nyquist. Shapes: (padded // 2 + 1, n_mels)."""
    banks, _ = torchaudio.compliance.kaldi.get_mel_banks(n_mels, padded, sample_rate, f_min, f_max, 100.0, -500.0, 1.0)
    return F.pad(banks, (0, 1)).transpose(0, 1).contiguous()


def _kaldi_window(name: str, size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    if name == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46, dtype=dtype, device=device)
    if name == "hann":
        return torch.hann_window(size, periodic=False, dtype=dtype, device=device)
    if name == "povey":
        return torch.hann_window(size, periodic=False, dtype=dtype, device=device).pow(0.85)
    raise ConfigError(f"window must be hamming, hann or povey, got {name!r}")


def kaldi_fbank(
    wave: Tensor,
    sample_rate: int,
    n_mels: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    f_min: float = 20.0,
    f_max: float | None = None,
    window: str = "hamming",
) -> Tensor:
    """The AST front end: Kaldi fbank with HTK-compatible output, no dither, no energy term.

    Frames do not run past the ends (``snip_edges``): 1 s at 16 kHz gives 98 frames. Each frame
    loses its mean, is pre-emphasised (0.97), windowed and zero-padded to a power of two; natural-log
    mel energies, floored at float32 eps. A batch is computed at once, with the numbers
    ``torchaudio.compliance.kaldi.fbank`` gives for each clip.

    Shapes: wave (T,) -> (n_mels, frames); wave (B, T) -> (B, n_mels, frames).
    """
    wave = torch.as_tensor(wave)
    if wave.dim() not in (1, 2):
        raise ValueError(f"kaldi_fbank takes (T,) or (B, T), got shape {tuple(wave.shape)}")
    wave = wave if wave.is_floating_point() else wave.float()
    batch = wave if wave.dim() == 2 else wave.unsqueeze(0)
    size = int(sample_rate * frame_length_ms * 0.001)  # Kaldi's own rounding, as torchaudio's
    shift = int(sample_rate * frame_shift_ms * 0.001)
    if size < 2 or shift < 1:
        raise ConfigError(f"a Kaldi frame of {frame_length_ms:g} ms every {frame_shift_ms:g} ms is under two samples")
    if batch.shape[-1] < size:  # at least one frame, padded with silence
        batch = F.pad(batch, (0, size - batch.shape[-1]))
    frames = batch.unfold(-1, size, shift)  # (B, m, size), a view
    frames = frames - frames.mean(dim=-1, keepdim=True)
    emphasised = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = (frames - 0.97 * emphasised) * _kaldi_window(window, size, frames.dtype, frames.device)
    padded = n_fft_for(size)
    power = torch.view_as_real(torch.fft.rfft(frames, n=padded)).square().sum(-1)  # (B, m, padded // 2 + 1)
    high = 0.0 if f_max is None else float(f_max)
    banks = _kaldi_mel_banks(int(n_mels), padded, float(sample_rate), float(f_min), high)
    energies = torch.matmul(power, banks.to(power))  # (B, m, n_mels)
    out = energies.clamp_min(torch.finfo(energies.dtype).eps).log().transpose(-1, -2)
    return out if wave.dim() == 2 else out[0]


def compute_norm_stats(specs: Iterable[Tensor]) -> tuple[float, float]:
    """Mean and standard deviation over every value of every spectrogram (streamed, float64).

    Shapes: each spec any shape -> (mean, std) floats.
    """
    count, total, squares = 0, 0.0, 0.0
    for spec in specs:
        spec = torch.as_tensor(spec).detach().double()
        count += spec.numel()
        total += spec.sum().item()
        squares += spec.square().sum().item()
    if count == 0:
        raise ValueError("compute_norm_stats needs at least one non-empty spectrogram")
    mean = total / count
    std = math.sqrt(max(squares / count - mean * mean, 0.0))
    return mean, max(std, 1e-8)


def normalize(spec: Tensor, mean: float, std: float) -> Tensor:
    """AST normalisation ``(spec - mean) / (2 * std)``: inputs land roughly in [-1, 1].

    Shapes: spec any shape -> same shape.
    """
    return (spec - mean) / (2.0 * std)


def fit_time(
    spec: Tensor, frames: int, mode: str = "center", generator: torch.Generator | None = None, value: float = SILENCE
) -> Tensor:
    """Crop or pad the last (time) axis to ``frames``.

    ``center`` crops/pads symmetrically, ``start`` keeps the beginning and pads at the end,
    ``random`` picks the crop start or pad split with ``generator``. Padding is ``value`` (silence).

    Shapes: (..., F, T) -> (..., F, frames).
    """
    if mode not in ("center", "random", "start"):
        raise ValueError(f"fit_time mode must be center, random or start, got {mode!r}")
    excess = spec.shape[-1] - frames
    if excess == 0:
        return spec
    if mode == "start":
        first = 0
    elif mode == "center":
        first = abs(excess) // 2
    else:
        first = int(torch.randint(0, abs(excess) + 1, (1,), generator=generator))
    if excess > 0:
        return spec[..., first : first + frames]
    return F.pad(spec, (first, -excess - first), value=value)


def pad_to_multiple(spec: Tensor, multiple: int = INPUT_MULTIPLE, value: float = SILENCE) -> Tensor:
    """Pad frequency (end) and time (end) up to multiples of ``multiple`` with ``value`` (the front
    end's silence by default, before normalisation; the model itself zero-pads its normalised input
    with :func:`asca_core.models.blocks.zero_pad_to_multiple`).

    Shapes: (..., F, T) -> (..., ceil(F / m) * m, ceil(T / m) * m).
    """
    pad_f = -spec.shape[-2] % multiple
    pad_t = -spec.shape[-1] % multiple
    if pad_f == 0 and pad_t == 0:
        return spec
    return F.pad(spec, (0, pad_t, 0, pad_f), value=value)


def resize_224(spec: Tensor) -> Tensor:
    """The paper's input shape: bilinear resize of both axes to 224.

    Shapes: (B, C, F, T) -> (B, C, 224, 224).
    """
    if spec.dim() != 4:
        raise ValueError(f"resize_224 takes (B, C, F, T), got shape {tuple(spec.shape)}")
    return F.interpolate(spec, size=(224, 224), mode="bilinear", align_corners=False)


def sliding_windows(n_samples: int, sample_rate: int, window: float, hop: float) -> list[tuple[int, int]]:
    """Sample ranges ``[start, end)`` of fixed windows covering a recording.

    The last window may run past ``n_samples`` (pad it); a recording shorter than one window
    gives one window. Matches :func:`asca_core.audio.iter_windows`.

    Shapes: none (a list of index pairs).
    """
    win, step = int(round(window * sample_rate)), int(round(hop * sample_rate))
    if win < 1 or step < 1:
        raise ConfigError(f"window ({window} s) and hop ({hop} s) must be at least one sample at {sample_rate} Hz")
    return [(start, start + win) for start in window_starts(int(n_samples), win, step)]


class FeatureExtractor(nn.Module):
    """Config-driven model input: front end, time fit, then normalisation.

    ``crop``: time centre-cropped or padded with silence to ``cfg.frames``, mel axis padded to a
    multiple of 32. ``resize224``: bilinear resize to 224x224. ``(x - mean) / (2 * std)`` when
    ``cfg.norm_mean`` and ``cfg.norm_std`` are set.

    Shapes: wave (T,) or (B, T) -> spec (B, 1, *cfg.input_size).
    """

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.logmel = LogMel.from_config(cfg) if cfg.frontend == "torchaudio" else None
        self.silence = SILENCE if cfg.frontend == "torchaudio" else KALDI_SILENCE

    @property
    def input_size(self) -> tuple[int, int]:
        return self.cfg.input_size

    def spectrogram(self, wave: Tensor) -> Tensor:
        """Front end only, before shaping and normalisation.

        Shapes: wave (T,) or (B, T) -> spec (B, 1, n_mels, frames).
        """
        if self.logmel is not None:
            return self.logmel(wave)
        cfg = self.cfg
        spec = kaldi_fbank(
            _as_batch(wave),
            cfg.sample_rate,
            cfg.n_mels,
            1000.0 * cfg.win_length / cfg.sample_rate,
            1000.0 * cfg.hop_length / cfg.sample_rate,
            cfg.f_min,
            cfg.f_max,
            cfg.window,
        )
        return spec.unsqueeze(1)

    def forward(self, wave: Tensor) -> Tensor:
        with torch.autocast(device_type=torch.as_tensor(wave).device.type, enabled=False):
            spec = self.spectrogram(wave)
        if self.cfg.shape == "resize224":
            spec = resize_224(spec)
        else:
            spec = fit_time(spec, self.cfg.frames, "center", value=self.silence)
            spec = pad_to_multiple(spec, INPUT_MULTIPLE, value=self.silence)
        if self.cfg.norm_mean is not None and self.cfg.norm_std is not None:
            spec = normalize(spec, self.cfg.norm_mean, self.cfg.norm_std)
        return spec
