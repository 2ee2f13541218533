"""Model registry: ``build_model(name, num_classes, **overrides)`` and ``list_models()``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from ..config import ModelConfig
from ..errors import ModelError
from .asca import ASCA_SIZES, OVERRIDABLE, AscaArchitecture, asca_from_architecture, asca_from_size
from .baselines import AST_SIZES, ast_from_size

ASCA_OVERRIDES = OVERRIDABLE
AST_OVERRIDES = ("in_chans", "drop_path", "input_size")
# Settings of the config's model section that say how to run a model, not what it is.
RUN_SETTINGS = ("name", "channels_last", "compile")
# One model section serves every model: a setting a model does not take must sit at the
# section's default (``ModelConfig``), which is what every model is without it.
_ARCHITECTURE = tuple(f.name for f in fields(ModelConfig) if f.name not in RUN_SETTINGS)
_NEUTRAL = {f.name: f.default for f in fields(ModelConfig) if f.name in _ARCHITECTURE}


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    overrides: tuple[str, ...]
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, builder: Callable[..., nn.Module], overrides: tuple[str, ...], description: str) -> None:
    """Add a model ``builder(name, num_classes, **overrides)`` under ``name``."""
    _REGISTRY[name] = _Entry(builder, overrides, description)


for _name in ASCA_SIZES:
    register_model(_name, asca_from_size, ASCA_OVERRIDES, "ASCA (CoAtNet-style conv + relative attention)")
for _name in AST_SIZES:
    register_model(_name, ast_from_size, AST_OVERRIDES, "AST-style ViT from scratch (baseline)")


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, ASCA sizes first."""
    return list(_REGISTRY)


def describe_model(name: str) -> str:
    """One-line description of a registered model."""
    return _entry(name).description


def _entry(name: str) -> _Entry:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ModelError(f"unknown model {name!r}; choose from: {', '.join(list_models())}")
    return entry


def build_model(name: str, num_classes: int, **overrides: Any) -> nn.Module:
    """Build a registered model with fresh weights.

    ``overrides`` (``None`` means the model's default): ``layout`` (one of
    :data:`asca_core.config.LAYOUTS`), ``in_chans``, ``drop_path``, ``stride_mode`` ("paper",
    "depthwise"), ``attn_window`` (k for local k x k attention, in tokens; None = global), ``attn_division`` (input cells per
    token side of the first transformer stage, the paper's window division; None = its stride),
    ``input_size`` ((F, T) the relative-bias tables are built for, default (128, 320)),
    ``head_hidden`` (pre-logits width, 0 = none), ``downsample_pool`` ("avg", "max"),
    ``transformer_norm`` ("layernorm", "batchnorm"), ``se_act`` ("gelu", "silu", "relu"),
    ``head_pool`` ("avg"; "avgmax": mean over frequency, then mean + max over time).

    The returned module has ``input_size``, ``config`` (JSON-serialisable, see
    :func:`build_model_from_config`) and ``no_weight_decay()``.

    Shapes: model(spec (B, in_chans, F, T)) -> logits (B, num_classes).
    """
    entry = _entry(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
    accepted = {}
    for key, value in overrides.items():
        if key in entry.overrides:
            accepted[key] = value
        elif key in _NEUTRAL and value == _NEUTRAL[key]:
            continue
        elif key in _NEUTRAL:
            raise ModelError(f"{key} applies to ASCA models only; {name} got {key}={value!r}")
        else:
            raise ModelError(f"unknown override {key!r} for {name}; choose from: {', '.join(entry.overrides)}")
    if "input_size" in accepted and accepted["input_size"] is not None:
        value = accepted["input_size"]
        accepted["input_size"] = tuple(value) if isinstance(value, (list, tuple)) else value
    return entry.builder(name, num_classes, **accepted)


def build_model_for(model: ModelConfig, num_classes: int, input_size: Sequence[int], in_chans: int = 1) -> nn.Module:
    """Build (fresh weights) the model a config's ``model`` section describes, for model inputs
    of ``input_size`` (F, T): every architecture setting the model takes, ``None`` meaning the
    model's default; a setting it does not take must be at its default.

    Shapes: model(spec (B, in_chans, F, T)) -> logits (B, num_classes).
    """
    entry = _entry(model.name)
    overrides: dict[str, Any] = {"input_size": tuple(input_size), "in_chans": in_chans}
    for key in _ARCHITECTURE:
        value = getattr(model, key)
        if key in entry.overrides:
            if value is not None:
                overrides[key] = value
        elif value != _NEUTRAL[key]:
            raise ModelError(f"model.{key} applies to ASCA models only; {model.name} got {key}={value!r}")
    return build_model(model.name, num_classes, **overrides)


def build_model_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture described by a model's ``config`` dict (weights are fresh)."""
    try:
        name, num_classes = config["name"], config["num_classes"]
    except (KeyError, TypeError):
        raise ModelError(f"model config needs 'name' and 'num_classes', got {config!r}") from None
    entry = _entry(name)
    if config.get("family") == "asca":  # the whole architecture is stored: rebuild exactly that
        architecture = AscaArchitecture.from_dict(config)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
        return asca_from_architecture(architecture)
    return build_model(name, num_classes, **{k: config[k] for k in entry.overrides if k in config})
