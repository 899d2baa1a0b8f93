"""Compose one experiment from a Hydra config: build upstream, interface and task, train, write results."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra.utils
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from downstream.heads import count_parameters
from downstream.results import ResultsFileError, RunResults, too_long_record
from downstream.tasks.base import Task
from downstream.training.branch import BRANCH_SETTINGS, Branch
from downstream.training.cache import HiddenStateCache, open_hidden_state_cache
from downstream.training.checkpoint import remove_leftover_temporary_files
from downstream.training.data_check import check_inputs
from downstream.training.distributed import barrier, gather_objects, init_distributed, rank_info
from downstream.training.identity import (
    IDENTITY_FILE,
    RunIdentity,
    check_run_dir,
    describe_difference,
    nearest_run,
    schedule_of,
    write_identity,
    write_resolved_hydra_config,
)
from downstream.training.identity import (
    resolved_job_config as resolved_job_config,  # re-exported: the shared-upstream launcher's import
)
from downstream.training.integrity import check_integrity
from downstream.training.loading import pick_device, resolve_num_workers
from downstream.training.run_lock import HOLDER_FILE, RunFolderLockedError, hold_run_folders
from downstream.training.run_log import SilentRunLogger, about_run, environment_record
from downstream.training.settings import TrainerSettings
from downstream.training.threads import apply_threads, overloaded
from downstream.training.trainer import Trainer
from downstream.training.untrained import run_untrained_jobs
from interfaces.base import Interface
from upstream.base import Upstream

log = logging.getLogger(__name__)

#: Keys of a task config that the runner reads and the task does not take: the head to build on the
#: interface (``build_branch``), the trainer schedules (``resolve_trainer_settings``) and the protocol
#: maps (read through ``${protocol:<key>}`` in the task's own keys).
RUNNER_TASK_KEYS = ("head", "schedules", "protocols", "protocol_sources")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_trainer_settings(cfg: DictConfig) -> TrainerSettings:
    """The job's trainer settings as Hydra resolved them (the task schedule's values where the trainer
    config says ``${schedule:<key>}``), type-checked (``settings.ConfigValueError``)."""
    return TrainerSettings.from_config(OmegaConf.to_container(cfg.trainer, resolve=True))


def build_task(task_config: DictConfig) -> Task:
    """The task of a ``task`` config node: its ``_target_`` class with every key but ``RUNNER_TASK_KEYS``."""
    arguments = OmegaConf.to_container(task_config, resolve=True)
    for key in RUNNER_TASK_KEYS:
        arguments.pop(key, None)
    return hydra.utils.instantiate(arguments, _recursive_=False)


def load_complete_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's results.json if it exists and holds a complete record (a finished run), else None.
    Whether its settings are this launch's is checked when the job runs (``prepare_run_dir``)."""
    try:
        return RunResults.load(run_dir).to_dict()
    except ResultsFileError:
        return None


def interface_member_arguments(interface_config: DictConfig, upstream: Upstream) -> dict[str, Any]:
    """``member_dims`` for an interface that takes it (the fusion interfaces) on a fused upstream, else {}."""
    member_dims = getattr(upstream, "member_dims", None)
    if member_dims is None:
        return {}
    if not getattr(hydra.utils.get_class(interface_config._target_), "takes_member_dims", False):
        return {}
    return {"member_dims": list(member_dims)}


def build_model(
    cfg: DictConfig, upstream: Upstream, task: Task, num_outputs: int | None = None
) -> tuple[Interface, nn.Module]:
    """The job's interface (``cfg.interface`` on the upstream's L and D) and head (``cfg.task.head`` on the
    interface's D'), seeded with ``cfg.seed`` as in a run of its own. ``num_outputs``: the head's output
    count when known without the corpus (a finished run's best.pt records it), else the task's."""
    interface = build_interface(cfg, upstream)
    head = task.build_head(interface.output_size, cfg.task.head, num_outputs=num_outputs)
    return interface, head


def build_interface(cfg: DictConfig, upstream: Upstream) -> Interface:
    """``cfg.interface`` on the upstream's L hidden states of size D, seeded with ``cfg.seed`` first (its
    initial weights are those of a run of its own)."""
    seed_everything(cfg.seed)
    return hydra.utils.instantiate(
        cfg.interface,
        num_layers=upstream.num_layers,
        hidden_size=upstream.hidden_size,
        **interface_member_arguments(cfg.interface, upstream),
    )


def build_branch(
    cfg: DictConfig, upstream: Upstream, task: Task, settings: TrainerSettings, run_dir: Path
) -> Branch:
    """The job's interface and head, seeded exactly as in a run of its own, with its logger and run dir."""
    interface, head = build_model(cfg, upstream, task)
    # under torchrun only rank 0 writes the curve, results.json and W&B
    logger = (
        hydra.utils.instantiate(cfg.logger, run_dir=run_dir) if rank_info().is_main else SilentRunLogger()
    )
    branch = Branch(
        interface,
        head,
        run_dir,
        logger=logger,
        settings=settings,
        device=pick_device(settings.device),
        seed=cfg.seed,
        upstream=upstream if upstream.trainable else None,
        config={
            **OmegaConf.to_container(cfg, resolve=True),
            "config_hash": RunIdentity.of(cfg).hash,
            "environment": environment_record(pick_device(settings.device)),
        },
    )
    branch.use_averaging(task)
    return branch


def build_results(
    cfg: DictConfig,
    task: Task,
    upstream: Upstream,
    branch: Branch,
    settings: TrainerSettings,
    outcome: dict[str, Any],
    overrides: list[str] | None,
    data_policy: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The results.json record of one finished run."""
    weights = branch.interface.layer_weights()
    return RunResults(
        task=cfg.task_name,
        metric=task.metric,
        higher_is_better=task.higher_is_better,
        interface=cfg.interface_name,
        upstream=upstream.name,
        upstream_config=cfg.upstream_config,
        num_layers=upstream.num_layers,
        hidden_size=upstream.hidden_size,
        layer_ids=list(upstream.layer_ids),
        frame_rate=upstream.frame_rate,
        members=upstream.member_records() if hasattr(upstream, "member_records") else None,
        seed=cfg.seed,
        fold=cfg.task.get("fold"),
        schedule=schedule_of(cfg),
        protocol=cfg.protocol.name,
        trainable_params={
            "interface": count_parameters(branch.interface),
            "head": count_parameters(branch.head),
            "upstream": count_parameters(upstream) if upstream.trainable else 0,
        },
        steps=settings.max_steps,
        lr=settings.lr,
        limit_eval_batches=settings.limit_eval_batches,
        best_step=outcome["best_step"],
        skipped_updates=outcome["bad_steps"],
        too_long=too_long_record(task.max_seconds, task.on_too_long, outcome.get("too_long")),
        data_policy=data_policy,
        dev=outcome["dev"],
        test=outcome["test"],
        test_selected=outcome.get("test_selected"),
        layer_weights=None if weights is None else weights.detach().float().cpu().tolist(),
        overrides=tuple(overrides or ()),
        stopped_early=outcome.get("stopped_early"),
        trainer=settings.record(),
        environment=environment_record(pick_device(settings.device)),
        config_hash=RunIdentity.of(cfg).hash,
        extra=averaged_record(task, outcome.get("averaged_steps")),
    ).to_dict()


def averaged_record(task: Task, steps: list[int] | None) -> dict[str, Any]:
    """results.json's ``averaged_checkpoints`` when the tested model is an average (``averaging.py``):
    the steps averaged, best first, and the dev number that ranked them."""
    if not steps:
        return {}
    return {"averaged_checkpoints": {"steps": steps, "by": task.select_metric}}


#: What ``overwrite=true`` removes from a run folder before training it again.
STALE_OUTPUTS = (
    "results.json",
    "last.pt",
    "last.pt.previous",
    "best.pt",
    "best.pt.previous",
    "average.pt",  # checkpoint averaging's tested model (training/averaging.py)
    "average.pt.previous",
    "curve.jsonl",
    IDENTITY_FILE,
    "wandb/run_id.txt",
)


def prepare_run_dir(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Finished results to reuse (None: the run must train). The folder must hold nothing or a run of the
    same settings (``identity.check_run_dir``, else ``RunConfigMismatchError``); ``overwrite=true`` clears
    its old outputs instead. A run that will train records its identity (identity.json) and its resolved
    config (.hydra/config.yaml)."""
    identity = RunIdentity.of(cfg)
    if cfg.overwrite:
        if rank_info().is_main:
            for name in STALE_OUTPUTS:
                (run_dir / name).unlink(missing_ok=True)
            for model in (run_dir / "nbest").glob("step*.pt*"):  # checkpoint averaging's models
                model.unlink()
    else:
        finished = check_run_dir(identity, run_dir)
        if finished is not None:
            log.info(
                "%s already has a complete results.json of these settings; skipping (overwrite=true reruns it)",
                run_dir,
            )
            return finished
    if rank_info().is_main:
        if not (run_dir / IDENTITY_FILE).is_file():
            log_nearest_run(identity, run_dir)
        write_identity(identity, run_dir)
        write_resolved_hydra_config(cfg, run_dir)
    return None


def log_nearest_run(identity: RunIdentity, run_dir: Path) -> None:
    """Log which settings of this new run folder differ from the nearest run beside it (``nearest_run``)."""
    nearest = nearest_run(identity, run_dir)
    if nearest is not None:
        log.info(
            "new run folder %s; nearest run %s",
            run_dir.name,
            describe_difference(identity, *nearest),
            extra=about_run(run_dir),
        )


@dataclass
class Job:
    """One experiment: its resolved config (``resolved_job_config``), output directory and overrides."""

    cfg: DictConfig
    run_dir: Path
    overrides: list[str] = field(default_factory=list)


def run_experiment(
    cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None
) -> dict[str, Any] | None:
    """Run one experiment into ``run_dir``; return its results (None if this launch stopped early).

    A run whose results.json is already complete is not redone unless ``overwrite=true``; a run with a
    checkpoint (last.pt) resumes from it.
    """
    return run_jobs([Job(cfg, Path(run_dir), list(overrides or []))])[0]


def build_hidden_state_cache(
    cfg: DictConfig, upstream: Upstream, task: Task, settings: TrainerSettings
) -> HiddenStateCache | None:
    """The on-disk hidden-state cache when ``cache.enabled`` (filled on first use), else None."""
    cache_config = cfg.get("cache")
    if cache_config is None or not cache_config.enabled:
        return None
    return open_hidden_state_cache(
        OmegaConf.to_container(cache_config, resolve=True),
        OmegaConf.to_container(cfg.upstream, resolve=True),
        upstream,
        task,
        settings,
        seed=cfg.seed,
        device=pick_device(settings.device),
    )


def group_settings(settings: list[TrainerSettings], run_dirs: list[Path]) -> TrainerSettings:
    """The settings a group's trainer runs by (the first job's): ValueError, naming the setting and the
    runs, if the jobs differ in a trainer setting that is not a branch's own (``BRANCH_SETTINGS``)."""
    first = settings[0]
    for other, run_dir in zip(settings[1:], run_dirs[1:], strict=True):
        for name in first.__dataclass_fields__:
            if name not in BRANCH_SETTINGS and getattr(other, name) != getattr(first, name):
                raise ValueError(
                    f"cannot train these runs on one upstream: trainer.{name} is {getattr(first, name)!r} in "
                    f"{run_dirs[0]} but {getattr(other, name)!r} in {run_dir}; only {list(BRANCH_SETTINGS)} "
                    "may differ"
                )
    return first


def set_threads(settings: TrainerSettings) -> int:
    """Set and log torch's CPU threads (``trainer.threads``, ``downstream/training/threads.py``); warn when
    the machine's load leaves these threads waiting."""
    workers = resolve_num_workers(settings.num_workers, pick_device(settings.device))
    threads, why = apply_threads(settings.threads, workers)
    log.info("CPU threads: %d (%s; trainer.threads=<n> sets it)", threads, why)
    if overloaded(threads):
        log.warning(
            "the machine's load average (%.1f) exceeds its %d cores: %d threads mostly wait on each other; "
            "trainer.threads=1 is often several times faster on a shared machine",
            os.getloadavg()[0],
            os.cpu_count() or 1,
            threads,
        )
    return threads


def halving_pool(cfg: DictConfig) -> str:
    """Branches with the same interface and head config compete in successive halving."""
    return repr([OmegaConf.to_container(node, resolve=True) for node in (cfg.interface, cfg.task.head)])


def run_jobs(jobs: list[Job]) -> list[dict[str, Any] | None]:
    """Train jobs that differ only in interface, head and optimizer settings (``BRANCH_SETTINGS``: the
    learning rates, optimizer, weight decay, scheduler, warmup) together: one upstream forward per batch
    feeds every job's branch, each with its own optimizer. Returns each job's results (None where this
    launch stopped early).

    The jobs must share task, upstream (frozen when there are several), every other trainer setting and
    seed; ``hydra_plugins/shared_upstream_launcher`` groups a sweep's jobs by exactly that.
    """
    all_settings = [resolve_trainer_settings(job.cfg) for job in jobs]  # checked before anything is written
    init_distributed(jobs[0].cfg.trainer.device)  # torchrun: join the process group (no-op otherwise)
    with lock_run_folders([job.run_dir for job in jobs]):
        return _run_locked_jobs(jobs, all_settings)


@contextlib.contextmanager
def lock_run_folders(run_dirs: list[Path]) -> Iterator[None]:
    """Hold every run folder's lock inside the block (``run_lock``; rank 0 holds them under torchrun), after
    removing the temporary files a killed launch left there. ``RunFolderLockedError`` on every rank, naming
    the holder, when another launch trains one of the folders."""
    ranks = rank_info()
    with contextlib.ExitStack() as stack:
        refusal = None
        if ranks.is_main:
            try:
                stack.enter_context(hold_run_folders(run_dirs))
            except RunFolderLockedError as error:
                refusal = str(error)
        refusals = [message for message in gather_objects(refusal) if message]
        if refusals:
            raise RunFolderLockedError(refusals[0])
        if ranks.is_main:
            for run_dir in run_dirs:
                remove_leftover_temporary_files(run_dir, keep=(f".{HOLDER_FILE}.",))
        yield


def _run_locked_jobs(jobs: list[Job], all_settings: list[TrainerSettings]) -> list[dict[str, Any] | None]:
    """``run_jobs`` once the folders are locked."""
    results = [prepare_run_dir(job.cfg, job.run_dir) for job in jobs]
    barrier()  # rank 0 has removed old outputs (overwrite=true) before any rank reads the run directory
    pending = [index for index, finished in enumerate(results) if finished is None]
    if not pending:
        return results
    first = jobs[pending[0]].cfg
    job_settings = {index: all_settings[index] for index in pending}
    settings = group_settings([job_settings[i] for i in pending], [jobs[i].run_dir for i in pending])
    if settings.limit_eval_batches is not None:
        log.warning(
            "trainer.limit_eval_batches=%d: dev/test metrics cover only part of each split",
            settings.limit_eval_batches,
        )
    set_threads(settings)
    seed_everything(first.seed)
    task = build_task(first.task)
    if not task.trains:  # nothing to train (QbE): score the interface's features; same results.json
        return run_untrained_jobs(jobs, results, pending, task, settings, build_results)
    task.check_data()
    integrity = check_integrity(task)  # before any model: ids, leakage, rates, NaN audio, label forms
    upstream = hydra.utils.instantiate(first.upstream)
    data_policy = check_inputs(task, upstream, integrity)  # before any dataset: pads, leaves out, counts
    branches = [build_branch(jobs[i].cfg, upstream, task, job_settings[i], jobs[i].run_dir) for i in pending]
    for index, branch in zip(pending, branches, strict=True):
        branch.halving_pool = halving_pool(jobs[index].cfg)
    if settings.halving_steps:
        pool_sizes = Counter(branch.halving_pool for branch in branches)
        for branch in branches:
            if pool_sizes[branch.halving_pool] == 1:
                log.warning(
                    "trainer.halving_steps=%s has no effect on %s: no other branch of this launch has its "
                    "interface and head config, and successive halving ranks the branches of one interface "
                    "trained together (experiment=lr_search, or a sweep under hydra/launcher=shared_upstream)",
                    list(settings.halving_steps),
                    branch.run_dir,
                )
    tf32 = "off"
    if settings.tf32:
        tf32 = "on" if pick_device(settings.device).type == "cuda" else "on (no effect on CPU)"
    for index, branch in zip(pending, branches, strict=True):
        log.info(
            "%s | %s (L=%d, D=%d) | %s -> %d features | schedule %s: %d steps, lr %g | precision %s, tf32 %s | %s",
            first.task_name,
            upstream.name,
            upstream.num_layers,
            upstream.hidden_size,
            jobs[index].cfg.interface_name,
            branch.interface.output_size,
            schedule_of(first),
            settings.max_steps,
            branch.settings.lr,
            settings.precision,
            tf32,
            branch.run_dir,
        )
    cache = build_hidden_state_cache(first, upstream, task, settings)
    try:
        outcomes = Trainer(
            settings, upstream, task, branches, seed=first.seed, hidden_state_cache=cache
        ).run()
    except BaseException:  # an error or Ctrl-C: close the loggers (W&B) before the launch ends
        for branch in branches:
            branch.logger.finish(None)
        raise
    for position, (index, branch) in enumerate(zip(pending, branches, strict=True)):
        if outcomes is None:
            branch.logger.finish(None)
            continue
        job = jobs[index]
        results[index] = build_results(
            job.cfg,
            task,
            upstream,
            branch,
            job_settings[index],
            outcomes[position],
            job.overrides,
            data_policy,
        )
        branch.logger.finish(results[index])
        log.info("results: %s", job.run_dir / "results.json")
    return results
