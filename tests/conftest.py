"""Shared fixtures (the helpers themselves are in tests/helpers.py)."""

from __future__ import annotations

import pytest
from hydra.core.global_hydra import GlobalHydra

from tests.helpers import compose_config


@pytest.fixture
def make_config():
    """compose_config, with Hydra's global state cleared after the test."""
    yield compose_config
    GlobalHydra.instance().clear()
