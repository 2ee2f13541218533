"""CoAtNet building blocks: conv stem, MBConv with squeeze-excitation, relative transformer block.

Every block takes and returns an NCHW map ``(B, C, F, T)`` (frequency rows, time columns), so a
stage is a plain ``nn.Sequential`` whatever its type.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .attention import MultiHeadAttention

STRIDE_MODES = ("paper", "depthwise")
POOLS = ("avg", "max")  # the Pool of CoAtNet's downsampling blocks (eqs. 4-5)
TRANSFORMER_NORMS = ("layernorm", "batchnorm")
SE_ACTS = ("gelu", "silu", "relu")
_ACTS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        return x * self._scaled_mask(x)

    def add_to(self, shortcut: Tensor, x: Tensor) -> Tensor:
        """``shortcut + self(x)`` in one pass over the map (a residual connection)."""
        if self.p == 0.0 or not self.training:
            return shortcut + x
        return torch.addcmul(shortcut, x, self._scaled_mask(x))

    def _scaled_mask(self, x: Tensor) -> Tensor:
        """A (B, 1, ...) keep mask divided by the keep probability: scale the mask, not the map."""
        keep = 1.0 - self.p
        return x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class ConvStem(nn.Module):
    """S0: two 3x3 convolutions, the first with stride 2 and followed by BatchNorm and GELU.

    The second conv stays linear, as in CoAtNet: the first S1 block starts with its own
    BatchNorm (pre-norm), which would make a norm here redundant.

    Shapes: (B, in_chans, F, T) -> (B, width, F/2, T/2).
    """

    def __init__(self, in_chans: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(width)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.act(self.norm1(self.conv1(x))))


class Resample(nn.Module):
    """The ``Pool`` of a downsampling block: from tokens of ``in_cells`` input cells per side to
    tokens of ``out_cells``.

    Twice the size is CoAtNet's 2x2 pooling (average, or max with ``pool="max"``); the same size
    is the identity; any other ratio pools adaptively to ``(H * in_cells) // out_cells`` rows
    (at least 1) when shrinking and interpolates bilinearly when growing (a transformer stage
    whose tokens are finer than the conv stage before it, see ``ASCA(attn_division=...)``).

    Shapes: (B, C, H, W) -> (B, C, h, w).
    """

    def __init__(self, in_cells: int = 1, out_cells: int = 2, pool: str = "avg") -> None:
        super().__init__()
        assert pool in POOLS, pool
        self.in_cells, self.out_cells, self.kind = int(in_cells), int(out_cells), pool
        self.pairwise = self.out_cells == 2 * self.in_cells
        self.pool = (nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2)) if self.pairwise else None

    def grid(self, h: int, w: int) -> tuple[int, int]:
        """Output (rows, columns) for an (h, w) input map."""
        if self.pairwise:
            return h // 2, w // 2
        return max(1, h * self.in_cells // self.out_cells), max(1, w * self.in_cells // self.out_cells)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            return self.pool(x)
        size = self.grid(*x.shape[-2:])
        if size == tuple(x.shape[-2:]):
            return x
        if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
            fn = F.adaptive_avg_pool2d if self.kind == "avg" else F.adaptive_max_pool2d
            return fn(x, size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"{self.in_cells} -> {self.out_cells} cells, {self.kind}"


class PoolProject(nn.Module):
    """The downsampling shortcut ``Proj(Pool(x))``: 2x2 average (or max) pool, then a 1x1 conv if
    widths differ. ``resample`` replaces the 2x2 pool (see :class:`Resample`).

    Shapes: (B, dim, H, W) -> (B, dim_out, H/2, W/2).
    """

    def __init__(self, dim: int, dim_out: int, pool: str = "avg", resample: Resample | None = None) -> None:
        super().__init__()
        self.pool: nn.Module
        if resample is not None:
            self.pool = resample
        else:
            self.pool = nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2)
        self.proj = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.pool(x))


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of tokens, statistics over batch and positions.

    The option ``transformer_norm="batchnorm"`` puts it where a transformer block has LayerNorm
    (the ASCA paper reports BatchNorm beating other normalisations on small audio sets).
    Shapes: (..., C) -> (..., C).
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view_as(x)


def token_norm(kind: str, dim: int) -> nn.Module:
    """The norm of a transformer block: ``"layernorm"`` (CoAtNet) or ``"batchnorm"``."""
    assert kind in TRANSFORMER_NORMS, kind
    return nn.LayerNorm(dim) if kind == "layernorm" else TokenBatchNorm(dim)


class SqueezeExcite(nn.Module):
    """Channel gating from globally pooled features (Hu et al. 2018).

    ``act`` is the activation between its two 1x1 convs: GELU as everywhere in CoAtNet's MBConv,
    SiLU as in EfficientNet and timm's MaxxVit/CoAtNet (``attn_act_layer="silu"``), or ReLU as in
    the original SE block.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, reduced: int, act: str = "gelu") -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = _ACTS[act]()
        self.expand = nn.Conv2d(reduced, channels, 1)

    def gate(self, pooled: Tensor) -> Tensor:
        """The (B, C, 1, 1) gate in (0, 1) from the globally pooled map."""
        return self.expand(self.act(self.reduce(pooled))).sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        if _can_fuse(x):
            return _SqueezeExciteFn.apply(x, self, *self.parameters())
        return x * self.gate(x.mean((2, 3), keepdim=True))


def _gate_with_graph(se: SqueezeExcite, x: Tensor) -> tuple[Tensor, Tensor]:
    """The pooled map (a leaf) and the gate computed from it, the small graph kept for backward."""
    with torch.enable_grad():
        pooled = x.detach().mean((2, 3), keepdim=True).requires_grad_()
        return pooled, se.gate(pooled)


def _gate_backward(ctx, d_gate: Tensor) -> tuple[Tensor, list[Tensor | None]]:
    """Gradients of the pooled map and of the gate network's parameters, from the gate's."""
    pooled, gate = ctx.gate_graph
    trained = [p for p in ctx.params if p.requires_grad]
    grads = iter(torch.autograd.grad(gate, [pooled, *trained], d_gate.to(gate.dtype), retain_graph=True))
    d_pooled = next(grads)
    return d_pooled, [next(grads) if p.requires_grad else None for p in ctx.params]


def _can_fuse(x: Tensor) -> bool:
    """Whether a gradient will flow through ``x`` in eager mode (where the fused backward pays)."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return False
    return not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling())


class _SqueezeExciteFn(torch.autograd.Function):
    """Squeeze-excitation whose backward makes two passes over the map instead of four.

    Left to autograd, the map's gradient is the sum of two branches: through the product
    (``grad * gate``) and through the pooling (``d_pooled / (H W)`` spread over the map), each
    written out in full and then added. Here the small gate network keeps its own graph and the
    map's gradient is one ``addcmul``; the gate's gradient is ``sum(grad * x)`` as before.
    Forward values are those of the plain path; gradients agree to rounding (tested).
    """

    @staticmethod
    def forward(ctx, x: Tensor, se: SqueezeExcite, *params: Tensor) -> Tensor:
        pooled, gate = _gate_with_graph(se, x)
        ctx.save_for_backward(x)
        ctx.gate_graph = (pooled, gate)
        ctx.params = params
        return x * gate.detach()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        gate = ctx.gate_graph[1]
        d_pooled, d_params = _gate_backward(ctx, (grad * x).sum((2, 3), keepdim=True))
        d_x = torch.addcmul(d_pooled / (x.shape[2] * x.shape[3]), grad, gate.detach()).to(x.dtype)
        return (d_x, None, *d_params)


class MBConv(nn.Module):
    """CoAtNet's C block: pre-norm inverted residual with depthwise 3x3 and squeeze-excitation.

    ``x + DropPath(Proj(SE(DW(Expand(Norm(x))))))``; the first block of a stage downsamples as
    ``Proj(Pool(x)) + Conv(DW(Conv(Norm(x), stride=2)))``. ``stride_mode="paper"`` strides the first
    1x1 conv (CoAtNet, about 20% fewer MACs here); ``"depthwise"`` strides the 3x3 depthwise conv
    (timm's choice, sees every input pixel). ``pool`` is the shortcut's 2x2 pool (average or max),
    ``se_act`` the squeeze-excitation activation.

    Shapes: (B, dim, H, W) -> (B, dim_out, H/stride, W/stride).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        stride: int = 1,
        stride_mode: str = "paper",
        expand_ratio: float = 4.0,
        se_ratio: float = 0.25,
        drop_path: float = 0.0,
        pool: str = "avg",
        se_act: str = "gelu",
    ) -> None:
        super().__init__()
        assert stride in (1, 2) and stride_mode in STRIDE_MODES, (stride, stride_mode)
        assert stride == 2 or dim == dim_out, "only a downsampling block changes the width"
        mid = int(dim_out * expand_ratio)
        stride_1x1, stride_dw = (stride, 1) if stride_mode == "paper" else (1, stride)
        self.shortcut = PoolProject(dim, dim_out, pool) if stride == 2 else nn.Identity()
        self.norm = nn.BatchNorm2d(dim)
        self.expand = nn.Conv2d(dim, mid, 1, stride=stride_1x1, bias=False)
        self.norm1 = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, stride=stride_dw, padding=1, groups=mid, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.act = nn.GELU()
        self.se = SqueezeExcite(mid, max(1, int(dim_out * se_ratio)), se_act)
        self.proj = nn.Conv2d(mid, dim_out, 1)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.shortcut(x)
        x = self.act(self.norm1(self.expand(self.norm(x))))
        x = self.act(self.norm2(self.dw(x)))
        if _can_fuse(x) and _fits_gated_projection(x, self.proj.weight):
            x = _GatedProjectionFn.apply(x, self.se, self.proj.weight, self.proj.bias, *self.se.parameters())
        else:
            x = self.proj(self.se(x))
        return self.drop_path.add_to(shortcut, x)


def _fits_gated_projection(x: Tensor, weight: Tensor) -> bool:
    """Whether :class:`_GatedProjectionFn` applies: a channels_last map (its pixels are rows of a
    matrix without a copy), one dtype and no autocast (which the plain path handles)."""
    return (
        x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and x.dtype == weight.dtype
        and not torch.is_autocast_enabled(x.device.type)
    )


class _GatedProjectionFn(torch.autograd.Function):
    """Squeeze-excitation and the 1x1 projection after it as one batched matrix product.

    ``proj(x * gate)`` is ``x @ (W * gate)^T`` per sample: the gate scales the weight's columns
    (a C_out x C matrix per sample) instead of the map, so the gated map is never written, and the
    backward's one ``(grad^T x)`` product per sample gives both the weight's and the gate's
    gradients. On a channels_last map the pixels are already the rows of that product.
    Values and gradients equal those of ``proj(se(x))`` to rounding (tested).

    Shapes: x (B, C, H, W) channels_last -> (B, C_out, H, W) channels_last.
    """

    @staticmethod
    def forward(ctx, x: Tensor, se: SqueezeExcite, weight: Tensor, bias: Tensor | None, *params: Tensor) -> Tensor:
        B, C, H, W = x.shape
        pooled, gate = _gate_with_graph(se, x)  # gate: (B, C, 1, 1)
        w = weight.view(weight.shape[0], C)  # (C_out, C)
        gated_w = w.unsqueeze(0) * gate.detach().view(B, 1, C)  # (B, C_out, C)
        rows = x.permute(0, 2, 3, 1).reshape(B, H * W, C)  # a view: x is channels_last
        if bias is None:
            out = torch.bmm(rows, gated_w.transpose(1, 2))
        else:
            out = torch.baddbmm(bias.view(1, 1, -1), rows, gated_w.transpose(1, 2))  # (B, H W, C_out)
        ctx.save_for_backward(x, weight)
        ctx.gate_graph = (pooled, gate)
        ctx.params = params
        ctx.has_bias = bias is not None
        return out.view(B, H, W, -1).permute(0, 3, 1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        gate = ctx.gate_graph[1]
        B, C, H, W = x.shape
        c_out = weight.shape[0]
        w = weight.view(c_out, C)
        g = gate.detach().view(B, 1, C)
        rows = x.permute(0, 2, 3, 1).reshape(B, H * W, C)
        grad_rows = grad.permute(0, 2, 3, 1).reshape(B, H * W, c_out)  # a copy only if grad is not channels_last
        per_sample = torch.bmm(grad_rows.transpose(1, 2), rows)  # (B, C_out, C): grad^T x
        d_weight = (per_sample * g).sum(0).view_as(weight)
        d_bias = grad_rows.sum((0, 1)) if ctx.has_bias else None
        d_pooled, d_params = _gate_backward(ctx, (per_sample * w).sum(1).view(B, C, 1, 1))
        d_pooled = d_pooled.view(B, 1, C) / (H * W)
        d_rows = torch.baddbmm(d_pooled, grad_rows, w.unsqueeze(0) * g)  # (B, H W, C)
        return (d_rows.view(B, H, W, C).permute(0, 3, 1, 2), None, d_weight, d_bias, *d_params)


class Mlp(nn.Module):
    """Transformer feed-forward network: Linear -> GELU -> Linear. Shapes: (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, expand_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """CoAtNet's T block: pre-norm relative self-attention and a x4 FFN on a 2-D map.

    ``x + DropPath(Attn(Norm(x)))`` then ``x + DropPath(FFN(Norm(x)))``; the first block of a stage
    downsamples as ``Proj(Pool(x)) + Attn(Pool(Norm(x)))``. ``grid`` is the (freq, time) token grid
    the relative-bias table is built for (the block's output grid at the model's input size).
    ``pool`` is CoAtNet's 2x2 pool (average or max); ``resample`` replaces it to change the token
    size by another ratio (:class:`Resample`). ``norm`` is ``"layernorm"`` (CoAtNet) or
    ``"batchnorm"``.

    Shapes: (B, dim, H, W) -> (B, dim_out, H/s, W/s) with s = 2 when downsampling, else 1.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        grid: tuple[int, int],
        downsample: bool = False,
        head_dim: int = 32,
        window: int | None = None,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        pool: str = "avg",
        norm: str = "layernorm",
        resample: Resample | None = None,
    ) -> None:
        super().__init__()
        assert downsample or dim == dim_out, "only a downsampling block changes the width"
        self.downsample = downsample
        self.pool_kind = pool
        self.resample = resample if downsample else None
        self.shortcut = PoolProject(dim, dim_out, pool, self.resample) if downsample else nn.Identity()
        self.norm1 = token_norm(norm, dim)
        self.attn = MultiHeadAttention(dim, dim_out, head_dim=head_dim, rel_grid=grid, window=window)
        self.norm2 = token_norm(norm, dim_out)
        self.mlp = Mlp(dim_out, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        B, C, _H, _W = x.shape
        shortcut = self.shortcut(x)  # (B, C_out, h, w)
        h, w = shortcut.shape[-2:]
        y = self.norm1(x.permute(0, 2, 3, 1))  # (B, H, W, C)
        if self.resample is not None:
            y = self.resample(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, h, w, C)
        elif self.downsample and self.pool_kind == "max":
            y = y.reshape(B, h, 2, w, 2, C).amax((2, 4))  # 2x2 max pool: (B, h, w, C)
        elif self.downsample:
            y = y.reshape(B, h, 2, w, 2, C).mean((2, 4))  # 2x2 average pool: (B, h, w, C)
        y = self.attn(y.reshape(B, h * w, C), (h, w))  # (B, N, C_out)
        x = self.drop_path.add_to(shortcut.flatten(2).transpose(1, 2), y)  # (B, N, C_out)
        x = self.drop_path.add_to(x, self.mlp(self.norm2(x)))
        return x.transpose(1, 2).reshape(B, -1, h, w)  # (B, C_out, h, w)


def init_weights(module: nn.Module) -> None:
    """Truncated-normal linears (std 0.02, as ViT and CoAtNet) and fan-out normal convs."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def zero_pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad the last two axes (freq at the top, time at the end) up to a multiple.

    Inside the model, on its normalised input, where 0 is the dataset mean; the front end pads
    with silence instead (:func:`asca_core.features.pad_to_multiple`).

    Shapes: (B, C, F, T) -> (B, C, ceil(F/m) m, ceil(T/m) m).
    """
    pad_f, pad_t = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if pad_f or pad_t:
        x = F.pad(x, (0, pad_t, 0, pad_f))
    return x


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameters AdamW should not decay: norms, biases, bias tables, positions, class tokens."""
    keep_free = ("rel_bias.table", "pos_embed", "cls_token")
    return {name for name, p in model.named_parameters() if p.ndim <= 1 or any(name.endswith(k) for k in keep_free)}


__all__ = [
    "POOLS",
    "SE_ACTS",
    "STRIDE_MODES",
    "TRANSFORMER_NORMS",
    "ConvStem",
    "DropPath",
    "MBConv",
    "Mlp",
    "PoolProject",
    "Resample",
    "SqueezeExcite",
    "TokenBatchNorm",
    "TransformerBlock",
    "init_weights",
    "no_weight_decay_names",
    "token_norm",
    "zero_pad_to_multiple",
]
