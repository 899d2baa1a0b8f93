"""How many CPU threads torch's intra-op pool uses (``trainer.threads``).

PyTorch starts one thread per core of the machine (``os.cpu_count()``), not per core this process may use:
in a container limited by a cgroup quota, a SLURM job of a few cores or a shared machine, that oversubscribes
the cores, and every matrix product waits for threads that are not running (on a shared 2-core machine at
load 7, the demo ran 4.7x faster with one thread; docs/benchmarks.md). ``trainer.threads=auto`` counts the
cores this process is allowed (``available_cores``) and leaves one for each DataLoader worker.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROC_CGROUP = Path("/proc/self/cgroup")
PROC_MOUNTINFO = Path("/proc/self/mountinfo")


def quota_cores(cpu_max: Path, v1_quota: Path, v1_period: Path) -> float | None:
    """One cgroup's CPU quota in cores from its files: cgroup v2's ``cpu.max`` (``"150000 100000"`` is 1.5;
    ``max``: none), else cgroup v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: none). None
    where there is no quota or no such file."""
    try:
        quota, _, period = cpu_max.read_text().strip().partition(" ")
        if quota != "max":
            return int(quota) / int(period or 100000)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(v1_quota.read_text())
        period_us = int(v1_period.read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def cgroup_cpu_dirs(proc_cgroup: Path = PROC_CGROUP, mountinfo: Path = PROC_MOUNTINFO) -> list[Path]:
    """The directories of this process's CPU cgroup and of each ancestor up to its hierarchy's mount point,
    innermost first: the cgroup v1 hierarchy with the ``cpu`` controller where one is mounted, else the
    cgroup v2 one. A process's path in ``/proc/self/cgroup`` is relative to the hierarchy's root, which
    ``/proc/self/mountinfo`` maps to a mount point (in a container, often its own cgroup mounted at
    /sys/fs/cgroup). Empty where neither file says (not Linux)."""
    try:
        memberships = proc_cgroup.read_text().splitlines()
        mounts = mountinfo.read_text().splitlines()
    except OSError:
        return []
    paths = {}  # "v1" / "v2" -> this process's path in that hierarchy
    for line in memberships:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if not controllers:
            paths.setdefault("v2", path)
        elif "cpu" in controllers.split(","):
            paths["v1"] = path
    for version in ("v1", "v2"):
        if version not in paths:
            continue
        for mount in mounts:
            fields, _, super_part = mount.partition(" - ")
            root, point = fields.split()[3:5]
            fstype, _, options = (super_part.split() + ["", "", ""])[:3]
            wanted = (
                fstype == "cgroup2" if version == "v2" else fstype == "cgroup" and "cpu" in options.split(",")
            )
            if not wanted:
                continue
            path = paths[version]
            inner = Path(path).relative_to(root) if Path(path).is_relative_to(root) else Path()
            top = Path(point.replace("\\040", " "))
            directory = top / inner
            chain = [directory, *(parent for parent in directory.parents if parent.is_relative_to(top))]
            return chain
    return []


def cgroup_cpu_limit(proc_cgroup: Path = PROC_CGROUP, mountinfo: Path = PROC_MOUNTINFO) -> float | None:
    """The CPU quota this process's cgroups impose, in cores: the smallest quota (``quota_cores``) of its
    CPU cgroup and its ancestors (``cgroup_cpu_dirs``; docker ``--cpus``, Kubernetes limits, a cgroup made
    by hand or by ``systemd-run -p CPUQuota=``), or None where none has one."""
    quotas = [
        quota_cores(d / "cpu.max", d / "cpu.cfs_quota_us", d / "cpu.cfs_period_us")
        for d in cgroup_cpu_dirs(proc_cgroup, mountinfo)
    ]
    found = [quota for quota in quotas if quota is not None]
    return min(found) if found else None


@dataclass(frozen=True)
class CoreCount:
    """Cores this process may use, and what limited them (for the log line)."""

    cores: int
    source: str


def slurm_cpus(environ: Mapping[str, str]) -> tuple[int, str] | None:
    """The CPUs SLURM allocated to this task, and which variable said so: ``SLURM_CPUS_PER_TASK`` (``-c``),
    else ``SLURM_CPUS_ON_NODE`` shared by the job's tasks on this node (the first count of
    ``SLURM_TASKS_PER_NODE``, e.g. ``2(x3)``): a job without ``-c`` has one CPU per task. None outside SLURM.
    Without a task affinity plugin (``TaskPlugin=task/none``) the affinity mask stays the whole node, so
    these variables are the only sign of the allocation."""
    per_task = environ.get("SLURM_CPUS_PER_TASK", "")
    if per_task.isdigit() and int(per_task) > 0:
        return int(per_task), "SLURM_CPUS_PER_TASK"
    on_node = environ.get("SLURM_CPUS_ON_NODE", "")
    if not (on_node.isdigit() and int(on_node) > 0):
        return None
    tasks = re.match(r"\d+", environ.get("SLURM_TASKS_PER_NODE", ""))
    count = int(tasks.group()) if tasks and int(tasks.group()) > 0 else 1
    return max(1, int(on_node) // count), "SLURM_CPUS_ON_NODE" + (f" / {count} tasks" if count > 1 else "")


def available_cores(environ: Mapping[str, str] | None = None, cgroup_limit: float | None = None) -> CoreCount:
    """The smallest of: the CPUs in this process's affinity mask (``os.sched_getaffinity``; taskset, numactl,
    SLURM's binding), the cgroup CPU quota rounded up (``cgroup_cpu_limit``; docker ``--cpus``, Kubernetes
    limits) and SLURM's allocation (``slurm_cpus``). At least 1. ``cgroup_limit`` None reads the cgroup
    files."""
    environ = os.environ if environ is None else environ
    if hasattr(os, "sched_getaffinity"):
        candidates = [(len(os.sched_getaffinity(0)), "CPU affinity")]
    else:  # macOS, Windows
        candidates = [(os.cpu_count() or 1, "os.cpu_count")]
    quota = cgroup_cpu_limit() if cgroup_limit is None else cgroup_limit
    if quota is not None:
        candidates.append((max(1, math.ceil(quota)), f"cgroup CPU quota {quota:g}"))
    slurm = slurm_cpus(environ)
    if slurm is not None:
        candidates.append(slurm)
    cores, source = min(candidates, key=lambda candidate: candidate[0])
    return CoreCount(max(1, cores), source)


def choose_threads(
    setting: int | str,
    num_workers: int,
    environ: Mapping[str, str] | None = None,
    cgroup_limit: float | None = None,
) -> tuple[int, str]:
    """torch's intra-op thread count for ``trainer.threads`` and why: a count as given; ``auto`` is
    ``OMP_NUM_THREADS`` where the user set it, else the available cores (``available_cores``) minus one per
    DataLoader worker, at least 1."""
    environ = os.environ if environ is None else environ
    if setting != "auto":
        return int(setting), "trainer.threads"
    omp = environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    count = available_cores(environ, cgroup_limit)
    threads = max(1, count.cores - num_workers)
    why = f"{count.cores} core{'s' if count.cores != 1 else ''} ({count.source})"
    if num_workers:
        why += f" - {num_workers} DataLoader workers"
    return threads, why


def overloaded(threads: int, load_average: float | None = None, cores: int | None = None) -> bool:
    """Whether the machine's 1-minute load average exceeds its cores by more than ``threads``, so that this
    run's threads mostly wait (on a shared machine ``trainer.threads=1`` is then often faster)."""
    if load_average is None:
        if not hasattr(os, "getloadavg"):
            return False
        load_average = os.getloadavg()[0]
    cores = cores or os.cpu_count() or 1
    return threads > 1 and load_average > cores + threads


def apply_threads(setting: int | str, num_workers: int) -> tuple[int, str]:
    """Set torch's intra-op threads (``torch.set_num_threads``, process-wide) for ``trainer.threads`` and
    ``num_workers`` DataLoader workers (``choose_threads``); returns the count and why."""
    import torch

    threads, why = choose_threads(setting, num_workers)
    torch.set_num_threads(threads)
    return threads, why
