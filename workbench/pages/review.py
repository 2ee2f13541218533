"""Review: a run's detections in a folder of recordings, ranked; listen, see why, accept / reject /
relabel with the keyboard, label similar windows in bulk, and retrain from the decisions.

Every decision goes at once into the folder's review manifest (``FOLDER/review.csv``: file, start,
end, label, decision), so a reload or a restart loses nothing and the CLI reads the same file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from asca_core.errors import AscaError
from asca_core.inspect.attribution import METHODS
from workbench import figures, state

REVIEW_FILE = "review.csv"  # the folder's manifest of decisions
RANKS = {
    "confidence": "Most confident first",
    "uncertainty": "Least certain first",
    "unknown": "“None of these” first",
}
DECIDED = ("accept", "reject", "relabel")
NEW_LABEL = "rv_new_label"
K = {  # session-state keys of this page
    "folder": "rv_folder",
    "rank": "rv_rank",
    "limit": "rv_limit",
    "threshold": "rv_threshold",
    "pick": "rv_pick",
    "relabel": "rv_relabel_class",
    "error": "rv_error",
    "listing": "rv_listing",
    "similar": "rv_similar",
    "retrained": "rv_retrained",
}


# ----------------------------------------------------------------------------- cached work
@st.cache_data(max_entries=8, show_spinner="Scoring every window of the folder…")
def _candidates(
    run_dir: str,
    stamp: float,
    files: tuple[str, ...],
    signature: str,
    rank: str,
    limit: int,
    threshold: float | None = None,
) -> list:
    """Ranked detections (``asca_core.review.Candidate``) of ``files``; ``signature`` keys their
    contents; ``threshold`` (one for every class) replaces the run's per-class thresholds."""
    from asca_core.review import find_candidates

    return find_candidates(
        state.classifier(run_dir, stamp), [Path(f) for f in files], rank=rank, limit=limit, threshold=threshold
    )


@st.cache_resource(max_entries=4, show_spinner="Embedding every window of the folder (once; kept on disk)…")
def _index(run_dir: str, stamp: float, folder: str, files: tuple[str, ...], signature: str) -> Any:
    """The folder's window embeddings under the cache folder: built on first use, later only
    recordings that are new or changed are embedded again."""
    from asca_core.embeddings import EmbeddingIndex, embed_files
    from asca_core.utils import cache_dir

    key = hashlib.sha1(f"{Path(run_dir).resolve()}|{stamp}|{folder}".encode()).hexdigest()[:16]
    out = embed_files(
        state.classifier(run_dir, stamp), [Path(f) for f in files], cache_dir() / "embeddings" / key, root=folder
    )
    return EmbeddingIndex.load(out)


def _signature(files: list[Path]) -> str:
    """Names, sizes and modification times: a changed recording is scored again."""
    parts = []
    for f in files:
        info = f.stat()
        parts.append(f"{f}|{info.st_size}|{info.st_mtime_ns}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


# ----------------------------------------------------------------------------- inputs
def _folder() -> tuple[Path, list[Path]] | None:
    text = st.text_input(
        "Folder of recordings",
        key=K["folder"],
        placeholder="/data/field-recordings/site-a",
        help=f"wav, flac, ogg or mp3 files in this folder; the decisions are saved beside them in {REVIEW_FILE}",
    )
    if not text.strip():
        return None
    from asca_core.inference import audio_files

    folder = Path(text.strip()).expanduser()
    if not folder.is_dir():
        raise AscaError(f"no such folder: {folder}")
    files, left_out = audio_files(folder)
    for path, why in left_out:
        st.warning(f"{Path(path).name} left out: {why}", icon=":material/warning:")
    if not files:
        raise AscaError(f"{folder} holds no recordings (wav, flac, ogg or mp3)")
    return folder.resolve(), [f.resolve() for f in files]


def _key(file: str | Path, start: float, end: float) -> tuple[str, float]:
    """A window by its recording's name and start (an end may be clipped to the recording)."""
    return Path(file).name, round(max(float(start), 0.0), 3)


def _decisions(manifest: Path, folder: Path) -> dict[tuple[str, float], Any]:
    """Saved rows of the manifest by (file name, start, end)."""
    from asca_core.review import read_manifest

    if not manifest.is_file():
        return {}
    return {_key(r.file, r.start, r.end): r for r in read_manifest(manifest, root=folder)}


def _save(manifest: Path, rows: list[Any]) -> None:
    from asca_core.review import write_manifest

    try:
        write_manifest(manifest, rows)
    except OSError as exc:
        raise AscaError(f"cannot save the review to {manifest}: {exc.strerror or exc}") from exc


def _row(cand: Any, label: str, decision: str, folder: Path) -> Any:
    from asca_core.review import ReviewRow

    return ReviewRow(
        file=str(cand.file),  # absolute: the manifest stores it relative to its folder
        start=float(cand.start),
        end=float(cand.end),
        label=label,
        decision=decision,
        predicted=cand.label,
        score=float(cand.score),
    )


# ----------------------------------------------------------------------------- sections
def _table(cands: list, saved: dict, current: int) -> None:
    rows = []
    for i, c in enumerate(cands):
        row = saved.get(_key(c.file, c.start, c.end))
        rows.append(
            {
                "": "▶" if i == current else "",
                "#": i + 1,
                "file": Path(c.file).name,
                "start (s)": float(c.start),
                "end (s)": float(c.end),
                "predicted": c.label,
                "score": float(c.score),
                "unknown": c.unknown,
                "decision": row.decision if row else "",
                "label": row.label if row and row.decision else "",
            }
        )
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        height=min(36 * (len(rows) + 1) + 3, 280),
        key="rv_table",
        column_config={
            "score": st.column_config.ProgressColumn("score", format="%.2f", min_value=0.0, max_value=1.0),
            "unknown": st.column_config.NumberColumn("“none of these” score", format="%.2f"),
        },
    )


def _progress(cands: list, saved: dict) -> int:
    counts = dict.fromkeys(DECIDED, 0)
    for c in cands:
        row = saved.get(_key(c.file, c.start, c.end))
        if row and row.decision in counts:
            counts[row.decision] += 1
    done = sum(counts.values())
    st.progress(
        done / len(cands) if cands else 0.0,
        text=f"{done} of {len(cands)} reviewed · {counts['accept']} accepted · {counts['reject']} rejected · "
        f"{counts['relabel']} relabelled",
    )
    return done


def _next_pending(cands: list, saved: dict, after: int) -> int:
    """The next detection without a decision after ``after`` (wrapping), else the one after it."""
    n = len(cands)
    for step in range(1, n + 1):
        i = (after + step) % n
        row = saved.get(_key(cands[i].file, cands[i].start, cands[i].end))
        if not (row and row.decision):
            return i
    return min(after + 1, n - 1)


def _cid(cand: Any) -> str:
    """A detection's identity across reruns and rankings: its recording's name and start."""
    name, start = _key(cand.file, cand.start, cand.end)
    return f"{name}@{start:.3f}"


def _go(cid: str) -> None:
    st.session_state[K["pick"]] = cid


def _decide(manifest: Path, cands: list, current: int, decision: str) -> None:
    """Save ``decision`` on the detection the buttons were shown for, then move on to the next
    pending one. A button callback: it runs before the page, with the values of this very click."""
    cand = cands[current]
    label = cand.label
    if decision == "relabel":
        label = str(st.session_state.get(NEW_LABEL) or "").strip() or str(st.session_state.get(K["relabel"]) or "")
        if not label:
            st.session_state[K["error"]] = "choose a class or type a new label to relabel with"
            return
    try:
        _save(manifest, [_row(cand, label, decision, manifest.parent)])
    except AscaError as exc:
        st.session_state[K["error"]] = str(exc)
        return
    if decision == "relabel":
        st.session_state[NEW_LABEL] = ""  # a typed label is for one window: the next relabel starts afresh
    saved = _decisions(manifest, manifest.parent)
    _go(_cid(cands[_next_pending(cands, saved, current)]))
    what = {"accept": f"{label} accepted", "reject": f"{label} rejected", "relabel": f"relabelled as {label}"}
    st.toast(f"Saved: {what[decision]}", icon=":material/check:")


def _controls(clf: Any, cands: list, current: int, manifest: Path, saved: dict) -> None:
    cand = cands[current]
    # two rows, so every button keeps its label and key hint at a laptop's width
    accept, reject, move, _ = st.columns([1.4, 1.4, 1.4, 2.8], vertical_alignment="bottom")
    accept.button(
        "Accept",
        key="rv_accept",
        shortcut="A",
        icon=":material/check:",
        type="primary",
        on_click=_decide,
        args=(manifest, cands, current, "accept"),
    )
    reject.button(
        "Reject",
        key="rv_reject",
        shortcut="X",
        icon=":material/close:",
        on_click=_decide,
        args=(manifest, cands, current, "reject"),
    )
    with move:
        left, right = st.columns(2)
        left.button(
            "",
            key="rv_prev",
            shortcut="P",
            icon=":material/arrow_back:",
            help="Previous",
            on_click=_go,
            args=(_cid(cands[max(current - 1, 0)]),),
        )
        right.button(
            "",
            key="rv_next",
            shortcut="N",
            icon=":material/arrow_forward:",
            help="Next",
            on_click=_go,
            args=(_cid(cands[min(current + 1, len(cands) - 1)]),),
        )
    used = sorted({*clf.labels, *(r.label for r in saved.values() if r.label and r.decision)})
    known = [label for label in used if label != cand.label] or used
    pick, typed, relabel = st.columns([2.2, 2.2, 1.4], vertical_alignment="bottom")
    pick.selectbox("Relabel as", known, key=K["relabel"])
    typed.text_input("or a new label", key=NEW_LABEL, placeholder="e.g. frog")
    relabel.button(
        "Relabel",
        key="rv_relabel",
        shortcut="L",
        icon=":material/edit:",
        on_click=_decide,
        args=(manifest, cands, current, "relabel"),
    )
    st.caption("Keys: **A** accept · **X** reject · **L** relabel · **N** next · **P** previous · **S** find similar")


def _detail(run: Any, stamp: float, clf: Any, cand: Any, saved: dict) -> None:
    row = saved.get(_key(cand.file, cand.start, cand.end))
    target = cand.label if cand.label in clf.labels else max(cand.probs, key=cand.probs.get)
    m = st.columns(4)
    m[0].metric("Predicted", cand.label)
    m[1].metric("Score", f"{cand.score:.2f}")
    m[2].metric("“None of these” score", "–" if cand.unknown is None else f"{cand.unknown:.2f}")
    m[3].metric("Decision", f"{row.decision} · {row.label}" if row and row.decision else "pending")
    path = str(cand.file)
    wave, sr = state.load_clip(
        path, clf.sample_rate, offset=max(float(cand.start), 0.0), duration=cand.end - cand.start
    )
    c1, c2, c3 = st.columns([3, 2, 1])
    c1.markdown(f"**{Path(path).name}**, {cand.start:.2f}–{cand.end:.2f} s")
    method = c2.selectbox(
        "Attribution method", METHODS, key="rv_method", format_func=lambda m: m.replace("_", " ").capitalize()
    )
    keep = c3.slider("Keep %", 2, 50, 10, key="rv_keep")
    st.audio(wave, sample_rate=sr)
    attr, audio, rate = state.explain(str(run.path), stamp, path, float(cand.start), method, target, keep / 100)
    cfg = clf.cfg.features
    st.plotly_chart(
        figures.attribution_overlay(
            attr.spec,
            attr.map,
            cfg.sample_rate,
            cfg.hop_length,
            freqs_hz=attr.freqs,
            t0=float(cand.start + attr.times[0]),
            title=f"Why “{target}”: {method.replace('_', ' ')} (red raised its score, blue lowered it)",
            height=300,
        ),
        key="rv_attribution",
    )
    st.markdown(f"**Listen to the explanation:** only the {keep}% most attributed time-frequency cells.")
    st.audio(audio, sample_rate=rate)


def _similar(
    run: Any, stamp: float, clf: Any, cands: list, cand: Any, files: list[Path], manifest: Path, folder: Path
) -> None:
    st.subheader("Similar windows")
    query = (str(cand.file), float(cand.start))
    if st.button("Find similar", key="rv_find_similar", shortcut="S", icon=":material/search:"):
        st.session_state[K["similar"]] = query
    if st.session_state.get(K["similar"]) != query:
        st.caption("The nearest windows across the folder to the selected one, by the model's pooled features.")
        return
    index = _index(str(run.path), stamp, str(folder), tuple(str(f) for f in files), _signature(files))
    hits = index.search(query, k=11)
    hits = [h for h in hits if _key(h.file, h.start, h.end) != _key(cand.file, cand.start, cand.end)][:10]
    if not hits:
        st.info("No other windows in this folder.")
        return
    by_key = {_key(c.file, c.start, c.end): c for c in cands}
    saved = _decisions(manifest, folder)
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "#": i + 1,
                    "file": Path(h.file).name,
                    "start (s)": float(h.start),
                    "end (s)": float(h.end),
                    "similarity": float(h.score),
                    "predicted": getattr(by_key.get(_key(h.file, h.start, h.end)), "label", ""),
                    "decision": getattr(saved.get(_key(h.file, h.start, h.end)), "decision", ""),
                }
                for i, h in enumerate(hits)
            ]
        ),
        hide_index=True,
        key="rv_similar_table",
    )
    cols = st.columns(5)
    for i, h in enumerate(hits):
        wave, sr = state.load_clip(
            str(h.file), clf.sample_rate, offset=max(float(h.start), 0.0), duration=h.end - h.start
        )
        cols[i % 5].caption(f"#{i + 1} · {Path(h.file).name} {h.start:.1f} s")
        cols[i % 5].audio(wave, sample_rate=sr)
    c1, c2, c3 = st.columns([3, 2, 1.4], vertical_alignment="bottom")
    picked = c1.multiselect(
        "Windows to label",
        list(range(len(hits))),
        default=list(range(len(hits))),
        key="rv_bulk_pick",
        format_func=lambda i: f"#{i + 1}",
    )
    label = c2.selectbox(
        "Label", sorted({*clf.labels, *(r.label for r in saved.values() if r.label)}), key="rv_bulk_label"
    )
    if c3.button(f"Label {len(picked)} window(s)", key="rv_bulk_apply", disabled=not picked or not label):
        from asca_core.review import ReviewRow

        rows = []
        for i in picked:
            h = hits[i]
            found = by_key.get(_key(h.file, h.start, h.end))
            predicted = found.label if found else ""
            rows.append(
                ReviewRow(
                    file=str(h.file),
                    start=float(h.start),
                    end=float(h.end),
                    label=label,
                    decision="accept" if predicted == label else "relabel",
                    predicted=predicted,
                    score=float(found.score) if found else None,
                )
            )
        _save(manifest, rows)
        st.toast(f"Saved {len(rows)} window(s) as {label}", icon=":material/check:")
        st.rerun()


def _retrain(run: Any, manifest: Path, done: int) -> None:
    from asca_core.utils import runs_dir

    st.subheader("Retrain from the review")
    st.caption(
        "A new run: the reviewed spans (accepted and relabelled; rejected ones as examples of what the "
        "label is not) plus the run's own data, trained in the background."
    )
    c1, c2 = st.columns([1, 3], vertical_alignment="bottom")
    minutes = c1.number_input("Budget (minutes)", 1, 240, 3, key="rv_budget")
    if c2.button(
        "Retrain from review", key="rv_retrain", type="primary", icon=":material/model_training:", disabled=not done
    ):
        from asca_core.review import start_retrain

        new = start_retrain(run.path, manifest, budget=f"{int(minutes)}m", runs_root=runs_dir())
        st.session_state[K["retrained"]] = Path(new).name
        st.rerun()
    name = st.session_state.get(K["retrained"])
    if name:
        st.success(f"Retraining as **{name}**: the Runs page compares it with {run.name} on the same test set.")
        try:
            st.page_link("workbench/pages/runs.py", label="Open the Runs page", icon=":material/compare_arrows:")
        except st.errors.StreamlitAPIException:  # the page alone, outside the app's navigation
            pass


def render() -> None:
    st.title("Review")
    st.caption(
        "A run's detections in a folder of long recordings, ranked; listen, see why, then accept, reject or "
        "relabel each. Decisions are saved at once in the folder's review.csv."
    )
    run = state.pick_run(state.model_runs())
    if run is None:
        state.quick_demo_offer()
        return
    stamp = state.checkpoint_stamp(run.path)
    clf = state.classifier(str(run.path), stamp)
    chosen = _folder()
    if chosen is None:
        st.info("Give a folder of recordings to review the model's detections in it.")
        return
    folder, files = chosen
    c1, c2, c3 = st.columns([5, 2, 2])
    rank = c1.segmented_control(
        "Rank by", list(RANKS), format_func=lambda r: RANKS[r], default="confidence", key=K["rank"]
    )
    threshold = c2.number_input(
        "Detection threshold",
        min_value=0.0,
        max_value=1.0,
        value=None,
        step=0.05,
        placeholder="the run's, per class",
        key=K["threshold"],
        help="A window is a detection when its best class reaches this probability; adjacent detections of one "
        "label merge into one span. Empty: the run's per-class thresholds. 1 reviews every window on its own.",
    )
    limit = c3.slider("Detections", 5, 500, 100, 5, key=K["limit"])
    rank = rank or "confidence"
    signature = _signature(files)
    cands = _candidates(str(run.path), stamp, tuple(str(f) for f in files), signature, rank, limit, threshold)
    if not cands:
        st.info(f"The model found nothing to review in the {len(files)} recording(s).")
        return
    manifest = folder / REVIEW_FILE
    saved = _decisions(manifest, folder)
    if any(_key(c.file, c.start, c.end) not in saved for c in cands):  # the detections, pending, on record
        _save(manifest, [_row(c, c.label, "", folder) for c in cands])
        saved = _decisions(manifest, folder)
    done = _progress(cands, saved)

    error = st.session_state.pop(K["error"], None)
    if error:
        st.error(error, icon=":material/error:")
    ids = [_cid(c) for c in cands]
    index = {cid: i for i, cid in enumerate(ids)}
    listing = (str(folder), signature, rank, limit, threshold)
    if st.session_state.get(K["listing"]) != listing or st.session_state.get(K["pick"]) not in index:
        st.session_state[K["listing"]] = listing  # a new list of detections starts at its top
        st.session_state[K["pick"]] = ids[0]
    picked = st.selectbox(
        "Detection",
        ids,
        key=K["pick"],
        format_func=lambda cid: (
            f"#{index[cid] + 1} · {Path(cands[index[cid]].file).name} "
            f"{cands[index[cid]].start:.1f}–{cands[index[cid]].end:.1f} s · "
            f"{cands[index[cid]].label} {cands[index[cid]].score:.2f}"
            if cid in index
            else str(cid)
        ),
    )
    current = index.get(picked, 0)
    _table(cands, saved, current)
    _controls(clf, cands, current, manifest, saved)
    _detail(run, stamp, clf, cands[current], saved)
    _similar(run, stamp, clf, cands, cands[current], files, manifest, folder)
    _retrain(run, manifest, done)
    st.caption(f"Manifest: `{manifest}`")


state.training_sidebar(offer=False)
state.guarded(render)
