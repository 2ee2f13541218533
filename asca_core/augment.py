"""Batched training augmentation: the paper's mixup, masking and background noise, plus gain/shift.

Every transform is an ``nn.Module`` that acts on a whole batch on the batch's device and is a
strict no-op in eval mode (``module.eval()``), the way torchaudio's masking transforms should be.
Randomness comes only from the ``torch.Generator`` passed to ``forward`` (a CPU generator; the
small parameter tensors are drawn on CPU and moved; generated noise is drawn on the batch's device
from a generator seeded by that stream, for the noisy rows only), so a training run derives one
generator per step from ``(seed, epoch, step)`` and the stream is identical after a resume or for
another model on the same kind of device::

    aug = TrainAugment(cfg.augment, sample_rate=16000).to(device)
    gen = step_generator(seed, epoch, step)
    spec, target = aug(wave, target, features, gen)  # the whole chain below, in this order

    wave = aug.wave(wave, gen)                         # gain, time shift, background noise
    wave, target = aug.mixup_wave(wave, target, gen)   # mixup of waveforms (mixup_domain=waveform)
    spec = aug.spec(features(wave), gen)               # time and frequency masks
    spec, target = aug.mixup(spec, target, gen)        # mixup of log-Mel inputs (mixup_domain=logmel)

Mixup acts in one domain, ``augment.mixup_domain``: ``logmel`` blends normalised model inputs
(Zhang et al. 2018, as AST and PSLA); ``waveform`` blends the waves before the front end, as the
between-class learning the ASCA paper cites (Tokozume et al. 2018) does, without that paper's
sound-pressure-level weighting: the wave is ``lam * a + (1 - lam) * b``, its target the same blend.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import AugmentConfig
from .errors import ConfigError

_NOISE_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


def step_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer keys such as ``(seed, epoch, step, rank)``.

    The keys are hashed, so neighbouring steps get unrelated streams.
    """
    digest = hashlib.blake2b(repr(tuple(int(k) for k in keys)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


# ----------------------------------------------------------------------------------- functional
def random_gain(wave: Tensor, gain_db: Tensor) -> Tensor:
    """Scale each row by ``gain_db`` decibels.

    Shapes: wave (B, T), gain_db (B,) -> (B, T).
    """
    return wave * (10.0 ** (gain_db.to(wave) / 20.0)).unsqueeze(-1)


def circular_shift(wave: Tensor, shift: Tensor) -> Tensor:
    """Roll each row right by its own number of samples (negative = left).

    Shapes: wave (B, T), shift (B,) integer -> (B, T).
    """
    length = wave.shape[-1]
    index = (
        torch.arange(length, device=wave.device).unsqueeze(0) - shift.to(wave.device).long().unsqueeze(1)
    ) % length  # (B, T)
    return wave.gather(-1, index)


def add_noise_at_snr(wave: Tensor, noise: Tensor, snr_db: Tensor) -> Tensor:
    """Add ``noise`` scaled so that each row's signal-to-noise ratio is ``snr_db``.

    Silent rows (no signal power) are left unchanged: an SNR is undefined for them.
    Shapes: wave (B, T), noise (B, T), snr_db (B,) -> (B, T).
    """
    signal_power = wave.pow(2).mean(-1)
    noise_power = noise.pow(2).mean(-1).clamp_min(1e-12)
    scale = torch.sqrt(signal_power / (noise_power * 10.0 ** (snr_db.to(wave) / 10.0)))
    scale = torch.where(signal_power > 0, scale, torch.zeros_like(scale))
    return wave + noise * scale.unsqueeze(-1)


def colored_noise(
    batch: int,
    length: int,
    exponent: Tensor,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Gaussian noise with a ``1/f**exponent`` power spectrum (0 white, 1 pink, 2 brown).

    Drawn on ``device`` (default: the generator's device, else the CPU) with ``generator``.
    Shapes: exponent (B,) -> (B, length), unit variance per row.
    """
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    white = torch.randn(batch, length, generator=generator, device=device)
    exponent = exponent.to(device)
    spectrum = torch.fft.rfft(white, dim=-1)
    freqs = torch.fft.rfftfreq(length, device=device).clamp_min(1.0 / length)  # avoid the DC singularity
    spectrum = spectrum * freqs.unsqueeze(0).pow(-exponent.unsqueeze(1) / 2.0)
    noise = torch.fft.irfft(spectrum, n=length, dim=-1)
    noise = noise - noise.mean(-1, keepdim=True)
    return noise / noise.std(-1, keepdim=True).clamp_min(1e-8)


def band_mask(size: int, starts: Tensor, widths: Tensor) -> Tensor:
    """Boolean mask over ``size`` positions covering ``[start, start + width)`` bands.

    Shapes: starts, widths (B, M) -> (B, size); True where masked.
    """
    pos = torch.arange(size, device=starts.device).view(1, 1, size)
    inside = (pos >= starts.unsqueeze(-1)) & (pos < (starts + widths).unsqueeze(-1))  # (B, M, size)
    return inside.any(dim=1)


def _draw_bands(
    batch: int, count: int, max_width: int, size: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    max_width = min(max_width, size)
    widths = torch.randint(0, max_width + 1, (batch, count), generator=generator)
    # start uniform in [0, size - width], drawn as a fraction to stay batched
    starts = (torch.rand(batch, count, generator=generator) * (size - widths + 1)).long()
    return starts, widths


def mixup(spec: Tensor, target: Tensor, lam: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """Blend each example with ``perm`` partner: ``lam * x + (1 - lam) * x[perm]``, labels too.

    Shapes: spec (B, ...), target (B, K), lam (B,), perm (B,) -> same shapes.
    """
    lam = lam.to(spec.device)
    perm = perm.to(spec.device)
    lam_x = lam.view(-1, *([1] * (spec.dim() - 1))).to(spec.dtype)
    lam_y = lam.view(-1, 1).to(target.dtype)
    return (lam_x * spec + (1 - lam_x) * spec[perm], lam_y * target + (1 - lam_y) * target[perm])


# ----------------------------------------------------------------------------------- modules
class WaveAugment(nn.Module):
    """Random gain, circular time shift and background noise at a random SNR.

    Noise comes from ``noise_bank`` (1-D recordings at the training rate, random crops, tiled when
    short) or, without a bank, from generated coloured noise (white to brown), and is made only for
    the ``noise_prob`` share of rows that receive it, on the wave's device.
    Shapes: wave (B, T) -> (B, T).
    """

    def __init__(self, cfg: AugmentConfig, noise_bank: Sequence[Tensor] = ()) -> None:
        super().__init__()
        self.cfg = cfg
        self.noise_bank = [n.float().flatten() for n in noise_bank if n.numel() > 0]

    def forward(self, wave: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not self.training:
            return wave
        cfg = self.cfg
        batch, length = wave.shape
        if cfg.gain_db > 0:
            wave = random_gain(wave, _uniform(batch, -cfg.gain_db, cfg.gain_db, generator).to(wave.device))
        if cfg.time_shift > 0:
            limit = int(cfg.time_shift * length)
            shift = torch.randint(-limit, limit + 1, (batch,), generator=generator)
            wave = circular_shift(wave, shift)
        if cfg.noise_prob > 0:
            # every per-row parameter is drawn for the whole batch and the noise itself from a
            # generator seeded by this stream, so the stream never depends on how the coins fell
            chosen = torch.rand(batch, generator=generator) < cfg.noise_prob
            snr = _uniform(batch, cfg.snr_db_min, cfg.snr_db_max, generator)
            source = self._noise_sources(batch, generator)
            noise_seed = int(torch.randint(0, 1 << 62, (1,), generator=generator))
            if chosen.any():
                rows = chosen.nonzero().squeeze(1)
                noise = self._noise(source, rows, length, noise_seed, wave.device).to(wave.dtype)
                rows = rows.to(wave.device)
                noisy = add_noise_at_snr(wave.index_select(0, rows), noise, snr[chosen])
                wave = wave.index_copy(0, rows, noisy)
        return wave

    def _noise_sources(self, batch: int, generator: torch.Generator | None) -> tuple[Tensor, ...]:
        """Per-row noise parameters for the whole batch: the colour exponent, or bank pick and offset."""
        if not self.noise_bank:
            return (_uniform(batch, 0.0, 2.0, generator),)
        picks = torch.randint(0, len(self.noise_bank), (batch,), generator=generator)
        return picks, torch.rand(batch, generator=generator)

    def _noise(self, source: tuple[Tensor, ...], rows: Tensor, length: int, seed: int, device: torch.device) -> Tensor:
        """Noise for the chosen ``rows`` only, (len(rows), length) on ``device``."""
        if not self.noise_bank:
            noise_gen = torch.Generator(device=device).manual_seed(seed)
            return colored_noise(len(rows), length, source[0][rows].to(device), noise_gen, device=device)
        picks, offsets = source
        crops = []
        for pick, offset in zip(picks[rows].tolist(), offsets[rows].tolist()):
            recording = self.noise_bank[pick]
            if recording.numel() < length:
                recording = recording.repeat(math.ceil(length / recording.numel()) + 1)
            start = int(offset * (recording.numel() - length))
            crops.append(recording[start : start + length])
        return torch.stack(crops).to(device, non_blocking=True)


class SpecAugment(nn.Module):
    """SpecAugment-style time and frequency masks (masked cells set to ``fill``, 0 = the mean
    of normalised features).

    Shapes: spec (B, C, F, T) -> (B, C, F, T).
    """

    def __init__(self, cfg: AugmentConfig, fill: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.fill = fill

    def forward(self, spec: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not self.training:
            return spec
        cfg = self.cfg
        batch, _, n_freq, n_time = spec.shape
        mask = torch.zeros(batch, n_freq, n_time, dtype=torch.bool, device=spec.device)
        if cfg.time_masks and cfg.time_mask_width:
            starts, widths = _draw_bands(batch, cfg.time_masks, cfg.time_mask_width, n_time, generator)
            mask |= band_mask(n_time, starts.to(spec.device), widths.to(spec.device)).unsqueeze(1)
        if cfg.freq_masks and cfg.freq_mask_width:
            starts, widths = _draw_bands(batch, cfg.freq_masks, cfg.freq_mask_width, n_freq, generator)
            mask |= band_mask(n_freq, starts.to(spec.device), widths.to(spec.device)).unsqueeze(2)
        return spec.masked_fill(mask.unsqueeze(1), self.fill)


class Mixup(nn.Module):
    """Mixup with probability ``mixup_prob`` per example, ``lam ~ Beta(alpha, alpha)``.

    ``domain`` is where this instance sits in the chain (``"logmel"`` after the front end,
    ``"waveform"`` before it); it mixes only when ``cfg.mixup_domain`` names that domain, so one of
    the two instances of :class:`TrainAugment` acts and the other draws nothing.

    Shapes: x (B, ...) (waves (B, T) or specs (B, 1, F, T)), target (B, K) -> same shapes.
    """

    def __init__(self, cfg: AugmentConfig, domain: str = "logmel") -> None:
        super().__init__()
        self.cfg = cfg
        self.domain = domain

    def forward(self, spec: Tensor, target: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if (
            not self.training
            or not self.cfg.mixup
            or self.cfg.mixup_prob <= 0
            or spec.shape[0] < 2
            or getattr(self.cfg, "mixup_domain", "logmel") != self.domain
        ):
            return spec, target
        batch = spec.shape[0]
        lam = sample_beta(batch, self.cfg.mixup_alpha, generator)
        lam = torch.where(torch.rand(batch, generator=generator) < self.cfg.mixup_prob, lam, torch.ones_like(lam))
        perm = torch.randperm(batch, generator=generator)
        return mixup(spec, target, lam, perm)


def sample_beta(n: int, alpha: float, generator: torch.Generator | None = None) -> Tensor:
    """``n`` draws from Beta(alpha, alpha) using only ``generator``.

    torch's Beta/Gamma samplers take no generator; Beta(a, a) is the ratio of two Gammas and a
    Gamma(a) draw is Gamma(a + 1) * U**(1/a), with Gamma(a + 1) (shape >= 1) from
    Marsaglia-Tsang's method, vectorised with rejection rounds.
    """
    g1 = _gamma(n, alpha, generator)
    g2 = _gamma(n, alpha, generator)
    return (g1 / (g1 + g2).clamp_min(1e-12)).clamp(0.0, 1.0)


def _gamma(n: int, shape: float, generator: torch.Generator | None) -> Tensor:
    boost = shape < 1.0
    a = shape + 1.0 if boost else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64)
    todo = torch.arange(n)
    for _ in range(64):  # acceptance is > 95% per round
        if todo.numel() == 0:
            break
        x = torch.randn(todo.numel(), generator=generator, dtype=torch.float64)
        u = torch.rand(todo.numel(), generator=generator, dtype=torch.float64)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-300)) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    out[todo] = a  # practically unreachable; the mean keeps the draw finite
    if boost:
        out = out * torch.rand(n, generator=generator, dtype=torch.float64) ** (1.0 / shape)
    return out.float()


class TrainAugment(nn.Module):
    """The augmentation stages of a training step, switchable through the config.

    ``wave`` acts on raw audio before the front end, ``mixup_wave`` mixes waves and targets (only
    with ``mixup_domain="waveform"``), ``spec`` acts on the model input after normalisation,
    ``mixup`` mixes model inputs and targets (only with ``mixup_domain="logmel"``). Calling the
    module runs them in that order around the front end. All are no-ops in eval mode.

    Shapes: forward(wave (B, S), target (B, K), features, generator) -> (spec (B, 1, F, T), target (B, K)).
    """

    def __init__(self, cfg: AugmentConfig, noise_bank: Sequence[Tensor] = ()) -> None:
        super().__init__()
        self.cfg = cfg
        self.wave = WaveAugment(cfg, noise_bank)
        self.mixup_wave = Mixup(cfg, "waveform")
        self.spec = SpecAugment(cfg)
        self.mixup = Mixup(cfg, "logmel")

    def forward(
        self,
        wave: Tensor,
        target: Tensor,
        features: Callable[[Tensor], Tensor],
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        wave = self.wave(wave, generator)
        wave, target = self.mixup_wave(wave, target, generator)
        spec = self.spec(features(wave), generator)
        return self.mixup(spec, target, generator)

    @classmethod
    def from_config(
        cls,
        cfg: AugmentConfig,
        sample_rate: int,
        max_noise_files: int = 200,
        max_noise_seconds: float = 30.0,
        noise_files: Sequence[Path] = (),
    ) -> TrainAugment:
        """Build the augmenter, loading ``cfg.noise_dir`` (if set) and ``noise_files`` at ``sample_rate``.

        ``noise_files`` are the training clips of ``cfg.noise_class``, chosen by the trainer.
        """
        bank: list[Tensor] = []
        if cfg.noise_prob > 0:
            if cfg.noise_dir:
                bank = load_noise_bank(cfg.noise_dir, sample_rate, max_noise_files, max_noise_seconds)
            if noise_files:
                bank += decode_noise_files(noise_files, sample_rate, max_noise_files, max_noise_seconds)
        return cls(cfg, bank)


def load_noise_bank(
    folder: str | Path, sample_rate: int, max_files: int = 200, max_seconds: float = 30.0
) -> list[Tensor]:
    """Decode up to ``max_files`` recordings of ``folder`` (first ``max_seconds`` each)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"augment.noise_dir is not a folder: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _NOISE_EXTENSIONS)[:max_files]
    real_root = root.resolve()
    for p in files:  # compared after following symlinks: a link must not read files elsewhere
        if real_root not in p.resolve().parents:
            raise ConfigError(f"augment.noise_dir: {p} leads outside {root} (symlink to {p.resolve()})")
    if not files:
        raise ConfigError(f"augment.noise_dir holds no audio files: {root}")
    bank = decode_noise_files(files, sample_rate, max_files, max_seconds)
    if not bank:
        raise ConfigError(f"augment.noise_dir holds only silent or empty recordings: {root}")
    return bank


def decode_noise_files(
    files: Sequence[Path], sample_rate: int, max_files: int = 200, max_seconds: float = 30.0
) -> list[Tensor]:
    """Up to ``max_files`` of ``files`` (spread over the list) decoded at ``sample_rate``; silent ones dropped."""
    from .audio import load_audio  # decoding lives in one place

    files = list(files)
    if len(files) > max_files:
        step = len(files) / max_files
        files = [files[int(i * step)] for i in range(max_files)]
    bank = [torch.from_numpy(load_audio(p, sample_rate, duration=max_seconds).copy()) for p in files]
    return [b for b in bank if b.numel() > 0 and float(b.abs().max()) > 0]


__all__ = [
    "Mixup",
    "SpecAugment",
    "TrainAugment",
    "WaveAugment",
    "add_noise_at_snr",
    "band_mask",
    "circular_shift",
    "colored_noise",
    "decode_noise_files",
    "load_noise_bank",
    "mixup",
    "random_gain",
    "sample_beta",
    "step_generator",
]
