"""``asca demo-data DIR`` and ``asca data check PATH``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..config import DATASET_FORMATS


def register(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo-data",
        help="write the built-in synthetic bird-call dataset",
        description="Write the built-in synthetic dataset (bird-like calls over wind, rain and "
        "pink noise) as DIR/<class>/*.wav plus DIR/labels.csv.",
    )
    demo.add_argument("dir", metavar="DIR", help="output folder (created if missing)")
    demo.add_argument("--clips-per-class", type=int, default=40, metavar="N", help="clips per class (default: 40)")
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="random seed; the same seed writes identical files (default: 0)",
    )
    demo.set_defaults(func=_demo_data)

    data = subparsers.add_parser("data", help="inspect datasets (data check)", description="Dataset tools.")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="summarise a dataset and list every unusable file",
        description="Detect the format, count clips and classes, summarise durations, sample "
        "rates and splits, and name every unreadable file with its reason. Exits 1 "
        "when nothing usable remains.",
    )
    check.add_argument("path", metavar="PATH", help="dataset folder or manifest (.csv), or 'demo'")
    check.add_argument(
        "--format",
        default="auto",
        choices=("auto", *DATASET_FORMATS),
        help="force a format instead of detecting it (default: auto)",
    )
    check.add_argument("--json", action="store_true", help="print a JSON report")
    check.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        metavar="F",
        help="validation share of a stratified split (default: 0.15)",
    )
    check.add_argument(
        "--test-fraction",
        type=float,
        default=0.15,
        metavar="F",
        help="test share when the dataset has no split or fold column (default: 0.15)",
    )
    check.add_argument(
        "--test-fold", type=int, default=None, metavar="K", help="use fold K as the test set (ESC-50 protocol)"
    )
    check.add_argument(
        "--group-column", default=None, metavar="NAME", help="keep each value of this column on one side of the split"
    )
    check.add_argument("--seed", type=int, default=0, metavar="S", help="split seed (default: 0)")
    check.add_argument("--quick", action="store_true", help="read headers only (no decoding); faster on large datasets")
    check.set_defaults(func=_check)
    data.set_defaults(func=lambda args: (data.print_help(), 0)[1])


def _demo_data(args: argparse.Namespace) -> int:
    from ..data.demo import DEMO_CLASSES, make_demo_dataset

    start = time.perf_counter()
    labels = make_demo_dataset(args.dir, clips_per_class=args.clips_per_class, seed=args.seed)
    n = len(DEMO_CLASSES) * args.clips_per_class
    print(
        f"wrote {n:,} clips ({len(DEMO_CLASSES)} classes x {args.clips_per_class}) to "
        f"{labels.parent} in {time.perf_counter() - start:.1f} s"
    )
    print(f"manifest: {labels}")
    print(f"classes: {', '.join(DEMO_CLASSES)}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from ..data import check_dataset, resolve_data_path

    report = check_dataset(
        resolve_data_path(args.path),
        args.format,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        test_fold=args.test_fold,
        group_column=args.group_column,
        seed=args.seed,
        deep=not args.quick,
    )
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(report.format_text())
    return report.exit_code
