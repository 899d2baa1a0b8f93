"""``hydra/launcher=shared_upstream``: jobs that differ only in interface, head and optimizer run in one process.

    python run_downstream.py -m interface=weighted_sum,hconv,cls_pooling hydra/launcher=shared_upstream

Each job is first set up by Hydra as usual (its own directory with .hydra/ and its resolved config).
Jobs are then grouped by everything except the interface, the head and the optimizer settings (learning
rates, optimizer, weight decay, scheduler, warmup: ``group_key``), at most
``max_group_size`` per group (``group_jobs``); a group trains all its (interface, head, optimizer) sets on one
upstream forward per batch (downstream.training.runner.run_jobs), so a K-interface sweep pays for the upstream once
instead of K times. A job that cannot be grouped (another task, upstream, seed or trainer setting, or a
fine-tuned upstream) runs on its own, as with the basic launcher. Every job still gets its own results.json,
equal to that of the job run alone, and its own complete log file (``train_group``).

Here the groups train one after another in the launching process; ``hydra/launcher=shared_upstream_slurm``
(``slurm.py``) submits each group as one SLURM job instead. A stop signal (SIGTERM, or submitit's SIGUSR2)
checkpoints the group in training, trains no further group, and the sweep exits with status 75 like a
single run; relaunching the same command (same ``hydra.sweep.dir``) skips finished jobs and resumes the rest.
"""

import json
import logging
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

# (No `from __future__ import annotations` here: Hydra execs plugin modules outside sys.modules, where
# dataclasses cannot resolve string annotations.)

# Config keys that may differ inside a group: they only shape the interface and the head.
PER_BRANCH_KEYS = (
    "interface",
    "interface_name",
    "task.head",
    "trainer.interface_lr",
    "logger.name",
    "overwrite",
)

#: The format of Hydra's default job log file (run_downstream.log), used for the per-job logs of a group.
JOB_LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


@dataclass
class SharedUpstreamLauncherConf:
    _target_: str = "hydra_plugins.shared_upstream_launcher.launcher.SharedUpstreamLauncher"
    # Most jobs trained together in one group (memory grows with the number of heads).
    max_group_size: int = 16


ConfigStore.instance().store(
    group="hydra/launcher",
    name="shared_upstream",
    node=SharedUpstreamLauncherConf,
    provider="ssl-interface-bench",
)


def group_key(resolved: dict[str, Any]) -> str:
    """Everything that must be equal for two jobs to share one upstream forward: all but PER_BRANCH_KEYS
    and the trainer settings that are a branch's own (its optimizer: ``BRANCH_SETTINGS``)."""
    from downstream.training.branch import BRANCH_SETTINGS

    shared = json.loads(json.dumps(resolved))
    for dotted in (*PER_BRANCH_KEYS, *(f"trainer.{name}" for name in BRANCH_SETTINGS)):
        *parents, leaf = dotted.split(".")
        node = shared
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return json.dumps(shared, sort_keys=True)


def group_jobs(keys: Sequence[str], max_group_size: int) -> list[list[int]]:
    """Positions of jobs with equal keys, in groups of at most ``max_group_size``, in launch order.

    ``keys[i]`` is job i's ``group_key`` (a unique key keeps a job alone). 24 jobs of one key with
    ``max_group_size=16`` give two groups: 16 jobs and 8 jobs. Raises ValueError for a size below 1.
    """
    if max_group_size < 1:
        raise ValueError(f"hydra.launcher.max_group_size must be >= 1, got {max_group_size}")
    by_key: dict[str, list[int]] = {}
    for position, key in enumerate(keys):
        by_key.setdefault(key, []).append(position)
    return [
        members[start : start + max_group_size]
        for members in by_key.values()
        for start in range(0, len(members), max_group_size)
    ]


@dataclass
class PreparedJob:
    """A job Hydra has set up (directory, .hydra/, resolved config) but not trained."""

    job: Any  # downstream.training.runner.Job: the resolved config, run directory and overrides
    log_file: Path  # the job's own log file (Hydra's job log: <run dir>/run_downstream.log)
    index: int  # the job's number in the sweep (hydra.job.num)


def prepare_jobs(
    hydra_context: HydraContext,
    config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
) -> tuple[list[PreparedJob], list[JobReturn]]:
    """Let Hydra set up every job of the batch without training it, logging each launch line.

    Returns the jobs and Hydra's JobReturn of each (status COMPLETED, value None until it trains)."""
    prepared, returns = [], []
    for offset, overrides in enumerate(job_overrides):
        index = initial_job_idx + offset
        log.info("\t#%d : %s", index, " ".join(filter_overrides(overrides)))
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = index
            sweep_config.hydra.job.num = index
        job_return = run_job(
            hydra_context=hydra_context,
            task_function=_prepare_job,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
            configure_logging=False,  # the job's log file is opened when it trains (train_group)
        )
        if job_return.status == JobStatus.FAILED:
            raise job_return._return_value
        job, log_file = job_return.return_value
        prepared.append(PreparedJob(job, log_file, index))
        job_return.return_value = None
        returns.append(job_return)
    return prepared, returns


def _prepare_job(cfg: DictConfig):
    """Runs inside Hydra's run_job: the job's directory exists and HydraConfig is the job's."""
    from downstream.training.runner import Job, resolved_job_config

    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    file_handler = OmegaConf.select(hydra_config, "job_logging.handlers.file.filename")
    log_file = Path(file_handler) if file_handler else run_dir / f"{hydra_config.job.name}.log"
    return Job(resolved_job_config(cfg), run_dir, list(hydra_config.overrides.task)), log_file


def group_prepared_jobs(prepared: Sequence[PreparedJob], max_group_size: int) -> list[list[PreparedJob]]:
    """Groups of jobs that can share one upstream forward (a trainable upstream trains alone)."""
    keys = [
        f"alone-{position}"
        if p.job.cfg.upstream.get("trainable", False)
        else group_key(OmegaConf.to_container(p.job.cfg))
        for position, p in enumerate(prepared)
    ]
    return [[prepared[m] for m in members] for members in group_jobs(keys, max_group_size)]


def _mentions(message: str, path: str) -> bool:
    """Whether ``message`` names the folder ``path`` itself (not a longer folder name it is a prefix of)."""
    return re.search(re.escape(path) + r"(?![^\s\]\)'\"/])", message) is not None


class _OwnLinesOnly(logging.Filter):
    """A group member's log file: the group's shared lines and its own, not those about another member (a
    line marked with a run folder, ``about_run``, or one whose text names another member's folder)."""

    def __init__(self, own: str, others: list[str]) -> None:
        from downstream.training.run_log import RUN_DIR_FIELD

        super().__init__()
        self.own, self.others, self.field = own, others, RUN_DIR_FIELD

    def filter(self, record: logging.LogRecord) -> bool:
        about = getattr(record, self.field, None)
        if about is not None:
            return about == self.own
        message = record.getMessage()
        return _mentions(message, self.own) or not any(_mentions(message, o) for o in self.others)


def train_group(group: Sequence[PreparedJob]) -> list[dict[str, Any] | None]:
    """Train the group on one upstream (``run_jobs``); returns each job's results (None: stopped early).

    While it trains, every job's log file receives the group's shared lines and the job's own lines,
    appended (a resumed job's file holds all its launches). Exceptions propagate."""
    from downstream.training.runner import run_jobs

    run_dirs = [str(p.job.run_dir) for p in group]
    handlers = []
    for p, own in zip(group, run_dirs, strict=True):
        p.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(p.log_file, mode="a")
        handler.setFormatter(logging.Formatter(JOB_LOG_FORMAT))
        handler.addFilter(_OwnLinesOnly(own, [d for d in run_dirs if d != own]))
        handlers.append(handler)
    root = logging.getLogger()
    for handler in handlers:
        root.addHandler(handler)
    try:
        log.info("training %d job(s) on one upstream: %s", len(group), run_dirs)
        return run_jobs([p.job for p in group])
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def exit_stopped_early(sweep_dir: str, status: int | None = None) -> None:
    """End the sweep with status 75 (EX_TEMPFAIL; ``status``: 130 after Ctrl-C), printing the command that
    continues it in the same sweep folder."""
    from downstream.training.preemption import EXIT_STOPPED_EARLY
    from downstream.training.relaunch import continue_command

    status = EXIT_STOPPED_EARLY if status is None else status
    log.info(
        "the sweep stopped before the end (exit status %d); to resume it (finished jobs are skipped), run:\n  %s",
        status,
        continue_command(sweep_dir, sweep=True),
    )
    sys.exit(status)


def lock_members(group: Sequence[PreparedJob]) -> tuple[list[PreparedJob], dict[int, Exception]]:
    """Take the lock of each job's folder (``run_lock``) for this process: the jobs whose folder it holds
    now, and the refusal of each job whose folder another launch is training (by ``PreparedJob.index``)."""
    from downstream.training.run_lock import RunFolderLockedError, acquire_run_folder

    held, refused = [], {}
    for p in group:
        try:
            acquire_run_folder(p.job.run_dir)
        except RunFolderLockedError as error:
            log.error("job #%d not trained: %s", p.index, error)
            refused[p.index] = error
            continue
        held.append(p)
    return held, refused


class SharedUpstreamLauncher(Launcher):
    def __init__(self, max_group_size: int = 16) -> None:
        super().__init__()
        if max_group_size < 1:
            raise ValueError(f"hydra.launcher.max_group_size must be >= 1, got {max_group_size}")
        self.max_group_size = max_group_size
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from downstream.training.preemption import EXIT_INTERRUPTED, stop_signals
        from downstream.training.relaunch import continue_command
        from downstream.training.run_lock import release_run_folder

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = str(self.config.hydra.sweep.dir)
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)

        prepared, returns = prepare_jobs(self.hydra_context, self.config, job_overrides, initial_job_idx)
        position = {p.index: i for i, p in enumerate(prepared)}

        # A stop signal between groups (or passed on by the trainer after its checkpoint) ends the sweep.
        received: list[int] = []

        def record_stop(signum, frame) -> None:
            log.warning("%s: no further group starts", signal.Signals(signum).name)
            received.append(signum)

        previous = {signum: signal.signal(signum, record_stop) for signum in stop_signals()}
        stopped_early, failed = False, 0

        def fail(p: PreparedJob, error: Exception) -> None:
            nonlocal failed
            returns[position[p.index]].status = JobStatus.FAILED
            returns[position[p.index]]._return_value = error
            failed += 1

        try:
            for group in group_prepared_jobs(prepared, self.max_group_size):
                if received:
                    stopped_early = True
                    break
                # each folder of the group is locked by this launcher for the group's whole training; a
                # folder another launch is training fails that job only
                held, refused = lock_members(group)
                for p in group:
                    if p.index in refused:
                        fail(p, refused[p.index])
                try:
                    outcomes = train_group(held) if held else []
                except Exception as error:  # a failing group fails each of its jobs, as Hydra reports them
                    for p in held:
                        fail(p, error)
                    continue
                finally:
                    for p in held:
                        release_run_folder(p.job.run_dir)
                for p, outcome in zip(held, outcomes, strict=True):
                    returns[position[p.index]]._return_value = outcome
                    stopped_early |= outcome is None
        except KeyboardInterrupt:
            log.info("interrupted (Ctrl-C); what was trained up to the last checkpoints is kept")
            exit_stopped_early(sweep_dir, EXIT_INTERRUPTED)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if stopped_early or received:
            exit_stopped_early(sweep_dir)
        if failed:
            log.error(
                "%d job(s) failed (above); once fixed, continue the sweep (finished jobs are skipped, the "
                "others resume from their last checkpoints) with:\n  %s",
                failed,
                continue_command(sweep_dir, sweep=True),
            )
        return returns
