"""One writer per run folder: the lock a launch holds on every folder it trains, for the whole launch.

The lock is ``filelock.FileLock`` on ``<run_dir>/.lock`` (``flock``: the kernel, or the shared file system's
lock service, releases it when the holding process ends, also by SIGKILL). Beside it, the holder keeps
``<run_dir>/.lock.json``: host, pid, start time and a heartbeat that a thread rewrites every
``SSL_BENCH_LOCK_HEARTBEAT_S`` seconds (default 60). A second launch into a held folder stops at once with
``RunFolderLockedError`` naming the holder and what to do.

Taking over a lock left behind:

- **same host**: when the ``flock`` can be taken, its holder is dead; the record it left is logged and replaced.
- **another host** (a SLURM node on a shared file system): a file system that shares ``flock`` between hosts
  (NFSv4, Lustre with ``flock``, GPFS) releases a dead node's lock itself. Where ``flock`` is only local to a
  host, or filelock fell back to a marker file (no ``flock`` at all), the record decides: a holder on another
  host whose heartbeat is older than ``SSL_BENCH_LOCK_STALE_S`` seconds (default 600; clocks must agree, as
  SLURM's munge already requires) is taken as dead, and its lock is taken over with a log line; a fresher
  heartbeat refuses the launch, except for a requeued SLURM job (the record's ``SLURM_JOB_ID`` is this
  launch's: SLURM ended that run before requeueing it).

By hand (docs/faults.md): make sure the holder is gone (``ps -p PID`` on its host, ``squeue``), then remove
``<run_dir>/.lock`` and ``<run_dir>/.lock.json``.

Locks are counted per process: taking a folder's lock again in the process that holds it (the shared-upstream
launcher, then the runner) only counts up, and it is released when the outermost holder lets go.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import filelock

from downstream.files import write_atomically

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.json"
DEFAULT_HEARTBEAT_S = 60.0
DEFAULT_STALE_S = 600.0


class RunFolderLockedError(RuntimeError):
    """Another launch holds the run folder's lock (it is training there now)."""


def heartbeat_seconds() -> float:
    """How often a holder rewrites its heartbeat (``SSL_BENCH_LOCK_HEARTBEAT_S``, default 60 s)."""
    return float(os.environ.get("SSL_BENCH_LOCK_HEARTBEAT_S", DEFAULT_HEARTBEAT_S))


def stale_seconds() -> float:
    """Heartbeat age after which a holder on another host is taken as dead (``SSL_BENCH_LOCK_STALE_S``,
    default 600 s, ten missed heartbeats)."""
    return float(os.environ.get("SSL_BENCH_LOCK_STALE_S", DEFAULT_STALE_S))


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def read_holder(run_dir: Path) -> dict[str, Any] | None:
    """The holder record of ``run_dir`` (host, pid, started, heartbeat: seconds since the epoch), or None
    when there is none or it cannot be read."""
    try:
        record = json.loads((run_dir / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def describe_holder(record: dict[str, Any] | None, now: float | None = None) -> str:
    """``pid 123 on host node7, training since <UTC time> (heartbeat 12 s ago)``, for messages."""
    if record is None:
        return "another launch (it has not written its record yet)"
    now = time.time() if now is None else now
    beat = record.get("heartbeat")
    age = f" (heartbeat {now - beat:.0f} s ago)" if isinstance(beat, (int, float)) else ""
    started = record.get("started")
    since = f", training since {_utc(started)}" if isinstance(started, (int, float)) else ""
    return f"pid {record.get('pid')} on host {record.get('host')}{since}{age}"


@dataclass
class _Held:
    lock: filelock.BaseFileLock
    record: dict[str, Any]
    count: int
    stop: threading.Event
    thread: threading.Thread


_held: dict[Path, _Held] = {}
_guard = threading.Lock()


def _write_record(run_dir: Path, record: dict[str, Any]) -> None:
    text = json.dumps(record) + "\n"
    write_atomically(run_dir / HOLDER_FILE, lambda stream: stream.write(text.encode()))


def _heartbeat(run_dir: Path, record: dict[str, Any], stop: threading.Event) -> None:
    while not stop.wait(heartbeat_seconds()):
        try:
            _write_record(run_dir, {**record, "heartbeat": time.time()})
        except OSError as error:  # a full disk must not end the launch; the next beat tries again
            log.warning("could not refresh the lock record %s: %s", run_dir / HOLDER_FILE, error)


def _refusal(run_dir: Path, record: dict[str, Any] | None, why: str = "") -> RunFolderLockedError:
    return RunFolderLockedError(
        f"{run_dir} is in use by {describe_holder(record)}{why}. Two launches must not train one folder. Wait "
        "for that launch to end (or stop it), then relaunch this command: a finished run is then skipped and "
        "an interrupted one resumes. If that process is gone for good, see 'Run folder lock' in "
        "docs/faults.md to clear the lock by hand."
    )


def _take_over_message(run_dir: Path, record: dict[str, Any], reason: str) -> None:
    log.warning("taking over the lock of %s left by %s: %s", run_dir, describe_holder(record), reason)


def acquire_run_folder(run_dir: Path) -> None:
    """Take ``run_dir``'s lock for this process (again: count up). ``RunFolderLockedError`` naming the holder
    when another live launch holds it; a lock left by a dead one is taken over with a warning (module doc)."""
    run_dir = Path(run_dir).absolute()
    with _guard:
        if run_dir in _held:
            _held[run_dir].count += 1
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        previous = read_holder(run_dir)
        lock = filelock.FileLock(run_dir / LOCK_FILE, timeout=0, thread_local=False)
        host, now = socket.gethostname(), time.time()
        try:
            lock.acquire()
        except filelock.Timeout:
            beat = (previous or {}).get("heartbeat")
            stale = (
                previous is not None
                and previous.get("host") != host
                and isinstance(beat, (int, float))
                and now - beat > stale_seconds()
            )
            if not stale:
                raise _refusal(run_dir, previous) from None
            # a dead node's lock that the file system did not release (a marker-file lock): break it
            _take_over_message(run_dir, previous, f"no heartbeat for more than {stale_seconds():.0f} s")
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
            try:
                lock.acquire()
            except filelock.Timeout:
                raise _refusal(run_dir, read_holder(run_dir)) from None
            previous = None
        slurm_job = os.environ.get("SLURM_JOB_ID")
        if previous is not None:
            beat = previous.get("heartbeat")
            age = now - beat if isinstance(beat, (int, float)) else float("inf")
            if previous.get("host") == host:
                _take_over_message(run_dir, previous, "that process is no longer running")
            elif slurm_job is not None and previous.get("slurm_job") == slurm_job:
                _take_over_message(
                    run_dir, previous, f"an earlier run of this SLURM job ({slurm_job}), requeued"
                )
            elif age <= stale_seconds():
                lock.release()
                raise _refusal(
                    run_dir,
                    previous,
                    "; not every shared file system passes locks between hosts, so its heartbeat decides "
                    f"(its launch is taken as dead after {stale_seconds():.0f} s without one)",
                )
            else:
                _take_over_message(run_dir, previous, f"no heartbeat for {age:.0f} s")
        record = {"host": host, "pid": os.getpid(), "started": now, "heartbeat": now, "slurm_job": slurm_job}
        try:
            _write_record(run_dir, record)
        except BaseException:
            lock.release()
            raise
        stop = threading.Event()
        thread = threading.Thread(
            target=_heartbeat, args=(run_dir, record, stop), name=f"lock heartbeat {run_dir}", daemon=True
        )
        thread.start()
        _held[run_dir] = _Held(lock, record, 1, stop, thread)


def release_run_folder(run_dir: Path) -> None:
    """Let go of ``run_dir``'s lock once (the outermost release removes the record and unlocks)."""
    run_dir = Path(run_dir).absolute()
    with _guard:
        held = _held.get(run_dir)
        if held is None:
            return
        held.count -= 1
        if held.count > 0:
            return
        del _held[run_dir]
        held.stop.set()
        held.thread.join()
        (run_dir / HOLDER_FILE).unlink(missing_ok=True)
        held.lock.release()


def holds_run_folder(run_dir: Path) -> bool:
    """Whether this process holds ``run_dir``'s lock."""
    return Path(run_dir).absolute() in _held


@contextlib.contextmanager
def hold_run_folders(run_dirs: Iterable[Path]) -> Iterator[None]:
    """Hold the lock of every folder of ``run_dirs`` inside the block (``acquire_run_folder``; if one is
    refused, those already taken are released before ``RunFolderLockedError`` propagates)."""
    taken: list[Path] = []
    try:
        for run_dir in run_dirs:
            acquire_run_folder(run_dir)
            taken.append(run_dir)
        yield
    finally:
        for run_dir in reversed(taken):
            release_run_folder(run_dir)
