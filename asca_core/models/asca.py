"""The ASCA family: CoAtNet stages S0-S4 on log-Mel spectrograms, C-C-C-T by default.

S0 is a two-conv stem (stride 2); S1 is always MBConv; S2-S4 are MBConv (C) or relative-attention
transformer (T) stages as the layout says, each halving the map in its first block, so the stage
strides are 2, 4, 8, 16, 32. The head is global average pooling, LayerNorm, an optional CoAtNet
pre-logits layer (Linear + tanh) and a Linear classifier.

``attn_division`` is the ASCA paper's "ViT window division" (section 4.4.3: 7x7, 14x14, 16x16 and
32x32 on a 224 x 224 input), read as the size in input cells of one token of the first transformer
stage, the way a ViT's patch size is: 16 makes the 224 input a 14 x 14 token grid there, 7 a
32 x 32 one, 32 a 7 x 7 one (what C-C-C-T has anyway). Later transformer stages halve it again.
The conv stages are unchanged; the first transformer block pools or interpolates their map onto
the new grid. ``None`` keeps each stage's own stride.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..config import LAYOUTS, MIN_ATTN_DIVISION
from ..errors import ModelError
from ..geometry import INPUT_MULTIPLE, STAGE_STRIDES
from .blocks import (
    POOLS,
    SE_ACTS,
    STRIDE_MODES,
    TRANSFORMER_NORMS,
    ConvStem,
    MBConv,
    Resample,
    TransformerBlock,
    init_weights,
    no_weight_decay_names,
    zero_pad_to_multiple,
)

DEFAULT_INPUT_SIZE = (128, 320)


class GlobalWindowWarning(UserWarning):
    """A setting that looks local but is global attention (a window as large as the grid)."""


@dataclass(frozen=True)
class AscaArchitecture:
    """Everything that defines an ASCA network, in one place.

    A registered size (:data:`ASCA_SIZES`) is one of these with its widths and depths (S1-S4; S0 is
    the stem); a config's ``model`` section overrides the fields in :data:`OVERRIDABLE`; the built
    model keeps the result as ``model.architecture``, and :meth:`to_dict` is the JSON ``config``
    every checkpoint stores, read back by :meth:`from_dict`.
    """

    name: str
    stem_width: int
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    head_dim: int = 32
    num_classes: int = 1
    layout: str = "CCCT"
    in_chans: int = 1
    drop_path: float = 0.0
    stride_mode: str = "paper"
    attn_window: int | None = None
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE
    head_hidden: int = 0  # CoAtNet's pre-logits width; 0 = LayerNorm straight into the classifier
    attn_division: int | None = None
    downsample_pool: str = "avg"
    transformer_norm: str = "layernorm"
    se_act: str = "gelu"
    head_pool: str = "avg"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every field, except the later additions while at their defaults (so the
        configs of models built before them stay equal)."""
        out: dict[str, Any] = {
            "name": self.name,
            "family": "asca",
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "layout": self.layout,
            "stem_width": self.stem_width,
            "widths": list(self.widths),
            "depths": list(self.depths),
            "head_dim": self.head_dim,
            "head_hidden": self.head_hidden,
            "drop_path": float(self.drop_path),
            "stride_mode": self.stride_mode,
            "attn_window": self.attn_window,
            "input_size": list(self.input_size),
        }
        for key in _ADDED_LATER:
            value = getattr(self, key)
            if value != _DEFAULTS[key]:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> AscaArchitecture:
        """Read :meth:`to_dict`'s form back; fields it lacks come from the registered size of its
        name. Raises :class:`ModelError` for a malformed config."""
        if not isinstance(config, dict) or not isinstance(config.get("name"), str):
            raise ModelError(f"an ASCA model config needs a 'name', got {config!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known - {"family"})
        if unknown:
            raise ModelError(f"ASCA model config {config['name']!r} has unknown settings: {', '.join(unknown)}")
        values = {k: v for k, v in config.items() if k in known}
        for key in ("widths", "depths", "input_size"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        base = ASCA_SIZES.get(values["name"])
        try:
            arch = replace(base, **values) if base is not None else cls(**values)
        except TypeError as exc:
            raise ModelError(f"ASCA model config {config['name']!r} is incomplete: {exc}") from None
        shape = (arch.stem_width, arch.head_dim, *arch.widths, *arch.depths)
        if len(arch.widths) != 4 or len(arch.depths) != 4 or not all(_positive_int(v) for v in shape):
            raise ModelError(
                f"ASCA model config {arch.name!r}: stem_width, head_dim and the four widths and depths must be "
                f"positive integers, got {arch.stem_width!r}, {arch.head_dim!r}, {arch.widths!r}, {arch.depths!r}"
            )
        return arch


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


_DEFAULTS = {f.name: f.default for f in fields(AscaArchitecture)}
# settings that entered the stored config after the first models were saved
_ADDED_LATER = ("attn_division", "downsample_pool", "transformer_norm", "se_act", "head_pool")
# what a size fixes; a config's model section may override every other field
_SIZE_FIELDS = ("name", "num_classes", "stem_width", "widths", "depths", "head_dim")
OVERRIDABLE = tuple(f.name for f in fields(AscaArchitecture) if f.name not in _SIZE_FIELDS)

ASCA_SIZES: dict[str, AscaArchitecture] = {
    # Smallest model with the full C-C-C-T structure, for tests and smoke runs.
    "asca_pico": AscaArchitecture("asca_pico", 16, (16, 32, 64, 128), (1, 1, 1, 1), drop_path=0.0),
    # CPU-friendly: about 3.1M parameters and 0.49 GMACs at 1x128x320.
    "asca_tiny": AscaArchitecture("asca_tiny", 32, (48, 96, 192, 384), (2, 2, 3, 1), drop_path=0.1, head_hidden=384),
    # CoAtNet-0 and CoAtNet-1 widths and depths (Dai et al. 2021, table 3).
    "asca_0": AscaArchitecture("asca_0", 64, (96, 192, 384, 768), (2, 3, 5, 2), drop_path=0.2, head_hidden=768),
    "asca_1": AscaArchitecture("asca_1", 64, (96, 192, 384, 768), (2, 6, 14, 2), drop_path=0.3, head_hidden=768),
}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ModelError(message)


def check_finite_outputs(model: nn.Module, logits: Tensor) -> Tensor:
    """``logits`` unchanged; a ModelError when evaluation gives NaN or infinite scores.

    Training leaves the check to the loss (one test per step, not two), and a compiled graph
    leaves it to its caller (a data-dependent branch would break the graph).
    """
    if model.training or torch.compiler.is_compiling():
        return logits
    if not bool(torch.isfinite(logits).all()):
        raise ModelError(
            f"{getattr(model, 'name', type(model).__name__)} gave NaN or infinite scores: "
            "its weights hold non-finite values or the input is far beyond the range it was "
            "trained on"
        )
    return logits


def _input_size(value: Any) -> tuple[int, int]:
    try:
        f, t = (int(v) for v in value)
        ok = (f, t) == tuple(value)
    except (TypeError, ValueError):
        ok = False
    _check(
        ok and f > 0 and t > 0 and f % INPUT_MULTIPLE == 0 and t % INPUT_MULTIPLE == 0,
        f"input_size must be two positive multiples of {INPUT_MULTIPLE} (freq, time), got {value!r}",
    )
    return f, t


HEAD_POOLS = ("avg", "avgmax")


class ClassifierHead(nn.Module):
    """Pool, LayerNorm, optional pre-logits Linear + tanh, Linear.

    ``pool="avg"`` is CoAtNet's global average. ``pool="avgmax"`` averages over frequency, then adds
    the mean and the maximum over time (PANNs, Kong et al. 2020): a sound that fills a fifth of a
    clip still drives the logits, where a global average dilutes it five times.

    Shapes: (B, C, H, W) -> (B, num_classes).
    """

    def __init__(self, dim: int, num_classes: int, hidden: int | None = None, pool: str = "avg") -> None:
        super().__init__()
        self.pool = pool
        self.norm = nn.LayerNorm(dim)
        self.pre_logits = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh()) if hidden else nn.Identity()
        self.fc = nn.Linear(hidden or dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool == "avgmax":
            x = x.mean(2)
            x = x.mean(-1) + x.amax(-1)
        else:
            x = x.mean((2, 3))
        return self.fc(self.pre_logits(self.norm(x)))


class ASCA(nn.Module):
    """CoAtNet-style hybrid classifier for spectrograms.

    ``input_size`` is the (freq, time) input the relative-bias tables are built for: smaller inputs
    use a sub-range of each table exactly, larger ones clamp offsets beyond the trained range to
    the table's edge. Inputs whose sides are not multiples of 32 are zero-padded at the top of the
    frequency axis and the end of the time axis inside :meth:`forward`.

    Options beyond CoAtNet's defaults (each off by default): ``downsample_pool="max"`` (the Pool of
    CoAtNet's eqs. 4-5 as 2x2 max pooling), ``transformer_norm="batchnorm"`` (BatchNorm where
    transformer blocks have LayerNorm), ``se_act`` (the squeeze-excitation activation: gelu, silu
    as in timm and EfficientNet, relu as in the SE paper), ``attn_window`` (local k x k windows,
    in tokens) and ``attn_division`` (the paper's window division, see the module docstring).

    Shapes: forward(spec (B, in_chans, F, T)) -> logits (B, num_classes).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        stem_width: int,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        layout: str = "CCCT",
        in_chans: int = 1,
        drop_path: float = 0.0,
        stride_mode: str = "paper",
        attn_window: int | None = None,
        input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
        head_dim: int = 32,
        head_hidden: int | None = None,
        name: str = "asca",
        attn_division: int | None = None,
        downsample_pool: str = "avg",
        transformer_norm: str = "layernorm",
        se_act: str = "gelu",
        head_pool: str = "avg",
    ) -> None:
        super().__init__()
        layout = str(layout).upper()
        _check(layout in LAYOUTS, f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        _check(
            stride_mode in STRIDE_MODES, f"stride_mode must be one of {', '.join(STRIDE_MODES)}, got {stride_mode!r}"
        )
        _check(isinstance(in_chans, int) and in_chans >= 1, f"in_chans must be a positive integer, got {in_chans!r}")
        _check(
            isinstance(num_classes, int) and num_classes >= 1,
            f"num_classes must be a positive integer, got {num_classes!r}",
        )
        _check(
            isinstance(drop_path, (int, float)) and 0.0 <= drop_path < 1.0,
            f"drop_path must be in [0, 1), got {drop_path!r}",
        )
        _check(
            attn_window is None or (isinstance(attn_window, int) and attn_window >= 1),
            f"attn_window must be a positive integer or None (global attention), got {attn_window!r}",
        )
        _check(
            head_hidden is None or (isinstance(head_hidden, int) and head_hidden >= 0),
            f"head_hidden must be a non-negative integer or None, got {head_hidden!r}",
        )
        _check(
            attn_division is None
            or (
                isinstance(attn_division, int)
                and not isinstance(attn_division, bool)
                and attn_division >= MIN_ATTN_DIVISION
            ),
            f"attn_division must be an integer >= {MIN_ATTN_DIVISION} (input cells per token side) or None, "
            f"got {attn_division!r}",
        )
        _check(
            attn_division is None or "T" in layout,
            f"attn_division applies to transformer stages; layout {layout} has none",
        )
        _check(downsample_pool in POOLS, f"downsample_pool must be one of {', '.join(POOLS)}, got {downsample_pool!r}")
        _check(
            transformer_norm in TRANSFORMER_NORMS,
            f"transformer_norm must be one of {', '.join(TRANSFORMER_NORMS)}, got {transformer_norm!r}",
        )
        _check(se_act in SE_ACTS, f"se_act must be one of {', '.join(SE_ACTS)}, got {se_act!r}")
        _check(head_pool in HEAD_POOLS, f"head_pool must be one of {', '.join(HEAD_POOLS)}, got {head_pool!r}")
        input_size = _input_size(input_size)
        for kind, width in zip(layout, widths):
            assert kind == "C" or width % head_dim == 0, f"width {width} is not a multiple of head_dim {head_dim}"

        self.name = name
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.input_size = input_size
        self.layout = layout
        self.architecture = AscaArchitecture(
            name=name,
            stem_width=stem_width,
            widths=tuple(widths),
            depths=tuple(depths),
            drop_path=float(drop_path),
            head_hidden=int(head_hidden or 0),
            head_dim=head_dim,
            num_classes=num_classes,
            in_chans=in_chans,
            layout=layout,
            stride_mode=stride_mode,
            attn_window=attn_window,
            input_size=input_size,
            attn_division=attn_division,
            downsample_pool=downsample_pool,
            transformer_norm=transformer_norm,
            se_act=se_act,
            head_pool=head_pool,
        )
        self.config: dict[str, Any] = self.architecture.to_dict()
        self._strides = self._token_sizes(layout, attn_division)

        self.s0 = ConvStem(in_chans, stem_width)
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()  # rises linearly over all blocks
        dim, cells = stem_width, 2
        covered = []
        for s, (kind, width, depth) in enumerate(zip(layout, widths, depths), start=1):
            stride = self._strides[s - 1]
            grid = (max(1, input_size[0] // stride), max(1, input_size[1] // stride))
            if kind == "T" and attn_window is not None and attn_window >= max(grid):
                covered.append(f"s{s} ({grid[0]}x{grid[1]})")
            blocks: list[nn.Module] = []
            for i in range(depth):
                rate = rates.pop(0)
                if kind == "C":
                    blocks.append(
                        MBConv(
                            dim,
                            width,
                            stride=2 if i == 0 else 1,
                            stride_mode=stride_mode,
                            drop_path=rate,
                            pool=downsample_pool,
                            se_act=se_act,
                        )
                    )
                else:
                    # A map after another transformer stage of a divided model may have odd sides,
                    # which the reshape-mean pool of the plain path cannot take.
                    odd_ok = attn_division is not None and s > 1 and layout[s - 2] == "T"
                    resample = (
                        Resample(cells, stride, downsample_pool) if i == 0 and (stride != 2 * cells or odd_ok) else None
                    )
                    blocks.append(
                        TransformerBlock(
                            dim,
                            width,
                            grid,
                            downsample=i == 0,
                            head_dim=head_dim,
                            window=attn_window,
                            drop_path=rate,
                            pool=downsample_pool,
                            norm=transformer_norm,
                            resample=resample,
                        )
                    )
                dim = width
            cells = stride
            self.add_module(f"s{s}", nn.Sequential(*blocks))
        self.head = ClassifierHead(dim, num_classes, head_hidden or None, head_pool)
        self.apply(init_weights)
        if covered:
            warnings.warn(
                f"attn_window={attn_window} tokens covers the whole token grid of {', '.join(covered)} "
                f"at input {input_size[0]}x{input_size[1]}: that is global attention there "
                "(attn_division sets the paper's window division instead)",
                GlobalWindowWarning,
                stacklevel=2,
            )

    @staticmethod
    def _token_sizes(layout: str, attn_division: int | None) -> tuple[int, ...]:
        """Input cells per token side of S1..S4: the stage strides, or ``attn_division`` for the first
        transformer stage (doubling after it)."""
        if attn_division is None:
            return STAGE_STRIDES
        first = layout.index("T")
        return tuple(STAGE_STRIDES[i] if i < first else attn_division * 2 ** (i - first) for i in range(4))

    @property
    def stages(self) -> list[nn.Module]:
        return [self.get_submodule(f"s{i}") for i in range(1, 5)]

    def stage_strides(self) -> dict[str, int]:
        """Input pixels per token of each stage, keyed by stage name (``"s1"``..``"s4"``)."""
        return {f"s{i}": stride for i, stride in enumerate(self._strides, start=1)}

    def forward_features(self, spec: Tensor) -> Tensor:
        """Shapes: (B, in_chans, F, T) -> (B, C, F'/s, T'/s) with F', T' padded to multiples of 32 and
        s the last stage's stride (32, or the token size ``attn_division`` gives it)."""
        if spec.ndim != 4 or spec.shape[1] != self.in_chans:
            raise ModelError(
                f"{self.name} expects input (batch, {self.in_chans}, freq, time), got shape {tuple(spec.shape)}"
            )
        x = self.s0(zero_pad_to_multiple(spec, INPUT_MULTIPLE))
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, spec: Tensor) -> Tensor:
        return check_finite_outputs(self, self.head(self.forward_features(spec)))

    def no_weight_decay(self) -> set[str]:
        """Names of parameters to exclude from weight decay (norms, biases, relative-bias tables)."""
        return no_weight_decay_names(self)


def asca_from_size(name: str, num_classes: int, **overrides: Any) -> ASCA:
    """Build the registered ASCA size ``name``; ``overrides`` (``None`` = the size's value) replace
    the fields of :data:`OVERRIDABLE`."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    return asca_from_architecture(replace(ASCA_SIZES[name], num_classes=num_classes, **changes))


def asca_from_architecture(architecture: AscaArchitecture) -> ASCA:
    """Build (fresh weights) the network ``architecture`` describes."""
    return ASCA(**asdict(architecture))
