"""ASCA Workbench core library: audio, features, data, models, training, inference, inspection.

Heavy sub-modules load on first use, so ``import asca_core`` stays fast::

    from asca_core import build_model, load_audio, Classifier
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AscaError": "errors",
    "AudioError": "errors",
    "DatasetError": "errors",
    "ConfigError": "errors",
    "CheckpointError": "errors",
    "ModelError": "errors",
    "Config": "config",
    "load_config": "config",
    "load_audio": "audio",
    "audio_info": "audio",
    "build_model": "models",
    "list_models": "models",
    "load_dataset": "data",
    "Classifier": "inference",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'asca_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
