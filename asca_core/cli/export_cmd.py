"""``asca export RUN`` (ONNX with the front end inside) and ``asca thresholds RUN`` (per-class)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import AscaError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a trained run to ONNX (log-Mel front end inside)",
        description="Write RUN's model as an ONNX graph that takes mono waveform windows at the "
        "run's sample rate (dynamic batch) and returns class probabilities, with the "
        "log-Mel front end and normalisation inside; labels.json, thresholds.json, "
        "config.yaml and export.json (opset, versions, measured parity) beside it. "
        "The graph is checked against PyTorch before it is written.",
    )
    parser.add_argument("run", metavar="RUN", help="run directory")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    parser.add_argument(
        "--no-frontend",
        action="store_true",
        help="export the model alone: input is the normalised spectrogram (B, 1, F, T)",
    )
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default: RUN/export)")
    parser.add_argument(
        "--checkpoint", choices=("best", "last"), default="best", help="which checkpoint to export (default: best)"
    )
    parser.add_argument("--json", action="store_true", help="print export.json instead of a summary")
    parser.set_defaults(func=_export)

    parser = subparsers.add_parser(
        "thresholds",
        help="choose per-class detection thresholds on the validation split",
        description="Score the run's validation clips and choose, for every class, the lowest "
        "threshold whose precision reaches --precision (the most recall at that "
        "precision). A class without validation positives gets 0.5. Written to "
        "RUN/thresholds.json, which asca predict and asca export use.",
    )
    parser.add_argument("run", metavar="RUN", help="run directory")
    parser.add_argument(
        "--precision", type=float, default=0.9, metavar="P", help="precision target in (0, 1] (default: 0.9)"
    )
    parser.add_argument(
        "--checkpoint", choices=("best", "last"), default="best", help="which checkpoint to score with (default: best)"
    )
    parser.add_argument("--json", action="store_true", help="print thresholds.json instead of a table")
    parser.set_defaults(func=_thresholds)


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..export import export_onnx

    record = export_onnx(args.run, args.out, frontend=not args.no_frontend, checkpoint=args.checkpoint)
    out = Path(args.out) if args.out else Path(args.run) / "export"
    if args.json:
        json.dump(record, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    size = (out / "model.onnx").stat().st_size / 2**20
    shape = " x ".join(str(d) for d in record["input"]["shape"])
    print(
        f"wrote {out / 'model.onnx'} ({size:.1f} MB, opset {record['opset']}, onnxruntime "
        f"{record['versions']['onnxruntime']})"
    )
    print(f"  input  {record['input']['name']}: {shape} float32 at {record['input']['sample_rate']} Hz")
    print(f"  output probs: batch x {len(record['labels'])} ({record['output']['activation']})")
    print(
        f"  parity with PyTorch: max |diff| {record['parity']['max_abs_diff']:.2e} on probabilities "
        f"over {record['parity']['windows']} windows (limit {record['parity']['limit']:g})"
    )
    print("  beside it: labels.json, thresholds.json, config.yaml, export.json")
    return 0


def _thresholds(args: argparse.Namespace) -> int:
    from ..tables import compute_thresholds, thresholds_table

    if not (0.0 < args.precision <= 1.0):
        raise AscaError(f"--precision must be in (0, 1], got {args.precision}")
    record = compute_thresholds(args.run, args.precision, args.checkpoint)
    if args.json:
        json.dump(record, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(
        f"thresholds for precision >= {args.precision:g} on {record['clips']} validation clips "
        f"(written to {args.run}/thresholds.json)"
    )
    print(thresholds_table(record))
    return 0
