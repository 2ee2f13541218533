"""Config: defaults that validate, YAML round trip, typed dotted overrides, one-line errors."""

from __future__ import annotations

import pytest

from asca_core.config import Config, load_config
from asca_core.errors import ConfigError


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = Config()
    path = tmp_path / "config.yaml"
    cfg.to_yaml(path)
    again = load_config(path)
    assert again == cfg
    assert again.features.input_size == (128, cfg.features.frames)
    assert cfg.features.frames % 32 == 0


def test_overrides_are_typed():
    cfg = load_config(
        None,
        [
            "train.lr=3e-4",
            "train.epochs=3",
            "model.layout=CCTT",
            "augment.mixup=false",
            "features.f_max=7000",
            "data.test_fold=1",
            "train.grad_clip=null",
            "model.name=asca_pico",
        ],
    )
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.epochs, int)
    assert cfg.model.layout == "CCTT" and cfg.augment.mixup is False
    assert cfg.features.f_max == 7000.0 and cfg.data.test_fold == 1
    assert cfg.train.grad_clip is None


def test_replace_returns_a_validated_copy():
    cfg = Config()
    other = cfg.replace("model.layout", "CCCC")
    assert other.model.layout == "CCCC" and cfg.model.layout == "CCCT"
    with pytest.raises(ConfigError, match="model.layout"):
        cfg.replace("model.layout", "TTTT")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=abc", "train.lr must be a number"),
        ("train.lr=-1", "train.lr must be > 0"),
        ("train.epochs=2.5", "train.epochs must be an integer"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("data.seed=true", "data.seed must be an integer"),
        ("augment.mixup=3", "augment.mixup must be true or false"),
        ("model.layout=XXXX", "model.layout must be one of"),
        ("features.n_fft=100", "features.n_fft (100) must be >= features.win_length"),
        ("features.f_max=9000", "f_max <= sample_rate/2"),
        ("train.nope=1", "unknown config key 'train.nope'"),
        ("nope.lr=1", "unknown config section 'nope'"),
        ("train.lr", "must look like section.key=value"),
        ("lr=1", "must look like section.key"),
        ("train.amp=fp8", "train.amp must be off, bf16 or fp16"),
    ],
)
def test_bad_values_give_one_clear_line(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    text = str(info.value)
    assert message in text and "\n" not in text


def test_bad_yaml_files(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'"):
        load_config(typo)


def test_resize224_shape():
    cfg = load_config(None, ["features.shape=resize224"])
    assert cfg.features.input_size == (224, 224)
