"""``asca predict RUN FILE|FOLDER...``: top classes of each file, a timeline for long recordings,
detection tables (Raven Pro, Audacity, CSV/JSON), and a journal that makes a large folder resumable."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import AscaError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify audio files with a trained run",
        description="Score each FILE with the run's model through sliding windows (streamed from "
        "disk, so recordings of any length fit in memory). Prints the top classes of "
        "each file and, for files longer than one window, a timeline of windows. An "
        "unreadable file is reported on one line and the others are still scored; "
        "the exit code is 2 if any file failed. A FOLDER is scored file by file (one "
        "line each), decoding the next file while the current one is scored; with "
        "--journal a rerun skips the files already finished.",
    )
    parser.add_argument("run", metavar="RUN", help="run directory (or a .safetensors checkpoint)")
    parser.add_argument("files", metavar="FILE", nargs="+", help="audio files (wav, flac, ogg, mp3) or folders of them")
    parser.add_argument("--recursive", action="store_true", help="also score the subfolders of a FOLDER")
    parser.add_argument(
        "--engine", default="torch", help="torch, or onnx: the run's ONNX export in ONNX Runtime (default: torch)"
    )
    parser.add_argument(
        "--onnx",
        default=None,
        metavar="DIR",
        help="folder of the ONNX export (default: RUN/export, written by asca export)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads for scoring (default: torch's setting, all cores)",
    )
    parser.add_argument(
        "--journal",
        default=None,
        metavar="PATH",
        help="JSON Lines record of finished files: the same command again skips them",
    )
    parser.add_argument(
        "--raven",
        default=None,
        metavar="DIR",
        help="write a Raven Pro selection table per file: DIR/<name>.selections.txt",
    )
    parser.add_argument(
        "--audacity", default=None, metavar="DIR", help="write an Audacity label track per file: DIR/<name>.labels.txt"
    )
    parser.add_argument(
        "--detections",
        default=None,
        metavar="PATH",
        help="write every detection (file, start, end, label, score) to a .csv or .json file",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="X",
        help="one detection threshold for every class (default: RUN/thresholds.json, "
        "chosen on the validation split, see asca thresholds)",
    )
    parser.add_argument(
        "--precision",
        type=float,
        default=0.9,
        metavar="P",
        help="precision target when the run has no thresholds yet (default: 0.9)",
    )
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to list (default: 5)")
    parser.add_argument(
        "--window",
        type=float,
        default=None,
        metavar="S",
        help="window length in seconds (default: the run's clip length)",
    )
    parser.add_argument(
        "--hop",
        type=float,
        default=None,
        metavar="S",
        help="step between windows in seconds (default: half the window)",
    )
    parser.add_argument(
        "--aggregate",
        choices=("max", "mean"),
        default="max",
        help="clip-level score over windows behind the top-k list (default: max)",
    )
    parser.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="which checkpoint of the run to load (default: best)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument(
        "--timeline-csv",
        default=None,
        metavar="PATH",
        help="also write every window's class probabilities to a CSV file",
    )
    parser.set_defaults(func=_predict)


def _table(rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.ljust(w) if i == 0 or not _numeric(c) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
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
    head = (
        f"{pred.source}  ({pred.duration:.2f} s, {n} window{'s' if n != 1 else ''} of "
        f"{pred.window:g} s, {pred.aggregate} over windows)"
    )
    rows = [["rank", "label", "prob"]]
    rows += [[str(i), label, f"{p:.3f}"] for i, (label, p) in enumerate(pred.top, start=1)]
    out = [head]
    if pred.unknown_score is not None:
        out.append(f"  {_openset_verdict(pred)}")
    out.append(_table(rows))
    if n > 1:
        order = pred.timeline_array().argsort(axis=1)[:, ::-1]
        rows = [["start", "end", "top label", "prob", "second", "prob"]]
        for w, idx in zip(pred.timeline, order):
            second = idx[1] if len(idx) > 1 else None
            if w.unknown:  # the best class moves to the second column, "none of these" leads
                from ..openset import NONE_LABEL

                rows.append(
                    [f"{w.start:.2f}", f"{w.end:.2f}", NONE_LABEL, "-", pred.labels[idx[0]], f"{w.probs[idx[0]]:.3f}"]
                )
                continue
            rows.append(
                [
                    f"{w.start:.2f}",
                    f"{w.end:.2f}",
                    pred.labels[idx[0]],
                    f"{w.probs[idx[0]]:.3f}",
                    pred.labels[second] if second is not None else "-",
                    f"{w.probs[second]:.3f}" if second is not None else "-",
                ]
            )
        out += [f"  timeline (window {pred.window:g} s, hop {pred.hop:g} s):", _table(rows, "    ")]
    return "\n".join(out)


def _openset_verdict(pred) -> str:
    """'none of these (energy score -3.100 > threshold -5.200)', or 'known (...)' with <=."""
    from ..openset import NONE_LABEL

    sign = ">" if pred.unknown else "<="
    detail = f"{pred.openset_score} score {pred.unknown_score:.3f} {sign} threshold {pred.openset_threshold:.3f}"
    return f"{NONE_LABEL} ({detail})" if pred.unknown else f"known ({detail})"


def _out_dir(flag: str, value: str | None) -> Path | None:
    from ..fileio import output_folder

    return None if value is None else output_folder(value, flag)


def _inputs(items: list[str], recursive: bool) -> tuple[list[tuple[str, Path]], list[tuple[str, str]], bool]:
    """(file, table name) pairs, entries left out with their reason, and whether a folder was given."""
    from ..inference import audio_files

    pairs: list[tuple[str, Path]] = []
    left_out: list[tuple[str, str]] = []
    folder_given = False
    for item in items:
        path = Path(item)
        if path.is_dir():
            folder_given = True
            found, skipped = audio_files(path, recursive)
            left_out += skipped
            if not found:
                hint = "" if recursive else " (--recursive scores its subfolders)"
                left_out.append((item, f"no audio files in this folder{hint}"))
            pairs += [(str(f), f.relative_to(path)) for f in found]
        else:
            pairs.append((item, Path(path.name)))
    seen: dict[Path, str] = {}
    for file, name in pairs:
        if name in seen and seen[name] != file:
            raise AscaError(f"{seen[name]} and {file} would write tables of the same name: give their folder instead")
        seen[name] = file
    return pairs, left_out, folder_given


def _summary_line(pred, found: list | None) -> str:
    label, prob = pred.top[0]
    extra = "" if found is None else f"  {len(found)} detection{'s' if len(found) != 1 else ''}"
    if pred.unknown:
        return f"{pred.source}  {pred.duration:.2f} s  {pred.label} (best {label} {prob:.3f}){extra}"
    return f"{pred.source}  {pred.duration:.2f} s  {label} {prob:.3f}{extra}"


def _predict(args: argparse.Namespace) -> int:
    from .. import tables
    from ..export import file_digest
    from ..inference import Classifier, ResultsJournal

    if args.top_k < 1:
        raise AscaError(f"--top-k must be >= 1, got {args.top_k}")
    if args.threads is not None and args.threads < 1:
        raise AscaError(f"--threads must be >= 1, got {args.threads}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise AscaError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.timeline_csv:
        target = Path(args.timeline_csv)
        if target.is_dir():
            raise AscaError(f"--timeline-csv {target} is a folder: give a file name")
        if not target.parent.is_dir():
            raise AscaError(f"--timeline-csv {target}: the folder {target.parent} does not exist")
    if args.detections:
        target = Path(args.detections)
        if target.is_dir():
            raise AscaError(f"--detections {target} is a folder: give a .csv or .json file name")
        if target.suffix.lower() not in (".csv", ".json"):
            raise AscaError(f"--detections {target}: the name must end in .csv or .json")
        if not target.parent.is_dir():
            raise AscaError(f"--detections {target}: the folder {target.parent} does not exist")
    raven, audacity = _out_dir("--raven", args.raven), _out_dir("--audacity", args.audacity)
    pairs, left_out, folder_given = _inputs(args.files, args.recursive)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    clf = Classifier.from_run(
        args.run,
        checkpoint=args.checkpoint,
        device=args.device,
        engine=args.engine,
        onnx_path=args.onnx,
        threads=args.threads,
    )
    top_k = min(args.top_k, clf.num_classes)
    window, hop = clf._window_hop(args.window, args.hop)
    tabled = bool(raven or audacity or args.detections)
    limits: dict[str, float] = {}
    if tabled:
        if args.threshold is not None:
            limits = dict.fromkeys(clf.labels, args.threshold)
        else:
            record = tables.run_thresholds(args.run, compute=True, checkpoint=args.checkpoint, precision=args.precision)
            limits = tables.thresholds_by_label(record)
            if record.get("note"):
                print(
                    f"asca predict: note: thresholds at {record['fallback']:g} for every class: {record['note']}",
                    file=sys.stderr,
                    flush=True,
                )
    feats = clf.cfg.features
    low_hz, high_hz = float(feats.f_min), float(feats.f_max or feats.sample_rate / 2)
    names = dict(pairs)
    errors = [{"file": item, "error": f"{item}: {reason}"} for item, reason in left_out]
    for entry in errors:
        print(f"asca predict: error: {entry['error']}", file=sys.stderr, flush=True)
    if not pairs:
        return 2
    journal = ResultsJournal(args.journal) if args.journal else None
    ckpt = (
        Path(args.run) / "checkpoints" / f"{args.checkpoint}.safetensors" if Path(args.run).is_dir() else Path(args.run)
    )
    settings = {"checkpoint_sha256": file_digest(ckpt), "window": window, "hop": hop, "aggregate": args.aggregate}
    if clf.openset is not None:  # a new calibration scores the files again
        settings["openset"] = {"score": clf.openset.score, "threshold": clf.openset.threshold}
    elif clf.engine == "onnx" and Path(args.run, "openset.json").is_file():
        print(
            'asca predict: note: "none of these" needs --engine torch; the ONNX engine scores the classes only',
            file=sys.stderr,
            flush=True,
        )
    predictions: list = []
    every: list = []
    first_csv = True
    shown = 0

    def finished(pred, journaled: bool) -> None:
        nonlocal first_csv, shown
        found = tables.detections(pred, limits) if tabled else None
        if journal is not None and not journaled:
            journal.record(pred.source, settings, pred)
        name = names.get(pred.source, Path(Path(pred.source).name))
        if raven and found is not None:
            target = raven / name.parent / f"{name.stem}.selections.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            tables.write_raven(target, found, low_hz, high_hz)
        if audacity and found is not None:
            target = audacity / name.parent / f"{name.stem}.labels.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            tables.write_audacity(target, found)
        if found:
            every.extend(found)
        if args.timeline_csv:
            pred.write_timeline_csv(args.timeline_csv, append=not first_csv)
            first_csv = False
        if args.json:
            predictions.append(pred.to_dict())
            return
        if folder_given:
            print(_summary_line(pred, found), flush=True)
        else:
            if shown:
                print()
            print(_format_prediction(pred, top_k), flush=True)
        shown += 1

    try:
        todo = []
        for file, _ in pairs:
            stored = journal.lookup(file, settings, top_k) if journal is not None else None
            if stored is None:
                todo.append(file)
            else:
                finished(stored, journaled=True)
        if journal is not None and len(todo) < len(pairs):
            print(
                f"asca predict: {len(pairs) - len(todo)} file(s) already finished in {args.journal}: not scored again",
                file=sys.stderr,
                flush=True,
            )
        for file, result in clf.predict_many(todo, top_k=top_k, window=window, hop=hop, aggregate=args.aggregate):
            if isinstance(result, AscaError):
                errors.append({"file": file, "error": str(result)})
                print(f"asca predict: error: {result}", file=sys.stderr, flush=True)
                continue
            finished(result, journaled=False)
    finally:
        if journal is not None:
            journal.close()
        if args.detections:
            tables.write_detections(args.detections, every)
    if args.json:
        from ..train.runstore import json_safe

        json.dump(
            json_safe(
                {
                    "run": str(args.run),
                    "checkpoint": args.checkpoint,
                    "engine": clf.engine,
                    "labels": clf.labels,
                    "predictions": predictions,
                    "errors": errors,
                }
            ),
            sys.stdout,
            indent=2,
            allow_nan=False,
        )  # strict JSON: NaN is null
        sys.stdout.write("\n")
    elif args.timeline_csv and not first_csv:
        print(f"\ntimeline written to {args.timeline_csv}")
    return 2 if errors else 0
