"""Window embeddings of a folder of recordings, and similarity search over them.

:func:`embed_files` cuts every recording into the classifier's windows (as ``predict`` does) and
stores, per recording, what the model's final linear layer sees for each window
(:meth:`~asca_core.inference.Classifier.window_outputs`). :class:`EmbeddingIndex` loads them and
finds the windows nearest to a query window by cosine similarity::

    embed_files(clf, files, "out/emb", root="recordings")   # resumable: finished files are kept
    index = EmbeddingIndex.load("out/emb")
    index.search(("recordings/dawn.flac", 12.0), k=10)       # [Hit(file, start, end, score), ...]

The folder holds ``index.json`` (format, root, window, hop, the model's weight digest, dims and
one entry per recording: its path relative to the root, size, modification time, windows and
the name of its vector file) and ``vectors/<id>.safetensors`` per recording with ``embeddings``
(N, D) float32 and ``starts`` (N,) float64 (seconds; a recording shorter than one window has one
window centred on it, starting before 0). Loading checks every path: recordings must lie inside
the root, vector files inside the folder, links included.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AscaError

INDEX_FILE = "index.json"
VECTORS_DIR = "vectors"
INDEX_FORMAT = "asca-embeddings/1"
_STORE_NAME = re.compile(r"^vectors/[0-9a-f]{16}\.safetensors$")


@dataclass(frozen=True)
class Hit:
    """A window found by :meth:`EmbeddingIndex.search`.

    ``file`` is the recording's path (the index root joined with ``name``, its path relative to
    the root); ``start``/``end`` the window in seconds, clipped to the recording; ``score`` the
    cosine similarity to the query (1 for the same direction).
    """

    file: str
    start: float
    end: float
    score: float
    name: str = ""


def model_digest(model: Any) -> str:
    """SHA-256 of a model's weights (tensor names, shapes and bytes): which model embedded a folder."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype.is_floating_point or tensor.numel() else b"")
    return digest.hexdigest()


def _store_name(rel: str) -> str:
    return f"{VECTORS_DIR}/{hashlib.sha1(rel.encode()).hexdigest()[:16]}.safetensors"


def _rel_name(path: Path, root: Path) -> str:
    try:
        rel = Path(os.path.abspath(path)).relative_to(root)
    except ValueError:
        raise AscaError(f"{path} is not inside the index root {root}") from None
    return rel.as_posix()


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (OSError, ValueError):
        return False
    return True


def _read_index(out: Path) -> dict[str, Any] | None:
    from .fileio import read_json

    try:
        return read_json(out / INDEX_FILE, dict, error=AscaError)
    except FileNotFoundError:
        return None


def embed_files(
    clf: Any,
    files: Sequence[str | Path],
    out_dir: str | Path,
    window: float | None = None,
    hop: float | None = None,
    root: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Embed every window of ``files`` with ``clf`` into ``out_dir``; returns ``out_dir``.

    ``root`` (default: the deepest folder holding all the files) is what the index stores paths
    relative to. A folder already holding an index of the same model, window, hop and root is
    resumed: files whose size and modification time are unchanged are not embedded again. A file
    that cannot be read is recorded under ``errors`` in index.json (and :attr:`EmbeddingIndex.errors`)
    and the others are embedded. ``progress(done, total, file)`` is called after each file.

    Shapes: stores embeddings (N, D) float32 and starts (N,) float64 per recording.
    """
    from safetensors.numpy import save as save_tensors

    from .fileio import output_folder
    from .train.runstore import atomic_write_bytes, atomic_write_json, now_iso

    paths = [Path(f) for f in files]
    if not paths:
        raise AscaError("no audio files to embed")
    window, hop = clf._window_hop(window, hop)
    if root is None:
        root_path = Path(os.path.commonpath([os.path.abspath(p.parent) for p in paths]))
    else:
        root_path = Path(os.path.abspath(root))
        if not root_path.is_dir():
            raise AscaError(f"the index root {root_path} is not a folder")
    rels = [_rel_name(p, root_path) for p in paths]
    for p, rel in zip(paths, rels):
        if not _inside(root_path / rel, root_path):
            raise AscaError(f"{p} is a link leading outside the index root {root_path}")
    out = output_folder(out_dir, "--out")
    digest = model_digest(clf.model)
    settings = {"root": str(root_path), "window": window, "hop": hop, "model_sha256": digest}
    record = _read_index(out)
    entries: dict[str, dict[str, Any]] = {}
    if record is not None:
        old = {key: record.get(key) for key in settings}
        if old != settings:
            changed = ", ".join(key for key in settings if old[key] != settings[key])
            raise AscaError(
                f"{out} holds embeddings made with another {changed}: choose another --out folder or empty it"
            )
        entries = {e["file"]: e for e in record.get("files", []) if isinstance(e, dict) and "file" in e}
    record = {
        "format": INDEX_FORMAT,
        **settings,
        "run": str(clf.run_dir) if clf.run_dir is not None else None,
        "sample_rate": clf.sample_rate,
        "dims": None,
        "created": now_iso(),
        "files": [],
        "errors": [],
    }
    dims = next((int(e["dims"]) for e in entries.values() if isinstance(e.get("dims"), int)), None)
    errors: list[dict[str, str]] = []

    def save_record() -> None:
        record["dims"] = dims
        record["files"] = sorted(entries.values(), key=lambda e: e["file"])
        record["errors"] = errors
        atomic_write_json(out / INDEX_FILE, record, indent=1)

    for done, (path, rel) in enumerate(zip(paths, rels), 1):
        try:
            st = path.stat()
        except OSError as exc:
            errors.append({"file": rel, "error": f"{path}: cannot be read ({exc.strerror or exc})"})
            continue
        entry = entries.get(rel)
        if (
            entry is not None
            and entry.get("size") == st.st_size
            and entry.get("mtime_ns") == st.st_mtime_ns
            and (out / entry.get("store", "")).is_file()
        ):
            if progress is not None:
                progress(done, len(paths), str(path))
            continue
        try:
            starts, vectors, duration = _embed_one(clf, path, window, hop)
        except AscaError as exc:
            errors.append({"file": rel, "error": str(exc)})
            entries.pop(rel, None)
            continue
        if dims is None:
            dims = int(vectors.shape[1])
        store = _store_name(rel)
        atomic_write_bytes(out / store, save_tensors({"embeddings": vectors, "starts": starts}))
        entries[rel] = {
            "file": rel,
            "store": store,
            "windows": int(starts.size),
            "duration": float(duration),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "dims": dims,
        }
        save_record()  # after every file: an interrupted run resumes where it stopped
        if progress is not None:
            progress(done, len(paths), str(path))
    save_record()
    return out


def _embed_one(clf: Any, path: Path, window: float, hop: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Window starts (N,), embeddings (N, D) and duration of one recording."""
    try:
        stream, duration = clf.windows(path, window=window, hop=hop)
        starts: list[float] = []
        chunks: list[np.ndarray] = []
        batch: list[np.ndarray] = []
        for start, chunk in stream:
            starts.append(start)
            batch.append(chunk)
            if len(batch) == clf.batch_windows:
                chunks.append(clf.window_outputs(np.stack(batch), window).embeddings)
                batch = []
        if batch:
            chunks.append(clf.window_outputs(np.stack(batch), window).embeddings)
    except AscaError as exc:
        message = str(exc)
        raise AscaError(message if str(path) in message else f"{path}: {message}") from None
    except Exception as exc:
        raise AscaError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    if not chunks:
        raise AscaError(f"{path}: no windows to embed")
    return np.asarray(starts, dtype=np.float64), np.concatenate(chunks).astype(np.float32), float(duration)


@dataclass
class _File:
    name: str
    duration: float
    first: int  # row of its first window in the matrix
    count: int


class EmbeddingIndex:
    """Window embeddings of a folder of recordings, searched by cosine similarity.

    Shapes: :attr:`embeddings` (M, D) float32 over all windows, :attr:`starts` (M,) float64,
    :attr:`file_of` (M,) index into :attr:`files`.
    """

    def __init__(
        self,
        folder: Path,
        root: Path,
        window: float,
        hop: float,
        files: list[_File],
        embeddings: np.ndarray,
        starts: np.ndarray,
        meta: dict[str, Any],
    ) -> None:
        self.folder = folder
        self.root = root
        self.window = window
        self.hop = hop
        self.files = files
        self.embeddings = embeddings
        self.starts = starts
        self.meta = meta
        self.file_of = np.repeat(np.arange(len(files)), [f.count for f in files]).astype(np.int64)
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        self._unit = embeddings / np.maximum(norms, 1e-12)
        self._by_name = {f.name: i for i, f in enumerate(files)}

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, out_dir: str | Path) -> EmbeddingIndex:
        """Read an index written by :func:`embed_files`; AscaError naming whatever is wrong."""
        from safetensors import SafetensorError
        from safetensors.numpy import load as load_tensors

        from .fileio import read_bytes

        folder = Path(out_dir)
        if not folder.is_dir():
            raise AscaError(f"{folder} is not a folder of embeddings (asca embed writes one)")
        path = folder / INDEX_FILE
        record = _read_index(folder)
        if record is None:
            raise AscaError(f"{folder} has no {INDEX_FILE}: make one with asca embed")
        if record.get("format") != INDEX_FORMAT:
            raise AscaError(f"{path} is not an embeddings index (format {record.get('format')!r})")
        window, hop = record.get("window"), record.get("hop")
        for key, value in (("window", window), ("hop", hop)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise AscaError(f"{path}: {key!r} must be a positive number of seconds, got {value!r}")
        root_text = record.get("root")
        if not isinstance(root_text, str) or not os.path.isabs(root_text):
            raise AscaError(f"{path}: 'root' must be an absolute folder path")
        root = Path(root_text)
        items = record.get("files")
        if not isinstance(items, list):
            raise AscaError(f"{path}: 'files' must be a list")
        dims = record.get("dims")
        files: list[_File] = []
        vectors: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        for n, item in enumerate(items):
            where = f"{path}: files[{n}]"
            if not isinstance(item, dict):
                raise AscaError(f"{where} must be an object")
            name, store, duration = item.get("file"), item.get("store"), item.get("duration")
            if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in Path(name).parts:
                raise AscaError(f"{where}: the file {name!r} must be a path relative to the root, without '..'")
            if not _inside(root / name, root):
                raise AscaError(f"{where}: {name} leads outside the index root {root}")
            if not isinstance(store, str) or not _STORE_NAME.match(store):
                raise AscaError(f"{where}: the vector file {store!r} is not one asca embed writes")
            if not _inside(folder / store, folder):
                raise AscaError(f"{where}: {store} leads outside {folder}")
            if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not duration >= 0:
                raise AscaError(f"{where}: 'duration' must be a non-negative number")
            try:
                tensors = load_tensors(read_bytes(folder / store, AscaError))
            except FileNotFoundError:
                raise AscaError(f"{folder / store} is missing: run asca embed again to rebuild it") from None
            except (SafetensorError, ValueError) as exc:
                raise AscaError(f"{folder / store} is not a readable safetensors file ({exc})") from None
            emb, st = tensors.get("embeddings"), tensors.get("starts")
            if emb is None or st is None or emb.ndim != 2 or st.ndim != 1 or emb.shape[0] != st.shape[0]:
                raise AscaError(f"{folder / store} must hold embeddings (N, D) and starts (N,)")
            if emb.shape[0] == 0 or (isinstance(dims, int) and emb.shape[1] != dims):
                raise AscaError(f"{folder / store} holds {emb.shape} embeddings, expected (N, {dims})")
            if not (np.isfinite(emb).all() and np.isfinite(st).all()):
                raise AscaError(f"{folder / store} holds NaN or infinite values")
            files.append(_File(name, float(duration), sum(f.count for f in files), int(st.shape[0])))
            vectors.append(emb.astype(np.float32, copy=False))
            starts.append(st.astype(np.float64, copy=False))
        if len({f.name for f in files}) != len(files):
            raise AscaError(f"{path} lists a file twice")
        if vectors and len({v.shape[1] for v in vectors}) != 1:
            raise AscaError(f"{path}: the recordings' embeddings have different widths")
        width = vectors[0].shape[1] if vectors else int(dims) if isinstance(dims, int) else 0
        return cls(
            folder,
            root,
            float(window),  # type: ignore[arg-type]
            float(hop),  # type: ignore[arg-type]
            files,
            np.concatenate(vectors) if vectors else np.zeros((0, width), np.float32),
            np.concatenate(starts) if starts else np.zeros(0),
            record,
        )

    # -- lookups ----------------------------------------------------------------------------
    @property
    def dims(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def errors(self) -> list[dict[str, str]]:
        """Files :func:`embed_files` could not read (``file``, ``error``)."""
        value = self.meta.get("errors")
        return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def path(self, name: str) -> Path:
        """The recording ``name`` (relative to the root) as a path."""
        return self.root / name

    def _file_index(self, file: str | Path) -> int:
        text = str(file)
        if text in self._by_name:
            return self._by_name[text]
        candidates = [Path(os.path.abspath(file))]
        try:
            candidates.append(Path(file).resolve())
        except OSError:
            pass
        for candidate in candidates:
            for base in (self.root, self.root.resolve()):
                try:
                    rel = candidate.relative_to(base).as_posix()
                except ValueError:
                    continue
                if rel in self._by_name:
                    return self._by_name[rel]
        raise AscaError(f"{file} is not in the embeddings index {self.folder}")

    def row(self, file: str | Path, start: float) -> int:
        """Row of the window of ``file`` whose (clipped) start is nearest ``start`` seconds."""
        f = self.files[self._file_index(file)]
        if not math.isfinite(float(start)):
            raise AscaError(f"--start must be a number of seconds, got {start}")
        clipped = np.maximum(self.starts[f.first : f.first + f.count], 0.0)
        i = int(np.argmin(np.abs(clipped - float(start))))
        if abs(clipped[i] - float(start)) > max(self.hop, self.window) / 2 + 1e-6:
            raise AscaError(
                f"{file} has no window starting near {float(start):g} s "
                f"(windows from {clipped[0]:g} to {clipped[-1]:g} s every {self.hop:g} s)"
            )
        return f.first + i

    def vector(self, file: str | Path, start: float) -> np.ndarray:
        """The stored embedding of the window of ``file`` nearest ``start``. Shapes: (D,)."""
        return self.embeddings[self.row(file, start)].copy()

    def hit(self, row: int, score: float) -> Hit:
        f = self.files[int(self.file_of[row])]
        start = float(self.starts[row])
        return Hit(
            file=str(self.path(f.name)),
            start=max(start, 0.0),
            end=min(start + self.window, f.duration),
            score=float(score),
            name=f.name,
        )

    def search(
        self, query: np.ndarray | tuple[str | Path, float], k: int = 10, exclude_same_file: bool = False
    ) -> list[Hit]:
        """The ``k`` windows most similar to ``query`` (a (D,) vector or a ``(file, start)`` window).

        Ranked by cosine similarity, highest first. A window query finds itself first (similarity
        1); ``exclude_same_file`` leaves out every window of the query's file.

        Shapes: query (D,) -> up to k hits.
        """
        if isinstance(k, bool) or int(k) < 1:
            raise AscaError(f"k must be >= 1, got {k}")
        skip = -1
        if isinstance(query, tuple):
            row = self.row(*query)
            vector = self.embeddings[row]
            skip = int(self.file_of[row])
        else:
            vector = np.asarray(query, dtype=np.float32).reshape(-1)
            if vector.shape != (self.dims,):
                raise AscaError(f"the query must be a vector of {self.dims} numbers, got shape {np.shape(query)}")
            if not np.isfinite(vector).all():
                raise AscaError("the query vector holds NaN or infinite values")
        if len(self) == 0:
            return []
        unit = vector / max(float(np.linalg.norm(vector)), 1e-12)
        sims = self._unit @ unit  # (M,)
        if exclude_same_file and skip >= 0:
            sims = np.where(self.file_of == skip, -np.inf, sims)
        k = min(int(k), int(np.isfinite(sims).sum()))
        if k == 0:
            return []
        top = np.argpartition(-sims, k - 1)[:k] if k < sims.size else np.arange(sims.size)
        top = top[np.lexsort((top, -sims[top]))]  # by similarity, ties by position
        return [self.hit(int(r), float(sims[r])) for r in top]


__all__ = ["INDEX_FILE", "EmbeddingIndex", "Hit", "embed_files", "model_digest"]
