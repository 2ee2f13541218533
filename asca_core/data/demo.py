"""Built-in synthetic dataset: bird-like calls over wind, rain and pink-noise backgrounds.

Each clip holds one call of one of :data:`DEMO_CLASSES`, placed at a random time, with per-clip
pitch, duration, envelope and harmonics, mixed into a background at an SNR of 0-20 dB. The
manifest records where the call lies (``call_start``, ``call_end`` in seconds; ``f_low``,
``f_high`` in Hz), so attribution methods can be checked against the truth.

Generation is NumPy only, deterministic for a seed (byte-identical files) and takes a few
seconds for the default 320 clips::

    labels_csv = make_demo_dataset("demo_data", clips_per_class=40, seed=0)
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import wave as wavfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError

DEMO_CLASSES: list[str] = [
    "rising_chirp",  # one upward sweep
    "falling_chirp",  # one downward sweep
    "trill",  # fast train of short tonal notes
    "harmonic_whistle",  # steady tone, rich harmonics, slight vibrato
    "two_note",  # two steady notes at different pitches with a gap
    "buzz",  # band of energy with a low pulse rate (many close harmonics)
    "warble",  # pure tone with deep, irregular frequency modulation
    "click_train",  # regular broadband clicks
]
BACKGROUNDS = ("wind", "rain", "pink")
DEMO_VERSION = "demo-v1"  # bump when the generator changes what a seed produces
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}
COLUMNS = ("filename", "label", "split", "call_start", "call_end", "f_low", "f_high", "background", "snr_db")


@dataclass
class _Call:
    wave: np.ndarray  # (n,) float, the call only
    f_low: float
    f_high: float


# ------------------------------------------------------------------------------ call synthesis


def _envelope(n: int, rng: np.random.Generator) -> np.ndarray:
    """Raised-cosine attack and release of random lengths, optionally a decaying body."""
    attack = max(1, int(n * rng.uniform(0.04, 0.3)))
    release = max(1, int(n * rng.uniform(0.1, 0.4)))
    env = np.ones(n)
    env[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
    env[n - release :] *= 0.5 + 0.5 * np.cos(np.pi * np.arange(release) / release)
    if rng.random() < 0.5:
        env *= np.exp(-np.linspace(0.0, rng.uniform(0.3, 1.5), n))
    return env


def _tone(freq: np.ndarray, sr: int, harmonics: list[float], rng: np.random.Generator) -> np.ndarray:
    """Sum of harmonics following the instantaneous frequency ``freq`` (Hz per sample)."""
    phase = 2 * np.pi * np.cumsum(freq) / sr + rng.uniform(0, 2 * np.pi)
    out = np.sin(phase)
    for h, amp in enumerate(harmonics, start=2):
        alias_free = (h * freq) < 0.47 * sr  # drop a harmonic where it would fold over Nyquist
        out += amp * alias_free * np.sin(h * phase)
    return out


def _band_filter(x: np.ndarray, sr: int, centre: float, width: float) -> np.ndarray:
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1 / sr)
    spec *= np.exp(-0.5 * ((f - centre) / (width / 2.355)) ** 2)  # Gaussian, width = FWHM
    return np.fft.irfft(spec, n=x.size)


def _f_max(sr: int) -> float:
    return min(7000.0, 0.44 * sr)


def _rising_chirp(sr: int, rng: np.random.Generator) -> _Call:
    n = int(sr * rng.uniform(0.3, 0.9))
    f0 = rng.uniform(1500, 4000)
    f1 = min(f0 * rng.uniform(1.6, 2.5), _f_max(sr))
    t = np.linspace(0, 1, n) ** rng.uniform(0.6, 1.6)  # sweep curvature
    freq = f0 * (f1 / f0) ** t
    wave = _tone(freq, sr, [rng.uniform(0, 0.3)], rng) * _envelope(n, rng)
    return _Call(wave, f0, f1)


def _falling_chirp(sr: int, rng: np.random.Generator) -> _Call:
    n = int(sr * rng.uniform(0.3, 0.9))
    f0 = rng.uniform(3500, _f_max(sr))
    f1 = max(f0 / rng.uniform(1.6, 2.5), 1500)
    t = np.linspace(0, 1, n) ** rng.uniform(0.6, 1.6)
    freq = f0 * (f1 / f0) ** t
    wave = _tone(freq, sr, [rng.uniform(0, 0.3)], rng) * _envelope(n, rng)
    return _Call(wave, f1, f0)


def _trill(sr: int, rng: np.random.Generator) -> _Call:
    n = int(sr * rng.uniform(0.5, 1.2))
    rate = rng.uniform(12, 25)
    period = int(sr / rate)
    note = int(period * rng.uniform(0.35, 0.6))
    f_centre = rng.uniform(2000, 6000)
    drop = rng.uniform(0.0, 0.15)  # each note slides down a little
    wave = np.zeros(n)
    lo, hi = np.inf, 0.0
    for start in range(0, n - note, period):
        f = f_centre * (1 + rng.uniform(-0.03, 0.03))
        freq = np.linspace(f, f * (1 - drop), note)
        lo, hi = min(lo, freq.min()), max(hi, freq.max())
        wave[start : start + note] += _tone(freq, sr, [rng.uniform(0, 0.2)], rng) * np.hanning(note)
    wave *= _envelope(n, rng) * 0.5 + 0.5
    return _Call(wave, lo, hi)


def _harmonic_whistle(sr: int, rng: np.random.Generator) -> _Call:
    n = int(sr * rng.uniform(0.4, 1.2))
    f0 = rng.uniform(1500, 3500)
    t = np.arange(n) / sr
    glide = np.linspace(1.0, 1.0 + rng.uniform(-0.05, 0.05), n)
    vibrato = 1 + rng.uniform(0.005, 0.02) * np.sin(2 * np.pi * rng.uniform(4, 8) * t)
    freq = f0 * glide * vibrato
    harmonics = [rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.5), rng.uniform(0.1, 0.3)]
    wave = _tone(freq, sr, harmonics, rng) * _envelope(n, rng)
    return _Call(wave, float(freq.min()), float(min(freq.max() * 4, 0.47 * sr)))


def _two_note(sr: int, rng: np.random.Generator) -> _Call:
    f1 = rng.uniform(2000, 5500)
    ratio = rng.uniform(0.62, 0.8) if rng.random() < 0.5 else rng.uniform(1.25, 1.6)
    f2 = float(np.clip(f1 * ratio, 1500, _f_max(sr)))
    n1, n2 = (int(sr * rng.uniform(0.12, 0.3)) for _ in range(2))
    gap = int(sr * rng.uniform(0.04, 0.15))
    h = [rng.uniform(0, 0.2)]
    a = _tone(np.full(n1, f1), sr, h, rng) * _envelope(n1, rng)
    b = _tone(np.full(n2, f2), sr, h, rng) * _envelope(n2, rng) * rng.uniform(0.6, 1.0)
    return _Call(np.concatenate([a, np.zeros(gap), b]), min(f1, f2), max(f1, f2))


def _buzz(sr: int, rng: np.random.Generator) -> _Call:
    n = int(sr * rng.uniform(0.3, 1.0))
    pulse_hz = rng.uniform(90, 220)
    # Band-limited pulse train: harmonics of a low fundamental, shaped by a formant-like band.
    phase = 2 * np.pi * np.cumsum(np.full(n, pulse_hz) * (1 + 0.02 * rng.standard_normal()))
    phase /= sr
    pulses = np.zeros(n)
    for k in range(1, int(0.47 * sr / pulse_hz)):
        pulses += np.sin(k * phase)
    centre = rng.uniform(2000, 5500)
    width = rng.uniform(1000, 2500)
    wave = _band_filter(pulses, sr, centre, width) * _envelope(n, rng)
    return _Call(wave, max(centre - width / 2, 0.0), min(centre + width / 2, 0.5 * sr))


def _warble(sr: int, rng: np.random.Generator) -> _Call:
    n = int(sr * rng.uniform(0.5, 1.2))
    t = np.arange(n) / sr
    centre = rng.uniform(2500, 5500)
    depth = rng.uniform(0.08, 0.2)
    mod = sum(np.sin(2 * np.pi * rng.uniform(5, 12) * t + rng.uniform(0, 2 * np.pi)) for _ in range(2)) / 2
    freq = np.clip(centre * (1 + depth * mod), 1200, _f_max(sr))
    wave = _tone(freq, sr, [rng.uniform(0, 0.1)], rng) * _envelope(n, rng)
    return _Call(wave, float(freq.min()), float(freq.max()))


def _click_train(sr: int, rng: np.random.Generator) -> _Call:
    n = int(sr * rng.uniform(0.3, 1.0))
    rate = rng.uniform(8, 30)
    click = int(sr * rng.uniform(0.001, 0.003))
    wave = np.zeros(n)
    pos = rng.uniform(0, sr / rate) * 0.2
    while pos + click < n:
        start = int(pos)
        burst = rng.standard_normal(click) * np.exp(-np.linspace(0, 5, click))
        wave[start : start + click] += burst * rng.uniform(0.6, 1.0)
        pos += sr / rate * (1 + rng.uniform(-0.1, 0.1))
    lo = rng.uniform(1200, 2000)
    spec = np.fft.rfft(wave)
    f = np.fft.rfftfreq(n, 1 / sr)
    spec *= 1 / (1 + (lo / np.maximum(f, 1.0)) ** 4)  # high-pass: clicks are bright
    return _Call(np.fft.irfft(spec, n=n), lo, 0.5 * sr)


_CALLS: dict[str, Callable[[int, np.random.Generator], _Call]] = {
    "rising_chirp": _rising_chirp,
    "falling_chirp": _falling_chirp,
    "trill": _trill,
    "harmonic_whistle": _harmonic_whistle,
    "two_note": _two_note,
    "buzz": _buzz,
    "warble": _warble,
    "click_train": _click_train,
}


# --------------------------------------------------------------------------------- backgrounds


def _shaped_noise(n: int, sr: int, rng: np.random.Generator, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    spec *= gain(np.maximum(np.fft.rfftfreq(n, 1 / sr), 1.0))
    x = np.fft.irfft(spec, n=n)
    return x / (x.std() + 1e-12)


def _slow_modulation(n: int, sr: int, rng: np.random.Generator, depth: float) -> np.ndarray:
    t = np.arange(n) / sr
    m = sum((np.sin(2 * np.pi * rng.uniform(0.1, 0.8) * t + rng.uniform(0, 2 * np.pi)) for _ in range(3)), np.zeros(n))
    return 1.0 + depth * m / 3


def _wind(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    cutoff = rng.uniform(300, 1200)
    # Brown (1/f^2) spectrum with a soft low-pass: rumbling gusts, little energy above a kHz.
    x = _shaped_noise(n, sr, rng, lambda f: (1 / f) / (1 + (f / cutoff) ** 2) * (f > 15))
    return x * _slow_modulation(n, sr, rng, rng.uniform(0.3, 0.8))


def _rain(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal(n) * rng.uniform(0.2, 0.5)
    drops = rng.poisson(rng.uniform(30, 200) * n / sr)
    for _ in range(drops):
        length = int(sr * rng.uniform(0.001, 0.008))
        start = int(rng.integers(0, n - length))
        amp = rng.lognormal(0.0, 0.7)
        x[start : start + length] += amp * rng.standard_normal(length) * np.exp(-np.linspace(0, 6, length))
    return x / (x.std() + 1e-12)


def _pink(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    return _shaped_noise(n, sr, rng, lambda f: 1 / np.sqrt(f))


_BACKGROUNDS = {"wind": _wind, "rain": _rain, "pink": _pink}


# ---------------------------------------------------------------------------------- the set


def make_clip(
    label: str, seed: int, k: int, sample_rate: int = 16000, seconds: float = 3.0
) -> tuple[np.ndarray, dict[str, object]]:
    """Synthesize clip ``k`` of class ``label``; return it and its manifest fields.

    Shapes: returns (round(seconds * sample_rate),) float32 in [-1, 1].
    """
    rng = np.random.default_rng([seed, DEMO_CLASSES.index(label), k])
    n = int(round(seconds * sample_rate))
    call = _CALLS[label](sample_rate, rng)
    c = call.wave[: n - int(0.2 * sample_rate)]
    start = int(rng.integers(int(0.1 * sample_rate), n - c.size - int(0.1 * sample_rate) + 1))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    noise = _BACKGROUNDS[background](n, sample_rate, rng)
    noise = noise + 0.1 * _pink(n, sample_rate, rng)  # a faint broadband floor under everything
    noise /= noise.std() + 1e-12
    snr_db = float(rng.uniform(0.0, 20.0))
    call_rms = np.sqrt(np.mean(c**2)) + 1e-12
    mix = noise * (call_rms / 10 ** (snr_db / 20))
    mix[start : start + c.size] += c
    mix *= rng.uniform(0.3, 0.9) / (np.abs(mix).max() + 1e-12)
    fields = {
        "label": label,
        "call_start": round(start / sample_rate, 3),
        "call_end": round((start + c.size) / sample_rate, 3),
        "f_low": round(call.f_low),
        "f_high": round(call.f_high),
        "background": background,
        "snr_db": round(snr_db, 1),
    }
    return mix.astype(np.float32), fields


def _pcm16_wav(wave: np.ndarray, sample_rate: int) -> bytes:
    pcm = np.clip(np.round(wave * 32767.0), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wavfile.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def _demo_splits(clips_per_class: int, seed: int, class_index: int) -> list[str]:
    """70/15/15 per class, by a seeded permutation.

    From three clips per class on, val and test get at least one clip each, so even a tiny demo
    set has all three parts.
    """
    rng = np.random.default_rng([seed, class_index, 1_000_003])
    order = rng.permutation(clips_per_class)
    floor = 1 if clips_per_class >= 3 else 0
    n_test = max(floor, int(round(clips_per_class * SPLIT_FRACTIONS["test"])))
    n_val = max(floor, int(round(clips_per_class * SPLIT_FRACTIONS["val"])))
    splits = ["train"] * clips_per_class
    for j in order[:n_test]:
        splits[j] = "test"
    for j in order[n_test : n_test + n_val]:
        splits[j] = "val"
    return splits


def make_demo_dataset(
    root: str | Path, clips_per_class: int = 40, seed: int = 0, sample_rate: int = 16000, seconds: float = 3.0
) -> Path:
    """Write ``root/<class>/<class>_NNN.wav`` (16-bit PCM) and ``root/labels.csv``.

    Returns the path of ``labels.csv`` (a CSV manifest with columns :data:`COLUMNS`).
    """
    if not 1 <= int(clips_per_class) <= 100_000:
        raise DatasetError(f"clips_per_class must be between 1 and 100000, got {clips_per_class}")
    if not 16000 <= int(sample_rate) <= 96000:
        raise DatasetError(f"demo sample_rate must be between 16000 and 96000 Hz, got {sample_rate}")
    if not 1.5 <= float(seconds) <= 60.0:
        raise DatasetError(f"demo clip length must be between 1.5 and 60 seconds, got {seconds}")
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root}: exists and is not a folder")
    rows = []
    try:
        for ci, label in enumerate(DEMO_CLASSES):
            (root / label).mkdir(parents=True, exist_ok=True)
            splits = _demo_splits(int(clips_per_class), seed, ci)
            for k in range(int(clips_per_class)):
                wave, fields = make_clip(label, seed, k, int(sample_rate), float(seconds))
                name = f"{label}/{label}_{k:03d}.wav"
                (root / name).write_bytes(_pcm16_wav(wave, int(sample_rate)))
                rows.append({"filename": name, "split": splits[k], **fields})
        out = io.StringIO(newline="")
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (root / "labels.csv").write_text(out.getvalue(), encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{root}: cannot write the demo dataset ({exc.strerror})") from exc
    return root / "labels.csv"


def demo_dataset_path() -> Path:
    """``labels.csv`` of the default demo set, generated once into the user cache folder."""
    from ..utils import cache_dir

    base = cache_dir()
    target = base / DEMO_VERSION
    labels = target / "labels.csv"
    if labels.is_file():
        return labels
    # Generate beside the target, then rename: a concurrent or interrupted run never leaves a
    # half-written set where the next one would trust it.
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_VERSION}-", dir=base))
    try:
        make_demo_dataset(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not labels.is_file():  # the target exists but is not a finished set
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return labels
