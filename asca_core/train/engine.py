"""The fit loop: data → augment → features → model, AdamW + cosine, AMP, EMA, DDP, resume.

One training step, all on the training device::

    wave, target  (B, S), (B, K)        ClipDataset crops, multi-hot targets
    wave          (B, S)                gain, time shift, background noise   (augment.wave)
    spec          (B, 1, F, T)          log-Mel, time fit, normalisation      (FeatureExtractor)
    spec          (B, 1, F, T)          time/frequency masks                  (augment.spec)
    spec, target                        mixup (mixup_domain=logmel; =waveform mixes the waves above)
    logits        (B, K)                model; BCE-with-logits or cross-entropy

Reproducibility: every random draw of a step comes from generators derived from
``(train.seed, epoch, batch, rank)`` (sampler order from ``(seed, epoch)``, crops from
``(data seed, epoch, clip)``), never from a generator's running state. So a run resumed from a
checkpoint, even one written mid-epoch after SIGTERM, replays exactly the stream it would have
seen, and on CPU ends with the same weights as an uninterrupted run.

Checkpoint order at the end of an epoch (a kill at any point leaves a consistent run):
metrics.jsonl row → eval/epoch_XXX.json → best.safetensors (if better) → last.safetensors →
last.state.safetensors (the resume commit point; its header holds the JSON state) →
last.state.json (a readable copy) → status.json.

The data bundle and wave cache live in :mod:`.data`, the resume state in :mod:`.resume`, offline
evaluation in :mod:`.evaluation`, losses in :mod:`.losses` and the optimiser pieces in :mod:`.optim`.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..augment import TrainAugment, step_generator
from ..config import Config
from ..errors import AscaError, CheckpointError, ConfigError
from ..scores import probabilities
from ..utils import resolve_device, seed_everything, setup_torch
from . import ddp, resume
from .amp import autocast
from .checkpoint import checkpoint_metadata, load_tensors, load_weights, model_from_config, save_model
from .data import _collate, _MemoryCache, make_cache, prepare_data
from .evaluation import evaluate, predict
from .losses import fit_threshold, loss_per_example
from .metrics import compute_metrics
from .optim import ModelEma, build_adamw, param_groups, set_adamw_implementation
from .runstore import (
    SLOT_ENV,
    RunLock,
    RunStore,
    TrainingSlot,
    atomic_write_json,
    json_safe,
    now_iso,
    process_start_time,
    sweep_temporaries,
    unusable_run_dir,
    wait_for_slot,
)
from .schedule import cosine_lr, set_lr
from .signals import StopFlag

NORM_STATS_CLIPS = 512  # training clips (centre crops, no augmentation) behind the norm statistics
STATUS_EVERY_SECONDS = 5.0
# warn_only determinism: ops without a deterministic kernel run anyway; say so once, not per step
warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")


# ------------------------------------------------------------------------------------ trainer
class Trainer:
    """State and steps of one training run; :func:`fit` is the entry point."""

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        resume: bool,
        progress: bool | None,
        echo: Callable[[str], None] | None,
        stop_after_epochs: int | None,
    ) -> None:
        self.env = ddp.env_from_torchrun()
        self.device = self._device(cfg)
        self.run = RunStore(run_dir)
        self.cfg = cfg
        self.resume = resume
        self.progress = progress
        self.echo = echo
        self.stop_after_epochs = stop_after_epochs
        self.stop = StopFlag()
        # counters (restored on resume)
        self.epoch = 0  # finished epochs
        self.batch = 0  # finished batches of the current, unfinished epoch
        self.step = 0  # optimizer steps
        # the epoch's loss sum stays on the device (no host sync per step): (3,) = sum, first step
        # whose loss was not finite (-1: none), that loss; read through the loss_sum property
        self._loss_stats: Tensor | None = None
        self._loss_start = 0.0
        self._shown_loss: float | None = None
        self.loss_sum = 0.0
        self.loss_count = 0
        self.best_val_map = -math.inf
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.started = time.monotonic()  # the budget counts from here (set-up and decoding included)
        self._planned_epochs = cfg.train.epochs
        self.seconds_before = 0.0  # wall time of earlier sessions of a resumed run
        self.epoch_seconds: list[float] = []
        self.skipped_clips: set[str] = set()
        self.eval_seconds = 0.0
        self._deterministic_before = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        )

    # ----------------------------------------------------------------- set-up
    def _device(self, cfg: Config) -> torch.device:
        device = resolve_device(cfg.train.device)
        if device.type == "cuda" and self.env.distributed:
            device = torch.device("cuda", self.env.local_rank)
        if cfg.train.amp == "fp16" and device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs a CUDA device; use bf16 or off on CPU")
        return device

    def log(self, message: str) -> None:
        if not self.env.is_main:
            return
        self.run.log(message)
        if self.echo is not None:
            self.echo(message)

    def setup(self) -> None:
        cfg = self.cfg
        threads = cfg.train.num_threads
        if threads is None and self.env.distributed and self.device.type == "cpu":
            threads = max(1, (os.cpu_count() or 1) // self.env.world_size)
        setup_torch(threads)
        if cfg.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        ddp.init_distributed(self.env, self.device)
        # every rank writes into rank 0's folder (its default name carries a timestamp)
        self.run = RunStore(ddp.broadcast_object(str(self.run.path)))

    def prepare_run_dir(self) -> None:
        """Create the run (or check it can be resumed) and settle the resolved config."""
        run = self.run
        problem = None
        if self.env.is_main:  # checked once: rank 0 is about to create the files it looks for
            if self.resume and not run.exists():
                problem = f"cannot resume: {run.path} holds no run (no config.yaml)"
            elif not self.resume and run.exists():
                problem = (
                    f"run directory {run.path} already holds a run: "
                    "pass --resume to continue it or choose another --run-dir"
                )
            elif not self.resume and run.path.exists():
                problem = unusable_run_dir(run.path)
            elif self.resume:
                problem = resume.resume_problem(run)
        problem = ddp.broadcast_object(problem)
        if problem:
            raise CheckpointError(problem)
        if self.env.is_main:
            run.path.mkdir(parents=True, exist_ok=True)
            run.checkpoints_dir.mkdir(exist_ok=True)
            sweep_temporaries(run.path)  # half-written files of a killed process, by their own names only
            if not self.resume:
                run.write_config(self.cfg)
                status = {"started": now_iso()}
            else:
                status = {"started": run.status().get("started", now_iso())}
            run.write_status(
                state="running",
                epoch=run.status().get("epoch", 0),
                epochs=self.cfg.train.epochs,
                steps=run.status().get("steps", 0),
                best_epoch=run.status().get("best_epoch"),
                best_val_map=run.status().get("best_val_map"),
                pid=os.getpid(),
                pid_start=process_start_time(os.getpid()),
                world_size=self.env.world_size,
                device=str(self.device),
                **status,
            )
        ddp.barrier()

    def build(self) -> None:
        cfg = self.cfg
        self.data = prepare_data(cfg)
        d = self.data
        if self.env.is_main:
            if self.resume and self.run.labels_path.is_file() and self.run.labels() != d.labels:
                raise CheckpointError(f"cannot resume {self.run.path}: the dataset's classes changed")
            atomic_write_json(self.run.labels_path, d.labels)
        sizes = {k: len(v) for k, v in d.splits.items()}
        self.log(
            f"data {cfg.data.path}: {len(d.index.clips)} clips, {len(d.labels)} classes "
            f"({'multi' if d.multi_label else 'single'}-label), splits {sizes}"
            + (f", {len(d.skipped)} skipped" if d.skipped else "")
        )
        self._warn_about_protocol()
        self.val_split = "val" if d.splits["val"] else ("test" if d.splits["test"] else "")
        if not d.splits["val"]:
            self.log(f"no validation clips: {'selecting on the test split' if self.val_split else 'no selection'}")
        self.cache = make_cache(cfg)
        self.features_cfg_ready()
        self._build_model()
        self._build_loaders()

    def _skipped(self, file: str, reason: str) -> None:
        """A clip that failed when read during training: named once in the log, counted in status."""
        if file in self.skipped_clips:
            return
        self.skipped_clips.add(file)
        self.log(f"skipped {file}: {reason} ({len(self.skipped_clips)} clip(s) skipped so far)")

    def _warn_about_protocol(self) -> None:
        from ..data.splits import resolve_protocol

        cfg = self.cfg.data
        auto = resolve_protocol(self.data.index)
        if cfg.group_column is None and auto.group_column is not None:
            self.log(
                f"warning: column '{auto.group_column}' groups the clips ({auto.groups} groups) but this "
                f"split ignores it: set data.group_column={auto.group_column} to keep groups apart"
            )
        if (
            cfg.test_fold is None
            and cfg.test_group is None
            and auto.test_fold is not None
            and not any(c.split for c in self.data.index.clips)
        ):
            self.log(
                f"warning: the dataset has a fold column but data.test_fold is not set: "
                f"data.test_fold={auto.test_fold} follows its protocol"
            )
        for line in auto.warnings:
            self.log(f"note: {line}")

    def features_cfg_ready(self) -> None:
        """Normalisation statistics from training clips (no augmentation), once per run."""
        cfg = self.cfg
        if cfg.features.norm_mean is None or cfg.features.norm_std is None:
            stats = None
            if self.env.is_main:
                stats = self._norm_stats()
            mean, std = ddp.broadcast_object(stats)
            cfg = replace(cfg, features=replace(cfg.features, norm_mean=mean, norm_std=std))
            self.cfg = cfg
            if self.env.is_main:
                self.run.write_config(cfg)
            self.log(f"normalisation statistics: mean {mean:.4f}, std {std:.4f}")
        from ..features import FeatureExtractor

        self.features = FeatureExtractor(cfg.features).to(self.device).eval()

    def _norm_stats(self) -> tuple[float, float]:
        from ..data import ClipDataset
        from ..features import FeatureExtractor, compute_norm_stats

        cfg = self.cfg
        train = self.data.splits["train"]
        rng = np.random.default_rng(cfg.data.seed)
        pick = sorted(rng.choice(len(train), size=min(len(train), NORM_STATS_CLIPS), replace=False))
        dataset = ClipDataset(
            self.data.index, [train[i] for i in pick], cfg.features, self.cache, train=False, on_skip=self._skipped
        )
        raw = FeatureExtractor(replace(cfg.features, norm_mean=None, norm_std=None)).to(self.device)
        loader = DataLoader(dataset, batch_size=32, shuffle=False, collate_fn=_collate)

        def specs():
            with torch.no_grad():
                for wave, _ in loader:
                    yield raw(wave.to(self.device)).float().cpu()

        mean, std = compute_norm_stats(specs())
        return float(mean), float(std)

    def _noise_class_files(self) -> list[Path]:
        """The training clips of ``augment.noise_class`` (whole files only): the real noise bank."""
        name = self.cfg.augment.noise_class
        if not name or self.cfg.augment.noise_prob <= 0:
            return []
        if name not in self.data.labels:
            raise ConfigError(
                f"augment.noise_class={name!r} is not a class of {self.cfg.data.path} "
                f"(classes: {', '.join(self.data.labels)})"
            )
        clips = self.data.index.clips
        files = [clips[i].path for i in self.data.splits["train"] if name in clips[i].labels and clips[i].start is None]
        if not files:
            raise ConfigError(f"augment.noise_class={name!r}: the training split holds no clips of that class")
        self.log(f"background noise: {len(files)} training clips of class {name!r}")
        return files

    def _build_model(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.train.seed)
        model = model_from_config(cfg, len(self.data.labels)).to(self.device)
        if cfg.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model  # the plain module: weights are saved from here
        # fused AdamW on CUDA, multi-tensor (foreach) on the CPU: see optim.build_adamw
        self.optimizer = build_adamw(model, cfg.train.lr, cfg.train.weight_decay, device=self.device)
        self.ema = ModelEma(model, cfg.train.ema_decay) if cfg.train.ema else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp == "fp16")
        forward: nn.Module = model
        if self.env.distributed:
            forward = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if cfg.model.compile:
            forward = cast(nn.Module, torch.compile(forward))  # an OptimizedModule, typed as a callable
        self.forward_model = forward
        self.augment = TrainAugment.from_config(
            cfg.augment, cfg.features.sample_rate, noise_files=self._noise_class_files()
        ).to(self.device)
        from ..models import count_params

        self.n_params = count_params(model)
        self.log(
            f"model {cfg.model.name} layout {cfg.model.layout}: {self.n_params / 1e6:.2f}M parameters, "
            f"input {tuple(cfg.features.input_size)}, device {self.device}, "
            f"{self.env.world_size} process(es), amp {cfg.train.amp}"
        )

    def _build_loaders(self) -> None:
        from ..data import ClipDataset, class_weights_for_sampling

        cfg, d = self.cfg, self.data
        train = d.splits["train"]
        self.train_set = ClipDataset(
            d.index, train, cfg.features, self.cache, train=True, seed=cfg.data.seed, on_skip=self._skipped
        )
        weights = class_weights_for_sampling(d.index, train) if cfg.data.balanced_sampling else None
        self.sampler = ddp.EpochSampler(
            len(train),
            shuffle=True,
            weights=weights,
            seed=cfg.train.seed,
            rank=self.env.rank,
            world_size=self.env.world_size,
            tag_epoch=cfg.data.num_workers > 0,
        )
        self._train_loader: DataLoader | None = None
        self.steps_per_epoch = math.ceil(self.sampler.per_rank / cfg.train.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.warmup_steps = int(round(cfg.train.warmup_epochs * self.steps_per_epoch))
        self.clean_steps = int(round(cfg.augment.clean_epochs * self.steps_per_epoch))
        self.fit_loss: float | None = None  # with augment.clean_until_fit: the loss that ends clean training
        if cfg.augment.clean_until_fit:
            counts = d.index.label_counts(train)
            shares = [counts.get(label, 0) / max(1, len(train)) for label in d.labels]
            self.fit_loss = fit_threshold(shares, cfg.train.loss, cfg.train.label_smoothing)

    def _loader(self, dataset: Any, sampler: Any = None, persistent: bool = False) -> DataLoader:
        cfg = self.cfg
        workers = cfg.data.num_workers
        return DataLoader(
            dataset,
            batch_size=cfg.train.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=persistent and workers > 0,
            prefetch_factor=4 if persistent and workers > 0 else None,
        )

    def _training_loader(self) -> DataLoader:
        """The training loader, built once: its workers (``data.num_workers`` > 0) live across
        epochs with their decoded-audio caches and read each epoch from the sampler's
        ``(epoch, index)`` pairs."""
        if self._train_loader is None:
            self._train_loader = self._loader(self.train_set, self.sampler, persistent=True)
        return self._train_loader

    def close_loader(self) -> None:
        """Let the training loader go: its worker processes (alive across epochs, not runs) shut
        down with its last reference."""
        self._train_loader = None

    # ----------------------------------------------------------------- resume state
    def save_last(self) -> None:
        """last.safetensors (the evaluated weights) and the resume state; rank 0 only."""
        _ = self.loss_sum  # a non-finite loss since the last read fails here, before weights are written
        resume.save_last(self)

    def load_last(self) -> bool:
        """Restore weights, optimizer and counters from the last checkpoint (False if none)."""
        loaded = resume.load_last(self)
        if loaded:  # the saved groups carry the kernel flags of the machine that wrote them
            set_adamw_implementation(self.optimizer, self.device)
            self._match_state_layout()
        return loaded

    def _match_state_layout(self) -> None:
        """Give restored optimizer moments their parameter's memory layout (channels_last weights
        were saved contiguous); multi-tensor and fused kernels then see one layout per parameter."""
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                state = self.optimizer.state.get(param, {})
                for key, value in state.items():
                    if isinstance(value, Tensor) and value.shape == param.shape and value.stride() != param.stride():
                        state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)

    # ----------------------------------------------------------------- loss on the device
    @property
    def loss_sum(self) -> float:
        """Sum of this epoch's per-example training losses, read back from the device.

        A host sync: the loop reads it once per status interval and at the end of an epoch, never
        per step. Raises :class:`AscaError` when a step's loss was not finite since the epoch began.
        """
        if self._loss_stats is None:
            return self._loss_start
        total, bad_step, bad_loss = self._loss_stats.tolist()
        if bad_step >= 0:
            raise AscaError(
                f"training loss became {bad_loss} at epoch {self.epoch + 1}, step {int(bad_step)}; "
                "lower train.lr or check the data"
            )
        return float(total)

    @loss_sum.setter
    def loss_sum(self, value: float) -> None:
        self._loss_start = float(value)
        self._loss_stats = None

    def _add_loss(self, loss: Tensor, count: int) -> None:
        """Accumulate a step's mean loss on the device and remember the first non-finite one."""
        if self._loss_stats is None:
            dtype = torch.float32 if self.device.type == "mps" else torch.float64
            self._loss_stats = torch.tensor([self._loss_start, -1.0, 0.0], dtype=dtype, device=self.device)
        stats = self._loss_stats
        value = loss.detach().to(stats.dtype)
        stats[0].add_(value * count)
        first = torch.logical_not(torch.isfinite(value)) & (stats[1] < 0)
        seen = torch.stack((torch.full_like(value, float(self.step)), value))
        stats[1:].copy_(torch.where(first, seen, stats[1:]))

    # ----------------------------------------------------------------- steps
    def eval_module(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def train_epoch(self, epoch: int) -> bool:
        """Run (the rest of) ``epoch`` (1-based). False when a stop was requested mid-epoch."""
        cfg = self.cfg
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch, skip=self.batch * cfg.train.batch_size)
        loader = self._training_loader()
        self.forward_model.train()
        self.augment.train()
        bar = self._bar(epoch, initial=self.batch)
        last_status = time.monotonic()
        try:
            for wave, target in loader:
                self._train_step(epoch, wave, target)
                self.batch += 1
                if time.monotonic() - last_status > STATUS_EVERY_SECONDS:
                    # the interval's one host sync: the loss so far (raises if one was not finite)
                    self._shown_loss = self.loss_sum / max(1, self.loss_count)
                    if self.env.is_main:
                        self.run.write_status(
                            epoch=self.epoch, steps=self.step, batch=self.batch, batches=self.steps_per_epoch
                        )
                    last_status = time.monotonic()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss="?" if self._shown_loss is None else f"{self._shown_loss:.4f}",
                        lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                        run_left=self._time_left(),
                        refresh=False,
                    )
                if ddp.any_rank(self.stop.requested, self.device) and self.batch < self.steps_per_epoch:
                    self.stop.requested = True
                    return False
        finally:
            if bar is not None:
                bar.close()
        return True

    def _train_step(self, epoch: int, wave: Tensor, target: Tensor) -> None:
        cfg = self.cfg
        keys = (cfg.train.seed, epoch, self.batch, self.env.rank)
        gen = step_generator(*keys)
        torch.manual_seed(step_generator(*keys, 1).initial_seed())  # drop-path / dropout draws
        wave = wave.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        # the first augment.clean_epochs see clean clips: the model finds the sounds before it must
        # see through noise and masks (on 5 s scenes, full augmentation from step 0 held it at chance)
        self.augment.train(self.step >= self.clean_steps)
        with torch.no_grad():
            # wave augment, waveform mixup, front end, masks, log-Mel mixup (see TrainAugment)
            spec, target = self.augment(wave, target, self.features, gen)
        if cfg.model.channels_last:
            spec = spec.contiguous(memory_format=torch.channels_last)
        lr = cosine_lr(self.step, self.total_steps, self.warmup_steps, cfg.train.lr, cfg.train.min_lr)
        set_lr(self.optimizer, lr)
        with autocast(self.device, cfg.train.amp):
            logits = self.forward_model(spec)
        loss = loss_per_example(logits, target, cfg.train.loss, cfg.train.label_smoothing).mean()
        # no host sync here: the sum and a non-finite loss are read once per status interval
        self._add_loss(loss, wave.shape[0])
        self.loss_count += wave.shape[0]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, self.step)

    def _time_left(self) -> str:
        done = self.step - self._session_first_step
        if done <= 0:
            return "?"
        per_step = (time.monotonic() - self._session_started) / done
        # an estimate from this session's pace (validation included), as h:mm:ss
        seconds = int(per_step * (self.total_steps - self.step))
        if self.cfg.train.budget_seconds:
            seconds = min(seconds, int(max(0.0, self.cfg.train.budget_seconds - self.elapsed())))
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"

    def _bar(self, epoch: int, initial: int):
        if not self.env.is_main or self.progress is False:
            return None
        if self.progress is None and not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.steps_per_epoch,
            initial=initial,
            desc=f"epoch {epoch}/{self.cfg.train.epochs}",
            file=sys.stderr,
            leave=True,
            dynamic_ncols=True,
            unit="step",
        )

    @torch.no_grad()
    def evaluate_split(self, split: str) -> tuple[dict[str, Any], float]:
        """Metrics and mean loss of the evaluated weights on ``split`` (sharded across ranks)."""
        from ..data import ClipDataset

        module = self.eval_module()
        ddp.broadcast_buffers(module)
        module.eval()
        items = self.data.splits[split]
        mine = ddp.shard(list(range(len(items))), self.env)
        dataset = ClipDataset(
            self.data.index, [items[i] for i in mine], self.cfg.features, self.cache, on_skip=self._skipped, train=False
        )
        probs, targets, losses = predict(
            module, self.features, self._loader(dataset), self.device, self.cfg.train.amp, self.cfg.train.loss
        )
        parts = ddp.all_gather_objects((mine, probs, targets, losses))
        order = np.concatenate([p[0] for p in parts]).astype(int)
        inverse = np.argsort(order)
        probs = np.concatenate([p[1] for p in parts])[inverse]
        targets = np.concatenate([p[2] for p in parts])[inverse]
        losses = np.concatenate([p[3] for p in parts])[inverse]
        metrics = compute_metrics(probs, targets, self.data.multi_label)
        return metrics, float(losses.mean()) if losses.size else float("nan")

    # ----------------------------------------------------------------- epoch end
    def end_epoch(self, epoch: int, seconds: float) -> dict[str, Any]:
        totals = torch.tensor([self.loss_sum, float(self.loss_count)], dtype=torch.float64)
        if ddp.active():
            torch.distributed.all_reduce(totals)
        train_loss = float(totals[0] / max(1.0, float(totals[1])))
        self._start_augmentation_once_fitted(epoch, train_loss)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
        details: dict[str, Any] = {}
        if self.val_split:
            eval_started = time.monotonic()
            metrics, val_loss = self.evaluate_split(self.val_split)
            self.eval_seconds = time.monotonic() - eval_started
            row.update(
                val_loss=val_loss,
                val_acc=metrics["acc"],
                val_map=metrics["map"],
                val_auc=metrics["auc"],
                val_cmap=metrics["cmap"],
            )
            details = {"epoch": epoch, "split": self.val_split, "labels": self.data.labels, **metrics}
        else:
            row.update(val_loss=None, val_acc=None, val_map=None)
        row.update(lr=self.optimizer.param_groups[0]["lr"], seconds=round(seconds, 3), steps=self.step)
        self.epoch, self.batch = epoch, 0
        self.loss_sum, self.loss_count = 0.0, 0
        self._shown_loss = None
        improved = self._is_better(row)
        if improved:
            self.best_epoch = epoch
            self.best_val_map = row["val_map"] if row["val_map"] is not None else -math.inf
            self.best_val_loss = row["val_loss"] if row["val_loss"] is not None else train_loss
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if self.env.is_main:
            self.run.append_metrics(row)
            if details:
                self.run.write_eval(details, epoch=epoch)
            if improved:
                save_model(
                    self.run.checkpoint_path("best"),
                    self.eval_module(),
                    checkpoint_metadata(self.cfg, self.data.labels, epoch, step=self.step, val_map=row.get("val_map")),
                )
            self.save_last()
            self.run.write_status(
                epoch=epoch,
                steps=self.step,
                best_epoch=self.best_epoch,
                best_val_map=self.best_val_map if math.isfinite(self.best_val_map) else None,
                batch=0,
                batches=self.steps_per_epoch,
                epochs=self.cfg.train.epochs,
                train_seconds=round(self.elapsed(), 1),
                skipped_clips=len(self.skipped_clips),
            )
        left = ""
        if self.cfg.train.budget_seconds:
            left = f"  budget left {_clock(max(0.0, self.cfg.train.budget_seconds - self.elapsed()))}"
        self.log(_format_row(row, self.cfg.train.epochs) + left + ("  *best" if improved else ""))
        return row

    def _start_augmentation_once_fitted(self, epoch: int, train_loss: float) -> None:
        """With ``augment.clean_until_fit``, augmentation starts after the first clean epoch whose
        training loss has (nearly) reached its floor: the model has learnt what the clean clips can
        teach, and from then on masks and noise make it generalise instead of memorise."""
        if self.fit_loss is None or self.step >= self.clean_steps or epoch >= self.cfg.train.epochs:
            return
        if train_loss <= self.fit_loss:
            self.clean_steps = self.step
            self.log(
                f"training loss {train_loss:.3f} is at its floor (<= {self.fit_loss:.3f}): the training clips are "
                f"fitted, augmentation from epoch {epoch + 1}"
            )

    def _is_better(self, row: dict[str, Any]) -> bool:
        if self.cfg.train.select == "last":  # the run's model is the end of the schedule
            return True
        val_map, val_loss = row.get("val_map"), row.get("val_loss")
        if val_map is None or not math.isfinite(val_map):  # no validation: judge on loss
            loss = val_loss if val_loss is not None else row["train_loss"]
            return loss < self.best_val_loss
        if val_map > self.best_val_map + 1e-9:
            return True
        return abs(val_map - self.best_val_map) <= 1e-9 and val_loss is not None and val_loss < self.best_val_loss

    # ----------------------------------------------------------------- main loop
    def run_loop(self) -> dict[str, Any]:
        cfg = self.cfg
        resumed = self.resume and self.load_last()
        if self.env.is_main:
            self.run.truncate_metrics(self.epoch)
        if resumed:
            where = f"in epoch {self.epoch + 1} after batch {self.batch}" if self.batch else f"after epoch {self.epoch}"
            self.log(f"resumed {where} (step {self.step})")
        augmentation = ""
        if self.fit_loss is not None and self.step < self.clean_steps:
            augmentation = f", clean clips until the training loss reaches {self.fit_loss:.3f}, augmentation after"
        elif self.clean_steps >= cfg.train.epochs * self.steps_per_epoch:
            augmentation = ", no augmentation"
        elif self.clean_steps:
            augmentation = f", augmentation from step {self.clean_steps}"
        self.log(
            f"training {cfg.train.epochs} epochs x {self.steps_per_epoch} steps, batch "
            f"{cfg.train.batch_size} per process, lr {cfg.train.lr:g}, warm-up {self.warmup_steps} steps" + augmentation
        )
        epochs_this_call = 0
        start_epoch = self.epoch + 1
        self._session_started, self._session_first_step = time.monotonic(), self.step
        if resumed:
            self.seconds_before = float(self.run.status().get("train_seconds") or 0.0)
        epoch = start_epoch - 1
        while epoch < self.cfg.train.epochs:
            epoch += 1
            started = time.monotonic()
            finished = self.train_epoch(epoch)
            if not finished:
                self.save_last()
                self.log(
                    f"stopped by {self.stop.signal_name or 'request'} at epoch {epoch}, batch {self.batch}; "
                    "checkpoint written"
                )
                return self._finish("stopped")
            self.end_epoch(epoch, time.monotonic() - started)
            self.epoch_seconds.append(time.monotonic() - started)
            epochs_this_call += 1
            if cfg.train.budget_seconds and epoch < self.cfg.train.epochs:
                # rank 0's clock decides for every rank, so all of them stop after the same epoch
                planned, stop = ddp.broadcast_object(
                    self._budget_plan(epoch, epochs_this_call) if self.env.is_main else None
                )
                if planned != self.cfg.train.epochs:
                    self._set_epochs(planned)
                if stop:
                    break
            cfg = self.cfg  # the budget may have re-planned the number of epochs
            if cfg.train.patience and self.bad_epochs >= cfg.train.patience:
                self.log(f"early stop: no better val_map for {self.bad_epochs} epochs")
                break
            if ddp.any_rank(self.stop.requested, self.device):
                self.log(f"stopped by {self.stop.signal_name or 'request'} after epoch {epoch}; checkpoint written")
                return self._finish("stopped")
            if (
                self.stop_after_epochs is not None
                and epochs_this_call >= self.stop_after_epochs
                and epoch < cfg.train.epochs
            ):
                self.log(f"paused after epoch {epoch} as requested; resume with --resume")
                return self._finish("stopped")
        return self._finish("finished")

    # ----------------------------------------------------------------- budget
    def elapsed(self) -> float:
        """Wall seconds this run has trained, earlier sessions of a resumed run included."""
        return self.seconds_before + time.monotonic() - self.started

    def _final_test_seconds(self) -> float:
        d = self.data.splits
        n_val = max(1, len(d["val"]) if self.val_split == "val" else len(d["test"]))
        return 5.0 + self.eval_seconds * (len(d["test"]) / n_val)

    def _budget_plan(self, epoch: int, epochs_this_call: int) -> tuple[int, bool]:
        """Re-plan the epochs from the measured pace; stop when the next one would overrun.

        The first epoch also decodes every clip, so later epochs refine the plan; the pace is the
        median of the last three epochs, so one slow epoch (another process on the machine) does
        not swing it. Changing ``train.epochs`` stretches or shortens the cosine schedule, which
        then still ends at ``min_lr`` when the budget does; the plan is saved in the run's config
        so a resume follows it. Returns ``(epochs, stop now)``.
        """
        budget = float(self.cfg.train.budget_seconds or 0.0)
        recent = self.epoch_seconds[1:] if len(self.epoch_seconds) > 1 else self.epoch_seconds
        per_epoch = float(np.median(recent[-3:]))
        left = budget - self.elapsed() - self._final_test_seconds()
        epochs = self.cfg.train.epochs
        planned = int(min(self._planned_epochs * 4, max(epoch, epoch + math.floor(left / per_epoch))))
        # early epochs set the plan; later ones shorten it when needed, lengthen it only by 2 or more
        if (planned < epochs or epochs_this_call <= 2 or planned - epochs >= 2) and planned != epochs:
            self.log(
                f"budget: {per_epoch:.1f} s per epoch, {_clock(max(0.0, left))} left: "
                f"{planned} epochs instead of {epochs}"
            )
            epochs = planned
        if epoch >= epochs:
            return epochs, True
        if per_epoch > left:
            self.log(f"budget: stopping after epoch {epoch} (the next epoch would end past the budget)")
            return epochs, True
        return epochs, False

    def _set_epochs(self, epochs: int) -> None:
        self.cfg = self.cfg.replace("train.epochs", int(epochs))
        self.total_steps = self.steps_per_epoch * self.cfg.train.epochs
        if self.env.is_main:
            self.run.write_config(self.cfg)
            self.run.write_status(epochs=self.cfg.train.epochs)

    def _trend(self) -> str | None:
        """Whether the validation curve was still rising at the end (more time would help)."""
        rows = [r for r in (self.run.metrics() if self.env.is_main else []) if r.get("val_acc") is not None]
        if len(rows) < 6:
            return None
        key = "val_map" if self.data.multi_label else "val_acc"
        values = [float(r.get(key) or 0.0) for r in rows]
        k = max(2, len(values) // 5)
        last, before = float(np.mean(values[-k:])), float(np.mean(values[-2 * k : -k]))
        if last - before > 0.005:
            return (
                f"validation {key} still rising at the end ({before:.3f} -> {last:.3f} over the last "
                f"{2 * k} epochs): a longer budget would likely help"
            )
        return f"validation {key} had levelled off ({before:.3f} -> {last:.3f}): more time is unlikely to help much"

    def _finish(self, state: str) -> dict[str, Any]:
        result: dict[str, Any] = {
            "state": state,
            "run_dir": str(self.run.path),
            "epoch": self.epoch,
            "steps": self.step,
            "best_epoch": self.best_epoch,
            "best_val_map": self.best_val_map if math.isfinite(self.best_val_map) else None,
        }
        rows = self.run.metrics() if self.env.is_main else []
        if rows:
            result["last"] = rows[-1]
        has_best = ddp.broadcast_object(self.run.has_checkpoint("best") if self.env.is_main else None)
        if state == "finished" and self.data.splits["test"] and has_best:
            result["test"] = self._final_test()
        trend = self._trend() if state == "finished" else None
        if trend:
            result["trend"] = trend
            self.log(trend)
        result["seconds"] = round(self.elapsed(), 1)
        if self.env.is_main:
            self.run.write_status(
                state=state,
                epoch=self.epoch,
                steps=self.step,
                best_epoch=self.best_epoch,
                best_val_map=result["best_val_map"],
                train_seconds=result["seconds"],
                skipped_clips=len(self.skipped_clips),
                **({"test_acc": result["test"]["acc"], "test_map": result["test"]["map"]} if "test" in result else {}),
            )
        ddp.barrier()
        return json_safe(result)

    def _final_test(self) -> dict[str, Any]:
        """Evaluate the best checkpoint on the test split and write RUN/eval.json."""
        ddp.barrier()
        state, _ = load_tensors(self.run.checkpoint_path("best"), device="cpu")
        load_weights(self.eval_module(), state, "best.safetensors")
        metrics, loss = self.evaluate_split("test")
        summary = {
            "split": "test",
            "checkpoint": "best",
            "epoch": self.best_epoch,
            "loss": loss,
            "labels": self.data.labels,
            **metrics,
        }
        if self.env.is_main:
            self.run.write_eval(summary)
            self.log(
                f"test (best epoch {self.best_epoch}): acc {_fmt(metrics['acc'])}  mAP {_fmt(metrics['map'])}  "
                f"AUC {_fmt(metrics['auc'])}  cmAP {_fmt(metrics['cmap'])}"
            )
        return {k: summary[k] for k in ("acc", "map", "auc", "cmap", "loss", "n")}


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4f}"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _format_row(row: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}  train_loss {_fmt(row['train_loss'])}  val_loss {_fmt(row.get('val_loss'))}"
        f"  val_acc {_fmt(row.get('val_acc'))}  val_map {_fmt(row.get('val_map'))}  lr {row['lr']:.2e}"
        f"  {row['seconds']:.1f}s"
    )


# ------------------------------------------------------------------------------------ public
def fit(
    cfg: Config | None,
    run_dir: str | Path,
    resume: bool = False,
    *,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
    stop_after_epochs: int | None = None,
    recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (or continue it with ``resume=True``) and return final metrics.

    ``cfg`` may be None when resuming (the run's config.yaml is used). ``progress``: tqdm bars on
    stderr (None = only on a terminal). ``echo`` receives every log line. ``stop_after_epochs``
    ends this call (state ``stopped``) after that many epochs, to be continued with ``resume``.
    ``recipe`` (:meth:`asca_core.train.recipe.Recipe.to_dict`) is stored as ``RUN/recipe.json``.
    Under torchrun every process calls ``fit``; only rank 0 writes the run directory.

    Returns ``{"state", "run_dir", "epoch", "steps", "best_epoch", "best_val_map", "last"
    (the last metrics row), "test" (best checkpoint on the test split, when there is one)}``.
    """
    if cfg is None:
        if not resume:
            raise ConfigError("fit() needs a config unless it resumes a run")
        cfg = RunStore(run_dir).config()
    trainer = Trainer(cfg, run_dir, resume, progress, echo, stop_after_epochs)
    trainer.setup()
    # One writer per run: rank 0 holds RUN/.lock from before the first write until fit returns.
    lock, problem = RunLock(trainer.run.path), None
    if trainer.env.is_main:
        try:
            lock.acquire(fresh=not resume)
        except CheckpointError as exc:
            problem = str(exc)
    problem = ddp.broadcast_object(problem)
    if problem:
        raise CheckpointError(problem)
    try:
        return _fit_locked(trainer, resume, recipe)
    finally:
        lock.release()


def _fit_locked(trainer: Trainer, resume: bool, recipe: dict[str, Any] | None) -> dict[str, Any]:
    trainer.prepare_run_dir()
    if recipe is not None and trainer.env.is_main and not resume:
        atomic_write_json(trainer.run.path / "recipe.json", recipe)  # the reasons behind config.yaml
    trainer.stop.install()
    slot = TrainingSlot(os.environ[SLOT_ENV]) if os.environ.get(SLOT_ENV) and not trainer.env.distributed else None
    try:
        # trainings launched with a shared slot (the app's) take turns instead of sharing the cores
        if slot is not None and not wait_for_slot(slot, trainer.run, lambda: trainer.stop.requested, trainer.log):
            return _queued_result(trainer)
        trainer.started = time.monotonic()  # a budget counts from here, not from the time spent queued
        trainer.build()
        return trainer.run_loop()
    except KeyboardInterrupt:
        if trainer.env.is_main:
            trainer.run.write_status(state="stopped")
            trainer.log("interrupted; the last checkpoint is kept")
        raise
    except BaseException as exc:
        if trainer.env.is_main:
            message = str(exc) if isinstance(exc, AscaError) else f"{type(exc).__name__}: {exc}"
            message = " ".join(message.split())
            trainer.run.write_status(state="failed", error=message)
            trainer.log(f"failed: {message}")
        raise
    finally:
        trainer.close_loader()  # the training loader's workers end with the run
        if slot is not None:
            slot.release()
        trainer.stop.restore()
        ddp.shutdown_distributed()
        enabled, warn_only = trainer._deterministic_before  # fit() may run inside the app's process
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _queued_result(trainer: Trainer) -> dict[str, Any]:
    """fit()'s result for a run stopped while it waited for the training slot."""
    status = trainer.run.write_status(state="stopped")
    trainer.log("stopped while queued; nothing was trained in this session")
    return json_safe(
        {
            "state": "stopped",
            "run_dir": str(trainer.run.path),
            "epoch": status.get("epoch", 0),
            "steps": status.get("steps", 0),
            "best_epoch": status.get("best_epoch") or 0,
            "best_val_map": status.get("best_val_map"),
        }
    )


# the names callers have imported from here since the data, evaluation and resume code moved out
__all__ = [
    "ModelEma",
    "Trainer",
    "_MemoryCache",
    "_collate",
    "evaluate",
    "fit",
    "loss_per_example",
    "make_cache",
    "param_groups",
    "predict",
    "prepare_data",
    "probabilities",
]
