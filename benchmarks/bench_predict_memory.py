"""Peak memory of ``asca predict`` against recording length: it should stay roughly flat.

Writes 1, 10 and 60 minute recordings to disk (in blocks, so the generator itself stays small),
runs ``asca predict RUN FILE --json`` on each in a fresh process and reads that process's peak
resident set size from ``os.wait4`` (``ru_maxrss``). A predictor that loaded the whole recording
would grow by about 4 bytes per sample per copy (230 MB per copy for 60 min at 16 kHz); streaming
windows keeps it flat.

    python benchmarks/bench_predict_memory.py                 # untrained asca_tiny, default features
    python benchmarks/bench_predict_memory.py --run runs/demo --minutes 1 10

Writes ``benchmarks/results/predict_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]


def write_recording(path: Path, minutes: float, sample_rate: int, seed: int = 0) -> Path:
    """Noise with chirps every few seconds, written block by block (16-bit PCM wav)."""
    rng = np.random.default_rng(seed)
    total = int(round(minutes * 60 * sample_rate))
    block = 10 * sample_rate
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, subtype="PCM_16") as f:
        for start in range(0, total, block):
            n = min(block, total - start)
            t = (start + np.arange(n)) / sample_rate
            wave = 0.05 * rng.standard_normal(n)
            on = (t % 4.0) < 0.5  # a 0.5 s call every 4 s
            wave[on] += 0.3 * np.sin(2 * np.pi * (2000 + 2000 * (t[on] % 4.0)) * t[on])
            f.write(wave.astype(np.float32))
    return path


def make_run(run_dir: Path, model: str) -> Path:
    """An untrained run with the default features: memory does not depend on the weights."""
    from asca_core.config import Config

    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures_runs import write_run

    cfg = Config.from_dict({"model": {"name": model}, "train": {"device": "cpu"}})
    return write_run(run_dir, cfg, [f"class_{i}" for i in range(8)])


def run_child(args: list[str], threads: int) -> tuple[dict, float, float]:
    """Start ``args``, wait with ``os.wait4`` (per-child rusage), return (json, peak MB, seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, args))} exited {proc.returncode}: {err.read().decode()[-800:]}")
        text = out.read().decode()
    peak_mb = usage.ru_maxrss / 1024.0  # Linux reports kilobytes
    return (json.loads(text) if text.strip().startswith("{") else {}), peak_mb, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="run directory (default: an untrained model)")
    parser.add_argument("--model", default="asca_tiny", help="model of the untrained run (default: asca_tiny)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "predict_memory.json"))
    args = parser.parse_args()

    from asca_core.utils import setup_torch

    setup_torch(args.threads)
    with tempfile.TemporaryDirectory(prefix="asca-bench-") as tmp:
        tmp = Path(tmp)
        run = Path(args.run) if args.run else make_run(tmp / "run", args.model)
        from asca_core.train.runstore import RunStore

        cfg = RunStore(run).config()
        rate = cfg.features.sample_rate
        rows = []
        # Reference: the same command on a one-second file (model, front end, interpreter).
        short = write_recording(tmp / "one_second.wav", 1 / 60, rate)
        base_cmd = [sys.executable, "-m", "asca_core.cli", "predict", str(run)]
        _, base_mb, base_s = run_child([*base_cmd, str(short), "--json"], args.threads)
        print(f"baseline (1 s file): peak RSS {base_mb:.0f} MB, {base_s:.1f} s", flush=True)
        for minutes in args.minutes:
            path = write_recording(tmp / f"rec_{minutes:g}min.wav", minutes, rate)
            doc, peak_mb, seconds = run_child([*base_cmd, str(path), "--json"], args.threads)
            windows = len(doc["predictions"][0]["timeline"])
            row = {
                "minutes": minutes,
                "duration_s": minutes * 60,
                "file_mb": round(path.stat().st_size / 2**20, 1),
                "windows": windows,
                "peak_rss_mb": round(peak_mb, 1),
                "above_baseline_mb": round(peak_mb - base_mb, 1),
                "seconds": round(seconds, 1),
                "windows_per_second": round(windows / seconds, 1),
            }
            rows.append(row)
            print(
                f"{minutes:>5g} min: {windows:>5} windows, peak RSS {peak_mb:7.1f} MB "
                f"(+{peak_mb - base_mb:5.1f} MB over a 1 s file), {seconds:6.1f} s",
                flush=True,
            )
            path.unlink()
    from common import machine_info

    result = {
        "what": "peak RSS of `asca predict RUN FILE --json` in a fresh process vs recording length",
        "run": "untrained " + args.model if not args.run else str(args.run),
        "features": {
            "sample_rate": rate,
            "clip_seconds": cfg.features.clip_seconds,
            "n_mels": cfg.features.n_mels,
            "hop_seconds": cfg.features.clip_seconds / 2,
        },
        "baseline_1s_file": {"peak_rss_mb": round(base_mb, 1), "seconds": round(base_s, 1)},
        "rows": rows,
        "growth_ratio_longest_vs_shortest": round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3)
        if rows
        else None,
        "machine": {**machine_info(), "child_threads": args.threads},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
