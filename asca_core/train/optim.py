"""Optimiser pieces: AdamW parameter groups and the weight EMA."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weights; none on norms, biases, bias tables and position embeddings.

    Uses ``model.no_weight_decay()`` (parameter names) when the model defines it, else the
    ``ndim <= 1`` rule (norm scales and biases).
    """
    no_weight_decay = getattr(model, "no_weight_decay", None)
    skip = set(no_weight_decay()) if no_weight_decay is not None else set()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name in skip or param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def adamw_implementation(device: torch.device | str) -> dict[str, bool]:
    """AdamW's kernel flags for ``device``: ``fused`` on CUDA, ``foreach`` elsewhere.

    The fused kernel updates every parameter in one launch on CUDA; on the CPU the multi-tensor
    ``foreach`` path is the one chosen here (torch's own default there is a loop per tensor).
    """
    device_type = torch.device(device).type
    if device_type == "cuda" and "cuda" in _fused_devices():
        return {"fused": True, "foreach": False}
    return {"fused": False, "foreach": True}


def _fused_devices() -> list[str]:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return list(_get_fused_kernels_supported_devices())
    except ImportError:  # older torch: fused AdamW existed on CUDA only
        return ["cuda"]


def set_adamw_implementation(optimizer: torch.optim.Optimizer, device: torch.device | str) -> None:
    """Re-apply :func:`adamw_implementation` to every group (a loaded state dict carries the flags
    of the machine that saved it)."""
    flags = adamw_implementation(device)
    for group in optimizer.param_groups:
        group.update(flags)


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    device: torch.device | str | None = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, as the trainer builds it, with the kernel that
    :func:`adamw_implementation` picks for ``device`` (default: where the parameters are)."""
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    return torch.optim.AdamW(
        param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, **adamw_implementation(device)
    )


class ModelEma:
    """Exponential moving average of a model's weights (buffers are copied).

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` so that short runs are not
    dominated by the random initial weights. One update is a multi-tensor ``lerp`` over all
    parameters and one multi-tensor copy of the buffers.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        averaged: list[Tensor] = list(self.module.parameters())
        current = [p.detach() for p in model.parameters()]
        if len(current) != len(averaged):
            raise ValueError(f"ModelEma: the model has {len(current)} parameters, its average {len(averaged)}")
        if current:
            if hasattr(torch, "_foreach_lerp_"):
                torch._foreach_lerp_(averaged, current, 1.0 - d)
            else:  # ema * d + cur * (1 - d), the same blend
                torch._foreach_mul_(averaged, d)
                torch._foreach_add_(averaged, current, alpha=1.0 - d)
        ema_buffers, buffers = list(self.module.buffers()), list(model.buffers())
        if buffers:
            torch._foreach_copy_(ema_buffers, buffers)
