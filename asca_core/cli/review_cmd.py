"""``asca review``: export detections for review, cut the reviewed spans, retrain, compare."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import AscaError


def register(subparsers) -> None:
    """Add this module's sub-commands to ``subparsers``."""
    review = subparsers.add_parser(
        "review",
        help="review detections in long recordings, then retrain on the decisions",
        description="The review loop. 'export' writes the detections of a run in recordings to a "
        "review manifest (file,start,end,label,decision; decisions empty until reviewed; an "
        "existing manifest keeps the decisions it holds). Fill in decision (accept, reject, "
        "relabel with a new label) in the Review page or any editor; the manifest is a dataset "
        "('asca data check MANIFEST'). 'cut' writes the kept spans as WAV files, 'retrain' trains "
        "a new run on the run's data plus the kept spans, 'compare' scores two runs on one test set.",
    )
    sub = review.add_subparsers(dest="review_command", metavar="COMMAND")

    export = sub.add_parser("export", help="write a run's detections in recordings to a review manifest")
    export.add_argument("run", metavar="RUN", help="run directory (or a run name under the runs folder)")
    export.add_argument("files", metavar="FILE", nargs="+", help="recordings, or folders of them")
    export.add_argument(
        "--out",
        required=True,
        metavar="CSV",
        help="review manifest to write or extend (in a folder that holds the recordings)",
    )
    export.add_argument(
        "--rank",
        choices=("confidence", "uncertainty", "unknown"),
        default="confidence",
        help="order: most probable detections, least certain windows, or most unlike any class",
    )
    export.add_argument("--limit", type=int, metavar="N", help="keep the first N candidates")
    export.add_argument(
        "--threshold", type=float, metavar="P", help="one probability threshold (default: the run's per-class ones)"
    )
    export.add_argument("--window", type=float, metavar="SEC", help="window length (default: the model's clip)")
    export.add_argument("--hop", type=float, metavar="SEC", help="hop between windows (default: half a window)")
    export.add_argument("--recursive", action="store_true", help="also read the subfolders of a FOLDER")
    export.set_defaults(func=_export)

    cut = sub.add_parser("cut", help="write each kept span of a manifest as a WAV file plus labels.csv")
    cut.add_argument("manifest", metavar="MANIFEST")
    cut.add_argument("--out", required=True, metavar="FOLDER", help="output dataset folder")
    cut.set_defaults(func=_cut)

    retrain = sub.add_parser("retrain", help="train a new run on the run's data plus the reviewed spans")
    retrain.add_argument("run", metavar="RUN")
    retrain.add_argument("manifest", metavar="MANIFEST")
    retrain.add_argument("--budget", default="3m", metavar="DURATION", help="training budget (default: 3m)")
    retrain.add_argument("--runs-root", metavar="DIR", help="folder for the new run (default: beside RUN)")
    retrain.add_argument("--wait", action="store_true", help="wait for the training to end")
    retrain.set_defaults(func=_retrain)

    compare = sub.add_parser("compare", help="accuracy and AP of two runs on one test set, per class")
    compare.add_argument("before", metavar="BEFORE")
    compare.add_argument("after", metavar="AFTER")
    compare.add_argument("--data", metavar="PATH", help="test dataset (default: BEFORE's test split)")
    compare.add_argument("--json", action="store_true", help="print the result as JSON")
    compare.set_defaults(func=_compare)

    review.set_defaults(func=lambda args: (review.print_help(), 0)[1])


def _files(items: list[str], recursive: bool) -> list[Path]:
    from ..inference import audio_files

    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files, left_out = audio_files(path, recursive=recursive)
            for name, why in left_out:
                print(f"skipped {name}: {why}", file=sys.stderr)
            found += files
        elif path.is_file():
            found.append(path)
        else:
            raise AscaError(f"{item}: no such file or folder")
    if not found:
        raise AscaError("no audio files to review")
    return found


def _export(args: argparse.Namespace) -> int:
    from ..inference import Classifier
    from ..review import ReviewRow, find_candidates, read_manifest, write_manifest
    from .train_cmd import _find_run

    out = Path(args.out)
    files = _files(args.files, args.recursive)
    base = out.parent.resolve()
    outside = [f for f in files if base not in f.resolve().parents]
    if outside:
        raise AscaError(f"{outside[0]} is not inside {base}: write --out in a folder that holds the recordings")
    clf = Classifier.from_run(_find_run(args.run))
    found = find_candidates(
        clf, files, window=args.window, hop=args.hop, rank=args.rank, threshold=args.threshold, limit=args.limit
    )
    before = len(read_manifest(out)) if out.exists() else 0
    write_manifest(out, [ReviewRow.pending(c) for c in found])
    rows = read_manifest(out)
    decided = sum(1 for r in rows if r.decision)
    print(
        f"{len(found)} candidate(s) from {len(files)} recording(s), ranked by {args.rank}; "
        f"{out}: {len(rows)} row(s) ({len(rows) - before} new, {decided} already decided)"
    )
    return 0


def _cut(args: argparse.Namespace) -> int:
    from ..review import cut_clips

    labels = cut_clips(args.manifest, args.out)
    count = max(0, len(labels.read_text(encoding="utf-8").splitlines()) - 1)
    print(f"{count} clip(s) written; dataset manifest: {labels}")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from ..review import start_retrain
    from .train_cmd import _find_run

    run = start_retrain(
        _find_run(args.run), args.manifest, budget=args.budget, runs_root=args.runs_root, background=not args.wait
    )
    if args.wait:
        print(f"retrained: {run}")
        print(f"compare: asca review compare {args.run} {run}")
    else:
        print(f"training in the background: {run} (console: {run / 'console.txt'})")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from ..review import compare_runs, compare_table
    from .train_cmd import _find_run

    result = compare_runs(_find_run(args.before), _find_run(args.after), data=args.data)
    print(json.dumps(result, indent=2) if args.json else compare_table(result), end="" if not args.json else "\n")
    return 0
