"""Review to retrain: detections in long recordings, a manifest of decisions, a retrained run.

The loop::

    found = find_candidates(clf, ["site1.wav"], rank="uncertainty", limit=50)
    write_manifest("recs/review.csv", [ReviewRow.pending(c) for c in found])
    # ... a person (or the Review page) fills in the decisions ...
    rows = read_manifest("recs/review.csv")
    load_dataset("recs/review.csv")                      # the kept spans, as a dataset
    new_run = start_retrain("runs/demo", "recs/review.csv", budget="3m")
    compare_table(compare_runs("runs/demo", new_run))    # before/after on the parent's test set

**The manifest** is a UTF-8 CSV with the header ``file,start,end,label,decision`` (optional
``predicted`` and ``score`` columns; any other column is kept in ``Clip.meta``). ``file`` is
relative to the manifest's folder (or absolute, but inside it); ``start`` < ``end`` are seconds in
the recording; ``decision`` is ``accept`` (the span is ``label``), ``reject`` (it is not),
``relabel`` (it is ``label``, a name the run may not know: a new class) or empty (not reviewed
yet). Read as a dataset, accepted and relabelled spans are clips of their label; rejected and
pending rows are left out.

A manifest written by :func:`retrain_dataset` also has a ``split`` column and rows with empty
``start`` and ``end`` (a whole file, always ``accept``), and a ``dataset.json`` beside it that
names the folders its files may lie in (the parent run's dataset and the reviewed recordings).
"""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AscaError, CheckpointError, DatasetError

MANIFEST_COLUMNS = ("file", "start", "end", "label", "decision")
OPTIONAL_COLUMNS = ("predicted", "score")
DECISIONS = ("accept", "reject", "relabel")
PENDING = ""
KEPT = ("accept", "relabel")  # decisions whose span becomes a training clip
RANKS = ("confidence", "uncertainty", "unknown")
SOURCES_FILE = "dataset.json"  # beside a combined manifest: the folders its files may lie in
SOURCES_FORMAT = "asca-review-dataset/1"
REVIEW_FILE = "review.json"
COMBINED_NAME = "manifest.csv"


# ------------------------------------------------------------------------------ candidates


@dataclass
class Candidate:
    """One span of a recording worth a listen: what the model heard there and how sure it is.

    ``score`` is the probability of ``label`` (the best over the span's windows); ``uncertainty``
    is 1 minus the margin between the two best class probabilities of that window (1: a tie);
    ``unknown`` the open-set score (higher: less like any trained class; ``1 - max prob`` when the
    run has no open-set calibration), the highest over the span's windows.
    """

    file: str
    start: float
    end: float
    label: str
    score: float
    uncertainty: float
    unknown: float | None
    probs: dict[str, float]


def _window_unknown(clf: Any, w: Any) -> float:
    if w.unknown_score is not None and getattr(clf, "openset", None) is not None:
        return float(w.unknown_score)
    return float(1.0 - float(np.max(w.probs)))


def _margin_uncertainty(probs: np.ndarray) -> float:
    if probs.size < 2:
        return 0.0
    top = np.sort(probs)[::-1]
    return float(1.0 - (top[0] - top[1]))


def find_candidates(
    clf: Any,
    files: Sequence[str | Path],
    *,
    window: float | None = None,
    hop: float | None = None,
    rank: str = "confidence",
    threshold: float | None = None,
    limit: int | None = None,
) -> list[Candidate]:
    """Spans of ``files`` for review, best first.

    Detections: windows whose best class reaches its threshold (``threshold``, or the run's
    per-class thresholds from :func:`asca_core.tables.run_thresholds`), adjacent or overlapping
    windows of one label merged into one span. ``rank="confidence"`` returns the detections, most
    probable first; ``"uncertainty"`` and ``"unknown"`` add every window outside a detection as a
    span of its own (these are where the model is unsure or hears none of its classes), ranked
    by ``uncertainty`` or ``unknown`` (highest first). ``unknown`` uses the run's open-set
    calibration (:mod:`asca_core.openset`) and ``1 - max prob`` without one. A file that cannot
    be read raises :class:`AudioError`/:class:`AscaError` naming it.
    """
    if rank not in RANKS:
        raise AscaError(f"rank must be {', '.join(RANKS)}, got {rank!r}")
    if threshold is not None and not (math.isfinite(float(threshold)) and 0.0 <= float(threshold) <= 1.0):
        raise AscaError(f"threshold must be a probability between 0 and 1, got {threshold}")
    if limit is not None and int(limit) < 1:
        raise AscaError(f"limit must be at least 1, got {limit}")
    labels = list(clf.labels)
    limits = _thresholds(clf, labels, threshold)
    found: list[Candidate] = []
    for source, result in clf.predict_many([str(f) for f in files], window=window, hop=hop):
        if isinstance(result, AscaError):
            raise result
        found.extend(_spans(clf, str(source), result, labels, limits, extra=rank != "confidence"))
    key = {
        "confidence": lambda c: (-c.score, c.file, c.start),
        "uncertainty": lambda c: (-c.uncertainty, c.file, c.start),
        "unknown": lambda c: (-(c.unknown if c.unknown is not None else 0.0), c.file, c.start),
    }[rank]
    found.sort(key=key)
    return found[: int(limit)] if limit is not None else found


def _thresholds(clf: Any, labels: list[str], threshold: float | None) -> dict[str, float]:
    if threshold is not None:
        return dict.fromkeys(labels, float(threshold))
    from .tables import FALLBACK_THRESHOLD, run_thresholds, thresholds_by_label

    run_dir = getattr(clf, "run_dir", None)
    if run_dir is None:
        return dict.fromkeys(labels, FALLBACK_THRESHOLD)
    by_label = thresholds_by_label(run_thresholds(run_dir))
    return {label: float(by_label.get(label, FALLBACK_THRESHOLD)) for label in labels}


def _spans(
    clf: Any, source: str, pred: Any, labels: list[str], limits: dict[str, float], extra: bool
) -> list[Candidate]:
    out: list[Candidate] = []
    current: dict[str, Any] | None = None

    def close() -> None:
        if current is not None:
            out.append(_candidate(source, current, labels))

    for w in pred.timeline:
        probs = np.asarray(w.probs, dtype=np.float64)
        k = int(np.argmax(probs))
        label = labels[k]
        start, end = max(0.0, float(w.start)), float(w.end)
        hit = probs[k] >= limits[label]
        if hit and current is not None and current["label"] == label and start <= current["end"] + 1e-9:
            current["end"] = max(current["end"], end)
            current["unknown"] = max(current["unknown"], _window_unknown(clf, w))
            if probs[k] > current["probs"][k]:
                current["probs"] = probs
            continue
        close()
        current = None
        if hit:
            current = {"label": label, "start": start, "end": end, "probs": probs, "unknown": _window_unknown(clf, w)}
        elif extra:
            one = {"label": label, "start": start, "end": end, "probs": probs, "unknown": _window_unknown(clf, w)}
            out.append(_candidate(source, one, labels))
    close()
    return out


def _candidate(source: str, span: dict[str, Any], labels: list[str]) -> Candidate:
    probs = span["probs"]
    return Candidate(
        file=source,
        start=round(float(span["start"]), 3),
        end=round(float(span["end"]), 3),
        label=span["label"],
        score=float(probs[labels.index(span["label"])]),
        uncertainty=_margin_uncertainty(probs),
        unknown=float(span["unknown"]),
        probs={name: float(p) for name, p in zip(labels, probs)},
    )


# -------------------------------------------------------------------------------- manifest


@dataclass
class ReviewRow:
    """One reviewed (or still pending) span. ``file`` is an absolute path once read."""

    file: str
    start: float
    end: float
    label: str
    decision: str = PENDING
    predicted: str = ""
    score: float | None = None
    meta: dict[str, str] = field(default_factory=dict)  # any other columns, as read

    @classmethod
    def pending(cls, c: Candidate) -> ReviewRow:
        """A row awaiting review for candidate ``c`` (its label: the prediction)."""
        return cls(file=str(c.file), start=c.start, end=c.end, label=c.label, predicted=c.label, score=c.score)

    @property
    def kept(self) -> bool:
        return self.decision in KEPT

    def key(self) -> tuple[str, float, float]:
        return (os.path.realpath(self.file), round(float(self.start), 3), round(float(self.end), 3))


def _number(csv_path: Path, line: int, column: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not math.isfinite(number):
        raise DatasetError(f"{csv_path}: line {line}: {column} must be a number of seconds, got {value!r}")
    return number


def _roots(csv_path: Path, root: str | Path | None) -> list[Path]:
    """The folders a manifest's files may lie in: ``root`` (default its folder), plus the sources a
    combined manifest's ``dataset.json`` names."""
    roots = [Path(root).expanduser().resolve() if root is not None else csv_path.parent.resolve()]
    sources = csv_path.parent / SOURCES_FILE
    if root is None and sources.is_file():
        from .fileio import read_json

        record = read_json(sources, error=DatasetError)
        named = record.get("roots")
        if record.get("format") != SOURCES_FORMAT or not isinstance(named, list):
            raise DatasetError(f"{sources}: not a combined review dataset record ({SOURCES_FORMAT} with roots)")
        for item in named:
            if not isinstance(item, str) or not item:
                raise DatasetError(f"{sources}: roots must be folder names")
            roots.append(Path(item))
    return roots


def _resolve_file(csv_path: Path, line: int, name: str, roots: list[Path]) -> Path:
    from .data.formats import OUTSIDE_ROOT, _resolve

    why = OUTSIDE_ROOT
    for i, root in enumerate(roots):
        base = roots[0] if i == 0 else root
        path, reason = _resolve(root, name, base=base)
        if path is not None:
            return path
        why = reason or why
    raise DatasetError(f"{csv_path}: line {line}: {name} is {why} ({roots[0]})")


def read_manifest(path: str | Path, root: str | Path | None = None) -> list[ReviewRow]:
    """Every row of the review manifest ``path``, validated; files made absolute.

    Paths are relative to the manifest's folder (or ``root``) and must stay inside it, also
    through symlinks. A malformed file, a bad number, ``start >= end``, an unknown decision or an
    empty label on an ``accept``/``relabel`` row raises one :class:`DatasetError` naming the file
    and line. (Rows with empty ``start`` and ``end`` mean the whole file; they must be accepted.)
    """
    from .data.formats import _read_table

    csv_path = Path(path).expanduser()
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: no such review manifest")
    header, rows = _read_table(csv_path, MANIFEST_COLUMNS)
    roots = _roots(csv_path, root)
    out: list[ReviewRow] = []
    for line, row in rows:
        name = row["file"]
        if not name:
            raise DatasetError(f"{csv_path}: line {line}: empty file")
        decision = row["decision"].lower()
        if decision not in (*DECISIONS, PENDING):
            raise DatasetError(
                f"{csv_path}: line {line}: unknown decision {row['decision']!r} "
                f"(use {', '.join(DECISIONS)} or leave it empty)"
            )
        label = row["label"]
        if decision in KEPT and not label:
            raise DatasetError(f"{csv_path}: line {line}: {decision} needs a label")
        if not row["start"] and not row["end"]:
            if decision != "accept":
                raise DatasetError(f"{csv_path}: line {line}: a whole-file row (no start, no end) must be accepted")
            start, end = 0.0, math.inf
        else:
            start = _number(csv_path, line, "start", row["start"])
            end = _number(csv_path, line, "end", row["end"])
            if not 0.0 <= start < end:
                raise DatasetError(
                    f"{csv_path}: line {line}: the span must have 0 <= start < end, got {start:g}-{end:g}"
                )
        score = None
        if row.get("score"):
            score = _number(csv_path, line, "score", row["score"])
        file = _resolve_file(csv_path, line, name, roots)
        meta = {k: v for k, v in row.items() if k not in (*MANIFEST_COLUMNS, *OPTIONAL_COLUMNS)}
        meta["line"] = str(line)
        out.append(ReviewRow(str(file), start, end, label, decision, row.get("predicted", ""), score, meta))
    del header
    return out


def _fmt_time(value: float) -> str:
    return "" if math.isinf(value) else f"{value:.3f}"


def write_manifest(path: str | Path, rows: Iterable[ReviewRow], root: str | Path | None = None) -> Path:
    """Write ``rows`` to the review manifest ``path`` (atomically), merged with what it holds.

    A span already in the manifest keeps its saved decision and label unless the new row carries
    a decision of its own (a pending row never undoes a review); spans only in the old file stay.
    Files are written relative to the manifest's folder (or ``root``), which must hold them.
    """
    from .train.runstore import atomic_write_text

    csv_path = Path(path).expanduser()
    base = Path(root).expanduser().resolve() if root is not None else csv_path.parent.resolve()
    merged: dict[tuple[str, float, float], ReviewRow] = {}
    if csv_path.exists():
        for saved in read_manifest(csv_path, root):
            merged[saved.key()] = saved
    extra_columns: list[str] = []
    for row in rows:
        if row.decision not in (*DECISIONS, PENDING):
            raise DatasetError(f"unknown decision {row.decision!r} (use {', '.join(DECISIONS)} or leave it empty)")
        if row.kept and not row.label:
            raise DatasetError(f"{row.file}: {row.decision} needs a label")
        if not (0.0 <= float(row.start) < float(row.end)):
            raise DatasetError(f"{row.file}: the span must have 0 <= start < end, got {row.start}-{row.end}")
        key = row.key()
        prior = merged.get(key)
        if prior is not None and row.decision == PENDING and prior.decision != PENDING:
            merged[key] = replace(
                prior,
                predicted=row.predicted or prior.predicted,
                score=row.score if row.score is not None else prior.score,
            )
        else:
            merged[key] = row
    for row in merged.values():
        for k in row.meta:
            if k != "line" and k not in extra_columns:
                extra_columns.append(k)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*MANIFEST_COLUMNS, *OPTIONAL_COLUMNS, *extra_columns])
    for row in merged.values():
        real = Path(os.path.realpath(row.file))
        if real != base and base not in real.parents:
            raise DatasetError(f"{row.file} is outside {base}: save the manifest in a folder that holds the recordings")
        writer.writerow(
            [
                real.relative_to(base).as_posix(),
                _fmt_time(float(row.start)),
                _fmt_time(float(row.end)),
                row.label,
                row.decision,
                row.predicted,
                "" if row.score is None else f"{float(row.score):.4f}",
                *[row.meta.get(k, "") for k in extra_columns],
            ]
        )
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(csv_path, buf.getvalue())
    return csv_path


def is_review_header(columns: Sequence[str]) -> bool:
    """Whether a CSV header is a review manifest's."""
    return all(c in columns for c in MANIFEST_COLUMNS)


def load_review_index(path: str | Path) -> Any:
    """The kept spans of a review manifest as a :class:`~asca_core.data.formats.DatasetIndex`
    (format ``review``): accepted spans keep their label, relabelled ones take the new one;
    rejected and pending rows are left out. Multi-label ``a;b`` labels are allowed."""
    from .data.formats import Clip, _file_problem_review, _finish, _parse_fold, _parse_split, _split_labels

    csv_path = Path(path).expanduser()
    rows = read_manifest(csv_path)
    clips: list[Clip] = []
    problems: list[tuple[str, str]] = []
    seen: set[tuple[str, float, float]] = set()
    root = csv_path.parent.resolve()
    for row in rows:
        if not row.kept:
            continue
        line = int(row.meta.get("line", "0"))
        file = Path(row.file)
        shown = _shown(file, root)
        reason = _file_problem_review(file)
        if reason is not None:
            problems.append((shown, f"{reason} ({csv_path.name} line {line})"))
            continue
        key = row.key()
        if key in seen:
            problems.append(
                (shown, f"duplicate span {_fmt_time(row.start)}-{_fmt_time(row.end)} (line {line}); kept once")
            )
            continue
        seen.add(key)
        whole = math.isinf(row.end)
        meta = {k: v for k, v in row.meta.items() if k not in ("line", "split", "fold", "group")}
        meta["decision"] = row.decision
        if row.predicted:
            meta["predicted"] = row.predicted
        clips.append(
            Clip(
                path=file,
                labels=_split_labels(row.label),
                split=_parse_split(csv_path, line, row.meta.get("split", "")),
                fold=_parse_fold(csv_path, line, row.meta.get("fold", "")),
                group=row.meta.get("group") or None,
                meta=meta,
                start=None if whole else float(row.start),
                end=None if whole else float(row.end),
            )
        )
    if not clips:
        raise DatasetError(f"{csv_path}: no accepted or relabelled spans (rejected and pending rows are left out)")
    return _finish(root, "review", clips, problems, manifest=csv_path)


def _shown(file: Path, root: Path) -> str:
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return str(file)


# --------------------------------------------------------------------------------- cutting


def cut_clips(manifest: str | Path, out_dir: str | Path) -> Path:
    """One WAV per kept span of ``manifest`` plus ``labels.csv`` (filename,label): a plain dataset
    folder. Returns the ``labels.csv`` path."""
    import soundfile as sf

    from .audio import audio_info, load_audio
    from .fileio import output_folder
    from .train.runstore import atomic_write_text

    index = load_review_index(manifest)
    out = output_folder(out_dir, "--out")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["filename", "label", "source", "start", "end"])
    for n, clip in enumerate(index.clips, start=1):
        rate = audio_info(clip.path).sample_rate
        start = clip.start or 0.0
        duration = None if clip.end is None else clip.end - start
        wave = load_audio(clip.path, sample_rate=None, offset=start, duration=duration)
        label = ";".join(clip.labels)
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in clip.labels[0])
        name = f"{n:05d}-{safe}-{Path(clip.path).stem}-{start:.2f}.wav"
        try:
            sf.write(str(out / name), wave, rate, subtype="PCM_16")
        except (OSError, RuntimeError) as exc:
            raise DatasetError(f"{out / name}: cannot write ({exc})") from None
        end = "" if clip.end is None else f"{clip.end:.3f}"
        writer.writerow([name, label, _shown(Path(clip.path), index.root), f"{start:.3f}", end])
    labels_csv = out / "labels.csv"
    atomic_write_text(labels_csv, buf.getvalue())
    return labels_csv


# ------------------------------------------------------------------------------ retraining


def _run_config(run_dir: Path) -> Any:
    from .config import load_config

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a run (no config.yaml)")
    return load_config(path)


def retrain_dataset(run_dir: str | Path, manifest: str | Path, out_dir: str | Path) -> Path:
    """The parent run's dataset, split exactly as the run split it, plus the reviewed spans of
    ``manifest`` in its training part, written as ``OUT/manifest.csv`` (review format, with a
    ``split`` column) and ``OUT/dataset.json``. No audio is copied. Returns the manifest path.
    """
    from .fileio import output_folder
    from .train.data import prepare_data
    from .train.runstore import atomic_write_json, atomic_write_text

    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    review = load_review_index(manifest)
    bundle = prepare_data(cfg)
    split_of: dict[int, str] = {}
    for name in ("train", "val", "test"):
        for i in bundle.splits[name]:
            split_of[i] = name
    out = output_folder(out_dir, "--out")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*MANIFEST_COLUMNS, "split", "origin"])
    for i, clip in enumerate(bundle.index.clips):
        if i not in split_of:
            continue
        start = "" if clip.start is None else f"{clip.start:.3f}"
        end = "" if clip.end is None else f"{clip.end:.3f}"
        writer.writerow(
            [str(Path(clip.path).resolve()), start, end, ";".join(clip.labels), "accept", split_of[i], "data"]
        )
    for clip in review.clips:
        start = "" if clip.start is None else f"{clip.start:.3f}"
        end = "" if clip.end is None else f"{clip.end:.3f}"
        writer.writerow(
            [str(Path(clip.path).resolve()), start, end, ";".join(clip.labels), "accept", "train", "review"]
        )
    atomic_write_json(
        out / SOURCES_FILE,
        {
            "format": SOURCES_FORMAT,
            "roots": [str(Path(bundle.index.root).resolve()), str(review.root)],
            "parent_run": str(run_dir.resolve()),
            "review_manifest": str(Path(manifest).resolve()),
            "splits": {k: len(v) for k, v in bundle.splits.items()},
            "reviewed_spans": len(review.clips),
        },
    )
    path = out / COMBINED_NAME
    atomic_write_text(path, buf.getvalue())
    return path


def child_config(run_dir: str | Path, combined: str | Path, budget: str | float | None = "3m") -> Any:
    """The parent's config with the combined dataset: its split column decides the protocol."""
    from .train.recipe import parse_duration

    cfg = _run_config(Path(run_dir))
    for key, value in (
        ("data.path", str(Path(combined).resolve())),
        ("data.format", "auto"),
        ("data.test_fold", None),
        ("data.test_group", None),
        ("data.group_column", None),
        ("data.max_clips_per_class", None),
        ("data.classes", None),
    ):
        cfg = cfg.replace(key, value)
    if budget is not None:
        cfg = cfg.replace("train.budget_seconds", parse_duration(budget))
    return cfg


def start_retrain(
    run_dir: str | Path,
    manifest: str | Path,
    *,
    budget: str | float | None = "3m",
    runs_root: str | Path | None = None,
    background: bool = True,
) -> Path:
    """Train a new run on the parent's data plus the reviewed spans, with the parent's config.

    The new run folder goes under ``runs_root`` (default: the parent's folder); the combined
    dataset (:func:`retrain_dataset`) beside it in ``.<new run>.data/``, so the run folder stays
    a plain run. ``asca train --config requested.yaml --run-dir RUN`` runs as the
    app's trainings do (console in ``RUN/console.txt``, ``RUN/job.json``, one training at a time
    on the shared slot); ``job.json`` records ``parent_run`` and ``review_manifest``, and so does
    ``RUN/review.json`` once the trainer has made the run. ``background=False`` waits for the
    training to end (an error if it failed). Returns the new run folder.
    """
    from .train.runstore import (
        JOB_FILE,
        SLOT_ENV,
        atomic_write_json,
        new_run_dir,
        process_start_time,
    )
    from .utils import cache_dir

    parent = Path(run_dir).resolve()
    _run_config(parent)
    root = Path(runs_root) if runs_root is not None else parent.parent
    child = new_run_dir(f"{parent.name}-review", root).resolve()
    combined = retrain_dataset(parent, manifest, child.parent / f".{child.name}.data")
    cfg = child_config(parent, combined, budget)
    requested = child / "requested.yaml"
    cfg.to_yaml(requested)
    origin = {
        "parent_run": str(parent),
        "review_manifest": str(Path(manifest).resolve()),
        "review_dataset": str(combined),
    }
    cmd = [sys.executable, "-m", "asca_core.cli", "train", "--config", str(requested), "--run-dir", str(child)]
    if not background:
        cmd.append("--quiet")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault(SLOT_ENV, str(cache_dir() / "training.lock"))
    project = Path(__file__).resolve().parents[1]
    with open(child / "console.txt", "ab") as console:
        console.write(f"$ asca {' '.join(cmd[3:])}\n".encode())
        console.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=console,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(project),
            env=env,
            start_new_session=True,
        )
    job = {
        "pid": proc.pid,
        "start_time": process_start_time(proc.pid),
        "started_ts": time.time(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": cmd[1:],
        "preset": "review",
        "budget": budget,
        **origin,
    }
    atomic_write_json(child / JOB_FILE, job)
    if background:
        return child
    code = proc.wait()
    if (child / "config.yaml").is_file():
        atomic_write_json(child / REVIEW_FILE, origin)
    if code != 0:
        tail = (child / "console.txt").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise AscaError(f"retraining {child} failed (exit {code}): {tail[0]}")
    return child


def review_origin(run_dir: str | Path) -> dict[str, Any] | None:
    """``parent_run``, ``review_manifest`` and ``review_dataset`` of a run retrained from a
    review (from ``RUN/review.json`` or the launcher's ``RUN/job.json``), or None."""
    from .fileio import read_json

    run_dir = Path(run_dir)
    for name in (REVIEW_FILE, "job.json"):
        path = run_dir / name
        if path.is_file():
            record = read_json(path, error=CheckpointError)
            if isinstance(record.get("parent_run"), str):
                return {k: record.get(k) for k in ("parent_run", "review_manifest", "review_dataset")}
    return None


# ------------------------------------------------------------------------------ comparison


def _test_clips(before: Path, data: str | Path | None) -> tuple[Any, list[int], str]:
    from .data.formats import load_dataset
    from .train.data import prepare_data

    if data is not None:
        index = load_dataset(data)
        items = [i for i, c in enumerate(index.clips) if c.split == "test"] or list(range(len(index.clips)))
        return index, items, str(data)
    bundle = prepare_data(_run_config(before))
    items = bundle.splits["test"] or bundle.splits["val"]
    return bundle.index, items, f"the test split of {before.name}"


def _scores(run_dir: Path, index: Any, items: list[int], labels: list[str]) -> np.ndarray:
    """Probabilities of ``labels`` for each clip (0 for a class the run does not know)."""
    import torch
    from torch.utils.data import DataLoader

    from .data.dataset import ClipDataset
    from .inference import Classifier

    clf = Classifier.from_run(run_dir)
    dataset = ClipDataset(index, items, clf.cfg.features, cache=None, train=False)
    loader = DataLoader(dataset, batch_size=16, shuffle=False)
    rows = []
    with torch.no_grad():
        for wave, _target in loader:
            rows.append(clf.predict_windows(wave.numpy()))
    probs = np.concatenate(rows) if rows else np.zeros((0, len(clf.labels)))
    out = np.zeros((probs.shape[0], len(labels)))
    for j, name in enumerate(labels):
        if name in clf.labels:
            out[:, j] = probs[:, clf.labels.index(name)]
    return out


def _average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    if not positive.any():
        return None
    order = np.argsort(-scores, kind="stable")
    hits = positive[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float((precision * hits).sum() / hits.sum())


def compare_runs(before: str | Path, after: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Score ``before`` and ``after`` on one test set (the parent's test split, or ``data``: its
    ``test`` split, else all its clips) and return ``{"data", "n", "labels", "before", "after"}``
    with ``overall`` (``acc``, ``map``) and ``per_class`` (``n``, ``acc`` = recall: share of the
    class's clips whose best class is right, ``ap``) for each. A class one run was not trained on
    scores 0 there (it can never be its answer)."""
    before, after = Path(before), Path(after)
    index, items, source = _test_clips(before, data)
    if not items:
        raise DatasetError(f"{source} has no clips to compare on")
    from .train.runstore import RunStore

    run_labels = {r: RunStore(r).labels() for r in (before, after)}
    labels = list(dict.fromkeys([*run_labels[before], *run_labels[after]]))
    truth = [index.clips[i].labels for i in items]
    missing = sorted({t for ts in truth for t in ts} - set(labels))
    if missing:
        raise DatasetError(f"{source} has classes neither run knows: {', '.join(missing[:5])}")
    target = np.array([[name in ts for name in labels] for ts in truth])
    result: dict[str, Any] = {"data": source, "n": len(items), "labels": labels}
    for which, run in (("before", before), ("after", after)):
        scores = _scores(run, index, items, labels)
        known = np.array([name in run_labels[run] for name in labels])
        masked = np.where(known, scores, -np.inf)
        best = masked.argmax(axis=1)
        right = target[np.arange(len(items)), best]
        per_class = {}
        for j, name in enumerate(labels):
            rows = target[:, j]
            if not rows.any():
                continue
            per_class[name] = {
                "n": int(rows.sum()),
                "acc": float(right[rows].mean()),
                "ap": _average_precision(scores[:, j], rows),
            }
        aps = [v["ap"] for v in per_class.values() if v["ap"] is not None]
        result[which] = {
            "run": str(run),
            "overall": {"acc": float(right.mean()), "map": float(np.mean(aps)) if aps else None},
            "per_class": per_class,
        }
    return result


def compare_table(result: dict[str, Any]) -> str:
    """A Markdown table of :func:`compare_runs`: overall, then one row per class."""

    def num(v: Any) -> str:
        return "–" if v is None else f"{v:.3f}"

    b, a = result["before"], result["after"]
    lines = [
        f"Test set: {result['data']} ({result['n']} clips)",
        "",
        "| class | clips | acc before | acc after | AP before | AP after |",
        "|---|---:|---:|---:|---:|---:|",
        (
            f"| **all** | {result['n']} | {num(b['overall']['acc'])} | {num(a['overall']['acc'])} "
            f"| {num(b['overall']['map'])} | {num(a['overall']['map'])} |"
        ),
    ]
    for name, row in a["per_class"].items():
        old = b["per_class"].get(name, {})
        lines.append(
            f"| {name} | {row['n']} | {num(old.get('acc'))} | {num(row['acc'])} "
            f"| {num(old.get('ap'))} | {num(row['ap'])} |"
        )
    return "\n".join(lines) + "\n"
