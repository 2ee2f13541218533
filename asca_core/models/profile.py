"""Model size and cost: parameter counts and multiply-accumulates (MACs) of one forward pass."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all of them, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def gmacs(model: nn.Module, input_size: tuple[int, int], in_chans: int = 1, batch_size: int = 1) -> float:
    """Giga multiply-accumulates of one eval-mode forward pass at ``(in_chans, *input_size)``.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention);
    MACs = FLOPs / 2. Normalisation, activations and pooling are not counted, as is customary.
    Attention runs on the math backend here because the counter has no formula for the fused CPU
    kernel and would silently count its matmuls as zero.
    """
    param = next(model.parameters())
    spec = torch.zeros(batch_size, in_chans, *input_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            model(spec)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9
