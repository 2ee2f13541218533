"""Run a trained model on clips and long recordings: :class:`Classifier` and :class:`Prediction`.

A recording is cut into windows of ``window`` seconds every ``hop`` seconds (defaults: the run's
``features.clip_seconds`` and half of it). Files are streamed from disk one window at a time with
:func:`asca_core.audio.iter_windows` and scored in batches, so memory stays bounded by a batch of
windows whatever the recording's length::

    clf = Classifier.from_run("runs/demo", checkpoint="best", device="cpu")
    pred = clf.predict("dawn_chorus.flac", top_k=3)
    pred.top          # [("trill", 0.97), ("chirp", 0.41), ...]  clip level (max over windows)
    pred.timeline[0]  # TimelineWindow(start=0.0, end=3.0, probs=array([...]))

Probabilities are sigmoids for runs trained with BCE (independent, multi-label) and softmaxes for
runs trained with cross-entropy (``cfg.train.loss``).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from .audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, audio_info, iter_windows, load_audio, resample
from .config import Config
from .errors import AscaError, AudioError, ConfigError
from .features import FeatureExtractor, sliding_windows
from .utils import resolve_device, setup_torch

DEFAULT_BATCH_WINDOWS = 16  # windows per forward pass: bounds activation memory


@dataclass
class TimelineWindow:
    """Class probabilities of one window of a recording (``probs`` in the run's label order)."""

    start: float  # seconds
    end: float  # seconds, clipped to the end of the recording
    probs: np.ndarray  # (K,)


@dataclass
class Prediction:
    """What a classifier hears in one clip or recording.

    ``probs`` is the clip-level aggregate named by ``aggregate`` (``max`` or ``mean`` over
    windows); both aggregates are kept. ``top`` lists the ``top_k`` best (label, probability)
    pairs of ``probs``.
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

    @property
    def label(self) -> str:
        """The best label of the clip."""
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

        return {
            "source": self.source,
            "duration": round(self.duration, 6),
            "window": self.window,
            "hop": self.hop,
            "activation": self.activation,
            "aggregate": self.aggregate,
            "top": [{"label": name, "prob": round(float(p), 6)} for name, p in self.top],
            "probs": rounded(self.probs),
            "probs_max": rounded(self.probs_max),
            "probs_mean": rounded(self.probs_mean),
            "timeline": [{"start": round(w.start, 6), "end": round(w.end, 6), "probs": rounded(w.probs)}
                         for w in self.timeline],
        }

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
                    writer.writerow([self.source, f"{w.start:.3f}", f"{w.end:.3f}",
                                     *(f"{float(p):.6f}" for p in w.probs)])
        except OSError as exc:
            raise AscaError(f"cannot write the timeline CSV {path}: {exc.strerror or exc}") from None
        return path


def centre_pad(wave: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad ``wave`` on both sides to ``n`` samples (longer waves are returned as they are).

    Shapes: (T,) -> (max(T, n),).
    """
    if wave.size >= n:
        return wave
    out = np.zeros(n, dtype=np.float32)
    first = (n - wave.size) // 2
    out[first:first + wave.size] = wave
    return out


class Classifier:
    """A trained model with its front end, labels and output activation.

    ``Classifier.from_run(run_dir)`` loads a run safely (safetensors weights, YAML config, JSON
    labels). ``predict`` scores files or waves of any length through sliding windows;
    ``spectrogram`` returns exactly the tensor the model sees for a clip.
    """

    def __init__(self, model: torch.nn.Module, cfg: Config, labels: Sequence[str],
                 device: str | torch.device = "cpu", batch_windows: int = DEFAULT_BATCH_WINDOWS) -> None:
        setup_torch()
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.cfg = cfg
        self.labels = list(labels)
        self.model = model.to(self.device).eval()
        self.batch_windows = int(batch_windows)
        self._extractors: dict[float, FeatureExtractor] = {}
        self.extractor = self.extractor_for(cfg.features.clip_seconds)

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", device: str = "cpu",
                 **kwargs: Any) -> "Classifier":
        """Load ``run_dir/checkpoints/<checkpoint>.safetensors`` with its config and labels."""
        from .train.checkpoint import load_model_from_run

        model, cfg, labels = load_model_from_run(run_dir, checkpoint=checkpoint, device=device)
        bad = [name for name, p in model.state_dict().items()
               if p.is_floating_point() and not bool(torch.isfinite(p).all())]
        if bad:
            raise AscaError(f"{run_dir}: the {checkpoint} checkpoint holds NaN or infinite weights "
                            f"({len(bad)} tensor(s), first {bad[0]}); it cannot score anything")
        clf = cls(model, cfg, labels, device=device, **kwargs)
        clf.run_dir = Path(run_dir)
        return clf

    # -- properties -------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self.cfg.features.sample_rate)

    @property
    def clip_seconds(self) -> float:
        return float(self.cfg.features.clip_seconds)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def activation(self) -> str:
        """``sigmoid`` for BCE-trained runs (multi-label), ``softmax`` for CE-trained runs."""
        return "softmax" if self.cfg.train.loss == "ce" else "sigmoid"

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
            raise AudioError(f"the wave's sample rate {sample_rate} Hz is not supported "
                             f"({MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)")
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            wave = resample(wave, int(sample_rate), self.sample_rate)
        return wave

    @torch.no_grad()
    def spectrogram(self, wave: np.ndarray | Tensor, sample_rate: int | None = None,
                    window: float | None = None) -> Tensor:
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
        return torch.softmax(logits, dim=-1) if self.activation == "softmax" else torch.sigmoid(logits)

    @torch.no_grad()
    def predict_windows(self, waves: np.ndarray | Tensor, window: float | None = None) -> np.ndarray:
        """Probabilities of a batch of equal-length windows (already at the model's rate).

        Shapes: waves (B, W) -> (B, K).
        """
        waves = torch.as_tensor(waves, dtype=torch.float32)
        if waves.dim() == 1:
            waves = waves.unsqueeze(0)
        extractor = self.extractor_for(window)
        out = []
        for i in range(0, waves.shape[0], self.batch_windows):
            chunk = waves[i:i + self.batch_windows]
            spec = extractor(chunk.to(self.device))
            if not bool(torch.isfinite(spec).all()):
                peak = float(chunk.abs().max()) if bool(torch.isfinite(chunk).all()) else math.nan
                raise AscaError(f"the spectrogram holds NaN or infinite values: the audio's peak amplitude "
                                f"{peak:.3g} is far beyond the expected range of about -1 to 1")
            probs = self.probabilities(self.model(spec).float())
            if not bool(torch.isfinite(probs).all()):
                raise AscaError("the model gave NaN or infinite probabilities for this audio")
            out.append(probs.cpu())
        return torch.cat(out).numpy()

    def windows(self, audio: str | Path | np.ndarray | Tensor, sample_rate: int | None = None,
                window: float | None = None, hop: float | None = None
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
            return iter([(-((n - wave.size) // 2) / self.sample_rate, centre_pad(wave, n))]), duration

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

    def predict(self, path_or_wave: str | Path | np.ndarray | Tensor, sample_rate: int | None = None,
                top_k: int = 5, window: float | None = None, hop: float | None = None,
                aggregate: str = "max") -> Prediction:
        """Score a file or a wave through sliding windows; see :class:`Prediction`.

        ``sample_rate`` is the rate of a wave (``None``: the model's rate); files carry their own.
        ``aggregate`` picks the clip-level probabilities behind ``top``: ``max`` over windows
        (was the class heard anywhere?) or ``mean``.

        Shapes: wave (T,) -> Prediction with K = number of classes.
        """
        if aggregate not in ("max", "mean"):
            raise AscaError(f"aggregate must be max or mean, got {aggregate!r}")
        if int(top_k) < 1:
            raise AscaError(f"top_k must be >= 1, got {top_k}")
        window, hop = self._window_hop(window, hop)
        stream, duration = self.windows(path_or_wave, sample_rate, window, hop)
        source = str(path_or_wave) if isinstance(path_or_wave, (str, Path)) else "<wave>"
        starts: list[float] = []
        rows: list[np.ndarray] = []
        batch: list[np.ndarray] = []

        def score() -> None:
            try:
                rows.append(self.predict_windows(np.stack(batch), window))
            except AscaError as exc:  # non-finite numbers: say which recording and where
                raise AscaError(f"{source}: windows from {starts[-len(batch)]:.2f} s: {exc}") from None

        for start, chunk in stream:
            starts.append(start)
            batch.append(chunk)
            if len(batch) == self.batch_windows:
                score()
                batch = []
        if batch:
            score()
        probs = np.concatenate(rows).astype(np.float32)  # (N, K)
        timeline = [TimelineWindow(start=max(s, 0.0), end=min(s + window, duration), probs=p)
                    for s, p in zip(starts, probs)]
        probs_max, probs_mean = probs.max(axis=0), probs.mean(axis=0)
        chosen = probs_max if aggregate == "max" else probs_mean
        order = np.argsort(-chosen, kind="stable")[: int(top_k)]
        return Prediction(source=source, duration=duration, labels=list(self.labels),
                          top=[(self.labels[i], float(chosen[i])) for i in order], probs=chosen,
                          probs_max=probs_max, probs_mean=probs_mean, timeline=timeline,
                          window=window, hop=hop, aggregate=aggregate, activation=self.activation)
