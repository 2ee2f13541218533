"""Training jobs: states read from run folders and live processes; start, stop, resume for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC
from pathlib import Path

import pytest
from fixtures_app import wait_for_run

from asca_core.errors import CheckpointError
from asca_core.train.runstore import process_start_time, same_process
from workbench import jobs


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _run(tmp_path: Path, name: str, status: dict | None = None, job: dict | None = None) -> Path:
    path = tmp_path / name
    path.mkdir()
    if status is not None:
        (path / "status.json").write_text(json.dumps(status))
    if job is not None:
        (path / jobs.JOB_FILE).write_text(json.dumps(job))
    return path


def test_states_come_from_status_and_live_processes(tmp_path):
    dead = _dead_pid()
    gone = _run(tmp_path, "gone", {"state": "running", "pid": dead, "epoch": 3, "epochs": 10})
    done = _run(tmp_path, "done", {"state": "finished", "pid": dead, "epoch": 10, "epochs": 10})
    me = process_start_time(os.getpid())
    live = _run(tmp_path, "live", {"state": "running", "pid": os.getpid(), "pid_start": me, "epoch": 1})
    # fit() called in this very process (a notebook): its pid lives on after the run finished
    notebook = _run(tmp_path, "notebook", {"state": "finished", "pid": os.getpid(), "epoch": 2})
    assert jobs.run_info(notebook).state == "finished"
    assert jobs.run_info(gone).state == jobs.CRASHED == "crashed"
    assert jobs.run_info(done).state == "finished"
    assert jobs.run_info(done).progress() == 1.0
    assert jobs.run_info(live).state == "running" and jobs.run_info(live).active
    assert jobs.run_info(gone).progress() == pytest.approx(0.3)
    with pytest.raises(CheckpointError):
        jobs.run_info(tmp_path / "nothing-here")


def test_a_job_that_died_before_any_status_is_failed_with_its_message(tmp_path):
    path = _run(tmp_path, "died", job={"pid": _dead_pid(), "started_ts": time.time()})
    (path / jobs.CONSOLE_FILE).write_text("loading\nasca train: error: data.path 'x.csv' not found\n")
    info = jobs.run_info(path)
    assert info.state == "failed"
    assert info.error == "asca train: error: data.path 'x.csv' not found"


def test_an_old_status_does_not_hide_a_newer_job(tmp_path):
    # a resumed run: status.json still says "stopped" from before, the new process runs
    old = {"state": "stopped", "pid": _dead_pid(), "updated": "2020-01-01T00:00:00+00:00"}
    path = _run(
        tmp_path,
        "resumed",
        old,
        {"pid": os.getpid(), "start_time": process_start_time(os.getpid()), "started_ts": time.time()},
    )
    assert jobs.run_info(path).state == "starting"


def test_a_resume_right_after_a_stop_is_not_mistaken_for_the_stop(tmp_path):
    # the old process wrote "stopped" in the same second the new job started
    now = time.time()
    from datetime import datetime

    stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")
    path = _run(
        tmp_path,
        "quick",
        {"state": "stopped", "pid": _dead_pid(), "updated": stamp},
        {"pid": os.getpid(), "start_time": process_start_time(os.getpid()), "started_ts": now},
    )
    assert jobs.run_info(path).state == "starting"


def test_finished_children_and_reused_pids_are_not_alive(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_start_time(proc.pid)
    time.sleep(1.0)  # exited but not reaped: a zombie still answers kill(pid, 0)
    assert not same_process(proc.pid, started)
    # a job whose process is a zombie is not running, and listing the run reaps it
    path = _run(tmp_path, "zombie", {"state": "running"}, {"pid": proc.pid, "start_time": started, "started_ts": 1.0})
    assert jobs.run_info(path).state == jobs.CRASHED
    with pytest.raises(ChildProcessError):
        os.waitpid(proc.pid, os.WNOHANG)
    me = process_start_time(os.getpid())
    assert same_process(os.getpid(), me)
    if me is not None:
        assert not same_process(os.getpid(), me + 1)
    assert not same_process(None, me) and not same_process(-5, me) and not same_process(os.getpid(), None)


def test_list_runs_newest_first_and_console_tail(tmp_path):
    first = jobs.new_run_dir("demo", tmp_path)
    (first / jobs.JOB_FILE).write_text(json.dumps({"pid": _dead_pid(), "started_ts": 100.0}))
    second = jobs.new_run_dir("demo", tmp_path)
    (second / jobs.JOB_FILE).write_text(json.dumps({"pid": _dead_pid(), "started_ts": 200.0}))
    (tmp_path / "not-a-run").mkdir()
    assert second != first and first.name.startswith("demo-") and second.name.startswith("demo-")
    assert [r.path for r in jobs.list_runs(tmp_path)] == [second, first]
    (first / jobs.CONSOLE_FILE).write_bytes(b"epoch 1 10%\repoch 1 50%\repoch 1 100%\ndone\n")
    assert jobs.read_console(first).split("\n") == ["epoch 1 100%", "done", ""]
    assert jobs.list_runs(tmp_path / "missing") == []


def test_train_command_and_presets():
    cmd = jobs.train_command("configs/demo.yaml", ["train.epochs=2"], "/tmp/r", resume=True)
    assert cmd[:4] == [sys.executable, "-m", "asca_core.cli", "train"]
    assert cmd[4:] == ["--config", "configs/demo.yaml", "--set", "train.epochs=2", "--run-dir", "/tmp/r", "--resume"]
    assert all(p.suffix == ".yaml" and p.is_file() for p in jobs.list_presets().values())


def test_stop_signals_the_whole_process_group(tmp_path):
    run_dir = jobs.new_run_dir("group", tmp_path)
    script = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "open(sys.argv[1], 'w').write(str(child.pid)); time.sleep(60)"
    )
    child_file = tmp_path / "child.pid"
    info = jobs._launch([sys.executable, "-c", script, str(child_file)], run_dir, {})
    assert info.state == "starting"
    end = time.monotonic() + 30
    while not child_file.is_file() or not child_file.read_text():
        assert time.monotonic() < end
        time.sleep(0.1)
    child = int(child_file.read_text())
    assert jobs.stop_run(run_dir)
    stopped = wait_for_run(run_dir, lambda i: not i.active, 30)
    assert stopped.state == "stopped"  # stop requested, no status written: not a failure
    child_start = process_start_time(child)
    end = time.monotonic() + 10
    while same_process(child, child_start) and time.monotonic() < end:
        time.sleep(0.1)
    assert not same_process(child, child_start)
    assert not jobs.stop_run(run_dir)


def test_bad_config_is_refused_before_starting(tmp_path):
    from asca_core.errors import ConfigError

    with pytest.raises(ConfigError, match="train.epochs"):
        jobs.start_training(None, ["train.epochs=0"], root=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_start_stop_resume_a_real_training(tmp_path, tiny_demo):
    overrides = [
        f"data.path={tiny_demo}",
        "model.name=asca_pico",
        "train.epochs=3",
        "train.batch_size=8",
        "train.device=cpu",
        "train.num_threads=1",
        "train.warmup_epochs=0",
    ]
    info = jobs.start_training(None, overrides, name="tiny", root=tmp_path)
    assert info.active and (info.path / "requested.yaml").is_file()
    running = wait_for_run(info.path, lambda i: (i.state == "running" and i.epoch >= 1) or not i.active)
    assert running.state == "running", jobs.read_console(info.path)
    assert jobs.stop_run(info.path)
    stopped = wait_for_run(info.path, lambda i: not i.active)
    assert stopped.state == "stopped" and stopped.can_resume
    assert "stopped by SIGTERM" in jobs.read_console(info.path)
    jobs.resume_run(info.path)
    finished = wait_for_run(info.path, lambda i: not i.active)
    assert finished.state == "finished", jobs.read_console(info.path)
    assert [r["epoch"] for r in finished.metrics] == [1, 2, 3]
    assert finished.has_model and not finished.can_resume
    with pytest.raises(CheckpointError):
        jobs.resume_run(info.path)


def test_a_failing_training_shows_its_error(tmp_path):
    info = jobs.start_training(
        None, [f"data.path={tmp_path / 'no-such.csv'}", "model.name=asca_pico"], name="broken", root=tmp_path / "runs"
    )
    failed = wait_for_run(info.path, lambda i: not i.active, 120)
    assert failed.state == "failed"
    assert "no-such.csv" in failed.error
