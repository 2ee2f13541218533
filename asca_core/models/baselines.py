"""Baselines for side-by-side comparisons with ASCA.

The all-convolution baseline is any ASCA size with ``layout="CCCC"``. This module holds the
AST-style Vision Transformer (Gong et al. 2021) trained from scratch: overlapping 16x16 patches
(stride 10), learned absolute positions, a class token, pre-norm blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelError
from .asca import DEFAULT_INPUT_SIZE, _check, check_finite_outputs
from .attention import MultiHeadAttention
from .blocks import DropPath, Mlp, init_weights, no_weight_decay_names


@dataclass(frozen=True)
class AstSize:
    dim: int
    depth: int
    num_heads: int
    drop_path: float
    patch_size: int = 16
    patch_stride: int = 10


AST_SIZES: dict[str, AstSize] = {
    # DeiT-Tiny width (AST's smallest published size), about 5.4M parameters.
    "ast_tiny": AstSize(dim=192, depth=12, num_heads=3, drop_path=0.1),
}


class VitBlock(nn.Module):
    """Pre-norm ViT block. Shapes: (B, 1 + h * w, dim) -> same."""

    def __init__(self, dim: int, num_heads: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, dim, head_dim=dim // num_heads, prefix_tokens=1)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class AST(nn.Module):
    """AST-style ViT over overlapping spectrogram patches, from scratch.

    Positions are learned for the patch grid of ``input_size``; other input sizes resample them
    bilinearly. Any input of at least one patch works (no padding to multiples of 32 needed).

    Shapes: forward(spec (B, in_chans, F, T)) -> logits (B, num_classes).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        dim: int,
        depth: int,
        num_heads: int,
        patch_size: int = 16,
        patch_stride: int = 10,
        in_chans: int = 1,
        drop_path: float = 0.0,
        input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
        name: str = "ast",
    ) -> None:
        super().__init__()
        _check(isinstance(in_chans, int) and in_chans >= 1, f"in_chans must be a positive integer, got {in_chans!r}")
        _check(
            isinstance(num_classes, int) and num_classes >= 1,
            f"num_classes must be a positive integer, got {num_classes!r}",
        )
        _check(
            isinstance(drop_path, (int, float)) and 0.0 <= drop_path < 1.0,
            f"drop_path must be in [0, 1), got {drop_path!r}",
        )
        try:
            input_size = (int(input_size[0]), int(input_size[1]))
        except (TypeError, ValueError, IndexError):
            raise ModelError(f"input_size must be two integers (freq, time), got {input_size!r}") from None
        _check(
            min(input_size) >= patch_size, f"input_size must be at least {patch_size} on each side, got {input_size!r}"
        )
        self.name = name
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.input_size = input_size
        self.patch_size = patch_size
        self.patch_stride = patch_stride
        self.grid = self._grid(input_size)
        self.config: dict[str, Any] = {
            "name": name,
            "family": "ast",
            "num_classes": num_classes,
            "in_chans": in_chans,
            "dim": dim,
            "depth": depth,
            "num_heads": num_heads,
            "patch_size": patch_size,
            "patch_stride": patch_stride,
            "drop_path": float(drop_path),
            "input_size": list(input_size),
        }
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, stride=patch_stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, *self.grid))
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(VitBlock(dim, num_heads, rate) for rate in rates)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def _grid(self, size: tuple[int, int]) -> tuple[int, int]:
        return tuple((s - self.patch_size) // self.patch_stride + 1 for s in size)  # type: ignore[return-value]

    def forward(self, spec: Tensor) -> Tensor:
        if spec.ndim != 4 or spec.shape[1] != self.in_chans or min(spec.shape[-2:]) < self.patch_size:
            raise ModelError(
                f"{self.name} expects input (batch, {self.in_chans}, freq >= {self.patch_size}, "
                f"time >= {self.patch_size}), got shape {tuple(spec.shape)}"
            )
        x = self.patch_embed(spec)  # (B, dim, h, w)
        B, _, h, w = x.shape
        pos: Tensor = self.pos_embed
        if (h, w) != self.grid:
            pos = F.interpolate(pos, size=(h, w), mode="bilinear", align_corners=False)
        x = (x + pos).flatten(2).transpose(1, 2)  # (B, h * w, dim)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1 + h * w, dim)
        for block in self.blocks:
            x = block(x, (h, w))
        return check_finite_outputs(self, self.head(self.norm(x[:, 0])))

    def stage_strides(self) -> dict[str, int]:
        return {"blocks": self.patch_stride}

    def no_weight_decay(self) -> set[str]:
        """Names of parameters to exclude from weight decay (norms, biases, positions, class token)."""
        return no_weight_decay_names(self)


def ast_from_size(name: str, num_classes: int, **overrides: Any) -> AST:
    size = AST_SIZES[name]
    options: dict[str, Any] = {"drop_path": size.drop_path}
    options.update({k: v for k, v in overrides.items() if v is not None})
    return AST(
        num_classes,
        dim=size.dim,
        depth=size.depth,
        num_heads=size.num_heads,
        patch_size=size.patch_size,
        patch_stride=size.patch_stride,
        name=name,
        **options,
    )
