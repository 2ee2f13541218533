"""Loss and scores of logits by loss kind (``train.loss``: bce or ce)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def loss_per_example(logits: Tensor, target: Tensor, kind: str, label_smoothing: float = 0.0) -> Tensor:
    """BCE-with-logits (mean over classes) or cross-entropy against soft targets, per example.

    BCE smooths as timm's BinaryCrossEntropy: ``target * (1 - eps) + eps / K``, so an absent class
    gets eps / K and a present one 1 - eps + eps / K (the mass eps spread over K classes, as softmax
    smoothing does); cross-entropy normalises multi-hot targets to a distribution and uses torch's
    label smoothing.
    Shapes: logits (B, K), target (B, K) -> (B,).
    """
    logits = logits.float()
    target = target.float()
    if kind == "bce":
        if label_smoothing:
            target = target * (1.0 - label_smoothing) + label_smoothing / target.shape[1]
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
    target = target / target.sum(1, keepdim=True).clamp_min(1e-12)
    return F.cross_entropy(logits, target, reduction="none", label_smoothing=label_smoothing)


def probabilities(logits: Tensor, kind: str) -> Tensor:
    """Scores for metrics: sigmoid for BCE models, softmax for cross-entropy ones. Shapes: (B, K)."""
    return torch.sigmoid(logits.float()) if kind == "bce" else torch.softmax(logits.float(), dim=1)
