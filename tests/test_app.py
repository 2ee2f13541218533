"""Every workbench page under Streamlit's AppTest: no exception, key widgets, real results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import plotly.io as pio
from streamlit.testing.v1 import AppTest

from workbench import jobs

ROOT = Path(__file__).resolve().parents[1]
FSDD_CLIP = "fsdd/recordings/0_george_0.wav"
BIRD_CLIP = "birdclef2023_sample/train_audio/abethr1/XC363501.ogg"  # 18.7 s: several windows


def page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "workbench" / "pages" / f"{name}.py"), default_timeout=240)


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def figures_of(at: AppTest) -> list:
    return [pio.from_json(chart.proto.spec) for chart in at.get("plotly_chart")]


def arr(value) -> np.ndarray:
    """A figure array as NumPy: plotly serialises NumPy data as base64 typed arrays."""
    if isinstance(value, dict) and "bdata" in value:
        import base64

        data = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = [int(n) for n in str(value.get("shape", len(data))).split(",")]
        return data.reshape(shape)
    return np.asarray(value)


def labelled(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def test_app_routes_to_every_page(runs_root):
    at = ok(AppTest.from_file(str(ROOT / "app.py"), default_timeout=240).run())
    assert at.title[0].value == "Data"  # the front door is the demo data
    for name, title in [
        ("augment", "Augment"),
        ("train", "Train"),
        ("runs", "Runs"),
        ("attention", "Attention"),
        ("classify", "Classify"),
    ]:
        at.switch_page(f"workbench/pages/{name}.py").run()
        ok(at)
        assert at.title[0].value == title


def test_data_page_summarises_the_demo_set_and_follows_the_sliders(runs_root):
    at = ok(page("data").run())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Clips"] == "320" and metrics["Classes"] == "8"
    assert {"Mel bins", "Hop (ms)", "Window (ms)"} <= {s.label for s in at.slider}
    assert at.dataframe and len(at.dataframe[0].value) == 320
    assert len(at.get("audio")) == 1
    spec = figures_of(at)[3]
    assert arr(spec.data[0].z).shape == (128, 301)  # 3 s at a 10 ms hop
    labelled(at.slider, "Mel bins").set_value(64)
    labelled(at.slider, "Hop (ms)").set_value(20.0)
    ok(at.run())
    figs = figures_of(at)
    assert arr(figs[3].data[0].z).shape == (64, 151)
    assert "S4 · Transformer" in figs[4].layout.annotations[-1].text  # token grid of the CCCT layout
    at.text_input(key="clip_search").input("trill").run()
    assert set(ok(at).dataframe[0].value["labels"]) == {"trill"}


def test_data_page_reads_a_real_dataset_and_names_a_missing_one(shared_data, runs_root):
    at = page("data").run()
    at.text_input(key="data_path").input(str(shared_data / "fsdd" / "labels.csv")).run()
    metrics = {m.label: m.value for m in ok(at).metric}
    assert metrics["Clips"] == "3,000" and metrics["Classes"] == "10"
    at.text_input(key="data_path").input("/no/such/dataset").run()
    assert not at.exception
    assert any("/no/such/dataset" in e.value for e in at.error)


def test_augment_page_shows_each_augmentation(runs_root):
    at = ok(page("augment").run())
    assert len(at.tabs) == 6
    assert {"Max gain (dB)", "Time masks", "Mixup alpha (λ ~ Beta(α, α))"} <= {s.label for s in at.slider}
    assert len(at.get("audio")) == 7  # before/after for gain, shift, noise, and the pipeline's wave
    masks = figures_of(at)[3]
    before, after = arr(masks.data[0].z), arr(masks.data[1].z)
    assert (after == 0).all(axis=1).any() or (after == 0).all(axis=0).any()  # a masked band
    for label in ("Time masks", "Frequency masks"):
        labelled(at.slider, label).set_value(0)
    masks = figures_of(ok(at.run()))[3]
    np.testing.assert_array_equal(arr(masks.data[0].z), arr(masks.data[1].z))
    assert before.shape == arr(masks.data[1].z).shape


def test_train_page_lists_runs_and_builds_the_command(runs_root, tiny_run):
    at = ok(page("train").run())
    table = at.dataframe[0].value
    assert list(table["run"]) == [tiny_run.name] and list(table["state"]) == ["finished"]
    assert at.selectbox(key="tr_selected").value == tiny_run.name
    assert figures_of(at)  # the run's curves
    preset = at.selectbox(key="tr_preset").value
    at.number_input(key=f"tr_epochs_{preset}").set_value(7).run()
    assert any("--set train.epochs=7" in c.value for c in ok(at).code)
    at.text_area(key="tr_extra").input("train.lr=-1").run()
    at.button(key="tr_start").click().run()
    assert any("train.lr must be > 0" in e.value for e in at.error)
    assert [r.name for r in jobs.list_runs()] == [tiny_run.name]  # nothing was started


def test_train_page_offers_the_automatic_recipe_first(runs_root, tiny_run):
    at = ok(page("train").run())
    assert at.tabs[0].label.startswith("Auto")
    at.number_input(key="tr_auto_minutes").set_value(5).run()
    assert "asca train demo --budget 5m" in ok(at).code[0].value
    at.text_area(key="tr_auto_extra").input("train.loss=hinge").run()
    at.button(key="tr_auto_start").click().run()
    assert any("train.loss must be bce or ce" in e.value for e in at.error)
    at.text_area(key="tr_auto_extra").input("").run()
    at.text_input(key="tr_auto_data").input("/no/such/dataset").run()
    at.button(key="tr_auto_start").click().run()
    assert any("/no/such/dataset" in e.value for e in at.error)
    assert [r.name for r in jobs.list_runs()] == [tiny_run.name]  # nothing was started


def test_runs_page_compares_runs_and_reads_an_ablation(runs_root, tiny_run):
    from asca_core.train.ablate import summarize, to_csv

    at = ok(page("runs").run())
    assert at.multiselect(key="compare_runs").value == [tiny_run.name]
    titles = [f.layout.title.text or "" for f in figures_of(at)]
    assert any("Average precision" in t for t in titles) and any("Confusion matrix" in t for t in titles)
    out = runs_root / "ablation"
    out.mkdir(exist_ok=True)
    per_run = [
        {
            "layout": layout,
            "seed": s,
            "params": p,
            "gmacs": g,
            "val_acc": 0.5,
            "val_map": m + s / 100,
            "test_acc": 0.5,
            "test_map": m,
            "test_auc": 0.8,
            "test_cmap": 0.9,
            "train_minutes": 1.0,
        }
        for layout, p, g, m in [("CCCC", 2e6, 0.4, 0.6), ("CCCT", 3e6, 0.5, 0.7)]
        for s in (0, 1)
    ]
    (out / "results.csv").write_text(to_csv(summarize(per_run, ["CCCC", "CCCT"])))
    at = ok(page("runs").run())
    assert at.text_input(key="ablation_dir").value == str(out)
    bars = next(f for f in figures_of(at) if f.layout.title.text == "Layout ablation")
    assert list(arr(bars.data[0].x)) == ["CCCC", "CCCT"] and list(arr(bars.data[0].y)) == [0.6, 0.7]


def test_attention_page_maps_a_query_and_moves_it(runs_root):
    at = ok(page("attention").run())
    assert at.selectbox(key="attn_block").value.startswith("s4")
    assert {"Query frequency row", "Query time column"} == {s.label for s in at.slider}
    figs = figures_of(at)
    assert len(figs) == 5  # query map, every head, rollout, mean rollout, bias tables
    rect = figs[0].layout.shapes[0]
    at.slider(key="attn_qt").set_value(0).run()
    moved = figures_of(ok(at))[0].layout.shapes[0]
    assert moved.x0 < rect.x0 and moved.y0 == rect.y0
    at.selectbox(key="attn_head").set_value(1).run()
    assert figures_of(ok(at))[0].layout.title.text.endswith("head 1")


def test_classify_page_predicts_an_uploaded_recording(shared_data, runs_root, tiny_run):
    at = ok(page("classify").run())
    assert at.segmented_control(key="cls_source").value == "Upload"
    data = (shared_data / FSDD_CLIP).read_bytes()
    at.file_uploader(key="cls_upload").set_value(("0_george_0.wav", data, "audio/wav")).run()
    table = ok(at).dataframe[0].value
    labels = json.loads((tiny_run / "labels.json").read_text())
    assert len(table) == 5 and set(table["class"]) <= set(labels)
    probs = table["probability"].to_numpy()
    assert np.all((probs >= 0) & (probs <= 1)) and np.all(np.diff(probs) <= 0)
    titles = [f.layout.title.text or "" for f in figures_of(at)]
    assert any(t.startswith("Integrated gradients") for t in titles)
    assert any(t == "Deletion and insertion" for t in titles)
    assert len(at.get("audio")) == 2  # the recording and its explanation
    at.selectbox(key="cls_method").set_value("saliency").run()
    assert any((f.layout.title.text or "").startswith("Saliency") for f in figures_of(ok(at)))


def test_classify_page_shows_a_timeline_for_a_long_recording(shared_data, runs_root):
    at = page("classify").run()
    at.segmented_control(key="cls_source").set_value("File on this machine").run()
    at.text_input(key="cls_path").input(str(shared_data / BIRD_CLIP)).run()
    timeline = next(f for f in figures_of(ok(at)) if f.layout.title.text == "Predictions over time")
    assert arr(timeline.data[0].z).shape[1] >= 10  # 18.7 s in 1.5 s hops


def test_classify_page_names_a_bad_upload(runs_root):
    at = page("classify").run()
    at.file_uploader(key="cls_upload").set_value(("notes.wav", b"this is not audio", "audio/wav")).run()
    assert not at.exception
    assert at.error and "notes.wav" in at.error[0].value


def test_without_a_model_the_pages_offer_the_quick_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("ASCA_RUNS_DIR", str(tmp_path))
    for name in ("classify", "attention"):
        at = ok(page(name).run())
        assert at.button(key="quick_demo_main").label == "Train a quick demo model"
    at.button(key="quick_demo_main").click().run()
    runs = jobs.list_runs(tmp_path)
    try:
        assert len(runs) == 1 and runs[0].active
        from asca_core.config import load_config

        command = runs[0].job["command"]
        assert command[:3] == ["-m", "asca_core.cli", "train"]
        config = command[command.index("--config") + 1]
        overrides = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
        assert Path(config).resolve() == (ROOT / "configs" / "demo.yaml").resolve() and not overrides
        cfg = load_config(config, overrides)  # the demo preset as shipped
        assert cfg.data.path == "demo" and cfg.model.name == "asca_tiny" and cfg.train.epochs >= 20
    finally:
        for run in runs:
            jobs.stop_run(run.path)


def test_train_page_offers_stop_for_a_live_run_and_resume_for_a_stopped_one(tmp_path, monkeypatch, tiny_run):
    import os
    import shutil

    monkeypatch.setenv("ASCA_RUNS_DIR", str(tmp_path))
    stopped = tmp_path / "stopped-run"
    shutil.copytree(tiny_run, stopped)
    status = json.loads((stopped / "status.json").read_text())
    (stopped / "status.json").write_text(json.dumps({**status, "state": "stopped", "epoch": 1, "epochs": 5}))
    live = tmp_path / "live-run"
    live.mkdir()
    rows = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_acc": 0.2 * e, "val_map": 0.25 * e}
        for e in (1, 2)
    ]
    (live / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # this test process stands in for the trainer: its pid is alive
    from asca_core.train.runstore import process_start_time

    (live / "status.json").write_text(
        json.dumps(
            {
                "state": "running",
                "pid": os.getpid(),
                "pid_start": process_start_time(os.getpid()),
                "epoch": 2,
                "epochs": 8,
                "batch": 3,
                "batches": 6,
            }
        )
    )
    at = ok(page("train").run())
    assert at.selectbox(key="tr_selected").value == "live-run"  # the active run is shown first
    assert at.button(key="stop_live-run").label == "Stop"
    assert "epoch 2/8, batch 3/6" in " ".join(m.value for m in at.markdown)
    assert len(figures_of(at)[0].data) == 4  # train/val loss, accuracy, mAP
    at.selectbox(key="tr_selected").set_value("stopped-run").run()
    assert ok(at).button(key="resume_stopped-run").label == "Resume"
    assert not [b for b in at.button if b.key == "stop_stopped-run"]
