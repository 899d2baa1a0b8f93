"""Figures from finished runs: a comparison across runs, trainable parameters on a log axis, layer weights.

Each ``plot_*`` function returns a matplotlib Figure (object-oriented API on its own Agg canvas: no pyplot,
no global backend switch); ``write_plots`` saves them as PNG files.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from downstream.reporting.aggregate import Table, aggregate
from downstream.reporting.collect import Collection, Run, interface_params_by_row, row_sort_key
from interfaces.configs import interface_config_names

TRAINABLE_PARTS = ("interface", "head", "upstream")
PART_COLORS = {"interface": "tab:green", "head": "tab:orange", "upstream": "tab:purple"}


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def interface_color(interface_name: str) -> str:
    """One colour per interface config (configs/interface/), the same in every figure."""
    names = interface_config_names()
    index = names.index(interface_name) if interface_name in names else len(names)
    return f"C{index % 10}"


def safe_file_stem(name: str, max_length: int = 150) -> str:
    """A file name from a run name: '/' -> '__', other unusual characters -> '_', long names hashed."""
    stem = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name.replace("/", "__"))
    if len(stem) > max_length:
        stem = stem[: max_length - 9] + "-" + hashlib.sha1(stem.encode()).hexdigest()[:8]
    return stem


# ---------------------------------------------------------------- comparison across runs


def plot_comparison(table: Table) -> Figure:
    """One panel per task column: for each row the mean (bar) ± sample std, every run's score (dots, over
    seeds, folds or language sets) and the published number (red star) where there is one.

    Artists carry gids for inspection: "mean" bars, "runs" and "published" scatter collections.
    """
    columns = table.columns
    grid_columns = min(len(columns), 3)
    grid_rows = -(-len(columns) // 3)  # ceil: three panels per line
    most_rows = max((sum((row, c.task) in table.cells for row in table.rows) for c in columns), default=1)
    figure = new_figure(max(4.0, 0.9 * most_rows + 1.5) * grid_columns, 4.2 * grid_rows)
    for index, column in enumerate(columns):
        axes = figure.add_subplot(grid_rows, grid_columns, index + 1)
        rows = [row for row in table.rows if (row, column.task) in table.cells]
        cells = [table.cells[(row, column.task)] for row in rows]
        positions = np.arange(len(rows))
        means = [cell.mean for cell in cells]
        errors = [cell.std or 0.0 for cell in cells]
        axes.bar(
            positions,
            means,
            yerr=errors,
            capsize=3,
            color=[interface_color(row.interface_name) for row in rows],
            alpha=0.6,
            gid="mean",
        )
        run_x = [p + offset for p, cell in zip(positions, cells, strict=True) for offset in _spread(cell.n)]
        run_y = [value for cell in cells for value in cell.values]
        axes.scatter(run_x, run_y, s=12, color="black", zorder=3, label="runs", gid="runs")
        published = [
            (p, cell.reference.value) for p, cell in zip(positions, cells, strict=True) if cell.reference
        ]
        if published:
            x, y = zip(*published, strict=True)
            axes.scatter(
                x, y, s=90, marker="*", color="tab:red", zorder=4, label="published", gid="published"
            )
        axes.set_xticks(positions, [row.label for row in rows], rotation=30, ha="right", fontsize="small")
        pad = max(0.0, (3 - len(rows)) / 2)  # a lone bar stays bar-sized and centred
        axes.set_xlim(-0.5 - pad, len(rows) - 0.5 + pad)
        axes.set_ylabel(f"{column.metric} ({table.split}) {column.arrow}")
        axes.set_title(f"{column.title} {column.arrow}")
        axes.legend(fontsize="x-small")
    figure.tight_layout()
    return figure


def _spread(n: int) -> np.ndarray:
    """x offsets that keep n dots of one bar apart."""
    return np.linspace(-0.2, 0.2, n) if n > 1 else np.zeros(1)


# ---------------------------------------------------------------- trainable parameters


def parameter_summary(collection: Collection) -> list[dict]:
    """Per row and task: upstream, interface, task, and (min, max) trainable parameter counts over its runs
    as interface_params, head_params, upstream_params (min < max only if its runs disagree)."""
    counts: dict[tuple, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for run in collection.runs:
        for part in TRAINABLE_PARTS:
            counts[(run.row, run.results.task)][part].add(run.results.trainable_params.get(part, 0))
    interface_params = interface_params_by_row(collection.runs)
    summary = []
    for row, task in sorted(counts, key=lambda key: (row_sort_key(key[0], interface_params[key[0]]), key[1])):
        entry = {"upstream": row.upstream, "interface": row.interface, "task": task}
        for part in TRAINABLE_PARTS:
            values = counts[(row, task)][part]
            entry[f"{part}_params"] = (min(values), max(values))
        summary.append(entry)
    return summary


def _count_text(span: tuple[int, int]) -> str:
    low, high = span
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def parameter_markdown(summary: list[dict]) -> str:
    frame = pd.DataFrame(
        {
            "upstream": entry["upstream"],
            "interface": entry["interface"],
            "task": entry["task"],
            **{
                f"{part} params" + (" (trainable)" if part == "upstream" else ""): _count_text(
                    entry[f"{part}_params"]
                )
                for part in TRAINABLE_PARTS
            },
        }
        for entry in summary
    )
    return frame.to_markdown(index=False, disable_numparse=True) + "\n"


def plot_trainable_params(summary: list[dict]) -> Figure:
    """One panel per task: for each upstream / interface, bars of trainable interface, head and (when
    fine-tuned) upstream parameters on a log axis, each labelled with its count; a zero count is written
    as "0" (a log axis has no place for it). Bars carry gid "interface", "head" or "upstream"."""
    tasks = sorted({entry["task"] for entry in summary})
    heights = [sum(entry["task"] == task for entry in summary) for task in tasks]
    figure = new_figure(9, 0.7 * sum(heights) + 1.2 * len(tasks) + 0.5)
    grid = figure.add_gridspec(len(tasks), 1, height_ratios=heights)
    largest = max((entry[f"{p}_params"][1] for entry in summary for p in TRAINABLE_PARTS), default=1)
    shared = None
    for index, task in enumerate(tasks):
        axes = figure.add_subplot(grid[index], sharex=shared)
        shared = shared or axes
        entries = [entry for entry in summary if entry["task"] == task]
        positions = np.arange(len(entries))
        parts = [
            p for p in TRAINABLE_PARTS if p != "upstream" or any(e["upstream_params"][1] for e in entries)
        ]
        height = 0.8 / len(parts)
        for slot, part in enumerate(parts):
            offset = (slot - (len(parts) - 1) / 2) * height
            counts = [entry[f"{part}_params"][1] for entry in entries]
            for position, count in zip(positions + offset, counts, strict=True):
                if count > 0:
                    axes.barh(position, count, height=height * 0.95, color=PART_COLORS[part], gid=part)
                axes.annotate(f" {count:,}", (max(count, 1), position), va="center", fontsize="x-small")
        axes.set_xscale("log")
        axes.set_xlim(0.8, largest * 30)
        axes.set_yticks(positions, [f"{e['upstream']} / {e['interface']}" for e in entries], fontsize="small")
        axes.set_ylim(len(entries) - 0.5, -0.5)  # first row on top; room for a zero count's label
        axes.set_title(f"task {task}", fontsize="small", loc="left")
        handles = [Patch(color=PART_COLORS[part], label=part) for part in parts]
        axes.legend(handles=handles, fontsize="x-small", loc="lower right")
    if tasks:
        figure.axes[-1].set_xlabel("trainable parameters (log scale)")
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------- layer weights


def plot_layer_weights(run: Run) -> Figure:
    """Bars of the run's learned weight per layer; grouped weights ([G, L] or one list per group) by group."""
    weights = run.results.layer_weights
    figure = new_figure(7, 3.2)
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
    score = run.results.score("test")
    axes.set_title(
        f"{run.row.upstream} / {run.row.interface} / {run.results.task} "
        f"(test {run.results.metric} {score:.2f})\n{run.name}",
        fontsize="small",
    )
    figure.tight_layout()
    return figure


def write_plots(collection: Collection, out_dir: str | Path, split: str = "test") -> list[Path]:
    """Write under ``out_dir``: layer_weights/<run>.png for every run that recorded weights,
    comparison.png (``split`` scores), trainable_params.png and trainable_params.md. Returns the paths."""
    out_dir = Path(out_dir)
    weights_dir = out_dir / "layer_weights"
    weights_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for run in collection.runs:
        if run.results.layer_weights:
            path = weights_dir / f"{safe_file_stem(run.name)}.png"
            plot_layer_weights(run).savefig(path)
            written.append(path)
    if collection.runs:
        comparison = out_dir / "comparison.png"
        plot_comparison(aggregate(collection, split)).savefig(comparison)
        summary = parameter_summary(collection)
        markdown = out_dir / "trainable_params.md"
        markdown.write_text(parameter_markdown(summary))
        figure = out_dir / "trainable_params.png"
        plot_trainable_params(summary).savefig(figure)
        written += [comparison, markdown, figure]
    return written
