"""Feature extraction speed: our batched log-Mel against librosa and Kaldi fbank, clips per second.

The same clips (3 s at 16 kHz) go through three front ends with the same settings (n_fft 1024,
25 ms Hamming window, 10 ms hop, 128 HTK mel bins from 50 Hz, natural log):

- ``LogMel`` (torchaudio, what training uses) on a whole batch in one call, and one clip at a time;
- ``librosa.feature.melspectrogram`` one clip at a time (NumPy, the common reference);
- ``torchaudio.compliance.kaldi.fbank`` (the AST front end) one clip at a time, against our
  batched ``kaldi_fbank`` (the same numbers) on the whole batch.

Peers are timed in alternation; the figure is clips/s and its ratio to librosa. The agreement of
our log-Mel with librosa's (median absolute difference of the log values) is reported too, so the
speed compares the same computation.

    python benchmarks/bench_features.py [--quick]
"""

from __future__ import annotations

import statistics

import numpy as np
import torch

from common import alternate, fmt, load_average, md_table, quick_main, section

SAMPLE_RATE = 16000
SECONDS = 3.0
SETTINGS = dict(n_fft=1024, win_length=400, hop_length=160, n_mels=128, f_min=50.0)


def make_clips(n: int, seed: int = 0) -> np.ndarray:
    """Noise plus a sweeping tone per clip. Shapes: (n, SECONDS * SAMPLE_RATE) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    clips = 0.05 * rng.standard_normal((n, t.size))
    for i in range(n):
        f0 = rng.uniform(300, 3000)
        clips[i] += 0.3 * np.sin(2 * np.pi * (f0 * t + 200 * t**2))
    return clips.astype(np.float32)


def run(quick: bool = False) -> dict:
    import librosa

    from asca_core.features import LogMel, kaldi_fbank
    from asca_core.utils import setup_torch

    setup_torch()
    n = 16 if quick else 64
    repeat = 3 if quick else 7
    clips = make_clips(n)
    batch = torch.from_numpy(clips)
    logmel = LogMel(SAMPLE_RATE, window="hamming", **SETTINGS).eval()

    def ours_batched():
        with torch.no_grad():
            return logmel(batch)

    def ours_batches_of_8():
        with torch.no_grad():
            return [logmel(batch[i : i + 8]) for i in range(0, n, 8)]

    def ours_single():
        with torch.no_grad():
            return [logmel(batch[i]) for i in range(n)]

    def librosa_single():
        return [
            np.log(
                librosa.feature.melspectrogram(
                    y=clip,
                    sr=SAMPLE_RATE,
                    n_fft=SETTINGS["n_fft"],
                    win_length=SETTINGS["win_length"],
                    hop_length=SETTINGS["hop_length"],
                    window="hamming",
                    center=True,
                    pad_mode="reflect",
                    power=2.0,
                    n_mels=SETTINGS["n_mels"],
                    fmin=SETTINGS["f_min"],
                    htk=True,
                    norm=None,
                )
                + 1e-6
            )
            for clip in clips
        ]

    def kaldi_single():
        import torchaudio

        with torch.no_grad():
            return [
                torchaudio.compliance.kaldi.fbank(
                    batch[i : i + 1],
                    sample_frequency=float(SAMPLE_RATE),
                    num_mel_bins=SETTINGS["n_mels"],
                    low_freq=SETTINGS["f_min"],
                    htk_compat=True,
                    use_energy=False,
                    window_type="hamming",
                    dither=0.0,
                ).T
                for i in range(n)
            ]

    def kaldi_batched():
        with torch.no_grad():
            return kaldi_fbank(batch, SAMPLE_RATE, n_mels=SETTINGS["n_mels"], f_min=SETTINGS["f_min"])

    # the floor under any STFT front end here: the batch's windowed frames, already cut, through the FFT
    hop, n_fft = SETTINGS["hop_length"], SETTINGS["n_fft"]
    frames = torch.randn(n * (batch.shape[-1] // hop + 1), n_fft)

    def fft_alone():
        return torch.fft.rfft(frames)

    # the same computation: compare log values where librosa's filters see energy
    ours = ours_batched()[:, 0].numpy()
    ref = np.stack(librosa_single())
    agreement = float(np.median(np.abs(ours - ref)))
    kaldi_agreement = float((kaldi_batched() - torch.stack(kaldi_single())).abs().max())

    peers = {
        "ours_batched": ours_batched,
        "ours_batches_of_8": ours_batches_of_8,
        "ours_one_at_a_time": ours_single,
        "librosa_one_at_a_time": librosa_single,
        "kaldi_fbank_one_at_a_time": kaldi_single,
        "ours_kaldi_batched": kaldi_batched,
        "fft_alone": fft_alone,
    }
    load_before = load_average()
    times = alternate(peers, repeat=repeat, warmup=1)
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    names = {
        "ours_batched": f"ours, LogMel on a batch of {n}",
        "ours_batches_of_8": "ours, LogMel on batches of 8",
        "ours_one_at_a_time": "ours, LogMel one clip at a time",
        "librosa_one_at_a_time": f"librosa {librosa.__version__} melspectrogram, one at a time",
        "kaldi_fbank_one_at_a_time": "Kaldi fbank (torchaudio.compliance), one at a time",
        "ours_kaldi_batched": f"ours, Kaldi fbank on a batch of {n}",
        "fft_alone": f"bound: the {n_fft}-point real FFTs of the same frames alone (torch.fft)",
    }
    rows = [
        [
            names[k],
            fmt(rate[k], 1),
            fmt(rate[k] / rate["librosa_one_at_a_time"]),
            fmt(rate[k] / rate["kaldi_fbank_one_at_a_time"]),
        ]
        for k in peers
    ]
    md = "\n".join(
        [
            (
                f"{n} clips of {SECONDS:g} s at {SAMPLE_RATE // 1000} kHz; n_fft {SETTINGS['n_fft']}, 25 ms Hamming "
                f"window, 10 ms hop, {SETTINGS['n_mels']} HTK mel bins from {SETTINGS['f_min']:g} Hz; median of "
                f"{repeat} alternating rounds, {torch.get_num_threads()} torch threads (librosa uses NumPy's FFT)."
            ),
            "",
            md_table(["front end", "clips/s", "x librosa", "x Kaldi fbank"], rows),
            "",
            (
                f"Our log-Mel matches librosa's to a median absolute difference of {agreement:.2e} (natural-log "
                f"units): the same computation. Our batched Kaldi fbank differs from torchaudio's by at most "
                f"{kaldi_agreement:.1e}. The last row is the FFT a front end cannot skip, with no framing, "
                f"window, power, mel or log: {rate['fft_alone'] / rate['librosa_one_at_a_time']:.1f}x librosa is "
                f"the most any STFT front end with torch's FFT reaches on this CPU. Load average {load_before} "
                f"before, {load_average()} after."
            ),
        ]
    )
    data = {
        "clips": n,
        "seconds": SECONDS,
        "sample_rate": SAMPLE_RATE,
        "settings": SETTINGS,
        "repeat": repeat,
        "clips_per_second": rate,
        "times": times,
        "median_abs_diff_vs_librosa": agreement,
        "ratio_batched_vs_librosa": rate["ours_batched"] / rate["librosa_one_at_a_time"],
        "ratio_batched_vs_kaldi": rate["ours_batched"] / rate["kaldi_fbank_one_at_a_time"],
        "ratio_kaldi_batched_vs_kaldi": rate["ours_kaldi_batched"] / rate["kaldi_fbank_one_at_a_time"],
        "max_abs_diff_kaldi_batched": kaldi_agreement,
        "ratio_fft_alone_vs_librosa": rate["fft_alone"] / rate["librosa_one_at_a_time"],
        "threads": torch.get_num_threads(),
    }
    return section("Feature extraction: clips per second", md, data)


def main() -> None:
    quick_main(run, "features", __doc__)


if __name__ == "__main__":
    main()
