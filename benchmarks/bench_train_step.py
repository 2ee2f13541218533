"""Training-step throughput and achieved GFLOP/s: asca_tiny against timm's CoAtNet (MaxxVit) of the
same configuration, and both as a fraction of this machine's fp32 matmul peak.

One step is a whole optimiser step at batch 12 on a (1, 128, 320) log-Mel input: zero_grad,
forward, cross-entropy, backward, AdamW. asca_tiny runs three ways: plain eager NCHW fp32 (as timm
is run), channels_last (the training default, ``model.channels_last``) and channels_last under
bf16 autocast (what the automatic recipe turns on where this CPU measures it faster). The timm model comes from the model engineer's builder in
``bench_model_vs_timm.py`` (same widths, depths, layout, stride placement, head; parameter counts
are checked). The FLOPs of one step (3 x the forward FLOPs: convolutions, matmuls and attention
counted by ``torch.utils.flop_counter``, attention on the math kernel so it is counted) divided by
the median step time give the achieved GFLOP/s. The peak is the best of large square fp32
``torch.mm`` (sgemm) timings measured in the same run with the same threads.

    python benchmarks/bench_train_step.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from common import alternate, fmt, load_average, md_table, save_json, section

BATCH = 12
NUM_CLASSES = 10
DROP_PATH = 0.1  # asca_tiny's default stochastic depth, given to both models
DEFAULT = "asca_tiny, channels_last (training default)"
BF16 = "asca_tiny, channels_last + bf16 autocast"


def matmul_peak(sizes: tuple[int, ...] = (1024, 2048, 3072), repeat: int = 5) -> dict:
    """Best fp32 GFLOP/s of ``a @ b`` over square sizes (median per size)."""
    results = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        times = alternate({"mm": lambda: torch.mm(a, b)}, repeat=repeat, warmup=2)["mm"]  # noqa: B023 - timed here
        results[n] = 2 * n**3 / statistics.median(times) / 1e9
    best = max(results, key=results.get)
    return {"gflops": results[best], "size": best, "by_size": results}


def step_flops(model: torch.nn.Module, spec: torch.Tensor) -> float:
    """FLOPs of one training step: 3 x the forward pass (the backward costs two forwards).

    The forward is counted exactly; the backward is not counted directly because the counter
    overcounts grouped (depthwise) convolution backward by the group count. AdamW's element-wise
    update is not counted.
    """
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(spec)
    return 3.0 * float(counter.get_total_flops())


def run(quick: bool = False, threads: int | None = None) -> dict:
    from asca_core.models import build_model, count_params
    from asca_core.utils import setup_torch
    from bench_model_vs_timm import INPUT_SIZE, timm_coatnet

    setup_torch(threads)
    steps = 4 if quick else 20

    def ours():
        torch.manual_seed(0)
        return build_model("asca_tiny", NUM_CLASSES, stride_mode="paper", drop_path=DROP_PATH).train()

    torch.manual_seed(0)
    models = {
        "asca_tiny": ours(),
        DEFAULT: ours().to(memory_format=torch.channels_last),
        BF16: ours().to(memory_format=torch.channels_last),
        "timm MaxxVit (same config)": timm_coatnet(NUM_CLASSES, "paper", drop_path=DROP_PATH).train(),
    }
    params = {k: count_params(m) for k, m in models.items()}
    if len(set(params.values())) != 1:
        print(f"warning: parameter counts differ: {params}")
    g = torch.Generator().manual_seed(0)
    spec = torch.randn(BATCH, 1, *INPUT_SIZE, generator=g)
    target = torch.randint(0, NUM_CLASSES, (BATCH,), generator=g)
    flops = {k: step_flops(m, spec) for k, m in models.items()}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05) for k, m in models.items()}

    spec_cl = spec.contiguous(memory_format=torch.channels_last)

    def step(name: str):
        x = spec_cl if name in (DEFAULT, BF16) else spec

        def fn():
            model, opt = models[name], optimizers[name]
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == BF16):
                loss = F.cross_entropy(model(x).float(), target)
            loss.backward()
            opt.step()

        return fn

    load_before = load_average()
    peak_before = matmul_peak(repeat=3 if quick else 5)
    times = alternate({k: step(k) for k in models}, repeat=steps, warmup=2)
    peak_after = matmul_peak(repeat=3 if quick else 5)
    peak = max(peak_before["gflops"], peak_after["gflops"])
    median = {k: statistics.median(v) for k, v in times.items()}
    theirs = "timm MaxxVit (same config)"
    rows = []
    for k in models:
        achieved = flops[k] / median[k] / 1e9
        rows.append(
            [
                k,
                f"{params[k] / 1e6:.3f}M",
                fmt(flops[k] / 1e9 / BATCH, 3),
                fmt(median[k], 3),
                fmt(BATCH / median[k], 1),
                fmt(achieved, 1),
                f"{100 * achieved / peak:.1f}%",
                fmt(median[theirs] / median[k]),
            ]
        )
    md = "\n".join(
        [
            (
                f"One AdamW step (forward, cross-entropy, backward, update) at batch {BATCH} on a 1 x "
                f"{INPUT_SIZE[0]} x {INPUT_SIZE[1]} input, median of {steps} steps timed in alternation after a "
                f"warm-up; {torch.get_num_threads()} torch thread(s), denormals flushed. GFLOP per sample: "
                "forward + backward as 3 x the counted forward (convolutions, matmuls, attention); the bf16 row's "
                "share is of the fp32 peak. fp32 matmul "
                f"peak measured in the same run: **{peak:.1f} GFLOP/s** (best square sgemm, n = {peak_before['size']}; before the steps "
                f"{peak_before['gflops']:.1f}, after {peak_after['gflops']:.1f})."
            ),
            "",
            md_table(
                [
                    "model",
                    "params",
                    "GFLOP/sample (fwd+bwd)",
                    "step s",
                    "samples/s",
                    "achieved GFLOP/s",
                    "of matmul peak",
                    "speed x timm",
                ],
                rows,
            ),
            "",
            f"Load average {load_before} before, {load_average()} after.",
        ]
    )
    data = {
        "batch": BATCH,
        "input": list(INPUT_SIZE),
        "steps": steps,
        "params": params,
        "flops_per_step": flops,
        "median_step_s": median,
        "times": times,
        "matmul_peak": {"before": peak_before, "after": peak_after, "gflops": peak},
        "achieved_gflops": {k: flops[k] / median[k] / 1e9 for k in models},
        "fraction_of_peak": {k: flops[k] / median[k] / 1e9 / peak for k in models},
        "speed_ratio_ours_vs_timm": median[theirs] / median[DEFAULT],
        "speed_ratio_plain_vs_timm": median[theirs] / median["asca_tiny"],
        "speed_ratio_bf16_vs_timm": median[theirs] / median[BF16],
        "threads": torch.get_num_threads(),
    }
    return section("Training step: asca_tiny vs timm CoAtNet, achieved GFLOP/s", md, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    result = run(args.quick, args.threads)
    print(result["markdown"])
    print(f"wrote {save_json('train_step', result['data'])}")


if __name__ == "__main__":
    main()
