"""SSL Interface Bench's downstream package. ``from downstream import load_run`` rebuilds a finished run
(``downstream.inference.run.load_run``); the import is deferred so that importing a submodule stays cheap."""

from __future__ import annotations

from typing import Any

__all__ = ["load_run"]


def __getattr__(name: str) -> Any:
    if name == "load_run":
        from downstream.inference.run import load_run

        return load_run
    raise AttributeError(f"module 'downstream' has no attribute {name!r}")
