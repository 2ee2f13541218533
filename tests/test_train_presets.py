"""The YAML presets in configs/: they load, say what they promise and fit their model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asca_core.cli.train_cmd import load_train_config
from asca_core.config import load_config
from asca_core.features import FeatureExtractor
from asca_core.train.checkpoint import model_from_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = ["demo", "fsdd", "gpu", "paper_birdclef", "paper_birdclef_scratch"]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_features_fit_the_model(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    extractor = FeatureExtractor(cfg.features).eval()
    wave = torch.randn(1, cfg.features.clip_samples) * 0.1
    spec = extractor(wave)
    assert tuple(spec.shape[-2:]) == tuple(cfg.features.input_size)
    if cfg.model.name != "asca_0":  # asca_0 is large; its shape is checked by the model tests
        model = model_from_config(cfg, 8).eval()
        with torch.no_grad():
            assert model(spec).shape == (1, 8)


def test_paper_presets_follow_the_paper():
    paper = load_config(CONFIGS / "paper_birdclef.yaml")
    scratch = load_config(CONFIGS / "paper_birdclef_scratch.yaml")
    for cfg in (paper, scratch):
        assert (cfg.model.name, cfg.model.layout) == ("asca_0", "CCCT")
        assert cfg.features.shape == "resize224" and cfg.features.input_size == (224, 224)
        assert cfg.features.n_mels == 128 and cfg.features.frontend == "kaldi"
        assert (cfg.train.loss, cfg.train.batch_size, cfg.train.epochs) == ("bce", 12, 30)
        assert cfg.train.amp == "bf16" and cfg.train.device == "auto"
        assert cfg.augment.noise_prob == 0.25 and cfg.augment.mixup
    assert paper.train.lr == 5e-5
    assert scratch.train.lr == 1e-3 and scratch.train.warmup_epochs > 0
    # nothing but the optimisation recipe differs
    assert paper.data == scratch.data and paper.features == scratch.features
    assert paper.augment == scratch.augment and paper.model == scratch.model


def test_fsdd_path_resolves_from_the_project_root(shared_data, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not the project root: found above configs/ instead
    cfg = load_train_config(str(CONFIGS / "fsdd.yaml"), [], None, False)
    assert Path(cfg.data.path) == (shared_data / "fsdd" / "labels.csv").resolve()
    assert cfg.features.sample_rate == 8000


def test_gpu_preset_turns_on_the_gpu_path():
    cfg = load_config(CONFIGS / "gpu.yaml")
    assert cfg.train.device == "cuda" and cfg.train.amp == "bf16" and not cfg.train.deterministic
    assert cfg.model.channels_last and cfg.model.compile and cfg.data.num_workers > 0
    assert cfg.features.input_size == (64, 256)  # the recipe's front end for 5 s clips


@pytest.mark.slow
def test_gpu_preset_trains_on_a_cpu_with_the_device_switched(tmp_path):
    """Everything of the GPU path a CPU can run: bf16 autocast, channels_last, no determinism, workers."""
    from train_factory import TINY_OVERRIDES, make_tiny_data, run_cli

    data = make_tiny_data(tmp_path / "data")
    sets = [f"data.path={data}", *TINY_OVERRIDES, "train.epochs=1", "train.device=cpu", "model.compile=false"]
    sets += ["features.sample_rate=16000", "features.win_length=400", "features.hop_length=160", "features.f_max=8000"]
    sets += ["data.num_workers=1"]
    args = [a for s in sets for a in ("--set", s)]
    result = run_cli("train", "--config", str(CONFIGS / "gpu.yaml"), *args, "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.train.amp == "bf16" and saved.model.channels_last and not saved.train.deterministic
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_preset_without_a_gpu_is_one_clear_error(tmp_path):
    from train_factory import make_tiny_data, run_cli

    data = make_tiny_data(tmp_path / "data")
    result = run_cli("train", "--config", str(CONFIGS / "gpu.yaml"), "--set", f"data.path={data}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "CUDA is not available" in result.stderr
