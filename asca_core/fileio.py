"""Reading back small files the program wrote (or a user handed it), whatever state they are in.

A run folder outlives the process that wrote it: its files may since have been replaced by a
folder, a FIFO, a device, binary junk or valid JSON of the wrong type. Every reader here opens
without blocking (a FIFO with no writer would otherwise hang the reader), refuses anything but a
regular file, and reports every problem as one line naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import AscaError, CheckpointError

MAX_BYTES = 64 << 20  # far above any config, status, metrics or eval file the program writes


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def read_bytes(path: str | Path, error: type[AscaError] = CheckpointError, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file; ``error`` (one line naming the file) for anything else.

    Raises FileNotFoundError when nothing is there, so callers decide what a missing file means.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise error(f"{path} is a folder, not a file") from None
    except OSError as exc:
        raise error(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _kind(info.st_mode)
            raise error(f"{path} is {kind}, not a file" if kind.startswith("a ") else f"{path} is {kind}")
        if info.st_size > max_bytes:
            raise error(f"{path} is {info.st_size / 2**20:.0f} MB, far too large for this file")
        chunks, size = [], 0
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except OSError as exc:
                raise error(f"{path} cannot be read: {exc.strerror or exc}") from None
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise error(f"{path} is far too large for this file")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: str | Path, error: type[AscaError] = CheckpointError, max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of a regular file (see :func:`read_bytes`)."""
    data = read_bytes(path, error, max_bytes)
    if b"\x00" in data:
        raise error(f"{path} is a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not UTF-8 text (byte {exc.start})") from None


def read_json(path: str | Path, kind: type = dict, error: type[AscaError] = CheckpointError) -> Any:
    """A JSON file holding a ``kind`` (dict or list); one line naming the file otherwise."""
    text = read_text(path, error)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(value, kind):
        names: dict[type, str] = {dict: "a JSON object", list: "a JSON list"}
        expected = names.get(kind, kind.__name__)
        raise error(f"{path} must hold {expected}, not {_json_type(value)}")
    return value


def read_json_lines(path: str | Path, error: type[AscaError] = CheckpointError) -> list[dict[str, Any]]:
    """A JSON-lines file of objects (blank lines skipped); one line naming the file and line otherwise."""
    rows = []
    for number, line in enumerate(read_text(path, error).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise error(f"{path} line {number} is not valid JSON") from None
        if not isinstance(row, dict):
            raise error(f"{path} line {number} must be a JSON object, not {_json_type(row)}")
        rows.append(row)
    return rows


def read_yaml_mapping(path: str | Path, error: type[AscaError] = CheckpointError) -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is an empty mapping)."""
    import yaml

    text = read_text(path, error)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise error(f"{path} is not valid YAML{where}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{path} must hold a mapping of sections, not {_json_type(raw)}")
    return raw


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "null" if value is None else type(value).__name__


__all__ = ["MAX_BYTES", "read_bytes", "read_json", "read_json_lines", "read_text", "read_yaml_mapping"]


def output_folder(path: str | Path, flag: str) -> Path:
    """Create the output folder ``path`` (named ``flag`` in errors) and return it.

    One :class:`AscaError` line when ``path`` is a file or cannot be created.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise AscaError(f"{flag} {folder} is a file: give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AscaError(f"{flag} {folder}: cannot create the folder ({exc.strerror or exc})") from None
    return folder
