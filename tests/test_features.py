"""Log-Mel front ends, normalisation and input shaping."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from audio_factory import tone

from asca_core.config import Config, FeatureConfig, load_config
from asca_core.features import (
    KALDI_SILENCE,
    SILENCE,
    FeatureExtractor,
    LogMel,
    compute_norm_stats,
    fit_time,
    frames_for,
    kaldi_fbank,
    log_mel,
    normalize,
    pad_to_multiple,
    resize_224,
    sliding_windows,
)

SR = 16000


def chirp(seconds: float = 2.0, sample_rate: int = SR, seed: int = 0) -> np.ndarray:
    """A 200 Hz -> 4 kHz sweep over light noise, silent for its first quarter second."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    k = math.log(4000 / 200) / seconds
    rng = np.random.default_rng(seed)
    wave = 0.4 * np.sin(2 * np.pi * 200 * (np.exp(k * t) - 1) / k) + 0.05 * rng.standard_normal(len(t))
    wave[: sample_rate // 4] = 0.0
    return wave.astype(np.float32)


def htk_mel_centres(n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Centre frequencies of HTK triangular mel filters, from the textbook formula."""
    mel = lambda f: 2595 * np.log10(1 + np.asarray(f) / 700)
    points = np.linspace(mel(f_min), mel(f_max), n_mels + 2)[1:-1]
    return 700 * (10 ** (points / 2595) - 1)


@pytest.fixture(scope="module")
def librosa_reference():
    """librosa's power mel spectrogram of :func:`chirp` (librosa's first call compiles with numba)."""
    librosa = pytest.importorskip("librosa")
    wave = chirp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "empty filters": the same filters are empty on both sides
        mel = librosa.feature.melspectrogram(
            y=wave,
            sr=SR,
            n_fft=512,
            hop_length=160,
            win_length=400,
            window="hamming",
            center=True,
            pad_mode="reflect",
            power=2.0,
            n_mels=128,
            fmin=50.0,
            fmax=8000.0,
            htk=True,
            norm=None,
        )
    return wave, mel


def test_module_equals_functional():
    wave = torch.from_numpy(chirp(1.0))
    for kwargs in (
        {},
        {"window": "hann", "n_mels": 64, "f_max": 6000.0},
        {"n_fft": 1024, "win_length": 1024, "hop_length": 256, "f_min": 0.0},
    ):
        expected = log_mel(wave, sample_rate=SR, **kwargs)
        np.testing.assert_allclose(LogMel(sample_rate=SR, **kwargs)(wave), expected, atol=1e-5)


def test_batch_equals_single_items():
    batch = torch.stack([torch.from_numpy(chirp(1.0, seed=s)) for s in range(3)])
    module = LogMel()
    specs = module(batch)
    assert specs.shape == (3, 1, 128, frames_for(1.0, SR, 160))
    for i in range(3):
        torch.testing.assert_close(module(batch[i]), specs[i : i + 1], atol=1e-5, rtol=0)
    extractor = FeatureExtractor(FeatureConfig(frontend="kaldi", clip_seconds=1.0))
    out = extractor(batch)
    torch.testing.assert_close(extractor(batch[1:2]), out[1:2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 2500.0, 6000.0])
def test_tone_energy_peaks_in_the_nearest_mel_bin(freq):
    n_mels, f_min, f_max = 64, 50.0, 8000.0
    module = LogMel(
        sample_rate=SR, n_fft=4096, win_length=4096, hop_length=512, n_mels=n_mels, f_min=f_min, f_max=f_max
    )
    spec = module(torch.from_numpy(tone(freq, 1.0, SR)))[0, 0]
    profile = spec[:, 4:-4].mean(dim=1)  # ignore frames touching the edges
    centres = htk_mel_centres(n_mels, f_min, f_max)
    assert int(profile.argmax()) == int(np.argmin(np.abs(centres - freq)))


@pytest.mark.parametrize("freq", [500.0, 2000.0])
def test_kaldi_tone_peak_within_one_bin_of_its_centre(freq):
    spec = kaldi_fbank(torch.from_numpy(tone(freq, 1.0, SR)), SR, n_mels=128, f_min=20.0)
    centres = htk_mel_centres(128, 20.0, SR / 2)  # Kaldi spaces filters the same way
    expected = int(np.argmin(np.abs(centres - freq)))
    assert abs(int(spec.mean(dim=1).argmax()) - expected) <= 1


@pytest.mark.slow
def test_agrees_with_librosa(librosa_reference):
    """Same STFT (n_fft 512, win 400 Hamming, hop 160, reflect-centred) and HTK mel filters:
    log-Mel values agree within 1e-3 natural-log units (0.004 dB) on every cell where librosa's
    power is above 1e-4, and within 1e-2 everywhere."""
    wave, mel = librosa_reference
    ours = log_mel(
        torch.from_numpy(wave),
        sample_rate=SR,
        n_fft=512,
        win_length=400,
        hop_length=160,
        n_mels=128,
        f_min=50.0,
        f_max=8000.0,
    )[0, 0].numpy()
    theirs = np.log(mel + 1e-6)
    assert ours.shape == theirs.shape
    loud = mel > 1e-4
    assert loud.mean() > 0.5  # the comparison covers most of the spectrogram
    assert np.abs(ours - theirs)[loud].max() < 1e-3
    assert np.abs(ours - theirs).max() < 1e-2
    cfg = FeatureConfig(n_fft=512, win_length=400, hop_length=160, f_min=50.0, f_max=8000.0)
    module = LogMel.from_config(cfg)(torch.from_numpy(wave))
    assert np.abs(module[0, 0].numpy() - theirs)[loud].max() < 1e-3


def test_kaldi_fbank_shape_and_floor():
    one_second = torch.from_numpy(chirp(1.0))
    spec = kaldi_fbank(one_second, SR)
    assert spec.shape == (128, 98)  # snip_edges: 1 + (16000 - 400) // 160
    assert torch.isfinite(spec).all()
    silence = kaldi_fbank(torch.zeros(SR), SR)
    assert torch.allclose(silence, torch.full_like(silence, KALDI_SILENCE))
    assert kaldi_fbank(torch.zeros(100), SR).shape == (128, 1)  # shorter than a frame: one frame


@pytest.mark.parametrize(
    ("sample_rate", "window", "seconds"),
    [(16000, "hamming", 1.0), (22050, "hann", 1.3), (44100, "povey", 0.6), (8000, "hamming", 2.0)],
)
def test_batched_kaldi_fbank_is_torchaudio_kaldi_clip_by_clip(sample_rate, window, seconds):
    import torchaudio

    waves = torch.from_numpy(np.stack([chirp(seconds, sample_rate, seed=s) for s in range(3)]))
    waves[1] *= 0.01  # a quiet clip, near the eps floor in its silent quarter second
    ours = kaldi_fbank(waves, sample_rate, n_mels=64, f_min=20.0, f_max=sample_rate / 2 - 100.0, window=window)
    kaldi_name = {"hann": "hanning"}.get(window, window)
    for i in range(3):
        theirs = torchaudio.compliance.kaldi.fbank(
            waves[i : i + 1],
            sample_frequency=float(sample_rate),
            num_mel_bins=64,
            low_freq=20.0,
            high_freq=sample_rate / 2 - 100.0,
            htk_compat=True,
            use_energy=False,
            window_type=kaldi_name,
            dither=0.0,
        ).T
        assert ours[i].shape == theirs.shape
        assert torch.allclose(ours[i], theirs, atol=1e-4), float((ours[i] - theirs).abs().max())
        assert torch.equal(
            kaldi_fbank(waves[i], sample_rate, 64, f_min=20.0, f_max=sample_rate / 2 - 100.0, window=window), ours[i]
        )


def test_log_mel_of_a_large_batch_is_the_torchaudio_transform():
    """Batches are computed in cache-sized parts; the numbers are those of one MelSpectrogram call."""
    from asca_core.features import CHUNK_SAMPLES

    seconds = 2.0
    n = CHUNK_SAMPLES // int(seconds * SR) * 2 + 3  # more than two parts, the last one short
    waves = torch.from_numpy(np.stack([chirp(seconds, seed=s % 5) * (1 + s % 3) for s in range(n)]))
    module = LogMel(SR, n_fft=1024, win_length=400, hop_length=160, n_mels=128, f_min=50.0)
    with torch.no_grad():
        ours = module(waves)
        theirs = torch.log(module.mel(waves) + 1e-6).unsqueeze(1)
    assert ours.shape == (n, 1, 128, frames_for(seconds, SR, 160))
    assert torch.allclose(ours, theirs, atol=1e-4)
    wave = waves[:2].clone().requires_grad_()  # and gradients still reach the wave
    module(wave).sum().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0


@pytest.mark.parametrize("frontend", ["torchaudio", "kaldi"])
@pytest.mark.parametrize("shape", ["crop", "resize224"])
def test_extractor_output_is_the_model_input_size(frontend, shape):
    cfg = FeatureConfig(frontend=frontend, shape=shape, clip_seconds=2.0)
    wave = torch.from_numpy(np.stack([chirp(2.0), chirp(2.0, seed=1)]))
    spec = FeatureExtractor(cfg)(wave)
    assert spec.shape == (2, 1, *cfg.input_size)
    assert torch.isfinite(spec).all()


def test_extractor_crops_centre_and_pads_mel_axis_with_silence():
    cfg = FeatureConfig(n_mels=100, clip_seconds=1.0)  # 101 frames -> 96, 100 mels -> 128 rows
    extractor = FeatureExtractor(cfg)
    wave = torch.from_numpy(chirp(1.0))
    raw = extractor.spectrogram(wave)
    assert raw.shape == (1, 1, 100, 101)
    spec = extractor(wave)
    assert spec.shape == (1, 1, 128, 96) == (1, 1, *cfg.input_size)
    torch.testing.assert_close(spec[..., :100, :], raw[..., 2:98])
    assert (spec[..., 100:, :] == SILENCE).all()


def test_extractor_pads_short_clips_with_silence():
    cfg = FeatureConfig(clip_seconds=2.0)
    spec = FeatureExtractor(cfg)(torch.from_numpy(chirp(1.0)))  # 101 frames into 192
    assert spec.shape[-1] == cfg.frames == 192
    assert (spec[..., :45] == SILENCE).all() and (spec[..., -46:] == SILENCE).all()
    assert (spec[..., 46:146] > SILENCE).any()


def test_norm_stats_round_trip_through_the_run_config(tmp_path):
    waves = [torch.from_numpy(chirp(1.0, seed=s)) for s in range(4)]
    cfg = FeatureConfig(clip_seconds=1.0)
    extractor = FeatureExtractor(cfg)
    specs = [extractor(w) for w in waves]
    mean, std = compute_norm_stats(specs)
    everything = torch.cat([s.flatten() for s in specs]).double()
    assert mean == pytest.approx(everything.mean().item(), rel=1e-9)
    assert std == pytest.approx(everything.std(unbiased=False).item(), rel=1e-6)

    path = tmp_path / "config.yaml"
    run_cfg = Config().replace("features.clip_seconds", 1.0)
    run_cfg.replace("features.norm_mean", mean).replace("features.norm_std", std).to_yaml(path)
    restored = FeatureExtractor(load_config(path).features)
    normed = torch.cat([restored(w).flatten() for w in waves]).double()
    assert normed.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert normed.std(unbiased=False).item() == pytest.approx(0.5, abs=1e-5)  # AST: / (2 * std)
    torch.testing.assert_close(normalize(specs[0], mean, std), restored(waves[0]))


def test_fit_time_modes():
    spec = torch.arange(10.0).expand(2, 1, 3, 10)
    assert fit_time(spec, 4, "center")[0, 0, 0].tolist() == [3, 4, 5, 6]
    assert fit_time(spec, 4, "start")[0, 0, 0].tolist() == [0, 1, 2, 3]
    assert fit_time(spec, 14, "center", value=-1.0)[0, 0, 0].tolist() == [-1, -1] + list(range(10)) + [-1, -1]
    assert fit_time(spec, 12, "start", value=-1.0)[0, 0, 0, -2:].tolist() == [-1, -1]
    crops = {tuple(fit_time(spec, 4, "random", torch.Generator().manual_seed(s))[0, 0, 0].tolist()) for s in range(30)}
    assert len(crops) > 3 and all(c == tuple(range(int(c[0]), int(c[0]) + 4)) for c in crops)
    first = fit_time(spec, 4, "random", torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, fit_time(spec, 4, "random", torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError, match="middle"):
        fit_time(spec, 4, "middle")


def test_pad_to_multiple_and_resize():
    spec = torch.zeros(1, 1, 100, 70)
    padded = pad_to_multiple(spec, 32, value=-5.0)
    assert padded.shape == (1, 1, 128, 96)
    assert (padded[..., 100:, :] == -5).all() and (padded[..., :100, 70:] == -5).all()
    assert pad_to_multiple(torch.zeros(1, 1, 64, 96)).shape == (1, 1, 64, 96)
    ramp = torch.linspace(0, 1, 300).expand(1, 1, 128, 300)
    resized = resize_224(ramp)
    assert resized.shape == (1, 1, 224, 224)
    assert torch.all(resized[..., 1:] >= resized[..., :-1])  # a time ramp stays a ramp


def test_sliding_windows_and_frame_counts():
    assert sliding_windows(8000, SR, 1.0, 0.5) == [(0, 16000)]  # short: one padded window
    windows = sliding_windows(5 * SR + 1, SR, 2.0, 1.0)
    assert windows[0] == (0, 32000) and windows[-1][1] >= 5 * SR + 1
    assert len(windows) == 1 + math.ceil((5 * SR + 1 - 32000) / 16000)
    assert sliding_windows(4 * SR, SR, 2.0, 1.0)[-1] == (32000, 64000)  # exact fit, no extra window
    assert frames_for(3.0, 16000, 160) == 301 == LogMel()(torch.zeros(48000)).shape[-1]


def test_short_and_integer_waves():
    assert LogMel()(torch.zeros(100)).shape[:3] == (1, 1, 128)
    pcm = torch.from_numpy((chirp(0.5) * 32767).astype(np.int16))
    assert torch.isfinite(LogMel()(pcm)).all()
    with pytest.raises(ValueError, match="wave must be"):
        LogMel()(torch.zeros(2, 1, 100))


@pytest.mark.gpu
def test_logmel_on_cuda_matches_cpu():
    wave = torch.from_numpy(chirp(1.0))
    cpu = LogMel()(wave)
    gpu = LogMel().to("cuda")(wave.to("cuda"))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-4)
    extractor = FeatureExtractor(FeatureConfig(clip_seconds=1.0)).to("cuda")
    assert extractor(wave.to("cuda").unsqueeze(0)).device.type == "cuda"


def test_features_stay_float32_under_autocast():
    wave = torch.from_numpy(chirp(1.0)).unsqueeze(0)
    extractor = FeatureExtractor(FeatureConfig(clip_seconds=1.0))
    expected = extractor(wave)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spec = extractor(wave)
    assert spec.dtype == torch.float32
    torch.testing.assert_close(spec, expected)
