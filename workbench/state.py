"""Streamlit glue shared by the pages: the error guard, cached loaders and the training sidebar.

Pages stay thin: they read widgets, call these cached wrappers around ``asca_core`` and draw
``workbench.figures``. Models are cached with ``st.cache_resource`` (keyed by the checkpoint's
modification time, so a newer checkpoint reloads); audio, features, predictions, attributions and
attention views with ``st.cache_data``. Per-user choices live in ``st.session_state`` under the
names in :data:`KEYS`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from asca_core.errors import AscaError, AudioError
from workbench import jobs

log = logging.getLogger("asca.workbench")

GENERIC_ERROR = "Something unexpected went wrong here; the details are in the server console."
MAX_UPLOAD_MB = 50
AUDIO_TYPES = ["wav", "flac", "ogg", "mp3"]
KEYS = {
    "dataset": "data_path",  # dataset path text (default "demo")
    "format": "data_format",
    "run": "selected_run",  # run folder name chosen on Attention / Classify / Runs
    "query": "attention_query",  # (freq, time) token cell clicked on the Attention page
    "was_active": "training_was_active",  # names of runs that were active at the last refresh
}


# ----------------------------------------------------------------------------- errors
def guarded(body: Callable[[], Any]) -> None:
    """Run a page (or fragment) body: AscaError → its one-line message, anything else → a short
    generic line on the page and the traceback in the server log."""
    try:
        body()
    except AscaError as exc:
        st.error(str(exc), icon=":material/error:")
    except Exception:  # the user sees one line; the console gets the traceback
        log.exception("unexpected error while rendering %s", getattr(body, "__name__", "page"))
        st.error(GENERIC_ERROR, icon=":material/error:")


# ----------------------------------------------------------------------------- data
@st.cache_data(show_spinner="Reading the dataset…", max_entries=8)
def dataset_table(path: str, format: str = "auto") -> tuple[Any, dict[str, Any]]:
    """Clip table (pandas) and facts of a dataset; ``"demo"`` is the built-in set (generated once).

    Columns: file, labels, split, duration (s), sample_rate, path.
    """
    import pandas as pd

    from asca_core.audio import audio_info
    from asca_core.data import load_dataset, make_splits, resolve_data_path
    from asca_core.errors import DatasetError

    resolved = resolve_data_path(path.strip() or "demo")
    if not resolved.exists():
        raise DatasetError(f"dataset not found: {resolved}")
    index = load_dataset(resolved, format)
    split_of: dict[int, str] = {}
    try:
        for split, indices in make_splits(index).items():
            split_of.update(dict.fromkeys(indices, split))
    except DatasetError:
        pass  # too small to split: the table simply has no split column values
    rows, unreadable = [], []
    for i, clip in enumerate(index.clips):
        try:
            info = audio_info(clip.path)
            duration, rate = info.duration, info.sample_rate
        except AscaError as exc:
            duration, rate = None, None
            unreadable.append((index.relpath(clip.path), str(exc)))
        rows.append(
            {
                "file": index.relpath(clip.path),
                "labels": "; ".join(clip.labels),
                "split": split_of.get(i, clip.split or ""),
                "duration": duration,
                "sample_rate": rate,
                "path": str(clip.path),
            }
        )
    table = pd.DataFrame(rows, columns=["file", "labels", "split", "duration", "sample_rate", "path"])
    facts = {
        "root": str(index.root),
        "format": index.format,
        "classes": list(index.classes),
        "multi_label": index.multi_label,
        "problems": list(index.problems) + unreadable,
        "manifest": str(index.manifest) if index.manifest else None,
    }
    return table, facts


@st.cache_data(max_entries=32, show_spinner=False)
def load_clip(
    path: str, sample_rate: int | None = None, offset: float = 0.0, duration: float | None = None
) -> tuple[np.ndarray, int]:
    """Decoded mono audio and its rate (the file's own rate when ``sample_rate`` is None)."""
    from asca_core.audio import audio_info, load_audio

    rate = int(sample_rate or audio_info(path).sample_rate)
    return load_audio(path, rate, offset=offset, duration=duration), rate


@st.cache_data(max_entries=32, show_spinner=False)
def log_mel(
    wave: np.ndarray,
    sample_rate: int,
    n_mels: int = 128,
    hop_length: int = 160,
    win_length: int = 400,
    window: str = "hamming",
    f_min: float = 50.0,
) -> np.ndarray:
    """Log-Mel spectrogram of a wave with the library's front end.

    Shapes: wave (T,) -> (n_mels, frames).
    """
    import torch

    from asca_core.config import FeatureConfig
    from asca_core.features import log_mel as _log_mel
    from asca_core.geometry import n_fft_for

    n_fft = n_fft_for(win_length)
    FeatureConfig(
        sample_rate=sample_rate,
        n_fft=n_fft,
        win_length=win_length,
        hop_length=hop_length,
        n_mels=n_mels,
        f_min=f_min,
        window=window,
        clip_seconds=max(1.0, 64 * hop_length / sample_rate),
    )
    spec = _log_mel(
        torch.from_numpy(np.ascontiguousarray(wave)),
        sample_rate,
        n_fft,
        win_length,
        hop_length,
        n_mels,
        f_min,
        None,
        window,
    )
    return spec[0, 0].numpy()


def save_upload(data: bytes, name: str) -> Path:
    """Store uploaded bytes under the cache folder as ``uploads/<content hash>/<name>``.

    The same upload maps to the same file (so cached predictions are reused), and the file keeps
    the user's name, so an error message names the file the user chose.
    """
    from asca_core.utils import cache_dir

    name = Path(name).name or "recording.wav"
    ext = Path(name).suffix.lower()
    if ext.lstrip(".") not in AUDIO_TYPES:
        raise AudioError(f"{name}: unsupported file type {ext or '(none)'}; use {', '.join(AUDIO_TYPES)}")
    if len(data) > MAX_UPLOAD_MB * 1024 * 1024:
        raise AudioError(f"{name} is {len(data) / 2**20:.0f} MB; the limit is {MAX_UPLOAD_MB} MB")
    folder = cache_dir() / "uploads" / hashlib.sha1(data).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    # Reused only as a plain file of this folder: a symlink planted here must never be followed.
    if path.is_symlink() or not path.is_file() or path.resolve().parent != folder.resolve():
        tmp = folder / f".{name}.part"
        tmp.unlink(missing_ok=True)  # a link in its place would send the write elsewhere
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        tmp.replace(path)  # replaces a link itself, never its target
    return path


# ----------------------------------------------------------------------------- models
def checkpoint_stamp(run_dir: str | Path, checkpoint: str = "best") -> float:
    """Modification time of a run's checkpoint: part of every cache key, so retraining reloads."""
    path = Path(run_dir) / "checkpoints" / f"{checkpoint}.safetensors"
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def classifier(run_dir: str, stamp: float, checkpoint: str = "best") -> Any:
    """The run's :class:`~asca_core.inference.Classifier` on CPU (one per checkpoint version)."""
    from asca_core.inference import Classifier

    return Classifier.from_run(run_dir, checkpoint=checkpoint, device="cpu")


@st.cache_data(max_entries=16, show_spinner="Listening…")
def predict(
    run_dir: str, stamp: float, path: str, top_k: int = 5, window: float | None = None, hop: float | None = None
) -> Any:
    """Sliding-window :class:`~asca_core.inference.Prediction` of a file."""
    return classifier(run_dir, stamp).predict(path, top_k=top_k, window=window, hop=hop)


@st.cache_data(max_entries=8, show_spinner="Explaining the prediction…")
def explain(
    run_dir: str, stamp: float, path: str, start: float, method: str, target: str | None, keep: float = 0.1
) -> tuple[Any, np.ndarray, int]:
    """Attribution of one window (from ``start`` s) and its listenable explanation.

    Returns ``(Attribution, explanation wave, sample rate)``.
    """
    from asca_core.audio import load_audio
    from asca_core.geometry import fit_length
    from asca_core.inspect.attribution import attribute, explain_audio

    clf = classifier(run_dir, stamp)
    wave = load_audio(path, clf.sample_rate, offset=start, duration=clf.clip_seconds)
    # The window predict scored: a recording shorter than one window goes in whole, and attribute()
    # centres it in its window as predict and evaluation do (the map stays in the recording's
    # seconds); a later window that runs past the end of a longer recording is padded at its end.
    if start > 0:
        wave = fit_length(wave, int(round(clf.clip_seconds * clf.sample_rate)), start=0)
    options: dict[str, Any] = {"n_steps": 16} if method == "integrated_gradients" else {}
    attr = attribute(clf, wave, method=method, target=target, sample_rate=clf.sample_rate, **options)
    audio = explain_audio(attr, wave, clf.sample_rate, keep=keep)
    return attr, audio, clf.sample_rate


@st.cache_data(max_entries=8, show_spinner="Deleting and inserting cells…")
def faithfulness(
    run_dir: str, stamp: float, path: str, start: float, method: str, target: str | None, keep: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deletion and insertion curves of :func:`explain`'s attribution: (fractions, deletion, insertion)."""
    from asca_core.inspect.faithfulness import deletion_curve, insertion_curve

    attr, _, _ = explain(run_dir, stamp, path, start, method, target, keep)
    clf = classifier(run_dir, stamp)
    deletion = deletion_curve(clf, attr, steps=10)
    insertion = insertion_curve(clf, attr, steps=10)
    return deletion.fractions, deletion.probs, insertion.probs


@st.cache_data(max_entries=16, show_spinner="Capturing attention…")
def attention(
    run_dir: str, stamp: float, path: str, start: float, block: str | None, query: tuple[int, int] | None
) -> Any:
    """:class:`~asca_core.inspect.views.AttentionViews` of one clip for one query token."""
    from asca_core.inspect.views import attention_views

    return attention_views(classifier(run_dir, stamp), path, block=block, query=query, start=start)


# ----------------------------------------------------------------------------- runs
def model_runs() -> list[jobs.RunInfo]:
    """Runs with a best checkpoint, finished ones first, newest first within each.

    Damaged runs come last: listed as damaged, picking one shows the line naming its bad file.
    """
    runs = [
        r
        for r in jobs.list_runs()
        if r.has_model or (r.problem and (r.path / "checkpoints" / "best.safetensors").exists())
    ]
    return sorted(runs, key=lambda r: (r.problem is not None, r.state != "finished"))


def run_label(info: jobs.RunInfo) -> str:
    best = info.best("val_map")
    extra = f" · val mAP {best:.3f}" if best is not None else ""
    return f"{info.name} ({info.state}{extra})"


def pick_run(runs: list[jobs.RunInfo], label: str = "Trained run") -> jobs.RunInfo | None:
    """A selectbox over ``runs`` remembering the choice across pages."""
    if not runs:
        return None
    names = [r.name for r in runs]
    if st.session_state.get(KEYS["run"]) not in names:
        st.session_state[KEYS["run"]] = names[0]
    name = st.selectbox(
        label, names, key=KEYS["run"], format_func=lambda n: run_label(next(r for r in runs if r.name == n))
    )
    return next(r for r in runs if r.name == name)


def start_quick_demo() -> jobs.RunInfo:
    """Train the demo preset in the background: about two minutes on 2 CPU cores."""
    preset = jobs.list_presets().get("demo")
    overrides = [] if preset else ["data.path=demo"]
    return jobs.start_training(preset, overrides, name="quick-demo")


def _progress_line(info: jobs.RunInfo) -> str:
    status = info.status
    epochs = info.epochs or "?"
    batch, batches = status.get("batch"), status.get("batches")
    within = f", batch {batch}/{batches}" if batch and batches else ""
    return f"**{info.name}** · {info.state} · epoch {info.epoch}/{epochs}{within}"


def run_fraction(info: jobs.RunInfo) -> float:
    """Progress of a run in [0, 1], counting batches of the current epoch."""
    if info.state == "finished":
        return 1.0
    epochs = info.epochs or 0
    if not epochs:
        return 0.0
    batch, batches = info.status.get("batch") or 0, info.status.get("batches") or 0
    return min(1.0, (info.epoch + (batch / batches if batches else 0.0)) / epochs)


def quick_demo_offer(where: str = "main") -> None:
    """When no trained model exists: explain why and offer the one-click demo training.

    Draws into the current container; ``where`` names the place (``main`` or ``sidebar``) and
    keys the button.
    """
    area = st
    if model_runs():
        return
    active = [r for r in jobs.list_runs() if r.active]
    if active:
        area.info(
            "A training run is under way; its first model appears after the first epoch.",
            icon=":material/model_training:",
        )
        return
    box = area.container(border=True)
    box.markdown(
        "**No trained model yet.** A quick demo training (asca_tiny on the built-in "
        "bird-call set, `configs/demo.yaml`) takes about two minutes on two CPU cores and "
        "makes Classify and Attention work."
    )
    if box.button(
        "Train a quick demo model", type="primary", key=f"quick_demo_{where}", icon=":material/rocket_launch:"
    ):
        info = start_quick_demo()
        st.toast(f"Started {info.name}")
        st.rerun()


def training_sidebar(offer: bool = True) -> None:
    """Sidebar block: live progress of active runs (refreshing), or the quick-demo offer.

    Pages that make the offer in their main area pass ``offer=False``.
    """
    active = [r for r in jobs.list_runs() if r.active]
    with st.sidebar:  # a fragment draws into the container it is called in
        if active:
            _live_sidebar()
        elif offer:
            guarded(lambda: quick_demo_offer("sidebar"))


@st.fragment(run_every=3)
def _live_sidebar() -> None:
    def body() -> None:
        runs = jobs.list_runs()
        active = [r for r in runs if r.active]
        was = set(st.session_state.get(KEYS["was_active"], []))
        st.session_state[KEYS["was_active"]] = [r.name for r in active]
        if was and not was & {r.name for r in active}:
            st.rerun(scope="app")  # a run just ended: pages that need a model can now use it
        st.caption("Training")
        for info in active:
            st.markdown(_progress_line(info))
            st.progress(run_fraction(info))

    guarded(body)


def audio_mime(path: str | Path) -> str:
    """MIME type of an audio file for the browser's player."""
    ext = Path(path).suffix.lower().lstrip(".")
    return {"mp3": "audio/mpeg", "ogg": "audio/ogg", "flac": "audio/flac"}.get(ext, "audio/wav")
