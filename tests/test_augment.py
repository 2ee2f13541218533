"""Augmentation: seeded, batched, no-op in eval, labels mixed, noise at the requested SNR."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from asca_core import augment
from asca_core.augment import (
    Mixup,
    SpecAugment,
    TrainAugment,
    WaveAugment,
    add_noise_at_snr,
    circular_shift,
    colored_noise,
    load_noise_bank,
    sample_beta,
    step_generator,
)
from asca_core.config import AugmentConfig
from asca_core.errors import ConfigError


def _wave(batch=4, length=8000, seed=0):
    t = torch.arange(length) / 8000.0
    freqs = torch.linspace(300, 1200, batch).unsqueeze(1)
    return torch.sin(2 * torch.pi * freqs * t) * 0.3 + 0.0 * torch.randn(batch, length)


def test_eval_mode_is_a_strict_noop():
    cfg = AugmentConfig(mixup_prob=1.0, noise_prob=1.0, gain_db=10, time_shift=0.5)
    aug = TrainAugment(cfg).eval()
    wave = _wave()
    spec = torch.randn(4, 1, 32, 64)
    target = torch.eye(4)
    assert aug.wave(wave, step_generator(0)) is wave
    assert aug.spec(spec, step_generator(0)) is spec
    out_spec, out_target = aug.mixup(spec, target, step_generator(0))
    assert out_spec is spec and out_target is target
    # and train mode really changes them, so the check above can fail
    aug.train()
    assert not torch.equal(aug.wave(wave, step_generator(0)), wave)
    assert not torch.equal(aug.spec(spec, step_generator(0)), spec)
    assert not torch.equal(aug.mixup(spec, target, step_generator(0))[1], target)


def test_same_generator_same_stream_other_keys_other_stream():
    cfg = AugmentConfig(noise_prob=0.5)
    aug = TrainAugment(cfg).train()
    wave = _wave()
    a = aug.wave(wave, step_generator(1, 2, 3))
    b = aug.wave(wave, step_generator(1, 2, 3))
    c = aug.wave(wave, step_generator(1, 2, 4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_mixup_mixes_labels_with_the_same_weights():
    cfg = AugmentConfig(mixup=True, mixup_prob=1.0, mixup_alpha=0.4)
    mix = Mixup(cfg).train()
    spec = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 2, 3).clone()
    target = torch.eye(6)
    out_spec, out_target = mix(spec, target, step_generator(5))
    assert torch.allclose(out_target.sum(1), torch.ones(6))  # still a distribution
    # each mixed example's value equals its label-weighted average of the source values
    expected = out_target @ torch.arange(6, dtype=torch.float32)
    assert torch.allclose(out_spec[:, 0, 0, 0], expected, atol=1e-5)
    assert (out_target.max(1).values < 1).any()  # something was mixed
    assert torch.all(out_spec[:, 0] == out_spec[:, 0, :1, :1])  # per-example weights broadcast


def test_mixup_switch_and_probability():
    spec, target = torch.randn(8, 1, 4, 4), torch.eye(8)
    off = Mixup(AugmentConfig(mixup=False)).train()
    assert off(spec, target, step_generator(0))[1] is target
    never = Mixup(AugmentConfig(mixup=True, mixup_prob=0.0)).train()
    assert torch.equal(never(spec, target, step_generator(0))[1], target)


def test_beta_sampler_moments():
    draws = sample_beta(100_000, 0.4, step_generator(0))
    assert draws.min() >= 0 and draws.max() <= 1
    assert draws.mean().item() == pytest.approx(0.5, abs=0.01)
    assert draws.var().item() == pytest.approx(1 / (4 * (2 * 0.4 + 1)), abs=0.005)


def test_masks_change_training_batch_within_width_limits():
    cfg = AugmentConfig(time_masks=2, time_mask_width=10, freq_masks=1, freq_mask_width=5)
    aug = SpecAugment(cfg).train()
    spec = torch.randn(16, 1, 32, 64) + 5.0  # no natural zeros
    out = aug(spec, step_generator(3))
    masked = out == 0
    assert masked.any()
    assert torch.equal(out[~masked], spec[~masked])
    for b in range(16):
        full_cols = masked[b, 0].all(0).sum().item()  # time frames masked over every bin
        full_rows = masked[b, 0].all(1).sum().item()
        assert full_cols <= 2 * 10
        assert full_rows <= 5


def test_mask_switches():
    spec = torch.randn(4, 1, 16, 32) + 5.0
    off = SpecAugment(AugmentConfig(time_masks=0, freq_masks=0)).train()
    assert torch.equal(off(spec, step_generator(0)), spec)


def test_noise_added_at_requested_snr():
    wave = _wave(batch=6, length=16000)
    noise = colored_noise(6, 16000, torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 1.0]), step_generator(1))
    snr = torch.tensor([0.0, 5.0, 10.0, 15.0, 20.0, -3.0])
    noisy = add_noise_at_snr(wave, noise, snr)
    added = noisy - wave
    measured = 10 * torch.log10(wave.pow(2).mean(-1) / added.pow(2).mean(-1))
    assert torch.allclose(measured, snr, atol=1e-3)


def test_wave_augment_noise_snr_in_configured_range():
    cfg = AugmentConfig(noise_prob=1.0, snr_db_min=8.0, snr_db_max=12.0, gain_db=0.0, time_shift=0.0)
    aug = WaveAugment(cfg).train()
    wave = _wave(batch=8, length=16000)
    out = aug(wave, step_generator(7))
    measured = 10 * torch.log10(wave.pow(2).mean(-1) / (out - wave).pow(2).mean(-1))
    assert torch.all(measured > 8.0 - 1e-3) and torch.all(measured < 12.0 + 1e-3)
    assert measured.std() > 0  # each row its own SNR


def test_noise_probability_zero_and_silence_untouched():
    wave = _wave(batch=4, length=4000)
    off = WaveAugment(AugmentConfig(noise_prob=0.0, gain_db=0.0, time_shift=0.0)).train()
    assert torch.equal(off(wave, step_generator(0)), wave)
    silent = torch.zeros(2, 4000)
    on = WaveAugment(AugmentConfig(noise_prob=1.0, gain_db=0.0, time_shift=0.0)).train()
    assert torch.equal(on(silent, step_generator(0)), silent)


def test_gain_and_shift():
    wave = _wave(batch=3, length=1000)
    shifted = circular_shift(wave, torch.tensor([0, 10, -5]))
    assert torch.equal(shifted[0], wave[0])
    assert torch.equal(shifted[1], torch.roll(wave[1], 10))
    assert torch.equal(shifted[2], torch.roll(wave[2], -5))
    aug = WaveAugment(AugmentConfig(noise_prob=0.0, gain_db=6.0, time_shift=0.0)).train()
    out = aug(wave, step_generator(2))
    ratio_db = 20 * torch.log10(out.abs().max(-1).values / wave.abs().max(-1).values)
    assert torch.all(ratio_db.abs() <= 6.0 + 1e-4) and ratio_db.abs().max() > 0.01


def test_noise_bank_from_folder(tmp_path):
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "rain.wav", (rng.standard_normal(4000) * 0.1).astype(np.float32), 8000)
    sf.write(tmp_path / "silence.wav", np.zeros(800, dtype=np.float32), 8000)
    bank = load_noise_bank(tmp_path, 8000)
    assert len(bank) == 1 and bank[0].numel() == 4000
    cfg = AugmentConfig(
        noise_prob=1.0, noise_dir=str(tmp_path), gain_db=0.0, time_shift=0.0, snr_db_min=10.0, snr_db_max=10.0
    )
    aug = TrainAugment.from_config(cfg, sample_rate=8000).train()
    wave = _wave(batch=2, length=12000)  # longer than the recording: tiled
    out = aug.wave(wave, step_generator(0))
    measured = 10 * torch.log10(wave.pow(2).mean(-1) / (out - wave).pow(2).mean(-1))
    assert torch.allclose(measured, torch.tensor([10.0, 10.0]), atol=1e-3)


def test_noise_dir_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        load_noise_bank(tmp_path / "missing", 8000)
    with pytest.raises(ConfigError, match="no audio files"):
        load_noise_bank(tmp_path, 8000)


def test_batched_on_device_dtype_preserved():
    aug = TrainAugment(AugmentConfig(noise_prob=1.0, mixup_prob=1.0)).train()
    wave = _wave().double()
    assert aug.wave(wave, step_generator(0)).dtype == torch.float64


def test_noise_is_generated_only_for_the_rows_that_get_it(monkeypatch):
    made = []
    real = augment.colored_noise

    def spy(batch, length, exponent, generator=None, device=None):
        made.append(batch)
        return real(batch, length, exponent, generator, device=device)

    monkeypatch.setattr(augment, "colored_noise", spy)
    aug = WaveAugment(AugmentConfig(noise_prob=0.25, gain_db=0.0, time_shift=0.0)).train()
    wave = _wave(batch=32, length=4000)
    out = aug(wave, step_generator(4))
    changed = (out != wave).any(dim=1)
    assert 0 < int(changed.sum()) < 32
    assert made == [int(changed.sum())]  # one draw, as many rows as were changed
    assert torch.equal(out[~changed], wave[~changed])


def test_same_seed_same_augmented_batch_across_fresh_augmenters():
    cfg = AugmentConfig(noise_prob=0.5, mixup_prob=0.5, gain_db=6.0, time_shift=0.2)
    wave, target = _wave(batch=16, length=4000), torch.eye(16)

    def features(w):
        return w.view(w.shape[0], 1, 40, 100)

    runs = []
    for run in range(2):  # fresh modules and generators, as two runs with the same seed build them
        torch.manual_seed(100 + run)  # the global stream (dropout's) plays no part
        aug = TrainAugment(cfg).train()
        runs.append([aug(wave, target, features, step_generator(0, 1, step)) for step in range(3)])
    for (spec_a, target_a), (spec_b, target_b) in zip(*runs):
        assert torch.equal(spec_a, spec_b) and torch.equal(target_a, target_b)
    assert not torch.equal(runs[0][0][0], runs[0][1][0])  # another step, another draw


def test_the_stream_after_the_noise_does_not_depend_on_the_coins():
    """The draws that follow the wave augment (mixup, masks) stay in step whatever the coins chose."""
    wave = _wave(batch=8, length=4000)
    after = []
    for prob in (0.01, 0.99):
        gen = step_generator(3)
        WaveAugment(AugmentConfig(noise_prob=prob)).train()(wave, gen)
        after.append(torch.rand(4, generator=gen))
    assert torch.equal(after[0], after[1])


def test_bank_noise_only_for_chosen_rows():
    bank = [torch.randn(3000), torch.randn(9000)]
    cfg = AugmentConfig(noise_prob=0.5, gain_db=0.0, time_shift=0.0, snr_db_min=10.0, snr_db_max=10.0)
    aug = WaveAugment(cfg, bank).train()
    wave = _wave(batch=16, length=4000)
    out = aug(wave, step_generator(1))
    changed = (out != wave).any(dim=1)
    assert 0 < int(changed.sum()) < 16
    added = (out - wave)[changed]
    measured = 10 * torch.log10(wave[changed].pow(2).mean(-1) / added.pow(2).mean(-1))
    assert torch.allclose(measured, torch.full_like(measured, 10.0), atol=1e-3)
    assert torch.equal(out, WaveAugment(cfg, bank).train()(wave, step_generator(1)))
