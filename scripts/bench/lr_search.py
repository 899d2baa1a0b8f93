"""Cost of a K-learning-rate x M-interface search on one upstream pass, as a fraction of separate runs.

    python scripts/benchmark.py lr_search upstream=tiny trainer.max_steps=30 trainer.eval_every=10 \\
        --lrs 1e-4,1e-3,1e-2 --interfaces weighted_sum,hconv --halving-steps 10

Hydra overrides come first, then the options. Every job (each interface at each learning rate) is run
end to end as run_downstream.py runs it (``run_experiment``: data, upstream, training, dev evaluations,
test of the best checkpoint, results.json), one after another, and the sum of their wall times is the cost
of separate runs. Then the same jobs train as one group (``run_jobs``, what the shared_upstream launcher
does): one upstream forward per batch for all K x M branches. With ``--halving-steps`` a third
measurement runs the group with successive halving at those steps. Each measurement writes into a fresh
temporary folder.
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from downstream.training.runner import Job, resolved_job_config, run_experiment, run_jobs

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides of every job (trainer.max_steps=..., ...)"
    )
    parser.add_argument("--lrs", default="1e-4,1e-3,1e-2", help="comma-separated learning rates (K)")
    parser.add_argument("--interfaces", default="weighted_sum,hconv", help="comma-separated interfaces (M)")
    parser.add_argument(
        "--halving-steps", default=None, help="comma-separated steps: also time the group with halving"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")


def job_config(overrides: list[str], run_dir: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def run(args: argparse.Namespace) -> None:
    os.environ.setdefault("SSL_BENCH_ROOT", str(CONFIG_DIR.parent))
    torch.set_num_threads(args.threads)
    lrs, interfaces = args.lrs.split(","), args.interfaces.split(",")
    jobs = [[*args.overrides, f"interface={name}", f"trainer.lr={lr}"] for name in interfaces for lr in lrs]

    def group(root: Path, extra: list[str]) -> float:
        prepared = []
        for index, overrides in enumerate(jobs):
            run_dir = root / str(index)
            prepared.append(
                Job(resolved_job_config(job_config([*overrides, *extra], run_dir)), run_dir, overrides)
            )
        started = time.perf_counter()
        run_jobs(prepared)
        return time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        separate = 0.0
        for index, overrides in enumerate(jobs):
            cfg = job_config(overrides, root / "separate" / str(index))
            started = time.perf_counter()
            run_experiment(cfg, root / "separate" / str(index))
            separate += time.perf_counter() - started
        shared = group(root / "group", [])
        halving = (
            group(root / "halving", [f"trainer.halving_steps=[{args.halving_steps}]"])
            if args.halving_steps
            else None
        )
    load = os.getloadavg()[0]
    print(
        f"{datetime.date.today()}, {os.cpu_count()} CPUs, load average {load:.1f}, {args.threads} torch thread(s)"
    )
    print(f"overrides: {' '.join(args.overrides)}")
    print("| K lrs | M interfaces | separate runs s | one group s | fraction | with halving s | fraction |")
    print("|---|---|---|---|---|---|---|")
    halving_text = "-" if halving is None else f"{halving:.1f} | {halving / separate:.2f}"
    if halving is None:
        halving_text += " | -"
    print(
        f"| {len(lrs)} | {len(interfaces)} ({', '.join(interfaces)}) | {separate:.1f} | {shared:.1f} | "
        f"{shared / separate:.2f} | {halving_text} |"
    )
