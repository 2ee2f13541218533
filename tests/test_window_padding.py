"""A clip shorter than the window sits in it the same way wherever it is padded.

Training, evaluation and predict centre a short clip in its window; the Classify page must explain
that same window and the Augment page must show it, or the map explains an input the model never
scored.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from audio_factory import write_tone

from asca_core.audio import load_audio
from asca_core.data.dataset import fit_length
from asca_core.inference import Classifier

SR = 16000


def test_the_classify_page_explains_the_window_predict_scores(pico_run, tmp_path):
    from workbench import state

    clf = Classifier.from_run(pico_run, device="cpu")
    short = write_tone(tmp_path / "short.wav", 880.0, 0.4, SR)  # under the run's 1 s window
    long = write_tone(tmp_path / "long.wav", 440.0, 2.5, SR)  # its last window runs past the end
    for path in (short, long):
        timeline = state.predict(str(pico_run), 0.0, str(path)).timeline  # the windows the page offers
        stream, _ = clf.windows(str(path))
        scored = [clf.spectrogram(chunk).cpu() for _, chunk in stream]  # what predict scored, window by window
        assert len(scored) == len(timeline)
        for window, expected in ((timeline[0], scored[0]), (timeline[-1], scored[-1])):
            attr, explanation, rate = state.explain(str(pico_run), 0.0, str(path), window.start, "saliency", None)
            assert attr.inputs is not None
            assert torch.equal(attr.inputs, expected), f"{path.name}: the window from {window.start} s differs"
            assert rate == clf.sample_rate and explanation.ndim == 1
    # a short clip's map is placed in the recording's own seconds
    attr, explanation, _ = state.explain(str(pico_run), 0.0, str(short), 0.0, "saliency", None)
    assert attr.times[0] >= 0.0 and attr.times[-1] <= 0.4 and explanation.size == load_audio(short, SR).size


def test_the_augment_page_shows_the_clip_where_training_puts_it(tmp_path):
    from workbench.pages import augment

    path = write_tone(tmp_path / "short.wav", 440.0, 0.5, augment.FEATURES.sample_rate)
    table = pd.DataFrame({"file": ["short.wav"], "path": [str(path)]})
    shown = augment._clip(table, "short.wav")[0].numpy()

    wave = load_audio(path, augment.FEATURES.sample_rate)
    np.testing.assert_array_equal(shown, fit_length(wave, augment.FEATURES.clip_samples))
    assert not shown[:100].any() and not shown[-100:].any()  # silence on both sides, not only at the end
