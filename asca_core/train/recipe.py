"""Automatic training recipes: a whole :class:`~asca_core.config.Config` resolved from a dataset.

``asca train DATA --budget 15m`` needs no YAML. :func:`resolve_recipe` reads what the dataset
says about itself (headers only, nothing decoded) and turns it into a config, one reason per
choice::

    recipe = resolve_recipe("../shared/data/speech_commands/labels.csv", budget_seconds=900)
    print(recipe.describe())        # every choice with the reason behind it
    fit(recipe.config, run_dir)     # train.budget_seconds keeps the run inside the budget

What decides what:

- sample rates and clip durations → sample rate, hop, window, mel bands and the training crop;
- single- or multi-label → cross-entropy or binary cross-entropy;
- clips per class → augmentation strength, label smoothing and weight averaging;
- folds and group-like columns → the protocol (:func:`asca_core.data.splits.resolve_protocol`);
- a short throughput probe on this machine → batch size and the number of epochs that fit the
  budget, first-epoch decoding included.

``overrides`` (``section.key=value``) are applied last and win over every automatic choice.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, apply_overrides
from ..errors import ConfigError
from ..geometry import n_fft_for

STANDARD_RATES = (8000, 11025, 16000, 22050, 32000)
MAX_RATE = 32000  # beyond this the extra bandwidth rarely carries class information (PANNs use 32 kHz)
MAX_CROP_SECONDS = 5.0  # longer recordings are trained on random crops of this length (the paper's 5 s)
PROFILE_FILES = 400  # headers read to profile rates and durations
DEFAULT_BUDGET_SECONDS = 15 * 60
MIN_EPOCHS, MAX_EPOCHS = 3, 300
BF16_MIN_GAIN = 1.25  # bfloat16 autocast is chosen when the probe measures at least this speed-up
FINAL_TEST_SHARE = 0.04  # of the budget kept for the final test evaluation and writing the run


# ------------------------------------------------------------------------------ durations
def parse_duration(text: str | float | int) -> float:
    """``"15m"``, ``"90s"``, ``"1h30m"``, ``"2.5m"`` or a number of seconds → seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip().lower()
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s?)?", value)
        if not value or parts is None or not any(parts.groups()):
            raise ConfigError(f"budget {text!r} is not a duration: use e.g. 90s, 15m or 1h30m")
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = 3600 * h + 60 * m + s
    if not (30.0 <= seconds <= 7 * 24 * 3600) or not math.isfinite(seconds):
        raise ConfigError(f"budget must be between 30 s and 7 days, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


# ------------------------------------------------------------------------------ profile
@dataclass
class DatasetProfile:
    """What a recipe needs to know about a dataset, read without decoding audio."""

    path: str
    format: str
    clips: int
    classes: int
    clips_per_class: dict[str, int]
    multi_label: bool
    sample_rate: int  # the most common native rate
    rate_share: float  # share of profiled files at that rate
    duration_median: float
    duration_p90: float
    duration_max: float
    folds: list[int]
    official_split: bool
    protocol: Any  # asca_core.data.splits.Protocol
    profiled: int

    @property
    def median_per_class(self) -> float:
        return float(statistics.median(self.clips_per_class.values())) if self.clips_per_class else 0.0


def profile_dataset(path: str, format: str = "auto", max_files: int = PROFILE_FILES, seed: int = 0) -> DatasetProfile:
    """Index ``path`` and read the headers of up to ``max_files`` clips (evenly spread)."""
    import numpy as np

    from ..audio import audio_info
    from ..data import load_dataset, resolve_data_path
    from ..data.splits import resolve_protocol
    from ..errors import AudioError

    index = load_dataset(resolve_data_path(path), format)
    if not index.clips:
        from ..errors import DatasetError

        raise DatasetError(f"{path}: no usable clips")
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(index.clips), size=min(max_files, len(index.clips)), replace=False))
    rates: Counter[int] = Counter()
    durations: list[float] = []
    for i in picks:
        try:
            info = audio_info(index.clips[int(i)].path)
        except AudioError:
            continue  # unreadable files are filtered and reported when training starts
        rates[info.sample_rate] += 1
        durations.append(info.duration)
    if not durations:
        from ..errors import DatasetError

        raise DatasetError(f"{path}: none of the {len(picks)} clips looked at could be read")
    rate, count = rates.most_common(1)[0]
    durations.sort()
    return DatasetProfile(
        path=str(path),
        format=index.format,
        clips=len(index.clips),
        classes=len(index.classes),
        clips_per_class=index.label_counts(),
        multi_label=bool(index.multi_label),
        sample_rate=int(rate),
        rate_share=count / len(durations),
        duration_median=float(statistics.median(durations)),
        duration_p90=float(durations[min(len(durations) - 1, int(0.9 * len(durations)))]),
        duration_max=float(durations[-1]),
        folds=sorted({c.fold for c in index.clips if c.fold is not None}),
        official_split=any(c.split for c in index.clips),
        protocol=resolve_protocol(index),
        profiled=len(durations),
    )


# ------------------------------------------------------------------------------ recipe
@dataclass
class Choice:
    key: str
    value: Any
    reason: str


@dataclass
class Recipe:
    """A resolved config and the reasons behind it."""

    config: Config
    choices: list[Choice] = field(default_factory=list)
    profile: DatasetProfile | None = None
    budget_seconds: float | None = None
    probe: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """The recipe as printed by ``asca train DATA``: one line per choice."""
        lines = []
        if self.profile is not None:
            p = self.profile
            lines.append(
                f"dataset {p.path}: {p.clips:,} clips, {p.classes} classes "
                f"({'multi' if p.multi_label else 'single'}-label), {p.sample_rate} Hz, "
                f"clips {p.duration_median:.2f} s median / {p.duration_max:.2f} s max"
            )
        if self.budget_seconds:
            lines.append(f"budget {format_duration(self.budget_seconds)} (training ends within it)")
        lines.append("recipe:")
        width = max((len(f"{c.key} = {_show(c.value)}") for c in self.choices), default=0)
        for c in self.choices:
            lines.append(f"  {f'{c.key} = {_show(c.value)}':<{width}}   {c.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_seconds": self.budget_seconds,
            "probe": self.probe,
            "choices": [{"key": c.key, "value": c.value, "reason": c.reason} for c in self.choices],
        }


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "null" if value is None else str(value)


def _snap_rate(native: int) -> int:
    """The largest standard rate not above ``native`` (capped at MAX_RATE)."""
    limit = min(native, MAX_RATE)
    below = [r for r in STANDARD_RATES if r <= limit]
    return below[-1] if below else native


def _crop_seconds(p90: float) -> float:
    """Whole clips up to MAX_CROP_SECONDS (rounded up to a quarter second), crops beyond."""
    return min(MAX_CROP_SECONDS, max(1.0, math.ceil(p90 * 4 - 1e-6) / 4))


class _Builder:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.choices: list[Choice] = []

    def set(self, key: str, value: Any, reason: str) -> None:
        self.values[key] = value
        self.choices.append(Choice(key, value, reason))

    def config(self, overrides: Sequence[str]) -> Config:
        raw: dict[str, dict[str, Any]] = {}
        for key, value in self.values.items():
            section, name = key.split(".")
            raw.setdefault(section, {})[name] = value
        base = Config.from_dict(raw)
        return Config.from_dict(apply_overrides(raw, overrides)) if overrides else base


def resolve_recipe(
    data: str,
    budget_seconds: float | None = DEFAULT_BUDGET_SECONDS,
    overrides: Sequence[str] = (),
    *,
    probe: bool = True,
    echo: Callable[[str], None] | None = None,
    format: str = "auto",
) -> Recipe:
    """Resolve a training config for ``data`` that fits ``budget_seconds`` on this machine.

    ``probe=False`` skips the throughput probe (epochs then follow a per-clip cost estimate).
    """
    from ..data import resolve_data_path

    path = data if data == "demo" else str(resolve_data_path(data))
    profile = profile_dataset(path, format)
    b = _Builder()
    b.set("data.path", path, f"{profile.format} dataset")
    _protocol(b, profile)
    _front_end(b, profile)
    _loss(b, profile)
    _model(b, profile)
    _augmentation(b, profile)
    cfg = b.config(overrides)
    recipe = Recipe(cfg, b.choices, profile, budget_seconds)
    if budget_seconds:
        _fit_budget(recipe, b, overrides, probe=probe, echo=echo)
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        section, name = key.split(".")
        value = getattr(getattr(recipe.config, section), name)
        recipe.choices = [c for c in recipe.choices if c.key != key]
        recipe.choices.append(Choice(key, value, "set on the command line"))
    return recipe


def _protocol(b: _Builder, p: DatasetProfile) -> None:
    proto = p.protocol
    if proto.test_fold is not None:
        b.set(
            "data.test_fold",
            proto.test_fold,
            f"fold column ({len(p.folds)} folds): fold {proto.test_fold} is the "
            "test set, as in the dataset's own protocol",
        )
    if proto.group_column is not None:
        b.set(
            "data.group_column",
            proto.group_column,
            f"{proto.groups:,} groups in column '{proto.group_column}': each group stays on one side of every split",
        )
    b.set(
        "data.val_fraction",
        0.1 if p.clips >= 1000 else 0.15,
        "validation carved from the training pool, for model selection",
    )
    if proto.test_fold is None and not p.official_split:
        b.set("data.test_fraction", 0.15, "no split or fold column: a stratified 15% test set")


def _front_end(b: _Builder, p: DatasetProfile) -> None:
    rate = _snap_rate(p.sample_rate)
    why = f"recordings are {p.sample_rate} Hz ({p.rate_share:.0%} of {p.profiled} looked at)"
    if rate != p.sample_rate:
        why += f"; {rate} Hz keeps everything up to {rate / 2000:g} kHz"
    b.set("features.sample_rate", rate, why)
    crop = _crop_seconds(p.duration_p90)
    if p.duration_p90 <= MAX_CROP_SECONDS:
        b.set(
            "features.clip_seconds",
            crop,
            f"90% of clips last {p.duration_p90:.2f} s or less: whole clips, shorter ones centre-padded",
        )
    else:
        b.set(
            "features.clip_seconds",
            crop,
            f"clips run to {p.duration_max:.0f} s: random {crop:g} s crops in training, centre crops in evaluation",
        )
    hop_ms = 10 if crop <= 2.0 else 20
    hop = int(round(rate * hop_ms / 1000))
    win = int(round(rate * (25 if hop_ms == 10 else 40) / 1000))
    b.set(
        "features.hop_length",
        hop,
        f"{hop_ms} ms hop: {'fine time detail for short clips' if hop_ms == 10 else 'half the frames of a 10 ms hop for clips over 2 s'}",
    )
    b.set("features.win_length", win, f"{win * 1000 / rate:.0f} ms analysis window")
    b.set("features.n_fft", n_fft_for(win), "the next power of two above the window")
    b.set(
        "features.n_mels", 64, "64 mel bands: enough resolution for speech, birdsong and everyday sounds at a CPU cost"
    )
    b.set("features.f_min", 20.0, "from 20 Hz")
    b.set("features.f_max", float(rate // 2), "to the Nyquist frequency")


def _loss(b: _Builder, p: DatasetProfile) -> None:
    if p.multi_label:
        b.set("train.loss", "bce", "multi-label clips: one sigmoid per class")
    else:
        b.set(
            "train.loss", "ce", "one label per clip: softmax cross-entropy (learns several times faster than BCE here)"
        )
        b.set("train.label_smoothing", 0.1, "single-label: smoothing 0.1 against over-confidence on small data")


def _model(b: _Builder, p: DatasetProfile) -> None:
    b.set(
        "model.name",
        "asca_tiny",
        "3.1M-parameter C-C-C-T: the size that trains from scratch on thousands of clips on a CPU",
    )
    b.set("model.layout", "CCCT", "the paper's layout: convolution first, attention on the coarsest grid")
    b.set(
        "model.head_pool",
        "avgmax",
        "mean + max over time (PANNs): a sound filling part of a clip is not averaged "
        "away (on 5 s scenes 41% vs 28% after 4 epochs)",
    )


def _augmentation(b: _Builder, p: DatasetProfile) -> None:
    frames = Config.from_dict(
        {"features": {k.split(".")[1]: v for k, v in b.values.items() if k.startswith("features.")}}
    ).features.frames
    b.set("augment.time_masks", 2, "SpecAugment: two time masks")
    b.set("augment.time_mask_width", max(2, frames // 10), f"up to 10% of the {frames} frames each")
    b.set("augment.freq_masks", 2, "two frequency masks")
    b.set("augment.freq_mask_width", 8, "up to 8 of the 64 mel bands each")
    b.set(
        "augment.time_shift",
        0.1 if b.values["features.clip_seconds"] <= 2 else 0.2,
        "random circular shift: a sound's position carries no label",
    )
    b.set("augment.gain_db", 6.0, "random gain of up to 6 dB: recording levels vary")
    b.set("augment.noise_prob", 0.25, "background noise on a quarter of the clips (the paper's probability)")
    b.set("augment.snr_db_min", 10.0, "noise 10-30 dB below the signal")
    b.set("augment.snr_db_max", 30.0, "")
    b.choices.pop()  # one line for the SNR range is enough
    if p.multi_label:
        b.set("augment.mixup", True, "mixup on multi-label clips, as in the paper's BirdCLEF recipe")
        b.set("augment.mixup_prob", 0.5, "on half of each batch's examples")
        b.set("augment.mixup_alpha", 0.4, "lambda ~ Beta(0.4, 0.4): mostly one clip with some of another")
    else:
        b.set(
            "augment.mixup",
            False,
            "no mixup for single-label clips: within budgets of minutes it cost 4 points on "
            "the demo set and 2 on Speech Commands (benchmarks/bench_recipe.py)",
        )
    b.set("train.ema", True, "weights averaged over the last steps: steadier validation, better final model")
    b.set("train.weight_decay", 0.05, "AdamW decoupled weight decay")


def _fit_budget(
    recipe: Recipe, b: _Builder, overrides: Sequence[str], *, probe: bool, echo: Callable[[str], None] | None
) -> None:
    """Batch size and epochs that fit the budget, from a throughput probe on this machine."""
    p = recipe.profile
    assert p is not None
    budget = float(recipe.budget_seconds or 0)
    cfg = recipe.config
    train_clips = int(
        p.clips
        * (
            1.0
            - cfg.data.val_fraction
            - (cfg.data.test_fraction if cfg.data.test_fold is None and not p.official_split else 0.0)
        )
    )
    if cfg.data.test_fold is not None and p.folds:
        train_clips = int(p.clips * (1 - 1 / len(p.folds)) * (1 - cfg.data.val_fraction))
    train_clips = max(1, train_clips)
    batch = 32 if train_clips >= 1000 else 16
    b.set("train.batch_size", batch, f"{train_clips:,} training clips")
    cfg = cfg.replace("train.batch_size", batch) if not _overridden(overrides, "train.batch_size") else cfg
    if probe:
        if echo:
            echo("measuring training speed on this machine ...")
        speed = measure_throughput(cfg, p.classes)
    else:
        speed = estimate_throughput(cfg)
    recipe.probe = speed
    gain = speed["step_seconds"] / max(speed.get("bf16_step_seconds", speed["step_seconds"]), 1e-9)
    if gain >= BF16_MIN_GAIN and _trains_on_cpu(cfg) and not _overridden(overrides, "train.amp"):
        b.set(
            "train.amp",
            "bf16",
            f"bfloat16 autocast: a training step takes {speed['bf16_step_seconds'] * 1000:.0f} ms instead of "
            f"{speed['step_seconds'] * 1000:.0f} ms on this CPU ({gain:.2f}x), so more epochs fit the budget",
        )
        speed = {**speed, "step_seconds": speed["bf16_step_seconds"]}
    steps = math.ceil(train_clips / cfg.train.batch_size)
    eval_clips = p.clips - train_clips
    epoch_seconds = steps * speed["step_seconds"] + eval_clips * speed["eval_seconds_per_clip"]
    decode_seconds = p.clips * speed["decode_seconds_per_clip"]
    available = budget * (1.0 - FINAL_TEST_SHARE) - decode_seconds - speed.get("setup_seconds", 0.0)
    epochs = int(max(MIN_EPOCHS, min(MAX_EPOCHS, math.floor(available / max(epoch_seconds, 1e-3)))))
    b.set(
        "train.epochs",
        epochs,
        f"~{epoch_seconds:.0f} s per epoch measured here ({speed['step_seconds'] * 1000:.0f} ms "
        f"per step of {cfg.train.batch_size}), {decode_seconds:.0f} s to decode the clips once; re-planned after "
        "the first epoch",
    )
    b.set("train.budget_seconds", budget, "training stops in time for the final test, whatever the estimate")
    warmup = round(min(3.0, max(1.0, 0.05 * epochs)), 1)
    b.set("train.warmup_epochs", warmup, "linear warm-up, then cosine decay to the end of the budget")
    if not p.multi_label:
        b.set(
            "augment.clean_until_fit",
            True,
            "clean clips until the training loss reaches its floor, augmentation after: the model learns the "
            "sounds first, then masks and noise make it generalise (5 s scenes at 30 min: 89% test accuracy; "
            "77% with no augmentation, 18% at 15 min with augmentation after 2 clean epochs)",
        )
        b.set("augment.clean_epochs", float(MAX_EPOCHS), "no fixed start: the training loss decides")
    else:
        clean = round(min(epochs / 3, max(2.0, 0.15 * epochs)), 1)
        b.set(
            "augment.clean_epochs",
            clean,
            "clean clips first, augmentation after: with noise and masks from the "
            "first step, 5 s scenes stayed at chance for 11 epochs; clean, the model found the sounds in 2",
        )
    b.set(
        "train.select",
        "last",
        "the run keeps the weights at the end of the schedule (averaged, learning rate decayed): on 4 sets "
        "they tested as well as or better than the epoch with the best validation score, which a small "
        "validation split picks by noise (5 s scenes: 0.866 vs 0.817 test accuracy, 87 validation clips)",
    )
    b.set("train.lr", 2e-3, "AdamW from scratch")
    b.set("train.min_lr", 1e-5, "")
    b.choices.pop()
    recipe.config = b.config(overrides)
    recipe.choices = b.choices


def _trains_on_cpu(cfg: Config) -> bool:
    """The probe times the CPU: its bf16 verdict holds only for a run that trains there."""
    if cfg.train.device == "cpu":
        return True
    import torch

    return cfg.train.device == "auto" and not torch.cuda.is_available()


def _overridden(overrides: Sequence[str], key: str) -> bool:
    return any(item.split("=", 1)[0].strip() == key for item in overrides)


# ------------------------------------------------------------------------------ throughput
def estimate_throughput(cfg: Config) -> dict[str, float]:
    """A coarse, machine-independent guess of the costs :func:`measure_throughput` measures."""
    f, t = cfg.features.input_size
    per_clip = 2.5e-3 * (f * t) / (64 * 96)  # asca_tiny on 2 CPU cores at 64 x 96
    return {
        "step_seconds": per_clip * cfg.train.batch_size,
        "bf16_step_seconds": per_clip * cfg.train.batch_size,
        "eval_seconds_per_clip": per_clip / 3,
        "decode_seconds_per_clip": 2e-3 + cfg.features.clip_seconds * 1e-3,
        "setup_seconds": 10.0,
    }


def measure_throughput(cfg: Config, num_classes: int, steps: int = 4, compare_bf16: bool = True) -> dict[str, float]:
    """Time training steps, evaluation and decoding of this config on this machine.

    Random inputs of the model's shape go through the full step (features, augmentation, forward,
    backward, AdamW); decoding is timed on a few of the dataset's own files. With ``compare_bf16``
    (and ``train.amp`` off) the step is timed a second time under bfloat16 autocast
    (``bf16_step_seconds``): CPUs with native bf16 (AVX512-BF16, AMX) run it much faster, others slower.
    """
    import numpy as np
    import torch

    from ..audio import load_audio
    from ..augment import TrainAugment, step_generator
    from ..data import load_dataset, resolve_data_path
    from ..features import FeatureExtractor
    from ..utils import setup_torch
    from .amp import autocast
    from .checkpoint import model_from_config
    from .losses import loss_per_example
    from .optim import param_groups

    setup_torch(cfg.train.num_threads)
    started = time.perf_counter()
    feat_cfg = cfg.features
    if feat_cfg.norm_mean is None:
        from dataclasses import replace

        feat_cfg = replace(feat_cfg, norm_mean=0.0, norm_std=1.0)
    features = FeatureExtractor(feat_cfg).eval()
    model = model_from_config(cfg, num_classes)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr)
    augment = TrainAugment.from_config(cfg.augment, feat_cfg.sample_rate).train()
    batch = cfg.train.batch_size
    gen = torch.Generator().manual_seed(0)
    wave = torch.randn(batch, feat_cfg.clip_samples, generator=gen) * 0.1
    target = torch.nn.functional.one_hot(torch.arange(batch) % num_classes, num_classes).float()
    model.train()

    def time_steps(amp: str) -> float:
        times = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            with torch.no_grad():
                g = step_generator(0, i)
                spec, tgt = augment(wave, target, features, g)
            with autocast(torch.device("cpu"), amp):
                logits = model(spec)
            loss = loss_per_example(logits, tgt, cfg.train.loss).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - t0)
        return float(np.median(times[1:]))  # the first step allocates

    step_seconds = time_steps(cfg.train.amp)
    bf16_step_seconds = time_steps("bf16") if compare_bf16 and cfg.train.amp == "off" else step_seconds
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        model(features(wave))
        eval_per_clip = (time.perf_counter() - t0) / batch
    index = load_dataset(resolve_data_path(cfg.data.path), cfg.data.format)
    files = [c.path for c in index.clips[:: max(1, len(index.clips) // 8)]][:8]
    t0 = time.perf_counter()
    decoded = 0
    for path in files:
        try:
            load_audio(path, sample_rate=feat_cfg.sample_rate)
            decoded += 1
        except Exception:
            pass
    decode = (time.perf_counter() - t0) / max(1, decoded)
    return {
        "step_seconds": step_seconds * 1.1,
        "bf16_step_seconds": bf16_step_seconds * 1.1,
        "eval_seconds_per_clip": eval_per_clip,
        "decode_seconds_per_clip": decode,
        "setup_seconds": 5.0 + (time.perf_counter() - started) * 0.2,
    }


__all__ = [
    "DatasetProfile",
    "Recipe",
    "estimate_throughput",
    "format_duration",
    "measure_throughput",
    "parse_duration",
    "profile_dataset",
    "resolve_recipe",
]
