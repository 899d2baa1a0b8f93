"""Cells of a results table: the runs of one row and task, their mean, sample std and published number."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from downstream.data.ml_superb import MONOLINGUAL_SETS, monolingual_language
from downstream.reporting.collect import (
    Collection,
    RowKey,
    Run,
    interface_params_by_row,
    row_sort_key,
    run_setting,
)
from downstream.reporting.lr_choice import run_lr
from downstream.reporting.published import Reference, published_reference
from downstream.results import RESULTS_FILE, ResultsFileError

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
# sets (task.language).
GROUP_NAMES = {"fold": ("fold", "folds"), "set": ("set", "sets")}
#: ML-SUPERB monolingual cells average each language's sets first, then the languages
#: (``downstream.data.ml_superb.MONOLINGUAL_SCORE_SOURCE``), under both protocols (docs/protocols.md).
MONOLINGUAL_TASKS = ("ml_mono", "ml_mono_10min")


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
    ML-SUPERB monolingual: the set), else None. With groups, ``mean`` is the mean over groups of each
    group's mean over its runs (seeds), so a fold run twice weighs no more than the others, and ``std`` is
    the sample std of those group means; otherwise both are over the runs. With ``parents`` (ML-SUPERB
    monolingual: each set's language, ``monolingual_language``) the group means of one parent are averaged
    first and ``mean`` / ``std`` are over the parents' means, as ESPnet's mono_superb_score.py averages
    eng1-3, fra1-2 and deu1-2 before it averages the 9 languages.
    """

    values: tuple[float, ...]
    seeds: tuple
    folds: tuple
    reference: Reference | None
    best: bool = False
    #: the learning rate of the cell's runs in a table of dev-chosen learning rates (else None)
    lr: float | None = None
    groups: tuple = ()
    group_kind: str | None = None  # 'fold' or 'set' when groups are set
    #: {group: parent} when group means are averaged per parent first (ML-SUPERB sets -> languages)
    parents: dict | None = None

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

    def averaged_means(self) -> dict | None:
        """The means that ``mean`` averages: {parent: mean of its groups' means} with ``parents``, else
        ``group_means()`` (None without groups)."""
        means = self.group_means()
        if means is None or self.parents is None:
            return means
        members: dict = defaultdict(list)
        for group, value in means.items():
            members[self.parents.get(group, group)].append(value)
        return {parent: float(np.mean(values)) for parent, values in sorted(members.items())}

    @property
    def spread_over(self) -> str:
        """What ``std`` is over: 'runs', 'folds', 'sets' or 'languages' (sets averaged per language)."""
        if self.group_means() is None:
            return "runs"
        if self.parents is not None:
            return "languages"
        return GROUP_NAMES[self.group_kind or "fold"][1]

    @property
    def mean(self) -> float:
        means = self.averaged_means()
        return float(np.mean(list(means.values()) if means is not None else self.values))

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1) over ``averaged_means``, or over runs; None for a single one."""
        means = self.averaged_means()
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

    def coverage_note(self) -> str | None:
        """What a group-averaged cell lacks, when it lacks something: which folds it holds ('folds 1,2 of
        5'), or which of ML-SUPERB's 13 monolingual sets have no run ('12 of 13 sets, missing: xty') and
        which names are none of them ('not ESPnet sets: sat'). The mean is over the groups present."""
        folds = sorted({fold for fold in self.folds if fold is not None})
        if folds:
            if folds == list(range(1, NUM_ER_FOLDS + 1)):
                return None
            return f"folds {','.join(map(str, folds))} of {NUM_ER_FOLDS}"
        if self.group_kind != "set" or self.group_means() is None:
            return None
        present = set(self.groups)
        missing = [name for name in MONOLINGUAL_SETS if name not in present]
        foreign = sorted(present - set(MONOLINGUAL_SETS))
        notes = []
        if missing:
            found = len(MONOLINGUAL_SETS) - len(missing)
            notes.append(f"{found} of {len(MONOLINGUAL_SETS)} sets, missing: {' '.join(missing)}")
        if foreign:
            notes.append(f"not ESPnet sets: {' '.join(foreign)}")
        return "; ".join(notes) or None


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
    """('fold', n) for a run with a fold (ER), ('set', name) for ML-SUPERB monolingual runs (``task.language``:
    its override, else the run's saved config), None otherwise."""
    results = run.results
    if results.fold is not None:
        return "fold", results.fold
    if results.task not in MONOLINGUAL_TASKS:
        return None
    name = run_setting(run, "task.language")
    return None if name is None else ("set", name)


def set_languages(names: Iterable[object]) -> dict:
    """{set: the language it counts for} (``monolingual_language``; a name that is not one of ESPnet's sets
    counts for itself, and ``Cell.coverage_note`` names it)."""
    return {name: monolingual_language(name) if name in MONOLINGUAL_SETS else name for name in names}


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
        names = [group[1] for group in groups if group is not None]
        by_language = kinds == {"set"} and len(names) == len(runs) and task in MONOLINGUAL_TASKS
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
            parents=set_languages(names) if by_language else None,
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
