"""Build interfaces from their config files (configs/interface/<name>.yaml) outside a full run.

The runner composes the root config; tests and benchmarks that want one interface on its own use these.
"""

from __future__ import annotations

from pathlib import Path

import hydra.utils
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from interfaces.base import Interface

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def interface_config_names() -> list[str]:
    """Names of every file under configs/interface/, sorted: ["cls_pooling", "concat_proj", ...]."""
    return sorted(path.stem for path in (CONFIG_DIR / "interface").glob("*.yaml"))


def compose_interface_config(name: str, overrides: list[str] | None = None) -> DictConfig:
    """The ``interface`` node Hydra composes for ``interface=<name>``, with overrides such as
    ``interface.num_groups=3``."""
    if name not in interface_config_names():
        raise ValueError(f"interface config {name!r} not found; choose one of {interface_config_names()}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=f"interface/{name}", overrides=list(overrides or [])).interface


def build_interface(
    name: str, num_layers: int, hidden_size: int, overrides: list[str] | None = None, **arguments: object
) -> Interface:
    """Instantiate configs/interface/<name>.yaml for an upstream with ``num_layers`` and ``hidden_size``
    (``arguments``: more constructor arguments, e.g. a fused upstream's ``member_dims``)."""
    config = compose_interface_config(name, overrides)
    return hydra.utils.instantiate(config, num_layers=num_layers, hidden_size=hidden_size, **arguments)
