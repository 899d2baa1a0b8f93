"""``experiment=lr_search``: SUPERB's learning-rate search on one upstream pass (configs/experiment/lr_search.yaml).

The experiment sweeps ``trainer.lr`` over the log-scale grid ``lr_search.grid`` for every interface of the
launch under the shared-upstream launcher: jobs that differ only in interface and learning rate train as one
group, one upstream forward per batch. At the end of the sweep, ``LrSearchReport`` picks each interface's
learning rate with the best dev score (``downstream.reporting.lr_choice``) and writes the table of the
chosen runs only (their test scores) to ``<sweep dir>/lr_search.md``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

REPORT_FILE = "lr_search.md"


def sweep_values(grid: Any) -> str:
    """``lr_search.grid`` (a list of learning rates) as the comma-separated values of a Hydra sweep.

    ValueError naming the key unless it is a non-empty list of positive finite numbers."""
    values = list(grid) if isinstance(grid, list | tuple | ListConfig) else None
    if not values or any(
        isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0
        for v in values
    ):
        raise ValueError(f"lr_search.grid must be a non-empty list of positive learning rates, got {grid!r}")
    return ",".join(repr(float(v)) for v in values)


def register_resolvers() -> None:
    """``${sweep_values:${lr_search.grid}}`` in configs/experiment/lr_search.yaml."""
    OmegaConf.register_new_resolver("sweep_values", sweep_values, replace=True)


class LrSearchReport(Callback):
    """At the end of a sweep: the table of each search's dev-chosen learning rate (test scores of the
    chosen runs only) in ``<sweep dir>/lr_search.md``, and in the log."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from downstream.reporting import aggregate, collect_runs, render

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            collection = collect_runs([sweep_dir], chosen_lr=True)
            text = render(aggregate(collection), "markdown") if collection.runs else None
        except (FileNotFoundError, ValueError) as error:
            log.warning("learning-rate search report of %s not written: %s", sweep_dir, error)
            return
        if text is None:
            log.warning("learning-rate search in %s: no finished run to choose from", sweep_dir)
            return
        (sweep_dir / REPORT_FILE).write_text(text)
        log.info("learning-rate search, dev-chosen runs (%s):\n%s", sweep_dir / REPORT_FILE, text)
