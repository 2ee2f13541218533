"""Augment: one clip before and after each training augmentation, and after the whole pipeline."""

import dataclasses

import numpy as np
import streamlit as st
import torch

from asca_core.augment import Mixup, SpecAugment, TrainAugment, WaveAugment
from asca_core.config import AugmentConfig, FeatureConfig
from asca_core.features import FeatureExtractor, compute_norm_stats
from asca_core.geometry import fit_length
from workbench import figures, state

FEATURES = FeatureConfig()  # the training defaults: 16 kHz, 128 mel bins, 10 ms hop, 3 s crops
OFF = AugmentConfig(mixup=False, time_masks=0, freq_masks=0, noise_prob=0.0, gain_db=0.0, time_shift=0.0)


def _clip(table, file: str) -> torch.Tensor:
    wave, _ = state.load_clip(table.loc[table["file"] == file, "path"].iloc[0], FEATURES.sample_rate)
    wave = fit_length(wave, FEATURES.clip_samples)  # the evaluation crop: a short clip centred in silence
    return torch.from_numpy(np.ascontiguousarray(wave)).unsqueeze(0)


def _show_wave(before: torch.Tensor, after: torch.Tensor, features, key: str, note: str = "") -> None:
    sr, hop = FEATURES.sample_rate, FEATURES.hop_length
    if note:
        st.markdown(note)
    st.plotly_chart(
        figures.before_after(features(before)[0, 0], features(after)[0, 0], sr, hop, f_min=FEATURES.f_min), key=key
    )
    a, b = st.columns(2)
    a.caption("before")
    a.audio(before[0].numpy(), sample_rate=sr)
    b.caption("after")
    b.audio(np.clip(after[0].numpy(), -1, 1), sample_rate=sr)


def render() -> None:
    st.title("Augment")
    st.caption(
        "What the training step does to a clip, one augmentation at a time. Each draw is "
        "seeded, like training: the same seed gives the same result."
    )
    table, _ = state.dataset_table(
        st.session_state.get(state.KEYS["dataset"], "demo"), st.session_state.get(state.KEYS["format"], "auto")
    )
    files = table["file"].tolist()
    c1, c2, c3 = st.columns([3, 3, 1])
    file = c1.selectbox("Clip", files, key="aug_clip")
    labels = dict(zip(table["file"], table["labels"]))
    others = [f for f in files if labels[f] != labels[file]] or files
    partner = c2.selectbox("Mixup partner", others, key="aug_partner")
    seed = c3.number_input("Seed", 0, 10_000, 0, key="aug_seed")
    wave, other = _clip(table, file), _clip(table, partner)
    raw = FeatureExtractor(FEATURES)
    mean, std = compute_norm_stats([raw(wave), raw(other)])
    features = FeatureExtractor(dataclasses.replace(FEATURES, norm_mean=mean, norm_std=std))
    gen = lambda: torch.Generator().manual_seed(int(seed))

    tabs = st.tabs(["Gain", "Time shift", "Background noise", "Masks", "Mixup", "Whole pipeline"])
    with tabs[0]:
        gain = st.slider("Max gain (dB)", 0.0, 20.0, 6.0, 0.5, key="aug_gain")
        louder = WaveAugment(dataclasses.replace(OFF, gain_db=gain)).train()(wave, gen())
        drawn = 20 * torch.log10(louder.norm() / wave.norm().clamp_min(1e-12))
        _show_wave(wave, louder, features, "gain", f"This draw: **{drawn:+.1f} dB**")
    with tabs[1]:
        shift = st.slider("Max circular shift (fraction of the clip)", 0.0, 1.0, 0.2, 0.05, key="aug_shift")
        shifted = WaveAugment(dataclasses.replace(OFF, time_shift=shift)).train()(wave, gen())
        lag = int(np.argmax([float((torch.roll(wave, k, -1) * shifted).sum()) for k in range(0, wave.shape[-1], 160)]))
        _show_wave(wave, shifted, features, "shift", f"This draw: rolled by **{lag * 0.01:.2f} s** (wrapping around)")
    with tabs[2]:
        snr = st.slider("SNR range (dB)", -5.0, 40.0, (5.0, 20.0), 1.0, key="aug_snr")
        noisy = WaveAugment(dataclasses.replace(OFF, noise_prob=1.0, snr_db_min=snr[0], snr_db_max=snr[1]))
        _show_wave(wave, noisy.train()(wave, gen()), features, "noise")
    with tabs[3]:
        m = st.columns(4)
        masks = dataclasses.replace(
            OFF,
            time_masks=m[0].slider("Time masks", 0, 6, 2, key="aug_tm"),
            time_mask_width=m[1].slider("Max width (frames)", 0, 100, 30, key="aug_tw"),
            freq_masks=m[2].slider("Frequency masks", 0, 6, 2, key="aug_fm"),
            freq_mask_width=m[3].slider("Max width (mel bins)", 0, 64, 12, key="aug_fw"),
        )
        spec = features(wave)
        masked = SpecAugment(masks).train()(spec, gen())
        st.plotly_chart(
            figures.before_after(
                spec[0, 0], masked[0, 0], FEATURES.sample_rate, FEATURES.hop_length, f_min=FEATURES.f_min
            ),
            key="masks",
        )
    with tabs[4]:
        alpha = st.slider("Mixup alpha (λ ~ Beta(α, α))", 0.05, 2.0, 0.4, 0.05, key="aug_alpha")
        specs = torch.cat([features(wave), features(other)])
        targets = torch.eye(2)
        mixer = Mixup(dataclasses.replace(OFF, mixup=True, mixup_alpha=alpha, mixup_prob=1.0)).train()
        mixed, mixed_targets = mixer(specs, targets, gen())
        st.plotly_chart(
            figures.before_after(
                specs[0, 0], mixed[0, 0], FEATURES.sample_rate, FEATURES.hop_length, f_min=FEATURES.f_min
            ),
            key="mixup",
        )
        st.markdown(
            f"Target after mixup: **{labels[file]}** {mixed_targets[0, 0]:.2f} · "
            f"**{labels[partner]}** {mixed_targets[0, 1]:.2f}"
        )
    with tabs[5]:
        cfg = AugmentConfig(
            gain_db=gain,
            time_shift=shift,
            noise_prob=0.25,
            snr_db_min=snr[0],
            snr_db_max=snr[1],
            mixup_alpha=alpha,
            time_masks=masks.time_masks,
            time_mask_width=masks.time_mask_width,
            freq_masks=masks.freq_masks,
            freq_mask_width=masks.freq_mask_width,
        )
        st.caption(
            "Gain, shift and noise (probability 0.25) on the wave, then masks and mixup "
            "(probability 0.5) on the normalised log-Mel, exactly in the training order."
        )
        pipeline = TrainAugment(cfg).train()
        g = gen()
        waves = pipeline.wave(torch.cat([wave, other]), g)
        out, out_targets = pipeline.mixup(pipeline.spec(features(waves), g), torch.eye(2), g)
        st.plotly_chart(
            figures.before_after(
                features(wave)[0, 0], out[0, 0], FEATURES.sample_rate, FEATURES.hop_length, f_min=FEATURES.f_min
            ),
            key="pipeline",
        )
        st.caption("The wave after the wave stage (before masks and mixup):")
        st.audio(np.clip(waves[0].numpy(), -1, 1), sample_rate=FEATURES.sample_rate)
        st.markdown(
            f"Target: **{labels[file]}** {out_targets[0, 0]:.2f} · **{labels[partner]}** {out_targets[0, 1]:.2f}"
        )


state.training_sidebar()
with torch.no_grad():
    state.guarded(render)
