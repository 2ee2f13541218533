"""kill -9 at random moments of training never leaves a run that cannot be loaded or resumed.

Each trial starts ``asca train`` (asca_pico on a 48-clip demo set, 4 epochs of 4 steps) and sends
SIGKILL after a seeded random delay counted from the moment the run folder appears, so kills land
in data preparation, normalisation statistics, training steps and checkpoint writes alike. After
the kill every safetensors, JSON, JSONL and YAML file of the run must load; then ``--resume`` must
finish the run. Resuming replays the same seeded stream, so every trial ends with the same weights.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open
from train_factory import cli_popen, make_tiny_data, run_cli, write_tiny_yaml

from asca_core.train.checkpoint import load_model_from_run, load_tensors
from asca_core.train.runstore import RunStore

pytestmark = pytest.mark.slow

TRIALS = 5
EPOCHS = 4
SEED = 8
MAX_DELAY = 4.5  # seconds after config.yaml appears; a whole tiny run takes about 3-6 s here


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crash")
    data = make_tiny_data(folder / "data")
    return write_tiny_yaml(folder / "tiny.yaml", data, f"train.epochs={EPOCHS}")


def every_file_loads(run_dir: Path) -> list[str]:
    """Load every file of a run the way its readers do; return the names checked."""
    checked = []
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue  # hidden files are a killed writer's temporaries: never read, swept on resume
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                    handle.get_tensor(key)
            load_tensors(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
        checked.append(str(path.relative_to(run_dir)))
    store = RunStore(run_dir)
    if store.config_path.is_file():
        store.config()
    for which in ("best", "last"):
        if store.has_checkpoint(which):
            load_model_from_run(run_dir, which)
    return checked


def kill_at_random(config: Path, run_dir: Path, delay: float) -> tuple[bool, list[str]]:
    """Start training, SIGKILL it ``delay`` s after config.yaml appears.

    Returns whether the kill ended the process (rather than training finishing first), and the
    files present just before the kill.
    """
    proc = cli_popen("train", "--config", str(config), "--run-dir", str(run_dir), "--quiet")
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "config.yaml").exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the run folder never appeared"
            time.sleep(0.005)
        time.sleep(delay)
        files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
        proc.send_signal(signal.SIGKILL)  # a no-op when training has already ended
        proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # Killed, not finished: the exit status says which of the two won the race.
    return proc.returncode == -signal.SIGKILL, files


def run_trial(config: Path, run_dir: Path, rng: random.Random) -> tuple[str, dict]:
    """One kill at a random moment, the file check, a resume to the end; the final weights."""
    delay = rng.uniform(0.0, MAX_DELAY)
    alive, files = kill_at_random(config, run_dir, delay)
    while not alive and delay > 0.05:  # finished before the kill: try an earlier moment
        delay *= rng.uniform(0.2, 0.8)
        shutil.rmtree(run_dir)
        alive, files = kill_at_random(config, run_dir, delay)
    context = f"{run_dir.name}: killed {delay:.2f} s after config.yaml, files then: {files}"
    assert alive, f"{context}: training always finished before the kill"
    every_file_loads(run_dir)

    done = run_cli("train", "--resume", "--run-dir", str(run_dir), "--quiet")
    assert done.returncode == 0, f"{context}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
    store = RunStore(run_dir)
    status = store.status()
    assert status["state"] == "finished" and status["epoch"] == EPOCHS, context
    assert [r["epoch"] for r in store.metrics()] == list(range(1, EPOCHS + 1)), context
    assert not list(run_dir.rglob(".*.tmp")), context  # the killed writer's temporaries are gone
    checked = every_file_loads(run_dir)
    assert {
        "checkpoints/best.safetensors",
        "checkpoints/last.safetensors",
        "labels.json",
        "status.json",
        "metrics.jsonl",
        "config.yaml",
    } <= set(checked), context
    return context, load_tensors(run_dir / "checkpoints" / "last.safetensors")[0]


def test_kill_9_at_random_moments_then_resume(tiny_yaml, tmp_path):
    # Two trials at a time: most of a trial is waiting (start-up, the random delay), and each
    # training process uses one thread.
    rngs = [random.Random(SEED * 1000 + trial) for trial in range(TRIALS)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        finals = list(pool.map(lambda t: run_trial(tiny_yaml, tmp_path / f"trial{t}", rngs[t]), range(TRIALS)))
    for context, _ in finals:
        print(context)

    # killed anywhere, then resumed: the same weights as every other trial, to the bit
    reference_context, reference = finals[0]
    for context, tensors in finals[1:]:
        assert tensors.keys() == reference.keys()
        different = [k for k in reference if not bool((tensors[k] == reference[k]).all())]
        assert not different, f"{context} differs from {reference_context} in {different[:3]}"


MID_EPOCH_TRIALS = 10
TRAINING_STARTED = "training "  # the log line written just before the first step of a session


def kill_mid_epoch(config: Path, run_dir: Path, delay: float) -> tuple[bool, str]:
    """Start training, SIGKILL it ``delay`` s after its first training step begins.

    Returns whether the kill ended the process inside the epoch loop (not before training
    started, not after it finished) and the log as it was at the kill.
    """
    proc = cli_popen("train", "--config", str(config), "--run-dir", str(run_dir), "--quiet")
    log = run_dir / "log.txt"
    try:
        deadline = time.monotonic() + 300
        while TRAINING_STARTED not in (log.read_text() if log.is_file() else ""):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = log.read_text()
    in_loop = proc.returncode == -signal.SIGKILL and len(RunStore(run_dir).metrics()) < EPOCHS
    return in_loop, text


def mid_epoch_trial(config: Path, run_dir: Path, rng: random.Random) -> tuple[str, dict]:
    delay = rng.uniform(0.0, 1.5)
    killed, log = kill_mid_epoch(config, run_dir, delay)
    while not killed and delay > 0.01:  # training ended first: an earlier moment
        delay *= rng.uniform(0.2, 0.8)
        shutil.rmtree(run_dir)
        killed, log = kill_mid_epoch(config, run_dir, delay)
    done_epochs = len(RunStore(run_dir).metrics())
    context = f"{run_dir.name}: killed {delay:.2f} s into training, {done_epochs} epochs done; log:\n{log[-800:]}"
    assert killed, f"{context}: training always finished before the kill"
    every_file_loads(run_dir)

    done = run_cli("train", "--resume", "--run-dir", str(run_dir), "--quiet")
    assert done.returncode == 0, f"{context}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
    store = RunStore(run_dir)
    assert store.status()["state"] == "finished", context
    assert [r["epoch"] for r in store.metrics()] == list(range(1, EPOCHS + 1)), context
    log_text = store.log_path.read_text()
    if done_epochs > 1:
        assert "resumed" in log_text, context
    elif done_epochs == 1:  # the kill may have landed between epoch 1's metrics row and its state
        assert "resumed" in log_text or "starting over" in log_text, context
    checked = every_file_loads(run_dir)
    assert {"checkpoints/best.safetensors", "checkpoints/last.safetensors", "metrics.jsonl"} <= set(checked)
    return context, load_tensors(run_dir / "checkpoints" / "last.safetensors")[0]


def test_kill_9_in_the_middle_of_an_epoch_ten_times_then_resume(tiny_yaml, tmp_path):
    rngs = [random.Random(SEED * 7 + trial) for trial in range(MID_EPOCH_TRIALS)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        finals = list(
            pool.map(lambda t: mid_epoch_trial(tiny_yaml, tmp_path / f"mid{t}", rngs[t]), range(MID_EPOCH_TRIALS))
        )
    assert len(finals) == MID_EPOCH_TRIALS
    reference_context, reference = finals[0]
    for context, tensors in finals[1:]:
        different = [k for k in reference if not bool((tensors[k] == reference[k]).all())]
        assert not different, f"{context} differs from {reference_context} in {different[:3]}"
