"""Where a training step spends its time: a ``torch.profiler`` table of one real step.

One step as the trainer runs it: ``TrainAugment`` (gain, shift, coloured noise, masks, mixup) and
the ``FeatureExtractor`` front end on the raw batch, asca_tiny forward under the ``train.amp``
autocast, cross-entropy, backward, AdamW (built as the trainer builds it) and the weight EMA.
Two shapes at batch 32: Speech Commands (1 s at 16 kHz, 64 mel bins, hop 160 -> 1 x 64 x 96)
and a 5 s scene at 22.05 kHz (64 mel bins, hop 441 -> 1 x 64 x 256); each in fp32 and bf16.

Each case warms up, then profiles one step; the tables list the top operators by self CPU time
and the step's stages (``record_function`` regions). Markdown goes to
``benchmarks/out/profile/<label>.md``; ``--label before`` / ``--label after`` keep two runs apart.
``--channels-last`` / ``--compile`` profile the step with the model in channels_last memory
format / under ``torch.compile`` (``model.channels_last`` / ``model.compile`` in the config).

``--variants eager,channels_last,compile`` instead times those variants of the same step against
each other, alternating one step of each per round so that load from other processes hits all of
them alike, and writes ``benchmarks/out/profile/<label>-variants.md`` (medians and ratios to the
first variant; the compile variant's warm-up, which includes compilation, is reported apart).

    python benchmarks/profile_step.py [--label NAME] [--threads N] [--top 15] [--channels-last] [--compile]
    python benchmarks/profile_step.py --label variants --variants eager,channels_last,compile [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from common import OUT, load_average, machine_info, md_table

BATCH = 32
NUM_CLASSES = 35
SHAPES = {
    "speech commands (1 s, 16 kHz, 64 mel, hop 160)": dict(
        sample_rate=16000, n_fft=512, win_length=400, hop_length=160, n_mels=64, clip_seconds=1.0
    ),
    "scene (5 s, 22.05 kHz, 64 mel, hop 441)": dict(
        sample_rate=22050, n_fft=1024, win_length=551, hop_length=441, n_mels=64, clip_seconds=5.0
    ),
}
STAGES = ("augment+features", "forward", "loss", "backward", "optimizer", "ema")


def build_case(shape: dict, amp: str, channels_last: bool = False, compile: bool = False):
    """A step closure over fresh model, optimiser, EMA, augmenter and front end for one shape."""
    from asca_core.augment import TrainAugment, step_generator
    from asca_core.config import AugmentConfig, FeatureConfig
    from asca_core.features import FeatureExtractor
    from asca_core.models import build_model
    from asca_core.train.amp import autocast
    from asca_core.train.losses import loss_per_example
    from asca_core.train.optim import ModelEma, build_adamw

    fcfg = FeatureConfig(**shape, norm_mean=-6.0, norm_std=4.0)
    features = FeatureExtractor(fcfg)
    augment = TrainAugment(AugmentConfig()).train()
    torch.manual_seed(0)
    model = build_model("asca_tiny", NUM_CLASSES, input_size=fcfg.input_size).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_adamw(model, lr=1e-3, weight_decay=0.05)
    ema = ModelEma(model, 0.999)
    forward = torch.compile(model) if compile else model
    g = torch.Generator().manual_seed(0)
    wave = 0.1 * torch.randn(BATCH, fcfg.clip_samples, generator=g)
    target = torch.nn.functional.one_hot(torch.randint(0, NUM_CLASSES, (BATCH,), generator=g), NUM_CLASSES).float()
    device = torch.device("cpu")
    loss_sum = torch.zeros((), dtype=torch.float64)
    state = {"step": 0}

    def step() -> None:
        nonlocal loss_sum
        with record_function("augment+features"), torch.no_grad():
            spec, tgt = augment(wave, target, features, step_generator(0, 1, state["step"]))
            if channels_last:
                spec = spec.contiguous(memory_format=torch.channels_last)
        with record_function("forward"), autocast(device, amp):
            logits = forward(spec)
        with record_function("loss"):
            loss = loss_per_example(logits, tgt, "ce").mean()
        with record_function("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("optimizer"):
            optimizer.step()
        state["step"] += 1
        with record_function("ema"):
            ema.update(model, state["step"])
        loss_sum = loss_sum + loss.detach().double() * BATCH  # the trainer reads it once per log interval

    return step, fcfg.input_size


def profile_case(step, warmup: int, top: int) -> tuple[float, str, str]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted((e for e in events if e.key not in STAGES), key=lambda e: -e.self_cpu_time_total)[:top]
    op_rows = [
        [
            e.key,
            f"{e.self_cpu_time_total / 1e3:.1f}",
            f"{100 * e.self_cpu_time_total / max(total, 1):.1f}%",
            str(e.count),
        ]
        for e in ops
    ]
    stage = {e.key: e for e in events if e.key in STAGES}
    stage_rows = [[s, f"{stage[s].cpu_time_total / 1e3:.1f}" if s in stage else "-"] for s in STAGES]
    return (
        sorted(times)[1],
        md_table(["operator", "self CPU ms", "share", "calls"], op_rows),
        md_table(["stage", "CPU ms (incl. children)"], stage_rows),
    )


def compare_variants(names: list[str], rounds: int, warmup: int, shapes: dict, amps: list[str]) -> list[str]:
    """Alternate one step of each variant per round; medians, ratios and warm-up times as Markdown."""
    flags = {
        "eager": {},
        "channels_last": {"channels_last": True},
        "compile": {"compile": True},
        "channels_last+compile": {"channels_last": True, "compile": True},
    }
    parts: list[str] = []
    for name, shape in shapes.items():
        for amp in amps:
            label = "fp32" if amp == "off" else "bf16 autocast"
            steps, warm_s, failed = {}, {}, {}
            for variant in names:
                step, input_size = build_case(shape, amp, **flags[variant])
                start = time.perf_counter()
                try:
                    for _ in range(warmup):
                        step()
                except Exception as exc:  # e.g. torch.compile without a working C++ toolchain
                    failed[variant] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
                    continue
                warm_s[variant] = time.perf_counter() - start
                steps[variant] = step
            times: dict[str, list[float]] = {v: [] for v in steps}
            for _ in range(rounds):
                for variant in steps:
                    start = time.perf_counter()
                    steps[variant]()
                    times[variant].append(time.perf_counter() - start)
            base = statistics.median(times[names[0]])
            rows = [
                [
                    v,
                    f"{statistics.median(times[v]) * 1e3:.0f}",
                    f"{base / statistics.median(times[v]):.2f}x",
                    f"{warm_s[v]:.1f}",
                ]
                if v in steps
                else [v, "-", "-", f"failed ({failed[v]})"]
                for v in names
            ]
            parts += [
                f"## {name}, {label}: input 1 x {input_size[0]} x {input_size[1]}",
                "",
                f"Median of {rounds} alternating rounds; speed-up against {names[0]}; warm-up of {warmup} steps.",
                "",
                md_table(["variant", "step ms", "speed-up", "warm-up s"], rows),
                "",
            ]
            print(f"{name} {label}: " + ", ".join(f"{r[0]} {r[1]} ms ({r[2]})" for r in rows), flush=True)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="current", help="name of the output file (before, after, ...)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true", help="model and input in channels_last")
    parser.add_argument("--compile", action="store_true", help="the model under torch.compile")
    parser.add_argument("--variants", default="", help="comma list of eager, channels_last, compile, ...")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds with --variants")
    parser.add_argument("--shapes", default="speech,scene", help="which shapes: speech, scene")
    parser.add_argument("--amp", default="off,bf16", help="which precisions: off, bf16")
    args = parser.parse_args()
    from asca_core.utils import setup_torch

    setup_torch(args.threads)
    info = machine_info()
    parts = [
        f"# Training-step profile: {args.label}",
        "",
        (
            f"{info.get('date', '')}, {info.get('cpu', '')}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s), batch {BATCH}, load average {load_average():.2f} at start."
        ),
        "",
    ]
    wanted = [w.strip() for w in args.shapes.split(",")]
    shapes = {name: shape for name, shape in SHAPES.items() if any(name.startswith(w) for w in wanted)}
    amps = [a.strip() for a in args.amp.split(",")]
    folder = OUT / "profile"
    folder.mkdir(parents=True, exist_ok=True)
    if args.variants:
        parts += compare_variants([v.strip() for v in args.variants.split(",")], args.rounds, args.warmup, shapes, amps)
        path = Path(folder / f"{args.label}-variants.md")
        path.write_text("\n".join(parts))
        print(f"wrote {path}")
        return
    if args.channels_last or args.compile:
        parts += [f"Model: channels_last {args.channels_last}, torch.compile {args.compile}.", ""]
    for name, shape in shapes.items():
        for amp in amps:
            step, input_size = build_case(shape, amp, args.channels_last, args.compile)
            median, ops, stages = profile_case(step, args.warmup, args.top)
            label = "fp32" if amp == "off" else "bf16 autocast"
            parts += [
                f"## {name}, {label}: input 1 x {input_size[0]} x {input_size[1]}",
                "",
                f"Step time (median of 3, outside the profiler): **{median * 1e3:.0f} ms**.",
                "",
                stages,
                "",
                ops,
                "",
            ]
            print(f"{name} {label}: {median * 1e3:.0f} ms", flush=True)
    path = Path(folder / f"{args.label}.md")
    path.write_text("\n".join(parts))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
