"""One writer per run folder (downstream/training/run_lock.py): real processes hold and contend for the lock, a
holder is killed with SIGKILL, a holder on another host is judged by its heartbeat, two launches of one run
start at once, a sweep is relaunched while one of its jobs still trains, and the command printed after Ctrl-C
in a sweep is run as printed."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from downstream.training.run_lock import (
    HOLDER_FILE,
    RunFolderLockedError,
    acquire_run_folder,
    hold_run_folders,
    holds_run_folder,
    release_run_folder,
)
from tests.helpers import REPO_ROOT, TINY_UPSTREAM, launch_timeout_s

HOLD = (
    "import sys, time; from pathlib import Path; from downstream.training.run_lock import acquire_run_folder; "
    "acquire_run_folder(Path(sys.argv[1])); print('held', flush=True); time.sleep(3600)"
)


def environment() -> dict[str, str]:
    return dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")


def holder(run_dir: Path) -> subprocess.Popen:
    """Another process that takes ``run_dir``'s lock and keeps it until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)],
        cwd=REPO_ROOT,
        env=environment(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "held", "the holder could not take the lock"
    return process


def test_a_held_folder_is_refused_naming_the_holder_and_taken_over_once_it_is_killed(tmp_path, caplog):
    run_dir = tmp_path / "run"
    other = holder(run_dir)
    try:
        with pytest.raises(RunFolderLockedError) as refused:
            acquire_run_folder(run_dir)
        message = str(refused.value)
        assert (
            f"{run_dir} is in use by pid {other.pid} on host {socket.gethostname()}, training since "
            in message
        )
        assert "Wait for that launch to end" in message and "docs/faults.md" in message
        assert not holds_run_folder(run_dir)
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait(timeout=60)
    caplog.set_level(logging.INFO)
    with hold_run_folders([run_dir]):
        assert f"taking over the lock of {run_dir} left by pid {other.pid}" in caplog.text
        assert "that process is no longer running" in caplog.text
        assert json.loads((run_dir / HOLDER_FILE).read_text())["pid"] == os.getpid()
    assert not (run_dir / HOLDER_FILE).exists()  # a clean release leaves no record


def test_the_lock_is_counted_within_one_process(tmp_path):
    run_dir = tmp_path / "run"
    with hold_run_folders([run_dir]):
        with hold_run_folders([run_dir]):  # the shared-upstream launcher, then the runner
            pass
        assert holds_run_folder(run_dir)
    assert not holds_run_folder(run_dir)


def write_record(run_dir: Path, host: str, heartbeat_age_s: float, slurm_job: str | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    record = {"host": host, "pid": 4242, "started": now - 3600, "heartbeat": now - heartbeat_age_s}
    (run_dir / HOLDER_FILE).write_text(json.dumps({**record, "slurm_job": slurm_job}))


def test_a_holder_on_another_host_is_judged_by_its_heartbeat(tmp_path, monkeypatch, caplog):
    """Where the file system does not pass locks between hosts, only the holder's record shows it is alive."""
    monkeypatch.setenv("SSL_BENCH_LOCK_STALE_S", "600")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run_dir = tmp_path / "run"
    write_record(run_dir, "node-elsewhere", heartbeat_age_s=30)
    with pytest.raises(RunFolderLockedError, match=r"pid 4242 on host node-elsewhere.*heartbeat 30 s ago"):
        acquire_run_folder(run_dir)
    write_record(run_dir, "node-elsewhere", heartbeat_age_s=601)
    caplog.set_level(logging.WARNING)
    acquire_run_folder(run_dir)
    release_run_folder(run_dir)
    assert (
        "left by pid 4242 on host node-elsewhere" in caplog.text and "no heartbeat for 601 s" in caplog.text
    )
    # a requeued SLURM job (same job id) takes over its own earlier run at once
    write_record(run_dir, "node-elsewhere", heartbeat_age_s=5, slurm_job="777")
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    acquire_run_folder(run_dir)
    release_run_folder(run_dir)
    assert "an earlier run of this SLURM job (777), requeued" in caplog.text


def test_the_heartbeat_is_refreshed_while_the_lock_is_held(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_LOCK_HEARTBEAT_S", "0.05")
    run_dir = tmp_path / "run"
    with hold_run_folders([run_dir]):
        first = json.loads((run_dir / HOLDER_FILE).read_text())["heartbeat"]
        deadline = time.monotonic() + 60
        while json.loads((run_dir / HOLDER_FILE).read_text())["heartbeat"] == first:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.05)


# -- launches of run_downstream.py -------------------------------------------------------------------------

LONG = [
    *TINY_UPSTREAM,
    "trainer.max_steps=120",
    "trainer.eval_every=60",
    "trainer.save_every=3",
    "trainer.batch_size=2",
    "trainer.limit_eval_batches=1",
    "trainer.log_every=1",
]


def start(arguments: list[str], cwd: Path = REPO_ROOT, script: str = "run_downstream.py") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, script, *arguments],
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(arguments: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """``python run_downstream.py ARGUMENTS`` to its end, whatever its exit status."""
    return subprocess.run(
        [sys.executable, "run_downstream.py", *arguments],
        cwd=REPO_ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


@pytest.mark.slow
def test_two_launches_into_one_folder_the_second_stops_at_once_naming_the_first(tmp_path):
    run_dir = tmp_path / "run"
    endless = [*LONG, "trainer.max_steps=100000", "trainer.eval_every=100000"]  # trains until stopped
    timeout_s = launch_timeout_s(updates=0, launches=2)
    first = start([*endless, f"hydra.run.dir={run_dir}"])
    wait_for(run_dir / "last.pt", first, timeout_s)  # training, holding the lock
    second = run_cli([*endless, f"hydra.run.dir={run_dir}"], timeout_s)
    assert first.poll() is None, "the first launch must still be training"
    assert second.returncode == 1, second.stderr
    assert second.stderr.startswith(
        f"error: RunFolderLockedError: {run_dir} is in use by pid {first.pid} on host {socket.gethostname()}"
    )
    assert "Traceback" not in second.stderr
    first.send_signal(signal.SIGTERM)  # checkpoint and stop
    _, stderr = first.communicate(timeout=timeout_s)
    assert first.returncode == 75, stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "curve.jsonl").read_text().splitlines()]
    steps = [(r["step"], r["split"]) for r in records]
    assert steps and len(steps) == len(set(steps))  # one writer: every record once
    assert "resumed at step" not in (run_dir / "run_downstream.log").read_text()  # the second never trained


@pytest.mark.slow
def test_a_launch_killed_with_sigkill_leaves_a_lock_the_relaunch_takes_over(tmp_path):
    run_dir = tmp_path / "run"
    timeout_s = launch_timeout_s(updates=120, launches=2)
    killed = start([*LONG, f"hydra.run.dir={run_dir}"])
    wait_for(run_dir / "last.pt", killed, timeout_s)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=timeout_s)
    assert (run_dir / HOLDER_FILE).exists()  # the record a SIGKILL leaves behind
    leftover = run_dir / ".last.pt.zq81x0.tmp"  # as a kill during a checkpoint write leaves it
    leftover.write_bytes((run_dir / "last.pt").read_bytes())
    relaunched = start([*LONG, "trainer.stop_after_steps=1", f"hydra.run.dir={run_dir}"])
    _, stderr = relaunched.communicate(timeout=timeout_s)
    assert relaunched.returncode == 75, stderr[-3000:]
    log_text = (run_dir / "run_downstream.log").read_text()
    assert f"taking over the lock of {run_dir} left by pid {killed.pid}" in log_text
    assert re.search(r"resumed at step \d+ from " + re.escape(str(run_dir / "last.pt")), log_text)
    assert f"removed {leftover}" in log_text and not leftover.exists()


TWO_STEPS = [
    *TINY_UPSTREAM,
    "trainer.max_steps=2",
    "trainer.eval_every=2",
    "trainer.batch_size=2",
    "trainer.limit_eval_batches=1",
]


@pytest.mark.slow
def test_a_relaunched_sweep_skips_finished_jobs_and_refuses_only_the_one_still_running(tmp_path):
    sweep = tmp_path / "sweep"
    common = ["-m", *TWO_STEPS, "hydra/launcher=shared_upstream", f"hydra.sweep.dir={sweep}"]
    timeout_s = launch_timeout_s(updates=6, launches=2)
    done = run_cli([*common, "interface=weighted_sum,last_layer"], timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    (finished,) = sweep.glob("*interface=weighted_sum*")
    (running,) = sweep.glob("*interface=last_layer*")
    (running / "results.json").unlink()  # as if it were still training, in another process that holds it
    other = holder(running)
    try:
        relaunched = run_cli([*common, "interface=weighted_sum,last_layer,cls_pooling"], timeout_s)
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait(timeout=60)
    output = relaunched.stdout + relaunched.stderr
    assert relaunched.returncode == 1, output[-3000:]
    assert f"{running} is in use by pid {other.pid}" in output
    assert f"{finished} already has a complete results.json" in (finished / "run_downstream.log").read_text()
    (new,) = sweep.glob("*interface=cls_pooling*")
    assert (new / "results.json").exists()  # the new job trained
    assert not (running / "results.json").exists()  # the running one was left alone
    assert "continue the sweep" in output and f"hydra.sweep.dir={sweep}" in output


@pytest.mark.slow
def test_the_command_printed_after_ctrl_c_in_a_sweep_resumes_the_same_folder(tmp_path):
    """A sweep in its default, timestamped folder: the printed command continues that folder, not a new one."""
    script = str(REPO_ROOT / "run_downstream.py")
    timeout_s = launch_timeout_s(updates=120, launches=2)
    interrupted = start(["-m", *LONG, "interface=weighted_sum"], cwd=tmp_path, script=script)
    deadline = time.monotonic() + timeout_s
    while not list(tmp_path.glob("multirun/*/*/last.pt")):
        assert interrupted.poll() is None, interrupted.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    interrupted.send_signal(signal.SIGINT)
    _, stderr = interrupted.communicate(timeout=timeout_s)
    assert interrupted.returncode == 130, stderr[-3000:]
    (job,) = tmp_path.glob("multirun/*/*/")
    printed = stderr.split("to resume, run:\n", 1)[1].splitlines()[0].strip()
    assert f"hydra.sweep.dir={job.parent}" in printed
    time.sleep(1.1)  # a new launch would now get another timestamped folder
    resumed = subprocess.run(
        printed, shell=True, env=environment(), capture_output=True, text=True, timeout=timeout_s
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list(tmp_path.glob("multirun/*/*/")) == [job]  # no new sweep folder
    assert re.search(
        r"resumed at step [1-9]\d* from " + re.escape(str(job / "last.pt")),
        (job / "run_downstream.log").read_text(),
    )
    assert json.loads((job / "results.json").read_text())["steps"] == 120
