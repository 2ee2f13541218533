"""Run every benchmark and write ``benchmarks/RESULTS.md``: the one benchmark command.

    python benchmarks/run_all.py            # full: about 45-60 min on 2 quiet cores
    python benchmarks/run_all.py --quick    # a reduced pass (minutes), marked as such in RESULTS.md

Sections, in order (the long accuracy run last): feature extraction, training step vs timm with
achieved GFLOP/s against the measured matmul peak, the model engineer's forward + backward
comparison (``bench_model_vs_timm.py``), predict and Integrated Gradients latency, the inference
engineer's peak memory of ``asca predict`` against recording length (``bench_predict_memory.py``),
epoch time with and without the feature cache, accuracy against training time on FSDD. Every
figure is a ratio against a peer measured in the same run. Raw numbers go to
``benchmarks/out/*.json`` (not versioned); a section that fails is reported in RESULTS.md with its
error and the others still run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUT, ROOT, fmt, load_average, machine_info, md_table, save_json, section

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTIONS = ("features", "train_step", "model_vs_timm", "latency", "predict_memory", "cache", "accuracy_time")


def _script(name: str, args: list[str], timeout: float) -> dict:
    """Run another engineer's benchmark script as it ships and read the JSON it writes."""
    out = OUT / f"{name}.json"
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"bench_{name}.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"bench_{name}.py exited {proc.returncode}: {proc.stderr.strip()[-600:]}")
    return json.loads(out.read_text())


def model_vs_timm(quick: bool, threads: int | None) -> dict:
    args = ["--steps", "6" if quick else "20", "--warmup", "2" if quick else "3"]
    if threads:
        args += ["--threads", str(threads)]
    data = _script("model_vs_timm", args, timeout=3600)
    ours, theirs = data["models"]["asca_tiny"], data["models"]["timm_maxxvit"]
    rows = [
        [
            name,
            f"{m['params'] / 1e6:.3f}M",
            fmt(m["gmacs"], 3),
            fmt(m["median_s"], 3),
            fmt(m.get("cpu_median_s", float("nan")), 3),
            fmt(theirs["median_s"] / m["median_s"]) + "x",
        ]
        for name, m in (("asca_tiny", ours), ("timm MaxxVit", theirs))
    ]
    md = "\n".join(
        [
            (
                f"`benchmarks/bench_model_vs_timm.py` as shipped: forward + backward (no optimizer) at batch "
                f"{data['input'][0]} on {data['input'][1]} x {data['input'][2]} x {data['input'][3]}, drop path "
                f"{data.get('drop_path')}, median of {data['steps']} alternating steps, {data['threads']} thread(s)."
            ),
            "",
            md_table(["model", "params", "GMACs (fwd)", "step s (wall)", "step s (CPU)", "speed x timm"], rows),
            "",
            (
                f"asca_tiny / timm step time: {data['ratio_ours_over_timm']:.3f} wall, "
                f"{data.get('cpu_ratio_ours_over_timm', float('nan')):.3f} CPU time."
            ),
        ]
    )
    return section("Forward + backward: asca_tiny vs timm (model engineer's script)", md, data)


def predict_memory(quick: bool, threads: int | None) -> dict:
    minutes = ["1", "10"] if quick else ["1", "10", "60"]
    data = _script("predict_memory", ["--minutes", *minutes, "--threads", str(threads or 1)], timeout=7200)
    base = data["baseline_1s_file"]["peak_rss_mb"]
    rows = [
        [
            f"{r['minutes']:g} min",
            f"{r['file_mb']:.0f}",
            str(r["windows"]),
            fmt(r["peak_rss_mb"], 0),
            f"{r['peak_rss_mb'] / base:.2f}x",
            fmt(r["seconds"], 1),
            fmt(r["duration_s"] / r["seconds"], 1) + "x",
        ]
        for r in data["rows"]
    ]
    md = "\n".join(
        [
            (
                "`benchmarks/bench_predict_memory.py` as shipped: `asca predict RUN FILE --json` in a fresh process "
                f"({data['run']}, {data['features']['sample_rate'] // 1000} kHz, {data['features']['clip_seconds']:g} s "
                f"windows); peak resident memory from `wait4`, against the same command on a 1 s file "
                f"({base:.0f} MB) measured in the same run."
            ),
            "",
            md_table(["recording", "file MB", "windows", "peak RSS MB", "x 1 s file", "seconds", "x real time"], rows),
            "",
            f"Longest / shortest recording peak memory: {data['growth_ratio_longest_vs_shortest']:.3f}.",
        ]
    )
    return section("Peak memory of predict against recording length (inference engineer's script)", md, data)


def _bench(name: str) -> Callable[..., dict]:
    module = __import__(f"bench_{name}")
    return module.run


def run_section(name: str, quick: bool, threads: int | None, budget: float | None) -> dict:
    if name == "model_vs_timm":
        return model_vs_timm(quick, threads)
    if name == "predict_memory":
        return predict_memory(quick, threads)
    if name == "train_step":
        return _bench(name)(quick, threads)
    if name == "accuracy_time":
        return _bench(name)(quick, budget, threads)
    return _bench(name)(quick)


def write_results(
    machine: dict, sections: list[dict], args: argparse.Namespace, seconds: float, load_end: float
) -> str:
    mode = "QUICK (reduced sizes and repeats: a smoke run, not the reference figures)" if args.quick else "full"
    rows = [
        ["date", machine["date"]],
        ["CPU", f"{machine['cpu']} ({machine['cpu_capability']} kernels)"],
        ["cores", f"{machine['cores']} ({machine['usable_cores']} usable)"],
        ["torch", machine["torch"]],
        ["torch threads", str(machine["torch_threads"])],
        ["Python / NumPy", f"{machine['python']} / {machine['numpy']}"],
        ["platform", machine["platform"]],
        ["load average at start (1/5/15 min)", " / ".join(map(str, machine["load_average"]))],
        ["load average at end (1 min)", str(load_end)],
        ["mode", mode],
        [
            "duration",
            f"{seconds / 60:.1f} min" + (" (this command; merged sections carry their own date)" if args.merge else ""),
        ],
    ]
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/run_all.py" + (" --quick" if args.quick else "") + "` "
        "(see `benchmarks/README.md`). Every figure is a ratio against a peer measured in the same "
        "run on this machine; absolute times depend on the machine and on its load.",
        "",
    ]
    if args.note:
        lines += [f"**Note:** {args.note}", ""]
    lines += [md_table(["", ""], rows), ""]
    for i, sec in enumerate(sections, 1):
        lines += [f"## {i}. {sec['title']}", "", f"_{sec['measured']}_", "", sec["markdown"], ""]
    text = "\n".join(lines).rstrip() + "\n"
    Path(args.out).write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes and repeats (minutes, not an hour)")
    parser.add_argument("--only", default=None, metavar="A,B", help=f"run only these of {', '.join(SECTIONS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument(
        "--accuracy-budget",
        type=float,
        default=None,
        metavar="MIN",
        help="minutes for the four FSDD trainings (default 30, quick 3)",
    )
    parser.add_argument("--note", default="", help="a line written at the top of RESULTS.md")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other sections of the last run (benchmarks/out/results.json) and "
        "replace only those run now, e.g. with --only accuracy_time",
    )
    parser.add_argument(
        "--out", default=str(RESULTS), help="where to write the Markdown (default: benchmarks/RESULTS.md)"
    )
    args = parser.parse_args(argv)
    names = SECTIONS if not args.only else tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    from asca_core.utils import setup_torch

    setup_torch(args.threads)
    machine = machine_info()
    started = time.perf_counter()
    print(
        f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, load {machine['load_average']}",
        flush=True,
    )
    previous: dict = {}
    if args.merge and (OUT / "results.json").is_file():
        previous = json.loads((OUT / "results.json").read_text()).get("sections", {})
        previous = {k: v for k, v in previous.items() if isinstance(v, dict) and "markdown" in v}
    done: dict[str, dict] = {}

    def ordered() -> list[dict]:
        merged = {**previous, **done}
        return [merged[n] for n in SECTIONS if n in merged]

    for name in names:
        t0, load0 = time.perf_counter(), load_average()
        measured = machine_info()["date"]
        print(f"== {name} (load {load0})", flush=True)
        try:
            result = run_section(name, args.quick, args.threads, args.accuracy_budget)
        except Exception as exc:  # one failing benchmark must not lose the others' figures
            traceback.print_exc()
            result = section(name, f"**Not measured:** `{type(exc).__name__}: {exc}`", {"error": str(exc)})
        import torch

        result["measured"] = (
            f"Measured {measured}{' (quick)' if args.quick else ''}, "
            f"{torch.get_num_threads()} torch thread(s), load average {load0} -> "
            f"{load_average()}, {(time.perf_counter() - t0) / 60:.1f} min."
        )
        done[name] = result
        print(result["markdown"], flush=True)
        write_results(machine, ordered(), args, time.perf_counter() - started, load_average())
    save_json("results", {"machine": machine, "quick": args.quick, "sections": {**previous, **done}})
    write_results(machine, ordered(), args, time.perf_counter() - started, load_average())
    print(f"wrote {args.out}")
    return 0 if all("error" not in s["data"] for s in done.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
