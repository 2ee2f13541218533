"""Training jobs for the app: start ``asca train`` in the background, stop, resume, list runs.

The run directory is the only state. A job is an ``asca train --run-dir RUN`` process in its own
session (so a graceful stop reaches the trainer and anything it spawned), with its console output
in ``RUN/console.txt`` and its process id in ``RUN/job.json``; everything else (config, progress,
metrics, checkpoints) is what the trainer writes. Reloading the page or restarting the app
therefore loses nothing, and runs started from a terminal show up too::

    run = start_training("configs/demo.yaml", ["train.epochs=3"], name="quick-demo")
    info = run_info(run)            # state, epoch, metrics so far
    stop_run(run)                   # SIGTERM: the trainer saves a checkpoint and marks "stopped"
    resume_run(run)                 # asca train --resume --run-dir RUN

Listing, folder names and liveness are the run store's (:mod:`asca_core.train.runstore`): the
run's lock (``RUN/.lock``, held by the one process training it) and pid + start time, never a bare
pid, so a reused pid never looks running and Stop never signals a stranger. This module adds what
only a launcher knows: a job that is starting, stopping, or died before the trainer wrote any
status. The app's trainings share one training slot per machine (a lock file in the cache
folder): one trains, the others wait in state ``queued``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asca_core.errors import AscaError, CheckpointError, DatasetError
from asca_core.fileio import read_json, read_yaml_mapping
from asca_core.train import runstore
from asca_core.train.runstore import (
    CRASHED,
    JOB_FILE,
    SLOT_ENV,
    RunStore,
    atomic_write_json,
    check_labels,
    checkpoint_labels,
    is_run_dir,
    new_run_dir,
    process_start_time,
    same_process,
)
from asca_core.utils import cache_dir

CONSOLE_FILE = "console.txt"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def presets_dir() -> Path:
    """Folder of the YAML presets shipped with the project (``configs/``)."""
    return PROJECT_ROOT / "configs"


def list_presets() -> dict[str, Path]:
    """Preset name (file stem) → path, sorted by name."""
    folder = presets_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


# ----------------------------------------------------------------------------- processes
def training_slot_path() -> Path:
    """The lock file the app's trainings take turns on (``$ASCA_TRAINING_SLOT`` or the cache folder's)."""
    return Path(os.environ.get(SLOT_ENV) or cache_dir() / "training.lock")


def reap(pid: Any) -> None:
    """Collect the exit status of ``pid`` if it is a finished training this app started, so it
    does not linger as a zombie (the app never waits on its trainings)."""
    if not isinstance(pid, int) or pid <= 0:
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except OSError:  # not our child, or already collected
        pass


# ----------------------------------------------------------------------------- run info
@dataclass
class RunInfo:
    """What the app shows about one run directory."""

    path: Path
    # starting | queued | running | stopping | finished | failed | stopped | CRASHED | damaged
    state: str
    status: dict[str, Any] = field(default_factory=dict)
    job: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    pid: int | None = None
    pid_start: int | None = None  # the kernel start time of ``pid``: it identifies the process
    problem: str | None = None  # the first damaged file, as one line (state "damaged")
    raw_config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def active(self) -> bool:
        """A process is working on this run right now."""
        return self.state in ("starting", "queued", "running", "stopping")

    @property
    def epoch(self) -> int:
        return int(self.status.get("epoch") or (self.metrics[-1].get("epoch", 0) if self.metrics else 0))

    @property
    def epochs(self) -> int | None:
        value = self.status.get("epochs") or self.job.get("epochs")
        return int(value) if value else None

    @property
    def has_model(self) -> bool:
        return (
            self.problem is None
            and (self.path / "checkpoints" / "best.safetensors").is_file()
            and (self.path / "labels.json").is_file()
        )

    @property
    def can_resume(self) -> bool:
        return (
            self.problem is None
            and not self.active
            and self.state != "finished"
            and (self.path / "checkpoints" / "last.safetensors").is_file()
        )

    @property
    def error(self) -> str | None:
        return self.problem or self.status.get("error") or self.job.get("error")

    @property
    def config(self) -> dict[str, Any]:
        """The run's ``config.yaml`` as nested dicts (``{}`` before the trainer writes it or when damaged)."""
        return self.raw_config

    @property
    def model(self) -> str | None:
        """``"asca_tiny CCCT"``: the model name and layout of the run."""
        model = self.config.get("model")
        if not isinstance(model, dict) or not model.get("name"):
            return str(self.job["model"]) if self.job.get("model") else None
        return f"{model['name']} {model.get('layout', '')}".strip()

    def best(self, key: str = "val_map") -> float | None:
        values = [r[key] for r in self.metrics if isinstance(r.get(key), (int, float))]
        return max(values) if values else None

    def progress(self) -> float:
        """Fraction of epochs done, in [0, 1]."""
        if self.state == "finished":
            return 1.0
        return min(1.0, self.epoch / self.epochs) if self.epochs else 0.0

    def summary(self) -> dict[str, Any]:
        """One row of the run table."""
        last = self.metrics[-1] if self.metrics else {}
        return {
            "run": self.name,
            "state": self.state,
            "epoch": f"{self.epoch}/{self.epochs}" if self.epochs else str(self.epoch),
            "train_loss": last.get("train_loss"),
            "val_loss": last.get("val_loss"),
            "val_acc": last.get("val_acc"),
            "best val_map": self.best("val_map"),
            "model": self.model,
            "started": str(self.job.get("started") or self.status.get("started") or "")[:16].replace("T", " "),
        }


class _Reader:
    """Reads a run's files; a missing file is a default, a damaged one is noted as a problem."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def __call__(self, read: Any, *args: Any, default: Any = None) -> Any:
        try:
            return read(*args)
        except FileNotFoundError:
            return default
        except AscaError as exc:
            self.problems.append(" ".join(str(exc).split()))
            return default


_INT_FIELDS = {
    "status.json": ("pid", "pid_start", "epoch", "epochs", "steps", "batch", "batches", "best_epoch"),
    JOB_FILE: ("pid", "start_time", "epochs"),
}


def _check_fields(path: Path, value: dict[str, Any]) -> dict[str, Any]:
    for key in _INT_FIELDS.get(path.name, ()):
        item = value.get(key)
        if item is not None and (isinstance(item, bool) or not isinstance(item, int)):
            raise CheckpointError(f"{path}: {key!r} must be a whole number, not {item!r}"[:300])
    for key in ("started_ts", "stop_requested"):
        item = value.get(key)
        if item is not None and (isinstance(item, bool) or not isinstance(item, (int, float))):
            raise CheckpointError(f"{path}: {key!r} must be a number, not {item!r}"[:300])
    return value


def _read_json(path: Path) -> dict[str, Any]:
    return _check_fields(path, read_json(path, dict))


def _read_run(store: RunStore) -> tuple[dict, dict, list, dict, list[str]]:
    """status, job, metrics rows, config and the problems of a run's files (each one line)."""
    path = store.path
    read = _Reader()
    status = read(lambda: _check_fields(store.status_path, store.status()), default={})
    job = read(lambda: _check_fields(path / JOB_FILE, store.job()), default={})
    metrics = read(store.metrics, default=[])
    config = read(read_yaml_mapping, store.config_path, default={})
    labels = read(read_json, path / "labels.json", list)
    if labels is not None:
        labels = read(check_labels, labels, str(path / "labels.json"))
    best = path / "checkpoints" / "best.safetensors"
    if labels is not None and best.exists():
        header = read(checkpoint_labels, best)
        if header is not None and header != labels:
            read.problems.append(f"{path / 'labels.json'} does not match the classes in {best}")
    read(read_json, path / "eval.json", dict)
    epoch = status.get("best_epoch") or status.get("epoch")
    if isinstance(epoch, int) and epoch > 0:  # the epoch details the Runs page shows
        read(read_json, path / "eval" / f"epoch_{epoch:03d}.json", dict)
    return status, job, metrics, config, read.problems


def run_info(run_dir: str | Path) -> RunInfo:
    """State of a run from its files and whether its process still exists.

    A status still saying ``running`` whose process is gone (killed, machine restarted) is
    reported as :data:`~asca_core.train.runstore.CRASHED`; a job whose process ended before writing any status
    (a bad config, a missing dataset) as ``failed`` with the last console line as its error; a
    run with a file that cannot be read back as ``damaged``, naming the file.
    """
    store = RunStore(run_dir)
    path = store.path
    if not is_run_dir(path):
        raise CheckpointError(f"not a run directory: {path}")
    status, job, metrics, config, problems = _read_run(store)
    job_pid = job.get("pid") if isinstance(job.get("pid"), int) else None
    status_pid = status.get("pid") if isinstance(status.get("pid"), int) else None
    launched = float(job.get("started_ts") or 0.0)
    if status_pid and job_pid:  # the trainer writes its pid: the status is this job's own
        status_current = status_pid == job_pid or _status_time(status) > launched + 1.0
    else:  # status.json stamps whole seconds: allow one second of rounding
        status_current = _status_time(status) + 1.0 >= launched
    pid, start_time = job_pid, job.get("start_time")
    if status_pid and (job_pid is None or (status_pid != job_pid and _status_time(status) > launched)):
        pid, start_time = status_pid, status.get("pid_start")  # started from a terminal after the app's job
    holder = store.lock_holder()  # the process training the run holds its lock
    if holder is not None:
        alive = True
        if isinstance(holder.get("pid"), int):
            pid, start_time = holder["pid"], holder.get("pid_start")
    else:  # never a bare pid: only the process that started at the recorded time counts
        reap(job_pid)
        alive = same_process(pid, start_time)
    recorded = status.get("state")
    stop_asked = float(job.get("stop_requested") or 0.0) >= launched > 0
    if problems:
        state = "damaged"
    elif (
        recorded in ("finished", "failed", "stopped")
        and (status_current or job_pid is None)
        and (holder is None or holder.get("pid") == status_pid)
    ):
        state = recorded  # also while the process is still exiting, or for fit() run in a notebook
    elif alive:
        if stop_asked and pid == job_pid:
            state = "stopping"
        elif recorded in ("running", "queued") and (status_pid == pid if status_pid else status_current):
            state = recorded
        else:
            state = "starting"
    elif recorded in ("running", "queued"):
        state = CRASHED
    elif recorded in ("unknown", None) and job_pid is None:
        state = "unknown"
    elif stop_asked:  # stopped while starting up, before the trainer wrote any status
        state = "stopped"
    elif job_pid:
        state = "failed"
        job = {**job, "error": job.get("error") or _last_console_error(path)}
    else:
        state = recorded or "unknown"
    return RunInfo(
        path=path,
        state=state,
        status=status,
        job=job,
        metrics=metrics,
        pid=pid,
        pid_start=start_time if isinstance(start_time, int) else None,
        problem=problems[0] if problems else None,
        raw_config=config,
    )


def _status_time(status: dict[str, Any]) -> float:
    """When status.json was last written (seconds since the epoch), 0 if unknown."""
    from datetime import datetime

    stamp = status.get("updated")
    if not isinstance(stamp, str):
        return 0.0
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return 0.0


def _last_console_error(path: Path) -> str:
    lines = [ln.strip() for ln in read_console(path, 4000).splitlines() if ln.strip()]
    for line in reversed(lines):
        if "error" in line.lower():
            return line
    return lines[-1] if lines else "the training process ended before writing any status"


def list_runs(root: str | Path | None = None) -> list[RunInfo]:
    """Every run under ``root`` (default :func:`asca_core.utils.runs_dir`), newest first."""
    infos = []
    for store in runstore.list_runs(root):
        try:
            infos.append(run_info(store.path))
        except AscaError:
            continue
    return infos


def read_console(run_dir: str | Path, max_chars: int = 20000) -> str:
    """The tail of the run's console output (``console.txt``, else the trainer's ``log.txt``)."""
    path = Path(run_dir)
    for name in (CONSOLE_FILE, "log.txt"):
        file = path / name
        if file.is_file():
            size = file.stat().st_size
            with open(file, "rb") as handle:
                handle.seek(max(0, size - max_chars))
                text = handle.read().decode("utf-8", errors="replace")
            # tqdm redraws with carriage returns: keep only the last state of each line
            return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))
    return ""


# ----------------------------------------------------------------------------- control
def train_command(
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    resume: bool = False,
) -> list[str]:
    """The ``asca train`` command line, run with this interpreter."""
    cmd = [sys.executable, "-m", "asca_core.cli", "train"]
    if config is not None:
        cmd += ["--config", str(config)]
    for item in overrides:
        cmd += ["--set", str(item)]
    if run_dir is not None:
        cmd += ["--run-dir", str(run_dir)]
    if resume:
        cmd.append("--resume")
    return cmd


def _launch(cmd: list[str], run_dir: Path, extra: dict[str, Any]) -> RunInfo:
    # the app's trainings take turns on one slot: two sharing the cores each run many times slower
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{SLOT_ENV: str(training_slot_path())})
    with open(run_dir / CONSOLE_FILE, "ab") as console:
        shown = ["asca"] + cmd[3:] if cmd[1:3] == ["-m", "asca_core.cli"] else cmd
        console.write(f"$ {' '.join(shown)}\n".encode())
        console.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=console,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(PROJECT_ROOT),
            env=env,
            start_new_session=True,
        )
    job = {
        "pid": proc.pid,
        "start_time": process_start_time(proc.pid),
        "started_ts": time.time(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": cmd[1:],
        **extra,
    }
    atomic_write_json(run_dir / JOB_FILE, job)
    return run_info(run_dir)


def start_training(
    config: str | Path | None, overrides: Sequence[str] = (), *, name: str | None = None, root: str | Path | None = None
) -> RunInfo:
    """Validate the config, then start ``asca train`` on a new run folder in the background.

    The config is checked here first so a bad override is an error in the form (ConfigError),
    not a dead process.
    """
    from asca_core.config import load_config

    cfg = load_config(config, list(overrides))
    run_dir = new_run_dir(name or (Path(config).stem if config else "run"), root)
    if config is None:  # `asca train` wants a file: the defaults plus overrides, written out
        config, overrides = run_dir / "requested.yaml", ()
        cfg.to_yaml(config)
    cmd = train_command(Path(config).resolve(), overrides, run_dir.resolve())
    return _launch(
        cmd,
        run_dir,
        {
            "epochs": cfg.train.epochs,
            "model": cfg.model.name,
            "preset": Path(config).stem,
            "overrides": list(overrides),
        },
    )


def auto_train_command(
    data: str, budget: str, overrides: Sequence[str] = (), run_dir: str | Path | None = None
) -> list[str]:
    """``asca train DATA --budget B``: the automatic recipe, run with this interpreter."""
    cmd = [sys.executable, "-m", "asca_core.cli", "train", str(data), "--budget", str(budget)]
    for item in overrides:
        cmd += ["--set", str(item)]
    if run_dir is not None:
        cmd += ["--run-dir", str(run_dir)]
    return cmd


def start_auto_training(
    data: str, minutes: float, overrides: Sequence[str] = (), *, name: str | None = None, root: str | Path | None = None
) -> RunInfo:
    """Start ``asca train DATA --budget Nm`` (recipe resolved from the dataset) in the background.

    The budget, the dataset path and the overrides are checked here first, so a mistake is an
    error in the form rather than a dead process.
    """
    from asca_core.cli.train_cmd import dataset_name, resolve_data_path
    from asca_core.config import load_config
    from asca_core.train.recipe import parse_duration

    budget = f"{float(minutes):g}m"
    parse_duration(budget)
    data = resolve_data_path(str(data).strip() or "demo")  # absolute, or "demo"
    if data != "demo" and not Path(data).exists():
        raise DatasetError(f"dataset not found: {data}")
    load_config(None, list(overrides))
    run_dir = new_run_dir(name or f"auto-{dataset_name(data)}", root)
    cmd = auto_train_command(data, budget, overrides, run_dir.resolve())
    return _launch(cmd, run_dir, {"preset": "auto", "budget": budget, "data": data, "overrides": list(overrides)})


def resume_run(run_dir: str | Path) -> RunInfo:
    """Continue a stopped or interrupted run from its last checkpoint."""
    info = run_info(run_dir)
    holder = RunStore(info.path).lock_holder()
    if holder is not None:
        who = f"process {holder['pid']}" if isinstance(holder.get("pid"), int) else "another process"
        raise CheckpointError(f"run {info.name} is being trained by {who}: wait for it to end or stop it first")
    if info.active:
        raise CheckpointError(f"run {info.name} is still {info.state}")
    if info.problem:
        raise CheckpointError(info.problem)
    if not info.can_resume:
        raise CheckpointError(f"run {info.name} has no checkpoint to resume from")
    job = {k: v for k, v in info.job.items() if k in ("epochs", "model", "preset", "overrides")}
    cmd = train_command(None, (), info.path.resolve(), resume=True)
    return _launch(cmd, info.path, {**job, "resumed": True})


def stop_run(run_dir: str | Path) -> bool:
    """Ask the run's process (and its process group) to stop with SIGTERM; False if none runs.

    The trainer finishes the current step, saves ``last`` and marks the run ``stopped``. Only
    the process identified by pid and start time is signalled, never whatever has its pid now.
    """
    info = run_info(run_dir)
    if not info.active or info.pid is None or info.pid_start is None:
        return False
    if not _terminate(info.pid, info.pid_start):
        return False
    try:
        job = _read_json(info.path / JOB_FILE)
    except (FileNotFoundError, AscaError):
        job = {}
    if job:
        job["stop_requested"] = time.time()
        atomic_write_json(info.path / JOB_FILE, job)
    return True


def _terminate(pid: int, start_time: int) -> bool:
    """SIGTERM to process ``pid`` (its whole group when it leads one) if it started at ``start_time``.

    A pidfd pins the identity: once it is open and the start time matches, the signal reaches
    that very process even if it exits and its pid is reused in between.
    """
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfd (old kernel): the start time check alone
        handle = None
    try:
        if process_start_time(pid) != start_time:
            return False
        if os.getpgid(pid) == pid:  # a session leader we started: reach its children too
            os.killpg(pid, signal.SIGTERM)
        elif handle is not None:  # started elsewhere (a terminal): only the trainer itself
            signal.pidfd_send_signal(handle, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    finally:
        if handle is not None:
            os.close(handle)
    return True


def finished_runs(root: str | Path | None = None) -> list[RunInfo]:
    """Runs with a usable model (a best checkpoint and labels), newest first."""
    return [r for r in list_runs(root) if r.has_model and not r.active]


__all__ = [
    "CRASHED",
    "RunInfo",
    "finished_runs",
    "is_run_dir",
    "list_presets",
    "list_runs",
    "new_run_dir",
    "presets_dir",
    "read_console",
    "reap",
    "resume_run",
    "run_info",
    "start_training",
    "stop_run",
    "train_command",
    "training_slot_path",
]
