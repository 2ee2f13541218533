"""A dataset's own background class as the noise bank (``augment.noise_class``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_factory import tone
from train_factory import tiny_config

from asca_core.audio import load_audio
from asca_core.errors import ConfigError


def _words_and_silence(root: Path) -> Path:
    """'yes', 'no' (tones) and '_silence_' (white noise, one seed per clip), 1 s at 16 kHz, 3 folds."""
    rows = []
    rng = np.random.default_rng(0)
    for label in ("yes", "no", "_silence_"):
        for i in range(9):
            name = f"{label}/{i}.wav"
            (root / label).mkdir(parents=True, exist_ok=True)
            if label == "_silence_":
                wave = (0.1 * rng.standard_normal(16000)).astype(np.float32)
            else:
                wave = tone(400 if label == "yes" else 900, 1.0, 16000)
            sf.write(root / name, wave, 16000)
            rows.append({"filename": name, "label": label, "speaker": f"s{i}", "fold": i % 3 + 1})
    manifest = root / "labels.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _trainer(tmp_path: Path, *extra: str):
    from asca_core.train.engine import Trainer

    data = _words_and_silence(tmp_path / "data")
    cfg = tiny_config(data, "data.test_fold=1", "data.group_column=speaker", *extra)
    trainer = Trainer(cfg, tmp_path / "run", resume=False, progress=False, echo=None, stop_after_epochs=None)
    trainer.prepare_run_dir()
    return trainer


def test_the_noise_bank_holds_the_training_clips_of_the_class_only(tmp_path):
    trainer = _trainer(tmp_path, "augment.noise_class=_silence_", "augment.noise_prob=0.5")
    trainer.build()
    index, splits = trainer.data.index, trainer.data.splits
    train_silence = [index.clips[i].path for i in splits["train"] if index.clips[i].label == "_silence_"]
    held_out = [index.clips[i].path for s in ("val", "test") for i in splits[s] if index.clips[i].label == "_silence_"]
    assert train_silence and held_out
    bank = trainer.augment.wave.noise_bank
    assert len(bank) == len(train_silence)
    decoded = {p: load_audio(p, 16000) for p in train_silence + held_out}
    for noise in bank:
        matches = [p for p, w in decoded.items() if w.shape == noise.shape and np.allclose(w, noise.numpy())]
        assert len(matches) == 1 and matches[0] in train_silence  # never a validation or test clip


def test_an_unknown_noise_class_is_one_clear_error(tmp_path):
    trainer = _trainer(tmp_path, "augment.noise_class=_background_")
    with pytest.raises(ConfigError, match=r"augment.noise_class='_background_' is not a class.*_silence_"):
        trainer.build()
