"""Training: the fit loop, metrics, checkpoints and the run directory store.

Imports are lazy so that readers of a run (the app, inference) do not load the engine::

    from asca_core.train import fit, evaluate, RunStore, load_model_from_run
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "fit": "engine",
    "evaluate": "evaluation",
    "compute_metrics": "metrics",
    "RunStore": "runstore",
    "list_runs": "runstore",
    "save_model": "checkpoint",
    "load_model_from_run": "checkpoint",
    "run_ablation": "ablate",
    "run_cv": "cv",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'asca_core.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
