"""The CPU thread choice (``trainer.threads=auto``, downstream/training/threads.py) under the real mechanisms
that limit a process's cores: a CPU affinity mask (taskset), a cgroup CPU quota (a child cgroup made here, as
root) and a SLURM allocation (the real one-node cluster of tests/slurm_cluster.py). Each launches
run_downstream.py and reads the thread count its log names; each skips, saying why, where the mechanism
is not available."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from downstream.training.threads import cgroup_cpu_dirs, cgroup_cpu_limit, slurm_cpus
from tests.helpers import REPO_ROOT, TWO_STEP_RUN, launch_timeout_s
from tests.slurm_cluster import _which as slurm_executable

THREADS_LINE = re.compile(r"CPU threads: (\d+) \((.*?); trainer\.threads=<n> sets it\)")


def launch_env() -> dict[str, str]:
    """This environment without OMP_NUM_THREADS (the suite sets it; ``auto`` would take it as given)."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    return {
        **env,
        "WANDB_MODE": "disabled",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
    }


def logged_threads(run_dir: Path) -> tuple[int, str]:
    match = THREADS_LINE.search((run_dir / "run_downstream.log").read_text())
    assert match, f"no thread line in {run_dir / 'run_downstream.log'}"
    return int(match.group(1)), match.group(2)


def run_command(run_dir: Path) -> list[str]:
    return [sys.executable, "run_downstream.py", *TWO_STEP_RUN, f"hydra.run.dir={run_dir}"]


def launch(argv: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> None:
    """Run ``argv`` (a launch under some mechanism) from the repository root without OMP_NUM_THREADS;
    asserts it succeeded (the failure names its stderr and ``log``)."""
    completed = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        env={**launch_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=launch_timeout_s(updates=2),
    )
    written = log.read_text() if log is not None and log.exists() else ""
    assert completed.returncode == 0, completed.stderr[-2000:] + written[-2000:]


def write_hierarchy(tmp_path: Path, version: str, quotas: dict[str, str]) -> tuple[Path, Path]:
    """Fake /proc/self/cgroup and /proc/self/mountinfo for a process in cgroup /outer/inner of a hierarchy
    mounted at tmp_path/mnt (root /outer: as a container sees its own cgroup), with the given quota file
    contents per directory ('' = the mount point)."""
    mount = tmp_path / "mnt"
    for relative, text in quotas.items():
        directory = mount / relative
        directory.mkdir(parents=True, exist_ok=True)
        if version == "v2":
            (directory / "cpu.max").write_text(text)
        else:
            quota, period = text.split()
            (directory / "cpu.cfs_quota_us").write_text(quota)
            (directory / "cpu.cfs_period_us").write_text(period)
    proc_cgroup = tmp_path / "cgroup"
    mountinfo = tmp_path / "mountinfo"
    if version == "v2":
        proc_cgroup.write_text("0::/outer/inner\n")
        mountinfo.write_text(f"35 24 0:30 /outer {mount} rw,nosuid - cgroup2 cgroup2 rw\n")
    else:
        proc_cgroup.write_text("4:memory:/elsewhere\n3:cpu,cpuacct:/outer/inner\n0::/\n")
        mountinfo.write_text(
            f"32 31 0:29 /outer {tmp_path / 'other'} rw - cgroup cgroup rw,memory\n"
            f"33 31 0:30 /outer {mount} rw - cgroup cgroup rw,cpu,cpuacct\n"
        )
    return proc_cgroup, mountinfo


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_quota_is_the_smallest_of_the_process_cgroup_and_its_ancestors(tmp_path, version):
    limited = "150000 100000"
    unlimited = "max 100000" if version == "v2" else "-1 100000"
    proc_cgroup, mountinfo = write_hierarchy(tmp_path, version, {"": limited, "inner": unlimited})
    assert cgroup_cpu_dirs(proc_cgroup, mountinfo) == [tmp_path / "mnt" / "inner", tmp_path / "mnt"]
    assert cgroup_cpu_limit(proc_cgroup, mountinfo) == 1.5  # the parent's quota binds the child
    (tmp_path / "mnt" / "inner" / ("cpu.max" if version == "v2" else "cpu.cfs_quota_us")).write_text(
        "50000 100000" if version == "v2" else "50000"
    )
    assert cgroup_cpu_limit(proc_cgroup, mountinfo) == 0.5
    assert cgroup_cpu_limit(tmp_path / "missing", mountinfo) is None


def test_slurm_allocation_from_its_variables():
    # values as this project's one-node cluster set them (docs/benchmarks.md, CPU threads)
    assert slurm_cpus({"SLURM_CPUS_PER_TASK": "1", "SLURM_CPUS_ON_NODE": "1"}) == (1, "SLURM_CPUS_PER_TASK")
    assert slurm_cpus({"SLURM_CPUS_ON_NODE": "1", "SLURM_TASKS_PER_NODE": "1"}) == (1, "SLURM_CPUS_ON_NODE")
    assert slurm_cpus({"SLURM_CPUS_ON_NODE": "8", "SLURM_TASKS_PER_NODE": "2(x3)"})[0] == 4
    assert slurm_cpus({}) is None


# ---------------------------------------------------------------- the real mechanisms


def cpu_cgroup_parent() -> tuple[Path | None, str]:
    """Where a child CPU cgroup can be made here (this process's own CPU cgroup), or None and why not."""
    if os.geteuid() != 0:
        return None, "making a cgroup needs root"
    dirs = cgroup_cpu_dirs()
    if not dirs:
        return None, "no CPU cgroup hierarchy is mounted (/proc/self/cgroup, /proc/self/mountinfo)"
    parent = dirs[0]
    v2 = not (parent / "cpu.cfs_quota_us").exists()
    if v2 and "cpu" not in (parent / "cgroup.subtree_control").read_text(errors="replace").split():
        return None, f"the cgroup v2 cpu controller is not enabled for children of {parent}"
    return parent, ""


@pytest.mark.slow
def test_a_cgroup_quota_of_one_core_gives_one_thread(tmp_path):
    parent, reason = cpu_cgroup_parent()
    if parent is None:
        pytest.skip(reason)
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: a quota of one core cannot be told from the affinity")
    child = parent / f"ssl-bench-test-{uuid.uuid4().hex[:8]}"
    try:
        child.mkdir()
    except OSError as error:
        pytest.skip(f"cannot make a cgroup under {parent}: {error}")
    try:
        if (child / "cpu.cfs_quota_us").exists():
            (child / "cpu.cfs_period_us").write_text("100000")
            (child / "cpu.cfs_quota_us").write_text("100000")
        else:
            (child / "cpu.max").write_text("100000 100000")
        run_dir = tmp_path / "run"
        # the shell moves itself into the cgroup, then becomes the launch (which inherits the cgroup)
        command = " ".join(run_command(run_dir))
        launch(["sh", "-c", f'echo $$ > "{child / "cgroup.procs"}" && exec {command}'])
    finally:
        child.rmdir()  # empty again: the launch has exited
    assert logged_threads(run_dir) == (1, "1 core (cgroup CPU quota 1)")


@pytest.mark.slow
def test_an_affinity_mask_of_one_cpu_gives_one_thread(tmp_path):
    if shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) is not installed")
    run_dir = tmp_path / "run"
    launch(["taskset", "-c", str(min(os.sched_getaffinity(0))), *run_command(run_dir)])
    assert logged_threads(run_dir)[0] == 1 and "CPU affinity" in logged_threads(run_dir)[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "source"), [(["--cpus-per-task=1"], "SLURM_CPUS_PER_TASK"), ([], "SLURM_CPUS_ON_NODE")]
)
def test_a_slurm_job_of_one_cpu_gives_one_thread(slurm_cluster, tmp_path, options, source):
    """sbatch with -c 1, and with no -c (SLURM then allocates one CPU per task); the cluster binds no
    affinity (TaskPlugin=task/none), so only SLURM's variables tell the allocation."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: one CPU cannot be told from the affinity")
    run_dir = tmp_path / "run"
    output = tmp_path / "job.out"
    sbatch = [slurm_executable("sbatch"), "--wait", *options, f"--output={output}", f"--chdir={REPO_ROOT}"]
    launch([*sbatch, "--wrap", " ".join(run_command(run_dir))], env=slurm_cluster.env, log=output)
    assert logged_threads(run_dir) == (1, f"1 core ({source})")
