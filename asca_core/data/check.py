"""Dataset health check: what a dataset holds and which files cannot be used, before training.

:func:`probe_file` reads a file's header, checks a WAV's data chunk against the file size (a
truncated WAV otherwise looks fine, since decoders stop quietly at the end of what is there) and
decodes a short span at the start (and, for compressed formats, at the end; float WAVs, which can
hold NaN or inf anywhere, are decoded whole). :func:`filter_readable`
applies it to an index; :func:`check_dataset` builds the full :class:`CheckReport` behind
``asca data check``.
"""

from __future__ import annotations

import statistics
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import soundfile as sf

from .. import audio as _audio
from ..errors import AscaError, AudioError, DatasetError
from .formats import FORMAT_NAMES, DatasetIndex, load_dataset
from .splits import make_splits, official_split_counts, resolve_protocol

_HEAD_SECONDS = 0.5  # decoded at the start of each file: catches non-audio behind a valid header
_TAIL_SECONDS = 0.25  # decoded at the end of compressed files: catches truncation
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # float WAVs are decoded whole: a NaN can sit anywhere
_SCAN_SECONDS = 60.0


def _reason(exc: AscaError, path: Path) -> str:
    """The error message without its leading ``<path>: `` (the report names the file already)."""
    text = str(exc)
    for prefix in (f"{path}: ", f"{path.name}: "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _wav_truncation(path: Path, size: int) -> str | None:
    """Compare a RIFF/WAVE data chunk's declared size with the bytes the file really holds."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None  # not RIFF/WAVE (e.g. RF64, or another format named .wav): decoder decides
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                available = size - (pos + 8)
                if chunk_size in (0, 0xFFFFFFFF):  # streaming writers leave the size open
                    return None
                if chunk_size > available:
                    share = 100.0 * available / chunk_size
                    return (
                        f"truncated: the header declares {chunk_size} bytes of audio, the file "
                        f"holds {available} ({share:.0f}%)"
                    )
                return None
            pos += 8 + chunk_size + (chunk_size & 1)
    return "truncated or corrupt: no data chunk before the end of the file"


def _probe(path: Path, deep: bool = True) -> tuple[_audio.AudioInfo | None, str | None]:
    path = Path(path)
    try:
        info = _audio.audio_info(path)
    except AudioError as exc:
        return None, _reason(exc, path)
    except OSError as exc:
        return None, f"cannot read ({exc.strerror})"
    try:
        if info.format == "WAV":
            problem = _wav_truncation(path, path.stat().st_size)
            if problem:
                return info, problem
        if deep:
            head = min(_HEAD_SECONDS, info.duration)
            _audio.load_audio(path, offset=0.0, duration=head, max_duration=None)
            if info.format == "WAV" and sf.info(str(path)).subtype in _FLOAT_SUBTYPES:
                # PCM cannot hold NaN or inf, float samples can, anywhere: scan the whole file
                # (window by window, so memory stays bounded) rather than let training find them.
                for _ in _audio.iter_windows(path, info.sample_rate, _SCAN_SECONDS, _SCAN_SECONDS):
                    pass
            if info.format != "WAV" and info.duration > 2 * _TAIL_SECONDS:
                offset = info.duration - _TAIL_SECONDS
                tail = _audio.load_audio(path, offset=offset, duration=_TAIL_SECONDS, max_duration=None)
                if tail.size < 0.5 * _TAIL_SECONDS * info.sample_rate:
                    return info, (f"truncated: decoding stops before the {info.duration:.2f} s the header declares")
    except AudioError as exc:
        return info, _reason(exc, path)
    except OSError as exc:
        return info, f"cannot read ({exc.strerror})"
    return info, None


def _span_problem(start: float, end: float | None, duration: float) -> str | None:
    """Why the span ``start``-``end`` of a file lasting ``duration`` seconds is unusable, or None."""
    limit = duration + 0.01  # a span may round past the last sample by a few milliseconds
    if start >= duration or (end is not None and end > limit):
        return f"span {start:g}-{end if end is not None else 'end'} s lies beyond the file's {duration:.2f} s"
    return None


def probe_file(path: str | Path, deep: bool = True) -> str | None:
    """Why ``path`` cannot be used as audio, or ``None`` when it reads fine.

    ``deep=False`` reads headers only (plus the WAV size check), ``True`` also decodes a little.
    """
    return _probe(Path(path), deep)[1]


def filter_readable(index: DatasetIndex, deep: bool = True) -> tuple[DatasetIndex, list[tuple[str, str]]]:
    """Drop clips that cannot be decoded; return the filtered index and ``(file, reason)`` pairs."""
    keep: list[int] = []
    skipped: list[tuple[str, str]] = []
    for i, clip in enumerate(index.clips):
        reason = probe_file(clip.path, deep)
        if reason is None:
            keep.append(i)
        else:
            skipped.append((index.relpath(clip.path), reason))
    return index.subset(keep), skipped


@dataclass
class CheckReport:
    """Everything ``asca data check`` reports about a dataset."""

    path: str
    format: str
    root: str
    manifest: str | None
    listed: int  # clips the dataset lists (after dropping rows in ``problems``)
    usable: int  # clips that read fine
    classes: dict[str, int]  # usable clips per class (multi-label clips count for each label)
    primary: dict[str, int]  # usable clips per primary (first) label
    multi_label: dict[str, Any]
    durations: dict[str, float]  # min / median / max / total seconds
    sample_rates: dict[int, int]
    channels: dict[int, int]
    official_split: dict[str, int]
    folds: dict[int, int]
    splits: dict[str, int]
    split_method: str
    problems: list[tuple[str, str]]  # (file, reason): skipped rows and unreadable files
    unreadable: int
    fatal: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. groups a split would ignore

    @property
    def ok(self) -> bool:
        return not self.fatal

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "format_name": FORMAT_NAMES[self.format],
            "root": self.root,
            "manifest": self.manifest,
            "clips": self.listed,
            "usable_clips": self.usable,
            "num_classes": len(self.classes),
            "classes": self.classes,
            "primary_labels": self.primary,
            "multi_label": self.multi_label,
            "durations": self.durations,
            "sample_rates": {str(k): v for k, v in self.sample_rates.items()},
            "channels": {str(k): v for k, v in self.channels.items()},
            "official_split": self.official_split,
            "folds": {str(k): v for k, v in self.folds.items()},
            "splits": self.splits,
            "split_method": self.split_method,
            "problems": [{"file": f, "reason": r} for f, r in self.problems],
            "unreadable": self.unreadable,
            "ok": self.ok,
            "fatal": self.fatal,
            "warnings": self.warnings,
        }

    def format_text(self) -> str:
        """A tidy, aligned human summary."""
        unit = "recordings" if self.format == "birdclef" else "clips"
        rows: list[tuple[str, str]] = [
            ("Dataset", self.path),
            ("Format", f"{self.format} ({FORMAT_NAMES[self.format]})"),
            (unit.capitalize(), f"{self.listed:,} listed, {self.usable:,} readable"),
        ]
        if self.format == "birdclef" or self.multi_label.get("clips_with_several_labels"):
            only_secondary = len(self.classes) - len(self.primary)
            rows.append(
                ("Species" if self.format == "birdclef" else "Primary labels", f"{len(self.primary)} (primary labels)")
            )
            rows.extend(("", line) for line in _columns(self.primary))
            ml = self.multi_label
            rows.append(
                (
                    "Secondary",
                    (
                        f"{ml['clips_with_several_labels']} of {self.usable:,} "
                        f"{unit} have secondary labels ({len(ml['secondary'])} "
                        "distinct)"
                    ),
                )
            )
            rows.extend(("", line) for line in _columns(ml["secondary"]))
            if ml.get("example"):
                ex = ml["example"]
                rows.append(
                    ("", (f"e.g. {ex['file']}: primary {ex['labels'][0]}, secondary {', '.join(ex['labels'][1:])}"))
                )
            rows.append(
                (
                    "Classes",
                    (
                        f"{len(self.classes)} ({len(self.primary)} primary + "
                        f"{only_secondary} seen only as secondary labels)"
                    ),
                )
            )
        else:
            rows.append(("Classes", str(len(self.classes))))
            rows.extend(("", line) for line in _columns(self.classes))
        if self.durations:
            d = self.durations
            rows.append(
                (
                    "Durations",
                    (
                        f"min {d['min']:.2f} s, median {d['median']:.2f} s, "
                        f"max {d['max']:.2f} s, total {_hours(d['total'])}"
                    ),
                )
            )
            rows.append(
                ("Sample rates", ", ".join(f"{sr:,} Hz ({n:,})" for sr, n in sorted(self.sample_rates.items())))
            )
            rows.append(("Channels", ", ".join(f"{_channels(c)} ({n:,})" for c, n in sorted(self.channels.items()))))
        if self.official_split:
            rows.append(("Split column", ", ".join(f"{k} {v:,}" for k, v in self.official_split.items())))
        if self.folds:
            rows.append(("Folds", ", ".join(f"{k}: {v:,}" for k, v in sorted(self.folds.items()))))
        if self.splits:
            rows.append(
                (
                    "Splits",
                    (
                        f"train {self.splits['train']:,}, val {self.splits['val']:,}, "
                        f"test {self.splits['test']:,}  ({self.split_method})"
                    ),
                )
            )
        elif self.split_method:
            rows.append(("Splits", self.split_method))
        rows.extend(("Warning", w) for w in self.warnings)
        if self.problems:
            rows.append(("Problems", (f"{len(self.problems)} file(s) skipped, {self.unreadable} of them unreadable:")))
            width = min(max(len(f) for f, _ in self.problems), 48)
            rows.extend(("", f"{f:<{width}}  {r}") for f, r in self.problems)
        else:
            rows.append(("Problems", "none"))
        if self.fatal:
            rows.append(("Result", "UNUSABLE: " + "; ".join(self.fatal)))
        else:
            summary = f"OK: {self.usable:,} usable {unit} in {len(self.classes)} classes"
            if self.format == "birdclef":
                summary = (
                    f"OK: {self.usable:,} usable {unit} of {len(self.primary)} species "
                    f"({len(self.classes)} classes with secondary labels)"
                )
            rows.append(("Result", summary))
        width = max(len(k) for k, _ in rows) + 2
        return "\n".join(f"{k:<{width}}{v}".rstrip() for k, v in rows)


def _hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _channels(c: int) -> str:
    return {1: "mono", 2: "stereo"}.get(c, f"{c} channels")


def _columns(counts: dict[str, int], width: int = 72) -> list[str]:
    """Lay ``name count`` pairs out in aligned columns."""
    if not counts:
        return []
    cells = [(str(k), f"{v:,}") for k, v in counts.items()]
    name_w = max(len(k) for k, _ in cells)
    num_w = max(len(v) for _, v in cells)
    cell_w = name_w + num_w + 4
    per_line = max(1, width // cell_w)
    lines = []
    for start in range(0, len(cells), per_line):
        chunk = cells[start : start + per_line]
        lines.append("".join(f"{k:<{name_w}}  {v:>{num_w}}    " for k, v in chunk).rstrip())
    return lines


def check_dataset(
    path: str | Path,
    format: str = "auto",
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    test_fold: int | None = None,
    group_column: str | None = None,
    seed: int = 0,
    deep: bool = True,
) -> CheckReport:
    """Index the dataset at ``path``, probe every file and summarise (see :class:`CheckReport`)."""
    index = load_dataset(path, format)
    problems = dict(index.problems)
    unreadable = 0
    # Loose audio files carry no label, but a broken one is still reported for what it is.
    for file in index.unlabelled:
        reason = probe_file(file, deep)
        if reason is not None:
            unreadable += 1
            problems[index.relpath(file)] = f"{reason} (and not inside a class folder)"
    keep: list[int] = []
    infos: list[_audio.AudioInfo] = []
    for i, clip in enumerate(index.clips):
        info, reason = _probe(clip.path, deep)
        if reason is None and info is not None and clip.start is not None:
            reason = _span_problem(clip.start, clip.end, info.duration)
            if reason is None:  # a span counts for its own length
                info = replace(info, duration=(clip.end or info.duration) - clip.start)
        if reason is None:
            assert info is not None  # _probe reads the header of every file it finds no fault in
            keep.append(i)
            infos.append(info)
        else:
            unreadable += 1
            problems[index.relpath(clip.path)] = reason
    usable = index.subset(keep)

    durations: dict[str, float] = {}
    if infos:
        values = [info.duration for info in infos]
        durations = {"min": min(values), "median": statistics.median(values), "max": max(values), "total": sum(values)}
    several = [c for c in usable.clips if len(c.labels) > 1]
    secondary = Counter(label for c in several for label in c.labels[1:])
    multi = {"clips_with_several_labels": len(several), "secondary": dict(sorted(secondary.items())), "example": None}
    if several:
        ex = max(several, key=lambda c: len(c.labels))
        multi["example"] = {"file": usable.relpath(ex.path), "labels": list(ex.labels)}

    fatal: list[str] = []
    classes = {k: v for k, v in usable.label_counts().items() if v} if usable.clips else {}
    split_sizes: dict[str, int] = {}
    warnings: list[str] = []
    method = ""
    if not usable.clips:
        fatal.append(f"no usable clips ({len(index.clips)} listed, {len(index.unlabelled)} unlabelled files)")
    else:
        if len(classes) < 2:
            fatal.append(f"only {len(classes)} class with usable clips; a classifier needs two or more")
        try:
            protocol = resolve_protocol(usable, test_fold, group_column)
            warnings = list(protocol.warnings)
            splits = make_splits(
                usable,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                test_fold=protocol.test_fold,
                group_column=protocol.group_column,
                seed=seed,
            )
            split_sizes = {k: len(v) for k, v in splits.items()}
            method = protocol.description
            if not split_sizes["train"]:
                fatal.append("the split leaves no training clips")
        except DatasetError as exc:
            method = f"cannot split: {exc}"
            fatal.append(str(exc))

    return CheckReport(
        path=str(path),
        format=index.format,
        root=str(index.root),
        manifest=str(index.manifest) if index.manifest else None,
        listed=len(index.clips),
        usable=len(usable.clips),
        classes=classes,
        primary=dict(sorted(Counter(c.label for c in usable.clips).items())),
        multi_label=multi,
        durations=durations,
        sample_rates=dict(sorted(Counter(i.sample_rate for i in infos).items())),
        channels=dict(sorted(Counter(i.channels for i in infos).items())),
        official_split=official_split_counts(usable),
        folds=dict(sorted(Counter(c.fold for c in usable.clips if c.fold is not None).items())),
        splits=split_sizes,
        split_method=method,
        problems=sorted(problems.items()),
        unreadable=unreadable,
        fatal=fatal,
        warnings=warnings,
    )


def summarize_problems(problems: Iterable[tuple[str, str]], limit: int = 10) -> str:
    """One line naming up to ``limit`` skipped files (for training logs)."""
    problems = list(problems)
    shown = "; ".join(f"{f}: {r}" for f, r in problems[:limit])
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{len(problems)} file(s) skipped: {shown}{more}" if problems else "no files skipped"
