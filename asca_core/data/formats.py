"""Dataset formats: find the clips and labels of a dataset on disk, without decoding audio.

Four layouts are recognised (``detect_format``) and turned into one :class:`DatasetIndex`:

- ``folder``: ``ROOT/<label>/*.{wav,flac,ogg,mp3}`` (extensions case-insensitive, sub-folders of a
  class folder included).
- ``csv``: a manifest with columns ``filename,label`` plus optional ``split`` or ``fold``; every
  other column is kept in ``Clip.meta``; ``a;b`` in ``label`` is multi-label; paths are relative to
  the CSV's folder; a ``group`` column fills ``Clip.group``.
- ``birdclef``: BirdCLEF 2023, ``train_metadata.csv`` + ``train_audio/``; labels are the primary
  label followed by the secondary labels, or the primary label alone with ``labels="primary"``
  (the ASCA paper's protocol: "we predicted only the primary labels"; the secondary labels stay in
  ``Clip.meta["secondary_labels"]``).
- ``esc50``: ESC-50, ``meta/esc50.csv`` + ``audio/``; label = ``category``, ``fold``, group =
  ``src_file`` (the recording a clip was cut from).
- ``review``: a review manifest (``file,start,end,label,decision``, see :mod:`asca_core.review`):
  each accepted or relabelled row is a clip of the span ``Clip.start``-``Clip.end`` of its file.

Rows that point at missing files, files outside the dataset root (by ``../``, an absolute path or
a symlink leading out), unsupported file types or, with a fixed class list (``classes``), a primary
label outside that list are not fatal: they land in
``DatasetIndex.problems`` as ``(file, reason)``. A manifest that cannot be read at all (missing
columns, empty, not UTF-8, malformed rows) raises :class:`DatasetError`.
"""

from __future__ import annotations

import ast
import csv
import importlib
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..audio import SUPPORTED_EXTENSIONS
from ..config import DATASET_FORMATS
from ..errors import DatasetError

FORMATS = DATASET_FORMATS
FORMAT_NAMES = {
    "folder": "folder-per-class",
    "csv": "CSV manifest",
    "birdclef": "BirdCLEF 2023",
    "esc50": "ESC-50",
    "review": "review manifest",
}
# A folder holding one of these is read as a CSV manifest (in this order of preference).
MANIFEST_NAMES = ("labels.csv", "manifest.csv", "metadata.csv")
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "eval": "test",
}
OUTSIDE_ROOT = "outside the dataset root"
LABEL_MODES = ("primary", "primary+secondary")


@dataclass
class Clip:
    """One labelled audio file of a dataset."""

    path: Path
    labels: tuple[str, ...]
    split: str | None = None  # "train" | "val" | "test" from an official split column
    fold: int | None = None
    group: str | None = None  # clips of one group stay on one side of a split
    meta: dict[str, Any] = field(default_factory=dict)
    start: float | None = None  # seconds: the clip is the span start-end of the file (review manifests)
    end: float | None = None

    @property
    def label(self) -> str:
        """The primary (first) label."""
        return self.labels[0]


@dataclass
class DatasetIndex:
    """Every usable clip of a dataset, its classes and what was skipped while reading it."""

    root: Path
    format: str
    clips: list[Clip]
    classes: list[str]
    multi_label: bool
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    manifest: Path | None = None  # the CSV the index was read from, if any
    # Audio files found but carrying no label (e.g. loose files beside the class folders).
    unlabelled: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clips)

    def label_counts(self, indices: Iterable[int] | None = None) -> dict[str, int]:
        """Clips per class (a multi-label clip counts once for each of its labels)."""
        counts = Counter(dict.fromkeys(self.classes, 0))
        for i in range(len(self.clips)) if indices is None else indices:
            counts.update(self.clips[i].labels)
        return dict(sorted(counts.items()))

    def subset(self, indices: Iterable[int]) -> DatasetIndex:
        """A new index holding only ``indices`` (classes and problems unchanged)."""
        return DatasetIndex(
            root=self.root,
            format=self.format,
            clips=[self.clips[i] for i in indices],
            classes=list(self.classes),
            multi_label=self.multi_label,
            problems=list(self.problems),
            manifest=self.manifest,
            unlabelled=list(self.unlabelled),
        )

    def relpath(self, path: Path | str) -> str:
        """``path`` relative to the dataset root when inside it (for messages)."""
        path = Path(path)
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


# ---------------------------------------------------------------------------------- detection


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in SUPPORTED_EXTENSIONS and not path.name.startswith(".")


def detect_format(path: str | Path) -> str:
    """Name the layout of the dataset at ``path``: ``folder``, ``csv``, ``birdclef`` or ``esc50``.

    ``path`` may be a dataset folder or its manifest file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_file():
        if path.name == "train_metadata.csv":
            return "birdclef"
        if path.name == "esc50.csv":
            return "esc50"
        if path.suffix.lower() == ".csv":
            return "review" if _is_review_csv(path) else "csv"
        raise DatasetError(f"{path}: not a dataset (give a folder or a .csv manifest)")
    if (path / "train_metadata.csv").is_file():
        return "birdclef"
    if (path / "meta" / "esc50.csv").is_file():
        return "esc50"
    for name in MANIFEST_NAMES:
        if (path / name).is_file():
            return "review" if _is_review_csv(path / name) else "csv"
    try:
        entries = list(path.iterdir())
    except OSError as exc:
        raise DatasetError(f"{path}: cannot list the folder ({exc.strerror})") from exc
    has_classes = any(e.is_dir() and not e.name.startswith(".") and _has_audio(e) for e in entries)
    if has_classes or any(e.is_file() and _is_audio(e) for e in entries):
        return "folder"
    raise DatasetError(
        f"{path}: no audio files, class folders or manifest found "
        f"(expected ROOT/<label>/*.wav, a CSV manifest, BirdCLEF or ESC-50 layout)"
    )


def _is_review_csv(path: Path) -> bool:
    """Whether the CSV's header is a review manifest's (file,start,end,label,decision)."""
    review = importlib.import_module("asca_core.review")  # no import cycle for the type checker
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            first = f.readline(65536)
    except (OSError, UnicodeDecodeError):
        return False  # the CSV loader reports what is wrong with it
    try:
        header = next(csv.reader([first]), [])
    except csv.Error:
        return False
    return bool(review.is_review_header([h.strip() for h in header]))


def _has_audio(folder: Path) -> bool:
    return any(p.is_file() and _is_audio(p) for p in folder.rglob("*"))


def load_dataset(
    path: str | Path,
    format: str = "auto",
    labels: str = "primary+secondary",
    classes: Sequence[str] | str | Path | None = None,
) -> DatasetIndex:
    """Index the dataset at ``path`` (folder or manifest); ``format="auto"`` detects the layout.

    ``"demo"`` means the built-in synthetic set (``./demo`` names a local folder). ``labels``:
    ``"primary+secondary"`` makes every label of a clip a target (BirdCLEF's secondary labels, all
    labels of a multi-label manifest row), ``"primary"`` keeps its first (primary) label only.
    ``classes`` fixes the class list and its order (names, or a file: one name per line or a JSON
    list such as a run's ``labels.json``); clips whose primary label it lacks are skipped as
    problems, secondary labels it lacks are dropped.
    """
    if labels not in LABEL_MODES:
        raise DatasetError(f"labels must be {' or '.join(LABEL_MODES)}, got {labels!r}")
    fixed = read_class_list(classes) if classes is not None else None
    if str(path) == "demo":
        from .demo import demo_dataset_path

        path = demo_dataset_path()
    path = Path(path).expanduser()
    if format == "auto":
        format = detect_format(path)
    if format not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r} (use auto, {', '.join(FORMATS)})")
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if format == "birdclef":
        index = _load_birdclef(path, primary_only=labels == "primary")
    elif format == "review":
        review = importlib.import_module("asca_core.review")  # it reads manifests with this module
        index = review.load_review_index(_manifest_in(path, MANIFEST_NAMES, "review manifest"))
    else:
        index = {"folder": _load_folder, "csv": _load_csv, "esc50": _load_esc50}[format](path)
    if labels == "primary" and index.multi_label:
        for clip in index.clips:
            clip.labels = clip.labels[:1]
        index = _finish(
            index.root, index.format, index.clips, index.problems, index.manifest, unlabelled=index.unlabelled
        )
    if fixed is not None:
        index = _restrict_classes(index, fixed)
    return index


def read_class_list(classes: Sequence[str] | str | Path) -> list[str]:
    """Class names from a list, or from a file (one name per line, ``#`` comments and blank lines
    ignored, or a JSON list of names)."""
    if not isinstance(classes, (str, Path)):
        names = [str(c).strip() for c in classes]
        where = "the class list"
    else:
        file = Path(classes).expanduser()
        where = str(file)
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DatasetError(f"class list {file}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"class list {file}: cannot read it as UTF-8 text ({exc})") from None
        if text.lstrip().startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"class list {file}: not a valid JSON list ({exc.msg} at line {exc.lineno})"
                ) from None
            if not isinstance(parsed, list) or not all(isinstance(c, str) for c in parsed):
                raise DatasetError(f"class list {file}: the JSON must be a list of names")
            names = [c.strip() for c in parsed]
        else:
            names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
            names = [n for n in names if n]
    if not names or not all(names):
        raise DatasetError(f"{where}: no class names (or an empty one)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetError(f"{where} lists {dupes[0]!r} more than once")
    return names


def _restrict_classes(index: DatasetIndex, classes: list[str]) -> DatasetIndex:
    """Keep clips whose primary label is in ``classes`` (others become problems) and order the
    index's classes as ``classes``."""
    known = set(classes)
    clips, problems = [], list(index.problems)
    for clip in index.clips:
        if clip.labels[0] not in known:
            problems.append((index.relpath(clip.path), f"label {clip.labels[0]!r} is not in the fixed class list"))
            continue
        clip.labels = tuple(label for label in clip.labels if label in known)
        clips.append(clip)
    return DatasetIndex(
        root=index.root,
        format=index.format,
        clips=clips,
        classes=list(classes),
        multi_label=any(len(c.labels) > 1 for c in clips),
        problems=problems,
        manifest=index.manifest,
        unlabelled=list(index.unlabelled),
    )


# ------------------------------------------------------------------------------------ helpers


def _finish(
    root: Path,
    fmt: str,
    clips: list[Clip],
    problems: list[tuple[str, str]],
    manifest: Path | None = None,
    extra_classes: Iterable[str] = (),
    unlabelled: list[Path] | None = None,
) -> DatasetIndex:
    classes = sorted({label for clip in clips for label in clip.labels} | set(extra_classes))
    return DatasetIndex(
        root=root,
        format=fmt,
        clips=clips,
        classes=classes,
        multi_label=any(len(c.labels) > 1 for c in clips),
        problems=problems,
        manifest=manifest,
        unlabelled=unlabelled or [],
    )


def _read_table(csv_path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict]]]:
    """Read a UTF-8 CSV with a header; return its columns and ``(line, row)`` pairs.

    Raises DatasetError naming the file for an empty file, bad encoding, missing columns and rows
    whose field count differs from the header.
    """
    try:
        raw = csv_path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{csv_path}: cannot read ({exc.strerror})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DatasetError(f"{csv_path}: not UTF-8 text (bad byte at line {line}); save the manifest as UTF-8") from exc
    if not text.strip():
        raise DatasetError(f"{csv_path}: empty manifest (expected a header line such as {','.join(required)})")
    if "\x00" in text:
        raise DatasetError(f"{csv_path}: contains NUL bytes, not a text CSV file")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetError(
                f"{csv_path}: missing column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)} (found: {', '.join(header) or 'none'})"
            )
        dupes = sorted({h for h in header if header.count(h) > 1 and h})
        if dupes:
            raise DatasetError(f"{csv_path}: duplicate column {', '.join(dupes)} in the header")
        rows: list[tuple[int, dict]] = []
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue  # blank line
            if len(fields) != len(header):
                raise DatasetError(
                    f"{csv_path}: line {reader.line_num} has {len(fields)} fields, the header has {len(header)}"
                )
            rows.append((reader.line_num, {h: v.strip() for h, v in zip(header, fields)}))
    except csv.Error as exc:
        raise DatasetError(f"{csv_path}: malformed CSV at line {reader.line_num} ({exc})") from exc
    if not rows:
        raise DatasetError(f"{csv_path}: the manifest has a header but no rows")
    return header, rows


def _inside(root: Path, path: Path) -> bool:
    """Whether ``path`` stays inside ``root`` once every symlink on the way is followed."""
    try:
        real, real_root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    except (OSError, ValueError):  # a symlink loop, an unreadable folder, a NUL byte
        return False
    return real == real_root or real_root in real.parents


def _resolve(root: Path, name: str, base: Path | None = None) -> tuple[Path | None, str | None]:
    """Resolve a manifest path against ``base`` (default ``root``); refuse paths leaving ``root``,
    written as ``../`` or reached through a symlink."""
    base = root if base is None else base
    candidate = Path(os.path.normpath(base / name))  # absolute names replace base here
    root_norm = Path(os.path.normpath(root))
    if candidate != root_norm and root_norm not in candidate.parents:
        return None, OUTSIDE_ROOT
    if not _inside(root, candidate):
        return None, f"{OUTSIDE_ROOT} (through a symlink)"
    return candidate, None


class _Collector:
    """Accumulates clips from manifest rows: missing files, duplicates and conflicts to problems."""

    def __init__(self, csv_path: Path, root: Path):
        self.csv_path, self.root = csv_path, root
        self.clips: list[Clip] = []
        self.problems: list[tuple[str, str]] = []
        self._seen: dict[Path, tuple[int, int]] = {}  # path -> (clip position, first line)

    def add(self, line: int, name: str, clip_path: Path | None, reason: str | None, clip: Clip) -> None:
        if reason is None and clip_path is not None:
            reason = self._file_problem(clip_path)
        if reason is not None:
            self.problems.append((name, f"{reason} ({self.csv_path.name} line {line})"))
            return
        assert clip_path is not None, "a row without a file comes with the reason"
        clip.path = clip_path
        if clip_path in self._seen:
            pos, first = self._seen[clip_path]
            old = self.clips[pos]
            if set(clip.labels) <= set(old.labels):
                self.problems.append((name, (f"duplicate row (line {line} repeats line {first}); kept once")))
            else:
                merged = tuple(dict.fromkeys(old.labels + clip.labels))
                self.problems.append(
                    (
                        name,
                        (
                            f"listed again on line {line} with label "
                            f"{';'.join(clip.labels)}; labels merged as "
                            f"{';'.join(merged)}"
                        ),
                    )
                )
                old.labels = merged
            return
        self._seen[clip_path] = (len(self.clips), line)
        self.clips.append(clip)

    @staticmethod
    def _file_problem(path: Path) -> str | None:
        if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
            return f"unsupported file type {path.suffix or '(none)'} (use {', '.join(SUPPORTED_EXTENSIONS)})"
        if not path.is_file():
            return "file not found"
        return None


def _file_problem_review(path: Path) -> str | None:
    """Why a review manifest's file cannot be a clip (type, missing), or None."""
    return _Collector._file_problem(path)


def _split_labels(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.strip() for p in value.split(";") if p.strip()))


def _parse_split(csv_path: Path, line: int, value: str) -> str | None:
    if not value:
        return None
    split = SPLIT_NAMES.get(value.lower())
    if split is None:
        raise DatasetError(f"{csv_path}: line {line}: unknown split {value!r} (use train, val or test)")
    return split


def _parse_fold(csv_path: Path, line: int, value: str) -> int | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise DatasetError(f"{csv_path}: line {line}: fold must be an integer, got {value!r}")
    return int(number)


# ------------------------------------------------------------------------------------ loaders


def _load_folder(root: Path) -> DatasetIndex:
    if not root.is_dir():
        raise DatasetError(f"{root}: folder-per-class datasets are folders (ROOT/<label>/*.wav)")
    clips: list[Clip] = []
    problems: list[tuple[str, str]] = []
    unlabelled: list[Path] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            if _is_audio(entry) and not _inside(root, entry):
                problems.append((entry.name, f"{OUTSIDE_ROOT} (through a symlink)"))
            elif _is_audio(entry):
                unlabelled.append(entry)
                problems.append((entry.name, "not inside a class folder (expected ROOT/<label>/file)"))
            continue
        if not entry.is_dir():
            continue
        if not _inside(root, entry):
            problems.append((entry.name, f"{OUTSIDE_ROOT} (class folder through a symlink)"))
            continue
        for file in sorted(p for p in entry.rglob("*") if p.is_file()):
            if any(part.startswith(".") for part in file.relative_to(root).parts):
                continue
            if _is_audio(file):
                if not _inside(root, file):
                    problems.append((file.relative_to(root).as_posix(), f"{OUTSIDE_ROOT} (through a symlink)"))
                    continue
                clips.append(Clip(path=file, labels=(entry.name,)))
    return _finish(root, "folder", clips, problems, unlabelled=unlabelled)


def _manifest_in(path: Path, names: tuple[str, ...], what: str) -> Path:
    if path.is_file():
        return path
    for name in names:
        if (path / name).is_file():
            return path / name
    raise DatasetError(f"{path}: no {what} found (looked for {', '.join(names)})")


def _load_csv(path: Path) -> DatasetIndex:
    csv_path = _manifest_in(path, MANIFEST_NAMES, "CSV manifest")
    root = csv_path.parent.resolve()
    _header, rows = _read_table(csv_path, ("filename", "label"))
    known = {"filename", "label", "split", "fold", "group"}
    collector = _Collector(csv_path, root)
    for line, row in rows:
        name, label_text = row["filename"], row["label"]
        if not name:
            raise DatasetError(f"{csv_path}: line {line}: empty filename")
        labels = _split_labels(label_text)
        if not labels:
            raise DatasetError(f"{csv_path}: line {line}: empty label for {name}")
        clip = Clip(
            path=Path(name),
            labels=labels,
            split=_parse_split(csv_path, line, row.get("split", "")),
            fold=_parse_fold(csv_path, line, row.get("fold", "")),
            group=row.get("group") or None,
            meta={k: v for k, v in row.items() if k not in known},
        )
        clip_path, reason = _resolve(root, name)
        collector.add(line, name, clip_path, reason, clip)
    return _finish(root, "csv", collector.clips, collector.problems, manifest=csv_path)


def _parse_list(csv_path: Path, line: int, column: str, value: str) -> list[str]:
    """Parse a Python-literal list of strings such as ``['a', 'b']`` (literal_eval, never eval)."""
    if not value:
        return []
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise DatasetError(f"{csv_path}: line {line}: {column} is not a list literal: {value!r}") from None
    if isinstance(parsed, str):
        parsed = [parsed]
    if not isinstance(parsed, (list, tuple)) or not all(isinstance(x, str) for x in parsed):
        raise DatasetError(f"{csv_path}: line {line}: {column} must be a list of names, got {value!r}")
    return [x.strip() for x in parsed if x.strip()]


def _load_birdclef(path: Path, primary_only: bool = False) -> DatasetIndex:
    csv_path = _manifest_in(path, ("train_metadata.csv",), "train_metadata.csv")
    root = csv_path.parent.resolve()
    audio_dir = root / "train_audio"
    _header, rows = _read_table(csv_path, ("primary_label", "filename"))
    collector = _Collector(csv_path, root)
    secondary_seen: set[str] = set()
    for line, row in rows:
        name, primary = row["filename"], row["primary_label"]
        if not name or not primary:
            raise DatasetError(f"{csv_path}: line {line}: empty filename or primary_label")
        secondary = [
            s for s in _parse_list(csv_path, line, "secondary_labels", row.get("secondary_labels", "")) if s != primary
        ]
        secondary_seen.update(secondary)
        meta: dict[str, Any] = {k: v for k, v in row.items() if k != "filename"}
        meta["secondary_labels"] = secondary
        if "type" in row:
            try:
                meta["type"] = _parse_list(csv_path, line, "type", row["type"])
            except DatasetError:
                meta["type"] = row["type"]  # free text is fine for a descriptive column
        for key in ("rating", "latitude", "longitude"):
            if key in meta:
                try:
                    meta[key] = float(meta[key])
                except ValueError:
                    pass
        targets = [primary] if primary_only else [primary] + secondary
        clip = Clip(path=Path(name), labels=tuple(dict.fromkeys(targets)), meta=meta)
        clip_path, reason = _resolve(root, name, base=audio_dir)
        collector.add(line, name, clip_path, reason, clip)
    return _finish(
        root,
        "birdclef",
        collector.clips,
        collector.problems,
        manifest=csv_path,
        extra_classes=() if primary_only else secondary_seen,
    )


def _load_esc50(path: Path) -> DatasetIndex:
    if path.is_file():
        csv_path, root = path, path.resolve().parent.parent
    else:
        csv_path, root = path / "meta" / "esc50.csv", path.resolve()
        if not csv_path.is_file():
            raise DatasetError(f"{path}: no meta/esc50.csv found (ESC-50 layout: meta/esc50.csv + audio/)")
    _header, rows = _read_table(csv_path, ("filename", "fold", "category"))
    collector = _Collector(csv_path, root)
    for line, row in rows:
        name = row["filename"]
        if not name or not row["category"]:
            raise DatasetError(f"{csv_path}: line {line}: empty filename or category")
        meta: dict[str, Any] = {k: v for k, v in row.items() if k not in ("filename", "category", "fold")}
        if "esc10" in meta:
            meta["esc10"] = meta["esc10"].lower() in ("true", "1", "yes")
        clip = Clip(
            path=Path(name),
            labels=(row["category"],),
            fold=_parse_fold(csv_path, line, row["fold"]),
            group=row.get("src_file") or None,
            meta=meta,
        )
        clip_path, reason = _resolve(root, name, base=root / "audio")
        collector.add(line, name, clip_path, reason, clip)
    return _finish(root, "esc50", collector.clips, collector.problems, manifest=csv_path)
