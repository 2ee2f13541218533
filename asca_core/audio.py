"""Decode audio files into mono float32 waves: the one place in ASCA Workbench that decodes.

libsndfile (through ``soundfile``) reads wav, flac, ogg/vorbis and mp3. Reads seek to the
requested offset and decode only the requested span, so a window of a long recording costs the
window, not the recording. Channels are averaged to mono and rates converted with soxr (HQ)::

    wave = load_audio("song.ogg", sample_rate=16000, offset=30.0, duration=5.0)   # (80000,)
    for start, window in iter_windows("dawn_chorus.flac", 32000, window=5.0, hop=2.5):
        ...

Every problem with a file raises :class:`~asca_core.errors.AudioError` with a one-line message
that starts with the file name.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioError
from .geometry import window_starts

SUPPORTED_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
DEFAULT_MAX_DURATION = 3600.0  # seconds of decoded audio per call; guards memory on huge files
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000
_BLOCK_FRAMES = 1 << 16  # frames decoded per read: bounds the multi-channel buffer
_SALVAGE_FRAMES = 1024  # block size used after a decoding error, to keep what precedes it
_MP3_PREROLL = 1 << 14  # frames decoded and dropped before an MP3 span (refills the bit reservoir)


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file (nothing decoded)."""

    path: Path
    sample_rate: int
    frames: int
    channels: int
    duration: float  # seconds
    format: str  # libsndfile major format, e.g. "WAV", "FLAC", "OGG", "MP3"
    truncated: bool = False  # the header promises more audio than the file holds (frames = what is there)


def _checked_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: file not found")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    return path


def _check_rate(path: Path, sample_rate: int, what: str = "sample rate") -> None:
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{path}: unsupported {what} {sample_rate} Hz (supported: {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)"
        )


def _open(path: Path) -> sf.SoundFile:
    """Open with libsndfile, turning its errors into one-line AudioErrors."""
    try:
        return sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        reason = str(getattr(exc, "error_string", "") or exc).strip().rstrip(".")
        raise AudioError(f"{path}: not a readable audio file ({reason})") from exc


# libsndfile's header log says so when a file ends before its header's promise
# ("data : 32000 (should be 8000)" for wav/aiff, a last Ogg page without end-of-stream).
_TRUNCATION = re.compile(r"^\s*(data|SSND)\s*:\s*\d+\s*\(should be|lacks an end-of-stream", re.M)


def _info_from(path: Path, f: sf.SoundFile) -> AudioInfo:
    _check_rate(path, f.samplerate)
    truncated = bool(_TRUNCATION.search(f.extra_info))
    if f.frames <= 0:
        what = "truncated: header promises audio, file holds none" if truncated else "empty or header-only file"
        raise AudioError(f"{path}: contains no audio frames ({what})")
    return AudioInfo(
        path=path,
        sample_rate=int(f.samplerate),
        frames=int(f.frames),
        channels=int(f.channels),
        duration=f.frames / f.samplerate,
        format=f.format,
        truncated=truncated,
    )


def audio_info(path: str | Path) -> AudioInfo:
    """Read the header of ``path``: rate, frames, channels, duration, format.

    Raises AudioError for a missing, empty, header-only or non-audio file and for an unsupported
    sample rate (NaN samples are only found by decoding, see :func:`load_audio`). A file cut
    short (interrupted copy) still opens: ``truncated`` is set where the format shows it (wav,
    aiff, ogg) and ``frames`` counts what is really there.
    """
    path = _checked_path(path)
    with _open(path) as f:
        return _info_from(path, f)


def _check_span(path: Path, offset: float, duration: float | None) -> None:
    if not (math.isfinite(offset) and offset >= 0):
        raise AudioError(f"{path}: offset must be a finite number of seconds >= 0, got {offset}")
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        raise AudioError(f"{path}: duration must be a positive number of seconds, got {duration}")


def _read_mono(f: sf.SoundFile, start: int, count: int) -> np.ndarray:
    """Decode ``count`` frames from ``start`` as mono float32; fewer if the file ends early.

    Shapes: returns (T,) with T <= count.
    """
    if f.format == "MP3":
        # soundfile seeks after every read call, and each MP3 seek empties mpg123's bit reservoir
        # (the next frames decode as silence), so MP3 spans are decoded by one read, starting a
        # pre-roll early so the reservoir is full again at ``start``.
        skip = min(start, _MP3_PREROLL)
        f.seek(start - skip)
        data = f.read(skip + count, dtype="float32", always_2d=True)[skip:]
        return np.ascontiguousarray(data.mean(axis=1), dtype=np.float32)
    f.seek(start)
    # Block reads bound the multi-channel buffer to one block whatever the span.
    buf = np.empty((min(_BLOCK_FRAMES, max(count, 1)), f.channels), dtype=np.float32)
    out = np.empty(count, dtype=np.float32)
    got, block_frames = 0, len(buf)
    while got < count:
        n = min(block_frames, count - got)
        try:
            block = f.read(n, out=buf[:n])
        except sf.LibsndfileError:
            # Corrupt or cut-off data (e.g. FLAC lost sync): a failed read reports no frames, so
            # retry in small blocks from the same place and keep everything before the damage.
            if block_frames > _SALVAGE_FRAMES:
                block_frames = _SALVAGE_FRAMES
                f.seek(start + got)
                continue
            if got == 0:
                raise
            break
        if len(block) == 0:
            break  # truncated file: keep what libsndfile could decode
        out[got : got + len(block)] = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)
        got += len(block)
    return out[:got]


def _check_finite(path: Path, wave: np.ndarray, sample_rate: int, offset: float = 0.0) -> None:
    bad = ~np.isfinite(wave)
    if bad.any():
        first = int(np.argmax(bad))
        raise AudioError(
            f"{path}: contains NaN or infinite samples "
            f"({int(bad.sum())}, first at {offset + first / sample_rate:.3f} s)"
        )


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Convert ``wave`` from ``orig_sr`` to ``target_sr`` Hz with soxr (HQ quality).

    Shapes: (T,) -> (round(T * target_sr / orig_sr),), float32.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if int(orig_sr) == int(target_sr) or wave.size == 0:
        return wave
    return soxr.resample(wave, int(orig_sr), int(target_sr), quality="HQ").astype(np.float32, copy=False)


def load_audio(
    path: str | Path,
    sample_rate: int | None = None,
    offset: float = 0.0,
    duration: float | None = None,
    max_duration: float | None = DEFAULT_MAX_DURATION,
) -> np.ndarray:
    """Decode ``duration`` seconds from ``offset`` of ``path`` as mono float32 at ``sample_rate``.

    Only the requested span is decoded (seek, then read). ``sample_rate=None`` keeps the file's
    rate. The span may end early at the end of the file; ``max_duration`` (seconds, ``None`` for
    no limit) caps the decoded span so a mistaken whole-file read of a huge file fails cleanly.

    Shapes: returns (T,) float32.
    """
    path = _checked_path(path)
    _check_span(path, offset, duration)
    if sample_rate is not None:
        _check_rate(path, int(sample_rate), "target sample rate")
    try:
        f = _open(path)
    except AudioError:
        fallback = _fallback_load(path, offset, duration, max_duration)
        if fallback is None:
            raise
        wave, native_sr = fallback
    else:
        with f:
            info = _info_from(path, f)
            native_sr = info.sample_rate
            start = int(round(offset * native_sr))
            if start >= info.frames:
                raise AudioError(f"{path}: offset {offset:g} s is beyond the end of the file ({info.duration:.3f} s)")
            count = info.frames - start
            if duration is not None:
                count = min(count, max(1, int(round(duration * native_sr))))
            if max_duration is not None and count / native_sr > max_duration:
                raise AudioError(
                    f"{path}: {count / native_sr:.1f} s of audio requested, longer than "
                    f"the {max_duration:g} s limit (read it in windows or raise max_duration)"
                )
            try:
                wave = _read_mono(f, start, count)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioError(f"{path}: decoding failed ({exc})") from exc
    if wave.size == 0:
        raise AudioError(f"{path}: no audio frames could be decoded (truncated or corrupt file)")
    _check_finite(path, wave, native_sr, offset)
    if sample_rate is not None:
        wave = resample(wave, native_sr, int(sample_rate))
    return wave


def _fallback_load(
    path: Path, offset: float, duration: float | None, max_duration: float | None
) -> tuple[np.ndarray, int] | None:
    """Decode with audioread when libsndfile cannot open a supported file (e.g. odd mp3 tags).

    Returns ``None`` when audioread cannot decode it either, so the libsndfile error is shown.
    """
    if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
        return None
    try:
        with warnings.catch_warnings():  # audioread's backends import modules deprecated in 3.11
            warnings.simplefilter("ignore", DeprecationWarning)
            import audioread  # type: ignore[import-untyped]  # ships neither stubs nor py.typed

            src = audioread.audio_open(str(path))
        with src:
            sr, channels = int(src.samplerate), int(src.channels)
            _check_rate(path, sr)
            start = int(round(offset * sr))
            stop = None if duration is None else start + max(1, int(round(duration * sr)))
            limit = None if max_duration is None else int(max_duration * sr)
            parts, pos, taken = [], 0, 0
            for buf in src:  # 16-bit interleaved PCM blocks
                block = np.frombuffer(buf, dtype="<i2").reshape(-1, channels).mean(axis=1)
                lo, hi = max(start - pos, 0), len(block) if stop is None else min(stop - pos, len(block))
                if hi > lo:
                    parts.append((block[lo:hi] / 32768.0).astype(np.float32))
                    taken += hi - lo
                pos += len(block)
                if limit is not None and taken > limit:
                    raise AudioError(
                        f"{path}: more than the {max_duration:g} s limit of audio "
                        "requested (read it in windows or raise max_duration)"
                    )
                if stop is not None and pos >= stop:
                    break
    except AudioError:
        raise
    except Exception:
        return None
    if start >= pos:
        raise AudioError(f"{path}: offset {offset:g} s is beyond the end of the file ({pos / sr:.3f} s)")
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), sr


def iter_windows(path: str | Path, sample_rate: int, window: float, hop: float) -> Iterator[tuple[float, np.ndarray]]:
    """Stream ``window``-second windows every ``hop`` seconds, each decoded on its own.

    Memory stays bounded by one window whatever the file length. Each window equals
    ``load_audio(path, sample_rate, offset=start, duration=window)`` zero-padded to full length;
    a clip shorter than one window gives one padded window.

    Bad arguments and unreadable headers raise at the call, not at the first window.

    Shapes: yields (start_seconds, (W,) float32) with W = round(window * sample_rate).
    """
    path = _checked_path(path)
    _check_rate(path, int(sample_rate), "target sample rate")
    if not (math.isfinite(window) and window > 0 and math.isfinite(hop) and hop > 0):
        raise AudioError(f"{path}: window and hop must be positive seconds, got {window}, {hop}")
    win, step = int(round(window * sample_rate)), int(round(hop * sample_rate))
    if win < 1 or step < 1:
        raise AudioError(f"{path}: window {window:g} s / hop {hop:g} s is below one sample at {sample_rate} Hz")
    audio_info(path)
    return _windows(path, int(sample_rate), window, win, step)


def _windows(path: Path, sample_rate: int, window: float, win: int, step: int) -> Iterator[tuple[float, np.ndarray]]:
    """The generator behind :func:`iter_windows` (arguments already checked)."""
    with _open(path) as f:
        info = _info_from(path, f)
        native = info.sample_rate
        n_target = int(round(info.frames * sample_rate / native))
        native_win = max(1, int(round(window * native)))
        for first in window_starts(n_target, win, step):
            start_s = first / sample_rate
            start = int(round(start_s * native))
            if start >= info.frames:
                break
            try:
                chunk = _read_mono(f, start, min(native_win, info.frames - start))
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioError(f"{path}: decoding failed at {start_s:.3f} s ({exc})") from exc
            if chunk.size == 0:
                if first == 0:
                    raise AudioError(f"{path}: no audio frames could be decoded (truncated or corrupt file)")
                break  # truncated file: stop at the last decodable window
            _check_finite(path, chunk, native, start_s)
            chunk = resample(chunk, native, sample_rate)[:win]
            if chunk.size < win:
                chunk = np.pad(chunk, (0, win - chunk.size))
            yield start_s, chunk


def write_audio(path: str | Path, wave: np.ndarray, sample_rate: int, subtype: str | None = None) -> Path:
    """Write a wave; by default wav and flac get 16-bit PCM, ogg vorbis, mp3 MPEG layer III.

    ``subtype`` overrides the encoding (e.g. ``"FLOAT"`` for a 32-bit float wav).

    Shapes: wave (T,) float in [-1, 1] (or (T, C) for multi-channel).
    """
    path = Path(path)
    _check_rate(path, int(sample_rate))
    ext = path.suffix.lower()
    subtypes = {".wav": "PCM_16", ".flac": "PCM_16", ".ogg": "VORBIS", ".mp3": "MPEG_LAYER_III"}
    if ext not in subtypes:
        raise AudioError(
            f"{path}: cannot write {ext or 'extension-less'} files (use {', '.join(SUPPORTED_EXTENSIONS)})"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(wave, dtype=np.float32), int(sample_rate), subtype=subtype or subtypes[ext])
    return path
