"""Epoch time with and without the feature cache.

Training reads every clip once per epoch. Without a cache each item is decoded (and resampled)
again; with the cache (:class:`asca_core.data.FeatureCache` on disk, the training engine keeps an
in-memory layer in front of it) later epochs read the decoded waves, stored as 16-bit samples and read a crop at a time. Measured in the same run,
in alternation, on real data:

- FSDD (8 kHz wav) read at 16 kHz (decode + soxr resample), 1 s crops;
- the BirdCLEF 2023 sample (32 kHz Ogg Vorbis, 9-81 s recordings), 5 s crops at 32 kHz: a
  compressed format whose decoding dominates.

Each dataset gets data-only epochs (``DataLoader`` over ``ClipDataset``, training crops), without
cache, with the warm disk cache and with the engine's memory + disk cache, plus the one-time cost
of filling the cache. FSDD (1 s crops) and the BirdCLEF sample (5 s crops) also get full training
epochs (data + an asca_tiny AdamW step per batch) without and with the cache, the figure a user
feels, against the sum of the same model steps on batches already in memory.

    python benchmarks/bench_cache.py [--quick]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import SHARED_DATA, alternate, fmt, load_average, md_table, quick_main, section


def _loader(dataset, batch_size: int):
    from torch.utils.data import DataLoader

    from asca_core.train.engine import _collate

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=_collate)


def _epoch_fn(dataset, batch_size: int, step=None):
    epoch = [0]

    def fn():
        epoch[0] += 1
        dataset.set_epoch(epoch[0])  # new random crops every epoch, as in training
        for wave, target in _loader(dataset, batch_size):
            if step is not None:
                step(wave, target)

    return fn


def dataset_case(
    name: str,
    data_path: Path,
    fmt_name: str,
    sample_rate: int,
    clip_seconds: float,
    max_clips: int | None,
    repeat: int,
    cache_root: Path,
) -> dict:
    from asca_core.config import FeatureConfig
    from asca_core.data import ClipDataset, FeatureCache, load_dataset
    from asca_core.data.cache import SUFFIX
    from asca_core.train.engine import _MemoryCache

    index = load_dataset(data_path, fmt_name)
    items = list(range(len(index.clips)))[: max_clips or None]
    feats = FeatureConfig(sample_rate=sample_rate, clip_seconds=clip_seconds, f_max=None)
    disk = FeatureCache(cache_root / name)
    memory = _MemoryCache(FeatureCache(cache_root / name))
    sets = {
        "no cache": ClipDataset(index, items, feats, None, train=True),
        "disk cache (warm)": ClipDataset(index, items, feats, disk, train=True),
        "memory + disk cache (warm, as training uses)": ClipDataset(index, items, feats, memory, train=True),
    }
    start = time.perf_counter()
    _epoch_fn(sets["disk cache (warm)"], 32)()  # fills the disk cache: the one-time cost
    fill = time.perf_counter() - start
    _epoch_fn(sets["memory + disk cache (warm, as training uses)"], 32)()  # fills the memory layer
    times = alternate({k: _epoch_fn(d, 32) for k, d in sets.items()}, repeat=repeat, warmup=0)
    return {
        "clips": len(items),
        "fill_s": fill,
        "times": times,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "cache_mb": sum(p.stat().st_size for p in (cache_root / name).rglob(f"*{SUFFIX}")) / 2**20,
        # what float32 entries of the same waves would take (the earlier format)
        "float32_mb": sum(4 * len(disk.get(index.clips[i].path, sample_rate)) for i in items) / 2**20,
    }


def training_case(
    data_path: Path,
    fmt_name: str,
    sample_rate: int,
    clip_seconds: float,
    batch_size: int,
    max_clips: int | None,
    repeat: int,
    cache_root: Path,
    name: str,
) -> dict:
    """Training epochs (data + an asca_tiny AdamW step per batch) without and with the cache, and
    the same steps alone on batches already in memory: what the epoch costs beyond its steps."""
    from asca_core.config import FeatureConfig
    from asca_core.data import ClipDataset, FeatureCache, load_dataset
    from asca_core.features import FeatureExtractor
    from asca_core.models import build_model
    from asca_core.train.engine import _MemoryCache

    index = load_dataset(data_path, fmt_name)
    items = list(range(len(index.clips)))[: max_clips or None]
    feats = FeatureConfig(sample_rate=sample_rate, clip_seconds=clip_seconds, n_mels=64, f_max=None)
    extractor = FeatureExtractor(feats)
    torch.manual_seed(0)
    model = build_model("asca_tiny", len(index.classes), input_size=feats.input_size).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(wave, target):
        with torch.no_grad():
            spec = extractor(wave)
        opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(model(spec), target).backward()
        opt.step()

    memory = _MemoryCache(FeatureCache(cache_root / name))
    cached = ClipDataset(index, items, feats, memory, train=True)
    _epoch_fn(cached, batch_size)()  # warm
    batches = list(_loader(cached, batch_size))

    def steps_only():
        for wave, target in batches:
            step(wave, target)

    times = alternate(
        {
            "no cache": _epoch_fn(ClipDataset(index, items, feats, None, train=True), batch_size, step),
            "memory + disk cache (warm)": _epoch_fn(cached, batch_size, step),
            "its model steps alone (batches in memory)": steps_only,
        },
        repeat=repeat,
        warmup=1,
    )
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "clips": len(items),
        "batch_size": batch_size,
        "input": list(feats.input_size),
        "times": times,
        "median_s": median,
        "epoch_vs_steps": median["memory + disk cache (warm)"] / median["its model steps alone (batches in memory)"],
    }


def run(quick: bool = False) -> dict:
    from asca_core.utils import setup_torch

    setup_torch()
    repeat = 2 if quick else 3
    fsdd, bird = SHARED_DATA / "fsdd" / "labels.csv", SHARED_DATA / "birdclef2023_sample"
    if not fsdd.is_file() or not bird.is_dir():
        raise SystemExit(f"bench_cache needs the shared data at {SHARED_DATA} (FSDD, BirdCLEF sample)")
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="asca-bench-cache-") as tmp:
        cases = {
            "FSDD, 8 kHz wav -> 16 kHz, 1 s crops": dataset_case(
                "fsdd", fsdd, "auto", 16000, 1.0, 600 if quick else None, repeat, Path(tmp)
            ),
            "BirdCLEF sample, 32 kHz ogg, 5 s crops": dataset_case(
                "bird", bird, "birdclef", 32000, 5.0, None, repeat + 2, Path(tmp)
            ),
        }
        train = {
            "512 FSDD clips, 16 kHz, 1 s crops": training_case(
                fsdd, "auto", 16000, 1.0, 32, 256 if quick else 512, repeat - 1, Path(tmp), "fsdd"
            ),
            "18 BirdCLEF recordings, 16 kHz, 5 s crops": training_case(
                bird, "birdclef", 16000, 5.0, 6, None, 3 * repeat, Path(tmp), "bird16"
            ),
        }
    rows = []
    for case, r in cases.items():
        base = r["median_s"]["no cache"]
        for k, t in r["median_s"].items():
            rows.append([case if k == "no cache" else "", k, fmt(t, 3), fmt(r["clips"] / t, 0), fmt(base / t, 1) + "x"])
        rows.append(
            [
                "",
                f"one-time cache fill ({r['cache_mb']:.0f} MB on disk, 16-bit; float32: {r['float32_mb']:.0f} MB)",
                fmt(r["fill_s"], 3),
                "",
                "",
            ]
        )
    train_rows = []
    for case, r in train.items():
        base = r["median_s"]["no cache"]
        for k, t in r["median_s"].items():
            label = f"{case} (input {r['input'][0]} x {r['input'][1]}, batch {r['batch_size']})"
            train_rows.append(
                [label if k == "no cache" else "", k, fmt(t, 2), fmt(r["clips"] / t, 1), fmt(base / t, 2) + "x"]
            )
        train_rows.append(["", "epoch (cached) / its steps alone", f"{r['epoch_vs_steps']:.3f}", "", ""])
    md = "\n".join(
        [
            (
                f"Data-only epochs (DataLoader over ClipDataset with training crops, batch 32, no workers), median "
                f"of {repeat} epochs in alternation ({repeat + 2} for the 18 BirdCLEF recordings); "
                f"{torch.get_num_threads()} torch threads."
            ),
            "",
            md_table(["dataset", "loading", "epoch s", "clips/s", "speed-up"], rows),
            "",
            (
                "Training epochs (data + an asca_tiny AdamW step per batch, 64 mel bins) without and with the "
                "cache, and the same steps alone on that epoch's batches held in memory, in alternation (median of "
                f"{repeat - 1} for FSDD, {3 * repeat} for BirdCLEF's 3-step epochs); the last line of each is what an epoch costs "
                "beyond its model steps:"
            ),
            "",
            md_table(["dataset", "loading", "epoch s", "clips/s", "speed-up"], train_rows),
            "",
            f"Load average {load_before} before, {load_average()} after.",
        ]
    )
    data = {"data_only": cases, "training": train, "repeat": repeat, "threads": torch.get_num_threads()}
    return section("Epoch time with and without the feature cache", md, data)


def main() -> None:
    quick_main(run, "cache", __doc__)


if __name__ == "__main__":
    main()
