"""Train and test one SUPERB downstream task on an upstream through an interface.

    python run_downstream.py                                   # the offline demo (tiny upstream, mini corpus, PR)
    python run_downstream.py upstream=s3prl upstream.name=hubert task=pr \
        task.data_root=/data/LibriSpeech interface=hconv       # the SUPERB PR recipe
    python run_downstream.py -m interface=weighted_sum,hconv,cls_pooling   # a sweep, one job per interface
    torchrun --nproc_per_node 4 run_downstream.py ...          # data-parallel on 4 GPUs (or CPU processes)

A launch that stops before the end with a checkpoint (SIGTERM, submitit's preemption signal,
trainer.stop_after_steps) exits with status 75 (EX_TEMPFAIL); relaunching the same command resumes it.
See README.md for every config group and option.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from downstream.lr_search import register_resolvers
from downstream.training.distributed import environment_rank, environment_world_size, shutdown_distributed

os.environ.setdefault("SSL_BENCH_ROOT", str(Path(__file__).resolve().parent))
register_resolvers()  # ${sweep_values:...} of experiment=lr_search


def prepare_torchrun_arguments(argv: list[str]) -> list[str]:
    """Command-line arguments for this torchrun rank. Every rank composes the same config and run directory;
    ranks other than 0 leave Hydra's .hydra/ record to rank 0. A sweep's default folder is named after the
    launch time, which the ranks would not agree on, so torchrun sweeps must name hydra.sweep.dir."""
    if environment_world_size() <= 1:
        return argv
    if ("-m" in argv or "--multirun" in argv) and not any(a.startswith("hydra.sweep.dir=") for a in argv):
        raise SystemExit(
            "run_downstream.py under torchrun with -m/--multirun: set hydra.sweep.dir=<folder> so that every "
            "rank writes to the same sweep folder"
        )
    return argv if environment_rank() == 0 else [*argv, "hydra.output_subdir=null"]


class _RankPrefix(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.prefix = f"[rank {rank}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from downstream.training.preemption import EXIT_STOPPED_EARLY
    from downstream.training.runner import run_experiment

    rank = environment_rank()
    if rank > 0:  # rank 0 reports progress; the others only their warnings and errors, marked with the rank
        root = logging.getLogger()
        root.setLevel(logging.WARNING)
        for handler in root.handlers:
            handler.addFilter(_RankPrefix(rank))
    hydra_config = HydraConfig.get()
    try:
        results = run_experiment(
            cfg, hydra_config.runtime.output_dir, overrides=list(hydra_config.overrides.task)
        )
    finally:
        shutdown_distributed()
    if results is None:
        logging.getLogger(__name__).info(
            "this launch stopped before the end (exit status %d); relaunch the same command to resume",
            EXIT_STOPPED_EARLY,
        )
        sys.exit(EXIT_STOPPED_EARLY)


if __name__ == "__main__":
    sys.argv[1:] = prepare_torchrun_arguments(sys.argv[1:])
    main()
