"""Training as real processes: kill -9 then --resume, SIGTERM, and a 2-process DDP run (gloo)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open
from train_factory import cli_popen, make_tiny_data, run_cli, write_tiny_yaml

from asca_core.train.runstore import RunStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("tiny-data"))


def _wait_for(path: Path, proc, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"training ended (rc {proc.returncode}) before {path.name} appeared:\n{err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def _assert_every_file_loads(run_dir: Path) -> None:
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert files
    for path in files:
        if path.name.startswith("."):
            continue  # a temporary file of the killed writer; never read, removed on resume
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                    handle.get_tensor(key)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())


def test_kill_9_then_resume_completes(data, tmp_path):
    config = write_tiny_yaml(tmp_path / "tiny.yaml", data, "train.epochs=12")
    run_dir = tmp_path / "run"
    proc = cli_popen("train", "--config", str(config), "--run-dir", str(run_dir), "--quiet")
    _wait_for(run_dir / "checkpoints" / "last.state.safetensors", proc)
    still_running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert still_running, "training finished before it could be killed"
    assert RunStore(run_dir).status()["state"] == "running"  # nobody could record the kill
    assert RunStore(run_dir).state() == "crashed"
    _assert_every_file_loads(run_dir)

    done = run_cli("train", "--resume", "--run-dir", str(run_dir), "--quiet")
    assert done.returncode == 0, done.stderr
    store = RunStore(run_dir)
    status = store.status()
    assert status["state"] == "finished" and status["epoch"] == 12 and status["steps"] == 48
    assert [r["epoch"] for r in store.metrics()] == list(range(1, 13))
    assert "resumed " in store.log_path.read_text()
    assert not list(run_dir.rglob(".*.tmp"))
    _assert_every_file_loads(run_dir)


def test_sigterm_stops_cleanly_with_checkpoint(data, tmp_path):
    config = write_tiny_yaml(tmp_path / "tiny.yaml", data, "train.epochs=500")
    run_dir = tmp_path / "run"
    proc = cli_popen("train", "--config", str(config), "--run-dir", str(run_dir), "--quiet")
    _wait_for(run_dir / "checkpoints" / "last.state.safetensors", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    store = RunStore(run_dir)
    status = store.status()
    assert status["state"] == "stopped"
    state = json.loads((run_dir / "checkpoints" / "last.state.json").read_text())
    assert state["step"] == status["steps"] > 0  # the checkpoint holds the last finished step
    assert "stopped by SIGTERM" in store.log_path.read_text()
    assert "stopped:" in out
    _assert_every_file_loads(run_dir)


def test_ddp_two_processes_gloo(data, tmp_path):
    config = write_tiny_yaml(tmp_path / "tiny.yaml", data)
    run_dir = tmp_path / "ddp"
    result = run_cli(
        "train", "--config", str(config), "--run-dir", str(run_dir), "--nproc", "2", "--quiet", timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    store = RunStore(run_dir)
    status = store.status()
    # 32 training clips: 16 per process, batch 8 -> 2 steps per epoch, 2 epochs
    assert status["state"] == "finished" and status["world_size"] == 2
    assert status["steps"] == 4
    assert [r["steps"] for r in store.metrics()] == [2, 4]
    assert json.loads((run_dir / "eval.json").read_text())["n"] == 8  # every test clip, once
    assert "2 process(es)" in store.log_path.read_text()
