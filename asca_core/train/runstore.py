"""The run directory: written by ``asca train``, read by evaluation, inference and the app.

Layout (see ARCHITECTURE.md)::

    RUN/config.yaml            resolved config, including the normalisation statistics
    RUN/status.json            {"state": running|finished|failed|stopped, "epoch", "steps", ...}
    RUN/metrics.jsonl          one JSON object per finished epoch
    RUN/labels.json            class names in output order
    RUN/checkpoints/{last,best}.safetensors  (+ last.state.safetensors / last.state.json)
    RUN/eval/epoch_XXX.json    per-epoch details (confusion matrix, per-class AP/precision/recall)
    RUN/eval.json              the final evaluation of the best checkpoint
    RUN/log.txt

Every file is replaced atomically (temporary file, fsync, rename), so a reader or a process
killed at any moment sees either the old or the new version, never half a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from ..config import Config
from ..errors import AscaError, CheckpointError

STATES = ("running", "finished", "failed", "stopped")


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp creates 0600; runs are read by other tools and users
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """Replace NaN/inf by None (JSON has no NaN) and NumPy scalars by Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n")


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


class RunStore:
    """Read (and, for the trainer, write) one run directory."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir)

    # ------------------------------------------------------------------ paths
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def labels_path(self) -> Path:
        return self.path / "labels.json"

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    def checkpoint_path(self, which: str = "best") -> Path:
        if which not in ("best", "last"):
            raise CheckpointError(f"checkpoint must be best or last, got {which!r}")
        return self.checkpoints_dir / f"{which}.safetensors"

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    # ------------------------------------------------------------------ readers
    def exists(self) -> bool:
        return self.config_path.is_file()

    def config(self) -> Config:
        """The resolved config of the run (CheckpointError when missing or unreadable)."""
        if not self.config_path.is_file():
            raise CheckpointError(f"not a run directory (no config.yaml): {self.path}")
        try:
            raw = yaml.safe_load(self.config_path.read_text())
            return Config.from_dict(raw)
        except (yaml.YAMLError, AscaError) as exc:
            raise CheckpointError(f"unreadable config.yaml in {self.path}: {exc}") from exc

    def labels(self) -> list[str]:
        if not self.labels_path.is_file():
            raise CheckpointError(f"run has no labels.json: {self.path}")
        try:
            labels = json.loads(self.labels_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"unreadable labels.json in {self.path}") from exc
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise CheckpointError(f"labels.json in {self.path} must be a list of class names")
        return labels

    def status(self) -> dict[str, Any]:
        """``status.json`` as a dict; ``{}`` when the run has not written one yet."""
        try:
            return json.loads(self.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def state(self) -> str:
        """The recorded state, or ``"crashed"`` for a run marked running whose process is gone."""
        status = self.status()
        state = status.get("state", "unknown")
        if state == "running" and not _pid_alive(status.get("pid")):
            return "crashed"
        return state

    def metrics(self) -> list[dict[str, Any]]:
        """One dict per finished epoch, in order."""
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def eval_details(self, epoch: int | None = None) -> dict[str, Any]:
        """Per-epoch details (``epoch``) or the final evaluation (``None``); ``{}`` if absent."""
        path = self.path / "eval.json" if epoch is None else self.eval_dir / f"epoch_{epoch:03d}.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def has_checkpoint(self, which: str = "best") -> bool:
        return self.checkpoint_path(which).is_file()

    # ------------------------------------------------------------------ writers (trainer, rank 0)
    def create(self, cfg: Config, labels: list[str]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints_dir.mkdir(exist_ok=True)
        self.write_config(cfg)
        atomic_write_json(self.labels_path, list(labels))

    def write_config(self, cfg: Config) -> None:
        atomic_write_text(self.config_path, cfg.to_yaml())

    def write_status(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into status.json (``updated`` is refreshed) and return it."""
        status = self.status()
        status.update(fields)
        status["updated"] = now_iso()
        if status.get("state") != "failed":
            status.pop("error", None)
        atomic_write_json(self.status_path, status)
        return status

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in rows)
        atomic_write_text(self.metrics_path, text)

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Add one epoch; a row for the same epoch (an epoch redone after a resume) is replaced."""
        rows = [r for r in self.metrics() if r.get("epoch") != row.get("epoch")]
        self.write_metrics(rows + [row])

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop rows after ``last_epoch`` (written before a crash, redone after resume)."""
        self.write_metrics([r for r in self.metrics() if r.get("epoch", 0) <= last_epoch])

    def write_eval(self, details: dict[str, Any], epoch: int | None = None) -> None:
        path = self.path / "eval.json" if epoch is None else self.eval_dir / f"epoch_{epoch:03d}.json"
        atomic_write_json(path, details)

    def log(self, message: str) -> None:
        """Append a timestamped line to log.txt (plain text, readable while training runs)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {message}\n")


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_runs(root: str | Path | None = None) -> list[RunStore]:
    """Run directories under ``root`` (default: ``runs_dir()``), newest first."""
    from ..utils import runs_dir

    root = Path(root) if root is not None else runs_dir()
    if not root.is_dir():
        return []
    runs = [RunStore(p) for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file()]

    # config.yaml is written once, when the run is created
    return sorted(runs, key=lambda r: r.config_path.stat().st_mtime, reverse=True)


__all__ = ["RunStore", "list_runs", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "json_safe", "STATES"]
