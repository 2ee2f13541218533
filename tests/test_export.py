"""ONNX export: the DFT front end equals the torch one, and the exported graph scores real
recordings (FSDD, BirdCLEF sample, demo) like PyTorch to 1e-4 on probabilities."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fixtures_runs import PICO_CONFIG, PICO_LABELS, write_run

from asca_core.audio import load_audio
from asca_core.cli import main
from asca_core.config import Config, FeatureConfig
from asca_core.errors import AscaError, CheckpointError
from asca_core.export import PARITY_LIMIT, DftLogMel, OnnxScorer, export_onnx
from asca_core.features import FeatureExtractor
from asca_core.inference import Classifier

FSDD = ["fsdd/recordings/0_george_0.wav", "fsdd/recordings/7_jackson_12.wav", "fsdd/recordings/3_theo_40.wav"]
BIRD = "birdclef2023_sample/train_audio/abethr1/XC363501.ogg"


def _windows(wave: np.ndarray, n: int, count: int) -> np.ndarray:
    """``count`` windows of ``n`` samples spread over ``wave`` (zero-padded when short)."""
    wave = np.pad(wave, (0, max(0, n - wave.size)))
    starts = np.linspace(0, wave.size - n, count).astype(int)
    return np.stack([wave[s : s + n] for s in starts]).astype(np.float32)


@pytest.mark.parametrize(
    "features, clip",
    [
        (
            {"sample_rate": 8000, "n_fft": 512, "win_length": 200, "hop_length": 80, "n_mels": 64, "clip_seconds": 1.0},
            FSDD[0],
        ),
        (
            {
                "sample_rate": 32000,
                "n_fft": 2048,
                "win_length": 1280,
                "hop_length": 640,
                "n_mels": 128,
                "f_min": 300.0,
                "f_max": 14000.0,
                "clip_seconds": 5.0,
            },
            BIRD,
        ),
        ({"window": "hann", "n_fft": 512, "win_length": 512, "n_mels": 64, "clip_seconds": 2.0}, BIRD),
    ],
)
def test_dft_front_end_matches_torchaudio_on_real_audio(shared_data, features, clip):
    cfg = FeatureConfig(**features)
    extractor = FeatureExtractor(cfg)
    wave = load_audio(shared_data / clip, cfg.sample_rate)
    batch = torch.from_numpy(_windows(wave, cfg.clip_samples, 3))
    ours, theirs = DftLogMel(extractor)(batch), extractor.spectrogram(batch)
    assert ours.shape == theirs.shape
    # log-Mel units: float32 rounding of a 2,000-tap sum against an FFT
    assert float((ours - theirs).abs().max()) < 2e-4
    quiet = torch.zeros(1, cfg.clip_samples)
    torch.testing.assert_close(DftLogMel(extractor)(quiet), extractor.spectrogram(quiet))


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The trained tiny demo run exported with its front end, into a copy of the run."""
    run = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(tiny_run, run)
    record = export_onnx(run)
    return run, record


def test_export_writes_the_folder_and_records_versions(exported):
    run, record = exported
    folder = run / "export"
    assert {p.name for p in folder.iterdir()} == {
        "model.onnx",
        "labels.json",
        "thresholds.json",
        "config.yaml",
        "export.json",
    }
    meta = json.loads((folder / "export.json").read_text())
    assert meta == json.loads(json.dumps(record))
    assert meta["opset"] == 17 and meta["frontend"] is True
    assert set(meta["versions"]) >= {"torch", "onnx", "onnxruntime"}
    assert meta["input"] == {
        "name": "wave",
        "shape": ["batch", 48000],
        "dtype": "float32",
        "sample_rate": 16000,
        "window_seconds": 3.0,
    }
    assert meta["parity"]["max_abs_diff"] <= PARITY_LIMIT
    assert json.loads((folder / "labels.json").read_text()) == meta["labels"]
    thresholds = json.loads((folder / "thresholds.json").read_text())
    assert set(thresholds["classes"]) == set(meta["labels"])
    import onnx

    graph = onnx.load(str(folder / "model.onnx"))
    batch = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"  # dynamic batch
    assert not any(node.op_type in ("STFT", "DFT") for node in graph.graph.node)


def test_onnx_matches_pytorch_on_real_recordings(exported, shared_data, tiny_demo):
    run, _ = exported
    clf = Classifier.from_run(run)
    scorer = OnnxScorer.load(run / "export", threads=1)
    n = clf.cfg.features.clip_samples
    waves = [load_audio(shared_data / clip, clf.sample_rate) for clip in FSDD]
    demo = [load_audio(p, clf.sample_rate) for p in sorted(tiny_demo.parent.glob("*/*.wav"))[::5]]
    batch = np.concatenate(
        [_windows(w, n, 1) for w in waves + demo] + [_windows(load_audio(shared_data / BIRD, clf.sample_rate), n, 6)]
    )
    torch_probs = clf.predict_windows(batch)
    onnx_probs = scorer(batch)
    assert onnx_probs.shape == (len(batch), len(clf.labels))
    diff = float(np.abs(onnx_probs - torch_probs).max())
    assert diff <= PARITY_LIMIT, diff
    assert torch_probs.std(0).max() > 1e-3  # the windows score differently: the check has teeth
    for size in (1, 5):  # dynamic batch
        np.testing.assert_allclose(scorer(batch[:size]), torch_probs[:size], atol=PARITY_LIMIT)


def test_onnx_engine_predicts_a_long_recording_like_torch(exported, shared_data, tiny_demo):
    run, _ = exported
    torch_clf = Classifier.from_run(run)
    onnx_clf = Classifier.from_run(run, engine="onnx", threads=1)
    assert onnx_clf.engine == "onnx"
    for path in [shared_data / BIRD, *sorted(tiny_demo.parent.glob("*/*.wav"))[:3]]:
        a, b = torch_clf.predict(path), onnx_clf.predict(path)
        assert len(a.timeline) == len(b.timeline) >= 1
        np.testing.assert_allclose(b.timeline_array(), a.timeline_array(), atol=PARITY_LIMIT)
    with pytest.raises(AscaError, match="windows of 3 s only"):
        onnx_clf.predict(shared_data / BIRD, window=2.0)


def test_spectrogram_input_export(exported, shared_data, tmp_path):
    run, _ = exported
    record = export_onnx(run, tmp_path / "spec", frontend=False)
    clf = Classifier.from_run(run)
    assert record["input"]["name"] == "spec"
    assert record["input"]["shape"] == ["batch", 1, *clf.cfg.features.input_size]
    batch = _windows(load_audio(shared_data / BIRD, clf.sample_rate), clf.cfg.features.clip_samples, 4)
    spec = clf.extractor(torch.from_numpy(batch)).numpy()
    scorer = OnnxScorer.load(tmp_path / "spec")
    np.testing.assert_allclose(scorer(spec), clf.predict_windows(batch), atol=PARITY_LIMIT)
    via_engine = Classifier.from_run(run, engine="onnx", onnx_path=tmp_path / "spec")
    np.testing.assert_allclose(via_engine.predict_windows(batch), clf.predict_windows(batch), atol=PARITY_LIMIT)


def test_cli_export_summary_and_errors(exported, tmp_path, capsys):
    run, _ = exported
    assert main(["export", str(run), "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "opset 17" in out and "parity with PyTorch: max |diff|" in out and "batch x 48000" in out
    assert (tmp_path / "cli" / "model.onnx").stat().st_size > 100_000
    # a run folder without weights
    bare = write_run(tmp_path / "bare", Config.from_dict(PICO_CONFIG), PICO_LABELS)
    shutil.rmtree(bare / "checkpoints")
    assert main(["export", str(bare)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"asca export: error: run {bare} has no best checkpoint yet"]
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["export", str(run), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_kaldi_front_end_is_refused_with_frontend_but_exports_without(tmp_path):
    cfg = Config.from_dict(
        {
            **PICO_CONFIG,
            "data": {"path": str(tmp_path / "gone")},
            "features": {**PICO_CONFIG["features"], "frontend": "kaldi"},
        }
    )
    run = write_run(tmp_path / "kaldi", cfg, PICO_LABELS)
    with pytest.raises(AscaError, match="frontend=kaldi.*--no-frontend"):
        export_onnx(run)
    assert export_onnx(run, frontend=False)["frontend"] is False


def test_onnx_engine_errors_are_one_line(exported, tmp_path):
    run, _ = exported
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with pytest.raises(AscaError, match="unknown engine 'tensorflow'"):
        Classifier.from_run(copy, engine="tensorflow")
    with pytest.raises(CheckpointError, match="no ONNX model at .*run asca export"):
        Classifier.from_run(copy, engine="onnx", onnx_path=tmp_path / "none")
    (copy / "export" / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match="not a loadable ONNX model") as err:
        Classifier.from_run(copy, engine="onnx")
    assert "\n" not in str(err.value)
    shutil.copytree(run / "export", copy / "export", dirs_exist_ok=True)
    ckpt = copy / "checkpoints" / "best.safetensors"
    shutil.copy(copy / "checkpoints" / "last.safetensors", ckpt)  # another checkpoint version
    if (run / "checkpoints" / "best.safetensors").read_bytes() != ckpt.read_bytes():
        with pytest.raises(CheckpointError, match="exported from another version"):
            Classifier.from_run(copy, engine="onnx")
