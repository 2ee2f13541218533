"""Commands of the review loop (filled in by the modules they call)."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add this module's sub-commands to ``subparsers``."""
