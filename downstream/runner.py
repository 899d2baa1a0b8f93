"""Compose one experiment from a Hydra config: build upstream, interface and task, train, write results."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import hydra.utils
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from downstream.trainer import Trainer, TrainerSettings, count_parameters

log = logging.getLogger(__name__)

SCHEDULES = ("auto", "superb", "demo")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_schedule(cfg: DictConfig) -> str:
    """superb or demo: ``schedule=auto`` means demo exactly when the task reads the shipped mini corpus."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    if cfg.schedule != "auto":
        return cfg.schedule
    data_root = Path(cfg.task.data_root).resolve()
    mini_corpus = Path(cfg.paths.mini_superb).resolve()
    return "demo" if data_root.is_relative_to(mini_corpus) else "superb"


def resolve_trainer_settings(cfg: DictConfig) -> TrainerSettings:
    schedule_name = pick_schedule(cfg)
    schedules = cfg.task.schedules
    if schedule_name not in schedules:
        raise ValueError(f"task {cfg.task_name} has no {schedule_name!r} schedule; it has {list(schedules)}")
    trainer_config = OmegaConf.to_container(cfg.trainer, resolve=True)
    return TrainerSettings.resolve(
        trainer_config, OmegaConf.to_container(schedules[schedule_name], resolve=True)
    )


def load_complete_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's results.json if it exists and parses (a finished run), else None."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def run_experiment(
    cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None
) -> dict[str, Any] | None:
    """Run one experiment into ``run_dir``; return its results (None if this launch stopped early).

    A run whose results.json is already complete is not redone unless ``overwrite=true``; a run with a
    checkpoint (last.pt) resumes from it.
    """
    run_dir = Path(run_dir)
    finished = load_complete_results(run_dir)
    if finished is not None and not cfg.overwrite:
        log.info("%s already has a complete results.json; skipping (overwrite=true reruns it)", run_dir)
        return finished
    if cfg.overwrite:
        for stale in ("results.json", "last.pt", "best.pt", "curve.jsonl"):
            (run_dir / stale).unlink(missing_ok=True)

    settings = resolve_trainer_settings(cfg)
    seed_everything(cfg.seed)
    task = hydra.utils.instantiate(cfg.task, _recursive_=False)
    task.check_data()
    upstream = hydra.utils.instantiate(cfg.upstream)
    interface = hydra.utils.instantiate(
        cfg.interface, num_layers=upstream.num_layers, hidden_size=upstream.hidden_size
    )
    logger = hydra.utils.instantiate(cfg.logger, run_dir=run_dir)
    trainer = Trainer(settings, upstream, interface, task, run_dir, logger, seed=cfg.seed)
    log.info(
        "%s | %s (L=%d, D=%d) | %s -> %d features | schedule %s: %d steps, lr %g",
        cfg.task_name,
        upstream.name,
        upstream.num_layers,
        upstream.hidden_size,
        cfg.interface_name,
        interface.output_size,
        pick_schedule(cfg),
        settings.max_steps,
        settings.lr,
    )

    outcome = trainer.run(config=OmegaConf.to_container(cfg, resolve=True))
    if outcome is None:
        logger.finish(None)
        return None
    weights = interface.layer_weights()
    results = {
        "task": cfg.task_name,
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "interface": cfg.interface_name,
        "upstream": upstream.name,
        "upstream_config": cfg.upstream_config,
        "num_layers": upstream.num_layers,
        "hidden_size": upstream.hidden_size,
        "seed": cfg.seed,
        "fold": cfg.task.get("fold"),
        "schedule": pick_schedule(cfg),
        "trainable_params": {
            "interface": count_parameters(interface),
            "head": count_parameters(trainer.head),
            "upstream": count_parameters(upstream) if upstream.trainable else 0,
        },
        "steps": settings.max_steps,
        "best_step": outcome["best_step"],
        "skipped_updates": outcome["bad_steps"],
        "dev": outcome["dev"],
        "test": outcome["test"],
        "layer_weights": None if weights is None else weights.detach().float().cpu().tolist(),
        "overrides": list(overrides or []),
    }
    logger.finish(results)
    log.info("results: %s", run_dir / "results.json")
    return results
