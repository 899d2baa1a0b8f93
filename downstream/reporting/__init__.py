"""Tables and plots from finished runs (results.json files under sweep directories).

collect_runs (collect.py) finds runs and gives each its row; aggregate (aggregate.py) groups them into
cells; render (render.py) writes markdown, CSV or LaTeX; write_plots (plots.py) draws figures; published
numbers come from published.yaml (published.py). ``scripts/make_table.py`` is the command line (cli.py).
"""

from downstream.reporting.aggregate import Cell, Column, Table, aggregate
from downstream.reporting.collect import Collection, RowKey, Run, collect_runs, parse_override
from downstream.reporting.plots import (
    parameter_summary,
    plot_comparison,
    plot_layer_weights,
    plot_trainable_params,
    write_plots,
)
from downstream.reporting.published import Reference, paper_model, published_reference
from downstream.reporting.render import FORMATS, render

__all__ = [
    "FORMATS",
    "Cell",
    "Collection",
    "Column",
    "Reference",
    "RowKey",
    "Run",
    "Table",
    "aggregate",
    "collect_runs",
    "paper_model",
    "parameter_summary",
    "parse_override",
    "plot_comparison",
    "plot_layer_weights",
    "plot_trainable_params",
    "published_reference",
    "render",
    "write_plots",
]
