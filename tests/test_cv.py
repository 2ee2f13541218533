"""Cross-validation: k-fold over a fold column, leave-one-speaker-out on FSDD, resume, CLI errors."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from train_factory import make_tiny_data, run_cli, tiny_config, write_tiny_yaml

from asca_core.config import DataConfig
from asca_core.data import Clip, DatasetIndex, load_dataset, make_splits
from asca_core.errors import ConfigError, DatasetError
from asca_core.train.cv import cv_summary, fold_values, run_cv
from asca_core.train.engine import prepare_data
from asca_core.train.runstore import RunStore

FAST = ["train.epochs=1", "data.val_fraction=0.2"]


@pytest.fixture(scope="module")
def folded(tmp_path_factory) -> Path:
    """The tiny demo set (8 classes x 6 clips) with a fold column: 2 clips of every class per fold."""
    labels = make_tiny_data(tmp_path_factory.mktemp("cv-data"))
    rows = list(csv.DictReader(labels.open()))
    seen: Counter = Counter()
    out = labels.parent / "folds.csv"
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label", "fold"])
        for row in rows:
            writer.writerow([row["filename"], row["label"], seen[row["label"]] % 3 + 1])
            seen[row["label"]] += 1
    return out


@pytest.fixture(scope="module")
def kfold(folded, tmp_path_factory):
    """A 3-fold CV stopped after its first fold, then continued by the same call."""
    out = tmp_path_factory.mktemp("cv") / "cv-tiny"
    cfg = tiny_config(folded, *FAST)
    first = run_cv(cfg, out, stop_after_folds=1)
    stamp = (out / "fold-1" / "checkpoints" / "best.safetensors").stat().st_mtime_ns
    lines: list[str] = []
    second = run_cv(cfg, out, echo=lines.append, progress=False)
    return {"cfg": cfg, "out": out, "first": first, "second": second, "lines": lines, "stamp": stamp}


def test_cv_stops_after_a_fold_and_continues_without_retraining(kfold):
    first, second, out = kfold["first"], kfold["second"], kfold["out"]
    assert first["state"] == "stopped" and first["stopped_at"] == str(out / "fold-2")
    assert [r["state"] for r in first["rows"]] == ["finished", "pending", "pending"]
    assert second["state"] == "finished" and second["complete"]
    assert "fold-1: finished earlier, reused" in kfold["lines"]
    assert (out / "fold-1" / "checkpoints" / "best.safetensors").stat().st_mtime_ns == kfold["stamp"]
    assert [RunStore(out / f"fold-{k}").status()["state"] for k in (1, 2, 3)] == ["finished"] * 3


def test_each_fold_tests_on_exactly_its_fold(kfold, folded):
    index = load_dataset(folded)
    for k in (1, 2, 3):
        cfg = RunStore(kfold["out"] / f"fold-{k}").config()
        assert cfg.data.test_fold == k and cfg.train == kfold["cfg"].train
        bundle = prepare_data(cfg, check_files=False)
        test = {str(bundle.index.clips[i].path) for i in bundle.splits["test"]}
        assert test == {str(c.path) for c in index.clips if c.fold == k}
        assert all(bundle.index.clips[i].fold != k for i in bundle.splits["train"] + bundle.splits["val"])
        assert bundle.splits["val"], "validation carved from the other folds"


def test_results_files_hold_the_folds_and_their_mean_and_std(kfold):
    out = kfold["out"]
    for name in ("cv.json", "results.md", "results.csv", "results.svg"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["fold"] for r in rows] == ["1", "2", "3", "mean", "std"]
    for key in ("test_acc", "test_map", "test_auc", "test_cmap", "test_loss", "epochs", "train_minutes"):
        values = [float(r[key]) for r in rows[:3]]
        assert math.isclose(float(rows[3][key]), np.mean(values), rel_tol=1e-9, abs_tol=1e-12), key
        assert math.isclose(float(rows[4][key]), np.std(values, ddof=1), rel_tol=1e-9, abs_tol=1e-12), key
    assert all(r["test_clips"] == "16" for r in rows[:3]) and all(r["epochs"] == "1" for r in rows[:3])
    md = (out / "results.md").read_text()
    acc = [float(r["test_acc"]) for r in rows[:3]]
    assert "| **mean ± std** |  | " + f"{np.mean(acc):.3f} ± {np.std(acc, ddof=1):.3f}" in md
    assert md.count("\n| 1 | 16 |") == 1 and "3-fold cross-validation" in md
    svg = (out / "results.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<rect") == 3 and "stroke-dasharray" in svg
    assert "<script" not in svg and "http" not in svg.replace("http://www.w3.org/2000/svg", "")
    summary = cv_summary(out)
    assert summary["complete"] and summary["by"] is None and summary["folds"] == [1, 2, 3]
    assert math.isclose(summary["mean"]["test_acc"], np.mean(acc))
    assert cv_summary(out / "fold-1") is None


def test_another_config_is_refused(kfold):
    with pytest.raises(ConfigError, match="another config.*train.lr"):
        run_cv(kfold["cfg"].replace("train.lr", 5e-4), kfold["out"])
    with pytest.raises(ConfigError, match="by speaker"):
        run_cv(kfold["cfg"], kfold["out"], by="speaker")


@pytest.mark.slow
def test_cli_continues_a_finished_cv_and_reuses_every_fold(kfold, tmp_path):
    config = write_tiny_yaml(tmp_path / "tiny.yaml", Path(kfold["cfg"].data.path), *FAST)
    result = run_cli("cv", "--config", str(config), "--out", str(kfold["out"]))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("finished earlier, reused") == 3
    assert "| **mean ± std** |" in result.stdout and "results.svg" in result.stdout
    # DATA alone on an existing CV folder continues with the config it started with
    again = run_cli("cv", kfold["cfg"].data.path, "--out", str(kfold["out"]))
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("finished earlier, reused") == 3 and "recipe:" not in again.stdout
    other = run_cli("cv", kfold["cfg"].data.path, "--out", str(kfold["out"]), "--set", "train.lr=0.01")
    assert other.returncode == 2 and "another config (train.lr differs)" in other.stderr


def test_cli_bad_folds_and_by_give_one_line(folded, tmp_path):
    config = write_tiny_yaml(tmp_path / "tiny.yaml", folded, *FAST)
    for args, needles in (
        (["--folds", "1,9"], ["fold 9 not found", "1, 2, 3"]),
        (["--folds", "one"], ["'one' is not a fold number"]),
        (["--folds", ","], ["--folds must list folds"]),
        (["--by", "speaker"], ["group column 'speaker' not found"]),
    ):
        result = run_cli("cv", "--config", str(config), "--out", str(tmp_path / "cv"), *args)
        assert result.returncode == 2, (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert all(n in lines[0] for n in needles), lines[0]
    assert not (tmp_path / "cv").exists()


@pytest.mark.slow
def test_leave_one_speaker_out_on_fsdd(shared_data, tmp_path):
    data = shared_data / "fsdd" / "labels.csv"
    cfg = tiny_config(data, *FAST, "data.max_clips_per_class=8", "features.sample_rate=8000")
    assert fold_values(cfg, "speaker") == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    out = tmp_path / "loso"
    result = run_cv(cfg, out, by="speaker", folds=["jackson", "theo"])
    assert result["state"] == "finished" and [r["fold"] for r in result["rows"]] == ["jackson", "theo"]
    for speaker in ("jackson", "theo"):
        run_cfg = RunStore(out / f"fold-{speaker}").config()
        assert (run_cfg.data.group_column, run_cfg.data.test_group) == ("speaker", speaker)
        bundle = prepare_data(run_cfg, check_files=False)
        clips = bundle.index.clips
        side = {s: {clips[i].meta["speaker"] for i in bundle.splits[s]} for s in ("train", "val", "test")}
        assert side["test"] == {speaker}
        assert len(side["test"] | side["train"] | side["val"]) == sum(map(len, side.values())), side
        assert all(bundle.splits[s] for s in ("train", "val", "test"))
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["fold"] for r in rows] == ["jackson", "theo", "mean", "std"]
    assert "leave-one-speaker-out" in (out / "results.md").read_text()


# ------------------------------------------------------------------------------ the splitter
def _index(n_groups: int = 6, per_group: int = 6) -> DatasetIndex:
    clips = [
        Clip(path=Path(f"/data/{g}_{i}.wav"), labels=(f"c{i % 3}",), meta={"speaker": f"s{g}"})
        for g in range(n_groups)
        for i in range(per_group)
    ]
    return DatasetIndex(
        root=Path("/data"), format="csv", clips=clips, classes=["c0", "c1", "c2"], multi_label=False, problems=[]
    )


def test_make_splits_test_group_holds_out_that_group():
    index = _index()
    speaker = [c.meta["speaker"] for c in index.clips]
    for held in ("s0", "s3"):
        splits = make_splits(index, val_fraction=0.2, group_column="speaker", test_group=held, seed=1)
        assert {speaker[i] for i in splits["test"]} == {held}
        assert len(splits["test"]) == 6
        assert sorted(splits["train"] + splits["val"] + splits["test"]) == list(range(36))
        train, val = {speaker[i] for i in splits["train"]}, {speaker[i] for i in splits["val"]}
        assert val and not (train & val) and held not in train | val


def test_make_splits_test_group_errors():
    index = _index()
    with pytest.raises(DatasetError, match="test_group='s9' not found in column 'speaker'; values: s0, s1"):
        make_splits(index, group_column="speaker", test_group="s9")
    with pytest.raises(DatasetError, match="needs a group column"):
        make_splits(index, test_group="s0")
    with pytest.raises(ConfigError, match="data.test_group='s0' needs data.group_column"):
        DataConfig(test_group="s0")
    with pytest.raises(ConfigError, match="cannot both be set"):
        DataConfig(group_column="speaker", test_group="s0", test_fold=1)


def test_cv_figure_has_a_bar_per_fold_and_the_mean(kfold):
    from workbench import figures

    summary = cv_summary(kfold["out"])
    fig = figures.cv_figure(summary)
    assert list(fig.data[0].x) == ["fold 1", "fold 2", "fold 3"]
    assert [s.type for s in fig.layout.shapes] == ["rect", "line"]
    assert math.isclose(fig.layout.shapes[1].y0, summary["mean"]["test_acc"])
    fig.to_json()


def test_runs_page_shows_the_cv_table_and_chart(kfold, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ASCA_RUNS_DIR", str(kfold["out"].parent))
    root = Path(__file__).resolve().parents[1]
    at = AppTest.from_file(str(root / "workbench" / "pages" / "runs.py"), default_timeout=240).run()
    assert not at.exception, [e.message for e in at.exception]
    assert "Cross-validation" in [h.value for h in at.subheader]
    assert at.selectbox(key="cv_folder").value == "cv-tiny"
    table = next(d.value for d in at.dataframe if "test_acc" in d.value.columns)
    assert list(table["fold"]) == ["1", "2", "3", "mean", "std"]
    charts = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("3-fold cross-validation" in spec for spec in charts)
