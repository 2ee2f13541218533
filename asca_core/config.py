"""Training configuration: typed dataclasses, YAML presets and dotted ``--set`` overrides.

A :class:`Config` has five sections (``data``, ``features``, ``augment``, ``model``, ``train``).
Every value is checked when the config is created, so a typo or a wrong type fails before any
audio is decoded, with one line naming the key::

    cfg = load_config("configs/demo.yaml", ["train.lr=3e-4", "model.layout=CCTT"])
    cfg.to_yaml(run_dir / "config.yaml")
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .geometry import INPUT_MULTIPLE, STAGE_STRIDES

LAYOUTS = ("CCCT", "CCTT", "CCCC", "CTTT")  # kinds of stages S1-S4: MBConv (C) or transformer (T)
DATASET_FORMATS = ("folder", "csv", "birdclef", "esc50", "review")  # data.format also takes "auto"
# Upper bounds: every accepted value must fit in memory and keep the process alive. They do not
# depend on this machine, so a run's config still loads elsewhere (memory is checked at training).
MAX_SEED = 2**32 - 1
MAX_WORKERS = 64
MAX_CLIPS_PER_CLASS = 10_000_000
MAX_N_FFT = 65536
MAX_FRAMES = 16384  # model input time frames (60 s at a 3.7 ms hop)
MAX_NORM = 1e4  # |norm_mean| and norm_std of log-Mel features
MAX_MIXUP_ALPHA = 100.0
MAX_MASKS = 32
MAX_SNR_DB = 100.0
MAX_ATTN_WINDOW = 128  # tokens per side of a local window; its relative-bias table grows with the square
# Input cells per token side of the first transformer stage; below S1's stride, finer tokens would
# only interpolate the first conv stage.
MIN_ATTN_DIVISION, MAX_ATTN_DIVISION = STAGE_STRIDES[0], 512
MAX_CLASSES = 100_000
LABEL_MODES = ("primary", "primary+secondary")
MIXUP_DOMAINS = ("logmel", "waveform")
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 8192
MAX_LR = 10.0
MAX_WEIGHT_DECAY = 10.0
MAX_GRAD_CLIP = 1e6
MAX_THREADS = 256


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclass
class DataConfig:
    """Where clips come from and how they are split."""

    path: str = "demo"  # dataset folder or manifest; "demo" is the built-in synthetic set
    format: str = "auto"  # auto | folder | csv | birdclef | esc50 | review
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    test_fold: int | None = None  # ESC-50 style: this fold is the test set
    group_column: str | None = None  # keep each group (speaker, recording) on one side
    test_group: str | None = None  # leave-one-group-out: clips of this group_column value are the test set
    seed: int = 0
    cache_dir: str | None = None  # decoded-audio cache; None = the user cache folder
    balanced_sampling: bool = False
    num_workers: int = 0
    max_clips_per_class: int | None = None
    # Which labels are targets (and classes): a clip's primary label only, or its secondary labels
    # too (BirdCLEF's secondary_labels; the extra labels of a multi-label "a;b" manifest row).
    labels: str = "primary+secondary"
    # A fixed class list in output order: a list of names, or a file (one name per line, or a JSON
    # list such as a run's labels.json). Clips whose primary label is not listed are skipped.
    classes: list[str] | str | None = None

    def __post_init__(self) -> None:
        _check(bool(self.path), "data.path must name a dataset (or be 'demo')")
        _check(self.labels in LABEL_MODES, f"data.labels must be {' or '.join(LABEL_MODES)}, got {self.labels!r}")
        if isinstance(self.classes, list):
            names = [c.strip() for c in self.classes]
            _check(
                0 < len(names) <= MAX_CLASSES and all(names),
                f"data.classes must list 1 to {MAX_CLASSES} non-empty names (or name a file), got {self.classes!r}",
            )
            dupes = sorted({c for c in names if names.count(c) > 1})
            _check(not dupes, f"data.classes lists {(dupes or [''])[0]!r} more than once")
            self.classes = names
        elif self.classes is not None:
            _check(bool(self.classes.strip()), "data.classes must name a file or list class names, got ''")
        _check(
            self.format == "auto" or self.format in DATASET_FORMATS,
            f"data.format must be auto, {', '.join(DATASET_FORMATS)}, got {self.format!r}",
        )
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            _check(0.0 <= value < 1.0, f"data.{name} must be in [0, 1), got {value}")
        _check(self.val_fraction + self.test_fraction < 1.0, "data.val_fraction + data.test_fraction must be below 1")
        _check(
            0 <= self.num_workers <= MAX_WORKERS,
            f"data.num_workers must be in [0, {MAX_WORKERS}], got {self.num_workers}",
        )
        _check(
            self.max_clips_per_class is None or 0 < self.max_clips_per_class <= MAX_CLIPS_PER_CLASS,
            f"data.max_clips_per_class must be in [1, {MAX_CLIPS_PER_CLASS}], got {self.max_clips_per_class}",
        )
        _check(0 <= self.seed <= MAX_SEED, f"data.seed must be in [0, {MAX_SEED}], got {self.seed}")
        _check(
            self.test_group is None or self.group_column is not None,
            f"data.test_group={self.test_group!r} needs data.group_column (the column it is a value of)",
        )
        _check(
            self.test_group is None or self.test_fold is None,
            "data.test_group and data.test_fold cannot both be set: one of them picks the test set",
        )


@dataclass
class FeatureConfig:
    """Log-Mel front end and the shape of the model input."""

    frontend: str = "torchaudio"  # torchaudio (batched, any device) | kaldi (AST-compatible)
    sample_rate: int = 16000
    n_fft: int = 1024  # 512 leaves the lowest of 128 mel filters empty at 16 kHz
    win_length: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms at 16 kHz
    n_mels: int = 128
    f_min: float = 50.0
    f_max: float | None = None
    window: str = "hamming"
    clip_seconds: float = 3.0  # length of the training crop and of an inference window
    shape: str = "crop"  # crop: time cropped/padded to a multiple of 32 | resize224: the paper's 224x224
    norm_mean: float | None = None  # per-dataset statistics, filled in by training
    norm_std: float | None = None

    def __post_init__(self) -> None:
        _check(
            self.frontend in ("torchaudio", "kaldi"),
            f"features.frontend must be torchaudio or kaldi, got {self.frontend!r}",
        )
        _check(
            1000 <= self.sample_rate <= 384000,
            f"features.sample_rate must be between 1000 and 384000 Hz, got {self.sample_rate}",
        )
        _check(0 < self.n_fft <= MAX_N_FFT, f"features.n_fft must be in [1, {MAX_N_FFT}], got {self.n_fft}")
        _check(self.win_length > 0, f"features.win_length must be > 0, got {self.win_length}")
        _check(
            self.n_fft >= self.win_length,
            f"features.n_fft ({self.n_fft}) must be >= features.win_length ({self.win_length})",
        )
        _check(
            0 < self.hop_length <= self.win_length,
            f"features.hop_length must be in [1, features.win_length={self.win_length}], got {self.hop_length}",
        )
        _check(8 <= self.n_mels <= 512, f"features.n_mels must be in [8, 512], got {self.n_mels}")
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        _check(
            0.0 <= self.f_min < f_max <= nyquist,
            f"features need 0 <= f_min < f_max <= sample_rate/2 ({nyquist:g} Hz), "
            f"got f_min={self.f_min}, f_max={self.f_max}",
        )
        _check(
            self.window in ("hamming", "hann", "povey"),
            f"features.window must be hamming, hann or povey, got {self.window!r}",
        )
        _check(0.1 <= self.clip_seconds <= 60.0, f"features.clip_seconds must be in [0.1, 60], got {self.clip_seconds}")
        _check(self.shape in ("crop", "resize224"), f"features.shape must be crop or resize224, got {self.shape!r}")
        _check(
            self.norm_std is None or 1e-6 <= self.norm_std <= MAX_NORM,
            f"features.norm_std must be in [1e-06, {MAX_NORM:g}], got {self.norm_std}",
        )
        _check(
            self.norm_mean is None or abs(self.norm_mean) <= MAX_NORM,
            f"features.norm_mean must be in [-{MAX_NORM:g}, {MAX_NORM:g}], got {self.norm_mean}",
        )
        _check(
            self.frames >= 32,
            f"features.clip_seconds={self.clip_seconds} gives fewer than 32 "
            "frames: use a longer clip or a shorter hop_length",
        )
        _check(
            self.frames <= MAX_FRAMES,
            f"features.clip_seconds={self.clip_seconds} at "
            f"features.hop_length={self.hop_length} gives {self.frames} frames, more than {MAX_FRAMES}: "
            "use a shorter clip or a longer hop_length",
        )

    @property
    def frames(self) -> int:
        """Time frames of the model input: the crop rounded to the nearest multiple of 32."""
        if self.shape == "resize224":
            return 224
        raw = int(round(self.clip_seconds * self.sample_rate / self.hop_length)) + 1
        m = INPUT_MULTIPLE
        return max(m, m * int(round(raw / m)))

    @property
    def input_size(self) -> tuple[int, int]:
        """``(F, T)`` of the model input."""
        if self.shape == "resize224":
            return (224, 224)
        return (INPUT_MULTIPLE * math.ceil(self.n_mels / INPUT_MULTIPLE), self.frames)

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))


@dataclass
class AugmentConfig:
    """The paper's augmentations: mixup, masking, background noise; plus gain and time shift."""

    mixup: bool = True
    mixup_alpha: float = 0.4
    mixup_prob: float = 0.5
    time_masks: int = 2
    time_mask_width: int = 30  # frames
    freq_masks: int = 2
    freq_mask_width: int = 12  # mel bins
    noise_prob: float = 0.25
    noise_dir: str | None = None  # folder of background recordings; None = generated noise
    # a class of the dataset whose training clips are background recordings (e.g. Speech
    # Commands' _silence_): they become the noise bank, beside noise_dir's recordings if both are set
    noise_class: str | None = None
    snr_db_min: float = 5.0
    snr_db_max: float = 20.0
    gain_db: float = 6.0  # random gain in [-gain_db, +gain_db]
    time_shift: float = 0.2  # random circular shift, as a fraction of the clip
    clean_epochs: float = 0.0  # epochs of clean (unaugmented) clips before augmentation starts
    # with clean_until_fit, augmentation starts earlier: after the first epoch whose training loss
    # has reached its floor (the clean clips are fitted); clean_epochs is then the latest start
    clean_until_fit: bool = False
    # logmel: mix normalised log-Mel inputs | waveform: mix the waves before the front end
    # (between-class learning, Tokozume et al. 2018); targets are mixed with the same lambda
    mixup_domain: str = "logmel"

    def __post_init__(self) -> None:
        _check(
            self.mixup_domain in MIXUP_DOMAINS,
            f"augment.mixup_domain must be {' or '.join(MIXUP_DOMAINS)}, got {self.mixup_domain!r}",
        )
        _check(
            0 < self.mixup_alpha <= MAX_MIXUP_ALPHA,
            f"augment.mixup_alpha must be in (0, {MAX_MIXUP_ALPHA:g}], got {self.mixup_alpha}",
        )
        for name in ("mixup_prob", "noise_prob"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"augment.{name} must be in [0, 1], got {value}")
        for name, top in (
            ("time_masks", MAX_MASKS),
            ("time_mask_width", MAX_FRAMES),
            ("freq_masks", MAX_MASKS),
            ("freq_mask_width", 512),
        ):
            value = getattr(self, name)
            _check(0 <= value <= top, f"augment.{name} must be in [0, {top}], got {value}")
        for name in ("snr_db_min", "snr_db_max"):
            value = getattr(self, name)
            _check(
                -MAX_SNR_DB <= value <= MAX_SNR_DB,
                f"augment.{name} must be in [-{MAX_SNR_DB:g}, {MAX_SNR_DB:g}] dB, got {value}",
            )
        _check(
            self.snr_db_min <= self.snr_db_max,
            f"augment.snr_db_min ({self.snr_db_min}) must be <= snr_db_max ({self.snr_db_max})",
        )
        _check(0.0 <= self.gain_db <= 40.0, f"augment.gain_db must be in [0, 40], got {self.gain_db}")
        _check(0.0 <= self.time_shift <= 1.0, f"augment.time_shift must be in [0, 1], got {self.time_shift}")
        _check(
            0.0 <= self.clean_epochs <= MAX_EPOCHS,
            f"augment.clean_epochs must be in [0, {MAX_EPOCHS}], got {self.clean_epochs}",
        )


@dataclass
class ModelConfig:
    """Which registered model to build and how."""

    name: str = "asca_tiny"
    layout: str = "CCCT"
    drop_path: float | None = None  # None = the model's default
    stride_mode: str = "paper"  # paper: stride in the first 1x1 | depthwise: stride in the 3x3
    attn_window: int | None = None  # None = global attention; k = local k x k windows (in tokens)
    # The paper's "window division" (section 4.4.3): input cells per token side of the first
    # transformer stage (16 on a 224 input = a 14 x 14 grid); None = the stage's own stride
    attn_division: int | None = None
    downsample_pool: str = "avg"  # the Pool of CoAtNet's downsampling blocks (eqs. 4-5): avg | max
    transformer_norm: str = "layernorm"  # layernorm (CoAtNet) | batchnorm (in transformer blocks)
    se_act: str = "gelu"  # squeeze-excitation activation: gelu (CoAtNet) | silu (timm) | relu (SE paper)
    head_pool: str = "avg"  # avg (CoAtNet) | avgmax: mean over frequency, then mean + max over time (PANNs)
    # channels_last: the model's weights and inputs in NHWC memory format, which the CPU's oneDNN
    # convolutions prefer. Measured on 2 cores (benchmarks/profile_step.py --variants, asca_tiny,
    # batch 32, eager, median of 5 alternating steps): at 1 x 64 x 96 241 -> 198 ms (1.22x) fp32,
    # 184 -> 161 ms (1.14x) bf16; at 1 x 64 x 256 643 -> 536 ms (1.20x) fp32, 450 -> 424 ms (1.06x)
    # bf16. On by default.
    channels_last: bool = True
    # compile: the forward under torch.compile (inductor). Same measurement: 1.21x fp32, 1.14x bf16
    # at 1 x 64 x 96; 1.04x fp32 and 0.90x bf16 at 1 x 64 x 256, never ahead of channels_last, after
    # 28 s to 15 min of compilation on this CPU. Off by default.
    compile: bool = False

    def __post_init__(self) -> None:
        _check(self.layout in LAYOUTS, f"model.layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        _check(
            self.stride_mode in ("paper", "depthwise"),
            f"model.stride_mode must be paper or depthwise, got {self.stride_mode!r}",
        )
        _check(
            self.drop_path is None or 0.0 <= self.drop_path < 1.0,
            f"model.drop_path must be in [0, 1), got {self.drop_path}",
        )
        _check(
            self.attn_window is None or 1 <= self.attn_window <= MAX_ATTN_WINDOW,
            f"model.attn_window must be in [1, {MAX_ATTN_WINDOW}] (or null for global attention), "
            f"got {self.attn_window}",
        )
        _check(
            self.attn_division is None or MIN_ATTN_DIVISION <= self.attn_division <= MAX_ATTN_DIVISION,
            f"model.attn_division must be in [{MIN_ATTN_DIVISION}, {MAX_ATTN_DIVISION}] input cells "
            f"(or null for the stage's own stride), got {self.attn_division}",
        )
        _check(
            self.attn_division is None or "T" in self.layout,
            f"model.attn_division applies to transformer stages; model.layout={self.layout} has none",
        )
        _check(
            self.downsample_pool in ("avg", "max"),
            f"model.downsample_pool must be avg or max, got {self.downsample_pool!r}",
        )
        _check(
            self.transformer_norm in ("layernorm", "batchnorm"),
            f"model.transformer_norm must be layernorm or batchnorm, got {self.transformer_norm!r}",
        )
        _check(self.se_act in ("gelu", "silu", "relu"), f"model.se_act must be gelu, silu or relu, got {self.se_act!r}")
        _check(self.head_pool in ("avg", "avgmax"), f"model.head_pool must be avg or avgmax, got {self.head_pool!r}")


@dataclass
class TrainConfig:
    """Optimisation, schedule, precision and reproducibility."""

    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    loss: str = "bce"  # bce (multi-label; single-label as one-hot) | ce
    label_smoothing: float = 0.0
    grad_clip: float | None = 1.0
    ema: bool = False
    ema_decay: float = 0.999
    amp: str = "off"  # off | bf16 | fp16 (fp16 only on CUDA)
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    deterministic: bool = True
    patience: int | None = None  # stop after this many epochs without a better val_map
    # which weights the run keeps as its model (checkpoints/best): "best" = the epoch with the best
    # val_map, "last" = the weights at the end of the schedule
    select: str = "best"
    budget_seconds: float | None = None  # wall-clock budget: epochs re-planned, training ends in time

    def __post_init__(self) -> None:
        _check(1 <= self.epochs <= MAX_EPOCHS, f"train.epochs must be >= 1 and <= {MAX_EPOCHS}, got {self.epochs}")
        _check(
            1 <= self.batch_size <= MAX_BATCH_SIZE,
            f"train.batch_size must be in [1, {MAX_BATCH_SIZE}], got {self.batch_size}",
        )
        _check(0 < self.lr <= MAX_LR, f"train.lr must be > 0 and <= {MAX_LR:g}, got {self.lr}")
        _check(0 <= self.min_lr <= self.lr, f"train.min_lr must be in [0, train.lr], got {self.min_lr}")
        _check(
            0 <= self.weight_decay <= MAX_WEIGHT_DECAY,
            f"train.weight_decay must be in [0, {MAX_WEIGHT_DECAY:g}], got {self.weight_decay}",
        )
        _check(
            0 <= self.warmup_epochs <= MAX_EPOCHS,
            f"train.warmup_epochs must be in [0, {MAX_EPOCHS}], got {self.warmup_epochs}",
        )
        _check(self.loss in ("bce", "ce"), f"train.loss must be bce or ce, got {self.loss!r}")
        _check(
            0.0 <= self.label_smoothing < 1.0, f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}"
        )
        _check(
            self.grad_clip is None or 0 < self.grad_clip <= MAX_GRAD_CLIP,
            f"train.grad_clip must be in (0, {MAX_GRAD_CLIP:g}] (or null to disable), got {self.grad_clip}",
        )
        _check(0.0 < self.ema_decay < 1.0, f"train.ema_decay must be in (0, 1), got {self.ema_decay}")
        _check(self.select in ("best", "last"), f"train.select must be best or last, got {self.select!r}")
        _check(
            self.select == "best" or self.patience is None,
            "train.patience stops when val_map stops improving; it needs train.select=best",
        )
        _check(self.amp in ("off", "bf16", "fp16"), f"train.amp must be off, bf16 or fp16, got {self.amp!r}")
        _check(
            self.num_threads is None or 1 <= self.num_threads <= MAX_THREADS,
            f"train.num_threads must be in [1, {MAX_THREADS}], got {self.num_threads}",
        )
        _check(
            self.patience is None or 1 <= self.patience <= MAX_EPOCHS,
            f"train.patience must be in [1, {MAX_EPOCHS}], got {self.patience}",
        )
        _check(0 <= self.seed <= MAX_SEED, f"train.seed must be in [0, {MAX_SEED}], got {self.seed}")
        _check(
            self.budget_seconds is None or 30.0 <= self.budget_seconds <= 7 * 24 * 3600.0,
            f"train.budget_seconds must be between 30 and 604800 (7 days), got {self.budget_seconds}",
        )


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "features": FeatureConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "train": TrainConfig,
}


@dataclass
class Config:
    """The whole training configuration; saved as ``config.yaml`` in every run."""

    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Config:
        """Build a config from nested dicts; unknown sections or keys are errors."""
        raw = raw or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config section {unknown[0]!r}: sections are {', '.join(SECTIONS)}")
        parts = {}
        for section, klass in SECTIONS.items():
            values = raw.get(section) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"config section {section!r} must be a mapping, got {values!r}")
            parts[section] = _build_section(section, klass, values)
        return cls(**parts)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def replace(self, key: str, value: Any) -> Config:
        """Return a copy with one dotted key changed (``cfg.replace("train.lr", 3e-4)``)."""
        raw = self.to_dict()
        section, name = _split_key(key)
        raw[section][name] = value
        return Config.from_dict(raw)


def _split_key(key: str) -> tuple[str, str]:
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"config key {key!r} must look like section.key (e.g. train.lr)")
    section, name = parts
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section {section!r} in {key!r}: sections are {', '.join(SECTIONS)}")
    names = [f.name for f in fields(SECTIONS[section])]
    if name not in names:
        raise ConfigError(f"unknown config key {key!r}: {section} has {', '.join(names)}")
    return section, name


def _build_section(section: str, klass: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(klass)
    known = {f.name for f in fields(klass)}
    kwargs = {}
    for name, value in values.items():
        if name not in known:
            raise ConfigError(f"unknown config key '{section}.{name}': {section} has {', '.join(sorted(known))}")
        kwargs[name] = _coerce(f"{section}.{name}", value, hints[name])
    try:
        return klass(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # pragma: no cover - defensive
        raise ConfigError(f"invalid {section} config: {exc}") from exc


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type, converting only where it is lossless."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} must not be null")
    if any(typing.get_origin(a) is list for a in args):  # a list of names, or text (a file)
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{key} must be a list of names or the name of a file, got {value!r}")
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if base is int:
        # float.is_integer() is False for NaN and inf, which int() would turn into a traceback
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())
        ):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if base is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as text
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{key} must be finite, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be text, got {value!r}")
        return value
    return value  # pragma: no cover - every field has one of the types above


def _parse_override(item: str) -> tuple[str, str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, text = item.split("=", 1)
    section, name = _split_key(key.strip())
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    hint = typing.get_type_hints(SECTIONS[section])[name]
    args = typing.get_args(hint) or (hint,)
    wants_text = str in args
    wants_list = any(typing.get_origin(a) is list for a in args)
    if wants_list and isinstance(value, list):
        value = [str(v) for v in value]  # class names such as 0 or 1 stay names
    elif wants_text and value is not None and not isinstance(value, str):
        value = text.strip()  # "model.name=123" stays text
    return section, name, value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML preset (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        from .fileio import read_text

        path = Path(path)
        try:  # a folder, FIFO, device, binary or unreadable file: one line, never a hang
            text = read_text(path, ConfigError)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {path} is not valid YAML{where}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    return Config.from_dict(apply_overrides(raw, overrides))


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` items to a nested config dict (changed in place and returned)."""
    for item in overrides:
        section, name, value = _parse_override(item)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        raw[section][name] = value
    return raw
