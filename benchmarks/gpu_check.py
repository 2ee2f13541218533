"""The GPU check: training step, throughput, memory, bf16 vs fp32, compile vs eager, and the front end.

Runs in under five minutes on one CUDA device and needs only torch, torchaudio, numpy, safetensors
and pyyaml (a typical accelerator image): nothing here decodes files or computes attributions, and
the project's decoders are imported lazily. Every training step is the whole GPU path of the
``gpu`` preset: waveforms on the device, augmentation (gain, shift, generated noise, SpecAugment)
and the log-Mel front end on the device, forward, loss, backward and a fused AdamW step.

    python benchmarks/gpu_check.py                  # -> benchmarks/out/gpu_check.{json,md}
    python benchmarks/gpu_check.py --device cpu --quick   # the same code path on a CPU, tiny

Variants per model, measured alternately in the same run: fp32 eager, bf16 eager, bf16 +
channels_last, and bf16 + channels_last + ``torch.compile``. Reported per variant: median step
time, samples/s, peak device memory, and the speed-up over fp32 eager. The front end is timed as
clips/s of batched log-Mel (torchaudio) and Kaldi fbank on the device against the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NUM_CLASSES = 20
# model, batch, front end: the automatic recipe's input for 5 s clips, and the paper's 224 x 224
MODELS = {
    "asca_tiny (recipe, 64 x 256)": {
        "name": "asca_tiny",
        "batch": 64,
        "features": {
            "sample_rate": 32000,
            "clip_seconds": 5.0,
            "n_fft": 2048,
            "win_length": 1280,
            "hop_length": 640,
            "n_mels": 64,
        },
    },
    "asca_0 (paper, 224 x 224)": {
        "name": "asca_0",
        "batch": 32,
        "features": {
            "sample_rate": 32000,
            "clip_seconds": 5.0,
            "n_fft": 1024,
            "win_length": 800,
            "hop_length": 320,
            "n_mels": 128,
            "shape": "resize224",
        },
    },
}
QUICK_MODELS = {
    "asca_pico (quick)": {
        "name": "asca_pico",
        "batch": 4,
        "features": {
            "sample_rate": 16000,
            "clip_seconds": 1.0,
            "n_fft": 512,
            "win_length": 400,
            "hop_length": 160,
            "n_mels": 64,
        },
    },
}
VARIANTS = {  # name -> (autocast dtype, channels_last, compile)
    "fp32 eager": (None, False, False),
    "bf16 eager": (torch.bfloat16, False, False),
    "bf16 channels_last": (torch.bfloat16, True, False),
    "bf16 channels_last compiled": (torch.bfloat16, True, True),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(
    spec: dict[str, Any], device: torch.device, dtype: torch.dtype | None, channels_last: bool, compiled: bool
):
    """One training step of the GPU path, as a closure, and the model it trains."""
    from asca_core.augment import TrainAugment
    from asca_core.config import AugmentConfig, FeatureConfig
    from asca_core.features import FeatureExtractor
    from asca_core.models import build_model

    feat_cfg = FeatureConfig(**spec["features"], norm_mean=0.0, norm_std=1.0)
    features = FeatureExtractor(feat_cfg).to(device).eval()
    augment = (
        TrainAugment(
            AugmentConfig(
                mixup=False, noise_prob=0.25, time_masks=2, freq_masks=2, time_mask_width=max(2, feat_cfg.frames // 10)
            )
        )
        .to(device)
        .train()
    )
    model = build_model(spec["name"], NUM_CLASSES, input_size=feat_cfg.input_size).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, **fused)
    batch = spec["batch"]
    g = torch.Generator().manual_seed(0)  # augmentation draws from a CPU generator, as in training
    wave = torch.randn(batch, feat_cfg.clip_samples, generator=g).to(device) * 0.1
    target = F.one_hot(torch.arange(batch, device=device) % NUM_CLASSES, NUM_CLASSES).float()
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext

    def step() -> torch.Tensor:
        with torch.no_grad():
            x, y = augment(wave, target, features, g)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            loss = F.cross_entropy(forward(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()  # read by the caller once, after timing: no host sync per step

    return step, model


def time_steps(step, device: torch.device, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def check_models(device: torch.device, quick: bool, compile_ok: bool) -> list[dict[str, Any]]:
    rows = []
    for label, spec in (QUICK_MODELS if quick else MODELS).items():
        for variant, (dtype, channels_last, compiled) in VARIANTS.items():
            if compiled and not compile_ok:
                continue
            if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
                continue
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            started = time.perf_counter()
            try:
                step, model = make_step(spec, device, dtype, channels_last, compiled)
                times = time_steps(step, device, warmup=3 if compiled else 2, steps=3 if quick else 15)
                loss = float(step())
            except Exception as exc:
                rows.append({"model": label, "variant": variant, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            median = statistics.median(times)
            rows.append(
                {
                    "model": label,
                    "variant": variant,
                    "batch": spec["batch"],
                    "step_ms": 1000 * median,
                    "samples_per_s": spec["batch"] / median,
                    "loss_finite": bool(torch.isfinite(torch.tensor(loss))),
                    "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20
                    if device.type == "cuda"
                    else None,
                    "setup_and_warmup_s": time.perf_counter() - started - sum(times),
                    "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                }
            )
            del step, model
    for row in rows:
        base = next(
            (r for r in rows if r["model"] == row["model"] and r["variant"] == "fp32 eager" and "step_ms" in r), None
        )
        if base and "step_ms" in row:
            row["speedup_vs_fp32_eager"] = base["step_ms"] / row["step_ms"]
    return rows


def check_front_end(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    from asca_core.config import FeatureConfig
    from asca_core.features import FeatureExtractor

    batch = 8 if quick else 256
    cfgs = {
        "log-Mel (torchaudio), 5 s at 32 kHz": FeatureConfig(
            sample_rate=32000, clip_seconds=5.0, n_fft=2048, win_length=1280, hop_length=640, n_mels=64
        ),
        "Kaldi fbank (the paper's), 5 s at 32 kHz": FeatureConfig(
            frontend="kaldi",
            sample_rate=32000,
            clip_seconds=5.0,
            n_fft=1024,
            win_length=800,
            hop_length=320,
            n_mels=128,
            window="hamming",
        ),
    }
    rows = []
    for label, cfg in cfgs.items():
        wave = torch.randn(batch, cfg.clip_samples) * 0.1
        timings = {}
        for where in ("cpu", device.type) if device.type != "cpu" else ("cpu",):
            dev = torch.device(where) if where == "cpu" else device
            fe = FeatureExtractor(cfg).to(dev).eval()
            x = wave.to(dev)
            with torch.no_grad():
                times = time_steps(lambda fe=fe, x=x: fe.spectrogram(x), dev, warmup=1, steps=2 if quick else 5)
            timings[where] = batch / statistics.median(times)
        row = {"front end": label, "batch": batch, "cpu_clips_per_s": timings["cpu"]}
        if device.type != "cpu":
            row["device_clips_per_s"] = timings[device.type]
            row["device_over_cpu"] = timings[device.type] / timings["cpu"]
        rows.append(row)
    return rows


def markdown(result: dict[str, Any]) -> str:
    info = result["device"]
    lines = [
        (
            f"GPU check on {info['name']} (torch {info['torch']}, CUDA {info['cuda']}), "
            f"{result['seconds']:.0f} s in all. Steps include on-device augmentation and front end, "
            "forward, backward and fused AdamW; median of the timed steps."
        ),
        "",
        "| model | variant | batch | step ms | samples/s | x fp32 eager | peak memory MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["models"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | | failed: {r['error']} | | | |")
            continue
        mem = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] is not None else "-"
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['batch']} | {r['step_ms']:.1f} | "
            f"{r['samples_per_s']:.0f} | {r.get('speedup_vs_fp32_eager', 1.0):.2f} | {mem} |"
        )
    lines += ["", "| front end | batch | CPU clips/s | device clips/s | device / CPU |", "|---|---:|---:|---:|---:|"]
    for r in result["front_end"]:
        dev = f"{r['device_clips_per_s']:.0f}" if "device_clips_per_s" in r else "-"
        ratio = f"{r['device_over_cpu']:.1f}" if "device_over_cpu" in r else "-"
        lines.append(f"| {r['front end']} | {r['batch']} | {r['cpu_clips_per_s']:.0f} | {dev} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="a tiny model and few steps (a smoke test)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible to torch; use --device cpu for the CPU path", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    else:
        torch.backends.cudnn.benchmark = True  # the gpu preset turns determinism off
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    started = time.perf_counter()
    compile_ok = not args.no_compile and device.type == "cuda"
    result: dict[str, Any] = {
        "device": {
            "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        },
        "models": check_models(device, args.quick, compile_ok),
        "front_end": check_front_end(device, args.quick),
    }
    result["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (args.out / "gpu_check.md").write_text(md)
    print(md)
    return 1 if any("error" in r for r in result["models"]) else 0


if __name__ == "__main__":
    sys.exit(main())
