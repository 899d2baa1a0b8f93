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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: cgroup v2's quota file, and cgroup v1's pair (quota and period in microseconds; quota -1: no limit).
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cgroup_cpu_limit(
    cpu_max: Path = CGROUP_V2_CPU_MAX, v1_quota: Path = CGROUP_V1_QUOTA, v1_period: Path = CGROUP_V1_PERIOD
) -> float | None:
    """The CPU quota of this process's cgroup in cores (``quota / period``: ``"150000 100000"`` is 1.5), or
    None where there is none (``max``, -1, or no such file)."""
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


@dataclass(frozen=True)
class CoreCount:
    """Cores this process may use, and what limited them (for the log line)."""

    cores: int
    source: str


def available_cores(environ: Mapping[str, str] | None = None, cgroup_limit: float | None = None) -> CoreCount:
    """The smallest of: the CPUs in this process's affinity mask (``os.sched_getaffinity``; taskset, numactl,
    SLURM's binding), the cgroup CPU quota rounded up (``cgroup_cpu_limit``; docker ``--cpus``, Kubernetes
    limits) and ``SLURM_CPUS_PER_TASK``. At least 1. ``cgroup_limit`` None reads the cgroup files."""
    environ = os.environ if environ is None else environ
    if hasattr(os, "sched_getaffinity"):
        candidates = [(len(os.sched_getaffinity(0)), "CPU affinity")]
    else:  # macOS, Windows
        candidates = [(os.cpu_count() or 1, "os.cpu_count")]
    quota = cgroup_cpu_limit() if cgroup_limit is None else cgroup_limit
    if quota is not None:
        candidates.append((max(1, math.ceil(quota)), f"cgroup CPU quota {quota:g}"))
    slurm = environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        candidates.append((int(slurm), "SLURM_CPUS_PER_TASK"))
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
    why = f"{count.cores} cores ({count.source})"
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
