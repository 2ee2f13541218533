"""Detections and the tables reviewers open: per-class thresholds, Raven Pro, Audacity, CSV, JSON.

A detection is a stretch of a recording where a class scores at or above its threshold:
overlapping (or touching) windows above the threshold merge into one detection whose score is
their maximum. Thresholds are chosen per class on the run's validation split for a precision
target and stored in the run as ``thresholds.json``::

    record = compute_thresholds("runs/demo", precision=0.9)      # also written to RUN/thresholds.json
    found = detections(pred, thresholds_by_label(record))
    write_raven("out/dawn.selections.txt", found, low_hz=50, high_hz=8000)
    write_audacity("out/dawn.labels.txt", found)

Raven Pro selection tables are tab-separated with the columns Raven reads (``Selection``,
``View``, ``Channel``, ``Begin Time (s)``, ``End Time (s)``, ``Low Freq (Hz)``,
``High Freq (Hz)``) plus ``Label`` and ``Score``; Audacity label tracks are
``start<TAB>end<TAB>label`` lines.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AscaError, DatasetError

THRESHOLDS_FILE = "thresholds.json"
THRESHOLDS_FORMAT = "asca-thresholds/1"
DEFAULT_PRECISION = 0.9
FALLBACK_THRESHOLD = 0.5  # a class the validation split cannot calibrate (no positives, or no data)
RAVEN_COLUMNS = (
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Label",
    "Score",
)
DETECTION_COLUMNS = ("file", "start", "end", "label", "score")


@dataclass(frozen=True)
class Detection:
    """One class heard from ``start`` to ``end`` seconds of ``source``, with its best window score."""

    source: str
    start: float
    end: float
    label: str
    score: float


# ----------------------------------------------------------------------------- thresholds
def choose_threshold(scores: np.ndarray, positive: np.ndarray, precision: float) -> dict[str, Any]:
    """The lowest score threshold whose precision on ``(scores, positive)`` meets ``precision``.

    The lowest such threshold keeps the most recall. When no threshold reaches the target, the
    one with the best precision (then recall) is kept and ``reached`` is False; with no positives
    the fallback threshold is used.

    Shapes: scores (N,), positive (N,) bool.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return {
            "threshold": FALLBACK_THRESHOLD,
            "precision": None,
            "recall": None,
            "positives": 0,
            "reached": False,
            "source": "fallback: no validation positives",
        }
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order]
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last = np.r_[s[1:] != s[:-1], True]  # a threshold takes every clip with an equal score
    prec, rec = (tp / (tp + fp))[last], (tp / n_pos)[last]
    cut = s[last]
    ok = np.nonzero(prec >= precision)[0]
    reached = ok.size > 0
    i = int(ok[-1]) if reached else int(np.lexsort((-rec, -prec))[0])
    return {
        "threshold": float(cut[i]),
        "precision": float(prec[i]),
        "recall": float(rec[i]),
        "positives": n_pos,
        "reached": bool(reached),
        "source": "validation",
    }


def validation_scores(run_dir: str | Path, checkpoint: str = "best") -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Probabilities and targets of the run's validation clips, scored as evaluation scores them.

    Returns ``(probs (N, K), targets (N, K), labels, N)``; DatasetError when the run's dataset
    cannot be read here.
    """
    from dataclasses import replace as dc_replace

    from torch.utils.data import DataLoader

    from .data import ClipDataset
    from .features import FeatureExtractor
    from .train.checkpoint import load_model_from_run
    from .train.data import _collate, make_cache, prepare_data
    from .train.evaluation import predict

    model, cfg, labels = load_model_from_run(run_dir, checkpoint, "cpu")
    bundle = prepare_data(cfg)
    unknown = sorted(set(bundle.labels) - set(labels))
    if unknown:
        raise DatasetError(f"{cfg.data.path} has classes the run was not trained on: {', '.join(unknown[:5])}")
    items = bundle.splits.get("val") or []
    if not items:
        return np.zeros((0, len(labels))), np.zeros((0, len(labels))), labels, 0
    index = dc_replace(bundle.index, classes=list(labels))
    dataset = ClipDataset(index, items, cfg.features, make_cache(cfg), train=False)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=False, collate_fn=_collate)
    probs, targets, _ = predict(
        model, FeatureExtractor(cfg.features).eval(), loader, next(model.parameters()).device, "off", cfg.train.loss
    )
    return probs, targets, labels, len(items)


def compute_thresholds(
    run_dir: str | Path, precision: float = DEFAULT_PRECISION, checkpoint: str = "best", write: bool = True
) -> dict[str, Any]:
    """Per-class thresholds for ``precision`` on the run's validation split; stored in the run.

    Classes without validation positives get :data:`FALLBACK_THRESHOLD`.
    """
    from .train.runstore import atomic_write_json, now_iso

    if not (0.0 < float(precision) <= 1.0):
        raise AscaError(f"--precision must be in (0, 1], got {precision}")
    probs, targets, labels, n = validation_scores(run_dir, checkpoint)
    classes = {
        name: choose_threshold(probs[:, k], targets[:, k] > 0.5, float(precision)) for k, name in enumerate(labels)
    }
    record = {
        "format": THRESHOLDS_FORMAT,
        "created": now_iso(),
        "precision_target": float(precision),
        "split": "val",
        "clips": n,
        "checkpoint": checkpoint,
        "checkpoint_sha256": _checkpoint_sha(run_dir, checkpoint),
        "fallback": FALLBACK_THRESHOLD,
        "classes": classes,
    }
    if write and Path(run_dir).is_dir():
        atomic_write_json(Path(run_dir) / THRESHOLDS_FILE, record)
    return record


def fallback_thresholds(labels: Sequence[str], reason: str, value: float = FALLBACK_THRESHOLD) -> dict[str, Any]:
    """A record giving every class ``value``, saying why."""
    return {
        "format": THRESHOLDS_FORMAT,
        "precision_target": None,
        "split": None,
        "clips": 0,
        "fallback": value,
        "note": reason,
        "classes": {
            name: {
                "threshold": value,
                "precision": None,
                "recall": None,
                "positives": None,
                "reached": False,
                "source": f"fallback: {reason}",
            }
            for name in labels
        },
    }


def _checkpoint_sha(run_dir: str | Path, checkpoint: str) -> str | None:
    from .export import file_digest

    path = Path(run_dir)
    path = path / "checkpoints" / f"{checkpoint}.safetensors" if path.is_dir() else path
    return file_digest(path) if path.is_file() else None


def load_thresholds(path: str | Path, labels: Sequence[str]) -> dict[str, Any]:
    """A stored thresholds record, checked against ``labels`` (CheckpointError when unusable)."""
    from .errors import CheckpointError
    from .fileio import read_json

    record = read_json(path, dict)
    classes = record.get("classes")
    if record.get("format") != THRESHOLDS_FORMAT or not isinstance(classes, dict):
        raise CheckpointError(f"{path} is not a thresholds record (format {record.get('format')!r})")
    if sorted(classes) != sorted(labels):
        raise CheckpointError(f"{path} names other classes than the model's")
    for name, entry in classes.items():
        value = entry.get("threshold") if isinstance(entry, dict) else None
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise CheckpointError(f"{path}: the threshold of {name!r} is not a number in [0, 1]")
    return record


def run_thresholds(
    run_dir: str | Path, compute: bool = True, checkpoint: str = "best", precision: float = DEFAULT_PRECISION
) -> dict[str, Any]:
    """The run's stored thresholds; computed on its validation split (and stored) when it has
    none or they belong to another checkpoint; every class at the fallback when its data is
    gone."""
    from .train.runstore import RunStore

    run_dir = Path(run_dir)
    labels = RunStore(run_dir).labels() if run_dir.is_dir() else _checkpoint_labels(run_dir)
    path = run_dir / THRESHOLDS_FILE
    if run_dir.is_dir() and path.is_file():
        record = load_thresholds(path, labels)
        if record.get("checkpoint_sha256") in (None, _checkpoint_sha(run_dir, checkpoint)):
            return record
    if not compute:
        return fallback_thresholds(labels, "the run has no thresholds.json")
    try:
        return compute_thresholds(run_dir, precision, checkpoint)
    except DatasetError as exc:
        return fallback_thresholds(labels, f"validation data unavailable ({exc})")


def _checkpoint_labels(path: Path) -> list[str]:
    from .train.runstore import checkpoint_labels

    return checkpoint_labels(path)


def thresholds_by_label(record: Mapping[str, Any]) -> dict[str, float]:
    """``{label: threshold}`` of a thresholds record."""
    return {name: float(entry["threshold"]) for name, entry in record["classes"].items()}


def thresholds_table(record: Mapping[str, Any]) -> str:
    """Plain-text table of a thresholds record, one class per line."""
    rows = [("class", "threshold", "precision", "recall", "positives", "source")]
    for name, e in record["classes"].items():
        rows.append(
            (
                name,
                f"{e['threshold']:.3f}",
                _num(e.get("precision")),
                _num(e.get("recall")),
                "-" if e.get("positives") is None else str(e["positives"]),
                e.get("source", "")
                + ("" if e.get("reached", True) or e.get("positives") in (0, None) else ", target not reached"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


# ----------------------------------------------------------------------------- detections
def detections(pred: Any, thresholds: Mapping[str, float]) -> list[Detection]:
    """Detections of a :class:`~asca_core.inference.Prediction` at per-class ``thresholds``.

    Overlapping or touching windows of one class at or above its threshold merge into one
    detection (its score: their maximum). Sorted by start, then label.
    """
    table = pred.timeline_array()  # (N, K)
    found: list[Detection] = []
    for k, label in enumerate(pred.labels):
        limit = float(thresholds.get(label, FALLBACK_THRESHOLD))
        current: Detection | None = None
        for w, p in zip(pred.timeline, table[:, k]):
            if p < limit:
                continue
            if current is not None and w.start <= current.end + 1e-9:
                current = replace(current, end=max(current.end, w.end), score=max(current.score, float(p)))
                continue
            if current is not None:
                found.append(current)
            current = Detection(pred.source, float(w.start), float(w.end), label, float(p))
        if current is not None:
            found.append(current)
    return sorted(found, key=lambda d: (d.start, d.label))


def raven_text(found: Iterable[Detection], low_hz: float, high_hz: float) -> str:
    """A Raven Pro selection table (tab-separated, one row per detection, numbered from 1)."""
    lines = ["\t".join(RAVEN_COLUMNS)]
    for i, d in enumerate(found, start=1):
        lines.append(
            "\t".join(
                [
                    str(i),
                    "Spectrogram 1",
                    "1",
                    f"{d.start:.4f}",
                    f"{d.end:.4f}",
                    f"{low_hz:.1f}",
                    f"{high_hz:.1f}",
                    _clean(d.label),
                    f"{d.score:.4f}",
                ]
            )
        )
    return "\n".join(lines) + "\n"


def audacity_text(found: Iterable[Detection]) -> str:
    """An Audacity label track: ``start<TAB>end<TAB>label`` per detection."""
    return "".join(f"{d.start:.6f}\t{d.end:.6f}\t{_clean(d.label)}\n" for d in found)


def _clean(label: str) -> str:
    return " ".join(label.replace("\t", " ").split())  # tabs and newlines would break the table


def write_raven(path: str | Path, found: Iterable[Detection], low_hz: float, high_hz: float) -> Path:
    """Write :func:`raven_text` to ``path`` atomically."""
    return _write(path, raven_text(found, low_hz, high_hz))


def write_audacity(path: str | Path, found: Iterable[Detection]) -> Path:
    """Write :func:`audacity_text` to ``path`` atomically."""
    return _write(path, audacity_text(found))


def write_detections(path: str | Path, found: Iterable[Detection]) -> Path:
    """All detections as CSV (``file,start,end,label,score``) or, for a ``.json`` path, JSON."""
    path = Path(path)
    rows = list(found)
    if path.suffix.lower() == ".json":
        items = [
            {
                "file": d.source,
                "start": round(d.start, 4),
                "end": round(d.end, 4),
                "label": d.label,
                "score": round(d.score, 6),
            }
            for d in rows
        ]
        return _write(path, json.dumps({"detections": items}, indent=1) + "\n")
    return _write(path, detections_csv(rows))


def detections_csv(found: Iterable[Detection]) -> str:
    """Detections as CSV text with the columns ``file,start,end,label,score``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(DETECTION_COLUMNS)
    for d in found:
        writer.writerow([d.source, f"{d.start:.4f}", f"{d.end:.4f}", d.label, f"{d.score:.6f}"])
    return buffer.getvalue()


def _write(path: str | Path, text: str) -> Path:
    from .train.runstore import atomic_write_text

    path = Path(path)
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise AscaError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


__all__ = [
    "DEFAULT_PRECISION",
    "FALLBACK_THRESHOLD",
    "RAVEN_COLUMNS",
    "THRESHOLDS_FILE",
    "Detection",
    "audacity_text",
    "choose_threshold",
    "compute_thresholds",
    "detections",
    "detections_csv",
    "fallback_thresholds",
    "load_thresholds",
    "raven_text",
    "run_thresholds",
    "thresholds_by_label",
    "thresholds_table",
    "write_audacity",
    "write_detections",
    "write_raven",
]
