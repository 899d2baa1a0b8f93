"""SLURM launchers: ``hydra/launcher=slurm`` (one SLURM job per sweep job) and
``hydra/launcher=shared_upstream_slurm`` (one SLURM job per group of jobs that share the upstream).

Both extend hydra-submitit-launcher's SlurmLauncher, keep all its keys (partition, gpus_per_node,
cpus_per_task, mem_gb, timeout_min, signal_delay_s, max_num_timeout, ...; see configs/hydra/launcher/), and
add three things:

- Jobs whose folder already holds a complete results.json (and ``overwrite`` is false) are not submitted, so
  relaunching a sweep with the same ``hydra.sweep.dir`` submits only what is left.
- The launcher follows its jobs with ``squeue`` (which works without SLURM accounting), so a job that SLURM
  ends without a result (cancelled, out of memory, killed at its time limit) is reported instead of waited
  for forever.
- A sweep whose jobs did not all finish ends with one message per such job (its folder, why, and the command
  that continues it) instead of a traceback, after every other job has finished and kept its results. The
  exit status is 75 when every unfinished job stopped with a checkpoint at its time limit (relaunching
  continues it), else 1.

Requeueing: submitit has SLURM send SIGUSR2 ``signal_delay_s`` before the time limit; the trainer finishes its
update, checkpoints and hands the signal to submitit, which requeues the job (at most ``max_num_timeout``
times) with the same arguments, and the requeued job resumes from last.pt. A job SLURM preempts or requeues
(``scontrol requeue``) gets SIGTERM: it checkpoints, exits with 75 without a result, and SLURM starts it again.
"""

import dataclasses
import logging
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import MISSING, OmegaConf, open_dict

from hydra_plugins.shared_upstream_launcher.launcher import (
    JOB_LOG_FORMAT,
    PreparedJob,
    group_prepared_jobs,
    prepare_jobs,
    train_group,
)

log = logging.getLogger(__name__)

#: SLURM job states after which a job runs no more (unless requeued, which shows as PENDING again).
ENDED_STATES = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}
#: How often the launcher asks squeue for the state of its jobs (it checks result files every second).
STATE_POLL_S = 10.0

# The launchers' config schemas. slurm.yaml extends SlurmKeys: the plugin's schema (every submitit_slurm key)
# with this module's launcher class. shared_upstream_slurm.yaml is slurm.yaml plus SharedUpstreamSlurmKeys,
# which adds max_group_size (YAML cannot add keys to a structured config). Every inherited field is MISSING
# there, and a MISSING value does not override when merged, so slurm.yaml's values (merged before it) stay.
# (Both classes are defined here, together: Hydra's plugin scan may execute the plugin's config module
# again, and a merge checks that the later schema subclasses the earlier one.)
SlurmKeys = dataclasses.make_dataclass(
    "SlurmKeys",
    [
        (
            "_target_",
            str,
            dataclasses.field(default="hydra_plugins.shared_upstream_launcher.slurm.SlurmLauncher"),
        )
    ],
    bases=(SlurmQueueConf,),
)
SharedUpstreamSlurmKeys = dataclasses.make_dataclass(
    "SharedUpstreamSlurmKeys",
    [
        (
            "_target_",
            str,
            dataclasses.field(
                default="hydra_plugins.shared_upstream_launcher.slurm.SharedUpstreamSlurmLauncher"
            ),
        ),
        *[
            (f.name, f.type, dataclasses.field(default=MISSING))
            for f in dataclasses.fields(SlurmQueueConf)
            if f.name != "_target_"
        ],
        # Most jobs trained together in one SLURM job (GPU memory grows with the number of heads).
        ("max_group_size", int, dataclasses.field(default=16)),
    ],
    bases=(SlurmKeys,),
)
for _name, _node in (("slurm_keys", SlurmKeys), ("shared_upstream_slurm_keys", SharedUpstreamSlurmKeys)):
    ConfigStore.instance().store(
        group="hydra/launcher", name=_name, node=_node, provider="ssl-interface-bench"
    )


@dataclasses.dataclass
class Unfinished:
    """A sweep job that did not finish: where, why, and whether it stopped at its time limit."""

    index: int
    run_dir: Path
    overrides: list[str]
    why: str
    timed_out: bool
    slurm_log: Path | None = None


class SlurmLauncher(SubmititSlurmLauncher):
    """hydra-submitit-launcher's SlurmLauncher that skips finished jobs and reports unfinished ones."""

    #: launcher keys that are not submitit parameters
    own_keys: tuple[str, ...] = ()

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Submitit 'slurm' sweep output dir : %s", sweep_dir)

        returns: list[JobReturn | None] = []
        submit: list[tuple[int, list[str], Path]] = []  # (position, overrides, run dir)
        for offset, overrides in enumerate(job_overrides):
            index = initial_job_idx + offset
            log.info("\t#%d : %s", index, " ".join(filter_overrides(overrides)))
            run_dir, results = self._finished_results(list(overrides), index)
            if results is None:
                submit.append((offset, list(overrides), run_dir))
                returns.append(None)
            else:
                returns.append(
                    JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=results)
                )
        _log_skipped(len(job_overrides) - len(submit), len(job_overrides))
        if not submit:
            return returns

        executor = self._executor()
        job_params = [
            (
                overrides,
                "hydra.sweep.dir",
                initial_job_idx + offset,
                f"job_id_for_{initial_job_idx + offset}",
                Singleton.get_state(),
            )
            for offset, overrides, _ in submit
        ]
        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        log.info("submitted %d SLURM job(s): %s", len(jobs), " ".join(job.job_id for job in jobs))
        ended = wait_for_jobs(jobs)
        unfinished = []
        for (offset, overrides, run_dir), job in zip(submit, jobs, strict=True):
            value, why, timed_out = job_outcome(job, ended)
            if why is None and isinstance(value, JobReturn) and value.status == JobStatus.FAILED:
                error = value._return_value
                why, timed_out = f"{type(error).__name__}: {error}", _is_time_out(str(error))
            if why is not None:
                unfinished.append(
                    Unfinished(initial_job_idx + offset, run_dir, overrides, why, timed_out, job.paths.stderr)
                )
                value = JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=None)
            returns[offset] = value
        if unfinished:
            self.report_unfinished(unfinished, sweep_dir, len(job_overrides))
        return returns

    # -- helpers shared with SharedUpstreamSlurmLauncher ---------------------------------------------------
    def _executor(self):
        """A submitit SLURM executor with this launcher's parameters (as the plugin builds it)."""
        import submitit

        params = {k: v for k, v in self.params.items() if k not in self.own_keys}
        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=params.pop("submitit_folder"),
            slurm_max_num_timeout=params.pop("max_num_timeout"),
        )
        common = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in common else f"slurm_{k}": v for k, v in params.items()})
        return executor

    def _finished_results(self, overrides: list[str], index: int) -> tuple[Path, dict[str, Any] | None]:
        """The job's run directory, and its results when it already finished (None: it must run)."""
        assert self.config is not None and self.hydra_context is not None
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = index
            sweep_config.hydra.job.num = index
        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(sweep_config)  # the ${hydra:...} names in the folder are the job's
        try:
            run_dir = Path(str(sweep_config.hydra.sweep.dir), str(sweep_config.hydra.sweep.subdir)).absolute()
            overwrite = bool(sweep_config.get("overwrite", False))
        finally:
            HydraConfig.instance().cfg = previous
        return run_dir, finished_results(run_dir, overwrite)

    def continue_command(self, overrides: Sequence[str], sweep_dir: Path) -> str:
        """The command line that continues these job overrides in the same sweep folder on SLURM."""
        assert self.config is not None
        launcher = [
            o
            for o in self.config.hydra.overrides.hydra
            if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))  # hydra.mode: what -m sets
        ]
        return shlex.join(
            ["python", sys.argv[0], "-m", *launcher, f"hydra.sweep.dir={sweep_dir}", *overrides]
        )

    def report_unfinished(self, unfinished: list[Unfinished], sweep_dir: Path, total: int) -> None:
        """One message per unfinished job, then exit 75 (all stopped at their time limit) or 1."""
        from downstream.training.preemption import EXIT_STOPPED_EARLY

        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        status = EXIT_STOPPED_EARLY if all(job.timed_out for job in unfinished) else 1
        for job in unfinished:
            why = job.why
            if _is_time_out(why):
                why = (
                    f"it reached its time limit (timeout_min={self.params.get('timeout_min')}) more often than "
                    f"max_num_timeout={self.params.get('max_num_timeout')} allows; its last checkpoint is kept "
                    f"({why})"
                )
            log.error(
                "job #%d did not finish: %s\n  folder: %s\n  continue it: %s%s",
                job.index,
                why.replace("\n", "\n    "),
                job.run_dir,
                self.continue_command(job.overrides, sweep_dir),
                f"\n  SLURM log: {job.slurm_log}" if job.slurm_log else "",
            )
        log.error(
            "%d of %d job(s) did not finish (the others kept their results). Relaunching the sweep's command "
            "with hydra.sweep.dir=%s continues them and submits nothing for finished jobs. Exit status %d.",
            len(unfinished),
            total,
            sweep_dir,
            status,
        )
        sys.exit(status)


class SharedUpstreamSlurmLauncher(SlurmLauncher):
    """Each group of jobs that can share the upstream (see launcher.py) becomes one SLURM job."""

    own_keys = ("max_group_size",)

    def __init__(self, max_group_size: int = 16, **params: Any) -> None:
        if max_group_size < 1:
            raise ValueError(f"hydra.launcher.max_group_size must be >= 1, got {max_group_size}")
        super().__init__(max_group_size=max_group_size, **params)
        self.max_group_size = max_group_size

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("shared-upstream SLURM sweep output dir : %s", sweep_dir)

        prepared, returns = prepare_jobs(self.hydra_context, self.config, job_overrides, initial_job_idx)
        position = {p.index: i for i, p in enumerate(prepared)}
        pending = []
        for p in prepared:
            results = finished_results(p.job.run_dir, bool(p.job.cfg.get("overwrite", False)))
            if results is None:
                pending.append(p)
            else:
                returns[position[p.index]].return_value = results
        _log_skipped(len(prepared) - len(pending), len(prepared))
        if not pending:
            return returns

        groups = group_prepared_jobs(pending, self.max_group_size)
        jobs = self._executor().map_array(GroupJob(), groups)
        for group, job in zip(groups, jobs, strict=True):
            log.info(
                "SLURM job %s trains %d job(s) on one upstream: %s",
                job.job_id,
                len(group),
                [str(p.job.run_dir) for p in group],
            )
        ended = wait_for_jobs(jobs)
        unfinished = []
        for group, job in zip(groups, jobs, strict=True):
            outcomes, why, timed_out = job_outcome(job, ended)
            for member_position, p in enumerate(group):
                if why is None:
                    returns[position[p.index]].return_value = outcomes[member_position]
                else:
                    unfinished.append(
                        Unfinished(p.index, p.job.run_dir, p.job.overrides, why, timed_out, job.paths.stderr)
                    )
        if unfinished:
            self.report_unfinished(unfinished, sweep_dir, len(prepared))
        return returns


def finished_results(run_dir: Path, overwrite: bool) -> dict[str, Any] | None:
    """A job's results when it already finished and is not to be redone (None: it must be submitted)."""
    from downstream.training.runner import load_complete_results

    return None if overwrite else load_complete_results(run_dir)


class GroupJob:
    """What one SLURM job of hydra/launcher=shared_upstream_slurm runs: ``train_group`` on its group.

    submitit calls ``checkpoint`` on its time-limit signal (after the trainer has checkpointed) and requeues
    the same group; a launch stopped by SIGTERM (preemption, ``scontrol requeue``) exits with 75 and writes
    no result, so the requeued job runs it again."""

    def __call__(self, group: list[PreparedJob]) -> list[dict[str, Any] | None]:
        from downstream.training.preemption import EXIT_STOPPED_EARLY

        root = logging.getLogger()
        if not root.handlers:  # submitit starts a bare interpreter: log to its stderr file, as Hydra would
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter(JOB_LOG_FORMAT))
            root.addHandler(handler)
        root.setLevel(logging.INFO)
        results = train_group(group)
        if any(r is None for r in results):
            log.info("stopped before the end with a checkpoint; exit status %d", EXIT_STOPPED_EARLY)
            sys.exit(EXIT_STOPPED_EARLY)
        return results

    def checkpoint(self, group: list[PreparedJob]):
        import submitit

        return submitit.helpers.DelayedSubmission(self, group)


# -- following SLURM jobs -----------------------------------------------------------------------------------


def slurm_states(job_ids: Sequence[str]) -> dict[str, str]:
    """job id (``123`` or ``123_4``) -> SLURM state, for the jobs squeue still knows (finished ones for
    MinJobAge seconds). Empty when squeue fails."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-o", "%i %T", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("squeue failed (%s); waiting for result files only", error)
        return {}
    return dict(line.split(maxsplit=1) for line in out.splitlines() if " " in line)


def wait_for_jobs(jobs: Sequence[Any]) -> dict[str, str]:
    """Block until every job has a result file or SLURM says it ended without one; returns
    {job id: SLURM state} for the latter."""
    ended: dict[str, str] = {}
    next_poll = 0.0
    while True:
        waiting = [j for j in jobs if j.job_id not in ended and not j.paths.result_pickle.exists()]
        if not waiting:
            return ended
        if time.monotonic() >= next_poll:
            states = slurm_states([j.job_id for j in waiting])
            for job in waiting:
                if states.get(job.job_id) in ENDED_STATES:
                    ended[job.job_id] = states[job.job_id]
            next_poll = time.monotonic() + STATE_POLL_S
        time.sleep(1.0)


def job_outcome(job: Any, ended: dict[str, str]) -> tuple[Any, str | None, bool]:
    """(the job's return value, why it did not finish or None, whether it stopped at its time limit)."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    if job.job_id in ended and not job.paths.result_pickle.exists():
        time.sleep(2.0)  # a result written just before the job ended may take a moment to show on NFS
        if not job.paths.result_pickle.exists():
            state = ended[job.job_id]
            return None, f"SLURM ended it (state {state}) before it wrote a result", state == "TIMEOUT"
    try:
        return job.results()[0], None, False
    except FailedJobError as error:
        why = _exception_line(str(error))
        return None, why, _is_time_out(why)
    except UncompletedJobError as error:
        return None, str(error).splitlines()[0], False


def _is_time_out(message: str) -> bool:
    return "timed-out too many times" in message


def _exception_line(failure: str) -> str:
    """The last line of the job's traceback inside submitit's FailedJobError text (the exception itself)."""
    blocks = re.split(r"^-{10,}$", failure, flags=re.MULTILINE)
    trace = blocks[1] if len(blocks) >= 3 else failure
    lines = [line for line in trace.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else failure.strip()


def _log_skipped(skipped: int, total: int) -> None:
    if skipped:
        log.info("%d of %d job(s) already have a complete results.json; not submitted", skipped, total)
