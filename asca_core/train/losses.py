"""Training losses by loss kind (``train.loss``: bce or ce) and the levels they can reach."""

from __future__ import annotations

import math
from collections.abc import Sequence

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


FIT_MARGIN = 0.05  # "fitted": the training loss has covered 95% of the way from chance to its floor


def _entropy(probs: Sequence[float]) -> float:
    return -sum(q * math.log(q) for q in probs if q > 0)


def loss_levels(label_freq: Sequence[float], kind: str, label_smoothing: float = 0.0) -> tuple[float, float]:
    """``(chance, floor)`` of :func:`loss_per_example` for targets with these class frequencies.

    ``chance`` is the loss of the best constant prediction (the class prior, smoothed as the targets
    are); ``floor`` is the loss of a perfect model, which label smoothing keeps above zero.
    ``label_freq[k]`` is the share of clips carrying class k (for ``ce``, one label per clip).
    """
    freq = [float(f) for f in label_freq]
    k = len(freq)
    if k == 0:
        raise ValueError("loss levels need at least one class")
    eps = float(label_smoothing)
    hit, miss = 1.0 - eps + eps / k, eps / k  # the smoothed target of a present and an absent class
    if kind == "bce":  # the mean over classes of binary cross-entropies
        chance = sum(_entropy((q, 1.0 - q)) for q in (f * hit + (1.0 - f) * miss for f in freq)) / k
        present = sum(freq) / k
        floor = present * _entropy((hit, 1.0 - hit)) + (1.0 - present) * _entropy((miss, 1.0 - miss))
        return chance, floor
    total = sum(freq) or 1.0
    chance = _entropy([f / total * (1.0 - eps) + eps / k for f in freq])
    floor = _entropy([hit] + [miss] * (k - 1))
    return chance, floor


def fit_threshold(label_freq: Sequence[float], kind: str, label_smoothing: float = 0.0) -> float:
    """The training loss below which the training clips count as fitted (:data:`FIT_MARGIN`)."""
    chance, floor = loss_levels(label_freq, kind, label_smoothing)
    return floor + FIT_MARGIN * max(0.0, chance - floor)
