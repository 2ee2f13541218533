"""The Review page under Streamlit's AppTest: rank detections in long recordings, decide with the
buttons, find similar windows, and every decision is in the folder's manifest after a reload."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from streamlit.testing.v1 import AppTest

from workbench import jobs

pytest.importorskip("asca_core.review", reason="the review core (asca_core.review) is not installed")

ROOT = Path(__file__).resolve().parents[1]
# Three recordings of four 3 s demo calls each (12 s), drawn with a seed the training never saw.
LAYOUT = {
    "site_a.wav": ["trill", "buzz", "warble", "trill"],
    "site_b.wav": ["rising_chirp", "click_train", "two_note", "buzz"],
    "site_c.wav": ["harmonic_whistle", "falling_chirp", "trill", "warble"],
}


def long_recordings(folder: Path, layout: dict[str, list[str]] = LAYOUT, seed: int = 7) -> dict:
    """Write one wav per entry of ``layout``, its calls back to back; returns the known spans
    ``{(file, start, end): label}``."""
    from asca_core.data.demo import make_clip

    folder.mkdir(parents=True, exist_ok=True)
    spans = {}
    for n, (name, labels) in enumerate(layout.items()):
        parts = [make_clip(label, seed, 10 * n + i)[0] for i, label in enumerate(labels)]
        sf.write(folder / name, np.concatenate(parts), 16000, subtype="PCM_16")
        for i, label in enumerate(labels):
            spans[(name, 3.0 * i, 3.0 * i + 3.0)] = label
    return spans


def page() -> AppTest:
    return AppTest.from_file(str(ROOT / "workbench" / "pages" / "review.py"), default_timeout=300)


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def manifest_rows(folder: Path) -> list[dict]:
    with open(folder / "review.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def decided(folder: Path) -> dict:
    return {(r["file"], float(r["start"])): (r["label"], r["decision"]) for r in manifest_rows(folder) if r["decision"]}


@pytest.fixture
def recordings(tmp_path) -> Path:
    long_recordings(tmp_path / "field")
    return tmp_path / "field"


def opened(folder: Path) -> AppTest:
    at = page().run()
    at.text_input(key="rv_folder").input(str(folder)).run()
    return ok(at)


def test_review_ranks_decides_and_keeps_every_decision_across_a_reload(runs_root, tiny_run, recordings):
    at = opened(recordings)
    table = at.dataframe[0].value
    assert set(table["file"]) <= set(LAYOUT)
    assert np.all(np.diff(table["score"].to_numpy()) <= 1e-6)  # most confident first
    at.segmented_control(key="rv_rank").set_value("uncertainty").run()  # every window: plenty to decide
    table = ok(at).dataframe[0].value
    assert len(table) >= 12 and (table["decision"] == "").all()
    assert len(manifest_rows(recordings)) >= len(table)  # the detections are on record, pending
    assert at.button(key="rv_accept").proto.shortcut.lower() == "a"  # the keyboard drives the review

    first = table.iloc[0]
    at.button(key="rv_accept").click().run()
    assert decided(recordings) == {(first["file"], first["start (s)"]): (first["predicted"], "accept")}
    assert ok(at).selectbox(key="rv_pick").index == 1  # on to the next pending detection

    second = at.dataframe[0].value.iloc[1]
    at.text_input(key="rv_new_label").input("frog")
    at.button(key="rv_relabel").click().run()
    assert decided(recordings)[(second["file"], second["start (s)"])] == ("frog", "relabel")  # saved at once
    assert ok(at).text_input(key="rv_new_label").value == ""  # a typed label is for one window
    assert "frog" in at.selectbox(key="rv_relabel_class").options  # and is offered from then on
    third = at.dataframe[0].value.iloc[2]
    at.selectbox(key="rv_relabel_class").set_value(
        next(c for c in at.selectbox(key="rv_relabel_class").options if c != third["predicted"])
    )
    relabel_to = at.selectbox(key="rv_relabel_class").value
    at.text_input(key="rv_new_label").input("")
    at.button(key="rv_relabel").click().run()
    at.button(key="rv_reject").click().run()
    fourth = ok(at).dataframe[0].value.iloc[3]
    expected = {
        (first["file"], first["start (s)"]): (first["predicted"], "accept"),
        (second["file"], second["start (s)"]): ("frog", "relabel"),
        (third["file"], third["start (s)"]): (relabel_to, "relabel"),
        (fourth["file"], fourth["start (s)"]): (fourth["predicted"], "reject"),
    }
    assert decided(recordings) == expected
    assert "4 of" in at.get("progress")[0].proto.text

    again = opened(recordings)  # a new session: the decisions come back from the manifest
    again.segmented_control(key="rv_rank").set_value("uncertainty").run()
    table = again.dataframe[0].value
    assert list(table["decision"][:4]) == ["accept", "relabel", "relabel", "reject"]
    assert list(table["label"][:4]) == [first["predicted"], "frog", relabel_to, fourth["predicted"]]
    assert again.selectbox(key="rv_pick").index == 0
    assert "4 of" in again.get("progress")[0].proto.text
    again.button(key="rv_next").click().run()
    assert ok(again).selectbox(key="rv_pick").index == 1
    again.button(key="rv_prev").click().run()
    assert ok(again).selectbox(key="rv_pick").index == 0
    assert decided(recordings) == expected  # moving around changes nothing saved


def test_a_decision_goes_to_the_detection_on_screen(runs_root, tiny_run, recordings):
    at = opened(recordings)
    at.segmented_control(key="rv_rank").set_value("uncertainty").run()
    at.selectbox(key="rv_pick").select_index(2).run()
    chosen = ok(at).dataframe[0].value.iloc[2]
    assert chosen[""] == "▶"  # the selected detection is marked in the table
    at.button(key="rv_reject").click().run()
    assert decided(recordings) == {(chosen["file"], chosen["start (s)"]): (chosen["predicted"], "reject")}
    assert ok(at).selectbox(key="rv_pick").index == 3  # on to the next pending detection
    at.segmented_control(key="rv_rank").set_value("unknown").run()
    assert ok(at).selectbox(key="rv_pick").index == 0  # a new ranking starts at its top


def test_review_explains_the_selected_detection(runs_root, tiny_run, recordings):
    import plotly.io as pio

    at = opened(recordings)
    titles = [pio.from_json(c.proto.spec).layout.title.text or "" for c in at.get("plotly_chart")]
    assert any(t.startswith("Why “") for t in titles)
    assert len(at.get("audio")) == 2  # the span and its explanation
    assert {m.label for m in at.metric} >= {"Predicted", "Score", "Decision"}


def test_review_ranks_by_uncertainty_and_none_of_these(runs_root, tiny_run, recordings):
    at = opened(recordings)
    for rank, column in (("uncertainty", None), ("unknown", "unknown")):
        at.segmented_control(key="rv_rank").set_value(rank).run()
        table = ok(at).dataframe[0].value
        assert len(table) >= 12  # every window outside a detection is a span of its own
        if column:
            assert np.all(np.diff(table[column].to_numpy()) <= 1e-6)  # most unlike the classes first


def test_find_similar_lists_neighbours_and_labels_them_in_bulk(runs_root, tiny_run, recordings):
    at = opened(recordings)
    at.button(key="rv_find_similar").click().run()
    hits = ok(at).dataframe[1].value
    assert 1 <= len(hits) <= 10 and np.all(np.diff(hits["similarity"].to_numpy()) <= 1e-6)
    at.multiselect(key="rv_bulk_pick").set_value([0, 1])
    at.selectbox(key="rv_bulk_label").set_value("trill")
    at.button(key="rv_bulk_apply").click().run()
    saved = decided(recordings)
    ok(at)
    for _, h in hits.iloc[:2].iterrows():
        assert saved[(h["file"], h["start (s)"])][0] == "trill"
    assert len(saved) == 2


def test_review_names_a_bad_folder(runs_root, tiny_run, tmp_path):
    at = page().run()
    at.text_input(key="rv_folder").input(str(tmp_path / "no-such-folder")).run()
    assert not at.exception
    assert at.error and "no-such-folder" in at.error[0].value
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no audio here")
    at.text_input(key="rv_folder").input(str(tmp_path / "notes")).run()
    assert not at.exception
    assert at.error and "holds no recordings" in at.error[0].value


def test_review_names_a_recording_that_cannot_be_read(runs_root, tiny_run, recordings):
    (recordings / "broken.wav").write_bytes(b"RIFF not really a wave file")
    at = page().run()
    at.text_input(key="rv_folder").input(str(recordings)).run()
    assert not at.exception
    text = " ".join(e.value for e in at.error) + " ".join(w.value for w in at.warning)
    assert "broken.wav" in text


def test_retrain_from_review_starts_a_background_run(tmp_path, monkeypatch, tiny_run, recordings):
    import shutil

    monkeypatch.setenv("ASCA_RUNS_DIR", str(tmp_path / "runs"))
    shutil.copytree(tiny_run, tmp_path / "runs" / tiny_run.name)
    at = opened(recordings)
    assert at.button(key="rv_retrain").disabled  # nothing reviewed yet
    at.button(key="rv_accept").click().run()
    at.button(key="rv_retrain").click().run()
    ok(at)
    runs = [r for r in jobs.list_runs(tmp_path / "runs") if r.name != tiny_run.name]
    try:
        assert len(runs) == 1
        assert runs[0].name in " ".join(s.value for s in at.success)
    finally:
        for r in runs:
            jobs.stop_run(r.path)


def test_the_app_routes_to_the_review_page(runs_root):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240).run()
    at.switch_page("workbench/pages/review.py").run()
    assert not at.exception
    assert at.title[0].value == "Review"


def test_runs_page_shows_a_retrained_run_before_and_after(tmp_path, monkeypatch, tiny_run):
    import json
    import shutil

    runs = tmp_path / "runs"
    monkeypatch.setenv("ASCA_RUNS_DIR", str(runs))
    shutil.copytree(tiny_run, runs / tiny_run.name)
    shutil.copytree(tiny_run, runs / "retrained")
    (runs / "retrained" / "job.json").write_text(json.dumps({"parent_run": str(runs / tiny_run.name)}))
    at = AppTest.from_file(str(ROOT / "workbench" / "pages" / "runs.py"), default_timeout=300).run()
    ok(at)
    assert at.selectbox(key="review_run").value == "retrained"
    assert "Before and after review" in [h.value for h in at.subheader]
    assert tiny_run.name in " ".join(c.value for c in at.caption)
    table = next(m.value for m in at.markdown if "| **all** |" in m.value)
    assert "acc before" in table and "acc after" in table
