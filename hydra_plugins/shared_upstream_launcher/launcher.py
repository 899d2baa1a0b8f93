"""``hydra/launcher=shared_upstream``: jobs that differ only in interface and head run in one process.

    python run_downstream.py -m interface=weighted_sum,hconv,cls_pooling hydra/launcher=shared_upstream

Each job is first set up by Hydra as usual (its own directory with .hydra/ and its resolved config).
Jobs are then grouped by everything except the interface and the head; a group trains all its
(interface, head, optimizer) sets on one upstream forward per batch (downstream.training.runner.run_jobs), so a
K-interface sweep pays for the upstream once instead of K times. A job that cannot be grouped (another
task, upstream, seed or trainer setting, or a fine-tuned upstream) runs on its own, as with the basic
launcher. Every job still gets its own results.json, equal to that of the job run alone.
"""

import json
import logging
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
    """Everything that must be equal for two jobs to share one upstream forward."""
    shared = json.loads(json.dumps(resolved))
    for dotted in PER_BRANCH_KEYS:
        *parents, leaf = dotted.split(".")
        node = shared
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return json.dumps(shared, sort_keys=True)


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
        from downstream.training.runner import Job, run_jobs

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)

        # 1. Let Hydra set up every job (directory, .hydra/, resolved config) without training it.
        prepared: list[JobReturn] = []
        for offset, overrides in enumerate(job_overrides):
            index = initial_job_idx + offset
            log.info("\t#%d : %s", index, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = index
                sweep_config.hydra.job.num = index
            prepared.append(
                run_job(
                    hydra_context=self.hydra_context,
                    task_function=_prepare_job,
                    config=sweep_config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

        # 2. Group jobs that can share the upstream, then train each group in one process.
        groups: dict[str, list[int]] = {}
        for position, job_return in enumerate(prepared):
            job: Job = job_return.return_value
            resolved = OmegaConf.to_container(job.cfg)
            key = f"alone-{position}" if job.cfg.upstream.get("trainable", False) else group_key(resolved)
            members = groups.setdefault(key, [])
            if len(members) >= self.max_group_size:
                members = groups.setdefault(f"{key}#{position}", [])
            members.append(position)
        for members in groups.values():
            log.info(
                "training %d job(s) on one upstream: %s",
                len(members),
                [str(prepared[m].return_value.run_dir) for m in members],
            )
            try:
                outcomes = run_jobs([prepared[m].return_value for m in members])
            except Exception as error:  # a failing group fails each of its jobs, as Hydra reports them
                for m in members:
                    prepared[m].status = JobStatus.FAILED
                    prepared[m]._return_value = error
                continue
            for m, outcome in zip(members, outcomes, strict=True):
                prepared[m].status = JobStatus.COMPLETED
                prepared[m]._return_value = outcome
        return prepared


def _prepare_job(cfg: DictConfig):
    """Runs inside Hydra's run_job: the job's directory exists and HydraConfig is the job's."""
    from downstream.training.runner import Job, resolved_job_config

    hydra_config = HydraConfig.get()
    return Job(
        resolved_job_config(cfg), Path(hydra_config.runtime.output_dir), list(hydra_config.overrides.task)
    )
