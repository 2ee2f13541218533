"""Open-set scoring: "none of these" for audio unlike anything the model was trained on.

A classifier always names one of its classes; an out-of-distribution (OOD) score says how unlike
the training classes a window is. :func:`unknown_score` computes one from logits, HIGHER meaning
more likely unknown:

- ``energy`` (Liu et al. 2020): ``-T * logsumexp(logits / T)`` with ``T = 1`` for softmax runs.
  For sigmoid (BCE, multi-label) runs the classes are independent, so the energy sums each
  class's own free energy: ``-sum_k softplus(logit_k)`` (JointEnergy, Wang et al. 2021); it is
  low when any class is confidently present.
- ``max_logit``: ``-max_k logit_k`` (Hendrycks et al. 2022), the same for both activations.
- ``max_prob``: ``-max_k p_k``, the maximum softmax (or sigmoid) probability baseline.

:func:`calibrate_openset` scores the run's validation split and sets the threshold so that
``known_rate`` of those (known) clips score at or below it; a window scoring above it is "none of
these". The result is stored as ``RUN/openset.json``::

    openset = calibrate_openset("runs/demo", score="max_prob", known_rate=0.95)
    openset.is_unknown(outputs.logits)      # (B,) bool
    load_openset("runs/demo")               # the stored OpenSet, or None

A stored calibration belongs to one checkpoint (its SHA-256 is kept): :func:`load_openset`
returns ``None`` with a :class:`StaleOpenSetWarning` when the checkpoint has changed since, so a
retrained model never uses an old threshold; calibrate again.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AscaError, CheckpointError

NONE_LABEL = "none of these"
OOD_SCORES = ("energy", "max_logit", "max_prob")
# max_prob separated left-out classes from known ones best on both sets measured
# (benchmarks/bench_openset.py, AUROC energy / max_logit / max_prob: Speech Commands 0.677 / 0.697
# / 0.771, demo set 0.300 / 0.327 / 0.493)
DEFAULT_SCORE = "max_prob"
DEFAULT_KNOWN_RATE = 0.95
OPENSET_FILE = "openset.json"
OPENSET_FORMAT = "asca-openset/1"
ACTIVATIONS = ("sigmoid", "softmax")


class StaleOpenSetWarning(UserWarning):
    """RUN/openset.json was calibrated for another version of the checkpoint: it is not used."""


def _logsumexp(x: np.ndarray) -> np.ndarray:
    peak = x.max(axis=-1, keepdims=True)
    return (peak + np.log(np.exp(x - peak).sum(axis=-1, keepdims=True)))[..., 0]


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def unknown_score(logits: np.ndarray, kind: str = DEFAULT_SCORE, activation: str = "softmax") -> np.ndarray:
    """How unlike the known classes each row of ``logits`` is: higher = more likely unknown.

    ``kind`` is one of :data:`OOD_SCORES`; ``activation`` the run's (``softmax`` or ``sigmoid``).

    Shapes: logits (B, K) or (K,) -> (B,) float64 (a scalar array for (K,)).
    """
    if kind not in OOD_SCORES:
        raise AscaError(f"unknown open-set score {kind!r}: choose {', '.join(OOD_SCORES)}")
    if activation not in ACTIVATIONS:
        raise AscaError(f"unknown activation {activation!r}: choose sigmoid or softmax")
    x = np.asarray(logits, dtype=np.float64)
    single = x.ndim == 1
    if single:
        x = x[None]
    if x.ndim != 2 or x.shape[1] == 0:
        raise AscaError(f"logits must be (B, K) with K >= 1, got shape {np.asarray(logits).shape}")
    if not np.isfinite(x).all():
        raise AscaError("the logits hold NaN or infinite values")
    if kind == "energy":
        score = -_logsumexp(x) if activation == "softmax" else -_softplus(x).sum(axis=1)
    elif kind == "max_logit":
        score = -x.max(axis=1)
    elif activation == "softmax":
        score = -np.exp(x - _logsumexp(x)[:, None]).max(axis=1)
    else:
        score = -np.exp(-_softplus(-x.max(axis=1)))  # -sigmoid(max), without overflow for large |logits|
    return score[0] if single else score


@dataclass
class OpenSet:
    """An OOD score and the threshold above which a window is "none of these"."""

    score: str
    threshold: float
    known_rate: float
    checkpoint_sha: str | None
    labels: list[str]
    activation: str = "softmax"
    checkpoint: str = "best"
    clips: int = 0  # validation clips the threshold was calibrated on
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.score not in OOD_SCORES:
            raise AscaError(f"unknown open-set score {self.score!r}: choose {', '.join(OOD_SCORES)}")
        if self.activation not in ACTIVATIONS:
            raise AscaError(f"unknown activation {self.activation!r}: choose sigmoid or softmax")
        if not math.isfinite(float(self.threshold)):
            raise AscaError(f"the open-set threshold must be a finite number, got {self.threshold}")
        _check_known_rate(self.known_rate)

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """:func:`unknown_score` of ``logits`` with this calibration's score. Shapes: (B, K) -> (B,)."""
        return unknown_score(logits, self.score, self.activation)

    def is_unknown(self, logits: np.ndarray) -> np.ndarray:
        """True where a window scores above the threshold. Shapes: (B, K) -> (B,) bool."""
        return np.asarray(self.scores(logits) > self.threshold)

    def to_dict(self) -> dict[str, Any]:
        from .train.runstore import now_iso

        return {
            "format": OPENSET_FORMAT,
            "created": self.meta.get("created") or now_iso(),
            "score": self.score,
            "threshold": float(self.threshold),
            "known_rate": float(self.known_rate),
            "activation": self.activation,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha,
            "clips": int(self.clips),
            "labels": list(self.labels),
            **{k: v for k, v in self.meta.items() if k not in ("created",)},
        }


def _check_known_rate(value: float) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0.0 < float(value) <= 1.0):
        raise AscaError(f"--known-rate must be in (0, 1], got {value}")


def threshold_for(scores: np.ndarray, known_rate: float) -> float:
    """The smallest threshold that keeps at least ``known_rate`` of ``scores`` as known (<= it).

    Shapes: scores (N,) -> scalar.
    """
    _check_known_rate(known_rate)
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if s.size == 0:
        raise AscaError("no validation clips to calibrate the open-set threshold on")
    keep = max(1, math.ceil(float(known_rate) * s.size - 1e-9))
    return float(s[keep - 1])


def validation_logits(run_dir: str | Path, checkpoint: str = "best") -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Logits and targets of the run's validation clips, prepared as evaluation prepares them.

    Returns ``(logits (N, K), targets (N, K), labels, activation)``; DatasetError when the run's
    dataset cannot be read here.
    """
    from dataclasses import replace

    import torch
    from torch.utils.data import DataLoader

    from . import scores
    from .data import ClipDataset
    from .errors import DatasetError
    from .features import FeatureExtractor
    from .train.checkpoint import load_model_from_run
    from .train.data import _collate, make_cache, prepare_data

    model, cfg, labels = load_model_from_run(run_dir, checkpoint, "cpu")
    activation = scores.activation(cfg.train.loss)
    bundle = prepare_data(cfg)
    unknown = sorted(set(bundle.labels) - set(labels))
    if unknown:
        raise DatasetError(f"{cfg.data.path} has classes the run was not trained on: {', '.join(unknown[:5])}")
    items = bundle.splits.get("val") or []
    if not items:
        k = len(labels)
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.float32), labels, activation
    index = replace(bundle.index, classes=list(labels))
    dataset = ClipDataset(index, items, cfg.features, make_cache(cfg), train=False)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=False, collate_fn=_collate)
    features = FeatureExtractor(cfg.features).eval()
    out, targets = [], []
    with torch.no_grad():
        for wave, target in loader:
            out.append(model(features(wave)).float())
            targets.append(target)
    logits = torch.cat(out).numpy()
    if not np.isfinite(logits).all():
        raise AscaError(f"{run_dir}: the model gave NaN or infinite logits on its validation clips")
    return logits, torch.cat(targets).numpy(), labels, activation


def calibrate_openset(
    run_dir: str | Path,
    checkpoint: str = "best",
    score: str = DEFAULT_SCORE,
    known_rate: float = DEFAULT_KNOWN_RATE,
    write: bool = True,
) -> OpenSet:
    """Calibrate "none of these" on the run's validation split and store it as RUN/openset.json.

    The threshold keeps ``known_rate`` of the validation clips (all of known classes) as known.
    """
    from .tables import _checkpoint_sha
    from .train.runstore import atomic_write_json

    if score not in OOD_SCORES:
        raise AscaError(f"unknown open-set score {score!r}: choose {', '.join(OOD_SCORES)}")
    _check_known_rate(known_rate)
    logits, _, labels, activation = validation_logits(run_dir, checkpoint)
    if logits.shape[0] == 0:
        raise AscaError(f"{run_dir} has no validation clips to calibrate the open-set threshold on")
    values = unknown_score(logits, score, activation)
    openset = OpenSet(
        score=score,
        threshold=threshold_for(values, known_rate),
        known_rate=float(known_rate),
        checkpoint_sha=_checkpoint_sha(run_dir, checkpoint),
        labels=list(labels),
        activation=activation,
        checkpoint=checkpoint,
        clips=int(logits.shape[0]),
        meta={
            "split": "val",
            "validation_score_quantiles": {
                q: float(np.quantile(values, float(q))) for q in ("0.05", "0.5", "0.95", "1.0")
            },
        },
    )
    if write and Path(run_dir).is_dir():
        try:
            atomic_write_json(Path(run_dir) / OPENSET_FILE, openset.to_dict())
        except OSError as exc:
            raise AscaError(f"cannot write {Path(run_dir) / OPENSET_FILE}: {exc.strerror or exc}") from None
    return openset


def read_openset(path: str | Path) -> OpenSet:
    """An :class:`OpenSet` from a JSON file; CheckpointError naming the file when it is unusable."""
    from .fileio import read_json

    path = Path(path)
    record = read_json(path, dict)
    if record.get("format") != OPENSET_FORMAT:
        raise CheckpointError(f"{path} is not an open-set calibration (format {record.get('format')!r})")
    labels = record.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise CheckpointError(f"{path}: 'labels' must be a non-empty list of class names")
    threshold = record.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise CheckpointError(f"{path}: 'threshold' must be a finite number, got {threshold!r}")
    sha = record.get("checkpoint_sha256")
    if sha is not None and not isinstance(sha, str):
        raise CheckpointError(f"{path}: 'checkpoint_sha256' must be a string or null")
    clips = record.get("clips", 0)
    if isinstance(clips, bool) or not isinstance(clips, int) or clips < 0:
        raise CheckpointError(f"{path}: 'clips' must be a non-negative integer, got {clips!r}")
    checkpoint = record.get("checkpoint", "best")
    if not isinstance(checkpoint, str):
        raise CheckpointError(f"{path}: 'checkpoint' must be a string")
    known = {"format", "score", "threshold", "known_rate", "activation", "checkpoint", "checkpoint_sha256", "clips"}
    try:
        return OpenSet(
            score=str(record.get("score")),
            threshold=float(threshold),
            known_rate=record.get("known_rate"),  # validated by OpenSet
            checkpoint_sha=sha,
            labels=list(labels),
            activation=str(record.get("activation")),
            checkpoint=checkpoint,
            clips=clips,
            meta={k: v for k, v in record.items() if k not in known and k != "labels"},
        )
    except AscaError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_openset(run_dir: str | Path, checkpoint: str | None = None, labels: list[str] | None = None) -> OpenSet | None:
    """The run's stored calibration, or None when it has none or it is stale.

    A damaged file raises CheckpointError naming it. A calibration of another checkpoint version
    (SHA-256 differs from ``checkpoint``'s, default the one it was calibrated on) returns None
    with a :class:`StaleOpenSetWarning`. With ``labels``, a calibration of other classes is an
    error.
    """
    from .tables import _checkpoint_sha

    run_dir = Path(run_dir)
    path = run_dir / OPENSET_FILE
    if not run_dir.is_dir():
        return None
    try:
        openset = read_openset(path)
    except FileNotFoundError:
        return None
    if labels is not None and list(labels) != openset.labels:
        raise CheckpointError(f"{path} was calibrated for other classes than the run's model")
    current = _checkpoint_sha(run_dir, checkpoint or openset.checkpoint)
    if openset.checkpoint_sha is not None and current != openset.checkpoint_sha:
        warnings.warn(
            f"{path} was calibrated for another version of the {checkpoint or openset.checkpoint} "
            f"checkpoint: not used (run asca openset {run_dir} again)",
            StaleOpenSetWarning,
            stacklevel=2,
        )
        return None
    return openset


__all__ = [
    "DEFAULT_KNOWN_RATE",
    "DEFAULT_SCORE",
    "NONE_LABEL",
    "OOD_SCORES",
    "OPENSET_FILE",
    "OpenSet",
    "StaleOpenSetWarning",
    "calibrate_openset",
    "load_openset",
    "read_openset",
    "threshold_for",
    "unknown_score",
    "validation_logits",
]
