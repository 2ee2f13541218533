"""``asca embed``, ``asca search`` and ``asca openset``: window embeddings of a folder of recordings,
the windows nearest to one window, and the "none of these" threshold of a run."""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

import numpy as np

from ..errors import AscaError
from ..openset import DEFAULT_SCORE, OOD_SCORES


def register(subparsers) -> None:
    """Add this module's sub-commands to ``subparsers``."""
    embed = subparsers.add_parser(
        "embed",
        help="store the window embeddings of every recording in a folder, for asca search",
        description="Cut every recording of FOLDER into the run's windows (as asca predict does) and "
        "store, per recording, what the model's final linear layer sees for each window (the "
        "pooled features before the head) in an index folder: index.json plus one safetensors "
        "file per recording. Running it again on the same folder embeds only new or changed "
        "recordings. An unreadable recording is reported on one line and the others are "
        "embedded; the exit code is then 2.",
    )
    embed.add_argument("run", metavar="RUN", help="run directory (or a run name under the runs folder)")
    embed.add_argument("folder", metavar="FOLDER", help="folder of recordings (wav, flac, ogg, mp3)")
    embed.add_argument("--out", metavar="DIR", help="index folder to write (default: RUN/embeddings/<FOLDER name>)")
    embed.add_argument("--window", type=float, metavar="SEC", help="window length (default: the model's clip)")
    embed.add_argument("--hop", type=float, metavar="SEC", help="hop between windows (default: half a window)")
    embed.add_argument("--recursive", action="store_true", help="also embed the subfolders of FOLDER")
    embed.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which weights (default: best)")
    embed.set_defaults(func=_embed)

    search = subparsers.add_parser(
        "search",
        help="find the windows most like one window, in an index written by asca embed",
        description="Rank the windows of an embeddings INDEX by cosine similarity to the window of "
        "FILE starting at --start (with --end, the mean of the windows from --start to --end). "
        "The query's own windows are left out; --other-files leaves out its whole recording.",
    )
    search.add_argument("index", metavar="INDEX", help="index folder written by asca embed")
    search.add_argument("file", metavar="FILE", help="a recording of the index (its path, or its name in the index)")
    search.add_argument("--start", type=float, required=True, metavar="SEC", help="start of the query window")
    search.add_argument("--end", type=float, metavar="SEC", help="end of the query span (default: one window)")
    search.add_argument("-k", type=int, default=10, metavar="N", help="how many windows to list (default: 10)")
    search.add_argument("--other-files", action="store_true", help="only windows of other recordings")
    search.add_argument("--csv", metavar="PATH", help="also write the hits as CSV (- for standard output only)")
    search.set_defaults(func=_search)

    openset = subparsers.add_parser(
        "openset",
        help='calibrate "none of these" on a run\'s validation split (RUN/openset.json)',
        description="Score the run's validation clips with an out-of-distribution score and store the "
        "threshold that keeps --known-rate of them as known in RUN/openset.json. From then on "
        'asca predict, asca review and the app call a window or clip scoring above it "none of '
        'these". energy and max_logit see how strongly any class is present, max_prob (the '
        "default) only the top probability.",
    )
    openset.add_argument("run", metavar="RUN", help="run directory (or a run name under the runs folder)")
    openset.add_argument(
        "--score",
        default=DEFAULT_SCORE,
        choices=OOD_SCORES,
        help=f"OOD score (default: {DEFAULT_SCORE}, which separated unknown classes best where measured)",
    )
    openset.add_argument(
        "--known-rate",
        type=float,
        default=0.95,
        metavar="R",
        help="share of validation clips to keep as known (default: 0.95)",
    )
    openset.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which weights (default: best)")
    openset.set_defaults(func=_openset)


def _run_dir(name: str) -> Path:
    from .train_cmd import _find_run

    run = _find_run(name)
    if not run.is_dir():
        raise AscaError(f"{run} is a checkpoint file: give the run directory it belongs to")
    return run


# ------------------------------------------------------------------------------------ embed


def _embed(args: argparse.Namespace) -> int:
    from ..embeddings import EmbeddingIndex, embed_files
    from ..inference import Classifier, audio_files

    folder = Path(args.folder)
    if not folder.is_dir():
        raise AscaError(f"{folder} is not a folder of recordings")
    files, left_out = audio_files(folder, recursive=args.recursive)
    for name, why in left_out:
        print(f"skipped {name}: {why}", file=sys.stderr)
    if not files:
        raise AscaError(f"{folder} holds no audio files (wav, flac, ogg, mp3)")
    run = _run_dir(args.run)
    out = Path(args.out) if args.out else run / "embeddings" / (folder.resolve().name or "root")
    clf = Classifier.from_run(run, checkpoint=args.checkpoint)
    embed_files(clf, files, out, window=args.window, hop=args.hop, root=folder)
    index = EmbeddingIndex.load(out)
    failed = {e["file"] for e in index.errors}
    for error in index.errors:
        print(f"asca embed: error: {error['error']}", file=sys.stderr)
    embedded = len(index.files)
    print(
        f"{embedded} recording(s), {len(index)} windows of {index.window:g} s every {index.hop:g} s, "
        f"{index.dims} numbers each: {out}"
    )
    if failed:
        print(f"{len(failed)} recording(s) could not be embedded", file=sys.stderr)
    print(f"search: asca search {out} FILE --start SECONDS")
    return 2 if failed or embedded == 0 else 0


# ----------------------------------------------------------------------------------- search


def _search(args: argparse.Namespace) -> int:
    from ..embeddings import EmbeddingIndex

    if args.k < 1:
        raise AscaError(f"-k must be >= 1, got {args.k}")
    for flag, value in (("--start", args.start), ("--end", args.end)):
        if value is not None and not math.isfinite(value):
            raise AscaError(f"{flag} must be a number of seconds, got {value}")
    if args.end is not None and args.end <= args.start:
        raise AscaError(f"--end ({args.end:g} s) must come after --start ({args.start:g} s)")
    index = EmbeddingIndex.load(args.index)
    if len(index) == 0:
        raise AscaError(f"{args.index} holds no embedded windows")
    rows = query_rows(index, args.file, args.start, args.end)
    f = index.files[int(index.file_of[rows[0]])]
    q_start = max(float(index.starts[rows[0]]), 0.0)
    q_end = min(float(index.starts[rows[-1]]) + index.window, f.duration)
    unit = index.embeddings[rows] / np.maximum(np.linalg.norm(index.embeddings[rows], axis=1, keepdims=True), 1e-12)
    query = unit.mean(axis=0)
    sims = index._unit @ (query / max(float(np.linalg.norm(query)), 1e-12))  # (M,) cosine similarity
    # the query's recording, or every window of it sharing time with the query span, is left out
    span = slice(f.first, f.first + f.count)
    starts = np.maximum(index.starts[span], 0.0)
    ends = np.minimum(index.starts[span] + index.window, f.duration)
    own = np.ones(f.count, bool) if args.other_files else (ends > q_start + 1e-9) & (starts < q_end - 1e-9)
    sims[span] = np.where(own, -np.inf, sims[span])
    order = np.lexsort((np.arange(sims.size), -sims))  # by similarity, ties by position
    hits = [index.hit(int(r), float(sims[r])) for r in order[: args.k] if np.isfinite(sims[r])]
    table = [
        {"rank": n, "file": h.file, "start": h.start, "end": h.end, "similarity": h.score}
        for n, h in enumerate(hits, 1)
    ]
    if args.csv != "-":
        print(
            f"query: {index.path(f.name)} {q_start:.2f}-{q_end:.2f} s ({len(rows)} window(s)); "
            f"{len(hits)} nearest of {len(index)} windows in {len(index.files)} recording(s)"
            + (", other recordings only" if args.other_files else "")
        )
        print(_format_table(table))
    if args.csv:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["rank", "file", "start", "end", "similarity"], lineterminator="\n")
        writer.writeheader()
        for row in table:
            writer.writerow(
                {
                    **row,
                    "start": f"{row['start']:.3f}",
                    "end": f"{row['end']:.3f}",
                    "similarity": f"{row['similarity']:.4f}",
                }
            )
        if args.csv == "-":
            sys.stdout.write(text.getvalue())
        else:
            from ..train.runstore import atomic_write_text

            try:
                atomic_write_text(Path(args.csv), text.getvalue())
            except OSError as exc:
                raise AscaError(f"cannot write {args.csv}: {exc.strerror or exc}") from None
            print(f"written: {args.csv}")
    return 0


def query_rows(index, file: str, start: float, end: float | None) -> list[int]:
    """Rows of the index that make the query: the window nearest ``start``, or every window of
    ``file`` that lies between ``start`` and ``end`` (at least the one nearest ``start``)."""
    first = index.row(file, start)
    if end is None:
        return [first]
    f = index.files[int(index.file_of[first])]
    rows = [
        r
        for r in range(f.first, f.first + f.count)
        if index.starts[r] >= float(index.starts[first]) - 1e-9
        and min(float(index.starts[r]) + index.window, f.duration) <= end + 1e-6
    ]
    return rows or [first]


def _format_table(rows: list[dict]) -> str:
    lines = [f"{'rank':>4}  {'similarity':>10}  {'start':>8}  {'end':>8}  file"]
    for r in rows:
        lines.append(f"{r['rank']:>4}  {r['similarity']:>10.4f}  {r['start']:>8.2f}  {r['end']:>8.2f}  {r['file']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- openset


def _openset(args: argparse.Namespace) -> int:
    from ..openset import NONE_LABEL, OPENSET_FILE, calibrate_openset

    if not (0.0 < args.known_rate <= 1.0):
        raise AscaError(f"--known-rate must be in (0, 1], got {args.known_rate:g}")
    run = _run_dir(args.run)
    openset = calibrate_openset(run, checkpoint=args.checkpoint, score=args.score, known_rate=args.known_rate)
    quantiles = openset.meta.get("validation_score_quantiles", {})
    print(
        f"{openset.score} threshold {openset.threshold:.4g}, calibrated on {openset.clips} validation clip(s) "
        f"of {len(openset.labels)} classes ({args.checkpoint} checkpoint)"
    )
    print(
        f"a window or clip scoring above it is {NONE_LABEL!r}: {openset.known_rate:.0%} of the validation "
        f"clips (all of known classes) score at or below it, so about {1 - openset.known_rate:.0%} of "
        "clips of known classes are flagged too"
    )
    if quantiles:
        print(
            "validation scores: "
            + ", ".join(f"{float(q):.0%} {v:.4g}" for q, v in quantiles.items())
            + " (higher: less like any class)"
        )
    print(f"written: {run / OPENSET_FILE} (asca predict, asca review and the app use it from now on)")
    return 0
