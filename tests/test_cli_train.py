"""``asca train / eval / ablate`` through the real command line."""

from __future__ import annotations

import csv
import json

import pytest
from train_factory import make_tiny_data, run_cli, write_tiny_yaml

from asca_core.train.engine import evaluate, fit
from asca_core.train.runstore import RunStore


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="module")
def config(data, tmp_path_factory):
    return write_tiny_yaml(tmp_path_factory.mktemp("cfg") / "tiny.yaml", data)


@pytest.fixture(scope="module")
def trained(data, config, tmp_path_factory):
    from asca_core.config import load_config

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    fit(load_config(config), run_dir, progress=False)
    return run_dir


def _one_line_error(result, *needles):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "override, needles",
    [
        ("train.lr=-1", ["train.lr must be > 0", "-1"]),
        ("train.epochs=abc", ["train.epochs must be an integer", "abc"]),
        ("train.lrr=0.1", ["unknown config key", "train.lrr"]),
        ("model.layout=CCXT", ["model.layout", "CCXT"]),
        ("augment.noise_prob=1.5", ["augment.noise_prob", "1.5"]),
        ("features.n_fft=100", ["features.n_fft"]),
        ("train.amp=fp8", ["train.amp", "fp8"]),
        ("nosection.x=1", ["unknown config section", "nosection"]),
    ],
)
def test_bad_values_give_one_clear_line(config, tmp_path, override, needles):
    result = run_cli("train", "--config", str(config), "--set", override, "--run-dir", str(tmp_path / "r"))
    _one_line_error(result, *needles)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_bad_config_file_and_arguments(config, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: 0\n")
    _one_line_error(run_cli("train", "--config", str(bad)), "train.batch_size must be in [1, ")
    _one_line_error(run_cli("train", "--config", str(tmp_path / "missing.yaml")), "config file not found")
    _one_line_error(run_cli("train", "--resume"), "--resume needs --run-dir")
    _one_line_error(run_cli("train"), "needs a dataset (asca train DATA) or --config FILE")
    missing_data = tmp_path / "nodata.yaml"
    missing_data.write_text("data:\n  path: nowhere/labels.csv\n")
    _one_line_error(run_cli("train", "--config", str(missing_data)), "data.path 'nowhere/labels.csv' not found")
    _one_line_error(run_cli("train", "--config", str(config), "--nproc", "0"), "--nproc must be >= 1")
    _one_line_error(run_cli("eval", str(tmp_path / "no-run")), "run not found")
    _one_line_error(run_cli("ablate", "--config", str(config), "--layouts", "CCCT,XYZ"), "--layouts")


@pytest.mark.slow
def test_existing_run_needs_resume(trained, config):
    line = _one_line_error(run_cli("train", "--config", str(config), "--run-dir", str(trained)))
    assert "--resume" in line


@pytest.mark.slow
def test_eval_json_matches_training_evaluation(trained):
    result = run_cli("eval", str(trained), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    logged = json.loads((trained / "eval.json").read_text())
    assert out["split"] == "test" and out["checkpoint"] == "best"
    assert out["n"] == logged["n"] == 8
    assert out["acc"] == pytest.approx(logged["acc"]) and out["map"] == pytest.approx(logged["map"])
    assert len(out["per_class"]["ap"]) == len(out["labels"]) == 8
    assert sum(map(sum, out["confusion"])) == 8
    val = evaluate(trained, split="val", checkpoint="last")  # the same function, in-process
    best_row = RunStore(trained).metrics()[-1]
    assert val["split"] == "val" and val["acc"] == pytest.approx(best_row["val_acc"])
    assert val["loss"] == pytest.approx(best_row["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_eval_table_and_other_dataset(trained, data):
    result = run_cli("eval", str(trained))
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "confusion matrix" in result.stdout
    # the same files as "another dataset": every clip, official split selectable
    other = evaluate(trained, data=str(data))
    assert other["n"] == 48 and other["split"] == "all"
    test_only = evaluate(trained, data=str(data), split="test")
    assert test_only["n"] == 8
    assert test_only["acc"] == pytest.approx(evaluate(trained)["acc"])  # the run's own test split


@pytest.mark.slow
def test_train_prints_run_dir_and_final_metrics(config, tmp_path):
    run_dir = tmp_path / "cli-run"
    result = run_cli("train", "--config", str(config), "--run-dir", str(run_dir), "--set", "train.epochs=1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"run directory: {run_dir}"
    assert "finished: 1 epochs, 4 steps" in result.stdout and "test (best checkpoint" in result.stdout
    assert "epoch 1/1" in result.stderr  # per-epoch line
    assert RunStore(run_dir).config().train.epochs == 1


@pytest.mark.slow
def test_default_run_dir_under_runs_dir(config, tmp_path):
    runs = tmp_path / "runs"
    result = run_cli(
        "train", "--config", str(config), "--set", "train.epochs=1", "--quiet", env={"ASCA_RUNS_DIR": str(runs)}
    )
    assert result.returncode == 0, result.stderr
    made = list(runs.iterdir())
    assert len(made) == 1 and made[0].name.startswith("tiny-")
    assert result.stdout.splitlines()[0] == f"run directory: {made[0]}"
    assert RunStore(made[0]).status()["state"] == "finished"


@pytest.mark.slow
def test_ablate_writes_tables(config, tmp_path):
    out = tmp_path / "ablation"
    result = run_cli(
        "ablate",
        "--config",
        str(config),
        "--layouts",
        "CCCT,CCCC",
        "--seeds",
        "2",
        "--out",
        str(out),
        "--set",
        "train.epochs=1",
        "--quiet",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    for name in ("results.md", "results.csv", "runs.csv", "results.html", "results.svg", "ablation.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["layout"] for r in rows] == ["CCCT", "CCCC"]
    assert all(r["seeds"] == "2" for r in rows)
    assert float(rows[0]["params"]) != float(rows[1]["params"])
    assert float(rows[0]["gmacs"]) > 0
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert sorted(r["run"] for r in runs) == ["CCCC-seed0", "CCCC-seed1", "CCCT-seed0", "CCCT-seed1"]
    md = (out / "results.md").read_text()
    assert "| CCCT | 2 |" in md and "±" in md
    svg = (out / "results.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<rect") == 2 and ">CCCT<" in svg and ">CCCC<" in svg
    assert svg in (out / "results.html").read_text() and "<script" not in svg
    # both layouts saw the same split and the same sampler / augmentation stream per seed
    a = RunStore(out / "CCCT-seed0").config()
    b = RunStore(out / "CCCC-seed0").config()
    assert a.data == b.data and a.train == b.train and a.augment == b.augment
    # a second call reuses the finished runs
    again = run_cli(
        "ablate",
        "--config",
        str(config),
        "--layouts",
        "CCCT,CCCC",
        "--seeds",
        "2",
        "--out",
        str(out),
        "--set",
        "train.epochs=1",
        timeout=600,
    )
    assert again.returncode == 0 and again.stderr.count("reused") == 4
