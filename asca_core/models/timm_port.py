"""Port the weights of timm's CoAtNet (``timm.models.maxxvit.MaxxVit``) into an ASCA model.

The architectures are the same block for block (``asca_0`` is timm's ``coatnet_0`` with one input
channel), so a port is a renaming plus three layout changes:

- timm's transformer stages run NCHW with 1x1 convolutions; ours run on tokens with Linear layers:
  ``qkv``, ``proj``, ``mlp.fc1`` and ``mlp.fc2`` weights lose their trailing ``1 x 1``.
- qkv channel order: timm's default (``head_first=True``) groups the output channels per head,
  ``[h0: q k v | h1: q k v | ...]``, each ``head_dim`` wide; ours is ``[q: h0 h1 ... | k: ... | v: ...]``
  (the ``(B, N, 3, heads, d)`` view in :class:`~asca_core.models.attention.MultiHeadAttention`).
  timm's TensorFlow-compatible configs (``head_first=False``) already use our order.
- relative bias: timm stores ``((2H-1) * (2W-1), heads)``, flat offset ``dh * (2W-1) + dw`` with
  offsets query minus key; ours is ``(heads, 2H-1, 2W-1)`` with the same offsets, so a transpose
  and a reshape.

To compute the same outputs the ASCA model must be built with timm's settings: ``stride_mode=
"depthwise"`` (timm's ``stride_mode="dw"``; ``"1x1"`` is our ``"paper"``) and ``se_act="silu"``
(timm's ``attn_act_layer``). timm's LayerNorms use eps 1e-6, ours torch's 1e-5: outputs agree to
about 1e-5 as they are, and to float rounding with :func:`match_timm_norm_eps`. Sizes with
a pre-logits layer (``asca_0``, ``asca_1``, ``asca_tiny``) compute timm's outputs; without one
(``asca_pico``) timm's MaxxVit normalises the map before pooling and ours after, so those port
but do not agree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..errors import ModelError

_CONV_NAMES = {
    "pre_norm": "norm",
    "conv1_1x1": "expand",
    "conv2_kxk": "dw",
    "se.fc1": "se.reduce",
    "se.fc2": "se.expand",
    "conv3_1x1": "proj",
    "shortcut.expand": "shortcut.proj",
}
_TRANSFORMER_NAMES = {
    "norm1.norm": "norm1",
    "shortcut.expand": "shortcut.proj",
    "attn.rel_pos.relative_position_bias_table": "attn.rel_bias.table",
}
_HEAD_NAMES = {
    "norm": "head.norm",
    "head.norm": "head.norm",
    "head.pre_logits.fc": "head.pre_logits.0",
    "head.fc": "head.fc",
}


def _qkv_rows(heads: int, head_dim: int) -> Tensor:
    """Row ``r`` of our qkv weight is row ``index[r]`` of timm's head-first one."""
    s, h, i = torch.meshgrid(torch.arange(3), torch.arange(heads), torch.arange(head_dim), indexing="ij")
    return (h * 3 * head_dim + s * head_dim + i).flatten()  # ours: (s, h, i) row-major


def timm_coatnet_state_dict(
    state: Mapping[str, Tensor], model: nn.Module, head_first: bool = True
) -> dict[str, Tensor]:
    """timm MaxxVit (CoAtNet) weights renamed and reshaped for ``model`` (an ASCA of the same
    widths, depths and layout). Raises ModelError naming the first tensor that does not fit.

    ``head_first`` is timm's ``MaxxVitTransformerCfg.head_first`` (True in its CoAtNet configs).
    """
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("relative_position_index"):
            continue  # a buffer derived from the grid
        match = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)", key)
        if key.startswith("stem."):
            name = "s0." + key[len("stem.") :]
        elif match:
            stage, block, rest = int(match[1]) + 1, match[2], match[3]
            is_t = str(model.layout)[stage - 1] == "T"
            for old, new in (_TRANSFORMER_NAMES if is_t else _CONV_NAMES).items():
                if rest == old or rest.startswith(old + "."):
                    rest = new + rest[len(old) :]
                    break
            name = f"s{stage}.{block}.{rest}"
            if is_t:
                attn = getattr(model, f"s{stage}")[int(block)].attn
                if rest.startswith(("attn.qkv", "attn.proj", "mlp.fc")) and value.ndim == 4:
                    value = value.flatten(1)  # 1x1 conv -> Linear
                if rest.startswith("attn.qkv") and head_first:
                    value = value[_qkv_rows(attn.num_heads, attn.head_dim)]
                if rest == "attn.rel_bias.table":
                    value = value.t().reshape(attn.num_heads, *own[name].shape[1:])
        else:
            prefix = next((p for p in sorted(_HEAD_NAMES, key=len, reverse=True) if key.startswith(p + ".")), None)
            if prefix is None:
                raise ModelError(f"timm tensor {key!r} has no counterpart in {getattr(model, 'name', 'the model')}")
            name = _HEAD_NAMES[prefix] + key[len(prefix) :]
        if name not in own or own[name].shape != value.shape:
            got = tuple(own[name].shape) if name in own else "no such tensor"
            raise ModelError(f"timm tensor {key!r} {tuple(value.shape)} does not fit {name!r} ({got})")
        out[name] = value.clone()
    missing = sorted(set(own) - set(out))
    if missing:
        raise ModelError(f"timm weights leave {len(missing)} tensors of the model unset, first {missing[0]!r}")
    return out


def match_timm_norm_eps(model: nn.Module, eps: float = 1e-6) -> nn.Module:
    """Set every LayerNorm's eps to timm's (1e-6), for an output comparison to float rounding."""
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = eps
    return model


__all__ = ["match_timm_norm_eps", "timm_coatnet_state_dict"]
