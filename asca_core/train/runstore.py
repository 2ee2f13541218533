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

import fcntl
import json
import math
import os
import re
import stat
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import AscaError, CheckpointError
from ..fileio import read_json, read_json_lines

STATES = ("queued", "running", "finished", "failed", "stopped")
# What a run recorded as running or queued is when no process trains it any more (killed, the
# machine restarted): it can be resumed from its last checkpoint.
CRASHED = "crashed"
LOCK_FILE = ".lock"  # flock()ed by the one process writing the run, for as long as it trains
SLOT_ENV = "ASCA_TRAINING_SLOT"  # a lock file: trainings given the same one run one at a time
# Files a launcher (the app) may put into a run folder before the trainer starts.
JOB_FILE = "job.json"  # the launcher's record: pid, start time, when it started the trainer
LAUNCHER_FILES = (JOB_FILE, "console.txt", "requested.yaml")
# A folder is a run once the trainer or a launcher has written one of these.
RUN_MARKERS = ("config.yaml", "status.json", JOB_FILE)
_NAME_OK = re.compile(r"[^A-Za-z0-9._-]+")
# The files the program writes into each folder of a run; their temporaries are
# ``.<name>.<random characters>.tmp`` (see atomic_write_bytes).
_OWN_FILES = {
    "": re.compile(r"config\.yaml|status\.json|metrics\.jsonl|labels\.json|eval\.json|recipe\.json"),
    "checkpoints": re.compile(r"(best|last|last\.state)\.safetensors|last\.state\.json"),
    "eval": re.compile(r"epoch_\d{3,}\.json"),
}
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]{1,16}\.tmp")


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
    return datetime.now(UTC).astimezone().isoformat(timespec="seconds")


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
    # Every reader names the file and the problem in one CheckpointError line, whatever is there
    # instead of the file the trainer wrote: a folder, a FIFO, binary junk, JSON of another type.
    def exists(self) -> bool:
        return self.config_path.is_file()

    def config(self) -> Config:
        """The resolved config of the run (CheckpointError when missing or unreadable)."""
        if not self.config_path.exists():
            raise CheckpointError(f"not a run directory (no config.yaml): {self.path}")
        from ..fileio import read_yaml_mapping

        raw = read_yaml_mapping(self.config_path)
        try:
            return Config.from_dict(raw)
        except AscaError as exc:
            raise CheckpointError(f"{self.config_path} is not a usable config: {exc}") from exc

    def labels(self) -> list[str]:
        try:
            labels = read_json(self.labels_path, list)
        except FileNotFoundError:
            raise CheckpointError(f"run has no labels.json: {self.path}") from None
        return check_labels(labels, str(self.labels_path))

    def status(self) -> dict[str, Any]:
        """``status.json`` as a dict; ``{}`` when the run has not written one yet."""
        try:
            return read_json(self.status_path, dict)
        except FileNotFoundError:
            return {}

    def state(self) -> str:
        """The recorded state, or :data:`CRASHED` for a run marked running whose process is gone."""
        status = self.status()
        state = status.get("state", "unknown")
        if state in ("running", "queued") and not trainer_alive(self.path, status):
            return CRASHED
        return state

    def lock_holder(self) -> dict[str, Any] | None:
        """``{"pid", "pid_start"}`` of the process training the run (it holds ``RUN/.lock``), None when free."""
        return RunLock.holder(self.path)

    def job(self) -> dict[str, Any]:
        """The launcher's record (``job.json``) as a dict; ``{}`` for a run started from a terminal."""
        try:
            return read_json(self.path / JOB_FILE, dict)
        except FileNotFoundError:
            return {}

    def created(self) -> float:
        """When the run was started (seconds since the epoch): the launcher's record, else the
        time config.yaml (or status.json) was written; 0 when unknown."""
        try:
            started = self.job().get("started_ts")
        except AscaError:
            started = None
        if isinstance(started, (int, float)) and not isinstance(started, bool) and started > 0:
            return float(started)
        for path in (self.config_path, self.status_path):
            try:
                return path.stat().st_mtime
            except OSError:
                continue
        return 0.0

    def metrics(self) -> list[dict[str, Any]]:
        """One dict per finished epoch, in order."""
        try:
            return read_json_lines(self.metrics_path)
        except FileNotFoundError:
            return []

    def eval_details(self, epoch: int | None = None) -> dict[str, Any]:
        """Per-epoch details (``epoch``) or the final evaluation (``None``); ``{}`` if absent."""
        path = self.path / "eval.json" if epoch is None else self.eval_dir / f"epoch_{epoch:03d}.json"
        try:
            return read_json(path, dict)
        except FileNotFoundError:
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


def check_labels(labels: Any, source: str) -> list[str]:
    """``labels`` when it is a non-empty list of distinct class names; one line naming ``source`` otherwise."""
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise CheckpointError(f"{source}: the labels must be a non-empty list of class names")
    if len(set(labels)) != len(labels):
        raise CheckpointError(f"{source}: the labels name a class twice")
    return labels


def checkpoint_labels(path: str | Path) -> list[str]:
    """The class names in a safetensors checkpoint's header, read without loading any tensor.

    A safetensors file starts with the length of its JSON header (8 bytes, little-endian);
    the header's ``__metadata__`` holds the labels as a JSON string.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"{path} is not a regular file")
        head = os.pread(fd, 8, 0)
        size = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < size <= 100 << 20:
            raise CheckpointError(f"{path} is not a safetensors checkpoint")
        header = os.pread(fd, size, 8)
    finally:
        os.close(fd)
    try:
        meta = json.loads(header.decode("utf-8")).get("__metadata__") or {}
        labels = json.loads(meta["labels"])
    except (UnicodeDecodeError, ValueError, KeyError, AttributeError, TypeError):
        raise CheckpointError(f"{path} has no readable label list in its header") from None
    return check_labels(labels, f"{path} (header)")


# ---------------------------------------------------------------------- processes and locks
def process_start_time(pid: int) -> int | None:
    """Kernel start time of a process (clock ticks since boot), to tell a reused pid apart.

    ``-1`` for a zombie (finished, only its exit status left); None when unknown.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: fields start after the last ")"
    fields = text[text.rfind(")") + 2 :].split()
    if fields and fields[0] == "Z":
        return -1
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def same_process(pid: Any, start_time: Any) -> bool:
    """True while ``pid`` runs and started at ``start_time``: a bare pid is never trusted, and a
    finished process not yet waited for (a zombie) is not running."""
    if not isinstance(pid, int) or pid <= 0 or not isinstance(start_time, int) or start_time < 0:
        return False
    return process_start_time(pid) == start_time


def trainer_alive(run_dir: str | Path, status: dict[str, Any]) -> bool:
    """Whether a process is training ``run_dir``: its lock is held, or the pid and start time
    that status.json records belong to a running process."""
    if RunLock.holder(run_dir) is not None:
        return True
    return same_process(status.get("pid"), status.get("pid_start"))


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "pid_start": process_start_time(os.getpid())}


class _FileLock:
    """An exclusive ``flock`` on a file, with the holder's pid and start time written in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _try(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise CheckpointError(f"{self.path} cannot be used as a lock file: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        data = (json.dumps(_me()) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing drops the flock; a killed process's locks go with it

    @staticmethod
    def holder_of(path: str | Path) -> dict[str, Any] | None:
        """``{"pid", "pid_start"}`` of the process holding the lock at ``path``, None when free.

        The lock is only probed (a shared lock taken and dropped at once), never waited for.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    info = json.loads(os.pread(fd, 200, 0).decode())
                except (OSError, ValueError):
                    info = {}
                return info if isinstance(info, dict) else {}
            except OSError:  # not a file one can lock (a folder, a FIFO): nobody holds it
                return None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


def _holder_text(holder: dict[str, Any]) -> str:
    pid = holder.get("pid")
    return f"process {pid}" if isinstance(pid, int) else "another process"


class RunLock(_FileLock):
    """The one-writer lock of a run folder (``RUN/.lock``), held for the whole of training."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(Path(run_dir) / LOCK_FILE)
        self.run_dir = Path(run_dir)

    def acquire(self, fresh: bool = False, patience: float = 15.0) -> None:
        """Take the lock or raise CheckpointError naming the process that trains the run.

        ``fresh``: a new run is about to be created here, so a folder holding anything else is
        refused before the lock file is written into it. Another reader probing the lock holds
        it for microseconds, and the worker processes of a killed trainer hold it until they
        notice (seconds): both are waited for, a live trainer is not.
        """
        if fresh and self.run_dir.exists() and not (self.run_dir / "config.yaml").exists():
            problem = unusable_run_dir(self.run_dir)
            if problem:
                raise CheckpointError(problem)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise CheckpointError(f"run directory {self.run_dir} is not a folder")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + patience
        probe_until = time.monotonic() + 1.0
        while not self._try():
            holder = self.holder_of(self.path)
            if holder is None:
                continue  # released in between
            owner_alive = same_process(holder.get("pid"), holder.get("pid_start"))
            if (owner_alive and time.monotonic() > probe_until) or time.monotonic() > deadline:
                raise CheckpointError(
                    f"run {self.run_dir} is being trained by {_holder_text(holder)}: "
                    "wait for it to end or stop it first"
                )
            time.sleep(0.05)

    @staticmethod
    def holder(run_dir: str | Path) -> dict[str, Any] | None:
        """The process holding the run's lock (``{"pid", "pid_start"}``), None when free."""
        return _FileLock.holder_of(Path(run_dir) / LOCK_FILE)


class TrainingSlot(_FileLock):
    """A machine-wide lock file: trainings that share it run one at a time, the rest wait."""

    def acquire(self, wait: bool = True, poll: float = 0.5, give_up: Any = None) -> bool:
        """Take the slot; with ``wait``, poll until free or ``give_up()`` says stop (False)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while not self._try():
            if not wait or (give_up is not None and give_up()):
                return False
            time.sleep(poll)
        return True

    def holder(self) -> dict[str, Any] | None:
        return self.holder_of(self.path)


# ---------------------------------------------------------------------- folders
def sweep_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete a killed writer's temporaries: only ``.<own file>.<random>.tmp`` in the run's own folders."""
    removed = []
    for sub, names in _OWN_FILES.items():
        folder = Path(run_dir) / sub
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            match = _TEMPORARY.fullmatch(entry.name)
            if match and names.fullmatch(match["name"]) and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return removed


def foreign_entries(run_dir: str | Path) -> list[str]:
    """What a folder holds besides what a fresh run may already contain (launcher files, the lock,
    the program's own temporaries, empty run sub-folders)."""
    folder = Path(run_dir)
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name = entry.name
        if name in LAUNCHER_FILES or name == LOCK_FILE:
            continue
        match = _TEMPORARY.fullmatch(name)
        if match and _OWN_FILES[""].fullmatch(match["name"]):
            continue
        if name in _OWN_FILES and entry.is_dir(follow_symlinks=False) and not foreign_in_sub(folder / name):
            continue
        found.append(name)
    return found


def unusable_run_dir(run_dir: str | Path) -> str | None:
    """Why a new run cannot be created in the existing ``run_dir``, or None when it can."""
    path = Path(run_dir)
    if not path.is_dir():
        return f"run directory {path} is not a folder"
    try:
        foreign = foreign_entries(path)
    except OSError as exc:
        return f"run directory {path} cannot be listed: {exc.strerror or exc}"
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return f"run directory {path} is not empty and holds no run ({shown}): choose a new or empty --run-dir"
    return None


def wait_for_slot(slot: TrainingSlot, run: RunStore, stop_requested: Any, log: Any) -> bool:
    """Take the training slot, marking the run ``queued`` while another training holds it.

    False when a stop was requested before the slot came free.
    """
    if slot.acquire(wait=False):
        return True
    holder = slot.holder() or {}
    run.write_status(state="queued")
    log(f"queued: {_holder_text(holder)} is training on this machine; this run starts when it ends")
    if not slot.acquire(wait=True, give_up=stop_requested):
        return False
    run.write_status(state="running")
    log("the training slot is free: starting")
    return True


def foreign_in_sub(folder: Path) -> bool:
    names = _OWN_FILES[folder.name]
    for entry in os.scandir(folder):
        match = _TEMPORARY.fullmatch(entry.name)
        if not (match and names.fullmatch(match["name"])):
            return True
    return False


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a run folder: the trainer or a launcher has written one of :data:`RUN_MARKERS`."""
    path = Path(path)
    return path.is_dir() and any((path / name).exists() for name in RUN_MARKERS)


def list_runs(root: str | Path | None = None) -> list[RunStore]:
    """Run folders under ``root`` (default: ``runs_dir()``), newest first (:meth:`RunStore.created`)."""
    from ..utils import runs_dir

    root = Path(root) if root is not None else runs_dir()
    if not root.is_dir():
        return []
    runs = [RunStore(p) for p in root.iterdir() if is_run_dir(p)]
    return sorted(runs, key=RunStore.created, reverse=True)


def run_folder_name(name: str | None, prefix: str = "") -> str:
    """``<prefix><name>-<YYYYmmdd-HHMMSS>``, with anything but letters, digits, ``.``, ``_`` and ``-``
    in ``name`` replaced by ``-`` (``run`` when nothing is left)."""
    slug = _NAME_OK.sub("-", name or "").strip("-") or "run"
    return f"{prefix}{slug}-{time.strftime('%Y%m%d-%H%M%S')}"


def new_run_dir(name: str | None, root: str | Path | None = None, *, prefix: str = "", create: bool = True) -> Path:
    """A run folder ``ROOT/<prefix><name>-<YYYYmmdd-HHMMSS>`` (default root: ``runs_dir()``) that
    does not exist yet, made unique with ``-2``, ``-3``, ...; created unless ``create`` is False
    (the trainer then creates it)."""
    from ..utils import runs_dir

    folder = Path(root) if root is not None else runs_dir()
    base = run_folder_name(name, prefix)
    for n in range(1, 1000):
        path = folder / (base if n == 1 else f"{base}-{n}")
        if not create:
            if not path.exists():
                return path
            continue
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise CheckpointError(f"could not find a free run folder name under {folder}")


__all__ = [
    "CRASHED",
    "JOB_FILE",
    "LAUNCHER_FILES",
    "LOCK_FILE",
    "RUN_MARKERS",
    "SLOT_ENV",
    "STATES",
    "RunLock",
    "RunStore",
    "TrainingSlot",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_labels",
    "checkpoint_labels",
    "foreign_entries",
    "is_run_dir",
    "json_safe",
    "list_runs",
    "new_run_dir",
    "process_start_time",
    "run_folder_name",
    "same_process",
    "sweep_temporaries",
    "trainer_alive",
    "unusable_run_dir",
    "wait_for_slot",
]
