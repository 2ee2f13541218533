"""Inspection tools: attention capture, relative-bias tables, rollout, Captum attributions and
their faithfulness (deletion / insertion curves, agreement with attention).

Sub-modules load on first use, so importing this package stays cheap (Captum is only imported
by the attribution helpers).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AttentionMap": "attention",
    "BiasTable": "attention",
    "capture_attention": "attention",
    "relative_bias_tables": "attention",
    "attention_rollout": "attention",
    "query_attention": "attention",
    "Attribution": "attribution",
    "attribute": "attribution",
    "explain_audio": "attribution",
    "deletion_curve": "faithfulness",
    "insertion_curve": "faithfulness",
    "attention_agreement": "faithfulness",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'asca_core.inspect' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
