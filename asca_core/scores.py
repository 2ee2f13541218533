"""Scores from logits, and the area under a curve of them.

Which activation turns logits into probabilities follows from the loss a run trained with:
sigmoids for BCE (independent, multi-label), a softmax over classes for cross-entropy. Training
metrics, predict, the exported model's wrapper and the inspection tools all ask :func:`activation`
and :func:`probabilities`. Torch is imported on first use, so the app's figures can import
:func:`trapezoid_auc` without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

ACTIVATIONS = ("sigmoid", "softmax")


def activation(loss: str) -> str:
    """``softmax`` for a run trained with cross-entropy (``ce``), ``sigmoid`` otherwise (``bce``)."""
    return "softmax" if loss == "ce" else "sigmoid"


def probabilities(logits: Tensor, kind: str) -> Tensor:
    """Logits to probabilities over the last axis.

    ``kind`` is the loss a run trained with (``bce`` or ``ce``) or the activation itself
    (``sigmoid`` or ``softmax``).

    Shapes: (..., K) -> (..., K) float32.
    """
    import torch

    name = kind if kind in ACTIVATIONS else activation(kind)
    logits = logits.float()
    return torch.softmax(logits, dim=-1) if name == "softmax" else torch.sigmoid(logits)


def trapezoid_auc(y: np.ndarray, x: np.ndarray) -> float:
    """Area under the curve ``y(x)`` by the trapezoid rule. Shapes: y, x (S,) -> scalar."""
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    if y.shape != x.shape:
        raise ValueError(f"y {y.shape} and x {x.shape} must have the same shape")
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


__all__ = ["ACTIVATIONS", "activation", "probabilities", "trapezoid_auc"]
