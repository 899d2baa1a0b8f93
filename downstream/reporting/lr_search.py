"""``experiment=lr_search``: SUPERB's learning-rate search on one upstream pass (configs/experiment/lr_search.yaml).

The experiment sweeps ``trainer.lr`` over the log-scale grid ``lr_search.grid`` for every interface of the
launch under the shared-upstream launcher: jobs that differ only in interface and learning rate train as one
group, one upstream forward per batch. At the end of the sweep, ``LrSearchReport`` picks each interface's
learning rate with the best dev score (``downstream.reporting.lr_choice``) and writes the table of the
chosen runs only (their test scores) to ``<sweep dir>/lr_search.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

REPORT_FILE = "lr_search.md"


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
