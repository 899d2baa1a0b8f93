"""The learning rate chosen on dev: SUPERB tunes only the learning rate (on a log grid) and reports the test
score of the run whose dev score is best (Yang et al., SUPERB, arXiv 2105.01051, Section 4).

Runs that differ only in ``trainer.lr`` form one search: same upstream, interface (and its settings), head
and task. Each learning rate's dev score is the mean task metric over its runs (seeds, folds); the best one
in the task's direction is chosen (a tie keeps the smaller learning rate).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from downstream.results import RESULTS_FILE, ResultsFileError, RunResults

log = logging.getLogger(__name__)

#: Overrides that a learning-rate search varies: they do not tell a search's rows apart.
LR_KEYS = frozenset({"trainer.lr"})


@dataclass(frozen=True)
class LrChoice:
    """One search: the chosen learning rate, its mean dev score and every learning rate tried."""

    lr: float | None
    dev: float
    tried: tuple[float | None, ...]
    metric: str


def run_lr(results: RunResults) -> float | None:
    """The run's head learning rate: results.json's ``lr``, else its ``trainer.lr`` override, else None
    (a record written before ``lr`` was recorded, run at its schedule's rate)."""
    if results.lr is not None:
        return float(results.lr)
    for override in results.overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key.strip() == "trainer.lr":
            return float(value)
    return None


def choose_learning_rates(
    records: Sequence[tuple[Path, RunResults]], searches: Sequence[Hashable]
) -> tuple[dict[tuple[Hashable, str], LrChoice], list[bool]]:
    """The choice of each (search, task) that tried more than one learning rate, and per record whether it
    is a run of its search's chosen learning rate (always, in a search of one learning rate).

    ``searches[i]`` names record i's search (its table row with ``LR_KEYS`` left out). ResultsFileError,
    naming the file, when a run of a search of several learning rates lacks its dev metric."""
    members: dict[tuple[Hashable, str], list[int]] = defaultdict(list)
    for index, ((_, results), search) in enumerate(zip(records, searches, strict=True)):
        members[(search, results.task)].append(index)
    choices = {}
    for key, indices in members.items():
        by_lr: dict[float | None, list[float]] = defaultdict(list)
        for index in indices:
            run_dir, results = records[index]
            by_lr[run_lr(results)].append(results.score("dev") if results.metric in results.dev else None)
        if len(by_lr) < 2:
            continue
        for index in indices:
            run_dir, results = records[index]
            if results.metric not in results.dev:
                raise ResultsFileError(
                    f"{run_dir / RESULTS_FILE}: 'dev' has no '{results.metric}' entry, needed to choose the "
                    "learning rate"
                )
        _, first = records[indices[0]]
        tried = sorted(by_lr, key=lambda lr: (lr is None, lr or 0.0))
        means = {lr: float(np.mean(by_lr[lr])) for lr in tried}
        pick = max if first.higher_is_better else min
        best = pick(tried, key=lambda lr: means[lr])  # the first of equals: the smaller learning rate
        choices[key] = LrChoice(lr=best, dev=means[best], tried=tuple(tried), metric=first.metric)
    chosen = [
        (search, results.task) not in choices or run_lr(results) == choices[(search, results.task)].lr
        for (_, results), search in zip(records, searches, strict=True)
    ]
    return choices, chosen


def format_lr(lr: float | None) -> str:
    return "schedule's" if lr is None else f"{lr:g}"


def grid_edge_warning(choice: LrChoice) -> str | None:
    """Advice when the chosen learning rate is the grid's smallest or largest (the best may lie beyond it),
    else None. Only among numeric learning rates; a search of the schedule's rate alone has no edge."""
    numeric = sorted(lr for lr in choice.tried if lr is not None)
    if len(numeric) < 2 or choice.lr is None:
        return None
    if choice.lr == numeric[-1]:
        return f"best lr is the grid's largest: extend the grid above {format_lr(choice.lr)}"
    if choice.lr == numeric[0]:
        return f"best lr is the grid's smallest: extend the grid below {format_lr(choice.lr)}"
    return None


def choice_notes(choices: dict[tuple[Hashable, str], LrChoice], label) -> list[str]:
    """One line per search; ``label(search)`` names its row. A choice at either end of the grid says so
    (``grid_edge_warning``) and is logged as a warning."""
    notes = []
    for (search, task), choice in choices.items():
        note = (
            f"lr search {task} / {label(search)}: chose lr {format_lr(choice.lr)} "
            f"(dev {choice.metric} {choice.dev:.2f}; tried {', '.join(map(format_lr, choice.tried))})"
        )
        edge = grid_edge_warning(choice)
        if edge is not None:
            note += f" -- WARNING: {edge}"
            log.warning("lr search %s / %s: %s", task, label(search), edge)
        notes.append(note)
    return notes
