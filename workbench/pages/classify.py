"""Classify: a recording in, top-k classes, a window timeline, detections as Raven / Audacity /
CSV tables and the model as ONNX to download, and why (attribution + audio)."""

import io
import zipfile
from pathlib import Path

import pandas as pd
import streamlit as st

from asca_core import tables
from asca_core.errors import AudioError
from asca_core.inspect.attribution import METHODS
from workbench import figures, state

METHOD_NAMES = {
    "integrated_gradients": "Integrated gradients",
    "saliency": "Saliency (|gradient|)",
    "occlusion": "Occlusion (slow)",
    "gradcam_conv": "Grad-CAM, last conv stage",
    "gradcam_attention": "Grad-CAM, last attention stage",
}


def _recording() -> Path | None:
    source = st.segmented_control(
        "Input", ["Upload", "Microphone", "File on this machine"], default="Upload", key="cls_source"
    )
    if source == "Microphone":
        recorded = st.audio_input("Record a sound", key="cls_mic")
        return state.save_upload(recorded.getvalue(), "microphone.wav") if recorded else None
    if source == "File on this machine":
        text = st.text_input("Path to an audio file", key="cls_path", placeholder="/data/dawn_chorus.flac")
        if not text:
            return None
        path = Path(text).expanduser()
        if not path.is_file():
            raise AudioError(f"no such file: {path}")
        return path
    upload = st.file_uploader(
        f"Recording (wav, flac, ogg or mp3, up to {state.MAX_UPLOAD_MB} MB)",
        type=state.AUDIO_TYPES,
        key="cls_upload",
        max_upload_size=state.MAX_UPLOAD_MB,
    )
    return state.save_upload(upload.getvalue(), upload.name) if upload else None


@st.cache_data(max_entries=8, show_spinner="Choosing detection thresholds on the validation split…")
def _thresholds(run_dir: str, stamp: float) -> dict:
    return tables.run_thresholds(run_dir, compute=True)


@st.cache_data(max_entries=4, show_spinner="Exporting to ONNX and checking it against PyTorch…")
def _onnx_zip(run_dir: str, stamp: float) -> tuple[bytes, dict]:
    """The run's export folder (model.onnx, labels, thresholds, config, export.json) as a zip."""
    from asca_core.export import export_onnx

    folder = Path(run_dir) / "export"
    record = export_onnx(run_dir, folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("model.onnx", "labels.json", "thresholds.json", "config.yaml", "export.json"):
            archive.write(folder / name, f"{Path(run_dir).name}-onnx/{name}")
    return buffer.getvalue(), record


def _downloads(run, stamp: float, clf, pred, path: Path) -> None:
    st.subheader("Detections")
    record = _thresholds(str(run.path), stamp)
    found = tables.detections(pred, tables.thresholds_by_label(record))
    source = (
        ("at 0.5 for every class: " + record["note"])
        if record.get("note")
        else f"per class, for precision ≥ {record['precision_target']:g} on the validation split"
    )
    st.caption(f"{len(found)} detection(s); thresholds {source}.")
    if found:
        st.dataframe(
            pd.DataFrame(
                [(d.start, d.end, d.label, d.score) for d in found], columns=["start (s)", "end (s)", "label", "score"]
            ),
            hide_index=True,
            key="detections_table",
        )
    cfg = clf.cfg.features
    stem = path.stem
    c1, c2, c3, c4 = st.columns(4)
    c1.download_button(
        "Raven selection table",
        tables.raven_text(found, cfg.f_min, cfg.f_max or cfg.sample_rate / 2),
        file_name=f"{stem}.selections.txt",
        mime="text/tab-separated-values",
        key="dl_raven",
    )
    c2.download_button(
        "Audacity labels",
        tables.audacity_text(found),
        file_name=f"{stem}.labels.txt",
        mime="text/plain",
        key="dl_audacity",
    )
    c3.download_button(
        "Detections CSV",
        tables.detections_csv(found),
        file_name=f"{stem}.detections.csv",
        mime="text/csv",
        key="dl_csv",
    )
    if c4.toggle("ONNX model", key="cls_onnx", help="export the run with its front end inside (a few seconds)"):
        data, info = _onnx_zip(str(run.path), stamp)
        c4.download_button(
            "Download ONNX (zip)", data, file_name=f"{run.name}-onnx.zip", mime="application/zip", key="dl_onnx"
        )
        st.caption(
            f"ONNX opset {info['opset']}: waveform windows of {info['input']['window_seconds']:g} s at "
            f"{info['input']['sample_rate']:,} Hz in, probabilities out; max difference from PyTorch "
            f"{info['parity']['max_abs_diff']:.1e}."
        )


def render() -> None:
    st.title("Classify")
    run = state.pick_run(state.model_runs())
    if run is None:
        state.quick_demo_offer()
        return
    stamp = state.checkpoint_stamp(run.path)
    clf = state.classifier(str(run.path), stamp)
    st.caption(
        f"{run.model or 'model'} · {len(clf.labels)} classes · {clf.clip_seconds:g} s windows at "
        f"{clf.sample_rate:,} Hz · {'independent (sigmoid)' if clf.activation == 'sigmoid' else 'softmax'} scores"
    )
    path = _recording()
    if path is None:
        st.info("Upload a recording, record one, or give a path to classify it.")
        return
    c1, c2 = st.columns(2)
    top_k = c1.slider("Top classes", 1, min(10, len(clf.labels)), min(5, len(clf.labels)), key="cls_topk")
    hop = c2.slider("Window hop (s)", 0.25, clf.clip_seconds, clf.clip_seconds / 2, 0.25, key="cls_hop")
    pred = state.predict(str(run.path), stamp, str(path), top_k, None, hop)
    st.audio(path.read_bytes(), format=state.audio_mime(path))

    left, right = st.columns([2, 3])
    top = pd.DataFrame(pred.top, columns=["class", "probability"])
    left.dataframe(
        top,
        hide_index=True,
        key="topk_table",
        column_config={
            "probability": st.column_config.ProgressColumn(
                "probability", format="percent", min_value=0.0, max_value=1.0
            )
        },
    )
    left.caption(f"{pred.duration:.1f} s, {len(pred.timeline)} window(s); clip score = max over windows.")
    right.plotly_chart(figures.top_k_bars([c for c, _ in pred.top], [p for _, p in pred.top]), key="topk_bars")
    timeline = pred.timeline_array()
    if len(pred.timeline) > 1:
        st.plotly_chart(
            figures.prediction_timeline(
                [w.start for w in pred.timeline], timeline, pred.labels, window=pred.window, top=max(top_k, 3)
            ),
            key="timeline",
        )

    _downloads(run, stamp, clf, pred, path)

    st.subheader("Why?")
    c1, c2, c3, c4 = st.columns([2, 2, 2, 1])
    method = c1.selectbox("Attribution method", METHODS, format_func=lambda m: METHOD_NAMES[m], key="cls_method")
    target = c2.selectbox("Class to explain", [c for c, _ in pred.top], key="cls_target")
    if method is None or target is None:  # a select box with options always has a choice
        return
    k = pred.labels.index(target)
    best = max(pred.timeline, key=lambda w: w.probs[k])
    starts = [w.start for w in pred.timeline]
    start = c3.selectbox(
        "Window",
        starts,
        index=starts.index(best.start),
        key="cls_window",
        format_func=lambda s: f"{s:.2f}–{s + pred.window:.2f} s",
    )
    keep = c4.slider("Keep %", 2, 50, 10, key="cls_keep")
    attr, audio, sr = state.explain(str(run.path), stamp, str(path), float(start), method, target, keep / 100)
    cfg = clf.cfg.features
    st.plotly_chart(
        figures.attribution_overlay(
            attr.spec,
            attr.map,
            cfg.sample_rate,
            cfg.hop_length,
            freqs_hz=attr.freqs,
            t0=float(start + attr.times[0]),
            title=f"{METHOD_NAMES[method]} for “{target}” (red raised its score, blue lowered it)",
        ),
        key="attribution",
    )
    st.markdown(f"**Listen to the explanation:** only the {keep}% most attributed time-frequency cells of the window.")
    st.audio(audio, sample_rate=sr)
    with st.expander("Is the explanation faithful? Deletion and insertion curves"):
        curves = state.faithfulness(str(run.path), stamp, str(path), float(start), method, target, keep / 100)
        st.plotly_chart(figures.deletion_insertion(*curves, target=target), key="faithfulness")


state.training_sidebar(offer=False)
state.guarded(render)
