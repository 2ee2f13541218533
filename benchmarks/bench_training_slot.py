"""Two demo trainings started together: sharing the cores versus taking turns on the training slot.

Each training is ``asca train --config configs/demo.yaml`` with 2 threads for a few epochs. With
``--mode shared`` both run at once (what two users of the app got before the slot); with
``--mode slot`` both get the same ``ASCA_TRAINING_SLOT``, as the app's trainings do, so the second
waits ("queued") until the first ends. Reported: each run's seconds per epoch after the first (the
first also decodes the audio), and the wall time until both are done. Results go to
``benchmarks/out/training_slot.json``.

    python benchmarks/bench_training_slot.py --mode alone --mode shared --mode slot
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import OUT, ROOT


def run(mode: str, epochs: int, cache: Path) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"slot-{mode}-"))
    env = {**os.environ, "ASCA_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    env.pop("ASCA_TRAINING_SLOT", None)
    if mode == "slot":
        env["ASCA_TRAINING_SLOT"] = str(root / "training.lock")
    count = 1 if mode == "alone" else 2
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "asca_core.cli",
                "train",
                "--config",
                str(ROOT / "configs" / "demo.yaml"),
                "--set",
                f"train.epochs={epochs}",
                "--set",
                "train.num_threads=2",
                "--set",
                "train.device=cpu",
                "--run-dir",
                str(root / f"run{i}"),
                "--quiet",
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"training failed: {err[-2000:]}")
    wall = time.monotonic() - started
    runs = []
    for i in range(count):
        rows = [json.loads(line) for line in (root / f"run{i}" / "metrics.jsonl").read_text().splitlines() if line]
        later = [r["seconds"] for r in rows[1:]] or [rows[-1]["seconds"]]
        log = (root / f"run{i}" / "log.txt").read_text()
        runs.append(
            {
                "epoch_seconds": [r["seconds"] for r in rows],
                "median_later_epoch_s": statistics.median(later),
                "queued": "queued:" in log,
            }
        )
    return {"mode": mode, "epochs": epochs, "wall_s": round(wall, 1), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", action="append", choices=("alone", "shared", "slot"))
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="slot-cache-"))
    results = []
    for mode in args.mode or ["alone", "shared", "slot"]:
        result = run(mode, args.epochs, cache)
        print(json.dumps(result), flush=True)
        results.append(result)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "training_slot.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
