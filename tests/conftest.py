"""Shared fixtures (the helpers themselves are in tests/helpers.py)."""

from __future__ import annotations

import os

# One compute thread per test process (in-process runs and the launches they start inherit it): the suite runs
# on two xdist workers on two cores, so more threads only oversubscribe the cores, and runs compared with each
# other (in process, in a subprocess, under SLURM) add up their floats in the same order. Tests of the thread
# choice pass their own environment (tests/test_first_hour.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from tests.helpers import compose_config  # noqa: E402


@pytest.fixture
def make_config():
    """compose_config, with Hydra's global state cleared after the test."""
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


@pytest.fixture(scope="module")
def module_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def module_cache(monkeypatch, module_cache_dir):
    """Header manifests and SV's VAD output in a cache shared by one test module (its flawed corpus copies
    share no rows with other modules' runs); ``pytestmark = pytest.mark.usefixtures("module_cache")``."""
    monkeypatch.setenv("SSL_BENCH_CACHE", str(module_cache_dir))
    return module_cache_dir
