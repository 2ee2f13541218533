"""Hardening of the data path: dataset roots and symlinks, config bounds, clips that fail while
training, and non-finite numbers in inference, evaluation and training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_factory import tone, write_nan, write_tone
from fixtures_runs import PICO_CONFIG, PICO_LABELS, write_run
from train_factory import make_tiny_data, run_cli, tiny_config

from asca_core.config import Config, load_config
from asca_core.data import ClipDataset, FeatureCache, load_dataset
from asca_core.data.formats import OUTSIDE_ROOT
from asca_core.errors import AscaError, ConfigError, DatasetError


def _reasons(index) -> dict[str, str]:
    return dict(index.problems)


def _no_nan_tokens(text: str) -> dict:
    def refuse(token: str):
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------------ 5. dataset roots


def test_manifest_rows_leaving_the_root_through_symlinks_are_refused(tmp_path):
    root, outside = tmp_path / "ds", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    write_tone(root / "a.wav")
    write_tone(root / "b.wav", 500.0)
    write_tone(outside / "secret.wav")
    (outside / "deep").mkdir()
    write_tone(outside / "deep" / "x.wav")
    (root / "link.wav").symlink_to(outside / "secret.wav")  # a file leaving the root
    (root / "sub").symlink_to(outside / "deep", target_is_directory=True)  # a folder leaving it
    (root / "alias.wav").symlink_to(root / "a.wav")  # stays inside: still fine
    (root / "labels.csv").write_text(
        "filename,label\na.wav,x\nb.wav,y\nlink.wav,y\nsub/x.wav,x\nalias.wav,y\n", encoding="utf-8"
    )
    index = load_dataset(root)
    assert sorted(c.path.name for c in index.clips) == ["a.wav", "alias.wav", "b.wav"]
    reasons = _reasons(index)
    assert reasons["link.wav"].startswith(OUTSIDE_ROOT)
    assert reasons["sub/x.wav"].startswith(OUTSIDE_ROOT)


def test_folder_classes_and_files_leaving_the_root_through_symlinks_are_refused(tmp_path):
    root, outside = tmp_path / "ds", tmp_path / "elsewhere"
    (root / "cat").mkdir(parents=True)
    (outside / "dog").mkdir(parents=True)
    write_tone(root / "cat" / "c0.wav")
    write_tone(outside / "dog" / "d0.wav")
    write_tone(outside / "stolen.wav")
    (root / "dog").symlink_to(outside / "dog", target_is_directory=True)  # class folder outside
    (root / "cat" / "evil.wav").symlink_to(outside / "stolen.wav")  # file outside
    (root / "bird").mkdir()
    write_tone(root / "bird" / "b0.wav")
    (root / "cat" / "again.wav").symlink_to(root / "bird" / "b0.wav")  # inside: kept
    (root / "birds").symlink_to(root / "bird", target_is_directory=True)  # inside: kept
    index = load_dataset(root, "folder")
    assert sorted((c.label, c.path.name) for c in index.clips) == [
        ("bird", "b0.wav"),
        ("birds", "b0.wav"),
        ("cat", "again.wav"),
        ("cat", "c0.wav"),
    ]
    reasons = _reasons(index)
    assert reasons["dog"].startswith(OUTSIDE_ROOT)
    assert reasons["cat/evil.wav"].startswith(OUTSIDE_ROOT)
    assert all(str(outside) not in str(c.path.resolve()) for c in index.clips)


def test_noise_dir_files_leaving_the_folder_are_refused(tmp_path):
    from asca_core.augment import load_noise_bank

    noise, outside = tmp_path / "noise", tmp_path / "elsewhere"
    noise.mkdir()
    outside.mkdir()
    write_tone(noise / "wind.wav")
    write_tone(outside / "private.wav")
    (noise / "private.wav").symlink_to(outside / "private.wav")
    with pytest.raises(ConfigError) as info:
        load_noise_bank(noise, 16000)
    assert "private.wav" in str(info.value) and "\n" not in str(info.value)
    (noise / "private.wav").unlink()
    (noise / "inside.wav").symlink_to(noise / "wind.wav")
    assert len(load_noise_bank(noise, 16000)) == 2


def test_upload_never_follows_a_planted_symlink(tmp_path, monkeypatch):
    import hashlib

    from asca_core.utils import cache_dir
    from workbench.state import save_upload

    outside = write_tone(tmp_path / "private.wav")
    before = outside.read_bytes()
    data = tmp_path / "up.wav"
    write_tone(data, 300.0)
    payload = data.read_bytes()
    folder = cache_dir() / "uploads" / hashlib.sha1(payload).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rec.wav").symlink_to(outside)
    (folder / ".rec.wav.part").symlink_to(outside)
    path = save_upload(payload, "rec.wav")
    assert not path.is_symlink() and path.resolve().parent == folder.resolve()
    assert path.read_bytes() == payload
    assert outside.read_bytes() == before


# ------------------------------------------------------------------------------- 6. bounds


@pytest.mark.parametrize(
    "override, key",
    [
        ("features.n_fft=100000000", "features.n_fft"),
        ("features.win_length=100000000", "features.win_length"),
        ("features.hop_length=100000", "features.hop_length"),
        ("train.num_threads=100000", "train.num_threads"),
        ("model.attn_window=100000", "model.attn_window"),
        ("train.batch_size=1000000000", "train.batch_size"),
        ("train.epochs=1000000000", "train.epochs"),
        ("train.warmup_epochs=1e12", "train.warmup_epochs"),
        ("train.patience=1000000000", "train.patience"),
        ("train.lr=1e6", "train.lr"),
        ("train.grad_clip=1e30", "train.grad_clip"),
        ("train.weight_decay=1e9", "train.weight_decay"),
        ("train.seed=-1", "train.seed"),
        ("augment.mixup_alpha=1e12", "augment.mixup_alpha"),
        ("augment.time_masks=1000000000", "augment.time_masks"),
        ("augment.freq_masks=1000000000", "augment.freq_masks"),
        ("augment.time_mask_width=1000000000", "augment.time_mask_width"),
        ("augment.freq_mask_width=1000000000", "augment.freq_mask_width"),
        ("augment.snr_db_min=-1e9", "augment.snr_db_min"),
        ("augment.snr_db_max=1e9", "augment.snr_db_max"),
        ("data.num_workers=100000", "data.num_workers"),
        ("data.max_clips_per_class=10000000000000", "data.max_clips_per_class"),
        ("data.seed=-5", "data.seed"),
        ("features.norm_std=1e-30", "features.norm_std"),
        ("features.norm_mean=1e30", "features.norm_mean"),
    ],
)
def test_config_values_beyond_sane_maxima_are_refused(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    text = str(info.value)
    assert key in text and "\n" not in text


def test_hop_longer_than_window_is_refused():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["features.hop_length=500", "features.win_length=400"])
    assert "features.hop_length" in str(info.value)


def test_model_input_beyond_the_frame_limit_is_refused():
    with pytest.raises(ConfigError) as info:  # 60 s at a 1-sample hop: 960,000 frames
        load_config(
            None,
            [
                "features.clip_seconds=60",
                "features.hop_length=1",
                "features.win_length=1",
                "features.n_fft=64",
                "features.n_mels=8",
            ],
        )
    assert "frames" in str(info.value) and "\n" not in str(info.value)


def test_defaults_and_presets_stay_valid():
    Config()
    for preset in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        load_config(preset)


def test_activation_memory_beyond_the_machine_is_refused_before_allocating(tmp_path):
    from asca_core.train.engine import prepare_data

    data = make_tiny_data(tmp_path / "data")
    cfg = tiny_config(
        data, "model.name=asca_1", "features.n_mels=512", "features.clip_seconds=60", "train.batch_size=4096"
    )
    with pytest.raises(ConfigError) as info:
        prepare_data(cfg, check_files=False)
    text = str(info.value)
    assert "train.batch_size=4096" in text and "memory" in text and "\n" not in text
    prepare_data(tiny_config(data), check_files=False)  # the tiny preset fits easily


# ------------------------------------------------------------------- 7. training data


def _break_after_check(path: Path) -> None:
    """Turn a readable clip into one whose samples hold NaN (headers still read fine)."""
    wave = tone(440.0, 1.5, 16000)
    wave[100] = np.nan
    sf.write(path, wave, 16000, subtype="FLOAT")


@pytest.mark.parametrize("use_cache", [False, True])
def test_clip_failing_during_training_is_skipped_and_named(tmp_path, use_cache):
    from asca_core.config import FeatureConfig

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for k in range(2):
            write_tone(tmp_path / label / f"{k}.wav", 300.0 + 200 * k, seconds=1.0)
    index = load_dataset(tmp_path, "folder")
    bad = tmp_path / "a" / "1.wav"
    write_nan(bad)
    cache = FeatureCache(tmp_path / "cache") if use_cache else None
    ds = ClipDataset(index, list(range(4)), FeatureConfig(clip_seconds=1.0), cache=cache, train=True)
    items = [ds[i] for i in range(4)]
    assert all(torch.isfinite(w).all() and w.shape == (16000,) for w, _ in items)
    assert ds.skipped_count == 1
    [(name, reason)] = ds.skipped.items()
    assert name == "a/1.wav" and "NaN" in reason
    ds[1]  # a known bad clip is not read again, nor counted twice
    assert ds.skipped_count == 1


def test_every_clip_failing_is_one_line(tmp_path):
    from asca_core.config import FeatureConfig

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        write_tone(tmp_path / label / "0.wav", seconds=1.0)
    index = load_dataset(tmp_path, "folder")
    for clip in index.clips:
        write_nan(clip.path)
    ds = ClipDataset(index, [0, 1], FeatureConfig(clip_seconds=1.0), train=True)
    with pytest.raises(DatasetError) as info:
        ds[0]
    assert "\n" not in str(info.value)


def test_training_survives_a_clip_that_breaks_after_the_check(tmp_path):
    from asca_core.train import fit

    data = make_tiny_data(tmp_path / "data")
    index = load_dataset(data)
    broken = index.clips[0].path
    _break_after_check(broken)  # the start-up check reads headers only: it passes
    result = fit(tiny_config(data, "train.epochs=1"), tmp_path / "run", progress=False)
    assert result["state"] == "finished"
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["skipped_clips"] == 1  # counted in the run's status ...
    assert f"skipped {index.relpath(broken)}" in (tmp_path / "run" / "log.txt").read_text()  # ... named in its log


def test_a_single_class_dataset_is_refused(tmp_path):
    from asca_core.train import fit

    (tmp_path / "data" / "only").mkdir(parents=True)
    for k in range(6):
        write_tone(tmp_path / "data" / "only" / f"{k}.wav", 300.0 + 50 * k, seconds=1.5)
    with pytest.raises(DatasetError) as info:
        fit(tiny_config(tmp_path / "data", "train.epochs=1"), tmp_path / "run", progress=False)
    text = str(info.value)
    assert "only" in text and "class" in text and "\n" not in text


# ------------------------------------------------------------------- 8. non-finite numbers


def _nan_run(run_dir: Path) -> Path:
    from asca_core.train.checkpoint import checkpoint_metadata, model_from_config, save_model

    cfg = Config.from_dict(PICO_CONFIG)
    write_run(run_dir, cfg, PICO_LABELS)
    model = model_from_config(cfg, len(PICO_LABELS)).eval()
    with torch.no_grad():
        next(p for name, p in model.named_parameters() if name.startswith("head")).fill_(float("nan"))
    for which in ("best", "last"):
        save_model(
            run_dir / "checkpoints" / f"{which}.safetensors", model, checkpoint_metadata(cfg, PICO_LABELS, epoch=0)
        )
    return run_dir


@pytest.mark.slow
def test_huge_finite_samples_give_a_clear_error(pico_run, tmp_path):
    from asca_core.inference import Classifier

    clf = Classifier.from_run(pico_run)
    loud = np.full(16000, 3e29, dtype=np.float32)
    loud[::2] = -3e29
    with pytest.raises(AscaError) as info:
        clf.predict(loud)
    assert "NaN" in str(info.value) or "infinite" in str(info.value)
    path = tmp_path / "loud.wav"
    sf.write(path, loud, 16000, subtype="FLOAT")
    result = run_cli("predict", str(pico_run), str(path), "--json")
    assert result.returncode == 2, result.stderr
    doc = _no_nan_tokens(result.stdout)
    assert doc["errors"][0]["file"] == str(path) and "Traceback" not in result.stderr


@pytest.mark.slow
def test_nan_weights_give_a_clear_error_in_predict_and_eval(tmp_path):
    from asca_core.inference import Classifier
    from asca_core.train import evaluate

    run = _nan_run(tmp_path / "nan-run")
    wav = write_tone(tmp_path / "clip.wav")
    with pytest.raises(AscaError):
        Classifier.from_run(run).predict(wav)
    data = tmp_path / "data"
    for label in ("chirp", "trill"):
        (data / label).mkdir(parents=True)
        for k in range(2):
            write_tone(data / label / f"{k}.wav", 400.0 + 300 * k)
    with pytest.raises(AscaError):
        evaluate(run, data=str(data))
    result = run_cli("eval", str(run), "--data", str(data), "--json")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.slow
def test_eval_json_is_strict(tmp_path):
    """A metric that is undefined (one class present) is null, never NaN."""
    data = tmp_path / "data"
    for label in ("chirp", "trill"):
        (data / label).mkdir(parents=True)
        for k in range(2):
            write_tone(data / label / f"{k}.wav", 400.0 + 300 * k)
    run = write_run(tmp_path / "run", Config.from_dict(PICO_CONFIG), PICO_LABELS)
    result = run_cli("eval", str(run), "--data", str(data), "--json")
    assert result.returncode == 0, result.stderr
    _no_nan_tokens(result.stdout)


def test_nan_training_loss_is_one_line(tmp_path):
    from asca_core.train import fit

    data = make_tiny_data(tmp_path / "data")
    for clip in load_dataset(data).clips:  # finite samples, but their power overflows float32
        wave, sr = sf.read(clip.path, dtype="float32")
        sf.write(clip.path, wave * np.float32(3e29), sr, subtype="FLOAT")
    with pytest.raises(AscaError) as info:
        fit(
            tiny_config(data, "train.epochs=1", "features.norm_mean=0", "features.norm_std=1"),
            tmp_path / "run",
            progress=False,
        )
    assert "training loss became" in str(info.value) and "\n" not in str(info.value)
