"""Classifier: safe loading, what the model sees, sliding windows, streaming, aggregates."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from fixtures_runs import PICO_CONFIG, PICO_LABELS, write_run

from asca_core.config import Config
from asca_core.errors import AscaError, AudioError, CheckpointError
from asca_core.features import FeatureExtractor
from asca_core.inference import Classifier, Prediction

SR = 16000


def _noise(seconds: float, seed: int = 0, sample_rate: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.2 * rng.standard_normal(int(round(seconds * sample_rate)))).astype(np.float32)


def _varied(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise whose level and colour change along the recording, so windows score differently."""
    wave = _noise(seconds, seed)
    t = np.arange(wave.size) / SR
    wave *= (0.2 + np.abs(np.sin(2 * np.pi * t / 7.0))).astype(np.float32)
    wave += (0.3 * np.sin(2 * np.pi * (500 + 300 * t) * t) * (np.sin(t) > 0.5)).astype(np.float32)
    return wave


@pytest.fixture(scope="module")
def clf(pico_run):
    return Classifier.from_run(pico_run)


def test_from_run_loads_config_labels_and_weights(clf, pico_run):
    assert clf.labels == PICO_LABELS
    assert clf.sample_rate == SR and clf.clip_seconds == 1.0
    assert clf.activation == "sigmoid"
    assert not clf.model.training
    # The weights are the checkpoint's: a second load scores identically.
    again = Classifier.from_run(pico_run, checkpoint="last")
    wave = _noise(1.0)
    np.testing.assert_allclose(clf.predict(wave).probs, again.predict(wave).probs, rtol=1e-6)


def test_from_run_errors_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Classifier.from_run(tmp_path / "nope")
    run = write_run(tmp_path / "run", Config.from_dict(PICO_CONFIG), PICO_LABELS)
    (run / "checkpoints" / "best.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        Classifier.from_run(run)
    (run / "checkpoints" / "last.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        Classifier.from_run(run, checkpoint="last")
    assert "\n" not in str(err.value)


def test_spectrogram_is_exactly_the_model_input(clf):
    wave = _noise(1.0, seed=3)
    spec = clf.spectrogram(wave)
    assert spec.shape == (1, 1, *clf.cfg.features.input_size)
    expected = FeatureExtractor(clf.cfg.features)(torch.from_numpy(wave)[None])
    torch.testing.assert_close(spec, expected)
    with torch.no_grad():
        probs = torch.sigmoid(clf.model(spec))[0].numpy()
    np.testing.assert_allclose(clf.predict(wave).probs, probs, rtol=1e-5, atol=1e-6)


def test_short_clip_is_centred_in_its_window_as_evaluation_pads_it(clf, tmp_path):
    from asca_core.data.dataset import fit_length

    wave = _noise(0.4, seed=8)
    spec = clf.spectrogram(wave)
    expected = FeatureExtractor(clf.cfg.features)(torch.from_numpy(fit_length(wave, SR))[None])
    torch.testing.assert_close(spec, expected)  # the evaluation dataset's centred zero padding
    pred = clf.predict(wave)
    assert len(pred.timeline) == 1
    assert (pred.timeline[0].start, pred.timeline[0].end) == (0.0, pytest.approx(0.4))
    with torch.no_grad():
        np.testing.assert_allclose(pred.probs, torch.sigmoid(clf.model(spec))[0].numpy(), rtol=1e-5)
    path = tmp_path / "short.wav"
    sf.write(path, wave, SR, subtype="FLOAT")
    np.testing.assert_allclose(clf.predict(path).probs, pred.probs, rtol=1e-5)


def test_one_clip_gives_one_window_and_sorted_top_k(clf):
    pred = clf.predict(_noise(1.0), top_k=3)
    assert isinstance(pred, Prediction)
    assert len(pred.timeline) == 1 and pred.timeline[0].start == 0.0 and pred.timeline[0].end == 1.0
    np.testing.assert_array_equal(pred.probs_max, pred.probs_mean)
    assert len(pred.top) == 3
    probs = [p for _, p in pred.top]
    assert probs == sorted(probs, reverse=True)
    assert pred.top[0] == (pred.labels[int(np.argmax(pred.probs))], pytest.approx(float(pred.probs.max())))
    assert set(pred.class_probs()) == set(PICO_LABELS)
    assert ((pred.probs > 0) & (pred.probs < 1)).all()


def test_sixty_second_recording_gives_a_timeline_of_windows(clf, tmp_path):
    path = tmp_path / "long.flac"
    wave = _varied(60.0)
    sf.write(path, wave, SR)
    pred = clf.predict(path)
    # window 1 s (the run's clip), hop 0.5 s: windows start at 0, 0.5, ..., 59.0.
    starts = [w.start for w in pred.timeline]
    assert len(starts) == 1 + math.ceil((60.0 - 1.0) / 0.5)
    np.testing.assert_allclose(np.diff(starts), 0.5)
    assert pred.timeline[-1].end == pytest.approx(60.0)
    table = pred.timeline_array()
    assert table.shape == (len(starts), len(PICO_LABELS))
    np.testing.assert_allclose(pred.probs_max, table.max(0))
    np.testing.assert_allclose(pred.probs_mean, table.mean(0), rtol=1e-6)
    assert table.std(0).max() > 1e-4  # windows really differ: each was scored on its own audio
    # A window of the stream scores exactly like the same samples given as a clip.
    k = 37
    alone = clf.predict(wave[int(starts[k] * SR) : int(starts[k] * SR) + SR]).probs
    np.testing.assert_allclose(table[k], alone, rtol=1e-4, atol=1e-5)


def test_file_and_wave_agree_and_custom_window_hop(clf, tmp_path):
    wave = _varied(4.2, seed=5)
    path = tmp_path / "clip.wav"
    sf.write(path, wave, SR, subtype="FLOAT")
    from_file = clf.predict(path, window=2.0, hop=1.0)
    from_wave = clf.predict(wave, window=2.0, hop=1.0)
    assert [w.start for w in from_file.timeline] == [0.0, 1.0, 2.0, 3.0]
    assert from_file.timeline[-1].end == pytest.approx(4.2)
    np.testing.assert_allclose(from_file.timeline_array(), from_wave.timeline_array(), rtol=1e-5, atol=1e-6)
    assert from_file.source == str(path) and from_wave.source == "<wave>"


def test_wave_at_another_rate_is_resampled(clf):
    from asca_core.audio import resample

    wave8 = _noise(1.0, seed=2, sample_rate=8000)
    direct = clf.predict(wave8, sample_rate=8000).probs
    np.testing.assert_allclose(direct, clf.predict(resample(wave8, 8000, SR)).probs, rtol=1e-6)
    assert not np.allclose(direct, clf.predict(wave8).probs)  # taken as 16 kHz it is another sound


def test_batching_does_not_change_scores_and_bounds_the_batch(clf, monkeypatch):
    wave = _varied(6.0, seed=1)
    sizes = []
    original = Classifier.predict_windows

    def spy(self, waves, window=None):
        sizes.append(len(waves))
        return original(self, waves, window)

    monkeypatch.setattr(Classifier, "predict_windows", spy)
    small = Classifier(clf.model, clf.cfg, clf.labels, batch_windows=3)
    a = small.predict(wave).timeline_array()
    assert max(sizes) == 3 and sum(sizes) == len(a) == 11
    b = clf.predict(wave).timeline_array()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_long_file_is_streamed_not_loaded(clf, tmp_path, monkeypatch):
    import asca_core.audio as audio

    path = tmp_path / "long.wav"
    sf.write(path, _noise(20.0), SR)
    calls = []
    monkeypatch.setattr(audio, "load_audio", lambda *a, **k: calls.append(a) or pytest.fail("whole-file read"))
    pred = clf.predict(path)
    assert len(pred.timeline) == 39 and not calls


def test_aggregate_choice(clf):
    wave = _varied(5.0, seed=4)
    by_max = clf.predict(wave, aggregate="max", top_k=4)
    by_mean = clf.predict(wave, aggregate="mean", top_k=4)
    np.testing.assert_array_equal(by_max.probs, by_max.probs_max)
    np.testing.assert_array_equal(by_mean.probs, by_mean.probs_mean)
    assert (by_max.probs >= by_mean.probs - 1e-7).all()
    with pytest.raises(AscaError, match="aggregate"):
        clf.predict(wave, aggregate="median")


def test_softmax_for_cross_entropy_runs(tmp_path):
    cfg = Config.from_dict({**PICO_CONFIG, "train": {"loss": "ce"}})
    clf = Classifier.from_run(write_run(tmp_path / "ce", cfg, PICO_LABELS))
    assert clf.activation == "softmax"
    table = clf.predict(_varied(3.0)).timeline_array()
    np.testing.assert_allclose(table.sum(1), 1.0, rtol=1e-5)


def test_json_and_csv_outputs(clf, tmp_path):
    pred = clf.predict(_varied(2.0), top_k=2)
    data = json.loads(json.dumps(pred.to_dict()))
    assert [t["label"] for t in data["top"]] == [name for name, _ in pred.top]
    assert len(data["timeline"]) == 3 and set(data["timeline"][0]["probs"]) == set(PICO_LABELS)
    out = pred.write_timeline_csv(tmp_path / "t.csv")
    lines = out.read_text().splitlines()
    assert lines[0] == "source,start,end," + ",".join(PICO_LABELS)
    assert len(lines) == 4 and lines[2].startswith("<wave>,0.500,1.500,")


def test_bad_inputs_raise_one_line_errors(clf, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    with pytest.raises(AudioError, match="bad.wav"):
        clf.predict(bad)
    with pytest.raises(AudioError, match="NaN"):
        clf.predict(np.full(SR, np.nan, dtype=np.float32))
    with pytest.raises(AudioError, match="empty"):
        clf.predict(np.zeros(0, dtype=np.float32))
    with pytest.raises(AscaError, match="top_k"):
        clf.predict(_noise(1.0), top_k=0)
    with pytest.raises(AscaError, match="hop"):
        clf.predict(_noise(1.0), hop=-1.0)
    with pytest.raises(AscaError, match="unknown class"):
        clf.label_index("owl")


@pytest.mark.gpu
def test_runs_on_cuda(pico_run):
    gpu = Classifier.from_run(pico_run, device="cuda")
    cpu = Classifier.from_run(pico_run)
    wave = _noise(2.0)
    assert next(gpu.model.parameters()).device.type == "cuda"
    np.testing.assert_allclose(gpu.predict(wave).probs, cpu.predict(wave).probs, atol=1e-4)
