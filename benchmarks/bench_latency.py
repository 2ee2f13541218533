"""Latency of ``Classifier.predict`` on a 60 s recording and of Integrated Gradients on one 5 s window.

The model is asca_tiny (8 classes, seeded random weights: latency does not depend on training)
with the default front end at 16 kHz and 5 s windows (a 128 x 512 input). The recording is 60 s
of 32 kHz PCM (a typical field recorder rate, so resampling is part of the cost).

Peers measured in the same run:

- ``predict`` (streamed windows, 2.5 s hop, batches of 16) against the recording's own length
  (the real-time factor) and against a naive loop that decodes the whole file and runs the model
  on one window at a time;
- Integrated Gradients (``attribute(..., "integrated_gradients")``, 32 steps, Gauss-Legendre) on
  one 5 s window, its steps batched as the default does (``batch_size_for``: 4 inputs of
  128 x 512 at a time on a CPU), against the same 32 steps in batches of 16 and against one
  saliency map (a single forward + backward) of the same window; the two IG maps must agree.

    python benchmarks/bench_latency.py [--quick]
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from common import alternate, fmt, load_average, md_table, quick_main, section

FILE_RATE = 32000
RECORDING_SECONDS = 60.0
WINDOW_SECONDS = 5.0
LABELS = [f"class_{i}" for i in range(8)]


def write_recording(path: Path, seconds: float, sample_rate: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.05 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * (1500 + 500 * np.sin(t)) * t) * (t % 4 < 1)
    sf.write(path, wave.astype(np.float32), sample_rate, subtype="PCM_16")
    return path


def make_classifier():
    from asca_core.config import Config
    from asca_core.inference import Classifier
    from asca_core.train.checkpoint import model_from_config

    cfg = Config.from_dict({"features": {"clip_seconds": WINDOW_SECONDS}, "model": {"name": "asca_tiny"}})
    torch.manual_seed(0)
    return Classifier(model_from_config(cfg, len(LABELS)), cfg, LABELS, device="cpu")


def run(quick: bool = False) -> dict:
    from asca_core.audio import load_audio
    from asca_core.features import sliding_windows
    from asca_core.inspect.attribution import attribute
    from asca_core.utils import setup_torch

    setup_torch()
    repeat = 1 if quick else 3
    clf = make_classifier()
    with tempfile.TemporaryDirectory(prefix="asca-bench-") as tmp:
        path = write_recording(Path(tmp) / "recording.wav", RECORDING_SECONDS, FILE_RATE)
        hop = WINDOW_SECONDS / 2
        n_windows = len(sliding_windows(int(RECORDING_SECONDS * clf.sample_rate), clf.sample_rate, WINDOW_SECONDS, hop))

        def ours():
            return clf.predict(path, top_k=3)

        @torch.no_grad()
        def naive():
            wave = torch.from_numpy(load_audio(path, clf.sample_rate))
            out = []
            for start, end in sliding_windows(wave.numel(), clf.sample_rate, WINDOW_SECONDS, hop):
                chunk = wave[start:end]
                chunk = torch.nn.functional.pad(chunk, (0, end - start - chunk.numel()))
                out.append(torch.sigmoid(clf.model(clf.extractor(chunk.unsqueeze(0)))))
            return torch.cat(out)

        # the two paths compute the same probabilities
        agree = float(np.abs(ours().timeline_array() - naive().numpy()).max())
        load_before = load_average()
        predict_times = alternate({"predict": ours, "naive": naive}, repeat=repeat, warmup=0)

        window = load_audio(path, clf.sample_rate, offset=20.0, duration=WINDOW_SECONDS)
        ig_maps = {
            size: attribute(
                clf, window, "integrated_gradients", target=0, sample_rate=clf.sample_rate, internal_batch_size=size
            )
            for size in (None, 16)
        }
        ig_batch = int(ig_maps[None].meta["internal_batch_size"])
        ig_diff = float(np.abs(ig_maps[None].map - ig_maps[16].map).max() / (np.abs(ig_maps[16].map).max() + 1e-12))
        attr_times = alternate(
            {
                "integrated_gradients": lambda: attribute(
                    clf, window, "integrated_gradients", target=0, sample_rate=clf.sample_rate
                ),
                "integrated_gradients_batch16": lambda: attribute(
                    clf, window, "integrated_gradients", target=0, sample_rate=clf.sample_rate, internal_batch_size=16
                ),
                "saliency": lambda: attribute(clf, window, "saliency", target=0, sample_rate=clf.sample_rate),
            },
            repeat=repeat + 1,
            warmup=1,
        )
    med = {k: statistics.median(v) for k, v in {**predict_times, **attr_times}.items()}
    rows = [
        [
            f"predict, 60 s recording ({n_windows} windows of {WINDOW_SECONDS:g} s)",
            fmt(med["predict"], 2),
            "real time (60 s)",
            f"{RECORDING_SECONDS / med['predict']:.1f}x real time",
        ],
        [
            "",
            "",
            f"naive loop: whole decode, one window per forward ({fmt(med['naive'], 2)} s)",
            f"{med['naive'] / med['predict']:.2f}x its speed",
        ],
        [
            f"Integrated Gradients, one 5 s window (32 steps, batches of {ig_batch})",
            fmt(med["integrated_gradients"], 2),
            f"one saliency map ({fmt(med['saliency'], 2)} s)",
            f"{med['integrated_gradients'] / med['saliency']:.1f}x its time",
        ],
        [
            "",
            "",
            f"the same 32 steps in batches of 16 ({fmt(med['integrated_gradients_batch16'], 2)} s)",
            f"{med['integrated_gradients_batch16'] / med['integrated_gradients']:.2f}x its speed",
        ],
    ]
    md = "\n".join(
        [
            (
                f"asca_tiny ({len(LABELS)} classes), 16 kHz front end, 128 x 512 input per {WINDOW_SECONDS:g} s window; "
                f"recording written at {FILE_RATE // 1000} kHz (decoded, resampled and scored); median of "
                f"{repeat} run(s) for predict, {repeat + 1} for attributions, peers in alternation; "
                f"{torch.get_num_threads()} torch threads."
            ),
            "",
            md_table(["task", "seconds", "peer", "ratio"], rows),
            "",
            (
                f"predict and the naive loop agree to {agree:.1e} in every window probability; the two IG maps "
                f"to {ig_diff:.1e} of their largest value. Load average "
                f"{load_before} before, {load_average()} after."
            ),
        ]
    )
    data = {
        "window_seconds": WINDOW_SECONDS,
        "recording_seconds": RECORDING_SECONDS,
        "file_rate": FILE_RATE,
        "windows": n_windows,
        "median_s": med,
        "times": {**predict_times, **attr_times},
        "real_time_factor": RECORDING_SECONDS / med["predict"],
        "predict_vs_naive": med["naive"] / med["predict"],
        "ig_vs_saliency": med["integrated_gradients"] / med["saliency"],
        "ig_batch": ig_batch,
        "ig_vs_batch16": med["integrated_gradients_batch16"] / med["integrated_gradients"],
        "ig_max_rel_diff_vs_batch16": ig_diff,
        "max_abs_diff_vs_naive": agree,
        "threads": torch.get_num_threads(),
    }
    return section("Latency: predict on 60 s, Integrated Gradients on 5 s", md, data)


def main() -> None:
    quick_main(run, "latency", __doc__)


if __name__ == "__main__":
    main()
