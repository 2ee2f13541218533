"""Open-set ("none of these") evaluation by leaving classes out of training.

For each dataset, ``asca train DATA --budget B --set data.classes=[...]`` trains the automatic
recipe on every class but the ``--leave-out`` ones (their clips are skipped in every split). The
test split's clips of the trained classes are the known clips; every clip of the classes left out
(none was used in training or validation) is an unknown one. Each open-set score (energy,
max_logit, max_prob) is judged by the AUROC of unknown against known clips (1.0: every unknown
clip scores above every known one, 0.5: chance). With the threshold calibrated as ``asca
openset`` does (95% of the validation clips kept known) the table also gives the share of known
test clips kept and of unknown clips flagged "none of these".

    python benchmarks/bench_openset.py                      # demo (3m) and Speech Commands fold 1 (5m)
    python benchmarks/bench_openset.py --data demo --budget 1m

Results: ``benchmarks/out/openset/results.md`` and ``results.json``; a finished run is reused when
the script runs again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import OUT, ROOT, SHARED_DATA

# name -> (data, budget, classes left out of training)
DATASETS: dict[str, tuple[str, str, list[str]]] = {
    "demo": ("demo", "3m", ["warble", "click_train"]),
    "speech_commands": (str(SHARED_DATA / "speech_commands" / "labels.csv"), "5m", ["left", "stop"]),
}
SCORES = ("energy", "max_logit", "max_prob")


def all_classes(data: str) -> list[str]:
    from asca_core.config import load_config
    from asca_core.train.data import prepare_data

    return list(prepare_data(load_config(None, [f"data.path={data}"]), check_files=False).labels)


def train(data: str, budget: str, known: list[str], run_dir: Path) -> None:
    status = run_dir / "status.json"
    if status.is_file() and json.loads(status.read_text()).get("state") == "finished":
        return
    cmd = [sys.executable, "-m", "asca_core.cli", "train", data, "--budget", budget, "--run-dir", str(run_dir)]
    # quoted: YAML reads a bare no, off, on or yes as a boolean
    cmd += ["--quiet", "--set", f"data.classes={json.dumps(known)}"]
    if run_dir.exists():
        cmd.append("--resume")
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def test_logits(run_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Logits of the run's test clips and of every clip of the classes it was not trained on.

    Returns ``(logits (N, K), known (N,) bool, clip labels)``.
    """
    import torch
    from torch.utils.data import DataLoader

    from asca_core.config import load_config
    from asca_core.data import ClipDataset
    from asca_core.features import FeatureExtractor
    from asca_core.train.checkpoint import load_model_from_run
    from asca_core.train.data import _collate, make_cache, prepare_data

    model, cfg, labels = load_model_from_run(run_dir, "best", "cpu")
    full = load_config(run_dir / "config.yaml").replace("data.classes", None)
    bundle = prepare_data(full)
    # known: the test split's clips of the trained classes; unknown: every clip of the classes left
    # out (none of them was used in training or validation)
    unseen = [
        i for split in ("train", "val") for i in bundle.splits[split] if bundle.index.clips[i].labels[0] not in labels
    ]
    items = sorted(bundle.splits["test"] + unseen)
    dataset = ClipDataset(bundle.index, items, cfg.features, make_cache(cfg), train=False)
    loader = DataLoader(dataset, batch_size=64, shuffle=False, collate_fn=_collate)
    features = FeatureExtractor(cfg.features).eval()
    out = []
    with torch.no_grad():
        for wave, _target in loader:
            out.append(model(features(wave)).float())
    clip_labels = [bundle.index.clips[i].labels[0] for i in items]
    known = np.array([label in labels for label in clip_labels])
    return torch.cat(out).numpy(), known, clip_labels


def evaluate(run_dir: Path) -> dict[str, Any]:
    from asca_core import scores
    from asca_core.config import load_config
    from asca_core.openset import calibrate_openset, unknown_score
    from asca_core.train.metrics import roc_auc

    logits, known, clip_labels = test_logits(run_dir)
    labels = json.loads((run_dir / "labels.json").read_text())
    predicted = [labels[i] for i in logits.argmax(axis=1)]
    activation = scores.activation(load_config(run_dir / "config.yaml").train.loss)
    evaluation = json.loads((run_dir / "eval.json").read_text())
    row: dict[str, Any] = {
        "known_test": int(known.sum()),
        "unknown_test": int((~known).sum()),
        "known_test_acc": evaluation["acc"],
        # the same from these logits: a check that they are the clips and model evaluation saw
        "known_test_acc_here": float(np.mean([p == t for p, t, k in zip(predicted, clip_labels, known) if k])),
        "epochs": json.loads((run_dir / "status.json").read_text()).get("epoch"),
        "scores": {},
    }
    for kind in SCORES:
        values = unknown_score(logits, kind, activation)
        openset = calibrate_openset(run_dir, score=kind, write=False)
        flagged = values > openset.threshold
        row["scores"][kind] = {
            "auroc": roc_auc(values, (~known).astype(np.float64)),
            "threshold": openset.threshold,
            "known_kept": float(np.mean(~flagged[known])),
            "unknown_flagged": float(np.mean(flagged[~known])),
        }
    return row


def summarise(rows: list[dict[str, Any]]) -> str:
    header = (
        "| dataset | budget | left out | known / unknown clips | known test acc | score | AUROC "
        "| known kept at threshold | unknown flagged |"
    )
    lines = [header, "|---|---|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        for kind in SCORES:
            s = r["scores"][kind]
            lines.append(
                f"| {r['dataset']} | {r['budget']} | {', '.join(r['left_out'])} | "
                f"{r['known_test']} / {r['unknown_test']} | {r['known_test_acc']:.3f} | {kind} | "
                f"{s['auroc']:.3f} | {s['known_kept']:.3f} | {s['unknown_flagged']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    import torch

    torch.set_flush_denormal(True)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", choices=sorted(DATASETS), help="datasets (repeatable)")
    parser.add_argument("--budget", help="training budget (default: the dataset's own)")
    parser.add_argument("--leave-out", help="comma-separated classes left out (default: the dataset's own)")
    parser.add_argument("--out", type=Path, default=OUT / "openset")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.data or ["demo", "speech_commands"]:
        data, budget, left_out = DATASETS[name]
        budget = args.budget or budget
        left_out = args.leave_out.split(",") if args.leave_out else left_out
        classes = all_classes(data)
        missing = sorted(set(left_out) - set(classes))
        if missing:
            raise SystemExit(f"{name} has no class {', '.join(missing)}")
        known = [c for c in classes if c not in left_out]
        run_dir = args.out / f"{name}-{budget}-without-{'-'.join(left_out)}"
        started = time.time()
        train(data, budget, known, run_dir)
        row = {"dataset": name, "budget": budget, "left_out": left_out, "run": str(run_dir), **evaluate(run_dir)}
        row["seconds"] = round(time.time() - started, 1)
        rows.append(row)
        (args.out / "results.json").write_text(json.dumps(rows, indent=2))
        print(summarise([row]), flush=True)
    table = summarise(rows)
    (args.out / "results.md").write_text(
        "Open-set AUROC of unknown (left-out classes) vs known test clips; threshold: 95% of validation clips known.\n\n"
        + table
        + "\n"
    )
    print(table)


if __name__ == "__main__":
    main()
