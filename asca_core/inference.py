"""Run a trained model on clips and long recordings: :class:`Classifier` and :class:`Prediction`.

A recording is cut into windows of ``window`` seconds every ``hop`` seconds (defaults: the run's
``features.clip_seconds`` and half of it). Files are streamed from disk one window at a time with
:func:`asca_core.audio.iter_windows` and scored in batches, so memory stays bounded by a batch of
windows whatever the recording's length::

    clf = Classifier.from_run("runs/demo", checkpoint="best", device="cpu")
    pred = clf.predict("dawn_chorus.flac", top_k=3)
    pred.top          # [("trill", 0.97), ("chirp", 0.41), ...]  clip level (max over windows)
    pred.timeline[0]  # TimelineWindow(start=0.0, end=3.0, probs=array([...]))

Decoding runs in a background thread, a few batches ahead of scoring, and :meth:`Classifier.predict_many`
streams one :class:`Prediction` per file as each finishes, the next file decoding meanwhile.
``engine="onnx"`` scores with the run's ONNX export (:mod:`asca_core.export`) in ONNX Runtime.

Probabilities are sigmoids for runs trained with BCE (independent, multi-label) and softmaxes for
runs trained with cross-entropy (``cfg.train.loss``).
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import json
import math
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import scores
from .audio import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    SUPPORTED_EXTENSIONS,
    audio_info,
    iter_windows,
    load_audio,
    resample,
)
from .config import Config
from .errors import AscaError, AudioError, ConfigError
from .features import FeatureExtractor, sliding_windows
from .geometry import centre_pad, pad_offset
from .utils import resolve_device, rows_per_pass, setup_torch

DEFAULT_BATCH_WINDOWS = 16  # windows per forward pass: bounds activation memory
PREFETCH_BATCHES = 4  # decoded batches waiting for the scorer: bounds the decoder's lead
ENGINES = ("torch", "onnx")


@dataclass
class TimelineWindow:
    """Class probabilities of one window of a recording (``probs`` in the run's label order)."""

    start: float  # seconds
    end: float  # seconds, clipped to the end of the recording
    probs: np.ndarray  # (K,)
    unknown_score: float | None = None  # open-set score (higher: less like any class), with an OpenSet
    unknown: bool = False  # "none of these": unknown_score above the OpenSet's threshold


@dataclass
class Prediction:
    """What a classifier hears in one clip or recording.

    ``probs`` is the clip-level aggregate named by ``aggregate`` (``max`` or ``mean`` over
    windows); both aggregates are kept. ``top`` lists the ``top_k`` best (label, probability)
    pairs of ``probs``.

    With an open-set calibration (:attr:`Classifier.openset`), every window and the clip carry an
    ``unknown_score`` (higher: less like any trained class). The clip's is the minimum over its
    windows for ``aggregate="max"`` (a class heard anywhere makes the clip known) and the mean for
    ``"mean"``; above ``openset_threshold`` the clip is ``unknown`` and :attr:`label` is
    :data:`~asca_core.openset.NONE_LABEL` ("none of these"), ``top`` still ranking the classes.
    """

    source: str
    duration: float  # seconds
    labels: list[str]
    top: list[tuple[str, float]]
    probs: np.ndarray  # (K,) the chosen aggregate
    probs_max: np.ndarray  # (K,)
    probs_mean: np.ndarray  # (K,)
    timeline: list[TimelineWindow]
    window: float
    hop: float
    aggregate: str = "max"
    activation: str = "sigmoid"  # sigmoid (BCE run) | softmax (CE run)
    meta: dict[str, Any] = field(default_factory=dict)
    unknown_score: float | None = None  # clip-level open-set score; None without an OpenSet
    unknown: bool = False  # "none of these"
    openset_score: str | None = None  # which open-set score (energy, max_logit, max_prob)
    openset_threshold: float | None = None

    @property
    def label(self) -> str:
        """The best label of the clip, or "none of these" when the clip is unknown."""
        if self.unknown:
            from .openset import NONE_LABEL

            return NONE_LABEL
        return self.top[0][0]

    @property
    def best_class(self) -> str:
        """The best of the trained classes, "none of these" or not."""
        return self.top[0][0]

    def class_probs(self) -> dict[str, float]:
        """Clip-level probability of every class, by label."""
        return {name: float(p) for name, p in zip(self.labels, self.probs)}

    def timeline_array(self) -> np.ndarray:
        """Window probabilities stacked. Shapes: (N windows, K)."""
        return np.stack([w.probs for w in self.timeline]) if self.timeline else np.zeros((0, len(self.labels)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (plain floats and lists)."""

        def rounded(values: np.ndarray) -> dict[str, float]:
            return {name: round(float(p), 6) for name, p in zip(self.labels, values)}

        def window(w: TimelineWindow) -> dict[str, Any]:
            item: dict[str, Any] = {"start": round(w.start, 6), "end": round(w.end, 6), "probs": rounded(w.probs)}
            if w.unknown_score is not None:
                item["unknown_score"] = round(float(w.unknown_score), 6)
                item["unknown"] = bool(w.unknown)
            return item

        out: dict[str, Any] = {
            "source": self.source,
            "duration": round(self.duration, 6),
            "window": self.window,
            "hop": self.hop,
            "activation": self.activation,
            "aggregate": self.aggregate,
            "label": self.label,
            "top": [{"label": name, "prob": round(float(p), 6)} for name, p in self.top],
            "probs": rounded(self.probs),
            "probs_max": rounded(self.probs_max),
            "probs_mean": rounded(self.probs_mean),
            "timeline": [window(w) for w in self.timeline],
        }
        if self.unknown_score is not None:
            out["unknown"] = bool(self.unknown)
            out["unknown_score"] = round(float(self.unknown_score), 6)
            out["openset"] = {"score": self.openset_score, "threshold": self.openset_threshold}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], top_k: int = 5) -> Prediction:
        """Rebuild a prediction from :meth:`to_dict` (probabilities rounded to 6 digits)."""
        labels = list(data["probs"])

        def vector(values: dict[str, float]) -> np.ndarray:
            return np.array([values[name] for name in labels], dtype=np.float32)

        def optional(value: Any) -> float | None:
            return None if value is None else float(value)

        probs = vector(data["probs"])
        order = np.argsort(-probs, kind="stable")[: int(top_k)]
        openset = data.get("openset") or {}
        return cls(
            source=data["source"],
            duration=float(data["duration"]),
            labels=labels,
            top=[(labels[i], float(probs[i])) for i in order],
            probs=probs,
            probs_max=vector(data["probs_max"]),
            probs_mean=vector(data["probs_mean"]),
            timeline=[
                TimelineWindow(
                    float(w["start"]),
                    float(w["end"]),
                    vector(w["probs"]),
                    optional(w.get("unknown_score")),
                    bool(w.get("unknown", False)),
                )
                for w in data["timeline"]
            ],
            window=float(data["window"]),
            hop=float(data["hop"]),
            aggregate=data["aggregate"],
            activation=data["activation"],
            unknown_score=optional(data.get("unknown_score")),
            unknown=bool(data.get("unknown", False)),
            openset_score=openset.get("score"),
            openset_threshold=optional(openset.get("threshold")),
        )

    def write_timeline_csv(self, path: str | Path, append: bool = False) -> Path:
        """Write ``source,start,end,<label>...`` rows, one per window (header unless appending)."""
        path = Path(path)
        try:
            write_header = not append or not path.exists() or path.stat().st_size == 0
            with open(path, "a" if append else "w", newline="") as f:
                writer = csv.writer(f)
                if write_header:
                    writer.writerow(["source", "start", "end", *self.labels])
                for w in self.timeline:
                    writer.writerow(
                        [self.source, f"{w.start:.3f}", f"{w.end:.3f}", *(f"{float(p):.6f}" for p in w.probs)]
                    )
        except OSError as exc:
            raise AscaError(f"cannot write the timeline CSV {path}: {exc.strerror or exc}") from None
        return path


@dataclass
class WindowOutputs:
    """Everything the model says about a batch of windows (see :meth:`Classifier.window_outputs`)."""

    logits: np.ndarray  # (B, K) float32
    probs: np.ndarray  # (B, K) float32, the run's activation of the logits
    embeddings: np.ndarray  # (B, D) float32, the input of the model's final linear layer


def final_linear(model: torch.nn.Module) -> torch.nn.Linear:
    """The linear layer that turns a model's pooled features into logits.

    ``model.head`` itself when it is an ``nn.Linear`` (AST), else ``model.head.fc`` (ASCA's
    :class:`~asca_core.models.asca.ClassifierHead`), else the last ``nn.Linear`` of ``model.head``.
    A model without such a head raises :class:`AscaError`.
    """
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd model keeps the original here
    head = getattr(model, "head", None)
    if isinstance(head, torch.nn.Linear):
        return head
    if isinstance(head, torch.nn.Module):
        fc = getattr(head, "fc", None)
        if isinstance(fc, torch.nn.Linear):
            return fc
        linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
        if linears:
            return linears[-1]
    raise AscaError(
        f"the model {type(model).__name__} has no linear classifier head (model.head): it gives no embeddings"
    )


class Classifier:
    """A trained model with its front end, labels and output activation.

    ``Classifier.from_run(run_dir)`` loads a run safely (safetensors weights, YAML config, JSON
    labels). ``predict`` scores files or waves of any length through sliding windows;
    ``spectrogram`` returns exactly the tensor the model sees for a clip.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: Config,
        labels: Sequence[str],
        device: str | torch.device = "cpu",
        batch_windows: int = DEFAULT_BATCH_WINDOWS,
        onnx: Any = None,
    ) -> None:
        setup_torch()
        self.onnx = onnx  # an asca_core.export.OnnxScorer, or None to score with PyTorch
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.cfg = cfg
        self.labels = list(labels)
        self.model = model.to(self.device).eval()
        self.batch_windows = int(batch_windows)
        self.run_dir: Path | None = None  # the run folder, for a classifier loaded with from_run
        self.openset: Any = None  # an asca_core.openset.OpenSet: "none of these" above its threshold
        self._extractors: dict[float, FeatureExtractor] = {}
        self.extractor = self.extractor_for(cfg.features.clip_seconds)

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        checkpoint: str = "best",
        device: str = "cpu",
        engine: str = "torch",
        onnx_path: str | Path | None = None,
        threads: int | None = None,
        **kwargs: Any,
    ) -> Classifier:
        """Load ``run_dir/checkpoints/<checkpoint>.safetensors`` with its config and labels.

        ``engine="onnx"`` scores with the export in ``onnx_path`` (default ``RUN/export``), which
        must come from this checkpoint; ``threads`` sets ONNX Runtime's threads. A calibration in
        ``RUN/openset.json`` for this checkpoint (:mod:`asca_core.openset`) becomes
        :attr:`openset`, and predictions then say "none of these" above its threshold.
        """
        from .train.checkpoint import load_model_from_run

        if engine not in ENGINES:
            raise AscaError(f"unknown engine {engine!r}: choose {' or '.join(ENGINES)}")
        model, cfg, labels = load_model_from_run(run_dir, checkpoint=checkpoint, device=device)
        bad = [
            name
            for name, p in model.state_dict().items()
            if p.is_floating_point() and not bool(torch.isfinite(p).all())
        ]
        if bad:
            raise AscaError(
                f"{run_dir}: the {checkpoint} checkpoint holds NaN or infinite weights "
                f"({len(bad)} tensor(s), first {bad[0]}); it cannot score anything"
            )
        scorer = _onnx_scorer(Path(run_dir), checkpoint, labels, onnx_path, threads) if engine == "onnx" else None
        clf = cls(model, cfg, labels, device=device, onnx=scorer, **kwargs)
        clf.run_dir = Path(run_dir)
        if clf.run_dir.is_dir() and engine == "torch":  # open-set scores need logits: PyTorch only
            from .openset import load_openset

            clf.openset = load_openset(clf.run_dir, checkpoint, labels)
        return clf

    # -- properties -------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self.cfg.features.sample_rate)

    @property
    def clip_seconds(self) -> float:
        return float(self.cfg.features.clip_seconds)

    @property
    def engine(self) -> str:
        return "torch" if self.onnx is None else "onnx"

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def activation(self) -> str:
        """``sigmoid`` for BCE-trained runs (multi-label), ``softmax`` for CE-trained runs."""
        return scores.activation(self.cfg.train.loss)

    def label_index(self, target: int | str) -> int:
        """Index of a class given by name or index; AscaError for an unknown class."""
        if isinstance(target, str):
            if target not in self.labels:
                raise AscaError(f"unknown class {target!r}: the model knows {', '.join(self.labels)}")
            return self.labels.index(target)
        index = int(target)
        if not 0 <= index < self.num_classes:
            raise AscaError(f"class index {target} out of range: the model has {self.num_classes} classes")
        return index

    # -- front end --------------------------------------------------------------------------
    def extractor_for(self, window: float | None = None) -> FeatureExtractor:
        """Front end for ``window``-second inputs (the training one for ``clip_seconds``)."""
        window = self.clip_seconds if window is None else float(window)
        key = round(window, 6)
        if key not in self._extractors:
            feats = self.cfg.features
            if not math.isclose(window, feats.clip_seconds):
                # Same front end and normalisation; only the time fit follows the window length.
                try:
                    feats = dataclasses.replace(feats, clip_seconds=window)
                except ConfigError as exc:
                    raise AscaError(f"window {window:g} s does not suit the model's front end: {exc}") from None
            self._extractors[key] = FeatureExtractor(feats).to(self.device).eval()
        return self._extractors[key]

    def _as_wave(self, wave: np.ndarray | Tensor, sample_rate: int | None) -> np.ndarray:
        wave = wave.detach().cpu().numpy() if isinstance(wave, Tensor) else np.asarray(wave)
        if wave.ndim == 2 and 1 in wave.shape:
            wave = wave.reshape(-1)
        if wave.ndim != 1:
            raise AudioError(f"a wave must be one-dimensional (T,), got shape {wave.shape}")
        if wave.size == 0:
            raise AudioError("the wave is empty")
        wave = wave.astype(np.float32, copy=False)
        if not np.isfinite(wave).all():
            raise AudioError("the wave contains NaN or infinite samples")
        if sample_rate is not None and not (MIN_SAMPLE_RATE <= int(sample_rate) <= MAX_SAMPLE_RATE):
            raise AudioError(
                f"the wave's sample rate {sample_rate} Hz is not supported ({MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)"
            )
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            wave = resample(wave, int(sample_rate), self.sample_rate)
        return wave

    @torch.no_grad()
    def spectrogram(
        self, wave: np.ndarray | Tensor, sample_rate: int | None = None, window: float | None = None
    ) -> Tensor:
        """Exactly what the model sees for ``wave`` taken as one clip, as evaluation feeds it.

        A wave shorter than the window is zero-padded on both sides to the window (as
        :meth:`predict` and evaluation do); a longer one is centre-cropped by the front end.

        Shapes: wave (T,) or (B, T) -> spec (B, 1, F, T') on the classifier's device, with
        (F, T') the model input size (padded mel axis included).
        """
        waves = wave.detach().cpu().numpy() if isinstance(wave, Tensor) else np.asarray(wave)
        if waves.ndim == 1:
            waves = waves[None]
        if waves.ndim != 2:
            raise AudioError(f"a wave must be (T,) or (B, T), got shape {waves.shape}")
        n = int(round((self.clip_seconds if window is None else float(window)) * self.sample_rate))
        batch = np.stack([centre_pad(self._as_wave(w, sample_rate), n) for w in waves])
        return self.extractor_for(window)(torch.from_numpy(batch).to(self.device))

    # -- scoring ----------------------------------------------------------------------------
    def probabilities(self, logits: Tensor) -> Tensor:
        """Logits to probabilities with the run's activation. Shapes: (B, K) -> (B, K)."""
        return scores.probabilities(logits, self.activation)

    @torch.no_grad()
    def predict_windows(self, waves: np.ndarray | Tensor, window: float | None = None) -> np.ndarray:
        """Probabilities of a batch of equal-length windows (already at the model's rate).

        Shapes: waves (B, W) -> (B, K).
        """
        waves = torch.as_tensor(waves, dtype=torch.float32)
        if waves.dim() == 1:
            waves = waves.unsqueeze(0)
        extractor = self.extractor_for(window)
        if self.onnx is not None:
            return self._onnx_windows(waves, extractor, window)
        out = []
        for i in range(0, waves.shape[0], self.batch_windows):
            chunk = waves[i : i + self.batch_windows]
            spec = extractor(chunk.to(self.device))
            if not bool(torch.isfinite(spec).all()):
                peak = float(chunk.abs().max()) if bool(torch.isfinite(chunk).all()) else math.nan
                raise AscaError(
                    f"the spectrogram holds NaN or infinite values: the audio's peak amplitude "
                    f"{peak:.3g} is far beyond the expected range of about -1 to 1"
                )
            probs = self.probabilities(self._forward(spec).float())
            if not bool(torch.isfinite(probs).all()):
                raise AscaError("the model gave NaN or infinite probabilities for this audio")
            out.append(probs.cpu())
        return torch.cat(out).numpy()

    @torch.no_grad()
    def window_outputs(self, waves: np.ndarray | Tensor, window: float | None = None) -> WindowOutputs:
        """Logits, probabilities and embeddings of a batch of equal-length windows.

        The embedding of a window is what the model's final linear layer sees: for ASCA models the
        pooled, normalised features after the pre-logits layer (the head's input to ``head.fc``),
        for the AST baseline the normalised class token. Batching and the NaN checks are those of
        :meth:`predict_windows`. PyTorch engine only.

        Shapes: waves (B, W) -> logits (B, K), probs (B, K), embeddings (B, D).
        """
        if self.onnx is not None:
            raise AscaError(
                "embeddings and logits need the PyTorch engine: load the run with engine='torch' (--engine torch)"
            )
        waves = torch.as_tensor(waves, dtype=torch.float32)
        if waves.dim() == 1:
            waves = waves.unsqueeze(0)
        extractor = self.extractor_for(window)
        layer = final_linear(self.model)
        captured: list[Tensor] = []

        def grab(module: torch.nn.Module, inputs: tuple[Tensor, ...]) -> None:
            captured.append(inputs[0].detach())

        logits_out, probs_out, embeds_out = [], [], []
        handle = layer.register_forward_pre_hook(grab)
        try:
            for i in range(0, waves.shape[0], self.batch_windows):
                chunk = waves[i : i + self.batch_windows]
                spec = extractor(chunk.to(self.device))
                if not bool(torch.isfinite(spec).all()):
                    peak = float(chunk.abs().max()) if bool(torch.isfinite(chunk).all()) else math.nan
                    raise AscaError(
                        f"the spectrogram holds NaN or infinite values: the audio's peak amplitude "
                        f"{peak:.3g} is far beyond the expected range of about -1 to 1"
                    )
                captured.clear()
                logits = self._forward(spec).float()
                probs = self.probabilities(logits)
                if not bool(torch.isfinite(probs).all()) or not bool(torch.isfinite(logits).all()):
                    raise AscaError("the model gave NaN or infinite probabilities for this audio")
                parts = len(range(0, spec.shape[0], self._rows_per_pass(spec)))
                if len(captured) != parts:
                    raise AscaError(
                        f"the model's final linear layer ran {len(captured)} times in {parts} forward pass(es): "
                        "its input is not a single pooled feature vector"
                    )
                embeds = torch.cat(captured).float().reshape(logits.shape[0], -1)  # (B, D)
                logits_out.append(logits.cpu())
                probs_out.append(probs.cpu())
                embeds_out.append(embeds.cpu())
        finally:
            handle.remove()
        return WindowOutputs(
            logits=torch.cat(logits_out).numpy().astype(np.float32, copy=False),
            probs=torch.cat(probs_out).numpy().astype(np.float32, copy=False),
            embeddings=torch.cat(embeds_out).numpy().astype(np.float32, copy=False),
        )

    def _rows_per_pass(self, spec: Tensor) -> int:
        return rows_per_pass(spec[0].numel(), spec.device, spec.shape[0])

    def _forward(self, spec: Tensor) -> Tensor:
        """The model on a batch of inputs, in passes of :func:`~asca_core.utils.rows_per_pass` inputs.

        Shapes: spec (B, 1, F', T') -> logits (B, K).
        """
        rows = self._rows_per_pass(spec)
        if rows >= spec.shape[0]:
            return self.model(spec)
        return torch.cat([self.model(part) for part in spec.split(rows)])

    def _onnx_windows(self, waves: Tensor, extractor: FeatureExtractor, window: float | None) -> np.ndarray:
        n = int(round((self.clip_seconds if window is None else float(window)) * self.sample_rate))
        if n != self.cfg.features.clip_samples or waves.shape[-1] != n:
            raise AscaError(
                f"the ONNX export scores windows of {self.clip_seconds:g} s only: drop --window or use --engine torch"
            )
        out = []
        for i in range(0, waves.shape[0], self.batch_windows):
            chunk = waves[i : i + self.batch_windows]
            inputs = chunk.numpy() if self.onnx.frontend else extractor(chunk).numpy()
            probs = self.onnx(inputs)
            if not np.isfinite(probs).all():
                peak = float(chunk.abs().max()) if bool(torch.isfinite(chunk).all()) else math.nan
                raise AscaError(
                    f"the model gave NaN or infinite probabilities (audio peak {peak:.3g}; expected about -1 to 1)"
                )
            out.append(probs)
        return np.concatenate(out)

    def windows(
        self,
        audio: str | Path | np.ndarray | Tensor,
        sample_rate: int | None = None,
        window: float | None = None,
        hop: float | None = None,
    ) -> tuple[Iterator[tuple[float, np.ndarray]], float]:
        """Windows of a file (streamed from disk) or a wave, and the recording's duration.

        Windows start every ``hop`` seconds and the last one is zero-padded at its end; a
        recording shorter than one window gives one window with the audio centred in it (its
        start is then negative).

        Shapes: yields (start_seconds, (W,) float32) at the model's sample rate.
        """
        window, hop = self._window_hop(window, hop)
        n = int(round(window * self.sample_rate))
        if isinstance(audio, (str, Path)):
            info = audio_info(audio)
            if info.duration * self.sample_rate >= n:
                return iter_windows(audio, self.sample_rate, window, hop), float(info.duration)
            wave = load_audio(audio, self.sample_rate)  # shorter than one window: small
        else:
            wave = self._as_wave(audio, sample_rate)
        duration = wave.size / self.sample_rate
        if wave.size < n:
            # Centred in its window, as evaluation pads a short clip; the window starts before 0.
            return iter([(-pad_offset(wave.size, n) / self.sample_rate, centre_pad(wave, n))]), duration

        def generate() -> Iterator[tuple[float, np.ndarray]]:
            for start, end in sliding_windows(wave.size, self.sample_rate, window, hop):
                chunk = wave[start:end]
                if chunk.size < end - start:
                    chunk = np.pad(chunk, (0, end - start - chunk.size))
                yield start / self.sample_rate, chunk

        return generate(), duration

    def _window_hop(self, window: float | None, hop: float | None) -> tuple[float, float]:
        window = self.clip_seconds if window is None else float(window)
        hop = window / 2 if hop is None else float(hop)
        for name, value in (("window", window), ("hop", hop)):
            if not (math.isfinite(value) and value > 0):
                raise AscaError(f"{name} must be a positive number of seconds, got {value}")
        self.extractor_for(window)  # validates the window against the front end
        return window, hop

    def predict(
        self,
        path_or_wave: str | Path | np.ndarray | Tensor,
        sample_rate: int | None = None,
        top_k: int = 5,
        window: float | None = None,
        hop: float | None = None,
        aggregate: str = "max",
    ) -> Prediction:
        """Score a file or a wave through sliding windows; see :class:`Prediction`.

        ``sample_rate`` is the rate of a wave (``None``: the model's rate); files carry their own.
        ``aggregate`` picks the clip-level probabilities behind ``top``: ``max`` over windows
        (was the class heard anywhere?) or ``mean``.

        Shapes: wave (T,) -> Prediction with K = number of classes.
        """
        ((_, result),) = self.predict_many(
            [path_or_wave], sample_rate=sample_rate, top_k=top_k, window=window, hop=hop, aggregate=aggregate
        )
        if isinstance(result, AscaError):
            raise result
        return result

    def predict_many(
        self,
        sources: Iterable[str | Path | np.ndarray | Tensor],
        sample_rate: int | None = None,
        top_k: int = 5,
        window: float | None = None,
        hop: float | None = None,
        aggregate: str = "max",
        prefetch: int = PREFETCH_BATCHES,
    ) -> Iterator[tuple[Any, Prediction | AscaError]]:
        """Score many files (or waves) in order, yielding ``(source, Prediction)`` as each ends.

        A background thread decodes windows up to ``prefetch`` batches ahead of scoring, across
        file boundaries. A file that cannot be decoded or scored yields ``(source, AscaError)``
        naming it, and the others are still scored. Bad settings raise before anything is read.

        Shapes: each yields a Prediction with K = number of classes.
        """
        if aggregate not in ("max", "mean"):
            raise AscaError(f"aggregate must be max or mean, got {aggregate!r}")
        if int(top_k) < 1:
            raise AscaError(f"top_k must be >= 1, got {top_k}")
        window, hop = self._window_hop(window, hop)
        sources = list(sources)
        items: queue.Queue = queue.Queue(maxsize=max(1, int(prefetch)))
        stop = threading.Event()
        producer = threading.Thread(
            target=self._decode, args=(sources, sample_rate, window, hop, items, stop), name="asca-decode", daemon=True
        )
        producer.start()
        starts: list[float] = []
        rows: list[np.ndarray] = []
        ood: list[np.ndarray] = []
        failed: AscaError | None = None
        try:
            while True:
                kind, i, *rest = items.get()
                if kind == "done":
                    break
                source = sources[i]
                name = str(source) if isinstance(source, (str, Path)) else "<wave>"
                if kind == "batch":
                    batch_starts, batch = rest
                    if failed is None:
                        try:
                            probs, unknown = self._score_batch(batch, window)
                            rows.append(probs)
                            if unknown is not None:
                                ood.append(unknown)
                            starts.extend(batch_starts)
                        except AscaError as exc:  # non-finite numbers: say which recording and where
                            failed = AscaError(f"{name}: windows from {batch_starts[0]:.2f} s: {exc}")
                    continue
                if kind == "error":
                    yield source, rest[0]
                elif failed is not None:
                    yield source, failed
                else:
                    yield (
                        source,
                        self._prediction(name, rest[0], starts, rows, window, hop, aggregate, top_k, ood or None),
                    )
                starts, rows, ood, failed = [], [], [], None
        finally:
            stop.set()
            while producer.is_alive():
                try:
                    items.get(timeout=0.05)
                except queue.Empty:
                    pass
            producer.join()

    def _decode(
        self,
        sources: list[Any],
        sample_rate: int | None,
        window: float,
        hop: float,
        items: queue.Queue,
        stop: threading.Event,
    ) -> None:
        """Producer of :meth:`predict_many`: batches of windows, then each file's end or error."""

        def put(item: tuple) -> bool:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        for i, source in enumerate(sources):
            name = str(source) if isinstance(source, (str, Path)) else "<wave>"
            try:
                stream, duration = self.windows(source, sample_rate, window, hop)
                starts: list[float] = []
                batch: list[np.ndarray] = []
                for start, chunk in stream:
                    starts.append(start)
                    batch.append(chunk)
                    if len(batch) == self.batch_windows:
                        if not put(("batch", i, starts, np.stack(batch))):
                            return
                        starts, batch = [], []
                if batch and not put(("batch", i, starts, np.stack(batch))):
                    return
                item: tuple = ("end", i, duration)
            except AscaError as exc:
                item = ("error", i, exc)
            except Exception as exc:
                item = ("error", i, AscaError(f"{name}: cannot be read ({type(exc).__name__}: {exc})"))
            if not put(item):
                return
        put(("done", -1))

    def _prediction(
        self,
        source: str,
        duration: float,
        starts: list[float],
        rows: list[np.ndarray],
        window: float,
        hop: float,
        aggregate: str,
        top_k: int,
        ood: list[np.ndarray] | None = None,
    ) -> Prediction:
        probs = np.concatenate(rows).astype(np.float32)  # (N, K)
        timeline = [
            TimelineWindow(start=max(s, 0.0), end=min(s + window, duration), probs=p) for s, p in zip(starts, probs)
        ]
        probs_max, probs_mean = probs.max(axis=0), probs.mean(axis=0)
        chosen = probs_max if aggregate == "max" else probs_mean
        order = np.argsort(-chosen, kind="stable")[: int(top_k)]
        extra: dict[str, Any] = {}
        if ood is not None and self.openset is not None:
            values = np.concatenate(ood)  # (N,)
            threshold = float(self.openset.threshold)
            for w, v in zip(timeline, values):
                w.unknown_score, w.unknown = float(v), bool(v > threshold)
            clip = float(values.min() if aggregate == "max" else values.mean())
            extra = {
                "unknown_score": clip,
                "unknown": clip > threshold,
                "openset_score": self.openset.score,
                "openset_threshold": threshold,
            }
        return Prediction(
            source=source,
            duration=duration,
            labels=list(self.labels),
            top=[(self.labels[i], float(chosen[i])) for i in order],
            probs=chosen,
            probs_max=probs_max,
            probs_mean=probs_mean,
            timeline=timeline,
            window=window,
            hop=hop,
            aggregate=aggregate,
            activation=self.activation,
            **extra,
        )

    def _score_batch(self, batch: np.ndarray, window: float) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities of a batch of windows and, with an open-set calibration, their unknown scores.

        Shapes: batch (B, W) -> (B, K), (B,) or None.
        """
        if self.openset is None or self.onnx is not None:
            return self.predict_windows(batch, window), None
        outputs = self.window_outputs(batch, window)
        return outputs.probs, self.openset.scores(outputs.logits)


def _onnx_scorer(
    run_dir: Path, checkpoint: str, labels: list[str], onnx_path: str | Path | None, threads: int | None
) -> Any:
    """The run's ONNX export, checked to come from the loaded checkpoint with the same classes."""
    from .errors import CheckpointError
    from .export import OnnxScorer, file_digest

    folder = Path(onnx_path) if onnx_path is not None else run_dir / "export"
    scorer = OnnxScorer.load(folder, threads=threads)
    if scorer.meta.get("labels") != labels:
        raise CheckpointError(f"{scorer.path} scores other classes than {run_dir}")
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.safetensors" if run_dir.is_dir() else run_dir
    if ckpt.is_file() and scorer.meta.get("checkpoint_sha256") != file_digest(ckpt):
        raise CheckpointError(
            f"{scorer.path} was exported from another version of the {checkpoint} "
            f"checkpoint of {run_dir}: run asca export {run_dir} again"
        )
    return scorer


def audio_files(folder: str | Path, recursive: bool = False) -> tuple[list[Path], list[tuple[str, str]]]:
    """Audio files in ``folder`` (sorted; subfolders too with ``recursive``) and the entries left out.

    Hidden files and folders are skipped; links that lead outside ``folder`` are left out and
    named with the reason, so nothing outside the folder is ever read.
    """
    root = Path(folder)
    if not root.is_dir():
        raise AscaError(f"{root} is not a folder")
    real_root = root.resolve()
    found: list[Path] = []
    left_out: list[tuple[str, str]] = []
    for current, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if not recursive:
            dirs[:] = []
        for name in sorted(names):
            path = Path(current) / name
            if name.startswith(".") or path.suffix.lower() not in SUPPORTED_EXTENSIONS:
                continue
            if path.is_symlink():
                try:
                    path.resolve(strict=True).relative_to(real_root)
                except (OSError, ValueError):
                    left_out.append((str(path), "a link leading outside the folder"))
                    continue
            found.append(path)
    return found, left_out


class ResultsJournal:
    """An append-only JSON Lines record of finished files, for resuming a large prediction.

    Each finished file adds one line (its prediction, size, modification time and the settings
    that produced it), written with a single ``write`` and fsync'd. A line cut off by a crash is
    dropped when the journal is next opened. A file whose size, modification time and settings
    match a line is finished: :meth:`lookup` returns its prediction. One process writes a journal
    at a time (an exclusive lock while it is open).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise AscaError(f"--journal {self.path} is a folder: give a file name")
        if not self.path.parent.is_dir():
            raise AscaError(f"--journal {self.path}: the folder {self.path.parent} does not exist")
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise AscaError(f"cannot open the journal {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise AscaError(f"the journal {self.path} is in use by another asca predict") from None
        self.entries: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        size = os.fstat(self._fd).st_size
        data = os.pread(self._fd, size, 0) if size else b""
        keep = data.rfind(b"\n") + 1
        if keep < len(data):  # a line cut off by a crash: drop it so the next line starts clean
            os.ftruncate(self._fd, keep)
        for line in data[:keep].splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("file"), str):
                self.entries[entry["file"]] = entry

    @staticmethod
    def key(path: str | Path) -> str:
        return str(Path(path).resolve())

    def lookup(self, path: str | Path, settings: dict[str, Any], top_k: int = 5) -> Prediction | None:
        """The stored prediction of ``path`` when the file and settings are unchanged."""
        entry = self.entries.get(self.key(path))
        if entry is None or entry.get("settings") != settings:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
            return None
        try:
            pred = Prediction.from_dict(entry["prediction"], top_k=top_k)
        except (KeyError, TypeError, ValueError):
            return None
        pred.source = str(path)
        return pred

    def record(self, path: str | Path, settings: dict[str, Any], pred: Prediction) -> None:
        """Append ``pred`` for ``path`` (one line, one write, fsync)."""
        from .train.runstore import json_safe

        st = os.stat(path)
        entry: dict[str, Any] = {
            "file": self.key(path),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "settings": settings,
            "prediction": pred.to_dict(),
        }
        line = (json.dumps(json_safe(entry), allow_nan=False, separators=(",", ":")) + "\n").encode()
        try:
            os.write(self._fd, line)
            os.fsync(self._fd)
        except OSError as exc:
            raise AscaError(f"cannot write the journal {self.path}: {exc.strerror or exc}") from None
        self.entries[entry["file"]] = entry

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1

    def __enter__(self) -> ResultsJournal:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
