"""Sweeps on a real one-node SLURM cluster (the ``slurm_cluster`` fixture, tests/slurm_cluster.py), and the
shared-upstream launcher's grouping, logs and exit status.

Every SLURM scenario runs the tiny upstream on the mini corpus with one thread per job, and its results are
compared with in-process runs of the same settings (``assert_same_run``: results.json, curve and best.pt).

The time limit, cheaply and for real: SLURM's shortest time limit is one minute, and slurmctld checks time
limits every 30 s, sending a job's ``--signal=SIG@N`` once fewer than N + 30 s are left. With ``--time=1``
and N = 1 s, SLURM signals a job 29 to 59 s after it starts. So that the first launch is surely still
training then, the test stops its Python process with SIGSTOP right after its first checkpoint; SLURM sends
SIGCONT with its signal, and from there on the checkpoint, the requeue and the resume are SLURM's,
submitit's and the runner's own doing. A later launch that is itself signalled before it finishes is simply
requeued again (the tests assert the outcome, not the number of launches).

The scenarios run at once (the module fixture ``scenarios`` starts those the selected tests need, each in a
thread), so their waits for SLURM's time-limit checks overlap; the test partition lets jobs share CPUs.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from hydra_plugins.shared_upstream_launcher.launcher import group_jobs
from tests.helpers import REPO_ROOT, TINY_UPSTREAM, assert_same_run, compose_config, launch_timeout_s

# The tiny upstream without its width, which the failure scenario sweeps.
UPSTREAM = [o for o in TINY_UPSTREAM if not o.startswith("upstream.hidden_size=")]
TRAINING = [
    *UPSTREAM,
    "trainer.max_steps=100",
    "trainer.eval_every=20",
    "trainer.save_every=5",
    "trainer.batch_size=2",
    "trainer.limit_eval_batches=2",
    "trainer.log_every=1",
    # one thread, in the SLURM jobs and the in-process references alike: the runner sets torch's threads
    # from trainer.threads (auto: OMP_NUM_THREADS, else the cores), and sums in another order differ
    "trainer.threads=1",
]
WIDTH = "upstream.hidden_size=32"
RESOURCES = ["hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
# One-minute time limit, signal 1 s before it (SLURM sends it 29-59 s after the start).
TIME_LIMITED = ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=1"]
ROOMY = ["hydra.launcher.timeout_min=10"]
SCENARIO_TIMEOUT_S = 420
EXIT_STOPPED_EARLY = 75


# -- helpers ------------------------------------------------------------------------------------------------


def job_env(cluster) -> dict[str, str]:
    """The environment of a launch: this cluster, one thread, W&B off, this interpreter first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return dict(os.environ, **cluster.env, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PATH=path)


def start_sweep(cluster, arguments: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "run_downstream.py", "-m", *arguments],
        cwd=REPO_ROOT,
        env=job_env(cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=SCENARIO_TIMEOUT_S)
    return process.returncode, output


def run_dir_with(sweep: Path, override: str, timeout_s: float = SCENARIO_TIMEOUT_S) -> Path:
    """The job folder of ``sweep`` whose .hydra/overrides.yaml holds ``override`` (waits for it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for overrides in sweep.glob("*/.hydra/overrides.yaml"):
            if override in (yaml.safe_load(overrides.read_text()) or []):
                return overrides.parent.parent
        assert time.monotonic() < deadline, f"no job folder with {override} in {sweep}"
        time.sleep(0.2)


def wait_for(
    path: Path, process: subprocess.Popen | None = None, timeout_s: float = SCENARIO_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the launch ended before {path} appeared:\n{process.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout_s} s"
        time.sleep(0.05)


def first_job(sweep: Path, process: subprocess.Popen, timeout_s: float = SCENARIO_TIMEOUT_S):
    """The SLURM job id of a submitit sweep's first job (``N_0`` in a job array, ``N`` for a single job)
    and the environment variables that mark its processes."""
    deadline = time.monotonic() + timeout_s
    while True:
        for folder in (sweep / ".submitit").glob("*_0"):
            array = folder.name.split("_")[0]
            return f"{array}_0", {"SLURM_ARRAY_JOB_ID": array, "SLURM_ARRAY_TASK_ID": "0"}
        for pickle in (sweep / ".submitit").glob("*/*_submitted.pkl"):
            return pickle.parent.name, {"SLURM_JOB_ID": pickle.parent.name}
        if process.poll() is not None:
            raise AssertionError(f"the sweep ended before it submitted:\n{process.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"nothing submitted under {sweep}/.submitit"
        time.sleep(0.1)


# Sends a signal to a job's Python process (found by SLURM variables in its environment, other than the pid
# to skip) once a file exists that is newer than a given time. It runs as its own process, so that it reacts
# within milliseconds even while the test process is busy.
SIGNAL_JOB = r"""
import os, signal, sys, time
from pathlib import Path

signal_name, path, newer_than_ns, skip_pid, *variables = sys.argv[1:]
path, newer_than_ns, skip_pid = Path(path), int(newer_than_ns), int(skip_pid)
wanted = [v.encode() for v in variables]


def task_pid():
    for proc in Path("/proc").iterdir():
        try:
            program = (proc / "cmdline").read_bytes().split(b"\0")[0]
            environment = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if (
            proc.name != str(skip_pid)
            and b"python" in program.rsplit(b"/", 1)[-1]
            and all(w in environment for w in wanted)
        ):
            return int(proc.name)


pid = None
while pid is None:
    pid = task_pid()
    time.sleep(0.05)
while not (path.exists() and path.stat().st_mtime_ns > newer_than_ns):
    time.sleep(0.005)
os.kill(pid, getattr(signal, signal_name))
print(pid)
"""


def signal_job_when(
    path: Path, signum: str, environment: dict[str, str], newer_than_ns: int = 0, skip_pid: int = 0
) -> subprocess.Popen:
    """Start a watcher that sends ``signum`` (a name) to the job's Python process, found by these SLURM
    variables in its environment (and not ``skip_pid``), as soon as ``path`` exists with a modification
    time after ``newer_than_ns``; ``signal_sent`` waits for it."""
    variables = [f"{key}={value}" for key, value in environment.items()]
    return subprocess.Popen(
        [sys.executable, "-c", SIGNAL_JOB, signum, str(path), str(newer_than_ns), str(skip_pid), *variables],
        stdout=subprocess.PIPE,
        text=True,
    )


def signal_sent(watcher: subprocess.Popen, process: subprocess.Popen | None = None) -> int:
    """Wait for the watcher's signal; returns the pid it was sent to."""
    deadline = time.monotonic() + SCENARIO_TIMEOUT_S
    try:
        while watcher.poll() is None:
            if process is not None and process.poll() is not None:
                raise AssertionError(f"the launch ended before the signal:\n{process.stdout.read()[-3000:]}")
            assert time.monotonic() < deadline, "no signal within the scenario's time"
            time.sleep(0.1)
    finally:
        watcher.kill()
    pid = watcher.stdout.read().strip()
    assert watcher.returncode == 0 and pid, "no signal was sent"
    return int(pid)


def stall_after_checkpoint(
    run_dir: Path, environment: dict[str, str], process=None, newer_than_ns: int = 0, skip_pid: int = 0
) -> int:
    """SIGSTOP the job's Python process as soon as it has written a checkpoint (newer than
    ``newer_than_ns``); SLURM's next signal comes with a SIGCONT and wakes it (see the module docstring).
    Returns the stopped pid."""
    watcher = signal_job_when(run_dir / "last.pt", "SIGSTOP", environment, newer_than_ns, skip_pid)
    return signal_sent(watcher, process)


def log_of(run_dir: Path) -> str:
    return (run_dir / "run_downstream.log").read_text()


def assert_own_final_results(log: str, run_dir: Path) -> None:
    """``log`` holds ``run_dir``'s final results once: the best dev step naming the folder, then one results
    line per split (a job trained in a group gets its own lines, not those of the group's other jobs)."""
    assert re.search(rf"results of the best dev step \d+ \[{re.escape(str(run_dir))}\]", log), log
    for split in ("dev", "test"):
        lines = re.findall(rf"\] - {split}: PER \d+\.\d\d %$", log, flags=re.MULTILINE)
        assert len(lines) == 1, log


def unfinished_messages(output: str) -> list[str]:
    """The launcher's per-job messages ("job #N did not finish: ..." with its indented lines)."""
    return re.findall(r"job #\d+ did not finish:.*?(?=\n\[|\Z)", output, flags=re.DOTALL)


def readme_recipe() -> str:
    """docs/slurm.md's sbatch recipe: the bash block after the marker comment naming this file."""
    readme = (REPO_ROOT / "docs" / "slurm.md").read_text()
    match = re.search(
        r"<!-- tests/test_slurm.py runs this block verbatim[^>]*-->\n```bash\n(.*?)```", readme, re.S
    )
    assert match, "docs/slurm.md has no sbatch recipe block marked for tests/test_slurm.py"
    return match.group(1)


def slurm_job_field(cluster, job_id: str, field: str) -> str:
    out = cluster.run(["scontrol", "show", "job", job_id]).stdout
    match = re.search(rf"\b{field}=(\S+)", out)
    assert match, f"no {field} in scontrol show job {job_id}:\n{out}"
    return match.group(1)


# -- the scenarios, started together ------------------------------------------------------------------------


def sweep_and_relaunch(cluster, tmp: Path) -> dict:
    sweep = tmp / "sweep"
    arguments = [
        "interface=weighted_sum,last_layer",
        WIDTH,
        *TRAINING,
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={cluster.partition}",
        *RESOURCES,
        *ROOMY,
        f"hydra.sweep.dir={sweep}",
    ]
    first = finish(start_sweep(cluster, arguments))
    dirs = {name: run_dir_with(sweep, f"interface={name}", 0) for name in ("weighted_sum", "last_layer")}
    results_mtimes = {name: (d / "results.json").stat().st_mtime_ns for name, d in dirs.items()}
    submissions_before = set((sweep / ".submitit").iterdir())
    second = finish(start_sweep(cluster, arguments))
    return dict(
        first=first,
        second=second,
        dirs=dirs,
        # submitit writes every submission of this sweep (its script and pickles) into .submitit/<job id>
        new_submissions=set((sweep / ".submitit").iterdir()) - submissions_before,
        results_rewritten=[
            n for n, d in dirs.items() if (d / "results.json").stat().st_mtime_ns != results_mtimes[n]
        ],
    )


def time_limit_with_a_failing_job(cluster, tmp: Path) -> dict:
    """Three jobs: upstream.hidden_size=32 reaches its time limit and is requeued; =30 fails before training
    (not a multiple of the 4 heads), so its run folder is removed; =16 is killed with SIGKILL (as the
    out-of-memory killer would) as soon as it runs, so SLURM ends it without a result."""
    sweep = tmp / "time_limit"
    process = start_sweep(
        cluster,
        [
            "interface=weighted_sum",
            "upstream.hidden_size=32,30,16",
            *TRAINING,
            "hydra/launcher=slurm",
            *RESOURCES,
            *TIME_LIMITED,
            "hydra.launcher.max_num_timeout=3",
            f"hydra.sweep.dir={sweep}",
        ],
    )
    run_dir = run_dir_with(sweep, WIDTH)
    job_id, environment = first_job(sweep, process)
    # job 2's process is killed as soon as it runs; job 0 stalls after its first checkpoint
    task_2 = {"SLURM_ARRAY_JOB_ID": environment["SLURM_ARRAY_JOB_ID"], "SLURM_ARRAY_TASK_ID": "2"}
    kill = signal_job_when(sweep, "SIGKILL", task_2)
    stall_after_checkpoint(run_dir, environment, process)
    signal_sent(kill, process)
    code, output = finish(process)
    submitit_log = "".join(p.read_text() for p in (sweep / ".submitit").glob(f"{job_id}/*_log.*"))
    return dict(
        code=code,
        output=output,
        run_dir=run_dir,
        submitit_log=submitit_log,
        sweep=sweep,
    )


def time_limit_too_often(cluster, tmp: Path) -> dict:
    """max_num_timeout=0: the first time limit ends the job; the printed command continues it."""
    sweep = tmp / "give_up"
    process = start_sweep(
        cluster,
        [
            "interface=weighted_sum",
            WIDTH,
            *TRAINING,
            "hydra/launcher=slurm",
            *RESOURCES,
            *TIME_LIMITED,
            "hydra.launcher.max_num_timeout=0",
            f"hydra.sweep.dir={sweep}",
        ],
    )
    run_dir = run_dir_with(sweep, WIDTH)
    stall_after_checkpoint(run_dir, first_job(sweep, process)[1], process)
    code, output = finish(process)
    gave_up = dict(code=code, output=output)
    # Continue with the printed command, as a user would; a continuation that meets the one-minute limit
    # again is reported the same way and continued again.
    continuations = []
    for _ in range(3):
        messages = unfinished_messages(output)
        if code == 0 or len(messages) != 1:
            break
        command = re.search(r"continue it: (.*)", messages[0]).group(1)
        arguments = shlex.split(command)
        assert arguments[:2] == ["python", "run_downstream.py"], command
        code, output = finish(start_sweep(cluster, arguments[2:]))
        continuations.append((command, code, output))
    return dict(gave_up=gave_up, continuations=continuations, run_dir=run_dir, sweep=sweep)


def shared_group_time_limit_then_preempted(cluster, tmp: Path) -> dict:
    """hydra/launcher=shared_upstream_slurm: two interfaces in one SLURM job. Launch 1 reaches the time
    limit (submitit requeues the group); launch 2 is requeued with scontrol requeue after a checkpoint of its
    own (SIGTERM); launch 3 finishes."""
    sweep = tmp / "shared"
    process = start_sweep(
        cluster,
        [
            "interface=weighted_sum,last_layer",
            WIDTH,
            *TRAINING,
            "hydra/launcher=shared_upstream_slurm",
            *RESOURCES,
            *TIME_LIMITED,
            "hydra.launcher.max_num_timeout=3",
            f"hydra.sweep.dir={sweep}",
        ],
    )
    dirs = {name: run_dir_with(sweep, f"interface={name}") for name in ("weighted_sum", "last_layer")}
    job_id, environment = first_job(sweep, process)
    checkpoint = dirs["weighted_sum"] / "last.pt"
    first = stall_after_checkpoint(dirs["weighted_sum"], environment, process)
    while Path(f"/proc/{first}").exists():  # launch 1 checkpoints at the time limit and is requeued
        time.sleep(0.1)
    second = stall_after_checkpoint(
        dirs["weighted_sum"],
        environment,
        process,
        newer_than_ns=checkpoint.stat().st_mtime_ns,
        skip_pid=first,
    )
    cluster.run(["scontrol", "requeue", job_id])  # SLURM's SIGCONT and SIGTERM wake launch 2
    code, output = finish(process)
    submitit_log = "".join(p.read_text() for p in (sweep / ".submitit").glob(f"{job_id}/*_log.*"))
    return dict(code=code, output=output, dirs=dirs, launches=(first, second), submitit_log=submitit_log)


def sbatch_recipe(cluster, tmp: Path) -> dict:
    """docs/slurm.md's sbatch script, verbatim, with a one-minute limit and a 1 s signal delay."""
    script = tmp / "train.sbatch"
    script.write_text(readme_recipe())
    run_dir = tmp / "recipe_run"
    output_file = tmp / "recipe.out"
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--partition={cluster.partition}",
            "--cpus-per-task=1",
            "--mem=1G",
            "--time=1",
            "--signal=TERM@1",
            f"--output={output_file}",
            str(script),
            WIDTH,
            *TRAINING,
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO_ROOT,
        env=job_env(cluster),
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    stall_after_checkpoint(run_dir, {"SLURM_JOB_ID": job_id})
    deadline = time.monotonic() + SCENARIO_TIMEOUT_S
    while (state := slurm_job_field(cluster, job_id, "JobState")) not in ("COMPLETED", "FAILED", "CANCELLED"):
        assert time.monotonic() < deadline, f"job {job_id} still {state}"
        time.sleep(1)
    return dict(
        state=state,
        exit_code=slurm_job_field(cluster, job_id, "ExitCode"),
        restarts=int(slurm_job_field(cluster, job_id, "Restarts")),
        output=output_file.read_text(),
        run_dir=run_dir,
    )


SCENARIOS = {
    "test_two_interface_sweep_equals_local_runs_and_its_relaunch_submits_nothing": sweep_and_relaunch,
    "test_time_limit_requeues_and_resumes_while_failed_and_killed_jobs_are_reported": (
        time_limit_with_a_failing_job
    ),
    "test_job_past_max_num_timeout_is_reported_and_its_command_continues_it": time_limit_too_often,
    "test_shared_upstream_group_requeues_at_the_time_limit_and_by_scontrol_and_resumes_both_jobs": (
        shared_group_time_limit_then_preempted
    ),
    "test_readme_sbatch_recipe_requeues_itself_at_the_time_limit_and_finishes": sbatch_recipe,
}


@pytest.fixture(scope="module")
def scenarios(request, slurm_cluster, tmp_path_factory) -> dict[str, Future]:
    """Start every SLURM scenario a selected test of this module needs, at once; test name -> Future."""
    selected = {item.name for item in request.session.items if item.module is request.module}
    pool = ThreadPoolExecutor(max_workers=len(SCENARIOS))
    futures = {
        name: pool.submit(scenario, slurm_cluster, tmp_path_factory.mktemp(scenario.__name__))
        for name, scenario in SCENARIOS.items()
        if name in selected
    }
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted in-process runs of TRAINING (one thread), per interface: what every SLURM run must equal."""
    from downstream.training.runner import run_experiment

    threads = torch.get_num_threads()  # the runner sets them (trainer.threads=1 in TRAINING) process-wide
    try:
        runs = {}
        for name in ("weighted_sum", "last_layer"):
            run_dir = tmp_path_factory.mktemp(f"reference_{name}")
            overrides = [f"interface={name}", WIDTH, *TRAINING]
            run_experiment(compose_config(overrides, run_dir=run_dir), run_dir)
            runs[name] = run_dir
        return runs
    finally:
        torch.set_num_threads(threads)


# -- the tests on the cluster -------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_interface_sweep_equals_local_runs_and_its_relaunch_submits_nothing(scenarios, references):
    record = scenarios["test_two_interface_sweep_equals_local_runs_and_its_relaunch_submits_nothing"].result()
    (code, output), (relaunch_code, relaunch_output) = record["first"], record["second"]
    assert code == 0, output[-3000:]
    for name, run_dir in record["dirs"].items():
        assert_same_run(run_dir, references[name])
    assert relaunch_code == 0, relaunch_output[-3000:]
    assert "2 of 2 job(s) already have a complete results.json; not submitted" in relaunch_output
    assert "submitted" not in relaunch_output.replace("not submitted", "")
    assert record["new_submissions"] == set() and record["results_rewritten"] == []


@pytest.mark.slow
def test_time_limit_requeues_and_resumes_while_failed_and_killed_jobs_are_reported(scenarios, references):
    record = scenarios[
        "test_time_limit_requeues_and_resumes_while_failed_and_killed_jobs_are_reported"
    ].result()
    output, run_dir = record["output"], record["run_dir"]
    assert record["code"] == 1, output[-3000:]  # one job failed
    # the time-limited job: SLURM's SIGUSR2, a checkpoint, submitit's requeue, a resume, the same results
    log = log_of(run_dir)
    assert "SIGUSR2: checkpointing at the end of this update" in log
    assert re.search(r"stopped at step \d+ \(SIGUSR2\) with a checkpoint", log)
    assert "Requeued job" in record["submitit_log"]
    assert re.search(r"resumed at step \d+", log)
    assert_same_run(run_dir, references["weighted_sum"])
    # the failing and the killed job: one message each, with the reason, the folder and the command
    messages = unfinished_messages(output)
    assert len(messages) == 2, output[-3000:]
    failed, killed = messages
    assert failed.startswith("job #1 did not finish") and killed.startswith("job #2 did not finish")
    assert "upstream.hidden_size must be a positive multiple of num_heads=4, got 30" in failed
    # it failed before training: its folder is named, and was removed (its job's stderr says so)
    failed_dir = re.search(
        rf"folder: ({re.escape(str(record['sweep']))}/\S*upstream.hidden_size=30\S*)", failed
    )
    assert failed_dir, failed
    assert not Path(failed_dir.group(1)).exists()
    slurm_log = Path(re.search(r"SLURM log: (\S+)", failed).group(1)).read_text()
    assert f"run folder {failed_dir.group(1)} removed: nothing was trained" in slurm_log, slurm_log[-3000:]
    assert f"hydra.sweep.dir={record['sweep']}" in failed and "upstream.hidden_size=30" in failed
    assert re.search(r"SLURM ended it \(state [A-Z_]+\) before it wrote a result", killed)
    assert re.search(rf"folder: {re.escape(str(record['sweep']))}/\S*upstream.hidden_size=16", killed)
    assert "Traceback" not in output and "UncompletedJobError" not in output
    assert "2 of 3 job(s) did not finish" in output


@pytest.mark.slow
def test_job_past_max_num_timeout_is_reported_and_its_command_continues_it(scenarios, references):
    record = scenarios["test_job_past_max_num_timeout_is_reported_and_its_command_continues_it"].result()
    gave_up, run_dir = record["gave_up"], record["run_dir"]
    assert gave_up["code"] == EXIT_STOPPED_EARLY, gave_up["output"][-3000:]
    messages = unfinished_messages(gave_up["output"])
    assert len(messages) == 1 and "timed-out too many times" in messages[0], gave_up["output"][-3000:]
    assert f"folder: {run_dir}" in messages[0]
    assert "Traceback" not in gave_up["output"]
    assert record["continuations"], "nothing was continued"
    command, code, output = record["continuations"][-1]
    assert code == 0, output[-3000:]
    assert f"hydra.sweep.dir={record['sweep']}" in command
    assert re.search(r"resumed at step \d+", log_of(run_dir))
    assert_same_run(run_dir, references["weighted_sum"])


@pytest.mark.slow
def test_shared_upstream_group_requeues_at_the_time_limit_and_by_scontrol_and_resumes_both_jobs(
    scenarios, references
):
    record = scenarios[
        "test_shared_upstream_group_requeues_at_the_time_limit_and_by_scontrol_and_resumes_both_jobs"
    ].result()
    assert record["code"] == 0, record["output"][-3000:]
    assert "trains 2 job(s) on one upstream" in record["output"]
    assert "Requeued job" in record["submitit_log"]  # submitit's requeue at the time limit
    dirs = record["dirs"]
    for name, run_dir in dirs.items():
        other = str(dirs["last_layer" if name == "weighted_sum" else "weighted_sum"])
        log = log_of(run_dir)
        assert "SIGUSR2: checkpointing at the end of this update" in log  # launch 1, time limit
        assert "SIGTERM: checkpointing at the end of this update" in log  # launch 2, scontrol requeue
        assert len(re.findall(r"resumed at step \d+", log)) >= 2
        assert f"{name} -> 32 features" in log
        assert_own_final_results(log, run_dir)
        assert not any(other in line and str(run_dir) not in line for line in log.splitlines()), log
        # trained together with another head: equal to the job alone up to float summation order
        assert_same_run(run_dir, references[name], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_readme_sbatch_recipe_requeues_itself_at_the_time_limit_and_finishes(scenarios, references):
    record = scenarios["test_readme_sbatch_recipe_requeues_itself_at_the_time_limit_and_finishes"].result()
    output = record["output"]
    assert record["state"] == "COMPLETED" and record["exit_code"] == "0:0", output[-3000:]
    assert record["restarts"] >= 1
    assert re.search(r"stopped at step \d+ \(SIGTERM\) with a checkpoint", output)
    assert re.search(r"resumed at step \d+", output)
    assert_same_run(record["run_dir"], references["weighted_sum"])


# -- grouping, per-job logs and the exit status of shared_upstream (no SLURM needed) --------------------------


def test_groups_split_at_max_group_size_in_launch_order():
    assert group_jobs(["k"] * 24, 16) == [list(range(16)), list(range(16, 24))]
    assert group_jobs(["k", "k", "k", "k"], 2) == [[0, 1], [2, 3]]
    assert group_jobs(["a", "b", "a", "b", "a"], 2) == [[0, 2], [4], [1, 3]]
    assert group_jobs(["a", "b"], 16) == [[0], [1]]
    with pytest.raises(ValueError, match="max_group_size must be >= 1, got 0"):
        group_jobs(["k"], 0)


@pytest.mark.slow
def test_shared_sweep_stopped_by_sigterm_exits_75_with_complete_per_job_logs_and_resumes(tmp_path):
    """Three interfaces with max_group_size=2: groups of 2 and 1. SIGTERM during the first group: it
    checkpoints, the second group never starts, the sweep exits 75. Every job's log holds its own launch and
    lines only; the relaunch finishes all three."""
    sweep = tmp_path / "sweep"
    names = ("weighted_sum", "last_layer", "hconv")
    arguments = [
        f"interface={','.join(names)}",
        WIDTH,
        *TRAINING,
        "hydra/launcher=shared_upstream",
        "hydra.launcher.max_group_size=2",
        f"hydra.sweep.dir={sweep}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    command = [sys.executable, "run_downstream.py", "-m", *arguments]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    dirs = {name: run_dir_with(sweep, f"interface={name}") for name in names}
    wait_for(dirs["weighted_sum"] / "last.pt", process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=SCENARIO_TIMEOUT_S)
    assert process.returncode == EXIT_STOPPED_EARLY, output[-3000:]
    assert "training 2 job(s) on one upstream" in output and "training 1 job(s)" not in output
    assert not (dirs["hconv"] / "last.pt").exists()
    for name in ("weighted_sum", "last_layer"):
        log = log_of(dirs[name])
        assert not re.search(r"#\d+ : ", log), log  # no launch line of another job
        assert re.search(r"stopped at step \d+ \(SIGTERM\) with a checkpoint", log)
        assert f"{name} -> 32 features" in log
        others = [n for n in names if n != name]
        assert not any(f"{other} -> " in log for other in others), log
        assert not any(f"new run folder {dirs[other].name}" in log for other in others), log

    completed = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=launch_timeout_s(updates=50)
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    for name in names:
        log = log_of(dirs[name])
        assert f"{name} -> 32 features" in log
        assert_own_final_results(log, dirs[name])
        assert not any(f"{other} -> " in log for other in names if other != name), log
        assert (dirs[name] / "results.json").exists()
    assert re.search(r"resumed at step \d+", log_of(dirs["weighted_sum"]))


def test_without_root_or_packages_the_cluster_tests_skip_and_say_why(monkeypatch):
    """What the slurm_cluster fixture skips with (the reason pytest -ra prints)."""
    from tests import slurm_cluster

    monkeypatch.setattr(slurm_cluster.shutil, "which", lambda name, path=None: None)
    reason = slurm_cluster.unavailable_reason()
    assert reason.startswith("SLURM is not installed (munged, slurmctld, slurmd, sbatch, squeue")
    assert "apt-get install slurmctld slurmd slurm-client munge" in reason
    monkeypatch.setattr(slurm_cluster.shutil, "which", lambda name, path=None: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
    assert "needs root" in slurm_cluster.unavailable_reason()
