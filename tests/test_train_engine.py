"""The fit loop in-process: run directory contract, checkpoints, exact resume, failures, pieces."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from train_factory import make_tiny_data, tiny_config

from asca_core.config import Config
from asca_core.errors import CheckpointError, ConfigError
from asca_core.train import engine
from asca_core.train.checkpoint import load_model_from_run, load_tensors
from asca_core.train.ddp import EpochSampler
from asca_core.train.engine import ModelEma, fit, loss_per_example, param_groups
from asca_core.train.runstore import RunStore, list_runs
from asca_core.train.schedule import cosine_lr

METRIC_KEYS = {"epoch", "train_loss", "val_loss", "val_acc", "val_map", "lr", "seconds"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    result = fit(tiny_config(data), run_dir, progress=False)
    return run_dir, result


def _state_model(run_dir):
    tensors, _ = load_tensors(run_dir / "checkpoints" / "last.state.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "ema."))}


def _rows_without_time(run_dir):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in RunStore(run_dir).metrics()]


def test_run_directory_contract(finished_run, data):
    run_dir, result = finished_run
    store = RunStore(run_dir)
    for name in (
        "config.yaml",
        "status.json",
        "metrics.jsonl",
        "labels.json",
        "log.txt",
        "eval.json",
        "checkpoints/last.safetensors",
        "checkpoints/best.safetensors",
        "checkpoints/last.state.safetensors",
        "checkpoints/last.state.json",
        "eval/epoch_001.json",
    ):
        assert (run_dir / name).is_file(), name
    status = store.status()
    assert status["state"] == "finished" and status["epoch"] == 2
    assert status["steps"] == 8 == result["steps"]  # 32 train clips / batch 8 x 2 epochs
    assert {"best_epoch", "best_val_map", "started", "updated", "pid"} <= set(status)
    rows = store.metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert set(row) >= METRIC_KEYS
        assert 0.0 <= row["val_acc"] <= 1.0 and 0.0 <= row["val_map"] <= 1.0
    assert rows[1]["lr"] < rows[0]["lr"]  # cosine decay
    labels = store.labels()
    assert len(labels) == 8 and labels == sorted(labels)
    # the resolved config carries the normalisation statistics, and nothing else changed
    cfg = store.config()
    assert cfg.features.norm_mean is not None and cfg.features.norm_std > 0
    assert cfg.model.name == "asca_pico" and cfg.data.path == str(data)
    details = store.eval_details(1)
    assert len(details["confusion"]) == 8 and len(details["per_class"]["ap"]) == 8
    assert sum(map(sum, details["confusion"])) == details["n"]
    assert "test" in result and result["test"]["n"] == json.loads((run_dir / "eval.json").read_text())["n"]
    assert [r.path for r in list_runs(run_dir.parent)] == [run_dir]


def test_checkpoint_is_self_describing_and_reloads(finished_run):
    run_dir, _ = finished_run
    with safe_open(str(run_dir / "checkpoints" / "best.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "asca-checkpoint/1"
    assert Config.from_dict(yaml.safe_load(meta["config"])).to_dict() == RunStore(run_dir).config().to_dict()
    assert json.loads(meta["labels"]) == RunStore(run_dir).labels()
    model, cfg, labels = load_model_from_run(run_dir, "best")
    assert not model.training and len(labels) == 8
    spec = torch.zeros(2, 1, *cfg.features.input_size)
    assert model(spec).shape == (2, 8)
    # the saved model reproduces the logged test accuracy through evaluate()
    result = engine.evaluate(run_dir)
    assert result["split"] == "test"
    assert result["acc"] == pytest.approx(json.loads((run_dir / "eval.json").read_text())["acc"])


def test_load_model_errors(finished_run, tmp_path):
    run_dir, _ = finished_run
    with pytest.raises(CheckpointError, match="run directory not found"):
        load_model_from_run(tmp_path / "nope")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((run_dir / "checkpoints" / "best.safetensors").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_model_from_run(broken)
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        load_model_from_run(empty)
    # weights that do not fit the architecture the header describes
    tensors, meta = load_tensors(run_dir / "checkpoints" / "best.safetensors")
    tensors.pop(next(iter(tensors)))
    from asca_core.train.checkpoint import save_tensors

    save_tensors(tmp_path / "partial.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_model_from_run(tmp_path / "partial.safetensors")


def test_resume_at_epoch_boundary_equals_uninterrupted(finished_run, data, tmp_path):
    straight, _ = finished_run
    paused = tmp_path / "paused"
    first = fit(tiny_config(data), paused, stop_after_epochs=1, progress=False)
    assert first["state"] == "stopped" and first["epoch"] == 1
    assert RunStore(paused).status()["state"] == "stopped"
    with pytest.raises(CheckpointError, match="already holds a run"):
        fit(tiny_config(data), paused)
    second = fit(RunStore(paused).config(), paused, resume=True, progress=False)
    assert second["state"] == "finished" and second["steps"] == 8
    a, b = _state_model(straight), _state_model(paused)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _rows_without_time(straight) == _rows_without_time(paused)


def test_loader_workers_kept_across_epochs_train_as_the_main_process(finished_run, data, tmp_path):
    """Two worker processes that live for the whole run: every epoch gets its own crops (the
    epoch travels with each index), so the weights equal those of loading in the main process."""
    straight, _ = finished_run
    result = fit(tiny_config(data, "data.num_workers=2"), tmp_path / "workers", progress=False)
    assert result["state"] == "finished" and result["steps"] == 8
    a, b = _state_model(straight), _state_model(tmp_path / "workers")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _rows_without_time(straight) == _rows_without_time(tmp_path / "workers")


def test_epoch_tagged_indices_choose_that_epochs_crop(data):
    from asca_core.data import ClipDataset
    from asca_core.data.formats import load_dataset

    cfg = tiny_config(data)
    index = load_dataset(data)
    dataset = ClipDataset(index, list(range(len(index.clips))), cfg.features, train=True, seed=3)
    sampler = EpochSampler(len(dataset), seed=3, tag_epoch=True)
    sampler.set_epoch(2)
    pairs = list(sampler)
    assert all(epoch == 2 for epoch, _ in pairs) and sorted(i for _, i in pairs) == list(range(len(dataset)))
    dataset.set_epoch(1)
    tagged = dataset[(2, 0)][0]
    assert dataset.epoch == 2
    dataset.set_epoch(2)
    assert torch.equal(tagged, dataset[0][0])
    dataset.set_epoch(1)
    assert not torch.equal(tagged, dataset[0][0])  # a 1.5 s clip cropped to 1 s: another crop


def test_resume_sweeps_half_written_files_of_a_killed_writer(data, tmp_path):
    run_dir = tmp_path / "killed"
    fit(tiny_config(data), run_dir, stop_after_epochs=1, progress=False)
    stale = [
        run_dir / ".status.json.x1.tmp",
        run_dir / "checkpoints" / ".last.safetensors.x2.tmp",
        run_dir / "eval" / ".epoch_002.json.x3.tmp",
    ]
    for path in stale:
        path.write_text("{half")  # what kill -9 leaves behind in the middle of an atomic write
    result = fit(RunStore(run_dir).config(), run_dir, resume=True, progress=False)
    assert result["state"] == "finished"
    assert not list(run_dir.rglob(".*.tmp"))
    json.loads((run_dir / "eval" / "epoch_002.json").read_text())


def test_resume_mid_epoch_with_ema_equals_uninterrupted(data, tmp_path, monkeypatch):
    cfg = tiny_config(data, "train.ema=true", "train.ema_decay=0.9")
    straight = tmp_path / "straight"
    fit(cfg, straight, progress=False)

    real_step = engine.Trainer._train_step

    def step_then_stop(self, epoch, wave, target):
        real_step(self, epoch, wave, target)
        if self.step == 6:  # epoch 2, batch 2 of 4: as if SIGTERM arrived now
            self.stop.requested = True

    monkeypatch.setattr(engine.Trainer, "_train_step", step_then_stop)
    interrupted = tmp_path / "interrupted"
    result = fit(cfg, interrupted, progress=False)
    assert result["state"] == "stopped" and result["steps"] == 6
    state = json.loads((interrupted / "checkpoints" / "last.state.json").read_text())
    assert (state["epoch"], state["batch"], state["step"]) == (1, 2, 6)
    monkeypatch.setattr(engine.Trainer, "_train_step", real_step)
    fit(None, interrupted, resume=True, progress=False)
    a, b = _state_model(straight), _state_model(interrupted)
    assert any(k.startswith("ema.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _rows_without_time(straight) == _rows_without_time(interrupted)
    # with EMA, the evaluated (and saved) weights are the average, not the raw weights
    last, _ = load_tensors(interrupted / "checkpoints" / "last.safetensors")
    for key, value in last.items():
        assert torch.equal(value, b[f"ema.{key}"])


def test_crash_records_failed_with_error(data, tmp_path, monkeypatch):
    def boom(self, epoch, wave, target):
        raise RuntimeError("simulated out of memory")

    monkeypatch.setattr(engine.Trainer, "_train_step", boom)
    with pytest.raises(RuntimeError):
        fit(tiny_config(data), tmp_path / "run", progress=False)
    status = RunStore(tmp_path / "run").status()
    assert status["state"] == "failed"
    assert status["error"] == "RuntimeError: simulated out of memory"
    assert "failed: RuntimeError" in (tmp_path / "run" / "log.txt").read_text()


def test_missing_dataset_fails_cleanly(tmp_path):
    from asca_core.errors import AscaError

    cfg = tiny_config(tmp_path / "labels.csv")
    with pytest.raises(AscaError):
        fit(cfg, tmp_path / "run", progress=False)
    assert RunStore(tmp_path / "run").status()["state"] == "failed"


def test_fp16_on_cpu_is_a_config_error(data, tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        fit(tiny_config(data, "train.amp=fp16", "train.device=cpu"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bf16_autocast_balanced_sampling_and_ce_train_on_cpu(data, tmp_path):
    cfg = tiny_config(
        data,
        "train.amp=bf16",
        "train.device=cpu",
        "data.balanced_sampling=true",
        "train.loss=ce",
        "train.label_smoothing=0.1",
        "train.epochs=1",
        "augment.mixup=false",
    )
    result = fit(cfg, tmp_path / "run", progress=False)
    assert result["state"] == "finished" and result["steps"] == 4
    assert math.isfinite(result["last"]["train_loss"])


def test_param_groups_exempt_norms_biases_and_bias_tables():
    from asca_core.models import build_model

    model = build_model("asca_pico", 4, input_size=(32, 64))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    free = {names[id(p)] for p in no_decay["params"]}
    assert any(n.endswith("rel_bias.table") for n in free)
    assert all(p.ndim > 1 for p in decay["params"])
    assert not any(names[id(p)].endswith("rel_bias.table") for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    plain = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(plain, 0.1)  # no no_weight_decay(): ndim rule
    assert [p.shape for p in decay["params"]] == [(4, 3)]
    assert len(no_decay["params"]) == 3


def test_losses_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 0.0]])
    bce = loss_per_example(logits, target, "bce")
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert bce.item() == pytest.approx(expected.item())
    smoothed = loss_per_example(logits, target, "bce", 0.2)
    # timm's smoothing: y (1 - eps) + eps / K
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.tensor([[0.8 + 0.2 / 3, 0.2 / 3, 0.2 / 3]])
    )
    assert smoothed.item() == pytest.approx(expected.item())
    ce = loss_per_example(logits, torch.tensor([[1.0, 1.0, 0.0]]), "ce")  # multi-hot -> 0.5/0.5
    log_p = torch.log_softmax(logits, 1)[0]
    assert ce.item() == pytest.approx(-(0.5 * log_p[0] + 0.5 * log_p[1]).item())


def test_cosine_schedule_with_warmup():
    lrs = [cosine_lr(s, 100, 10, 1e-3, 1e-5) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert cosine_lr(100, 100, 10, 1e-3, 1e-5) == pytest.approx(1e-5)
    assert cosine_lr(55, 100, 10, 1e-3, 1e-5) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert cosine_lr(0, 10, 0, 1e-3, 0.0) == pytest.approx(1e-3)


def test_ema_tracks_weights():
    model = torch.nn.Linear(2, 1)
    ema = ModelEma(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.module.weight.clone()
    ema.update(model, step=100)
    assert torch.allclose(ema.module.weight, 0.5 * before + 0.5 * model.weight)
    assert not ema.module.weight.requires_grad


def test_epoch_sampler_shards_resumes_and_balances():
    full = EpochSampler(10, seed=3)
    full.set_epoch(1)
    order = list(full)
    assert sorted(order) == list(range(10))
    full.set_epoch(2)
    assert list(full) != order  # a new order per epoch
    full.set_epoch(1, skip=4)
    assert list(full) == order[4:] and len(full) == 6
    ranks = [EpochSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    for s in ranks:
        s.set_epoch(1)
    shards = [list(s) for s in ranks]
    assert all(len(s) == 4 for s in shards)  # padded to 12 by wrapping, like DistributedSampler
    assert set().union(*shards) == set(range(10))
    weights = torch.tensor([1.0] * 9 + [9.0])
    balanced = EpochSampler(10, weights=weights, seed=0)
    counts = np.zeros(10)
    for epoch in range(200):
        balanced.set_epoch(epoch)
        np.add.at(counts, list(balanced), 1)
    assert counts[9] / counts.sum() == pytest.approx(0.5, abs=0.03)


def test_relative_data_paths(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "data").mkdir()
    (project / "data" / "labels.csv").write_text("filename,label\n")
    monkeypatch.chdir(tmp_path)
    from asca_core.cli.train_cmd import resolve_data_path

    found = resolve_data_path("data/labels.csv", project / "configs" / "x.yaml")
    assert found == str((project / "data" / "labels.csv").resolve())
    assert resolve_data_path("demo", None) == "demo"
    from asca_core.errors import DatasetError

    with pytest.raises(DatasetError, match="not found"):
        resolve_data_path("missing.csv", project / "configs" / "x.yaml")


def test_stopped_ablation_stops_and_continues(data, tmp_path, monkeypatch):
    from asca_core.train.ablate import run_ablation

    cfg = tiny_config(data, "train.epochs=1")
    real_step = engine.Trainer._train_step

    def step_then_stop(self, epoch, wave, target):
        real_step(self, epoch, wave, target)
        if self.step == 2:
            self.stop.requested = True

    monkeypatch.setattr(engine.Trainer, "_train_step", step_then_stop)
    first = run_ablation(cfg, ["CCCT", "CCCC"], 1, tmp_path / "abl", progress=False)
    assert first["state"] == "stopped" and first["stopped_at"].endswith("CCCT-seed0")
    assert not (tmp_path / "abl" / "CCCC-seed0").exists()  # the next variant never started
    monkeypatch.setattr(engine.Trainer, "_train_step", real_step)
    lines: list[str] = []
    second = run_ablation(cfg, ["CCCT", "CCCC"], 1, tmp_path / "abl", progress=False, echo=lines.append)
    assert second["state"] == "finished" and [r["layout"] for r in second["table"]] == ["CCCT", "CCCC"]
    assert any("resumed in epoch 1 after batch 2" in line for line in lines)
    assert RunStore(tmp_path / "abl" / "CCCT-seed0").status()["steps"] == 4
