"""Shared fixtures: compose the project's Hydra config exactly as run_downstream.py does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
MINI_SUPERB = REPO_ROOT / "data" / "mini_superb"

os.environ.setdefault("SSL_BENCH_ROOT", str(REPO_ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("SSL_BENCH_OFFLINE", "1")  # the suite never downloads


# The random tiny upstream at its smallest: what every fast test trains on.
TINY_UPSTREAM = ["upstream=tiny", "upstream.num_transformer_layers=2", "upstream.hidden_size=32"]


def run_downstream_cli(
    arguments: list[str], env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python run_downstream.py ARGUMENTS` as a user types it, from the repository root; asserts it succeeded.

    ``env`` replaces the environment (default: this one with W&B disabled)."""
    env = dict(os.environ, WANDB_MODE="disabled") if env is None else env
    completed = subprocess.run(
        [sys.executable, "run_downstream.py", *arguments],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def compose_config(overrides: list[str] | None = None, run_dir: Path | None = None) -> DictConfig:
    """The config run_downstream.py would see for these command-line overrides (Hydra fields included)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides or []), return_hydra_config=True)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def make_config():
    yield compose_config
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster (tests/slurm_cluster.py) for the session; skips, saying why, where it
    cannot start (not root, packages missing). Its daemons are stopped by their pids at the end."""
    from tests.slurm_cluster import SlurmCluster, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no SLURM cluster: {reason}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
