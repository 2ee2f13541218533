"""Generated audio for tests: known tones in every format, and every kind of broken file.

Import from a test module as ``from audio_factory import write_tone, BAD_FILES``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf


def tone(freq: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A sine as float32. Shapes: (round(seconds * sample_rate),)."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_tone(
    path: Path, freq: float = 1000.0, seconds: float = 1.0, sample_rate: int = 16000, subtype: str | None = None
) -> Path:
    """Write a sine in the format given by the extension (wav, flac, ogg, mp3)."""
    sf.write(path, tone(freq, seconds, sample_rate), sample_rate, subtype=subtype)
    return Path(path)


def write_noise(path: Path, seconds: float = 2.0, sample_rate: int = 16000, seed: int = 0) -> Path:
    """White noise: every window differs, so a misplaced read cannot go unnoticed."""
    rng = np.random.default_rng(seed)
    wave = (0.2 * rng.standard_normal(int(round(seconds * sample_rate)))).astype(np.float32)
    sf.write(path, wave, sample_rate)
    return Path(path)


def write_chirp(
    path: Path, seconds: float = 6.0, sample_rate: int = 16000, f0: float = 200.0, f1: float = 4000.0
) -> Path:
    """A logarithmic sweep: tonal (MP3 leans on its bit reservoir) yet never periodic, so a read
    from the wrong place or a badly decoded frame cannot match the reference."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    k = math.log(f1 / f0) / seconds
    wave = 0.5 * np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)
    sf.write(path, wave.astype(np.float32), sample_rate)
    return Path(path)


def _pcm16_wav(samples: np.ndarray, sample_rate: int, data_bytes: int | None = None) -> bytes:
    """A 16-bit mono PCM wav; ``data_bytes`` lets the header claim a different data size."""
    payload = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    size = len(payload) if data_bytes is None else data_bytes
    header = b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return header + b"data" + struct.pack("<I", size) + payload


def write_empty(path: Path) -> Path:
    """A zero-byte file."""
    Path(path).write_bytes(b"")
    return Path(path)


def write_text(path: Path) -> Path:
    """A text file carrying an audio extension."""
    Path(path).write_text("filename,label\nthis is not audio,at all\n" * 10)
    return Path(path)


def write_header_only(path: Path) -> Path:
    """A valid wav header announcing zero samples."""
    Path(path).write_bytes(_pcm16_wav(np.zeros(0, np.float32), 16000))
    return Path(path)


def write_truncated(path: Path) -> Path:
    """A wav whose header claims 1 s but whose data stops after 0.25 s (an interrupted copy)."""
    wave = tone(440.0, 0.25, 16000)
    Path(path).write_bytes(_pcm16_wav(wave, 16000, data_bytes=2 * 16000))
    return Path(path)


def write_truncated_to_header(path: Path) -> Path:
    """A wav whose header claims 1 s of data but holds none."""
    Path(path).write_bytes(_pcm16_wav(np.zeros(0, np.float32), 16000, data_bytes=2 * 16000))
    return Path(path)


def write_nan(path: Path) -> Path:
    """A 32-bit float wav with a NaN and an inf among valid samples."""
    wave = tone(440.0, 0.5, 16000)
    wave[1000], wave[2000] = np.nan, np.inf
    sf.write(path, wave, 16000, subtype="FLOAT")
    return Path(path)


def write_low_rate(path: Path, sample_rate: int = 500) -> Path:
    """A wav at an unsupported sample rate."""
    sf.write(path, tone(100.0, 1.0, sample_rate), sample_rate)
    return Path(path)


# name -> (writer, words the AudioError message must contain)
BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "empty.wav": (write_empty, "empty"),
    "text.wav": (write_text, "not a readable audio file"),
    "header_only.wav": (write_header_only, "no audio frames"),
    "truncated_to_header.wav": (write_truncated_to_header, "no audio frames"),
    "nan.wav": (write_nan, "NaN"),
    "low_rate.wav": (write_low_rate, "sample rate 500 Hz"),
}
