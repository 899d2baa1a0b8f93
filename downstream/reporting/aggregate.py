"""Cells of a results table: the runs of one row and task, their mean, sample std and published number."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from downstream.reporting.collect import Collection, RowKey, Run, interface_params_by_row, row_sort_key
from downstream.reporting.published import Reference, published_reference
from downstream.results import RESULTS_FILE, ResultsFileError

SPLITS = ("test", "dev")
TASK_ORDER = ("pr", "asr", "sid", "er", "ic", "sv", "ml_mono", "ml_multi", "lid", "qbe", "sd")
# Metrics beyond a task's primary one that get a column of their own: task -> (column, metric, higher is better).
# ml_multi trains LID jointly; its LID accuracy is the paper's "LID-1h acc" column.
SECONDARY_COLUMNS = {"ml_multi": (("lid", "lid_acc", True),)}
NUM_ER_FOLDS = 5  # IEMOCAP's five sessions, one held out per fold


@dataclass(frozen=True)
class Column:
    task: str
    metric: str
    higher_is_better: bool

    @property
    def title(self) -> str:
        metric = self.metric.removeprefix(f"{self.task}_")  # the lid column's lid_acc reads "LID acc"
        return f"{self.task.upper()} {metric.upper() if metric != 'acc' else 'acc'}"

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


@dataclass
class Cell:
    """The runs of one row and task: their scores (with seed and fold each) and the published number."""

    values: tuple[float, ...]
    seeds: tuple
    folds: tuple
    reference: Reference | None
    best: bool = False

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1); None for a single run."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None

    def fold_note(self) -> str | None:
        """Which folds a fold-averaged cell holds, when it is not all of them."""
        folds = sorted({fold for fold in self.folds if fold is not None})
        if not folds or folds == list(range(1, NUM_ER_FOLDS + 1)):
            return None
        return f"folds {','.join(map(str, folds))} of {NUM_ER_FOLDS}"


@dataclass
class Table:
    split: str
    columns: list[Column]
    rows: list[RowKey]
    cells: dict[tuple[RowKey, str], Cell]
    incomplete: list[Path]
    notes: list[str]

    def references_in(self) -> set[str]:
        """Tasks (columns) with at least one published number."""
        return {task for (_, task), cell in self.cells.items() if cell.reference is not None}


def secondary_metric_runs(runs: Iterable[Run], split: str) -> list[Run]:
    """For every run whose task has SECONDARY_COLUMNS and whose ``split`` scores hold that metric, a copy
    scored by it under the column's name (ml_multi's lid_acc becomes a run of task 'lid')."""
    derived = []
    for run in runs:
        for column, metric, higher_is_better in SECONDARY_COLUMNS.get(run.results.task, ()):
            if metric in (run.results.test if split == "test" else run.results.dev):
                results = replace(run.results, task=column, metric=metric, higher_is_better=higher_is_better)
                derived.append(replace(run, results=results))
    return derived


def _score(run: Run, split: str) -> float:
    try:
        return run.results.score(split)
    except ResultsFileError as error:
        raise ResultsFileError(f"{run.run_dir / RESULTS_FILE}: {error}") from error


def aggregate(collection: Collection, split: str = "test") -> Table:
    """Group runs into cells (row x task) and mark the best mean of each column."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    columns: dict[str, Column] = {}
    first_run: dict[str, Run] = {}
    grouped: dict[tuple[RowKey, str], list[Run]] = defaultdict(list)
    for run in [*collection.runs, *secondary_metric_runs(collection.runs, split)]:
        results = run.results
        column = Column(results.task, results.metric, results.higher_is_better)
        known = columns.setdefault(results.task, column)
        if known != column:
            raise ValueError(
                f"task {results.task!r} is scored as {known.metric} (higher_is_better={known.higher_is_better}) "
                f"in {first_run[results.task].run_dir} but as {column.metric} "
                f"(higher_is_better={column.higher_is_better}) in {run.run_dir}"
            )
        first_run.setdefault(results.task, run)
        grouped[(run.row, results.task)].append(run)

    cells = {
        (row, task): Cell(
            values=tuple(_score(run, split) for run in runs),
            seeds=tuple(run.results.seed for run in runs),
            folds=tuple(run.results.fold for run in runs),
            reference=published_reference(row.model, row.interface_name, task) if row.comparable else None,
        )
        for (row, task), runs in grouped.items()
    }
    ordered_columns = sorted(
        columns.values(),
        key=lambda c: (TASK_ORDER.index(c.task) if c.task in TASK_ORDER else len(TASK_ORDER), c.task),
    )
    for column in ordered_columns:
        column_cells = [cell for (_, task), cell in cells.items() if task == column.task]
        pick = max if column.higher_is_better else min
        best = pick(cell.mean for cell in column_cells)
        for cell in column_cells:
            cell.best = math.isclose(cell.mean, best, rel_tol=0.0, abs_tol=1e-9)

    interface_params = interface_params_by_row(collection.runs)
    rows = sorted({row for row, _ in cells}, key=lambda row: row_sort_key(row, interface_params[row]))
    return Table(split, ordered_columns, rows, cells, collection.incomplete, collection.notes)
