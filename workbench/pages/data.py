"""Data: a dataset's classes, durations and clips; one clip as audio, waveform and log-Mel."""

import numpy as np
import streamlit as st
import torch

from asca_core.config import DATASET_FORMATS, LAYOUTS, FeatureConfig
from asca_core.features import fit_time, pad_to_multiple
from asca_core.geometry import INPUT_MULTIPLE, n_fft_for
from workbench import figures, state

FORMATS = ["auto", *DATASET_FORMATS]
MAX_SECONDS = 30.0  # decoded per view: long field recordings are browsed with an offset


def render() -> None:
    st.title("Data")
    st.caption(
        "The built-in demo set, or any folder-per-class tree, CSV manifest, BirdCLEF 2023 "
        "or ESC-50 folder on this machine."
    )
    c1, c2, c3 = st.columns([6, 2, 1.4], vertical_alignment="bottom")
    path = c1.text_input(
        "Dataset", value="demo", key=state.KEYS["dataset"], help="`demo`, a folder, or a manifest CSV path"
    )
    fmt = c2.selectbox("Format", FORMATS, key=state.KEYS["format"])
    if c3.button("Reload", icon=":material/refresh:", help="Read the dataset again (files added or changed)"):
        state.dataset_table.clear()
    table, facts = state.dataset_table(path, fmt)
    hours = table["duration"].sum() / 3600
    m = st.columns(5)
    m[0].metric("Clips", f"{len(table):,}")
    m[1].metric("Classes", len(facts["classes"]))
    m[2].metric("Audio", f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min")
    m[3].metric("Format", facts["format"] + (" · multi-label" if facts["multi_label"] else ""))
    m[4].metric("Skipped files", len(facts["problems"]))
    if facts["problems"]:
        with st.expander(f"{len(facts['problems'])} file(s) skipped"):
            st.dataframe([{"file": f, "reason": r} for f, r in facts["problems"]], hide_index=True)

    left, right = st.columns(2)
    by_split = {
        s: table[table["split"] == s]["labels"].str.split("; ").explode().value_counts().to_dict()
        for s in ("train", "val", "test")
        if (table["split"] == s).any()
    }
    counts = by_split or table["labels"].str.split("; ").explode().value_counts().to_dict()
    left.plotly_chart(figures.class_counts(counts), key="class_counts")
    right.plotly_chart(figures.duration_histogram(table["duration"].dropna(), clip_seconds=3.0), key="durations")

    st.subheader("Clips")
    query = st.text_input("Search clips", placeholder="part of a file name or label", key="clip_search")
    shown = (
        table[
            table["file"].str.contains(query, case=False, regex=False)
            | table["labels"].str.contains(query, case=False, regex=False)
        ]
        if query
        else table
    )
    event = st.dataframe(
        shown.drop(columns="path"),
        hide_index=True,
        height=240,
        key="clip_table",
        on_select="rerun",
        selection_mode="single-row",
        column_config={"duration": st.column_config.NumberColumn("duration (s)", format="%.2f")},
    )
    if shown.empty:
        st.info("No clip matches the search.")
        return
    rows = event.selection.rows if event is not None and hasattr(event, "selection") else []
    clip = shown.iloc[rows[0] if rows else 0]
    st.subheader(f"{clip['file']} · {clip['labels']}")

    s = st.columns(5)
    n_mels = s[0].slider("Mel bins", 32, 256, 128, 16, key="n_mels")
    hop_ms = s[1].slider("Hop (ms)", 2.0, 40.0, 10.0, 1.0, key="hop_ms")
    win_ms = s[2].slider("Window (ms)", 10.0, 100.0, 25.0, 5.0, key="win_ms")
    window = s[3].selectbox("Window", ["hamming", "hann", "povey"], key="window_fn")
    layout = s[4].selectbox("Model layout", list(LAYOUTS), key="grid_layout")
    duration = float(clip["duration"] or 0.0)
    offset = 0.0
    if duration > MAX_SECONDS:
        offset = st.slider("Start (s)", 0.0, duration - MAX_SECONDS, 0.0, 1.0, key="clip_offset")
    wave, rate = state.load_clip(clip["path"], None, offset, MAX_SECONDS)
    hop, win = max(1, round(hop_ms * rate / 1000)), max(8, round(win_ms * rate / 1000))
    spec = state.log_mel(wave, rate, n_mels, hop, win, window)

    st.audio(wave, sample_rate=rate)
    st.plotly_chart(figures.waveform(wave, rate, height=180), key="waveform")
    st.plotly_chart(
        figures.spectrogram(
            spec,
            rate,
            hop,
            f_min=50.0,
            title=f"log-Mel · {n_mels} bins, hop {hop} samples ({hop_ms:g} ms), window {win_ms:g} ms {window}",
        ),
        key="spectrogram",
    )

    st.subheader("What the model sees")
    cfg = FeatureConfig(
        sample_rate=rate,
        n_fft=n_fft_for(win),
        win_length=win,
        hop_length=hop,
        n_mels=n_mels,
        window=window,
        clip_seconds=3.0,
    )
    model_input = pad_to_multiple(
        fit_time(torch.from_numpy(spec), cfg.frames), INPUT_MULTIPLE, value=float(np.min(spec))
    )
    st.caption(
        f"A {cfg.clip_seconds:g} s crop is {cfg.frames} frames; with the mel axis padded to "
        f"{cfg.input_size[0]} bins the model input is {cfg.input_size[0]} × {cfg.input_size[1]}. "
        "Each stage halves both axes; transformer stages attend over every position of their grid."
    )
    st.plotly_chart(figures.token_grid(model_input.numpy(), rate, hop, layout=layout, f_min=50.0), key="token_grid")


state.training_sidebar()
state.guarded(render)
