"""augment.clean_epochs: the first epochs train on clean clips, augmentation starts after them."""

from __future__ import annotations

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
