"""Attributions, attention views and faithfulness on an untrained asca_pico run.

Plumbing and maths that hold for any weights: map shapes and alignment, Integrated Gradients'
completeness, stitching of long recordings, hooks always removed, target selection, batching
invariance, the listenable explanation, bias-table units, curve end points. What needs a model
that has learned something (calls located, deletion beating a random order) is in
``test_attribution_demo.py``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from fixtures_runs import PICO_CONFIG, PICO_LABELS, write_run

from asca_core.config import Config
from asca_core.errors import AscaError
from asca_core.inference import Classifier
from asca_core.inspect.attribution import (
    METHODS,
    Attribution,
    attribute,
    explain_audio,
    frame_times,
    make_baseline,
    mel_frequencies,
    silence_value,
)
from asca_core.inspect.faithfulness import (
    attention_agreement,
    deletion_curve,
    insertion_curve,
    random_map,
    rank_agreement,
    rollout_map,
)
from asca_core.inspect.views import attention_views, bias_views

SR = 16000
FAST = {  # per-method options that keep each call to a fraction of a second on a pico model
    "integrated_gradients": {"n_steps": 16},
    "occlusion": {"patch": (16, 16), "stride": (16, 16)},
}
HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
)


def _call(seconds: float = 1.0, at: tuple[float, float] = (0.3, 0.6), seed: int = 0) -> np.ndarray:
    """Faint noise with a loud 2 kHz tone between ``at`` seconds."""
    rng = np.random.default_rng(seed)
    wave = 0.01 * rng.standard_normal(int(seconds * SR))
    t = np.arange(wave.size) / SR
    on = (t >= at[0]) & (t < at[1])
    wave[on] += 0.5 * np.sin(2 * np.pi * 2000 * t[on])
    return wave.astype(np.float32)


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(getattr(m, name, {}) or {}) for m in model.modules() for name in HOOKS)


@pytest.fixture(scope="module")
def clf(pico_run):
    return Classifier.from_run(pico_run)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_a_map_shaped_like_the_spectrogram(clf, method):
    wave = _call()
    attr = attribute(clf, wave, method=method, **FAST.get(method, {}))
    assert isinstance(attr, Attribution)
    # 1 s at 16 kHz, hop 160: 101 front-end frames, centre-cropped to the model's 96.
    assert attr.map.shape == attr.spec.shape == (64, 96)
    assert attr.times.shape == (96,) and attr.freqs.shape == (64,)
    assert np.isfinite(attr.map).all() and np.abs(attr.map).max() > 0
    assert attr.method == method and attr.target == clf.labels.index(attr.label)
    # spec is the model input with its padding cropped.
    model_input = clf.spectrogram(wave)[0, 0].numpy()
    np.testing.assert_allclose(attr.spec, model_input[attr.cells], rtol=1e-6)
    np.testing.assert_allclose(attr.times, (np.arange(96) + 2) * 0.01)  # offset 2 = (101 - 96) // 2
    assert _hook_count(clf.model) == 0


def test_integrated_gradients_is_complete(clf):
    """IG's completeness axiom: the map sums to f(x) - f(baseline) for the explained logit."""
    wave = _call()
    attr = attribute(clf, wave, method="integrated_gradients", target=1, n_steps=64)
    x = clf.spectrogram(wave)
    with torch.no_grad():
        gap = (clf.model(x) - clf.model(torch.full_like(x, silence_value(clf.extractor))))[0, 1].item()
    assert attr.meta["baseline"] == "silence" and attr.meta["n_steps"] == 64
    assert attr.map.sum() == pytest.approx(gap, abs=0.02 * abs(gap) + 1e-4)
    assert attr.meta["convergence_delta"] < 0.02 * abs(gap) + 1e-4


def test_internal_batching_does_not_change_results(clf):
    wave = _call(seed=2)
    ig1 = attribute(clf, wave, method="integrated_gradients", n_steps=12, internal_batch_size=1)
    ig12 = attribute(clf, wave, method="integrated_gradients", n_steps=12, internal_batch_size=12)
    np.testing.assert_allclose(ig1.map, ig12.map, rtol=1e-4, atol=1e-6)
    occ1 = attribute(clf, wave, method="occlusion", patch=(16, 16), stride=(16, 16), perturbations_per_eval=1)
    occ8 = attribute(clf, wave, method="occlusion", patch=(16, 16), stride=(16, 16), perturbations_per_eval=8)
    np.testing.assert_allclose(occ1.map, occ8.map, rtol=1e-4, atol=1e-6)
    assert occ8.meta["perturbations_per_eval"] == 8 and occ8.meta["patch"] == [16, 16]


def test_default_batches_hold_a_bounded_number_of_cells(clf):
    from asca_core.inspect.attribution import batch_size_for
    from asca_core.utils import CPU_BATCH_CELLS as BATCH_CELLS

    five_seconds = torch.zeros(1, 1, 128, 512)
    assert batch_size_for(five_seconds, None, 32) == 4  # 4 x 65,536 cells = BATCH_CELLS
    assert batch_size_for(torch.zeros(1, 1, 64, 160), None, 32) == 16  # the largest power of two that fits
    assert batch_size_for(torch.zeros(1, 1, 64, 160), None, 10) == 10  # never more than there is to do
    assert batch_size_for(torch.zeros(1, 1, 1024, 1024), None, 32) == 1  # one input over the budget
    assert batch_size_for(five_seconds, 12, 32) == 12  # what is asked for
    for n in (1, 2, 3, 100, 4096):
        size = batch_size_for(torch.zeros(1, 1, 1, n), None, 10**6)
        assert size * n <= max(BATCH_CELLS, n) and (2 * size * n > BATCH_CELLS or size == 10**6)
    wave = _call(seed=2)
    auto = attribute(clf, wave, method="integrated_gradients", n_steps=12)
    x = clf.spectrogram(wave)
    assert auto.meta["internal_batch_size"] == batch_size_for(x, None, 12)
    explicit = attribute(clf, wave, method="integrated_gradients", n_steps=12, internal_batch_size=3)
    np.testing.assert_allclose(auto.map, explicit.map, rtol=1e-4, atol=1e-6)


def test_blur_baseline_is_a_different_reference(clf):
    wave = _call(seed=3)
    silence = attribute(clf, wave, method="integrated_gradients", target=0, n_steps=16)
    blur = attribute(clf, wave, method="integrated_gradients", target=0, baseline="blur", n_steps=16)
    assert blur.meta["baseline"] == "blur" and blur.meta["n_steps"] == 16
    assert not np.allclose(silence.map, blur.map)
    # Completeness against the blurred spectrogram: the map sums to f(x) - f(blur(x)).
    x = clf.spectrogram(wave)
    reference = make_baseline(x, "blur", clf.extractor)
    assert not torch.allclose(reference, x)
    with torch.no_grad():
        gap = (clf.model(x) - clf.model(reference))[0, 0].item()
    assert blur.map.sum() == pytest.approx(gap, abs=0.05 * abs(gap) + 1e-3)


def test_target_selection_is_honoured(clf):
    wave = _call(seed=4)
    top = int(np.argmax(clf.predict(wave).probs))
    default = attribute(clf, wave, method="saliency", abs=False)
    assert default.target == top and default.label == PICO_LABELS[top]
    other = (top + 1) % len(PICO_LABELS)
    by_name = attribute(clf, wave, method="saliency", target=PICO_LABELS[other], abs=False)
    by_index = attribute(clf, wave, method="saliency", target=other, abs=False)
    assert by_name.target == other and by_name.label == PICO_LABELS[other]
    np.testing.assert_array_equal(by_name.map, by_index.map)
    assert not np.allclose(default.map, by_name.map)
    for method in ("integrated_gradients", "gradcam_conv"):
        a = attribute(clf, wave, method=method, target=top, **FAST.get(method, {}))
        b = attribute(clf, wave, method=method, target=other, **FAST.get(method, {}))
        assert (a.target, b.target) == (top, other)
        assert not np.allclose(a.map, b.map)
    with pytest.raises(AscaError, match="unknown class"):
        attribute(clf, wave, method="saliency", target="owl")
    with pytest.raises(AscaError, match="out of range"):
        attribute(clf, wave, method="saliency", target=len(PICO_LABELS))


@pytest.mark.parametrize("method", METHODS)
def test_hooks_are_removed_even_when_the_forward_fails(clf, method, monkeypatch):
    model = clf.model
    assert _hook_count(model) == 0

    def broken(x):
        raise RuntimeError("head exploded")

    monkeypatch.setattr(model.head, "forward", broken)
    with pytest.raises(RuntimeError, match="head exploded"):
        attribute(clf, _call(), method=method, target=0, **FAST.get(method, {}))
    assert _hook_count(model) == 0
    monkeypatch.undo()
    assert attribute(clf, _call(), method=method, target=0, **FAST.get(method, {})).map.shape == (64, 96)


def test_long_recording_is_stitched_from_windows(clf):
    wave = _call(seconds=4.5, at=(2.0, 2.4), seed=5)
    attr = attribute(clf, wave, method="saliency", target=2)
    # Default hop = the 96 frames the model sees (0.96 s), so windows tile the recording.
    assert attr.meta["hop"] == pytest.approx(0.96)
    assert attr.meta["window_starts"] == pytest.approx([0.0, 0.96, 1.92, 2.88, 3.84])
    assert attr.map.shape[1] == attr.times.size == 451 - 2  # every frame after the first window's crop
    np.testing.assert_allclose(np.diff(attr.times), 0.01)
    assert attr.times[0] == pytest.approx(0.02) and attr.times[-1] == pytest.approx(4.5)
    # Columns of window 2 are that window's own attribution.
    start = int(1.92 * SR)
    alone = attribute(clf, wave[start : start + SR], method="saliency", target=2)
    cols = slice(192, 192 + 96)
    np.testing.assert_allclose(attr.map[:, cols], alone.map, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(attr.spec[:, cols], alone.spec, rtol=1e-5, atol=1e-6)
    assert attr.inputs is None and attr.cells is None  # several windows: no single model input


def test_sixty_second_recording_fits_through_windows(clf, tmp_path):
    import soundfile as sf

    path = tmp_path / "minute.wav"
    sf.write(path, _call(seconds=60.0, at=(30.0, 31.0)), SR)
    attr = attribute(clf, path, method="integrated_gradients", target=0, n_steps=2, internal_batch_size=2)
    assert attr.meta["windows"] == 63
    assert attr.map.shape == (64, 6001 - 2)
    assert np.isfinite(attr.map).all()


def test_overlapping_windows_are_averaged(clf):
    wave = _call(seconds=2.0, seed=6)
    attr = attribute(clf, wave, method="saliency", target=0, hop=0.5)
    assert attr.meta["windows"] == 3
    # Windows at 0, 0.5 and 1.0 s each see front-end frames 2..97 of their second of audio.
    assert attr.map.shape == (64, 196) and attr.times[-1] == pytest.approx(1.97)
    maps = [attribute(clf, wave[int(s * SR) : int(s * SR) + SR], method="saliency", target=0).map for s in (0.0, 0.5)]
    # Frame 60 (0.62 s) is seen by the first two windows, as their columns 58 and 8.
    np.testing.assert_allclose(attr.map[:, 58], (maps[0][:, 58] + maps[1][:, 8]) / 2, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(attr.map[:, 10], maps[0][:, 10], rtol=1e-5, atol=1e-8)  # one window only


def test_options_and_names_are_validated(clf):
    wave = _call()
    with pytest.raises(AscaError, match="unknown attribution method"):
        attribute(clf, wave, method="lime")
    with pytest.raises(AscaError, match="baseline"):
        attribute(clf, wave, method="integrated_gradients", baseline="noise")
    with pytest.raises(AscaError, match="n_step"):
        attribute(clf, wave, method="saliency", n_steps=3)
    with pytest.raises(AscaError, match="patch"):
        attribute(clf, wave, method="occlusion", patch=(0, 4))


def test_gradcam_layers_and_layouts(clf, tmp_path):
    wave = _call()
    conv = attribute(clf, wave, method="gradcam_conv", target=0)
    attn = attribute(clf, wave, method="gradcam_attention", target=0)
    assert conv.meta["layer"] == "s3" and attn.meta["layer"] == "s4"
    assert conv.meta["layer_grid"] == [4, 6] and attn.meta["layer_grid"] == [2, 3]
    assert (conv.map >= 0).all() and (attn.map >= 0).all()  # ReLU'd class activation maps
    cccc = Config.from_dict({**PICO_CONFIG, "model": {"name": "asca_pico", "layout": "CCCC"}})
    conv_only = Classifier.from_run(write_run(tmp_path / "cccc", cccc, PICO_LABELS))
    assert attribute(conv_only, wave, method="gradcam_conv", target=0).meta["layer"] == "s4"
    with pytest.raises(AscaError, match="no attention stage"):
        attribute(conv_only, wave, method="gradcam_attention", target=0)


def test_gradcam_attention_folds_vit_tokens_back_onto_the_grid(tmp_path):
    cfg = Config.from_dict({**PICO_CONFIG, "model": {"name": "ast_tiny"}})
    ast = Classifier.from_run(write_run(tmp_path / "ast", cfg, PICO_LABELS))
    attr = attribute(ast, _call(), method="gradcam_attention", target=1)
    assert attr.meta["layer"] == "blocks.11"
    assert attr.meta["layer_grid"] == [5, 9]  # 16x16 patches every 10 over 64 x 96
    assert attr.map.shape == (64, 96) and np.isfinite(attr.map).all()
    assert _hook_count(ast.model) == 0


def test_explain_audio_keeps_only_the_attributed_regions():
    cfg = Config.from_dict(PICO_CONFIG).features
    wave = _call(seconds=1.0, at=(0.0, 1.0))
    times = frame_times(cfg, 101)
    stft = {
        "sample_rate": SR,
        "n_fft": cfg.n_fft,
        "win_length": cfg.win_length,
        "hop_length": cfg.hop_length,
        "f_min": cfg.f_min,
        "f_max": cfg.f_max,
    }
    everything = Attribution(
        map=np.ones((64, 101)),
        spec=np.zeros((64, 101)),
        times=times,
        freqs=mel_frequencies(cfg),
        target=0,
        label="x",
        method="test",
        meta={"stft": stft},
    )
    out = explain_audio(everything, wave, SR, keep=1.0)
    assert out.shape == wave.shape and out.dtype == np.float32
    # Mel filters leave no STFT bin below f_min uncovered but the lowest; the rest comes back.
    assert np.abs(out - wave)[800:-800].max() < 0.05
    late = np.zeros((64, 101))
    late[:, 60:] = 1.0  # only the last 0.4 s is attributed
    out = explain_audio(
        Attribution(late, late, times, mel_frequencies(cfg), 0, "x", "test", {"stft": stft}), wave, SR, keep=1.0
    )
    assert np.abs(out[: int(0.5 * SR)]).max() < 0.02 and np.abs(out[int(0.7 * SR) :]).max() > 0.3
    random = dataclasses.replace(everything, map=np.random.default_rng(0).random((64, 101)))
    tight = explain_audio(random, wave, SR, keep=0.05)
    assert np.sqrt(np.mean(tight**2)) < np.sqrt(np.mean(wave**2))
    with pytest.raises(AscaError, match="keep"):
        explain_audio(everything, wave, SR, keep=0.0)


def test_explain_audio_from_an_attribution_at_another_rate(clf):
    wave = _call(seconds=1.0, at=(0.3, 0.6))
    attr = attribute(clf, wave, method="saliency")
    from asca_core.audio import resample

    wave44 = resample(wave, SR, 44100)
    out = explain_audio(attr, wave44, 44100, keep=0.2)
    assert out.shape == wave44.shape and np.isfinite(out).all()


def test_attention_views_units_and_shapes(clf):
    wave = _call()
    views = attention_views(clf, wave, query=(1, 2))
    assert list(views.blocks) == ["s4.0"]
    block = views.blocks["s4.0"]
    heads = clf.model.s4[0].attn.num_heads
    assert block.grid == (2, 3) and block.stride == (32, 32) and block.query == (1, 2)
    assert block.heads.shape == (heads, 2, 3)
    np.testing.assert_allclose(block.heads.sum(axis=(1, 2)), 1.0, rtol=1e-5)  # one softmax row per head
    np.testing.assert_allclose(block.mean, block.heads.mean(0), rtol=1e-6)
    # Token column k covers frames 32k..32k+31 of the model input, which starts at frame 2 (0.02 s).
    np.testing.assert_allclose(block.token_times, 0.02 + (np.arange(3) * 32 + 15.5) * 0.01)
    assert np.all(np.diff(block.token_freqs) > 0) and block.token_freqs[-1] < 8000
    assert views.rollout.shape == (2, 3) and views.rollout.sum() == pytest.approx(1.0, rel=1e-5)
    assert views.rollout_relevance.sum() == pytest.approx(1.0, rel=1e-5)
    assert views.spec.shape == (64, 96) and views.times.shape == (96,) and views.freqs.shape == (64,)
    np.testing.assert_allclose(views.probs, clf.predict(wave).probs, rtol=1e-5)
    one = attention_views(clf, wave, head=1, query=(0, 0))
    np.testing.assert_allclose(
        one.blocks["s4.0"].heads[0], attention_views(clf, wave, query=(0, 0)).blocks["s4.0"].heads[1], rtol=1e-6
    )
    with pytest.raises(AscaError, match="outside"):
        attention_views(clf, wave, query=(5, 0))
    with pytest.raises(AscaError, match="no attention block"):
        attention_views(clf, wave, block="s9.0")


def test_bias_views_convert_offsets_to_seconds_and_hz(clf):
    cfg = clf.cfg.features
    view = bias_views(clf)["s4.0"]
    heads = clf.model.s4[0].attn.num_heads
    assert view.table.shape == (heads, 3, 5)
    np.testing.assert_allclose(view.time_offsets_frames, [-64, -32, 0, 32, 64])
    np.testing.assert_allclose(view.time_offsets_s, [-0.64, -0.32, 0.0, 0.32, 0.64])
    np.testing.assert_allclose(view.freq_offsets_bins, [-32, 0, 32])
    assert view.freq_offsets_hz[1] == 0.0 and view.freq_offsets_hz[0] < 0 < view.freq_offsets_hz[2]
    # The mel scale widens upwards: 32 bins up span more Hz than 32 bins down.
    assert view.freq_offsets_hz[2] > -view.freq_offsets_hz[0]
    centres = mel_frequencies(cfg)
    assert view.ref_freq_hz == pytest.approx((centres[31] + centres[32]) / 2, rel=0.02)
    table = clf.model.s4[0].attn.rel_bias.table.detach().numpy()
    np.testing.assert_allclose(view.table, table)  # the grid it was built for: the whole table


def test_attention_views_need_attention(tmp_path):
    cccc = Config.from_dict({**PICO_CONFIG, "model": {"name": "asca_pico", "layout": "CCCC"}})
    conv_only = Classifier.from_run(write_run(tmp_path / "cccc", cccc, PICO_LABELS))
    with pytest.raises(AscaError, match="no attention"):
        attention_views(conv_only, _call())


def test_rank_agreement():
    rng = np.random.default_rng(0)
    a = rng.random((16, 24))
    same = rank_agreement(a, a * 3 + 1)
    assert same.spearman == pytest.approx(1.0) and same.topk_overlap == 1.0
    flipped = rank_agreement(a, -a)
    assert flipped.spearman == pytest.approx(-1.0) and flipped.topk_overlap == 0.0
    chance = rank_agreement(a, rng.random((16, 24)), top_fraction=0.2)
    assert abs(chance.spearman) < 0.2 and chance.k == round(0.2 * 16 * 24)
    with pytest.raises(AscaError):
        rank_agreement(a, a[:, :5])


def test_rollout_map_and_agreement(clf):
    attr = attribute(clf, _call(), method="gradcam_attention", target=0)
    roll = rollout_map(clf, attr)
    assert roll.shape == attr.map.shape and (roll > 0).all()
    agreement = attention_agreement(clf, attr, top_fraction=0.1)
    assert -1.0 <= agreement.spearman <= 1.0 and 0.0 <= agreement.topk_overlap <= 1.0
    assert agreement.k == round(0.1 * 64 * 96)


def test_deletion_and_insertion_curve_end_points(clf):
    wave = _call()
    attr = attribute(clf, wave, method="integrated_gradients", n_steps=16)
    x = clf.spectrogram(wave)
    with torch.no_grad():
        p_full = torch.sigmoid(clf.model(x))[0, attr.target].item()
        p_base = torch.sigmoid(clf.model(torch.full_like(x, silence_value(clf.extractor))))[0, attr.target].item()
    deletion = deletion_curve(clf, attr, steps=10, baseline="silence")
    insertion = insertion_curve(clf, attr, steps=10, baseline="silence")
    assert deletion.baseline == "silence"
    assert deletion.fractions.shape == deletion.probs.shape == (11,)
    assert deletion.probs[0] == pytest.approx(p_full, abs=1e-5) and deletion.probs[-1] == pytest.approx(
        p_base, abs=1e-5
    )
    assert insertion.probs[0] == pytest.approx(p_base, abs=1e-5) and insertion.probs[-1] == pytest.approx(
        p_full, abs=1e-5
    )
    assert deletion.auc == pytest.approx(np.trapezoid(deletion.probs, deletion.fractions))
    shuffled = deletion_curve(clf, attr, values=random_map(attr.map.shape, seed=1), steps=10, baseline="silence")
    blurred = deletion_curve(clf, attr, steps=10)  # default: cells replaced by a blurred copy
    reference = make_baseline(x, "blur", clf.extractor)
    with torch.no_grad():
        p_blur = torch.sigmoid(clf.model(reference))[0, attr.target].item()
    assert blurred.baseline == "blur" and blurred.probs[-1] == pytest.approx(p_blur, abs=1e-5)
    assert shuffled.probs[0] == pytest.approx(deletion.probs[0]) and not np.allclose(shuffled.probs, deletion.probs)
    long_attr = attribute(clf, _call(seconds=3.0), method="saliency")
    with pytest.raises(AscaError, match="one-window"):
        deletion_curve(clf, long_attr)


def test_clip_shorter_than_a_window_keeps_map_and_model_input_aligned(clf):
    wave = _call(seconds=0.5, at=(0.1, 0.3))
    attr = attribute(clf, wave, method="saliency", target=0)
    # 0.5 s is centred in the 1 s window (4000 samples = 25 frames of padding on each side);
    # the map keeps the recording's own 51 frames, 0 .. 0.5 s.
    assert attr.map.shape == (64, 51)
    np.testing.assert_allclose(attr.times, np.arange(51) * 0.01, atol=1e-9)
    model_input = clf.spectrogram(wave)[0, 0].numpy()
    assert attr.cells[1] == slice(23, 74)  # model column = frame + 25 - 2 (crop offset)
    np.testing.assert_allclose(attr.spec, model_input[attr.cells], rtol=1e-6)
    curve = deletion_curve(clf, attr, steps=4)
    p_clip = clf.predict(wave).probs[0]
    assert curve.probs[0] == pytest.approx(p_clip, abs=1e-5)
