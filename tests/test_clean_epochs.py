"""augment.clean_epochs: the first epochs train on clean clips, augmentation starts after them."""

from __future__ import annotations

import json

import pytest
import torch
from train_factory import make_tiny_data, tiny_config

from asca_core.augment import TrainAugment
from asca_core.config import Config
from asca_core.errors import ConfigError
from asca_core.train.engine import fit


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("tiny-data"))


def _record_augmentation(monkeypatch):
    """Per training step: whether the augmenter ran, and whether its output differs from the clean spec."""
    seen: list[tuple[bool, bool]] = []
    real = TrainAugment.forward

    def forward(self, wave, target, features, generator=None):
        spec, out_target = real(self, wave, target, features, generator)
        seen.append((self.training, not torch.equal(spec, features(wave))))
        return spec, out_target

    monkeypatch.setattr(TrainAugment, "forward", forward)
    return seen


def test_first_epoch_is_clean_then_augmentation_starts(data, tmp_path, monkeypatch):
    seen = _record_augmentation(monkeypatch)
    result = fit(tiny_config(data, "augment.clean_epochs=1"), tmp_path / "run", progress=False)
    assert result["state"] == "finished"
    steps_per_epoch = result["steps"] // 2
    first, second = seen[:steps_per_epoch], seen[steps_per_epoch:]
    assert first and second
    assert all(not training and not changed for training, changed in first)
    assert all(training for training, _ in second)
    assert any(changed for _, changed in second)  # masks, noise and gain act again
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"augmentation from step {steps_per_epoch}" in log


def test_without_clean_epochs_every_step_is_augmented(data, tmp_path, monkeypatch):
    seen = _record_augmentation(monkeypatch)
    fit(tiny_config(data), tmp_path / "run", progress=False)
    assert seen and all(training for training, _ in seen)
    assert "augmentation from step" not in (tmp_path / "run" / "log.txt").read_text()


def test_clean_epochs_bounds_are_named():
    with pytest.raises(ConfigError, match="augment.clean_epochs must be in"):
        Config.from_dict({"augment": {"clean_epochs": -1}})


def _with_fit_threshold(monkeypatch, value: float) -> None:
    import asca_core.train.engine as engine

    monkeypatch.setattr(engine, "fit_threshold", lambda *args, **kwargs: value)


def test_clean_until_fit_starts_augmentation_after_the_epoch_that_fits(data, tmp_path, monkeypatch):
    seen = _record_augmentation(monkeypatch)
    _with_fit_threshold(monkeypatch, 1e9)  # any loss counts as fitted: augmentation from epoch 2
    cfg = tiny_config(data, "augment.clean_epochs=300", "augment.clean_until_fit=true", "train.epochs=3")
    result = fit(cfg, tmp_path / "run", progress=False)
    steps_per_epoch = result["steps"] // 3
    assert all(not training for training, _ in seen[:steps_per_epoch])
    assert all(training for training, _ in seen[steps_per_epoch:]) and len(seen) == result["steps"]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "clean clips until the training loss reaches" in log
    assert "the training clips are fitted, augmentation from epoch 2" in log
    state = json.loads((tmp_path / "run" / "checkpoints" / "last.state.json").read_text())
    assert state["clean_steps"] == steps_per_epoch  # a resumed run keeps augmenting


def test_clean_until_fit_stays_clean_while_the_loss_is_above_its_floor(data, tmp_path, monkeypatch):
    seen = _record_augmentation(monkeypatch)
    _with_fit_threshold(monkeypatch, 0.0)
    fit(tiny_config(data, "augment.clean_epochs=300", "augment.clean_until_fit=true"), tmp_path / "run", progress=False)
    assert seen and not any(training for training, _ in seen)
    assert "fitted" not in (tmp_path / "run" / "log.txt").read_text()


@pytest.mark.parametrize("kind", ["ce", "bce"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_levels_are_the_losses_of_the_prior_and_of_a_perfect_model(kind, smoothing):
    from asca_core.train.losses import fit_threshold, loss_levels, loss_per_example

    k, labels = 5, torch.tensor([0, 0, 0, 1, 1, 2, 3, 4, 4, 4])
    target = torch.nn.functional.one_hot(labels, k).float()
    freq = target.mean(0)
    chance, floor = loss_levels(freq.tolist(), kind, smoothing)
    hit, miss = 1 - smoothing + smoothing / k, smoothing / k
    if kind == "ce":
        prior = freq * (1 - smoothing) + smoothing / k
        constant = prior.log().expand(len(labels), k)
        perfect = (target * hit + (1 - target) * miss).clamp_min(1e-9).log()
    else:
        prior = (freq * hit + (1 - freq) * miss).clamp(1e-6, 1 - 1e-6)
        constant = torch.logit(prior).expand(len(labels), k)
        perfect = torch.logit((target * hit + (1 - target) * miss).clamp(1e-6, 1 - 1e-6))
    assert float(loss_per_example(constant, target, kind, smoothing).mean()) == pytest.approx(chance, abs=1e-4)
    assert float(loss_per_example(perfect, target, kind, smoothing).mean()) == pytest.approx(floor, abs=1e-4)
    assert floor < fit_threshold(freq.tolist(), kind, smoothing) < chance
