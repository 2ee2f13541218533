"""Decoding: every format, windows read by seeking, mono mixing, resampling, and every bad file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
from audio_factory import BAD_FILES, tone, write_chirp, write_noise, write_tone, write_truncated

from asca_core.audio import DEFAULT_MAX_DURATION, audio_info, iter_windows, load_audio, resample, write_audio
from asca_core.errors import AudioError
from asca_core.features import sliding_windows

FORMATS = ["wav", "flac", "ogg", "mp3"]


def dominant_frequency(wave: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sample_rate)[np.argmax(spectrum)])


@pytest.fixture
def read_spy(monkeypatch):
    """Records the frame count of every libsndfile read."""
    reads: list[int] = []
    original = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        data = original(self, frames, *args, **kwargs)
        reads.append(len(data))
        return data

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    return reads


@pytest.mark.parametrize("ext", FORMATS)
def test_each_format_decodes_and_resamples_a_tone(tmp_path, ext):
    path = write_tone(tmp_path / f"tone.{ext}", freq=1000.0, seconds=1.0, sample_rate=44100)
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.format) == (44100, 1, ext.upper())
    assert info.duration == pytest.approx(1.0, abs=0.01)

    wave = load_audio(path, sample_rate=16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) <= 16
    assert dominant_frequency(wave, 16000) == pytest.approx(1000.0, abs=2.0)
    rms = float(np.sqrt(np.mean(wave[1000:-1000] ** 2)))
    assert rms == pytest.approx(0.5 / math.sqrt(2), rel=0.1)  # lossy codecs keep the level


@pytest.mark.parametrize("ext", FORMATS)
def test_offset_and_duration_read_only_the_window(tmp_path, ext, read_spy):
    path = write_chirp(tmp_path / f"chirp.{ext}", seconds=6.0, sample_rate=16000)
    full = load_audio(path)
    read_spy.clear()

    window = load_audio(path, offset=4.0, duration=0.5)
    assert len(window) == 8000
    np.testing.assert_allclose(window, full[64000:72000], atol=1e-6)
    # wav/flac/ogg decode the window alone; mp3 adds a fixed pre-roll to refill its bit reservoir
    limit = 8000 if ext != "mp3" else 8000 + 16384
    assert sum(read_spy) <= limit < len(full)


def test_duration_past_the_end_returns_the_rest(tmp_path):
    path = write_tone(tmp_path / "tone.wav", seconds=1.0, sample_rate=8000)
    assert len(load_audio(path, offset=0.75, duration=10.0)) == 2000


def test_channels_are_averaged_to_mono(tmp_path):
    left, right = tone(440.0, 0.5, 16000), 0.25 * tone(3000.0, 0.5, 16000)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    assert audio_info(path).channels == 2
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)
    np.testing.assert_allclose(load_audio(path, offset=0.25), ((left + right) / 2)[4000:], atol=1e-7)


def test_resample_keeps_length_ratio_and_tone():
    wave = tone(1000.0, 2.0, 44100)
    out = resample(wave, 44100, 16000)
    assert out.dtype == np.float32 and len(out) == 32000
    assert dominant_frequency(out, 16000) == pytest.approx(1000.0, abs=1.0)
    assert resample(wave, 44100, 44100) is not None and len(resample(wave, 44100, 44100)) == 88200


def test_fsdd_recording_at_8k(shared_data):
    path = sorted((shared_data / "fsdd" / "recordings").glob("*.wav"))[0]
    info = audio_info(path)
    assert info.sample_rate == 8000 and info.channels == 1 and not info.truncated
    native, wave = load_audio(path), load_audio(path, sample_rate=16000)
    assert len(native) == info.frames
    assert abs(len(wave) - 2 * info.frames) <= 1
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0.01  # speech, not silence
    # an upsampled signal has (almost) nothing above the old Nyquist frequency
    power = np.abs(np.fft.rfft(wave)) ** 2
    assert power[len(power) // 2 + 10 :].sum() < 1e-3 * power.sum()


def test_birdclef_ogg_at_32k_window(shared_data):
    path = sorted((shared_data / "birdclef2023_sample" / "train_audio").glob("*/*.ogg"))[0]
    info = audio_info(path)
    assert info.sample_rate == 32000 and info.format == "OGG" and info.duration > 5
    full = load_audio(path)
    window = load_audio(path, offset=3.0, duration=2.0)
    np.testing.assert_array_equal(window, full[96000:160000])
    assert len(load_audio(path, sample_rate=16000, offset=3.0, duration=2.0)) == 32000


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_raise_audio_error_naming_the_file(tmp_path, name):
    writer, words = BAD_FILES[name]
    path = writer(tmp_path / name)
    with pytest.raises(AudioError, match=words) as err:
        load_audio(path)
    assert name in str(err.value) and "\n" not in str(err.value)
    if name != "nan.wav":  # NaN samples only show when decoding; the rest fail on the header
        with pytest.raises(AudioError, match=name):
            audio_info(path)
        with pytest.raises(AudioError, match=name):
            iter_windows(path, 16000, 1.0, 0.5)  # raises at the call, before iterating


def test_nan_in_a_window_is_found_by_iter_windows(tmp_path):
    path = BAD_FILES["nan.wav"][0](tmp_path / "nan.wav")
    with pytest.raises(AudioError, match="nan.wav.*NaN"):
        list(iter_windows(path, 16000, 0.1, 0.1))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(AudioError, match="ghost.wav: file not found"):
        load_audio(tmp_path / "ghost.wav")
    (tmp_path / "folder.wav").mkdir()
    with pytest.raises(AudioError, match="folder.wav: is a directory"):
        audio_info(tmp_path / "folder.wav")


def test_truncated_wav_decodes_what_is_there_and_says_so(tmp_path):
    path = write_truncated(tmp_path / "cut.wav")  # header claims 1 s, holds 0.25 s
    info = audio_info(path)
    assert info.truncated and info.frames == 4000
    wave = load_audio(path)
    np.testing.assert_allclose(wave, tone(440.0, 0.25, 16000), atol=1e-4)
    assert not audio_info(write_tone(tmp_path / "whole.wav")).truncated


def test_truncated_flac_keeps_the_frames_before_the_damage(tmp_path):
    whole = write_noise(tmp_path / "whole.flac", seconds=3.0)
    data = whole.read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: len(data) // 2])
    wave = load_audio(cut)
    assert 0 < len(wave) < 48000
    np.testing.assert_array_equal(wave, load_audio(whole)[: len(wave)])


def test_length_limit_applies_to_the_decoded_span(tmp_path):
    path = write_tone(tmp_path / "long.wav", seconds=3.0, sample_rate=8000)
    assert DEFAULT_MAX_DURATION >= 3600
    with pytest.raises(AudioError, match=r"long.wav: 3.0 s .* 2 s limit"):
        load_audio(path, max_duration=2.0)
    assert len(load_audio(path, duration=1.5, max_duration=2.0)) == 12000
    assert len(load_audio(path, max_duration=None)) == 24000


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"offset": -1.0}, "offset must be"),
        ({"offset": float("nan")}, "offset must be"),
        ({"offset": 5.0}, "offset 5 s is beyond the end"),
        ({"duration": 0.0}, "duration must be"),
        ({"duration": -2.0}, "duration must be"),
        ({"sample_rate": 100}, "unsupported target sample rate 100 Hz"),
    ],
)
def test_bad_offset_duration_and_rate(tmp_path, kwargs, words):
    path = write_tone(tmp_path / "clip.wav", seconds=1.0)
    with pytest.raises(AudioError, match=words) as err:
        load_audio(path, **kwargs)
    assert "clip.wav" in str(err.value)


def test_iter_windows_equal_load_audio_slices(tmp_path, read_spy):
    path = write_noise(tmp_path / "long.wav", seconds=2.3, sample_rate=16000)
    full = load_audio(path)
    read_spy.clear()
    windows = list(iter_windows(path, 16000, window=1.0, hop=0.5))
    assert [start for start, _ in windows] == [0.0, 0.5, 1.0, 1.5]
    assert max(read_spy) <= 16000  # streamed: never more than one window per read
    for start, wave in windows:
        first = int(start * 16000)
        expected = np.pad(full[first : first + 16000], (0, max(0, first + 16000 - len(full))))
        np.testing.assert_array_equal(wave, expected)
    assert [(int(s * 16000), int(s * 16000) + 16000) for s, _ in windows] == sliding_windows(len(full), 16000, 1.0, 0.5)


def test_iter_windows_resample_each_window_like_load_audio(tmp_path):
    path = write_noise(tmp_path / "long.flac", seconds=2.0, sample_rate=22050)
    windows = list(iter_windows(path, 8000, window=0.75, hop=0.6))
    assert len(windows) == 1 + math.ceil((16000 - 6000) / 4800)
    for start, wave in windows:
        assert wave.shape == (6000,)
        expected = load_audio(path, 8000, offset=start, duration=0.75)
        np.testing.assert_array_equal(wave[: len(expected)], expected)
        assert not wave[len(expected) :].any()  # zero padding after the end


def test_short_clip_gives_one_padded_window(tmp_path):
    path = write_tone(tmp_path / "short.ogg", seconds=0.3, sample_rate=16000)
    windows = list(iter_windows(path, 16000, window=1.0, hop=0.5))
    assert len(windows) == 1 and windows[0][0] == 0.0
    wave = windows[0][1]
    assert wave.shape == (16000,) and np.abs(wave[:4000]).max() > 0.3 and not wave[5000:].any()


def test_write_audio_round_trip_and_bad_extension(tmp_path):
    wave = tone(300.0, 0.5, 16000)
    for ext in ("wav", "flac"):
        out = load_audio(write_audio(tmp_path / f"x.{ext}", wave, 16000))
        np.testing.assert_allclose(out, wave, atol=1 / 32767)  # 16-bit PCM
    exact = load_audio(write_audio(tmp_path / "f.wav", wave, 16000, subtype="FLOAT"))
    np.testing.assert_array_equal(exact, wave)
    with pytest.raises(AudioError, match="x.aac"):
        write_audio(tmp_path / "x.aac", wave, 16000)


def test_fallback_decoder_when_libsndfile_cannot_open(tmp_path, monkeypatch):
    """A libsndfile build without a codec: audioread decodes the file, same window, same mixing."""
    left, right = tone(440.0, 1.0, 16000), tone(1000.0, 1.0, 16000, amplitude=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="PCM_16")
    expected = load_audio(path, offset=0.25, duration=0.5)

    def unsupported(*args, **kwargs):
        raise RuntimeError("Format not recognised")

    monkeypatch.setattr(sf, "SoundFile", unsupported)
    wave = load_audio(path, offset=0.25, duration=0.5)
    assert len(wave) == 8000
    np.testing.assert_allclose(wave, expected, atol=1e-6)
    with pytest.raises(AudioError, match="stereo.wav: .*limit"):
        load_audio(path, max_duration=0.5)
    with pytest.raises(AudioError, match="text.wav: not a readable audio file"):
        load_audio(BAD_FILES["text.wav"][0](tmp_path / "text.wav"))
