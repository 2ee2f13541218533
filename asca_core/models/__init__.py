"""ASCA models and baselines behind one registry.

from asca_core.models import build_model, list_models
model = build_model("asca_tiny", num_classes=10, layout="CCTT")
"""

from __future__ import annotations

from .asca import ASCA, ASCA_SIZES, LAYOUTS
from .baselines import AST, AST_SIZES
from .profile import count_params, gmacs
from .registry import build_model, build_model_for, build_model_from_config, describe_model, list_models

__all__ = [
    "ASCA",
    "ASCA_SIZES",
    "AST",
    "AST_SIZES",
    "LAYOUTS",
    "build_model",
    "build_model_for",
    "build_model_from_config",
    "count_params",
    "describe_model",
    "gmacs",
    "list_models",
]
