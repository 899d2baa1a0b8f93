"""A real one-node SLURM cluster on this machine, for the tests that submit jobs (tests/test_slurm.py).

``SlurmCluster(folder).start()`` writes a munge key and a small slurm.conf into ``folder`` and starts munged,
slurmctld and slurmd in the foreground as child processes; ``stop()`` ends exactly those processes, by their
pids. Client commands (sbatch, squeue, scontrol, and submitit, which calls them) find this cluster through
the ``SLURM_CONF`` environment variable, and munge through ``AuthInfo=socket=...`` in that slurm.conf.

It needs Debian's slurmctld, slurmd, slurm-client and munge packages (``.ci/run`` installs them) and root
(slurmd runs jobs as their submitting user and must be able to switch to it). ``unavailable_reason()`` says
why a cluster cannot start here, or returns None.

The configuration is the smallest that behaves like a real cluster for our purposes: one node named after
this machine with its CPU count and memory, one partition, linuxproc process tracking and no task plugin
(no cgroups needed), consumable CPUs and memory (select/cons_tres), ``ReturnToService=2`` (a node that was
down comes back by itself), no accounting database (submitit then follows jobs through their result files),
and every state, spool, pid and log file in ``folder``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo")
START_TIMEOUT_S = 30


def unavailable_reason() -> str | None:
    """Why a SLURM cluster cannot be started on this machine (None: it can)."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]
    if missing:
        return (
            f"SLURM is not installed ({', '.join(missing)} not found); "
            "apt-get install slurmctld slurmd slurm-client munge (see .ci/run)"
        )
    if os.geteuid() != 0:
        return "starting slurmd and munged needs root (slurmd runs jobs as their user)"
    return None


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class SlurmCluster:
    """munged + slurmctld + slurmd with their files in ``folder``; see the module docstring."""

    partition = "debug"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.conf = self.folder / "slurm.conf"
        self.hostname = socket.gethostname()
        self.cpus = os.cpu_count() or 1
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        """The environment variables that point SLURM's client commands at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        folder = self.folder
        for sub in ("state", "spool", "munge", "log"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / "munge").chmod(0o700)
        key = folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        # RealMemory a little under the total: slurmd drains a node that has less memory than configured.
        memory_mb = int(_memory_mb() * 0.9)
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=testcluster",
                    f"SlurmctldHost={self.hostname}(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    # cred_expire: also how long a requeued job waits before it may start again (120 s
                    # by default); 10 s keeps the requeue tests short.
                    f"AuthInfo=socket={folder / 'munge' / 'munge.socket'},cred_expire=10",
                    "CredType=cred/munge",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU_Memory",
                    "ReturnToService=2",
                    "SchedulerType=sched/backfill",
                    # look at pending jobs every 2 s (default 60 s): a requeued job starts soon after its
                    # requeue delay instead of at the next minute
                    "SchedulerParameters=sched_interval=2,bf_interval=2",
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/none",
                    "MpiDefault=none",
                    "KillWait=30",
                    "MinJobAge=600",
                    f"StateSaveLocation={folder / 'state'}",
                    f"SlurmdSpoolDir={folder / 'spool'}",
                    f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
                    f"SlurmdPidFile={folder / 'slurmd.pid'}",
                    f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    f"NodeName={self.hostname} NodeAddr=127.0.0.1 CPUs={self.cpus} "
                    f"RealMemory={memory_mb} State=UNKNOWN",
                    # OverSubscribe: up to 8 jobs share a CPU, so the tests' one-CPU jobs all run at once
                    f"PartitionName={self.partition} Nodes={self.hostname} Default=YES "
                    "MaxTime=INFINITE State=UP OverSubscribe=FORCE:8",
                    "",
                ]
            )
        )
        # slurmd and slurmctld look for cgroup.conf next to slurm.conf; an empty one keeps them quiet.
        (folder / "cgroup.conf").write_text("")

    def _start(self, name: str, args: list[str]) -> None:
        log = (self.folder / "log" / f"{name}.out").open("w")
        self.processes[name] = subprocess.Popen(
            [_which(name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,  # a Ctrl-C in the test run reaches pytest, which stops us in order
        )
        log.close()

    def start(self) -> SlurmCluster:
        """Start the three daemons and wait until the node takes jobs; raises RuntimeError with the
        daemons' logs if it does not within START_TIMEOUT_S."""
        self.write_config()
        munge = self.folder / "munge"
        self._start(
            "munged",
            [
                "--foreground",
                "--force",
                f"--key-file={munge / 'munge.key'}",
                f"--socket={munge / 'munge.socket'}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={self.folder / 'log' / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
        )
        self._wait(lambda: (munge / "munge.socket").exists(), "munged to open its socket")
        self._start("slurmctld", ["-D", "-i", "-f", str(self.conf)])
        self._start("slurmd", ["-D", "-f", str(self.conf), "-N", self.hostname])
        self._wait(self._node_is_idle, "the node to become idle")
        return self

    def _node_is_idle(self) -> bool:
        state = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.strip()
        return state in ("idle", "mixed", "allocated")

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {process.returncode} while waiting for {what}\n" + self.logs()
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {START_TIMEOUT_S} s waiting for {what}\n" + self.logs())
            time.sleep(0.2)

    def logs(self) -> str:
        """The tail of every daemon's log, for failure messages."""
        parts = []
        for path in sorted((self.folder / "log").glob("*")):
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.name} ---\n{text[-3000:]}")
        return "\n".join(parts)

    def run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        return subprocess.run(
            [_which(args[0]) or args[0], *args[1:]],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def stop(self) -> None:
        """Cancel remaining jobs, then end slurmd, slurmctld and munged (in that order) by their pids."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run(["scancel", "--full", "--user", "root"], check=False)
        for name in reversed(DAEMONS):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
