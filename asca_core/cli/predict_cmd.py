"""``asca predict RUN FILE...``: top classes of each file, and a timeline for long recordings."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import AscaError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="classify audio files with a trained run",
        description="Score each FILE with the run's model through sliding windows (streamed from "
                    "disk, so recordings of any length fit in memory). Prints the top classes of "
                    "each file and, for files longer than one window, a timeline of windows. An "
                    "unreadable file is reported on one line and the others are still scored; "
                    "the exit code is 2 if any file failed.")
    parser.add_argument("run", metavar="RUN", help="run directory (or a .safetensors checkpoint)")
    parser.add_argument("files", metavar="FILE", nargs="+", help="audio files (wav, flac, ogg, mp3)")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to list (default: 5)")
    parser.add_argument("--window", type=float, default=None, metavar="S",
                        help="window length in seconds (default: the run's clip length)")
    parser.add_argument("--hop", type=float, default=None, metavar="S",
                        help="step between windows in seconds (default: half the window)")
    parser.add_argument("--aggregate", choices=("max", "mean"), default="max",
                        help="clip-level score over windows behind the top-k list (default: max)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="which checkpoint of the run to load (default: best)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--timeline-csv", default=None, metavar="PATH",
                        help="also write every window's class probabilities to a CSV file")
    parser.set_defaults(func=_predict)


def _table(rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.ljust(w) if i == 0 or not _numeric(c) else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        lines.append(indent + "  ".join(cells).rstrip())
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _format_prediction(pred, top_k: int) -> str:
    n = len(pred.timeline)
    head = (f"{pred.source}  ({pred.duration:.2f} s, {n} window{'s' if n != 1 else ''} of "
            f"{pred.window:g} s, {pred.aggregate} over windows)")
    rows = [["rank", "label", "prob"]]
    rows += [[str(i), label, f"{p:.3f}"] for i, (label, p) in enumerate(pred.top, start=1)]
    out = [head, _table(rows)]
    if n > 1:
        order = pred.timeline_array().argsort(axis=1)[:, ::-1]
        rows = [["start", "end", "top label", "prob", "second", "prob"]]
        for w, idx in zip(pred.timeline, order):
            second = idx[1] if len(idx) > 1 else None
            rows.append([f"{w.start:.2f}", f"{w.end:.2f}", pred.labels[idx[0]], f"{w.probs[idx[0]]:.3f}",
                         pred.labels[second] if second is not None else "-",
                         f"{w.probs[second]:.3f}" if second is not None else "-"])
        out += [f"  timeline (window {pred.window:g} s, hop {pred.hop:g} s):", _table(rows, "    ")]
    return "\n".join(out)


def _predict(args: argparse.Namespace) -> int:
    from ..inference import Classifier

    if args.top_k < 1:
        raise AscaError(f"--top-k must be >= 1, got {args.top_k}")
    if args.timeline_csv:
        from pathlib import Path

        target = Path(args.timeline_csv)
        if target.is_dir():
            raise AscaError(f"--timeline-csv {target} is a folder: give a file name")
        if not target.parent.is_dir():
            raise AscaError(f"--timeline-csv {target}: the folder {target.parent} does not exist")
    clf = Classifier.from_run(args.run, checkpoint=args.checkpoint, device=args.device)
    top_k = min(args.top_k, clf.num_classes)
    predictions, errors = [], []
    first_csv = True
    for path in args.files:
        try:
            pred = clf.predict(path, top_k=top_k, window=args.window, hop=args.hop, aggregate=args.aggregate)
        except AscaError as exc:
            errors.append({"file": path, "error": str(exc)})
            print(f"asca predict: error: {exc}", file=sys.stderr, flush=True)
            continue
        if args.timeline_csv:
            pred.write_timeline_csv(args.timeline_csv, append=not first_csv)
            first_csv = False
        if args.json:
            predictions.append(pred.to_dict())
        else:
            if predictions:
                print()
            print(_format_prediction(pred, top_k), flush=True)
            predictions.append(pred.source)
    if args.json:
        from ..train.runstore import json_safe

        json.dump(json_safe({"run": str(args.run), "checkpoint": args.checkpoint, "labels": clf.labels,
                             "predictions": predictions, "errors": errors}),
                  sys.stdout, indent=2, allow_nan=False)  # strict JSON: NaN is null
        sys.stdout.write("\n")
    if args.timeline_csv and not first_csv and not args.json:
        print(f"\ntimeline written to {args.timeline_csv}")
    return 2 if errors else 0
