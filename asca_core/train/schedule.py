"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_lr``, set per optimizer step.

The rate is a pure function of the step counter, so resuming needs only that counter (no
scheduler object to serialise) and the same step always gets the same rate.
"""

from __future__ import annotations

import math

import torch


def cosine_lr(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Rate for 0-based optimizer ``step``: warm-up ``lr * (step + 1) / warmup_steps``, then a
    half cosine from ``lr`` at the end of warm-up to ``min_lr`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's rate (groups differ only in weight decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


__all__ = ["cosine_lr", "set_lr"]
