"""Run folders under misuse: foreign folders, concurrent writers, lost resume state, damaged files.

- A ``--run-dir`` that holds something other than a run is refused, and only the program's own
  temporaries are ever swept.
- One process writes a run: a second trainer, ``--resume`` and the app's Resume are refused while
  it lives; liveness comes from the run's lock and pid + start time, never a bare pid, and Stop
  never signals another process. The app trains one run at a time and shows the rest as queued.
- A run that has trained but lost its resume state stops with a line naming the file and keeps
  its metrics and best checkpoint.
- Every file read back from a run (and a ``--config`` file) in any damaged state gives one line
  naming the file; the app shows that run as damaged and keeps working.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fixtures_app import wait_for_run
from fixtures_runs import PICO_LABELS, write_run
from streamlit.testing.v1 import AppTest
from train_factory import ROOT, make_tiny_data, run_cli, tiny_config, write_tiny_yaml

from asca_core.errors import CheckpointError, ConfigError
from asca_core.train.runstore import RunStore
from workbench import jobs


def one_line(error: BaseException | str) -> str:
    text = str(error)
    assert "\n" not in text.strip() and "Traceback" not in text, text
    return text


def cli_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("hardening") / "data")


@pytest.fixture(scope="module")
def paused_run(tmp_path_factory, tiny_data) -> Path:
    """A two-epoch tiny run paused after its first epoch (metrics row, best, resume state)."""
    from asca_core.train.engine import fit

    run_dir = tmp_path_factory.mktemp("paused") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASCA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "asca-cache"))
        result = fit(tiny_config(tiny_data), run_dir, progress=False, stop_after_epochs=1)
    assert result["state"] == "stopped" and result["epoch"] == 1
    return run_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------- 1. run folders
@pytest.mark.slow
def test_a_run_dir_holding_something_else_is_refused_and_left_alone(tmp_path, tiny_data):
    from asca_core.train.engine import fit

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8 not a run")
    (folder / ".notes.tmp").write_text("mine")
    (folder / "sub" / ".draft.tmp").write_text("mine too")
    before = snapshot(folder)
    with pytest.raises(CheckpointError, match="not empty") as caught:
        fit(tiny_config(tiny_data), folder, progress=False)
    assert str(folder) in one_line(caught.value)
    assert snapshot(folder) == before and sorted(p.name for p in folder.iterdir()) == [
        ".notes.tmp",
        "holiday.jpg",
        "sub",
    ]

    config = write_tiny_yaml(tmp_path / "tiny.yaml", tiny_data)
    line = cli_error(run_cli("train", "--config", str(config), "--run-dir", str(folder), "--quiet"))
    assert "not empty" in line and str(folder) in line
    assert snapshot(folder) == before

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        fit(tiny_config(tiny_data), a_file, progress=False)


def test_only_the_programs_own_temporaries_are_swept(tmp_path, tiny_data):
    from asca_core.train.engine import Trainer

    run_dir = tmp_path / "run"
    run = RunStore(run_dir)
    run.create(tiny_config(tiny_data), ["a", "b"])
    ours = [
        ".status.json.k2j4h5_x.tmp",
        ".config.yaml.abcdefgh.tmp",
        "checkpoints/.last.safetensors.q1w2e3r4.tmp",
        "checkpoints/.last.state.safetensors.zz99yy88.tmp",
        "eval/.epoch_003.json.a1b2c3d4.tmp",
    ]
    foreign = [
        ".notes.tmp",
        "sub/.draft.tmp",
        ".holiday.jpg.abcdefgh.tmp",
        "sub/.status.json.abcdefgh.tmp",
        "checkpoints/.mine.tmp",
        "eval/.x.tmp",
    ]
    for name in ours + foreign:
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text("half")
    trainer = Trainer(tiny_config(tiny_data), run_dir, resume=True, progress=False, echo=None, stop_after_epochs=None)
    trainer.prepare_run_dir()
    assert not [n for n in ours if (run_dir / n).exists()]
    assert [n for n in foreign if (run_dir / n).exists()] == foreign


def test_a_fresh_run_dir_may_hold_what_the_app_puts_there(tmp_path, tiny_data):
    from asca_core.train.engine import Trainer

    run_dir = jobs.new_run_dir("fresh", tmp_path)
    (run_dir / jobs.CONSOLE_FILE).write_text("$ asca train\n")
    (run_dir / jobs.JOB_FILE).write_text(json.dumps({"pid": 1}))
    (run_dir / "requested.yaml").write_text("train: {}\n")
    trainer = Trainer(tiny_config(tiny_data), run_dir, resume=False, progress=False, echo=None, stop_after_epochs=None)
    trainer.prepare_run_dir()
    assert RunStore(run_dir).exists()


# ------------------------------------------------------------------------- 2. one writer per run
def lock_api():
    from asca_core.train import runstore

    return runstore.RunLock, runstore.TrainingSlot, runstore.process_start_time


HOLDER = (
    "import sys, time; from asca_core.train.runstore import RunLock; "
    "lock = RunLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(120)"
)


@pytest.fixture
def held_run(paused_run, tmp_path):
    """A copy of the paused run whose lock another live process holds."""
    run_dir = tmp_path / "held"
    shutil.copytree(paused_run, run_dir)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "held"
    yield run_dir, holder
    holder.kill()
    holder.wait()


def test_a_run_held_by_a_live_process_is_not_resumed(held_run):
    from asca_core.train.engine import fit

    run_dir, holder = held_run
    before = snapshot(run_dir)
    line = cli_error(run_cli("train", "--resume", "--run-dir", str(run_dir), "--quiet"))
    assert str(run_dir) in line and str(holder.pid) in line
    with pytest.raises(CheckpointError, match=str(holder.pid)) as caught:
        fit(None, run_dir, resume=True, progress=False)
    one_line(caught.value)
    with pytest.raises(CheckpointError, match="being trained"):
        jobs.resume_run(run_dir)
    assert snapshot(run_dir) == before  # nothing written: not status, not log, not metrics
    assert holder.poll() is None
    info = jobs.run_info(run_dir)
    assert info.active and info.pid == holder.pid


def test_the_lock_is_held_for_the_whole_training(tmp_path, tiny_data):
    from asca_core.train.engine import fit

    RunLock, _, _ = lock_api()
    run_dir = tmp_path / "run"
    seen = []

    def echo(line: str) -> None:
        seen.append(RunLock.holder(run_dir))

    fit(tiny_config(tiny_data), run_dir, progress=False, echo=echo)
    assert seen and all(h is not None and h["pid"] == os.getpid() for h in seen)
    assert RunLock.holder(run_dir) is None  # released at the end
    assert jobs.run_info(run_dir).state == "finished"


def test_a_reused_pid_never_looks_running_and_is_never_signalled(tmp_path):
    me = lock_api()[2](os.getpid())
    assert me is not None
    # a trainer that had this process's pid once: the pid is alive again, its start time is not
    reused = tmp_path / "reused"
    reused.mkdir()
    (reused / "config.yaml").write_text("train: {}\n")
    (reused / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid(), "pid_start": me + 1}))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid()}))
    job = tmp_path / "job"
    job.mkdir()
    (job / jobs.JOB_FILE).write_text(json.dumps({"pid": os.getpid(), "start_time": me + 7, "started_ts": time.time()}))
    (job / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid()}))
    for folder in (reused, bare, job):
        info = jobs.run_info(folder)
        assert not info.active, (folder.name, info.state)
        assert RunStore(folder).state() != "running"
        assert not jobs.stop_run(folder)  # and this process is still here to say so
    # a live stranger whose pid a status.json names, without its start time
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (bare / "status.json").write_text(json.dumps({"state": "running", "pid": stranger.pid}))
        assert not jobs.run_info(bare).active and not jobs.stop_run(bare)
        time.sleep(0.2)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.slow
def test_the_app_trains_one_run_at_a_time_and_shows_the_rest_queued(tmp_path, tiny_demo):
    overrides = [
        f"data.path={tiny_demo}",
        "model.name=asca_pico",
        "train.epochs=1",
        "train.batch_size=8",
        "train.device=cpu",
        "train.num_threads=1",
        "train.warmup_epochs=0",
    ]
    slot = lock_api()[1](jobs.training_slot_path())
    assert slot.acquire(wait=False)  # another training has the machine
    try:
        first = jobs.start_training(None, overrides, name="first", root=tmp_path)
        second = jobs.start_training(None, overrides, name="second", root=tmp_path)
        for info in (first, second):
            queued = wait_for_run(info.path, lambda i: i.state == "queued" or not i.active)
            assert queued.state == "queued" and queued.active, jobs.read_console(info.path)
        assert {r.state for r in jobs.list_runs(tmp_path)} == {"queued"}
        assert jobs.stop_run(second.path)  # Stop works while queued
        stopped = wait_for_run(second.path, lambda i: not i.active)
        assert stopped.state == "stopped", jobs.read_console(second.path)
    finally:
        slot.release()
    done = wait_for_run(first.path, lambda i: not i.active)
    assert done.state == "finished", jobs.read_console(first.path)
    assert "queued" in jobs.read_console(first.path)


# ------------------------------------------------------------------------- 3. resume integrity
@pytest.mark.parametrize("damage", ["missing", "garbage", "directory"])
@pytest.mark.slow
def test_a_trained_run_without_its_resume_state_is_not_restarted(paused_run, tmp_path, damage):
    from asca_core.train.engine import fit

    run_dir = tmp_path / "run"
    shutil.copytree(paused_run, run_dir)
    state = run_dir / "checkpoints" / "last.state.safetensors"
    state.unlink()
    if damage == "garbage":
        state.write_bytes(b"\x00\x01 not safetensors")
    elif damage == "directory":
        state.mkdir()
    metrics, best = (
        (run_dir / "metrics.jsonl").read_bytes(),
        (run_dir / "checkpoints" / "best.safetensors").read_bytes(),
    )
    with pytest.raises(CheckpointError, match="last.state.safetensors") as caught:
        fit(None, run_dir, resume=True, progress=False)
    one_line(caught.value)
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics
    assert (run_dir / "checkpoints" / "best.safetensors").read_bytes() == best
    if damage == "missing":
        line = cli_error(run_cli("train", "--resume", "--run-dir", str(run_dir), "--quiet"))
        assert "last.state.safetensors" in line
        assert (run_dir / "metrics.jsonl").read_bytes() == metrics


def test_a_run_killed_before_its_first_checkpoint_starts_over(paused_run, tmp_path):
    from asca_core.train.engine import fit

    run_dir = tmp_path / "early"
    run_dir.mkdir()
    for name in ("config.yaml", "labels.json"):
        shutil.copy(paused_run / name, run_dir / name)
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "pid": 999999, "epoch": 0}))
    result = fit(None, run_dir, resume=True, progress=False)
    assert result["state"] == "finished"
    assert [r["epoch"] for r in RunStore(run_dir).metrics()] == [1, 2]


# ------------------------------------------------------------------------- 4. files read back
BINARY = b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00\x00binary"
FILES = ["config.yaml", "status.json", "metrics.jsonl", "labels.json", "eval.json", "eval/epoch_001.json", "job.json"]
WRONG_TYPE = {
    "config.yaml": "[1, 2, 3]\n",
    "status.json": '["running"]\n',
    "metrics.jsonl": '{"epoch": 1}\n[1, 2]\n',
    "labels.json": '{"a": 1}\n',
    "eval.json": '"text"\n',
    "eval/epoch_001.json": "42\n",
    "job.json": "[12]\n",
}
DAMAGE = ["binary", "latin1", "wrong_type", "directory", "fifo", "unreadable"]


def damage(path: Path, kind: str, monkeypatch) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "binary":
        path.write_bytes(BINARY)
    elif kind == "latin1":
        path.write_bytes('{"état": "arrêté"}\n'.encode("latin-1"))
    elif kind == "wrong_type":
        path.write_text(WRONG_TYPE.get(path.name, WRONG_TYPE.get(f"eval/{path.name}", "[1]\n")))
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_text("x")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "unreadable":  # tests run as root, where chmod 000 changes nothing: refuse the open
        path.write_text("{}\n")
        real_open = os.open
        target = str(path)

        def refusing_open(file, flags, *args, **kwargs):
            if os.fspath(file) == target:
                raise PermissionError(13, "Permission denied", target)
            return real_open(file, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)


def _with_deadline(call, seconds: float = 30.0):
    """Run ``call`` in a thread; a reader stuck on a FIFO fails the test instead of hanging it."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the reader hung"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _full_run(folder: Path) -> Path:
    from fixtures_runs import PICO_CONFIG

    from asca_core.config import Config

    write_run(folder, Config.from_dict(PICO_CONFIG), PICO_LABELS)
    (folder / "status.json").write_text(json.dumps({"state": "finished", "epoch": 1, "best_epoch": 1}))
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 0.5, "val_map": 0.4}) + "\n")
    (folder / "eval.json").write_text(json.dumps({"labels": PICO_LABELS, "acc": 0.5}))
    (folder / "eval").mkdir()
    (folder / "eval" / "epoch_001.json").write_text(json.dumps({"labels": PICO_LABELS, "epoch": 1}))
    (folder / "job.json").write_text(json.dumps({"pid": 999999, "start_time": 1, "started_ts": 1.0}))
    return folder


READERS = {
    "config.yaml": lambda s: s.config(),
    "status.json": lambda s: s.status(),
    "metrics.jsonl": lambda s: s.metrics(),
    "labels.json": lambda s: s.labels(),
    "eval.json": lambda s: s.eval_details(),
    "eval/epoch_001.json": lambda s: s.eval_details(1),
}


@pytest.mark.parametrize("kind", DAMAGE)
@pytest.mark.parametrize("name", FILES)
@pytest.mark.slow
def test_a_damaged_run_file_is_one_line_and_one_damaged_run(tmp_path, monkeypatch, name, kind):
    good = _full_run(tmp_path / "good")
    bad = _full_run(tmp_path / "bad")
    damage(bad / name, kind, monkeypatch)
    if name in READERS:
        with pytest.raises(CheckpointError) as caught:
            _with_deadline(lambda: READERS[name](RunStore(bad)))
        assert str(bad / name) in one_line(caught.value)
    info = _with_deadline(lambda: jobs.run_info(bad))
    assert info.state == "damaged" and not info.active and not info.has_model and not info.can_resume
    assert str(bad / name) in one_line(info.error)
    listed = {r.name: r.state for r in _with_deadline(lambda: jobs.list_runs(tmp_path))}
    assert listed == {"good": "finished", "bad": "damaged"}
    assert jobs.run_info(good).summary()["model"] == "asca_pico CCCT"
    assert info.summary()["state"] == "damaged"


@pytest.mark.parametrize("kind", ["binary", "latin1", "wrong_type", "directory", "fifo", "unreadable"])
def test_a_damaged_config_file_is_one_line(tmp_path, monkeypatch, kind):
    from asca_core.config import load_config

    path = tmp_path / "preset.yaml"
    damage(path, kind, monkeypatch)
    with pytest.raises(ConfigError) as caught:
        _with_deadline(lambda: load_config(path))
    assert str(path) in one_line(caught.value)


@pytest.mark.parametrize("kind", ["binary", "directory", "fifo"])
def test_asca_train_with_a_damaged_config_is_one_line(tmp_path, kind):
    path = tmp_path / "preset.yaml"
    damage(path, kind, None)
    line = cli_error(
        run_cli("train", "--config", str(path), "--run-dir", str(tmp_path / "run"), "--quiet", timeout=120)
    )
    assert str(path) in line
    assert not (tmp_path / "run").exists()


BAD_HEADERS = {
    "labels not JSON": {"labels": "not json"},
    "labels a mapping": {"labels": json.dumps({"a": 1})},
    "labels not strings": {"labels": json.dumps([1, 2, 3, 4])},
    "labels empty": {"labels": "[]"},
    "labels fewer than the head": {"labels": json.dumps(PICO_LABELS[:3])},
    "config not a mapping": {"config": "- 1\n- 2\n"},
    "config binary": {"config": "\x00\x01\x02"},
    "epoch not a number": {"epoch": "soon"},
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_a_checkpoint_with_a_bad_header_is_one_line(tmp_path, case):
    import torch
    from fixtures_runs import PICO_CONFIG

    from asca_core.config import Config
    from asca_core.train.checkpoint import checkpoint_metadata, load_model_from_run, model_from_config, save_model
    from asca_core.train.engine import evaluate

    cfg = Config.from_dict(PICO_CONFIG)
    run_dir = write_run(tmp_path / "run", cfg, PICO_LABELS)
    torch.manual_seed(0)
    meta = {**checkpoint_metadata(cfg, PICO_LABELS, epoch=1), **BAD_HEADERS[case]}
    path = run_dir / "checkpoints" / "best.safetensors"
    save_model(path, model_from_config(cfg, len(PICO_LABELS)), meta)
    with pytest.raises(CheckpointError) as caught:
        load_model_from_run(run_dir)
        evaluate(run_dir)  # the epoch number is read from the header here
    assert str(path) in one_line(caught.value)


def test_run_labels_that_do_not_match_the_checkpoint_are_one_line(tmp_path):
    from asca_core.inference import Classifier

    run_dir = _full_run(tmp_path / "run")
    (run_dir / "labels.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(CheckpointError) as caught:
        Classifier.from_run(run_dir)
    assert "labels.json" in one_line(caught.value)
    assert jobs.run_info(run_dir).state == "damaged"


@pytest.mark.slow
def test_every_page_keeps_working_beside_a_damaged_run(runs_root, tiny_run):
    damaged = runs_root / "zz-damaged"
    shutil.copytree(tiny_run, damaged)
    (damaged / "config.yaml").write_bytes(BINARY)
    (damaged / "eval.json").write_bytes(BINARY)
    try:
        for name in ("train", "runs", "attention", "classify"):
            at = AppTest.from_file(str(ROOT / "workbench" / "pages" / f"{name}.py"), default_timeout=240).run()
            assert not at.exception, (name, [e.value for e in at.exception])
            assert not at.error, (name, [e.value for e in at.error])
            if name == "train":
                table = at.dataframe[0].value
                states = dict(zip(table["run"], table["state"]))
                assert states[damaged.name] == "damaged" and states[tiny_run.name] == "finished"
        at = AppTest.from_file(str(ROOT / "workbench" / "pages" / "train.py"), default_timeout=240).run()
        at.selectbox(key="tr_selected").set_value(damaged.name).run()
        assert not at.exception
        assert any("config.yaml" in w.value for w in at.warning), [w.value for w in at.warning]
    finally:
        shutil.rmtree(damaged)


@pytest.mark.slow
def test_asca_eval_of_a_damaged_run_is_one_line(tmp_path):
    run_dir = _full_run(tmp_path / "run")
    (run_dir / "checkpoints" / "best.safetensors").unlink()
    os.mkfifo(run_dir / "checkpoints" / "best.safetensors")
    line = cli_error(run_cli("eval", str(run_dir), timeout=120))
    assert "best.safetensors" in line


def test_a_run_killed_while_writing_its_first_epoch_resumes_by_redoing_it(paused_run, tmp_path):
    """kill -9 after epoch 1's metrics row and best checkpoint, before its resume state and status."""
    import json

    from asca_core.train.engine import fit

    run_dir = tmp_path / "run"
    shutil.copytree(paused_run, run_dir)
    for name in ("last.state.safetensors", "last.state.json", "last.safetensors"):
        (run_dir / "checkpoints" / name).unlink(missing_ok=True)
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "running", "epoch": 0}))
    result = fit(None, run_dir, resume=True, progress=False)
    assert result["state"] == "finished" and result["epoch"] == 2
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert "starting over" in (run_dir / "log.txt").read_text()
