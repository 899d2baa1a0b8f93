"""Paper-style result tables (and plots) from sweep directories of results.json files.

    python scripts/make_table.py multirun/table2                       # markdown to stdout
    python scripts/make_table.py multirun/table1 multirun/superb --format latex --split dev
    python scripts/make_table.py multirun/table2 --format csv --plots figures/table2

Rows are upstream x interface, columns are tasks (metric and direction), plus a column for each second
metric in SECONDARY_COLUMNS (ml_multi's LID accuracy: column lid). Each cell is the mean and sample
standard deviation (ddof=1) of the task metric over the cell's runs (seeds, ER's folds, ML-SUPERB's
monolingual language sets), with n = runs;
the best mean of each column is marked, lower or higher as the metric says. Where the paper (Shih &
Harwath, arXiv 2406.12209, Table 2) or the SUPERB paper (arXiv 2105.01051) published a number for the same
upstream, interface and task, it is shown beside ours. Job directories without results.json are listed as
incomplete and never averaged in.

A row's interface label carries whatever distinguishes its runs: overrides such as interface.num_groups=3
or trainer.lr=1e-3 (an override shared by every run is reported once, under the table), a head widened by
task.head.extra_params ("+ larger head"), and a trainable upstream ("fine-tuned", on the upstream label).

--plots DIR writes DIR/layer_weights/<run>.png (learned layer weights of every run that has them),
DIR/trainable_params.png and DIR/trainable_params.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import math
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from downstream.results import HYDRA_DIR, RunRecord, scan_runs  # noqa: E402

FORMATS = ("markdown", "csv", "latex")
SPLITS = ("test", "dev")
TASK_ORDER = ("pr", "asr", "sid", "er", "ic", "sv", "ml_mono", "ml_multi", "lid")
# Metrics beyond a task's primary one that get a column of their own: task -> (column, metric, higher is better).
# ml_multi trains LID jointly; its LID accuracy is the paper's "LID-1h acc" column.
SECONDARY_COLUMNS = {"ml_multi": (("lid", "lid_acc", True),)}
INTERFACE_ORDER = (
    "last_layer",
    "single_layer",
    "weighted_sum",
    "group_ws",
    "concat_proj",
    "pca_concat",
    "hconv",
    "cls_pooling",
    "layer_attention",
)
NUM_ER_FOLDS = 5  # IEMOCAP's five sessions, one held out per fold

# Overrides that never tell rows apart: replicates (seed, fold), the row and column keys themselves,
# where the data lives, and settings that do not change what is trained.
REPLICATE_OR_KEY_OVERRIDES = {
    "seed",
    "task.fold",
    "task.language",  # ML-SUPERB monolingual: the published number averages the language sets
    "task",
    "interface",
    "upstream",
    "upstream.name",
    "experiment",
    "task.data_root",
    "overwrite",
    "logger",
    "schedule",
    "task.head.extra_params",  # shown as "+ larger head"
    "trainer.device",
    "trainer.num_workers",
    "trainer.progress_bar",
}
IGNORED_OVERRIDE_PREFIXES = ("hydra.", "hydra/", "logger.", "paths.")


# ---------------------------------------------------------------- published numbers (DESIGN.md section 3)


@dataclass(frozen=True)
class Reference:
    value: float
    source: str


PAPER_MODELS = (
    "HuBERT Base",
    "HuBERT Large",
    "WavLM Base",
    "WavLM Large",
    "XLSR-53",
    "wav2vec 2.0 Base",
    "FBANK",
)
# Names an upstream may carry (s3prl names, Hugging Face ids, torchaudio bundles) for each published model.
MODEL_ALIASES = {
    "HuBERT Base": (
        "hubert",
        "hubert_base",
        "hubert_base_ls960",
        "facebook/hubert-base-ls960",
        "HUBERT_BASE",
    ),
    "HuBERT Large": ("hubert_large_ll60k", "facebook/hubert-large-ll60k", "HUBERT_LARGE"),
    "WavLM Base": ("wavlm_base", "microsoft/wavlm-base", "WAVLM_BASE"),
    "WavLM Large": ("wavlm_large", "microsoft/wavlm-large", "WAVLM_LARGE"),
    "XLSR-53": ("xlsr_53", "wav2vec2_xlsr53", "facebook/wav2vec2-large-xlsr-53", "WAV2VEC2_XLSR53"),
    "wav2vec 2.0 Base": ("wav2vec2", "wav2vec2_base_960", "facebook/wav2vec2-base", "WAV2VEC2_BASE"),
    "FBANK": ("fbank",),
}
# The paper's Table 2, all its columns; the ones this project has a task for are mapped below.
PAPER_TABLE2_COLUMNS = ("mono_1h_cer", "multi_1h_cer", "lid_1h_acc", "er_acc", "ic_acc", "sv_eer", "pr_per")
PAPER_TABLE2_TASKS = {
    "ml_mono": "mono_1h_cer",
    "ml_multi": "multi_1h_cer",
    "lid": "lid_1h_acc",
    "er": "er_acc",
    "ic": "ic_acc",
    "sv": "sv_eer",
    "pr": "pr_per",
}
PAPER_TABLE2 = {
    "HuBERT Base": {
        "weighted_sum": (35.1, 24.4, 84.6, 64.92, 98.34, 5.11, 5.41),
        "hconv": (33.9, 24.0, 81.7, 68.49, 99.45, 5.62, 3.07),
        "cls_pooling": (33.9, 24.3, 1.2, 62.73, 99.45, 49.91, 2.93),
    },
    "HuBERT Large": {
        "weighted_sum": (32.3, 22.3, 64.4, 67.62, 98.76, 5.98, 3.53),
        "hconv": (30.0, 21.4, 89.2, 72.44, 99.53, 6.03, 1.76),
        "cls_pooling": (31.1, 21.5, 87.0, 68.72, 99.53, 6.34, 1.64),
    },
    "WavLM Base": {
        "weighted_sum": (34.2, 24.3, 84.1, 65.94, 98.63, 4.69, 4.84),
        "hconv": (32.4, 23.6, 67.9, 68.57, 99.53, 5.48, 3.06),
        "cls_pooling": (33.8, 23.8, 13.2, 63.60, 99.50, 6.03, 2.92),
    },
    "WavLM Large": {
        "weighted_sum": (30.1, 20.8, 71.7, 70.62, 99.31, 3.77, 3.06),
        "hconv": (28.0, 19.4, 90.6, 74.95, 99.71, 5.20, 1.72),
        "cls_pooling": (29.7, 18.8, 88.5, 70.45, 99.63, 4.27, 1.73),
    },
    "XLSR-53": {
        "weighted_sum": (35.1, 20.2, 76.6, 66.34, 95.62, 6.45, 4.50),
        "hconv": (30.6, 19.8, 80.4, 72.01, 99.55, 5.63, 2.69),
        "cls_pooling": (31.0, 80.7, 4.5, 65.10, 99.47, 12.95, 5.27),
    },
}
# The SUPERB paper's rows (weighted sum of layers): PR PER, ASR WER without LM, SID acc, ER acc, all in percent.
# FBANK's SID entry is printed there as 8.5E-4, a fraction (7 of 8,251 test utterances, chance level for
# 1,251 speakers), i.e. 0.085 percent.
SUPERB_TASKS = ("pr", "asr", "sid", "er")
SUPERB_PAPER = {
    "FBANK": (82.01, 23.18, 0.085, 35.39),
    "wav2vec 2.0 Base": (5.74, 6.43, 75.18, 63.43),
    "HuBERT Base": (5.41, 6.42, 81.42, 64.92),
}
SUPERB_INTERFACES = {"FBANK": ("weighted_sum", "last_layer")}  # one FBANK "layer": both are the identity


def _build_references() -> dict[tuple[str, str, str], Reference]:
    references: dict[tuple[str, str, str], Reference] = {}
    for model, rows in PAPER_TABLE2.items():
        for interface, values in rows.items():
            for task, column in PAPER_TABLE2_TASKS.items():
                value = values[PAPER_TABLE2_COLUMNS.index(column)]
                references[(model, interface, task)] = Reference(value, "paper T2")
    for model, values in SUPERB_PAPER.items():
        for interface in SUPERB_INTERFACES.get(model, ("weighted_sum",)):
            for task, value in zip(SUPERB_TASKS, values, strict=True):
                references.setdefault((model, interface, task), Reference(value, "SUPERB"))
    return references


REFERENCES = _build_references()


def _normalise_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_ALIAS_TO_MODEL = {
    _normalise_name(alias): model for model, aliases in MODEL_ALIASES.items() for alias in aliases
}


def paper_model(upstream_label: str) -> str | None:
    """The published model an upstream label names ("hubert (s3prl)" -> "HuBERT Base"), or None."""
    match = re.fullmatch(r"\s*(.+?)\s*\([^()]*\)\s*", upstream_label)
    name = match.group(1) if match else upstream_label
    return _ALIAS_TO_MODEL.get(_normalise_name(name))


def published_reference(model: str | None, interface: str, task: str) -> Reference | None:
    return REFERENCES.get((model, interface, task)) if model else None


# ---------------------------------------------------------------- collecting runs


@dataclass(frozen=True)
class RowKey:
    """One table row: an upstream and an interface, with what distinguishes this row's runs."""

    # display labels, e.g. "hubert (s3prl), fine-tuned" and "weighted_sum + larger head (+4,424,832)"
    upstream: str
    interface: str
    interface_name: str  # the interface config name
    model: str | None  # the published model the upstream is, if any
    comparable: bool  # frozen upstream, SUPERB head and interface settings, not the demo schedule

    def sort_key(self) -> tuple:
        model_rank = PAPER_MODELS.index(self.model) if self.model in PAPER_MODELS else len(PAPER_MODELS)
        interface_rank = (
            INTERFACE_ORDER.index(self.interface_name)
            if self.interface_name in INTERFACE_ORDER
            else len(INTERFACE_ORDER)
        )
        return (model_rank, self.upstream, interface_rank, self.interface)


@dataclass(frozen=True)
class Run:
    name: str  # the run directory relative to the parent of the sweep directory it was found in
    record: RunRecord
    row: RowKey


@dataclass
class Collection:
    runs: list[Run]
    incomplete: list[Path]
    notes: list[str] = field(default_factory=list)


def parse_override(text: str) -> tuple[str, str]:
    """('interface.num_groups', '3') from 'interface.num_groups=3' (also '+key=v', '++key=v', '~key')."""
    key, _, value = text.lstrip("~+").partition("=")
    return key.strip(), value.strip()


def _row_defining(key: str) -> bool:
    return key not in REPLICATE_OR_KEY_OVERRIDES and not key.startswith(IGNORED_OVERRIDE_PREFIXES)


def _changes_model(overrides: dict[str, str]) -> bool:
    """Whether overrides change the interface or the task's model (trainer settings such as the learning
    rate, which SUPERB lets one tune, do not make a row incomparable with published numbers)."""
    return any(key.startswith(("interface.", "task.", "upstream.")) for key in overrides)


def head_extra_params(record: RunRecord) -> int | None:
    """task.head.extra_params of a run: from its overrides, else from its saved Hydra config, else None."""
    for override in record.overrides:
        key, value = parse_override(override)
        if key == "task.head.extra_params":
            return None if value.lower() in ("null", "none", "") else int(float(value))
    config_path = record.run_dir / HYDRA_DIR / "config.yaml"
    if not config_path.is_file():
        return None
    try:
        value = OmegaConf.select(OmegaConf.load(config_path), "task.head.extra_params", default=None)
    except Exception as error:  # an interpolation that cannot resolve outside the run
        raise ValueError(f"{config_path}: cannot read task.head.extra_params ({error})") from error
    return None if value is None else int(value)


def _run_name(run_dir: Path, roots: Sequence[Path]) -> str:
    for root in roots:
        if run_dir.is_relative_to(root):
            return str(run_dir.relative_to(root.parent))
    return run_dir.name


def describe_rows(records: Sequence[RunRecord]) -> tuple[list[RowKey], list[str]]:
    """The row of every record, and notes on what all records share.

    An override (or schedule) with the same value in every record is the same for the whole table, so it
    goes to the notes instead of every row label; one that differs labels the rows that have it.
    """
    overrides_by_run = [
        dict(pair for pair in map(parse_override, record.overrides) if _row_defining(pair[0]))
        for record in records
    ]
    shared = set(overrides_by_run[0].items()) if overrides_by_run else set()
    for overrides in overrides_by_run[1:]:
        shared &= set(overrides.items())
    schedules = {record.schedule for record in records}
    notes = [f"all runs: {key}={value}" for key, value in sorted(shared)]
    if len(schedules) == 1 and None not in schedules:
        notes.append(f"all runs: schedule {next(iter(schedules))}")

    rows = []
    for record, overrides in zip(records, overrides_by_run, strict=True):
        parts = []
        for key, value in sorted(overrides.items()):
            if (key, value) in shared:
                continue
            parts.append(f"{key.removeprefix('interface.')}={value}")
        if len(schedules) > 1 and record.schedule is not None:
            parts.append(f"schedule={record.schedule}")
        interface = record.interface + (f" ({', '.join(parts)})" if parts else "")
        extra = head_extra_params(record)
        if extra:
            interface += f" + larger head (+{extra:,})"
        fine_tuned = record.trainable_params.get("upstream", 0) > 0
        upstream = record.upstream + (", fine-tuned" if fine_tuned else "")
        rows.append(
            RowKey(
                upstream=upstream,
                interface=interface,
                interface_name=record.interface,
                model=paper_model(record.upstream),
                comparable=not (
                    extra or fine_tuned or record.schedule == "demo" or _changes_model(overrides)
                ),
            )
        )
    return rows, notes


def collect_runs(roots: Iterable[str | Path]) -> Collection:
    """Every finished run under ``roots`` with its row, and the incomplete job directories."""
    roots = [Path(root) for root in roots]
    if not roots:
        raise ValueError("collect_runs needs at least one sweep directory")
    scan = scan_runs(roots)
    resolved_roots = sorted((root.resolve() for root in roots), key=lambda path: -len(path.parts))
    rows, notes = describe_rows(scan.complete)
    runs = [
        Run(name=_run_name(record.run_dir, resolved_roots), record=record, row=row)
        for record, row in zip(scan.complete, rows, strict=True)
    ]
    replicates: dict[tuple, list[str]] = defaultdict(list)
    for run in runs:
        replicates[(run.row, run.record.task, run.record.seed, run.record.fold)].append(run.name)
    for (row, task, seed, fold), names in replicates.items():
        if len(names) > 1:
            notes.append(
                f"{len(names)} runs of {row.upstream} / {row.interface} / {task} with seed {seed}"
                + (f", fold {fold}" if fold is not None else "")
                + f" are all averaged in: {', '.join(names)}"
            )
    return Collection(runs=runs, incomplete=scan.incomplete, notes=notes)


# ---------------------------------------------------------------- aggregating


@dataclass(frozen=True)
class Column:
    task: str
    metric: str
    higher_is_better: bool

    @property
    def title(self) -> str:
        metric = self.metric.removeprefix(f"{self.task}_")  # the lid column's lid_acc reads "LID acc"
        return f"{self.task.upper()} {metric.upper() if metric != 'acc' else 'acc'}"


@dataclass
class Cell:
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


def secondary_metric_runs(runs: Iterable[Run], split: str) -> list[Run]:
    """For every run whose task has SECONDARY_COLUMNS and whose ``split`` scores hold that metric, a copy
    scored by it under the column's name (ml_multi's lid_acc becomes a run of task 'lid')."""
    derived = []
    for run in runs:
        for column, metric, higher_is_better in SECONDARY_COLUMNS.get(run.record.task, ()):
            if metric in (run.record.test if split == "test" else run.record.dev):
                record = replace(run.record, task=column, metric=metric, higher_is_better=higher_is_better)
                derived.append(replace(run, record=record))
    return derived


def aggregate(collection: Collection, split: str = "test") -> Table:
    """Group runs into cells (row x task) and mark the best mean of each column."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    columns: dict[str, Column] = {}
    first_run: dict[str, Run] = {}
    grouped: dict[tuple[RowKey, str], list[Run]] = defaultdict(list)
    for run in [*collection.runs, *secondary_metric_runs(collection.runs, split)]:
        record = run.record
        column = Column(record.task, record.metric, record.higher_is_better)
        known = columns.setdefault(record.task, column)
        if known != column:
            raise ValueError(
                f"task {record.task!r} is scored as {known.metric} (higher_is_better={known.higher_is_better}) "
                f"in {first_run[record.task].record.run_dir} but as {column.metric} "
                f"(higher_is_better={column.higher_is_better}) in {record.run_dir}"
            )
        first_run.setdefault(record.task, run)
        grouped[(run.row, record.task)].append(run)

    cells = {
        (row, task): Cell(
            values=tuple(run.record.score(split) for run in runs),
            seeds=tuple(run.record.seed for run in runs),
            folds=tuple(run.record.fold for run in runs),
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

    rows = sorted({row for row, _ in cells}, key=RowKey.sort_key)
    return Table(split, ordered_columns, rows, cells, collection.incomplete, collection.notes)


# ---------------------------------------------------------------- rendering


def _mean_std_text(cell: Cell, plus_minus: str) -> str:
    text = f"{cell.mean:.2f}"
    if cell.std is not None:
        text += f" {plus_minus} {cell.std:.2f}"
    return text


def _cell_suffix(cell: Cell) -> str:
    details = [f"n={cell.n}"]
    fold_note = cell.fold_note()
    if fold_note:
        details.append(fold_note)
    return f" ({', '.join(details)})"


def _reference_text(cell: Cell | None) -> str:
    if cell is None or cell.reference is None:
        return ""
    return f"{cell.reference.value:.2f} ({cell.reference.source})"


def _columns_with_references(table: Table) -> set[str]:
    return {task for (_, task), cell in table.cells.items() if cell.reference is not None}


def _footer_lines(table: Table) -> list[str]:
    lines = [
        f"{table.split} split; mean ± sample standard deviation (ddof=1) over seeds and folds, n = runs; "
        "best mean per column marked (↓ lower is better, ↑ higher is better).",
    ]
    if _columns_with_references(table):
        lines.append(
            "published: paper T2 = Shih & Harwath, arXiv 2406.12209, Table 2; "
            "SUPERB = Yang et al., arXiv 2105.01051 (weighted sum)."
        )
    lines.extend(table.notes)
    return lines


def _arrow(column: Column) -> str:
    return "↑" if column.higher_is_better else "↓"


def render_markdown(table: Table) -> str:
    with_references = _columns_with_references(table)
    header = ["upstream", "interface"]
    for column in table.columns:
        header.append(f"{column.title} {_arrow(column)}")
        if column.task in with_references:
            header.append(f"{column.task.upper()} published")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        cells = [row.upstream, row.interface]
        for column in table.columns:
            cell = table.cells.get((row, column.task))
            if cell is None:
                cells.append("–")
            else:
                value = _mean_std_text(cell, "±")
                cells.append((f"**{value}**" if cell.best else value) + _cell_suffix(cell))
            if column.task in with_references:
                cells.append(_reference_text(cell) or "–")
        lines.append("| " + " | ".join(text.replace("|", "\\|") for text in cells) + " |")
    lines.append("")
    lines.extend(f"- {line}" for line in _footer_lines(table))
    if table.incomplete:
        lines += ["", f"Incomplete runs ({len(table.incomplete)}, not in the table):"]
        lines.extend(f"- {path}" for path in table.incomplete)
    return "\n".join(lines) + "\n"


CSV_FIELDS = (
    "upstream",
    "interface",
    "task",
    "metric",
    "direction",
    "mean",
    "std",
    "n",
    "folds",
    "best",
    "published",
    "published_source",
)


def render_csv(table: Table) -> str:
    """One line per filled cell (long format); incomplete runs are not part of it (main prints them)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in table.rows:
        for column in table.columns:
            cell = table.cells.get((row, column.task))
            if cell is None:
                continue
            writer.writerow(
                {
                    "upstream": row.upstream,
                    "interface": row.interface,
                    "task": column.task,
                    "metric": column.metric,
                    "direction": "higher" if column.higher_is_better else "lower",
                    "mean": repr(cell.mean),
                    "std": "" if cell.std is None else repr(cell.std),
                    "n": cell.n,
                    "folds": " ".join(str(fold) for fold in sorted({f for f in cell.folds if f is not None})),
                    "best": str(cell.best).lower(),
                    "published": "" if cell.reference is None else cell.reference.value,
                    "published_source": "" if cell.reference is None else cell.reference.source,
                }
            )
    return buffer.getvalue()


_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text.replace("\\", r"\textbackslash{}"))


def render_latex(table: Table) -> str:
    """A booktabs tabular; notes and incomplete runs follow as % comments."""
    with_references = _columns_with_references(table)
    header = ["Upstream", "Interface"]
    for column in table.columns:
        arrow = r"$\uparrow$" if column.higher_is_better else r"$\downarrow$"
        header.append(f"{latex_escape(column.title)} {arrow}")
        if column.task in with_references:
            header.append(f"{column.task.upper()} publ.")
    lines = [
        r"% needs \usepackage{booktabs}",
        r"\begin{tabular}{ll" + "c" * (len(header) - 2) + "}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    for row in table.rows:
        cells = [latex_escape(row.upstream), latex_escape(row.interface)]
        for column in table.columns:
            cell = table.cells.get((row, column.task))
            if cell is None:
                cells.append("--")
            else:
                mean = f"{cell.mean:.2f}"
                text = rf"\textbf{{{mean}}}" if cell.best else mean
                if cell.std is not None:
                    text += rf" $\pm$ {cell.std:.2f}"
                text += rf" {{\scriptsize {latex_escape(_cell_suffix(cell).strip())}}}"
                cells.append(text)
            if column.task in with_references:
                reference = cell.reference if cell is not None else None
                cells.append(f"{reference.value:.2f}" if reference else "--")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines.extend(f"% {line}" for line in _footer_lines(table))
    lines.extend(f"% incomplete (not in the table): {path}" for path in table.incomplete)
    return "\n".join(lines) + "\n"


RENDERERS = {"markdown": render_markdown, "csv": render_csv, "latex": render_latex}


def render(table: Table, fmt: str = "markdown") -> str:
    if fmt not in RENDERERS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return RENDERERS[fmt](table)


# ---------------------------------------------------------------- plots


def _new_figure(width: float, height: float):
    # The object-oriented API with its own Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def safe_file_stem(name: str, max_length: int = 150) -> str:
    """A file name from a run name: '/' -> '__', other unusual characters -> '_', long names hashed."""
    stem = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name.replace("/", "__"))
    if len(stem) > max_length:
        stem = stem[: max_length - 9] + "-" + hashlib.sha1(stem.encode()).hexdigest()[:8]
    return stem


def plot_layer_weights(run: Run, path: Path) -> None:
    """Bars of the run's learned weight per layer; grouped weights ([G, L] or one list per group) by group."""
    weights = run.record.layer_weights
    figure = _new_figure(7, 3.2)
    axes = figure.add_subplot()
    grouped = bool(weights) and isinstance(weights[0], list)
    if not grouped:
        axes.bar(np.arange(len(weights)), weights, color="tab:blue")
    elif (
        len({len(group) for group in weights}) == 1
    ):  # [G, L]: stacked, so disjoint groups give one bar per layer
        bottom = np.zeros(len(weights[0]))
        for index, group in enumerate(weights):
            axes.bar(np.arange(len(group)), group, bottom=bottom, label=f"group {index + 1}")
            bottom += np.asarray(group, dtype=float)
    else:  # one list per contiguous group of layers
        start = 0
        for index, group in enumerate(weights):
            axes.bar(np.arange(start, start + len(group)), group, label=f"group {index + 1}")
            start += len(group)
    if grouped:
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes.set_xlabel("layer (0 = transformer input)")
    axes.set_ylabel("weight")
    score = run.record.score("test")
    axes.set_title(
        f"{run.row.upstream} / {run.row.interface} / {run.record.task} "
        f"(test {run.record.metric} {score:.2f})\n{run.name}",
        fontsize="small",
    )
    figure.tight_layout()
    figure.savefig(path)


def parameter_summary(collection: Collection) -> list[dict]:
    """Per row and task: upstream, interface, task, and (min, max) trainable parameter counts over its runs
    as interface_params, head_params, upstream_params (min < max only if its runs disagree)."""
    counts: dict[tuple[RowKey, str], dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for run in collection.runs:
        for part in ("interface", "head", "upstream"):
            counts[(run.row, run.record.task)][part].add(run.record.trainable_params.get(part, 0))
    summary = []
    for row, task in sorted(counts, key=lambda key: (key[0].sort_key(), key[1])):
        entry = {"upstream": row.upstream, "interface": row.interface, "task": task}
        for part, values in counts[(row, task)].items():
            entry[f"{part}_params"] = (min(values), max(values))
        summary.append(entry)
    return summary


def _count_text(span: tuple[int, int]) -> str:
    low, high = span
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def write_parameter_summary(collection: Collection, out_dir: Path) -> list[Path]:
    summary = parameter_summary(collection)
    markdown = [
        "| upstream | interface | task | interface params | head params | upstream params (trainable) |",
        "|---|---|---|---|---|---|",
    ]
    for entry in summary:
        markdown.append(
            f"| {entry['upstream']} | {entry['interface']} | {entry['task']} "
            f"| {_count_text(entry['interface_params'])} | {_count_text(entry['head_params'])} "
            f"| {_count_text(entry['upstream_params'])} |"
        )
    markdown_path = out_dir / "trainable_params.md"
    markdown_path.write_text("\n".join(markdown) + "\n")

    interface_params: dict[tuple[str, str], int] = {}
    for entry in summary:
        key = (entry["upstream"], entry["interface"])
        interface_params[key] = max(interface_params.get(key, 0), entry["interface_params"][1])
    labels = [f"{upstream} / {interface}" for upstream, interface in interface_params]
    values = list(interface_params.values())
    figure = _new_figure(8, 0.45 * len(labels) + 1.2)
    axes = figure.add_subplot()
    positions = np.arange(len(labels))
    axes.barh(positions, values, color="tab:green")
    axes.set_yticks(positions, labels, fontsize="small")
    axes.invert_yaxis()
    axes.set_xlabel("trainable interface parameters")
    for position, value in zip(positions, values, strict=True):
        axes.annotate(f" {value:,}", (value, position), va="center", fontsize="x-small")
    axes.margins(x=0.25)
    figure.tight_layout()
    figure_path = out_dir / "trainable_params.png"
    figure.savefig(figure_path)
    return [markdown_path, figure_path]


def write_plots(collection: Collection, out_dir: str | Path) -> list[Path]:
    """Layer-weight bars for every run that recorded weights, and the trainable-parameter summary."""
    out_dir = Path(out_dir)
    weights_dir = out_dir / "layer_weights"
    weights_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for run in collection.runs:
        if run.record.layer_weights:
            path = weights_dir / f"{safe_file_stem(run.name)}.png"
            plot_layer_weights(run, path)
            written.append(path)
    if collection.runs:
        written.extend(write_parameter_summary(collection, out_dir))
    return written


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="sweep (or run) directories to search")
    parser.add_argument("--format", choices=FORMATS, default="markdown")
    parser.add_argument("--split", choices=SPLITS, default="test", help="which split's metric to tabulate")
    parser.add_argument(
        "--plots", type=Path, default=None, help="write layer-weight and parameter plots here"
    )
    parser.add_argument("--output", type=Path, default=None, help="write the table here instead of stdout")
    args = parser.parse_args(argv)

    collection = collect_runs(args.sweep_dirs)
    if not collection.runs and not collection.incomplete:
        parser.error(
            f"no results.json and no Hydra job directories under {', '.join(map(str, args.sweep_dirs))}"
        )
    text = render(aggregate(collection, args.split), args.format)
    if args.output is not None:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    if collection.incomplete and args.format == "csv":
        for path in collection.incomplete:
            print(f"incomplete (not in the table): {path}", file=sys.stderr)
    if args.plots is not None:
        for path in write_plots(collection, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
