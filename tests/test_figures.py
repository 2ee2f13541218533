"""Figures: axes in physical units, data placed where it belongs, every figure serialisable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench import figures

SR, HOP = 16000, 160


def _chirp_spec(n_mels: int = 64, frames: int = 320) -> np.ndarray:
    from asca_core.features import log_mel

    t = np.arange(int((frames - 1) * HOP)) / SR
    wave = (0.5 * np.sin(2 * np.pi * (500 + 1500 * t) * t)).astype(np.float32)
    return log_mel(torch.from_numpy(wave), SR, 512, 400, HOP, n_mels, 50.0)[0, 0].numpy()


def test_mel_frequencies_match_the_filterbank_peaks():
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(1025, 50.0, 8000.0, 40, SR, norm=None, mel_scale="htk")
    peaks_hz = fb.argmax(0).numpy() * (SR / 2) / 1024
    centres = figures.mel_frequencies(40, 50.0, 8000.0)
    assert centres.shape == (40,)
    assert np.all(np.diff(centres) > 0)
    np.testing.assert_allclose(centres, peaks_hz, atol=SR / 2048 + 1e-6)


def test_spectrogram_axes_are_seconds_and_hz():
    spec = _chirp_spec()
    fig = figures.spectrogram(spec, SR, HOP, f_min=50.0)
    heat = fig.data[0]
    assert np.asarray(heat.z).shape == spec.shape
    assert heat.x[-1] == pytest.approx((spec.shape[1] - 1) * HOP / SR)
    ticks = fig.layout.yaxis.ticktext
    assert ticks and all(t.endswith("Hz") for t in ticks)
    # each labelled tick sits at the bin whose centre frequency it names
    centres = figures.mel_frequencies(spec.shape[0], 50.0, SR / 2)
    for pos, text in zip(fig.layout.yaxis.tickvals, ticks):
        hz = float(text.split()[0]) * (1000 if "kHz" in text else 1)
        assert np.interp(pos, np.arange(len(centres)), centres) == pytest.approx(hz, rel=1e-6)


def test_long_spectrogram_is_pooled_for_display():
    spec = np.random.default_rng(0).normal(size=(32, 5000))
    fig = figures.spectrogram(spec, SR, HOP, max_frames=1000)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (32, 1000)
    np.testing.assert_allclose(z[:, 0], spec[:, :5].mean(1))
    assert fig.data[0].x[-1] == pytest.approx((4995 + 2) * HOP / SR)


def test_waveform_envelope_keeps_the_peaks():
    wave = np.zeros(SR * 60, dtype=np.float32)
    wave[123_456] = 0.9
    wave[654_321] = -0.7
    fig = figures.waveform(wave, SR, max_points=2000)
    assert len(fig.data) == 2 and len(fig.data[0].x) <= 1000
    assert max(fig.data[0].y) == pytest.approx(0.9)
    assert min(fig.data[1].y) == pytest.approx(-0.7)
    short = figures.waveform(wave[:1000], SR)
    assert len(short.data[0].y) == 1000
    with pytest.raises(ValueError):
        figures.waveform(np.zeros(0), SR)


def test_stage_grids_and_token_grid_follow_the_strides():
    grids = figures.stage_grids((128, 320), "CCTT")
    assert [g["grid"] for g in grids] == [(64, 160), (32, 80), (16, 40), (8, 20), (4, 10)]
    assert [g["kind"] for g in grids] == ["stem", "MBConv", "MBConv", "Transformer", "Transformer"]
    spec = _chirp_spec(64, 320)
    fig = figures.token_grid(spec[:, :320], SR, HOP)
    assert len(fig.data) == 5
    last = np.asarray(fig.data[-1].z)
    assert last.shape == (2, 10)
    np.testing.assert_allclose(last[0, 0], spec[:32, :32].mean())
    assert "2 × 10 = 20 positions" in fig.layout.annotations[-1].text


def test_class_counts_sorted_and_stacked_by_split():
    fig = figures.class_counts({"train": {"owl": 3, "wren": 9}, "val": {"owl": 1, "wren": 2}})
    assert [t.name for t in fig.data] == ["train", "val"]
    assert list(fig.data[0].x) == ["wren", "owl"]
    assert list(fig.data[1].y) == [2, 1]
    flat = figures.class_counts({"a": 1, "b": 5})
    assert list(flat.data[0].x) == ["b", "a"] and not flat.layout.showlegend


def test_training_curves_overlay_runs():
    hist = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_acc": 0.1 * e, "val_map": None} for e in range(1, 4)
    ]
    fig = figures.training_curves({"a": hist, "b": hist[:2]})
    # three metrics with values per run (val_map is empty and skipped), legend once per run
    assert len(fig.data) == 6
    assert sum(bool(t.showlegend) for t in fig.data) == 2
    assert {t.line.dash for t in fig.data if "train_loss" in t.hovertemplate} == {"dash"}
    single = figures.training_curves({"a": hist})
    assert {t.name for t in single.data} == {"train", "validation"}


def test_confusion_matrix_normalises_rows_and_labels_counts():
    m = np.array([[8, 2], [1, 3]])
    fig = figures.confusion_matrix(m, ["a", "b"])
    np.testing.assert_allclose(np.asarray(fig.data[0].z), [[0.8, 0.2], [0.25, 0.75]])
    assert np.asarray(fig.data[0].text).tolist() == [[8, 2], [1, 3]]
    with pytest.raises(ValueError):
        figures.confusion_matrix(m, ["a"])


def test_per_class_ap_weakest_first():
    fig = figures.per_class_ap({"a": 0.9, "b": 0.2, "c": None})
    assert list(fig.data[0].x) == ["c", "b", "a"]


def test_ablation_bar_and_cost_scatter():
    rows = [
        {"layout": "CCCC", "val_map": 0.7, "sd": 0.01, "params": 2e6},
        {"layout": "CCCT", "val_map": 0.8, "sd": 0.02, "params": 3e6},
    ]
    fig = figures.ablation(rows, error="sd", cost="params")
    assert list(fig.data[0].x) == ["CCCC", "CCCT"] and list(fig.data[0].error_y.array) == [0.01, 0.02]
    assert list(fig.data[1].x) == [2e6, 3e6]
    assert len(figures.ablation(rows).data) == 1


def test_attention_map_tokens_line_up_with_the_spectrogram():
    spec = np.zeros((64, 320))
    attn = np.zeros((4, 10))
    attn[1, 7] = 1.0
    fig = figures.attention_map(spec, attn, SR, HOP, query=(2, 3))
    overlay, clicks = fig.data[1], fig.data[2]
    # token (1, 7) covers mel bins 16..31 and frames 224..255
    assert overlay.y[1] == pytest.approx(23.5)
    assert overlay.x[7] == pytest.approx(239.5 * HOP / SR)
    custom = np.asarray(clicks.customdata)
    assert custom.shape == (40, 3)
    assert custom[:, 2].max() == 1.0  # the weight rides along for the hover text
    hit = np.argmin(np.abs(np.asarray(clicks.x) - overlay.x[7]) + np.abs(np.asarray(clicks.y) - overlay.y[1]))
    assert custom[hit].tolist() == [1, 7, 1.0]
    rect = fig.layout.shapes[0]
    assert rect.y0 == pytest.approx(32 - 0.5) and rect.x0 == pytest.approx(96 * HOP / SR - 0.5 * HOP / SR)


def test_attention_heads_and_bias_tables():
    spec = np.zeros((64, 320))
    fig = figures.attention_heads(spec, np.random.default_rng(0).random((6, 4, 10)), SR, HOP, query=(0, 0))
    assert sum(1 for t in fig.data if t.type == "heatmap") == 12
    table = np.random.default_rng(1).normal(size=(3, 7, 19))
    xs, ys = np.arange(-9, 10) * 0.32, np.arange(-3, 4) * 500.0
    bias = figures.relative_bias(table, xs, ys)
    assert len(bias.data) == 3
    assert bias.data[0].zmin == -bias.data[0].zmax == pytest.approx(-np.abs(table).max())
    assert list(bias.layout.yaxis.ticktext) == ["-1.5k", "-1k", "-500", "0", "+500", "+1k", "+1.5k"]
    assert list(bias.data[0].y) == [-3, -2, -1, 0, 1, 2, 3]  # evenly spaced token offsets
    assert len(figures.relative_bias(table, xs, ys, head=2).data) == 1
    with pytest.raises(ValueError):
        figures.relative_bias(table, xs[:-1], ys)


def test_prediction_views():
    probs = np.array([[0.1, 0.9, 0.0], [0.2, 0.3, 0.95], [0.0, 0.1, 0.2]])
    fig = figures.prediction_timeline([0.0, 1.5, 3.0], probs, ["a", "b", "c"], window=3.0, top=2)
    assert list(fig.data[0].y) == ["c", "b"]
    assert list(fig.data[0].x) == [1.5, 3.0, 4.5]
    bars = figures.top_k_bars(["b", "a"], [0.75, 0.2])
    assert list(bars.data[0].text) == ["75.0%", "20.0%"]


def test_attribution_overlay_is_signed_and_clipped():
    spec = np.zeros((32, 64))
    attr = np.zeros((32, 64))
    attr[0, 0], attr[5, 5], attr[6, 6] = 100.0, -1.0, 1.0
    fig = figures.attribution_overlay(spec, attr, SR, HOP, clip_percentile=99.9)
    z = np.asarray(fig.data[1].z)
    lim = np.percentile(np.abs(attr), 99.9)
    assert 0 < lim < 1.0
    assert z.max() == pytest.approx(lim) and z.min() == pytest.approx(-lim)  # the 100 is clipped
    assert fig.data[1].zmin == pytest.approx(-lim) and fig.data[1].zmax == pytest.approx(lim)
    coarse = figures.attribution_overlay(spec, np.ones((4, 8)), SR, HOP, signed=False)
    assert np.asarray(coarse.data[1].z).shape == (4, 8) and coarse.data[1].zmin == 0


def test_deletion_insertion_reports_areas():
    x = np.linspace(0, 1, 5)
    fig = figures.deletion_insertion(x, 1 - x, x, target="owl")
    assert "AUC 0.500" in fig.data[0].name and "AUC 0.500" in fig.data[1].name
    assert fig.layout.yaxis.title.text == "p(owl)"


def test_every_figure_serialises_with_torch_inputs():
    spec = torch.randn(1, 1, 32, 64)
    figs = [
        figures.spectrogram(spec, SR, HOP),
        figures.before_after(spec, spec * 0, SR, HOP),
        figures.duration_histogram([1.0, 2.0, 3.5], clip_seconds=3.0),
        figures.attention_map(spec, torch.rand(2, 4), SR, HOP),
    ]
    for fig in figs:
        assert json.loads(fig.to_json())["data"]
