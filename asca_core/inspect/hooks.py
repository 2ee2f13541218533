"""Hooks for attribution: a private hookable copy of a model, a guard that removes every hook
registered inside it, and the layer Grad-CAM explains (with token blocks folded onto their grid).

Hooks are never registered on a classifier's own model: :func:`private_model` gives each call a
copy of the module tree that shares the parameters and buffers, so threads sharing one classifier
can attribute and predict at once, and :func:`hooks_removed` removes what a call registered, even
when its forward fails.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import AscaError

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)


@contextmanager
def hooks_removed(model: nn.Module) -> Iterator[None]:
    """Remove, on exit (error or not), every module hook registered on ``model`` inside the block.

    Captum removes its own hooks in ``finally`` clauses; this guard also covers hooks registered
    here and any a failing third-party path would leave behind. Hooks present before stay.
    """
    before = {id(m): {name: set(getattr(m, name, {}) or {}) for name in _HOOK_DICTS} for m in model.modules()}
    try:
        yield
    finally:
        for module in model.modules():
            known = before.get(id(module), {})
            for name in _HOOK_DICTS:
                hooks = getattr(module, name, None)
                if not hooks:
                    continue
                for key in list(hooks):
                    if key not in known.get(name, ()):
                        del hooks[key]


def private_model(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree that shares its parameters, buffers and caches.

    Hooks registered on the copy and its train/eval flags are its own, so hooking it never changes
    what a forward of ``model`` in another thread computes; no weight is copied.
    """
    from ..models.attention import RelativePositionBias

    memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    for module in model.modules():
        if isinstance(module, RelativePositionBias):
            # shared, not copied: another thread may add an entry while the copy is made
            memo[id(module._index_cache)] = module._index_cache
    return copy.deepcopy(model, memo)


def gradcam_layer(model: nn.Module, kind: str, layer: str | None = None) -> tuple[str, nn.Module]:
    """The module Grad-CAM explains: ``conv`` = last convolution stage, ``attention`` = last
    attention stage (or the named sub-module ``layer``)."""
    if layer is not None:
        try:
            return layer, model.get_submodule(layer)
        except AttributeError:
            raise AscaError(f"model {getattr(model, 'name', type(model).__name__)} has no layer {layer!r}") from None
    layout = getattr(model, "layout", None)
    if layout is not None and hasattr(model, "stages"):
        wanted = "C" if kind == "conv" else "T"
        names = [f"s{i}" for i, k in enumerate(layout, start=1) if k == wanted]
        if not names:
            raise AscaError(
                f"model layout {layout} has no {'convolution' if kind == 'conv' else 'attention'} "
                f"stage for gradcam_{kind}"
            )
        return names[-1], model.get_submodule(names[-1])
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):  # ViT baseline
        if kind == "conv":
            return "patch_embed", model.get_submodule("patch_embed")
        last = f"blocks.{len(list(model.get_submodule('blocks').children())) - 1}"
        return last, model.get_submodule(last)
    raise AscaError(f"cannot find a {kind} stage in {type(model).__name__}: pass layer=<module name>")


class _TokenGrid(nn.Identity):
    """Identity whose input is a token sequence folded back onto its (freq, time) grid.

    Grad-CAM needs channel maps (B, C, h, w); a ViT block returns tokens (B, prefix + h*w, C).
    A forward hook routes the block output through this module, so Captum hooks a 2-D map.
    """


def token_grid(model: nn.Module, spec: Tensor) -> tuple[int, int]:
    """(freq, time) token grid of a patch-embedding model (the ViT baseline) on input ``spec``."""
    cfg = getattr(model, "config", {})
    size, stride = cfg.get("patch_size"), cfg.get("patch_stride")
    if not size or not stride:
        raise AscaError(f"cannot fold the tokens of {type(model).__name__} back onto a grid")
    return ((spec.shape[-2] - size) // stride + 1, (spec.shape[-1] - size) // stride + 1)


@contextmanager
def grid_view(model: nn.Module, block: nn.Module, spec: Tensor) -> Iterator[nn.Module]:
    """Yield the module whose output is the block output as (B, C, h, w).

    NCHW blocks (ASCA stages) are returned as they are. A token block is followed, through a
    temporary forward hook (removed on exit), by a :class:`_TokenGrid`.
    """
    view = _TokenGrid()
    state: dict[str, Any] = {}

    def fold(module: nn.Module, args: Any, out: Tensor) -> Tensor | None:
        if out.dim() != 3:
            return None
        h, w = token_grid(model, spec)
        prefix = out.shape[1] - h * w
        grid = out[:, prefix:].transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)  # (B, C, h, w)
        grid = view(grid)
        state["folded"] = True
        tokens = grid.flatten(2).transpose(1, 2)  # (B, h*w, C)
        return torch.cat([out[:, :prefix], tokens], dim=1)

    handle = block.register_forward_hook(fold)
    try:
        with torch.no_grad():
            model(spec[:1])
        yield view if state.get("folded") else block
    finally:
        handle.remove()


__all__ = ["gradcam_layer", "grid_view", "hooks_removed", "private_model", "token_grid"]
