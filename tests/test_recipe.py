"""The automatic recipe: choices resolved from the dataset, the protocol, the budget."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import soundfile as sf
from audio_factory import tone
from train_factory import run_cli

from asca_core.data import load_dataset, make_splits
from asca_core.data.splits import detect_group_column, resolve_protocol
from asca_core.errors import ConfigError
from asca_core.train.recipe import parse_duration, resolve_recipe


def _write(path: Path, freq: float, seconds: float, rate: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(freq, seconds, rate), rate)
    return path.name


def _speech_like(root: Path) -> Path:
    """3 words x 4 speakers x 3 takes, 1 s at 16 kHz, a fold column by speaker."""
    rows = []
    for w, word in enumerate(("yes", "no", "up")):
        for s in range(4):
            for take in range(3):
                name = f"{word}/{s}_{take}.wav"
                _write(root / name, 300 + 200 * w + 10 * take, 1.0, 16000)
                rows.append({"filename": name, "label": word, "speaker": f"spk{s}", "fold": s % 2 + 1})
    manifest = root / "labels.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _esc50_like(root: Path) -> Path:
    """ESC-50 layout: 4 classes, 5 s clips at 44.1 kHz cut from shared source files, 2 folds."""
    (root / "meta").mkdir(parents=True)
    rows = []
    for c, category in enumerate(("dog", "rain", "kettle", "door")):
        for src in range(3):
            for cut in range(2):
                name = f"{src % 2 + 1}-{c}{src}-{cut}.wav"
                _write(root / "audio" / name, 200 + 300 * c, 5.0, 44100)
                rows.append(
                    {
                        "filename": name,
                        "fold": src % 2 + 1,
                        "target": c,
                        "category": category,
                        "esc10": "False",
                        "src_file": f"{c}{src}",
                        "take": "A",
                    }
                )
    with (root / "meta" / "esc50.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def _birdclef_like(root: Path) -> Path:
    """BirdCLEF 2023 layout: 3 species, 12 s recordings at 32 kHz with secondary labels."""
    rows = []
    species = ("abethr1", "barswa", "comsan")
    for s, name in enumerate(species):
        for k in range(3):
            file = f"{name}/XC{s}{k}.ogg"
            _write(root / "train_audio" / file, 1000 + 500 * s, 12.0, 32000)
            secondary = [species[(s + 1) % 3]] if k == 0 else []
            rows.append(
                {
                    "primary_label": name,
                    "secondary_labels": str(secondary),
                    "type": "['song']",
                    "latitude": "0",
                    "longitude": "0",
                    "scientific_name": name,
                    "common_name": name,
                    "author": f"author{k}",
                    "license": "cc",
                    "rating": "4",
                    "url": "",
                    "filename": file,
                }
            )
    with (root / "train_metadata.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def _choices(recipe) -> dict:
    return {c.key: c.value for c in recipe.choices}


# ----------------------------------------------------------------------------- durations
@pytest.mark.parametrize(
    "text, seconds", [("15m", 900), ("90s", 90), ("1h30m", 5400), ("2.5m", 150), ("45", 45), (120, 120)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "fast", "10x", "5s", "-3m", "9999h"])
def test_parse_duration_rejects(text):
    with pytest.raises(ConfigError, match="budget"):
        parse_duration(text)


# ----------------------------------------------------------------------------- recipes
def test_recipe_for_one_second_16k_speech(tmp_path):
    recipe = resolve_recipe(str(_speech_like(tmp_path)), 600, probe=False)
    cfg, chosen = recipe.config, _choices(recipe)
    assert cfg.features.sample_rate == 16000
    assert cfg.features.clip_seconds == 1.0
    assert cfg.features.hop_length == 160 and cfg.features.win_length == 400 and cfg.features.n_fft == 512
    assert cfg.train.loss == "ce" and cfg.train.label_smoothing > 0
    assert cfg.data.test_fold == 1 and cfg.data.group_column == "speaker"
    assert cfg.train.budget_seconds == 600 and cfg.train.epochs >= 3
    # single-label: clean clips until the training loss reaches its floor, augmentation after
    assert cfg.augment.clean_until_fit and cfg.augment.clean_epochs >= cfg.train.epochs
    assert cfg.train.select == "last" and cfg.train.patience is None  # the end of the schedule is the model
    assert set(chosen) >= {"features.sample_rate", "train.loss", "train.epochs", "data.test_fold"}
    text = recipe.describe()
    assert all(c.reason for c in recipe.choices)
    assert "fold 1 is the test set" in text and "cross-entropy" in text


def test_recipe_for_five_second_44k_environmental_sounds(tmp_path):
    recipe = resolve_recipe(str(_esc50_like(tmp_path)), 1800, probe=False)
    cfg = recipe.config
    assert cfg.features.sample_rate == 32000  # 44.1 kHz is brought down to 32 kHz
    assert cfg.features.clip_seconds == 5.0
    assert cfg.features.hop_length == 640  # 20 ms
    assert cfg.features.frames == 256
    assert cfg.augment.time_mask_width == 25  # scaled to the input: 10% of the frames
    assert cfg.augment.clean_until_fit and cfg.augment.clean_epochs >= cfg.train.epochs
    assert cfg.train.loss == "ce"
    assert cfg.data.test_fold == 1 and cfg.data.group_column == "group"  # ESC-50's src_file


def test_recipe_for_multi_label_birdclef_style_set(tmp_path):
    recipe = resolve_recipe(str(_birdclef_like(tmp_path)), 300, probe=False)
    cfg = recipe.config
    assert cfg.features.sample_rate == 32000
    assert cfg.features.clip_seconds == 5.0  # long recordings: random 5 s crops
    assert cfg.train.loss == "bce" and cfg.train.label_smoothing == 0.0
    assert cfg.data.group_column == "author"
    # multi-label: a fixed number of clean epochs, then augmentation and mixup
    assert not cfg.augment.clean_until_fit and 0 < cfg.augment.clean_epochs < cfg.train.epochs
    assert "random 5 s crops" in recipe.describe()


def _probe_measuring(monkeypatch, step: float, bf16_step: float) -> None:
    import asca_core.train.recipe as recipe_module

    speed = {
        "step_seconds": step,
        "bf16_step_seconds": bf16_step,
        "eval_seconds_per_clip": 1e-3,
        "decode_seconds_per_clip": 1e-3,
        "setup_seconds": 1.0,
    }
    monkeypatch.setattr(recipe_module, "measure_throughput", lambda cfg, classes: dict(speed))


def test_bf16_is_chosen_when_the_probe_measures_it_faster(tmp_path, monkeypatch):
    _probe_measuring(monkeypatch, step=20.0, bf16_step=10.0)
    fast = resolve_recipe(str(_speech_like(tmp_path)), 1800, ["train.device=cpu"])
    assert fast.config.train.amp == "bf16"
    assert "2.00x" in fast.describe()
    _probe_measuring(monkeypatch, step=20.0, bf16_step=20.0)
    same = resolve_recipe(str(_speech_like(tmp_path)), 1800, ["train.device=cpu"])
    assert same.config.train.amp == "off"
    # the faster step is planned with: twice the epochs fit the same budget
    assert fast.config.train.epochs >= 1.8 * same.config.train.epochs


def test_bf16_choice_yields_to_an_override_and_to_cuda(tmp_path, monkeypatch):
    _probe_measuring(monkeypatch, step=0.30, bf16_step=0.10)
    kept = resolve_recipe(str(_speech_like(tmp_path)), 600, ["train.amp=off", "train.device=cpu"])
    assert kept.config.train.amp == "off"
    on_gpu = resolve_recipe(str(_speech_like(tmp_path)), 600, ["train.device=cuda"])
    assert on_gpu.config.train.amp == "off"  # the probe timed the CPU, not the GPU


def test_overrides_win_over_every_choice(tmp_path):
    recipe = resolve_recipe(
        str(_speech_like(tmp_path)), 600, ["train.lr=3e-4", "features.n_mels=128", "train.loss=bce"], probe=False
    )
    assert recipe.config.train.lr == 3e-4
    assert recipe.config.features.n_mels == 128
    assert recipe.config.train.loss == "bce"
    lines = [line for line in recipe.describe().splitlines() if "train.lr" in line]
    assert len(lines) == 1 and "set on the command line" in lines[0]


def test_bad_override_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="train.lrr"):
        resolve_recipe(str(_speech_like(tmp_path)), 600, ["train.lrr=1"], probe=False)


# ----------------------------------------------------------------------------- protocol
def _group_sets(index, splits, column):
    value = (lambda c: c.group) if column == "group" else (lambda c: c.meta[column])
    return {name: {value(index.clips[i]) for i in items} for name, items in splits.items()}


def test_protocol_follows_folds_and_groups_of_a_manifest(tmp_path):
    index = load_dataset(_speech_like(tmp_path))
    proto = resolve_protocol(index)
    assert proto.test_fold == 1 and proto.group_column == "speaker" and proto.groups == 4
    splits = make_splits(index, test_fold=proto.test_fold, group_column=proto.group_column, val_fraction=0.3)
    assert all(index.clips[i].fold == 1 for i in splits["test"])
    groups = _group_sets(index, splits, "speaker")
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]


def test_protocol_of_esc50_uses_source_files(tmp_path):
    index = load_dataset(_esc50_like(tmp_path))
    proto = resolve_protocol(index)
    assert proto.test_fold == 1 and proto.group_column == "group"
    splits = make_splits(index, test_fold=1, group_column="group", val_fraction=0.25)
    groups = _group_sets(index, splits, "group")
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]


def test_protocol_groups_a_manifest_without_folds(tmp_path):
    manifest = _speech_like(tmp_path)
    text = manifest.read_text().splitlines()
    manifest.write_text("\n".join(",".join(line.split(",")[:3]) for line in text) + "\n")  # drop fold
    index = load_dataset(manifest)
    proto = resolve_protocol(index)
    assert proto.test_fold is None and proto.group_column == "speaker"
    splits = make_splits(index, group_column="speaker", val_fraction=0.25, test_fraction=0.25)
    groups = _group_sets(index, splits, "speaker")
    assert all(not groups[a] & groups[b] for a, b in (("train", "val"), ("train", "test"), ("val", "test")))


def test_protocol_of_the_real_sets(shared_data):
    sc = load_dataset(shared_data / "speech_commands" / "labels.csv")
    proto = resolve_protocol(sc)
    assert (proto.test_fold, proto.group_column) == (1, "speaker")
    splits = make_splits(sc, test_fold=1, group_column="speaker", val_fraction=0.1)
    groups = _group_sets(sc, splits, "speaker")
    assert not groups["train"] & groups["val"]
    assert groups["train"] & groups["test"] <= {"silence"}  # _silence_ clips share one pseudo-speaker
    fsdd = resolve_protocol(load_dataset(shared_data / "fsdd" / "labels.csv"))
    # FSDD's official test set holds every speaker: validation is carved the same way
    assert fsdd.test_fold is None and fsdd.group_column is None and "not by group" in fsdd.description


def test_a_column_of_unique_values_is_not_a_group(tmp_path):
    manifest = _speech_like(tmp_path)
    rows = list(csv.DictReader(manifest.open()))
    for i, row in enumerate(rows):
        row["speaker"] = f"unique{i}"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    index = load_dataset(manifest)
    assert detect_group_column(index) is None
    assert any("every clip has its own value" in w for w in resolve_protocol(index).warnings)


def test_data_check_states_the_protocol(tmp_path):
    manifest = _speech_like(tmp_path)
    result = run_cli("data", "check", str(manifest), "--quick")
    assert result.returncode == 0, result.stderr
    assert "fold 1 of 2 is the test set" in result.stdout and "'speaker'" in result.stdout


# ----------------------------------------------------------------------------- budget
@pytest.mark.slow
def test_budgeted_cli_run_prints_its_recipe_and_ends_within_budget(tmp_path):
    data = tmp_path / "data"
    manifest = _speech_like(data)
    run = tmp_path / "run"
    budget = 40.0
    result = run_cli(
        "train",
        str(manifest),
        "--budget",
        f"{budget:g}s",
        "--run-dir",
        str(run),
        "--quiet",
        "--set",
        "model.name=asca_pico",
        "--set",
        "features.n_mels=32",
        "--set",
        "train.num_threads=1",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "recipe:" in result.stdout and "train.epochs" in result.stdout
    assert "set on the command line" in result.stdout
    stored = json.loads((run / "recipe.json").read_text())
    assert stored["budget_seconds"] == budget and stored["choices"]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished"
    # the run used its budget and did not overrun it (set-up and the final test included)
    assert 0.6 * budget <= status["train_seconds"] <= 1.1 * budget
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == status["epoch"] >= 3
    assert "time:" in result.stdout
