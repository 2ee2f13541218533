"""The automatic recipe against its variants: what each choice buys, on several datasets and seeds.

Each variant is ``asca train DATA --budget B`` plus ``--set`` overrides, trained one after the
other (never two at once: two trainings on 2 cores slow each other 16-25x) and read back from the
run folders. Results: ``benchmarks/out/recipe/results.md`` and ``results.json``; finished runs are
reused when the script runs again, so it can be stopped and continued.

    python benchmarks/bench_recipe.py --data demo --budget 3m --seeds 0,1 \\
        --variant recipe= --variant no-mixup=augment.mixup=false
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import OUT, ROOT, SHARED_DATA

DATASETS = {
    "demo": ("demo", "3m"),
    "fsdd": (str(SHARED_DATA / "fsdd" / "labels.csv"), "10m"),
    "speech_commands": (str(SHARED_DATA / "speech_commands" / "labels.csv"), "15m"),
    "scenes": (str(OUT / "scenes" / "labels.csv"), "30m"),  # built by benchmarks/make_scenes.py
}


def train(data: str, budget: str, overrides: list[str], run_dir: Path) -> dict:
    status_file = run_dir / "status.json"
    if status_file.is_file() and json.loads(status_file.read_text()).get("state") == "finished":
        return read(run_dir)
    cmd = [
        sys.executable,
        "-m",
        "asca_core.cli",
        "train",
        data,
        "--budget",
        budget,
        "--run-dir",
        str(run_dir),
        "--quiet",
    ]
    if run_dir.exists():
        cmd.append("--resume")
    for item in overrides:
        cmd += ["--set", item]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return read(run_dir)


def read(run_dir: Path) -> dict:
    status = json.loads((run_dir / "status.json").read_text())
    evaluation = json.loads((run_dir / "eval.json").read_text())
    return {
        "test_acc": evaluation["acc"],
        "test_map": evaluation["map"],
        "epochs": status["epoch"],
        "minutes": round(status.get("train_seconds", 0.0) / 60, 2),
    }


def summarise(rows: list[dict]) -> str:
    lines = [
        "| dataset | variant | overrides | seeds | test acc | test mAP | epochs | minutes |",
        "|---|---|---|---:|---|---|---:|---:|",
    ]
    keys = sorted({(r["dataset"], r["variant"]) for r in rows}, key=lambda k: (k[0], k[1] != "recipe", k[1]))
    for dataset, variant in keys:
        group = [r for r in rows if (r["dataset"], r["variant"]) == (dataset, variant)]

        def stat(name: str) -> str:
            values = [r[name] for r in group]  # noqa: B023 - called inside the loop
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.3f} ± {spread:.3f}"

        lines.append(
            f"| {dataset} | {variant} | {' '.join(group[0]['overrides']) or '(none)'} | {len(group)} | "
            f"{stat('test_acc')} | {stat('test_map')} | {statistics.mean(r['epochs'] for r in group):.0f} | "
            f"{statistics.mean(r['minutes'] for r in group):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", choices=sorted(DATASETS), help="datasets (repeatable)")
    parser.add_argument("--budget", help="budget per run (default: the dataset's own)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (train.seed and data.seed)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=K=V,K=V",
        help="a named set of overrides; NAME= alone is the plain recipe",
    )
    parser.add_argument("--out", type=Path, default=OUT / "recipe")
    args = parser.parse_args()
    variants = {}
    for item in args.variant or ["recipe="]:
        name, _, rest = item.partition("=")
        variants[name] = [x for x in rest.split(",") if x]
    rows = []
    results = args.out / "results.json"
    for dataset in args.data or ["demo"]:
        data, budget = DATASETS[dataset]
        for name, overrides in variants.items():
            for seed in [int(s) for s in args.seeds.split(",")]:
                items = overrides + [f"train.seed={seed}", f"data.seed={seed}"]
                run_dir = args.out / f"{dataset}-{name}-seed{seed}"
                rows.append(
                    {
                        "dataset": dataset,
                        "variant": name,
                        "overrides": overrides,
                        "seed": seed,
                        **train(data, args.budget or budget, items, run_dir),
                    }
                )
                args.out.mkdir(parents=True, exist_ok=True)
                results.write_text(json.dumps(rows, indent=2))
    table = summarise(rows)
    (args.out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
