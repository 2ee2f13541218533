"""Training-step speed of ``asca_tiny`` against timm's CoAtNet (MaxxVit) of the same architecture.

Both models get the same widths (stem 32; 48/96/192/384), depths (2/2/3/1), layout C-C-C-T,
stride placement, stochastic depth, pre-logits head, one input channel and a (128, 320) input; the script checks
that their parameter counts agree. One forward + backward at batch 12 is timed for each model in
alternation (the order flips every step), so load from other processes on the machine hits both
alike; after a warm-up the median of N steps is reported with the ratio ours / timm.

    .venv/bin/python benchmarks/bench_model_vs_timm.py [--steps 20] [--threads 2] [--compile]

Needs the ``bench`` extra (``pip install -e .[bench]``, for timm). Writes
``benchmarks/results/model_vs_timm.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asca_core.models import build_model, count_params, gmacs
from asca_core.utils import setup_torch

INPUT_SIZE = (128, 320)
TIMM_STRIDE = {"paper": "1x1", "depthwise": "dw"}


def timm_coatnet(num_classes: int, stride_mode: str, drop_path: float) -> torch.nn.Module:
    """timm's MaxxVit configured as asca_tiny."""
    from timm.models.maxxvit import MaxxVit, MaxxVitCfg, MaxxVitConvCfg

    cfg = MaxxVitCfg(
        embed_dim=(48, 96, 192, 384),
        depths=(2, 2, 3, 1),
        block_type=("C", "C", "C", "T"),
        stem_width=32,
        head_hidden_size=384,
        conv_cfg=MaxxVitConvCfg(stride_mode=TIMM_STRIDE[stride_mode]),
    )
    return MaxxVit(cfg, img_size=INPUT_SIZE, in_chans=1, num_classes=num_classes, drop_path_rate=drop_path)


def train_step(model: torch.nn.Module, spec: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Wall and process-CPU seconds of one forward + backward. CPU time is less sensitive to other
    processes taking the cores away (it still counts cache misses they cause)."""
    wall, cpu = time.perf_counter(), time.process_time()
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(spec), target)
    loss.backward()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth of both (asca_tiny's default)")
    parser.add_argument("--stride-mode", choices=sorted(TIMM_STRIDE), default="paper")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models first")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "model_vs_timm.json"))
    args = parser.parse_args(argv)

    import timm

    setup_torch(num_threads=args.threads)  # flushes denormals: both models run under the same settings
    torch.manual_seed(0)
    models = {
        "asca_tiny": build_model(
            "asca_tiny", args.num_classes, stride_mode=args.stride_mode, drop_path=args.drop_path
        ).train(),
        "timm_maxxvit": timm_coatnet(args.num_classes, args.stride_mode, args.drop_path).train(),
    }
    info = {name: {"params": count_params(m), "gmacs": round(gmacs(m, INPUT_SIZE), 4)} for name, m in models.items()}
    if info["asca_tiny"]["params"] != info["timm_maxxvit"]["params"]:
        print(f"warning: parameter counts differ: {info}", file=sys.stderr)
    if args.compile:
        models = {name: torch.compile(m) for name, m in models.items()}

    g = torch.Generator().manual_seed(0)
    spec = torch.randn(args.batch_size, 1, *INPUT_SIZE, generator=g)
    target = torch.randint(0, args.num_classes, (args.batch_size,), generator=g)
    order = list(models)
    for _ in range(args.warmup):
        for name in order:
            train_step(models[name], spec, target)
    times: dict[str, list[float]] = {name: [] for name in order}
    cpu_times: dict[str, list[float]] = {name: [] for name in order}
    for step in range(args.steps):
        for name in order if step % 2 == 0 else order[::-1]:
            wall, cpu = train_step(models[name], spec, target)
            times[name].append(wall)
            cpu_times[name].append(cpu)

    median = {name: statistics.median(t) for name, t in times.items()}
    cpu_median = {name: statistics.median(t) for name, t in cpu_times.items()}
    result = {
        "what": "forward + backward of one training step (cross-entropy), median over steps",
        "input": [args.batch_size, 1, *INPUT_SIZE],
        "stride_mode": args.stride_mode,
        "drop_path": args.drop_path,
        "compile": args.compile,
        "threads": torch.get_num_threads(),
        "flush_denormal": True,
        "steps": args.steps,
        "warmup": args.warmup,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cpu": platform.processor() or platform.machine(),
        "models": {
            name: {
                **info[name],
                "median_s": round(median[name], 4),
                "min_s": round(min(times[name]), 4),
                "max_s": round(max(times[name]), 4),
                "cpu_median_s": round(cpu_median[name], 4),
            }
            for name in order
        },
        "ratio_ours_over_timm": round(median["asca_tiny"] / median["timm_maxxvit"], 3),
        "cpu_ratio_ours_over_timm": round(cpu_median["asca_tiny"] / cpu_median["timm_maxxvit"], 3),
    }
    for name in order:
        m = result["models"][name]
        print(
            f"{name:13s} params {m['params'] / 1e6:.3f}M  GMACs {m['gmacs']:.3f}  "
            f"step median {m['median_s']:.3f}s (min {m['min_s']:.3f}, max {m['max_s']:.3f}), "
            f"CPU {m['cpu_median_s']:.3f}s"
        )
    print(
        f"ratio asca_tiny / timm = {result['ratio_ours_over_timm']:.3f} wall, "
        f"{result['cpu_ratio_ours_over_timm']:.3f} CPU time "
        f"(threads {result['threads']}, load average {result['load_average_1min']})"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
