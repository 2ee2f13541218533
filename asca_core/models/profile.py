"""Model size and cost: parameter counts, multiply-accumulates (MACs) of one forward pass, and the
activation memory a training step would need (checked before anything is allocated)."""

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


def activation_bytes(
    name: str,
    input_size: tuple[int, int],
    batch_size: int,
    layout: str = "CCCT",
    attn_window: int | None = None,
    attn_division: int | None = None,
) -> int:
    """A low estimate of the activations one training step keeps for the backward pass (float32).

    Counts the tensors each block stores (MBConv: the 4x expanded maps; transformer blocks: q, k, v,
    the MLP and the attention weights), so the real peak is higher; a model whose estimate exceeds
    the machine's memory cannot train. Unknown names count as zero.
    """
    from .asca import ASCA, ASCA_SIZES
    from .baselines import AST_SIZES

    f, t = (int(v) for v in input_size)
    floats = 0
    if name in ASCA_SIZES:
        size = ASCA_SIZES[name]
        floats += (f // 2) * (t // 2) * size.stem_width * 4
        strides = ASCA._token_sizes(layout, attn_division if "T" in layout else None)
        for kind, width, depth, stride in zip(layout, size.widths, size.depths, strides):
            h, w = max(1, f // stride), max(1, t // stride)
            n = h * w
            if kind == "C":
                floats += depth * n * width * 20
            else:
                keys = n if attn_window is None else min(n, attn_window * attn_window)
                floats += depth * (n * width * 12 + (width // size.head_dim) * n * keys * 3)
    elif name in AST_SIZES:
        ast = AST_SIZES[name]
        grid = [max(1, (side - ast.patch_size) // ast.patch_stride + 1) for side in (f, t)]
        n = 1 + grid[0] * grid[1]  # patches and the class token
        floats += ast.depth * (n * ast.dim * 12 + ast.num_heads * n * n * 3)
    return 4 * floats * int(batch_size)
