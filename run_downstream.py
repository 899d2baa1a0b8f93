"""Train and test one SUPERB downstream task on an upstream through an interface.

    python run_downstream.py                                   # the offline demo (tiny upstream, mini corpus, PR)
    python run_downstream.py upstream=s3prl upstream.name=hubert task=pr \
        task.data_root=/data/LibriSpeech interface=hconv       # the SUPERB PR recipe
    python run_downstream.py -m interface=weighted_sum,hconv,cls_pooling   # a sweep, one job per interface
    torchrun --nproc_per_node 4 run_downstream.py ...          # data-parallel on 4 GPUs (or CPU processes)

A launch that stops before the end with a checkpoint (SIGTERM, submitit's preemption signal,
trainer.stop_after_steps) exits with status 75 (EX_TEMPFAIL) and prints the command that resumes it.
See README.md for every config group and option.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

os.environ.setdefault("SSL_BENCH_ROOT", str(Path(__file__).resolve().parent))

# Torch-free imports only up to the skip check, so that relaunching a finished run returns in about a
# second; identity also registers the config's resolvers (${schedule:...}, ${protocol:...}, ${sweep_values:...},
# ${run_hash:}, ${job_dirname:}, ${upstream_label:}, ${protocol_tag:}).
from downstream.quiet import quiet_third_party  # noqa: E402
from downstream.results import record_failure, removable_failed_run  # noqa: E402
from downstream.training.errors import DEBUG_HINT, error_message, wants_traceback  # noqa: E402
from downstream.training.identity import RunIdentity, check_run_dir, write_resolved_hydra_config  # noqa: E402
from downstream.training.relaunch import continue_command  # noqa: E402

log = logging.getLogger("run_downstream")

EXIT_ERROR = 1


class JobFailedError(CompactHydraException):
    """A sweep job's failure, already reported in one message; Hydra lists it at the end of the sweep."""


def process_rank() -> int:
    """This process's torchrun rank (0 without torchrun; the engine is imported only under torchrun)."""
    if "WORLD_SIZE" not in os.environ:
        return 0
    from downstream.training.distributed import environment_rank

    return environment_rank()


def prepare_torchrun_arguments(argv: list[str]) -> list[str]:
    """Command-line arguments for this torchrun rank. Every rank composes the same config and run directory;
    ranks other than 0 leave Hydra's .hydra/ record to rank 0. A sweep's default folder is named after the
    launch time, which the ranks would not agree on, so torchrun sweeps must name hydra.sweep.dir."""
    if "WORLD_SIZE" not in os.environ:
        return argv
    from downstream.training.distributed import environment_world_size

    if environment_world_size() <= 1:
        return argv
    if ("-m" in argv or "--multirun" in argv) and not any(a.startswith("hydra.sweep.dir=") for a in argv):
        raise SystemExit(
            "run_downstream.py under torchrun with -m/--multirun: set hydra.sweep.dir=<folder> so that every "
            "rank writes to the same sweep folder"
        )
    return argv if process_rank() == 0 else [*argv, "hydra.output_subdir=null"]


class _RankPrefix(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.prefix = f"[rank {rank}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


def resume_advice(lead: str = "to resume, run") -> str:
    """``<lead>:`` and, on the next line, the command that continues this launch's folders
    (``relaunch.continue_command``: the sweep folder of a sweep, the run folder of a single run)."""
    hydra_config = HydraConfig.get()
    if hydra_config.mode == RunMode.MULTIRUN:
        command = continue_command(hydra_config.sweep.dir, sweep=True)
    else:
        command = continue_command(hydra_config.runtime.output_dir, sweep=False)
    return f"{lead}:\n  {command}"


def launch(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> int:
    """Skip, train or resume the run of ``cfg`` in ``run_dir`` (or re-adopt it: ``adopt=true``); returns the
    exit status (0 or 75)."""
    rank = process_rank()
    if rank > 0:  # rank 0 reports progress; the others only their warnings and errors, marked with the rank
        root = logging.getLogger()
        root.setLevel(logging.WARNING)
        for handler in root.handlers:
            handler.addFilter(_RankPrefix(rank))
    if cfg.get("adopt", False):
        if rank == 0:
            from downstream.training.adopt import adopt_run

            adopt_run(cfg, run_dir)
        return 0
    if not cfg.overwrite and check_run_dir(RunIdentity.of(cfg), run_dir) is not None:
        if rank == 0:
            write_resolved_hydra_config(cfg, run_dir)
        log.info(
            "%s already has a complete results.json of these settings; skipping (overwrite=true reruns it)",
            run_dir,
        )
        return 0

    from downstream.training.distributed import shutdown_distributed
    from downstream.training.preemption import EXIT_STOPPED_EARLY
    from downstream.training.runner import run_experiment

    try:
        results = run_experiment(cfg, run_dir, overrides=overrides)
    finally:
        shutdown_distributed()
    if results is None:
        log.info(
            "this launch stopped before the end (exit status %d); %s", EXIT_STOPPED_EARLY, resume_advice()
        )
        return EXIT_STOPPED_EARLY
    return 0


def is_lock_refusal(error: BaseException) -> bool:
    """Whether ``error`` is the refusal of a run folder that another launch holds."""
    from downstream.training.run_lock import RunFolderLockedError

    return isinstance(error, RunFolderLockedError)


def leave_failed_run(run_dir: Path, message: str, log_name: str) -> str:
    """After a failed launch: remove ``run_dir`` when it holds nothing but what the launch wrote before
    training (``removable_failed_run``), else end its log with the error (``record_failure``), which
    make_table then reports as ``failed: <message>``. Returns ``message`` with the folder's fate."""
    if removable_failed_run(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
        return message.replace(
            f"run folder {run_dir}; ", f"run folder {run_dir} removed: nothing was trained; "
        )
    if run_dir.is_dir():
        record_failure(
            run_dir, "\n".join(line for line in message.splitlines() if DEBUG_HINT not in line), log_name
        )
    return message


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """One job: a single run, or one job of a sweep. Errors end with one message on stderr and exit status
    1 (a sweep's other jobs still run, and the sweep fails at the end); Ctrl-C ends with 130."""
    from downstream.training.preemption import EXIT_INTERRUPTED

    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    quiet_third_party(wants_traceback(cfg.get("debug", False)))
    try:
        status = launch(cfg, run_dir, list(hydra_config.overrides.task))
    except KeyboardInterrupt:
        print(
            f"interrupted (Ctrl-C); what was trained up to the last checkpoint in {run_dir} is kept; "
            + resume_advice(),
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:
        if wants_traceback(cfg.get("debug", False)):
            traceback.print_exc()  # the whole chain (Hydra would shorten some errors to their message)
            message = f"error: {type(error).__name__} (traceback above)"
        else:
            message = error_message(error, run_dir)
        if process_rank() == 0 and not is_lock_refusal(error):  # another launch's folder: left to it
            message = leave_failed_run(run_dir, message, f"{hydra_config.job.name}.log")
        if not wants_traceback(cfg.get("debug", False)):
            print(message, file=sys.stderr)
        if hydra_config.mode == RunMode.MULTIRUN:
            lead = (
                "the sweep's other jobs go on; once this is fixed, continue the sweep (finished jobs are "
                "skipped; this one resumes from its last checkpoint, or starts if it saved none) with"
            )
            print(resume_advice(lead), file=sys.stderr)
            raise JobFailedError(message.splitlines()[0]) from None
        sys.exit(EXIT_ERROR)
    if status:
        sys.exit(status)


def report_config_names(arguments: list[str]) -> None:
    """Make Hydra report an unknown key or config option with the closest names of the config tree
    (``config_help.suggest``) instead of its advice to append the key with ``+``: the message alone on
    stderr and exit status 1 (Hydra's own report would add its HYDRA_FULL_ERROR advice, for no traceback);
    likewise the end of a sweep with failed jobs (``JobFailedError``: each job's message is already out).
    Hydra's other errors are left as they are."""
    from hydra._internal import utils as hydra_utils

    from downstream.training.config_help import ConfigNameError, suggest

    report = hydra_utils.run_and_report
    overrides = [argument for argument in arguments if "=" in argument and not argument.startswith("-")]

    def run_and_report(function):
        def with_suggestions():
            try:
                return function()
            except JobFailedError:
                print(
                    "error: the sweep ended with failed jobs; each one's message and the command that continues "
                    "the sweep are above",
                    file=sys.stderr,
                )
                raise SystemExit(EXIT_ERROR) from None
            except CompactHydraException as error:
                better = suggest(error, overrides)
                if isinstance(better, ConfigNameError):
                    print(f"error: {better}", file=sys.stderr)
                    raise SystemExit(EXIT_ERROR) from None
                raise

        return report(with_suggestions)

    hydra_utils.run_and_report = run_and_report


if __name__ == "__main__":
    if any(argument in ("--help", "-h") for argument in sys.argv[1:]):
        from downstream.training.config_help import help_text, option_help

        selections = [argument for argument in sys.argv[1:] if "=" in argument]
        try:
            print(option_help(selections) if selections else help_text(), end="")  # Hydra's: --hydra-help
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        sys.exit(0)
    sys.argv[1:] = prepare_torchrun_arguments(sys.argv[1:])
    report_config_names(sys.argv[1:])
    main()
