"""Placeholder until the command group lands."""


def register(subparsers) -> None:
    return None
