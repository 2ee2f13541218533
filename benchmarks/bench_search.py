"""Similarity search on the demo set: precision@10 of the window embeddings ``asca embed`` stores.

Every clip of the built-in demo set (8 call types x 40 clips of 3 s) is embedded with a model
trained by the automatic recipe (``asca train demo --budget 3m``; by default the run
benchmarks/bench_openset.py trained without two classes, when it exists, else a run on every
class). Each window of a test-split clip is a query; precision@10 is the share of its 10 nearest
windows (cosine similarity, the query's own recording left out) whose recording has the query's
label. As a reference the same is measured on a plain front-end embedding: the mean and standard
deviation over time of each mel band of the log-Mel spectrogram the model sees.

    python benchmarks/bench_search.py                 # the bench_openset demo run, else a new one
    python benchmarks/bench_search.py --run runs/demo-1

Results: ``benchmarks/out/search/results.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from common import OUT, ROOT

OPENSET_RUN = OUT / "openset" / "demo-3m-without-warble-click_train"
K = 10


def train(run_dir: Path, budget: str) -> None:
    status = run_dir / "status.json"
    if status.is_file() and json.loads(status.read_text()).get("state") == "finished":
        return
    cmd = [sys.executable, "-m", "asca_core.cli", "train", "demo", "--budget", budget, "--run-dir", str(run_dir)]
    cmd.append("--quiet")
    if run_dir.exists():
        cmd.append("--resume")
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def precision_at_k(
    unit: np.ndarray, file_of: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int
) -> np.ndarray:
    """Precision@k of each query row: neighbours by cosine similarity, the query's file left out.

    Shapes: unit (M, D) unit vectors, file_of (M,), labels (M,), queries (Q,) -> (Q,).
    """
    out = np.empty(queries.size)
    for n, row in enumerate(queries):
        sims = unit @ unit[row]
        sims[file_of == file_of[row]] = -np.inf
        top = np.argsort(-sims, kind="stable")[:k]
        out[n] = np.mean(labels[top] == labels[row])
    return out


def main() -> None:
    import torch

    torch.set_flush_denormal(True)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="run to embed with (default: the bench_openset demo run)")
    parser.add_argument("--budget", default="3m", help="budget of a new demo run (default: 3m)")
    parser.add_argument("--out", type=Path, default=OUT / "search")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run = args.run
    if run is None:
        run = OPENSET_RUN if (OPENSET_RUN / "eval.json").is_file() else args.out / f"demo-{args.budget}"
        train(run, args.budget)

    from asca_core.config import load_config
    from asca_core.embeddings import EmbeddingIndex, embed_files
    from asca_core.inference import Classifier
    from asca_core.train.data import prepare_data

    bundle = prepare_data(load_config(None, ["data.path=demo"]))
    clips = bundle.index.clips
    root = Path(bundle.index.root)
    label_of = {str(c.path.resolve().relative_to(root.resolve()).as_posix()): c.labels[0] for c in clips}
    test = {str(clips[i].path.resolve().relative_to(root.resolve()).as_posix()) for i in bundle.splits["test"]}
    clf = Classifier.from_run(run)
    trained = set(clf.labels)
    folder = embed_files(clf, [c.path for c in clips], args.out / f"embeddings-{run.name}", root=root)
    index = EmbeddingIndex.load(folder)
    assert not index.errors, index.errors
    names = np.array([f.name for f in index.files])
    labels = np.array([label_of[n] for n in names])[index.file_of]
    queries = np.flatnonzero(np.isin(names[index.file_of], sorted(test)))

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    # the reference embedding: per-band mean and spread of the log-Mel windows
    extractor = clf.extractor_for(index.window)
    frontend = []
    with torch.no_grad():
        for f in index.files:
            stream, _ = clf.windows(index.path(f.name), window=index.window, hop=index.hop)
            spec = extractor(torch.as_tensor(np.stack([chunk for _, chunk in stream])))  # (N, 1, F, T)
            spec = spec.reshape(spec.shape[0], spec.shape[-2], spec.shape[-1])
            frontend.append(torch.cat([spec.mean(-1), spec.std(-1)], dim=1).numpy())
    embeddings: dict[str, np.ndarray] = {"model": index.embeddings, "log-Mel mean+std": np.concatenate(frontend)}
    rows: list[dict[str, Any]] = []
    for name, vectors in embeddings.items():
        p = precision_at_k(unit(vectors.astype(np.float64)), index.file_of, labels, queries, K)
        per_class = {c: float(p[labels[queries] == c].mean()) for c in sorted(set(labels[queries]))}
        known = [c for c in per_class if c in trained]
        unknown = [c for c in per_class if c not in trained]
        rows.append(
            {
                "embedding": name,
                "precision_at_10": float(p.mean()),
                "trained_classes": float(np.mean([per_class[c] for c in known])) if known else None,
                "classes_not_trained_on": float(np.mean([per_class[c] for c in unknown])) if unknown else None,
                "per_class": per_class,
            }
        )
    result = {
        "run": str(run),
        "trained_classes": sorted(trained),
        "recordings": len(index.files),
        "windows": len(index),
        "window": index.window,
        "hop": index.hop,
        "dims": index.dims,
        "queries": int(queries.size),
        "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    caption = (
        f"Similarity search on the demo set: {len(index.files)} recordings, {len(index)} windows of "
        f"{index.window:g} s (hop {index.hop:g} s); {queries.size} queries (the test split's windows), "
        f"neighbours among all windows but the query's recording; run {run.name} "
        f"(trained on {len(trained)} of 8 classes)."
    )
    lines = [
        caption,
        "",
        "| embedding | precision@10 | classes trained on | classes not trained on |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['embedding']} | {r['precision_at_10']:.3f} | {cell(r['trained_classes'])} | "
            f"{cell(r['classes_not_trained_on'])} |"
        )
    text = "\n".join(lines) + "\n"
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
