"""Deployment throughput: real-time factor of folder-scale prediction, PyTorch against ONNX Runtime.

Three workloads built from the shared real recordings (BirdCLEF 2023 sample, 32 kHz ogg):

- a 1-minute and a 60-minute recording, the 18 recordings decoded and tiled end to end, written
  as 16-bit wav at 32 kHz (the model runs at 16 kHz, so every window is resampled);
- a folder of 100 files, the 18 original ogg files repeated (decoding ogg included).

Each workload runs in a fresh process per engine (torch, then onnx; the order flips every
repeat): load the run, then ``Classifier.predict_many`` over the files with 3 s windows and a
1.5 s hop, background decoding included. The child times scoring from the first file to the last
result; the parent reads its own peak resident memory (``VmHWM``). Real-time factor =
seconds of audio / seconds of wall time.

    flock /tmp/asca-heavy.lock python benchmarks/bench_deploy.py            # writes RESULTS.md section
    python benchmarks/bench_deploy.py --quick                               # 1 + 5 minutes, 20 files

Raw numbers go to ``benchmarks/out/deploy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from common import SHARED_DATA, fmt, load_average, machine_info, md_table, save_json

BIRD = SHARED_DATA / "birdclef2023_sample" / "train_audio"
START, END = "<!-- deploy:start -->", "<!-- deploy:end -->"
FEATURES = {  # the demo preset's front end: 64 x 160 input per 3 s window
    "demo": {
        "sample_rate": 16000,
        "n_fft": 1024,
        "win_length": 640,
        "hop_length": 320,
        "n_mels": 64,
        "f_min": 50.0,
        "f_max": 8000.0,
        "clip_seconds": 3.0,
    },
    # the library defaults: 128 mel bins at a 10 ms hop, 128 x 320 input per 3 s window
    "default": {"sample_rate": 16000, "clip_seconds": 3.0},
}


def bird_files() -> list[Path]:
    files = sorted(BIRD.glob("*/*.ogg"))
    if not files:
        raise SystemExit(f"no BirdCLEF recordings under {BIRD}")
    return files


def tiled_recording(path: Path, minutes: float, sample_rate: int = 32000) -> Path:
    """The shared recordings decoded and written end to end until ``minutes`` are filled."""
    from asca_core.audio import load_audio

    total = int(round(minutes * 60 * sample_rate))
    sources = bird_files()
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, subtype="PCM_16") as out:
        written, k = 0, 0
        while written < total:
            wave = load_audio(sources[k % len(sources)], sample_rate)
            wave = wave[: total - written]
            out.write(wave)
            written += wave.size
            k += 1
    return path


def folder_of(path: Path, count: int) -> Path:
    """``count`` real ogg files (the 18 shared recordings, repeated) in one folder."""
    path.mkdir(parents=True, exist_ok=True)
    sources = bird_files()
    for i in range(count):
        target = path / f"{i:03d}_{sources[i % len(sources)].name}"
        if not target.exists():
            os.link(sources[i % len(sources)], target) if _same_fs(sources[0], path) else target.write_bytes(
                sources[i % len(sources)].read_bytes()
            )
    return path


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def make_run(run_dir: Path, model: str, features: dict) -> Path:
    """An untrained run (speed and memory do not depend on the weights), exported to ONNX."""
    from asca_core.config import Config
    from asca_core.export import export_onnx

    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures_runs import write_run

    cfg = Config.from_dict(
        {
            "data": {"path": str(run_dir / "no-data")},
            "features": features,
            "model": {"name": model},
            "train": {"device": "cpu"},
        }
    )
    write_run(run_dir, cfg, [f"class_{i}" for i in range(8)])
    export_onnx(run_dir)
    return run_dir


def child(args: argparse.Namespace) -> int:
    """Score ``args.files`` in this process and print one JSON line of timings."""
    import torch

    from asca_core.audio import audio_info
    from asca_core.inference import Classifier

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    clf = Classifier.from_run(args.run, engine=args.engine, threads=args.threads)
    loaded = time.perf_counter()
    files = [str(p) for p in args.files]
    if len(files) == 1 and Path(files[0]).is_dir():
        files = sorted(str(p) for p in Path(files[0]).iterdir())
    audio = sum(audio_info(f).duration for f in files)
    windows = 0
    t0 = time.perf_counter()
    for _, pred in clf.predict_many(files, hop=args.hop):
        windows += len(pred.timeline)
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "engine": args.engine,
                "files": len(files),
                "audio_s": audio,
                "windows": windows,
                "score_s": seconds,
                "load_s": loaded - started,
                "threads": args.threads,
                "peak_rss_mb": _own_peak_mb(),
            }
        )
    )
    return 0


def _own_peak_mb() -> float:
    """This process's peak resident memory (VmHWM), which starts afresh at exec; ``ru_maxrss``
    from ``wait4`` would also count the parent's memory at fork time."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_child(argv: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--child", *argv], stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"child {argv} failed: {err.read().decode()[-1500:]}")
        result = json.loads(out.read().decode().strip().splitlines()[-1])
    result.setdefault("peak_rss_mb", usage.ru_maxrss / 1024.0)
    result["process_s"] = wall
    return result


def measure(run: Path, workloads: dict[str, list[Path]], threads: int, repeat: int, hop: float) -> dict:
    results: dict[str, dict[str, list[dict]]] = {}
    for name, files in workloads.items():
        results[name] = {"torch": [], "onnx": []}
        for r in range(repeat):
            for engine in ("torch", "onnx") if r % 2 == 0 else ("onnx", "torch"):
                argv = [
                    "--run",
                    str(run),
                    "--engine",
                    engine,
                    "--threads",
                    str(threads),
                    "--hop",
                    str(hop),
                    *map(str, files),
                ]
                res = run_child(argv, threads)
                results[name][engine].append(res)
                print(
                    f"  {name:>12} {engine:>5}: {res['audio_s'] / res['score_s']:.1f}x real time, "
                    f"{res['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    return results


def summarise(results: dict, label: str) -> tuple[list[list], dict]:
    rows, summary = [], {}
    for name, by_engine in results.items():
        for engine, runs in by_engine.items():
            best = min(runs, key=lambda r: r["score_s"])  # least disturbed by other load
            med = float(np.median([r["score_s"] for r in runs]))
            rtf = best["audio_s"] / med
            summary[f"{name}/{engine}"] = {
                "rtf": rtf,
                "score_s": med,
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "windows": best["windows"],
                "audio_s": best["audio_s"],
                "windows_per_s": best["windows"] / med,
                "load_s": best["load_s"],
            }
        t, o = summary[f"{name}/torch"], summary[f"{name}/onnx"]
        for engine, s in (("torch", t), ("onnx", o)):
            rows.append(
                [
                    f"{name}" if engine == "torch" else "",
                    engine,
                    f"{s['audio_s'] / 60:.1f}",
                    s["windows"],
                    fmt(s["score_s"]),
                    f"**{s['rtf']:.0f}x**" if s["rtf"] >= 100 else f"{s['rtf']:.0f}x",
                    f"{s['windows_per_s']:.0f}",
                    f"{s['peak_rss_mb']:,.0f}",
                    "1.00" if engine == "torch" else f"{t['score_s'] / o['score_s']:.2f}",
                ]
            )
    return rows, summary


def write_results(markdown: str, path: Path) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{START}\n{markdown.strip()}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="torch", help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="1 and 5 minute recordings, 20 files, one repeat")
    parser.add_argument("--threads", type=int, default=2, help="threads per engine (default: 2)")
    parser.add_argument("--hop", type=float, default=1.5, help="seconds between 3 s windows (default: 1.5)")
    parser.add_argument("--model", default="asca_tiny")
    parser.add_argument("--features", default="demo", help="comma-separated: demo, default (see FEATURES)")
    parser.add_argument("--repeat", type=int, default=None, help="repeats per workload (default 3 / 1 quick)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the recordings (default: temp)")
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.child:
        return child(args)

    info = machine_info()
    started = time.time()
    load_before = load_average()
    long_minutes, n_files = (5, 20) if args.quick else (60, 100)
    repeat = args.repeat or (1 if args.quick else 3)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="asca-deploy-"))
    work.mkdir(parents=True, exist_ok=True)
    one = work / "one_minute.wav"
    long = work / f"{long_minutes}_minutes.wav"
    if not one.exists():
        tiled_recording(one, 1)
    if not long.exists():
        tiled_recording(long, long_minutes)
    folder = folder_of(work / f"folder_{n_files}", n_files)
    workloads = {"1 min": [one], f"{long_minutes} min": [long], f"{n_files} files": [folder]}
    sections, raw = [], {"machine": info, "threads": args.threads, "hop": args.hop, "repeat": repeat}
    for feat in args.features.split(","):
        run = make_run(work / f"run-{args.model}-{feat}", args.model, FEATURES[feat])
        from asca_core.config import FeatureConfig

        f_cfg = FeatureConfig(**FEATURES[feat])
        print(
            f"{args.model}, {feat} features ({f_cfg.input_size[0]} x {f_cfg.input_size[1]} per 3 s window):", flush=True
        )
        results = measure(run, workloads, args.threads, repeat, args.hop)
        rows, summary = summarise(results, feat)
        raw[feat] = {"results": results, "summary": summary, "input_size": list(f_cfg.input_size)}
        long_t, long_o = summary[f"{long_minutes} min/torch"], summary[f"{long_minutes} min/onnx"]
        one_t, one_o = summary["1 min/torch"], summary["1 min/onnx"]
        best = max(long_t["rtf"], long_o["rtf"])
        sections.append(
            f"**{args.model}, {f_cfg.input_size[0]} x {f_cfg.input_size[1]} input** ({feat} features: "
            f"{f_cfg.n_mels} mel bins, {1000 * f_cfg.hop_length / f_cfg.sample_rate:g} ms hop, "
            f"{f_cfg.sample_rate // 1000} kHz):\n\n"
            + md_table(
                [
                    "workload",
                    "engine",
                    "audio min",
                    "windows",
                    "scoring s",
                    "x real time",
                    "windows/s",
                    "peak RSS MB",
                    "speed x torch",
                ],
                rows,
            )
            + f"\n\nOn the {long_minutes}-minute recording: {best:.0f}x real time at best "
            f"({'meets' if best >= 100 else 'misses'} the 100x target); peak memory "
            f"{long_t['peak_rss_mb']:,.0f} MB (torch) and {long_o['peak_rss_mb']:,.0f} MB (onnx) against "
            f"{one_t['peak_rss_mb']:,.0f} / {one_o['peak_rss_mb']:,.0f} MB for 1 minute "
            f"(ratio {long_t['peak_rss_mb'] / one_t['peak_rss_mb']:.2f} / "
            f"{long_o['peak_rss_mb'] / one_o['peak_rss_mb']:.2f})."
        )
    load_after = load_average()
    minutes = (time.time() - started) / 60
    markdown = (
        f"## Deployment: folder-scale prediction, PyTorch vs ONNX Runtime\n\n"
        f"_Measured {info['date']}, {args.threads} thread(s) per engine, load average {load_before} -> "
        f"{load_after}, {minutes:.1f} min; `benchmarks/bench_deploy.py`{' --quick' if args.quick else ''}._\n\n"
        f"Untrained weights (speed does not depend on them), 8 classes; 3 s windows every {args.hop:g} s; "
        f"recordings tiled from the 18 shared BirdCLEF 2023 recordings and written as 16-bit wav at 32 kHz "
        f"(decoded and resampled to 16 kHz window by window); the folder holds {n_files} of the original "
        f"32 kHz ogg files. Each line is a fresh process: `Classifier.predict_many` with background "
        f"decoding, scoring time from the first window to the last result (median of {repeat}; model "
        f"loading not included, about 1-3 s), peak resident memory of the whole process (`VmHWM`: "
        f"PyTorch, and ONNX Runtime for onnx, included). The ONNX graph holds the log-Mel front end (DFT as a "
        f"convolution) and runs on ONNX Runtime's CPU provider.\n\n" + "\n\n".join(sections) + "\n"
    )
    print(markdown)
    raw["markdown"] = markdown
    print(f"wrote {save_json('deploy', raw)}")
    if not args.no_write:
        write_results(markdown, ROOT / "benchmarks" / "RESULTS.md")
        print("updated benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
