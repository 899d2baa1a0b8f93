"""Tables and plots from finished runs (results.json files under sweep directories).

collect_runs (collect.py) finds runs and gives each its row; aggregate (aggregate.py) groups them into
cells; render (render.py) writes markdown, CSV or LaTeX; write_plots (plots.py) draws figures; published
numbers come from published.yaml (published.py). ``scripts/make_table.py`` is the command line (cli.py).

The names below are imported on first use, so that ``run_downstream.py`` can register the lr-search
resolvers (``lr_search``) without importing torch or matplotlib before it skips a finished run.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF = {
    "Cell": "aggregate",
    "Column": "aggregate",
    "Table": "aggregate",
    "aggregate": "aggregate",
    "Collection": "collect",
    "RowKey": "collect",
    "Run": "collect",
    "collect_runs": "collect",
    "parse_override": "collect",
    "parameter_summary": "plots",
    "plot_comparison": "plots",
    "plot_layer_weights": "plots",
    "plot_trainable_params": "plots",
    "write_plots": "plots",
    "Reference": "published",
    "paper_model": "published",
    "published_reference": "published",
    "FORMATS": "render",
    "render": "render",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'downstream.reporting' has no attribute {name!r}")
    return getattr(importlib.import_module(f"downstream.reporting.{_MODULE_OF[name]}"), name)
