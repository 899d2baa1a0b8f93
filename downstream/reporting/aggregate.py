"""Cells of a results table: the runs of one row and task, their mean, sample std and published number."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from downstream.reporting.collect import (
    Collection,
    RowKey,
    Run,
    interface_params_by_row,
    parse_override,
    row_sort_key,
)
from downstream.reporting.lr_choice import run_lr
from downstream.reporting.published import Reference, published_reference
from downstream.results import HYDRA_DIR, RESULTS_FILE, ResultsFileError

SPLITS = ("test", "dev")
TASK_ORDER = (
    "pr",
    "asr",
    "sid",
    "er",
    "ic",
    "ks",
    "sf",
    "sf_cer",
    "sv",
    "ml_mono_10min",
    "ml_mono",
    "ml_multi_10min",
    "ml_multi",
    "lid_10min",
    "lid",
    "qbe",
    "sd",
    "sd_superb",
)
# Metrics beyond a task's primary one that get a column of their own: task -> (column, metric, higher is better).
# ml_multi trains LID jointly; its LID accuracy is the paper's "LID-1h acc" column. SUPERB reports SF by two
# numbers, slot-type F1 (the primary metric) and slot-value CER. SUPERB's SD DER is the best test DER over its
# post-processing grid (der_superb): its published number stands in that column, not beside the dev-chosen der.
SECONDARY_COLUMNS = {
    "ml_multi": (("lid", "lid_acc", True),),
    "sf": (("sf_cer", "slot_value_cer", False),),
    "sd": (("sd_superb", "der_superb", False),),
}
# Column titles SUPERB prints where "<TASK> <metric>" would read poorly.
COLUMN_TITLES = {
    "sf": "SF F1",
    "sf_cer": "SF CER",
    "sd_superb": "SD DER (test-chosen, SUPERB)",
    "ml_mono_10min": "ML_MONO 10min CER",
    "ml_multi_10min": "ML_MULTI 10min CER",
    "lid_10min": "LID 10min acc",
}
#: ML-SUPERB runs of the 10-minute training sets are scored in columns of their own (the paper's Table 1
#: puts the 10-minute and the 1-hour CER side by side): task -> column.
TEN_MINUTE_COLUMNS = {"ml_mono": "ml_mono_10min", "ml_multi": "ml_multi_10min", "lid": "lid_10min"}
NUM_ER_FOLDS = 5  # IEMOCAP's five sessions, one held out per fold
# Tasks whose published number averages one run per replicate group: ER's folds, ML-SUPERB's monolingual
# language sets (task.language).
GROUP_NAMES = {"fold": ("fold", "folds"), "language": ("language", "languages")}


@dataclass(frozen=True)
class Column:
    task: str
    metric: str
    higher_is_better: bool

    @property
    def title(self) -> str:
        if self.task in COLUMN_TITLES:
            return COLUMN_TITLES[self.task]
        metric = self.metric.removeprefix(f"{self.task}_")  # the lid column's lid_acc reads "LID acc"
        return f"{self.task.upper()} {metric.upper() if metric != 'acc' else 'acc'}"

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


@dataclass
class Cell:
    """The runs of one row and task: their scores (with seed and fold each) and the published number.

    ``groups`` holds each run's replicate group when the task's number averages groups (ER: the fold,
    ML-SUPERB monolingual: the language set), else None. With groups, ``mean`` is the mean over groups of
    each group's mean over its runs (seeds), so a fold run twice weighs no more than the others, and
    ``std`` is the sample std of those group means; otherwise both are over the runs.
    """

    values: tuple[float, ...]
    seeds: tuple
    folds: tuple
    reference: Reference | None
    best: bool = False
    #: the learning rate of the cell's runs in a table of dev-chosen learning rates (else None)
    lr: float | None = None
    groups: tuple = ()
    group_kind: str | None = None  # 'fold' or 'language' when groups are set

    @property
    def n(self) -> int:
        return len(self.values)

    def group_means(self) -> dict | None:
        """{group: mean of its runs} when every run has a group, else None."""
        if not self.groups or any(group is None for group in self.groups):
            return None
        members: dict = defaultdict(list)
        for group, value in zip(self.groups, self.values, strict=True):
            members[group].append(value)
        return {group: float(np.mean(values)) for group, values in sorted(members.items())}

    def replication(self) -> dict:
        """{group: number of runs} (empty without groups)."""
        if self.group_means() is None:
            return {}
        return {group: self.groups.count(group) for group in sorted(set(self.groups))}

    @property
    def spread_over(self) -> str:
        """What ``std`` is over: 'runs', 'folds' or 'languages'."""
        if self.group_means() is None:
            return "runs"
        return GROUP_NAMES[self.group_kind or "fold"][1]

    @property
    def mean(self) -> float:
        means = self.group_means()
        return float(np.mean(list(means.values()) if means is not None else self.values))

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1) over groups' means, or over runs; None for a single one."""
        means = self.group_means()
        spread = list(means.values()) if means is not None else list(self.values)
        return float(np.std(spread, ddof=1)) if len(spread) > 1 else None

    def unequal_replication_note(self) -> str | None:
        """Which groups have more runs than others, e.g. 'unequal replication: fold 1 x2, others x1'."""
        counts = self.replication()
        if len(set(counts.values())) <= 1:
            return None
        usual = max(set(counts.values()), key=list(counts.values()).count)
        singular = GROUP_NAMES[self.group_kind or "fold"][0]
        odd = ", ".join(f"{singular} {group} x{count}" for group, count in counts.items() if count != usual)
        return f"unequal replication: {odd}, others x{usual}; mean over {self.spread_over}"

    def fold_note(self) -> str | None:
        """Which folds a fold-averaged cell holds, when it is not all of them."""
        folds = sorted({fold for fold in self.folds if fold is not None})
        if not folds or folds == list(range(1, NUM_ER_FOLDS + 1)):
            return None
        return f"folds {','.join(map(str, folds))} of {NUM_ER_FOLDS}"


def run_setting(run: Run, key: str) -> str | None:
    """A task setting of a run (e.g. ``task.duration``): its override, else its saved config, else None."""
    for override in run.results.overrides:
        name, value = parse_override(override)
        if name == key:
            return value
    config_path = run.run_dir / HYDRA_DIR / "config.yaml"
    if config_path.is_file():
        value = OmegaConf.select(OmegaConf.load(config_path), key, default=None)
        return None if value is None else str(value)
    return None


def ten_minute_columns(runs: Iterable[Run]) -> list[Run]:
    """The runs, each ML-SUPERB run of a 10-minute training set moved to its ``TEN_MINUTE_COLUMNS`` task."""
    moved = []
    for run in runs:
        column = TEN_MINUTE_COLUMNS.get(run.results.task)
        if column is not None and run_setting(run, "task.duration") == "10min":
            run = replace(run, results=replace(run.results, task=column))
        moved.append(run)
    return moved


def replicate_group(run: Run) -> tuple[str, object] | None:
    """('fold', n) for a run with a fold (ER), ('language', set) for ML-SUPERB monolingual runs (from the
    ``task.language`` override, else the run's saved config), None otherwise."""
    results = run.results
    if results.fold is not None:
        return "fold", results.fold
    if results.task not in ("ml_mono", "ml_mono_10min"):
        return None
    for override in results.overrides:
        key, value = parse_override(override)
        if key == "task.language":
            return "language", value
    config_path = run.run_dir / HYDRA_DIR / "config.yaml"
    if config_path.is_file():
        language = OmegaConf.select(OmegaConf.load(config_path), "task.language", default=None)
        if language is not None:
            return "language", str(language)
    return None


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
    for run in ten_minute_columns([*collection.runs, *secondary_metric_runs(collection.runs, split)]):
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

    cells = {}
    for (row, task), runs in grouped.items():
        groups = [replicate_group(run) for run in runs]
        kinds = {group[0] for group in groups if group is not None}
        cells[(row, task)] = Cell(
            values=tuple(_score(run, split) for run in runs),
            seeds=tuple(run.results.seed for run in runs),
            folds=tuple(run.results.fold for run in runs),
            reference=(
                published_reference(row.model, row.interface_name, task, row.condition)
                if row.comparable
                else None
            ),
            lr=run_lr(runs[0].results) if collection.chosen_lr else None,
            groups=tuple(None if group is None else group[1] for group in groups) if len(kinds) == 1 else (),
            group_kind=next(iter(kinds)) if len(kinds) == 1 else None,
        )
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
