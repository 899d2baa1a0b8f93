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
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from downstream.metrics.display import metric_format
from downstream.reporting.aggregate import Table, aggregate
from downstream.reporting.collect import Collection, Run, interface_params_by_row, row_sort_key
from downstream.reporting.render import published_split_suffix
from interfaces.configs import interface_config_names

TRAINABLE_PARTS = ("interface", "head", "upstream")
LABEL_WIDTH = 32  # characters of a row label line before it wraps
TITLE_CHAR_INCHES = 0.075  # the width a character of a fontsize "small" title needs at most (DejaVu Sans)
PART_COLORS = {"interface": "tab:green", "head": "tab:orange", "upstream": "tab:purple"}


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


#: matplotlib's ten default colours, then four more of other hues (Dark2's mustard, teal, green; navy):
#: one colour per interface config while there are at most 14 of them
INTERFACE_COLORS = (*(f"C{i}" for i in range(10)), "#e6ab02", "#1b9e77", "#66a61e", "navy")


def interface_color(interface_name: str) -> str:
    """One colour per interface config (configs/interface/), the same in every figure; distinct for up to
    ``len(INTERFACE_COLORS)`` configs (then they repeat)."""
    names = interface_config_names()
    index = names.index(interface_name) if interface_name in names else len(names)
    return INTERFACE_COLORS[index % len(INTERFACE_COLORS)]


def safe_file_stem(name: str, max_length: int = 150) -> str:
    """A file name from a run name: '/' -> '__', other unusual characters -> '_'; a longer name is cut after
    its last whole ``,``-separated setting that fits (marked ``,...``, never inside a value) and ends in 8 hex
    digits of the whole name's hash."""
    stem = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name.replace("/", "__"))
    if len(stem) > max_length:
        head = stem[: max_length - 13]
        head = head[: head.rindex(",")] + ",..." if "," in head else head
        stem = head + "-" + hashlib.sha1(stem.encode()).hexdigest()[:8]
    return stem


# ---------------------------------------------------------------- comparison across runs


def row_labels(rows: list, width: int = LABEL_WIDTH) -> list[str]:
    """Short row labels: the interface and what tells the row apart; the upstream only when the rows do not
    all share it, a fused upstream by its member names (``RowKey.short_label``). Wrapped after commas or
    spaces at ``width`` characters."""
    shared_upstream = len({row.upstream for row in rows}) == 1
    return [
        "\n".join(
            wrap_name(
                row.interface if shared_upstream else row.short_label, width, breaks=", ", split_words=False
            )
        )
        for row in rows
    ]


def plot_comparison(table: Table) -> Figure:
    """One panel per task column (two columns of panels from four tasks on), horizontal bars (so row labels
    read level and never collide): for each row the mean ± sample std with its value and unit written at the
    bar's end, every run's score (dots, over seeds, folds or language sets) and the published number (red
    star) where there is one. Bars are coloured by interface; one legend above the panels names the colours
    and markers. When all rows share an upstream it is named in the legend's title (``shown_upstream``: a
    fused one by its member names) instead of every label.

    Artists carry gids for inspection: "mean" bars, "runs" and "published" scatter collections.
    """
    columns = table.columns
    grid_columns = 1 if len(columns) <= 3 else 2
    grid_rows = -(-len(columns) // grid_columns)
    all_rows = [row for row in table.rows if any((row, c.task) in table.cells for c in columns)]
    labels = dict(zip(all_rows, row_labels(all_rows), strict=True))
    label_chars = max((len(line) for text in labels.values() for line in text.split("\n")), default=10)
    label_lines = max((text.count("\n") + 1 for text in labels.values()), default=1)
    most_rows = max((sum((row, c.task) in table.cells for row in table.rows) for c in columns), default=1)
    panel_height = most_rows * max(0.32, 0.17 * label_lines + 0.1) + 0.9
    panel_width = 3.2 + 0.075 * label_chars
    figure = new_figure(panel_width * grid_columns, panel_height * grid_rows + 0.7)
    figure.set_layout_engine("constrained")
    interfaces: dict[str, str] = {}
    has_published = False
    for index, column in enumerate(columns):
        axes = figure.add_subplot(grid_rows, grid_columns, index + 1)
        rows = [row for row in table.rows if (row, column.task) in table.cells]
        cells = [table.cells[(row, column.task)] for row in rows]
        positions = np.arange(len(rows))
        means = np.array([cell.mean for cell in cells], dtype=float)
        errors = np.array([cell.std or 0.0 for cell in cells], dtype=float)
        colors = [interface_color(row.interface_name) for row in rows]
        for row in rows:
            interfaces.setdefault(row.interface_name, interface_color(row.interface_name))
        axes.barh(positions, means, xerr=errors, capsize=3, color=colors, alpha=0.6, height=0.6, gid="mean")
        run_y = [p + offset for p, cell in zip(positions, cells, strict=True) for offset in _spread(cell.n)]
        run_x = [value for cell in cells for value in cell.values]
        axes.scatter(run_x, run_y, s=10, color="black", zorder=3, gid="runs")
        published = [
            (cell.reference.value, p) for p, cell in zip(positions, cells, strict=True) if cell.reference
        ]
        if published:
            has_published = True
            x, y = zip(*published, strict=True)
            axes.scatter(x, y, s=80, marker="*", color="tab:red", zorder=4, gid="published")
        shown = metric_format(column.metric)
        values = [*means + errors, *means - errors, *run_x, *(v for v, _ in published), 0.0]
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        axes.set_xlim(low - 0.02 * span if low < 0 else 0.0, high + 0.45 * span)  # room for the value text
        for position, mean, error, cell in zip(positions, means, errors, cells, strict=True):
            text = f"{mean:.{shown.decimals}f}" + (f" {shown.unit}" if shown.unit else "")
            end = max(mean + error, *cell.values, *(v for v, p in published if p == position), 0.0)
            axes.annotate(
                " " + text,
                (end, position),
                va="center",
                fontsize="x-small",
                gid="value",
            )
        axes.set_yticks(positions, [labels[row] for row in rows], fontsize="x-small")
        axes.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
        unit = f" ({shown.unit})" if shown.unit else ""
        axes.set_xlabel(f"{shown.name}{unit}, {table.split} {column.arrow}", fontsize="small")
        axes.set_title(f"{column.title} {column.arrow}", fontsize="small", loc="left")
        axes.tick_params(axis="x", labelsize="x-small")
    handles = [Patch(color=color, alpha=0.6, label=name) for name, color in interfaces.items()]
    handles.append(Line2D([], [], marker="o", color="black", linestyle="none", markersize=3, label="runs"))
    if has_published:
        handles.append(
            Line2D(
                [],
                [],
                marker="*",
                color="tab:red",
                linestyle="none",
                markersize=9,
                label="published" + published_split_suffix(table),
            )
        )
    upstreams = {row.upstream: row.shown_upstream for row in all_rows}
    title = f"upstream: {next(iter(upstreams.values()))}" if len(upstreams) == 1 else None
    if title:  # widen the figure to the legend title (a long model name) where the panels are narrower
        figure.set_figwidth(max(figure.get_figwidth(), TITLE_CHAR_INCHES * len(title) + 0.4))
    if handles:
        figure.legend(
            handles=handles,
            loc="outside upper center",
            ncols=min(len(handles), max(2, int(panel_width * grid_columns / 1.6))),
            fontsize="x-small",
            title=title,
            title_fontsize="small",
        )
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
        entry = {
            "upstream": row.upstream,
            "short_upstream": row.shown_upstream,
            "interface": row.interface,
            "task": task,
        }
        for part in TRAINABLE_PARTS:
            values = counts[(row, task)][part]
            entry[f"{part}_params"] = (min(values), max(values))
        summary.append(entry)
    return summary


def _count_text(span: tuple[int, int]) -> str:
    low, high = span
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def parameter_markdown(summary: list[dict]) -> str:
    """The counts of ``parameter_summary`` as a markdown table, upstreams as the figure names them, then the
    full name of each upstream shown by its member names."""
    frame = pd.DataFrame(
        {
            "upstream": entry["short_upstream"],
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
    full_names = {e["short_upstream"]: e["upstream"] for e in summary if e["short_upstream"] != e["upstream"]}
    notes = "".join(f"\n- {short}: fused upstream {full}" for short, full in sorted(full_names.items()))
    return frame.to_markdown(index=False, disable_numparse=True) + "\n" + notes + ("\n" if notes else "")


def plot_trainable_params(summary: list[dict]) -> Figure:
    """One panel per task: for each upstream / interface, bars of trainable interface, head and (when
    fine-tuned) upstream parameters on a log axis, each labelled with its count; a zero count is written
    as "0" (a log axis has no place for it). One legend above the panels. Bars carry gid "interface",
    "head" or "upstream"."""
    tasks = sorted({entry["task"] for entry in summary})
    heights = [sum(entry["task"] == task for entry in summary) for task in tasks]
    labels = {
        id(entry): "\n".join(
            wrap_name(
                f"{entry['short_upstream']} / {entry['interface']}",
                LABEL_WIDTH,
                breaks=", ",
                split_words=False,
            )
        )
        for entry in summary
    }
    label_chars = max((len(line) for text in labels.values() for line in text.split("\n")), default=10)
    lines = max((text.count("\n") + 1 for text in labels.values()), default=1)
    parts_shown = [
        p for p in TRAINABLE_PARTS if p != "upstream" or any(e["upstream_params"][1] for e in summary)
    ]
    row_height = max(0.22 * len(parts_shown), 0.17 * lines + 0.1)
    figure = new_figure(5.5 + 0.075 * label_chars, row_height * sum(heights) + 0.75 * len(tasks) + 0.9)
    figure.set_layout_engine("constrained")
    grid = figure.add_gridspec(len(tasks), 1, height_ratios=[h + 0.8 for h in heights])
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
                axes.annotate(f" {count:,}", (max(count, 1), position), va="center", fontsize=6)
        axes.set_xscale("log")
        axes.set_xlim(0.8, largest * 60)
        axes.set_yticks(positions, [labels[id(e)] for e in entries], fontsize="x-small")
        axes.set_ylim(len(entries) - 0.5, -0.5)  # first row on top; room for a zero count's label
        axes.set_title(f"task {task}", fontsize="small", loc="left")
        axes.tick_params(axis="x", labelsize="x-small", labelbottom=index == len(tasks) - 1)
    if tasks:
        figure.axes[-1].set_xlabel("trainable parameters (log scale)", fontsize="small")
        handles = [Patch(color=PART_COLORS[part], label=part) for part in parts_shown]
        figure.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize="x-small")
    return figure


# ---------------------------------------------------------------- layer weights


TITLE_WIDTH = 80  # characters of a title line that fit the 7-inch layer-weight figure at fontsize "small"


def wrap_name(name: str, width: int, breaks: str = ",", split_words: bool = True) -> list[str]:
    """A run name cut into lines of at most ``width`` characters after one of ``breaks`` (sweep job folders
    are comma-separated overrides, often longer than a figure is wide). A piece with no break within
    ``width`` is cut at ``width`` where ``split_words``, else kept whole on a line of its own (a row label's
    ``key=value`` is never broken; the figure widens to its longest line)."""
    lines, rest = [], name
    while len(rest) > width:
        cut = max(rest.rfind(mark, 0, width) for mark in breaks) + 1
        if not cut:
            following = [rest.find(mark, width) for mark in breaks if rest.find(mark, width) >= 0]
            cut = width if split_words else min(following) + 1 if following else len(rest)
        if cut >= len(rest):
            break
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return [*lines, rest]


BAR_INCHES = 0.2  # the width a layer-weight bar needs at least: its two-digit tick label and a gap
MEMBER_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def member_layer_groups(run: Run) -> list[tuple[str, list[str], list[float]]] | None:
    """A fused upstream's ``ws_fusion`` weights split by member: (member label, each bar's layer label within
    the member, its weights), members in order; None unless the run has members and N x L weights.

    results.json logs them flat, member 0's L layers first (``interfaces.fusion.FusionWeightedSum``). The
    label of aligned layer i is the member's hidden state ``layer_ids[i]`` where the member has L layers;
    else the member's states were interpolated to the common L (``upstream.layer_alignment``): the bars are
    labelled 0..L-1 and the member's label says so ("pretrained" over "(4 states to 7)")."""
    members, weights = run.results.members, run.results.layer_weights
    if not members or not weights:
        return None
    if isinstance(weights[0], list):  # [N, L]
        flat = [float(w) for group in weights for w in group] if len(weights) == len(members) else None
    else:
        flat = [float(w) for w in weights]
    if flat is None or len(flat) % len(members):
        return None
    num_layers = len(flat) // len(members)
    groups = []
    for index, member in enumerate(members):
        name = str(member.get("name", f"member {index}"))
        ids = member.get("layer_ids") or []
        if member.get("num_layers") == num_layers and len(ids) == num_layers:
            labels = [str(layer) for layer in ids]
        else:
            labels = [str(layer) for layer in range(num_layers)]
            name += f"\n({member.get('num_layers', '?')} states to {num_layers})"
        part = flat[index * num_layers : (index + 1) * num_layers]
        groups.append((name, labels, part))
    return groups


def layer_weight_title(run: Run) -> str:
    """The run's short label (``RowKey.short_label``: a fused upstream by its member names, what tells the
    row apart), task, seed (and fold) and test score, wrapped to ``TITLE_WIDTH``; the folder name is the
    figure's file name."""
    results = run.results
    replicate = f"seed {results.seed}" + (f", fold {results.fold}" if results.fold is not None else "")
    score = metric_format(results.metric).format(results.score("test"))
    headline = f"{run.row.short_label} / {results.task}, {replicate} (test {score})"
    return "\n".join(wrap_name(headline, TITLE_WIDTH, breaks=" /,"))


def plot_layer_weights(run: Run) -> Figure:
    """Bars of the run's learned weight per layer; grouped weights ([G, L] or one list per group) by group;
    a fused upstream's (``member_layer_groups``) by member: one block of bars per member, each bar labelled
    with its layer within the member and the member's name under its block.

    A bar stands at its hidden state's index in the upstream (``layer_ids``: with ``upstream.layers`` a subset,
    the i-th weight belongs to state ``layer_ids[i]``, not to state i). The title is ``layer_weight_title``."""
    weights = run.results.layer_weights
    members = member_layer_groups(run)
    slots = (
        sum(len(part) + 1 for _, _, part in members)
        if members
        else max(len(weights), *(run.results.layer_ids or [0])) + 1
    )
    figure = new_figure(max(7.0, BAR_INCHES * slots + 1.2), 3.2)  # wider for many bars (fused Large models)
    axes = figure.add_subplot()
    grouped = bool(weights) and isinstance(weights[0], list)
    if members is not None:
        _member_bars(axes, members)
    else:
        stacked = grouped and len({len(group) for group in weights}) == 1
        num_states = len(weights[0]) if stacked else sum(map(len, weights)) if grouped else len(weights)
        layer_ids = run.results.layer_ids
        positions = np.asarray(
            layer_ids if layer_ids is not None and len(layer_ids) == num_states else range(num_states)
        )
        if not grouped:
            axes.bar(positions, weights, color="tab:blue")
        elif stacked:  # [G, L]: stacked, so disjoint groups give one bar per layer
            bottom = np.zeros(len(weights[0]))
            for index, group in enumerate(weights):
                axes.bar(positions, group, bottom=bottom, label=f"group {index + 1}")
                bottom += np.asarray(group, dtype=float)
        else:  # one list per contiguous group of layers
            start = 0
            for index, group in enumerate(weights):
                axes.bar(positions[start : start + len(group)], group, label=f"group {index + 1}")
                start += len(group)
        if grouped:
            axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        axes.set_xticks(positions)
        axes.set_xlabel("layer (0 = transformer input)")
    axes.set_ylabel("weight")
    axes.set_title(layer_weight_title(run), fontsize="small")
    figure.set_layout_engine("constrained")
    return figure


def _member_bars(axes, members: list[tuple[str, list[str], list[float]]]) -> None:
    """One block of bars per member (a gap of one bar between blocks), coloured by member; major ticks
    label each bar's layer within its member, minor ticks (further down) the member's name."""
    positions, labels, centers = [], [], []
    start = 0
    for index, (_, layer_labels, part) in enumerate(members):
        block = np.arange(start, start + len(part))
        axes.bar(block, part, color=MEMBER_COLORS[index % len(MEMBER_COLORS)], gid=f"member {index}")
        positions.extend(block)
        labels.extend(layer_labels)
        centers.append(float(block.mean()))
        start += len(part) + 1
    axes.set_xticks(positions, labels, fontsize="small")
    axes.set_xticks(centers, [name for name, _, _ in members], minor=True)
    axes.tick_params(axis="x", which="minor", length=0, pad=18)
    axes.xaxis.remove_overlapping_locs = False  # a block's centre is a bar's position too
    axes.set_xlabel("layer within member (0 = transformer input)")


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
