"""The ``asca`` command: one parser, one sub-module per group of commands.

Every :class:`~asca_core.errors.AscaError` ends the command with its one-line message on stderr
and exit code 2; Ctrl-C exits with 130, a closed output pipe quietly with 141. Tracebacks are shown only with ``ASCA_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ..errors import AscaError

# Each module defines ``register(subparsers)``; its sub-parsers set ``func(args) -> int``.
COMMAND_MODULES = ("data_cmd", "train_cmd", "cv_cmd", "predict_cmd", "export_cmd", "review_cmd", "search_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asca",
        description="ASCA Workbench: train, evaluate, inspect and explain audio classifiers "
        "built from convolution and relative self-attention on log-Mel spectrograms.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(subparsers)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asca-workbench")
    except PackageNotFoundError:  # running from a source tree
        return "0.1.0"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except AscaError as exc:
        if os.environ.get("ASCA_DEBUG"):
            raise
        print(f"asca {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"asca {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`asca data check ... | head`): stop quietly, as Unix tools do.
        # Python flushes stdout again at exit, so point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
