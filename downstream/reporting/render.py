"""A Table as text: markdown (pandas + tabulate), CSV in long format, or a booktabs LaTeX tabular (pandas).

Each cell reads "mean ± std (n=runs[, folds ...])", the best mean of a column in bold; a "published" column
follows each task that has published numbers. Notes (what all runs share, the sources) follow the table.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from downstream.data.ml_superb import MONOLINGUAL_SCORE_SOURCE
from downstream.reporting.aggregate import Cell, Table
from downstream.reporting.published import PUBLISHED
from downstream.results import failure_message

FORMATS = ("markdown", "csv", "latex")
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
    "lr",
    "spread_over",
    "replication",
)
_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text.replace("\\", r"\textbackslash{}"))


def _decimals(value: float) -> int:
    return 4 if 0 < abs(value) < 1 else 2


def number_text(value: float, like: float | None = None) -> str:
    """Two decimals, or four for a value (or ``like``, the mean a spread goes with) below 1 in magnitude, so
    that fractions such as QbE's MTWV (0.0736) stay legible."""
    return f"{value:.{_decimals(value if like is None else like)}f}"


def _mean_std_text(cell: Cell, plus_minus: str) -> str:
    text = number_text(cell.mean)
    if cell.std is not None:
        text += f" {plus_minus} {number_text(cell.std, like=cell.mean)}"
    return text


def _cell_suffix(cell: Cell) -> str:
    details = [f"n={cell.n}"]
    coverage_note = cell.coverage_note()
    if coverage_note:
        details.append(coverage_note)
    if cell.lr is not None:
        details.append(f"lr {cell.lr:g}")
    replication_note = cell.unequal_replication_note()
    if replication_note:
        details.append(replication_note)
    return f"({', '.join(details)})"


def published_split_suffix(table: Table) -> str:
    """Published numbers are test-set scores: a table of another split says so where they stand."""
    return "" if table.split == "test" else " (test)"


def footer_lines(table: Table) -> list[str]:
    """What the numbers are, the published sources of the numbers shown (if any) and the table's notes."""
    lines = [
        f"{table.split} split; mean ± sample standard deviation (ddof=1), n = runs; ER: the mean over folds of "
        "each fold's mean over its seeds, ± the std of those means; ML-SUPERB monolingual: each set's mean over "
        "its seeds, the sets of one language averaged (eng1-3, fra1-2, deu1-2), then the languages, ± the std "
        f"of the language means ({MONOLINGUAL_SCORE_SOURCE}); other tasks: over seeds; best mean per column "
        "marked (↓ lower is better, ↑ higher is better).",
    ]
    if table.references_in():
        shown = {cell.reference.source for cell in table.cells.values() if cell.reference is not None}
        sources = "; ".join(
            f"{name} = {citation}" for name, citation in PUBLISHED.citations.items() if name in shown
        )
        lines.append(f"published: {sources}.")
        if table.split != "test":
            lines.append(f"published numbers are test-set scores, beside this table's {table.split} scores.")
    lines.extend(table.notes)
    return lines


def _wide_frame(table: Table, value_text, reference_text, published_header, empty: str) -> pd.DataFrame:
    """One row per table row: upstream, interface, then per column its cell text (and published text)."""
    with_references = table.references_in()
    records = []
    for row in table.rows:
        record = {"upstream": row.upstream, "interface": row.interface}
        for column in table.columns:
            cell = table.cells.get((row, column.task))
            record[column] = empty if cell is None else value_text(cell)
            if column.task in with_references:
                reference = None if cell is None else cell.reference
                record[published_header(column)] = empty if reference is None else reference_text(reference)
        records.append(record)
    headers = ["upstream", "interface"]
    for column in table.columns:
        headers.append(column)
        if column.task in with_references:
            headers.append(published_header(column))
    return pd.DataFrame(records, columns=headers)


def render_markdown(table: Table) -> str:
    def value_text(cell: Cell) -> str:
        value = _mean_std_text(cell, "±")
        return f"{f'**{value}**' if cell.best else value} {_cell_suffix(cell)}"

    frame = _wide_frame(
        table,
        value_text,
        lambda reference: f"{number_text(reference.value)} ({reference.source})",
        lambda column: f"{column.task.upper()} published{published_split_suffix(table)}",
        "–",
    )
    frame.columns = [f"{c.title} {c.arrow}" if not isinstance(c, str) else c for c in frame.columns]
    frame = frame.map(lambda text: text.replace("|", "\\|"))
    lines = [frame.to_markdown(index=False, disable_numparse=True), ""]
    lines.extend(f"- {line}" for line in footer_lines(table))
    if table.incomplete:
        lines += ["", f"Runs not in the table ({len(table.incomplete)}):"]
        lines.extend(f"- {path}: {unfinished_state(path)}" for path in table.incomplete)
    return "\n".join(lines) + "\n"


def unfinished_state(run_dir: Path) -> str:
    """``failed: <message>`` for a folder whose launch failed (``results.failure_message``), else
    ``incomplete`` (running, stopped or killed)."""
    message = failure_message(run_dir)
    return "incomplete" if message is None else f"failed: {message}"


def long_frame(table: Table) -> pd.DataFrame:
    """One line per filled cell: row labels, task, metric, direction, mean, std, n, folds, best, published."""
    records = []
    for row in table.rows:
        for column in table.columns:
            cell = table.cells.get((row, column.task))
            if cell is None:
                continue
            records.append(
                {
                    "upstream": row.upstream,
                    "interface": row.interface,
                    "task": column.task,
                    "metric": column.metric,
                    "direction": "higher" if column.higher_is_better else "lower",
                    "mean": cell.mean,
                    "std": cell.std,
                    "n": cell.n,
                    "folds": " ".join(str(fold) for fold in sorted({f for f in cell.folds if f is not None})),
                    "best": str(cell.best).lower(),
                    "published": None if cell.reference is None else cell.reference.value,
                    "published_source": "" if cell.reference is None else cell.reference.source,
                    "lr": cell.lr,
                    "spread_over": cell.spread_over,
                    "replication": " ".join(f"{g}:{n}" for g, n in cell.replication().items()),
                }
            )
    return pd.DataFrame(records, columns=CSV_FIELDS)


def render_csv(table: Table) -> str:
    """Long format, one line per filled cell; incomplete runs are not part of it (the CLI prints them)."""
    return long_frame(table).to_csv(index=False, lineterminator="\n")


def render_latex(table: Table) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}); notes and incomplete runs follow as % comments."""

    def value_text(cell: Cell) -> str:
        mean = number_text(cell.mean)
        text = rf"\textbf{{{mean}}}" if cell.best else mean
        if cell.std is not None:
            text += rf" $\pm$ {number_text(cell.std, like=cell.mean)}"
        return text + rf" {{\scriptsize {latex_escape(_cell_suffix(cell))}}}"

    frame = _wide_frame(
        table,
        value_text,
        lambda reference: number_text(reference.value),
        lambda column: latex_escape(f"{column.task.upper()} publ.{published_split_suffix(table)}"),
        "--",
    )
    frame[["upstream", "interface"]] = frame[["upstream", "interface"]].map(latex_escape)
    arrows = {True: r"$\uparrow$", False: r"$\downarrow$"}
    names = {"upstream": "Upstream", "interface": "Interface"}
    frame.columns = [
        names.get(c, c) if isinstance(c, str) else f"{latex_escape(c.title)} {arrows[c.higher_is_better]}"
        for c in frame.columns
    ]
    tabular = frame.to_latex(index=False, escape=False, column_format="ll" + "c" * (frame.shape[1] - 2))
    lines = [r"% needs \usepackage{booktabs}", tabular.rstrip("\n")]
    lines.extend(f"% {line}" for line in footer_lines(table))
    lines.extend(f"% not in the table: {path}: {unfinished_state(path)}" for path in table.incomplete)
    return "\n".join(lines) + "\n"


RENDERERS = {"markdown": render_markdown, "csv": render_csv, "latex": render_latex}


def render(table: Table, fmt: str = "markdown") -> str:
    """The table as ``fmt`` (one of FORMATS)."""
    if fmt not in RENDERERS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return RENDERERS[fmt](table)
