"""Paper-style result tables (and plots) from sweep directories of results.json files.

    python scripts/make_table.py multirun/table2                       # markdown to stdout
    python scripts/make_table.py multirun/table1 multirun/superb --format latex --split dev
    python scripts/make_table.py multirun/table2 --format csv --plots figures/table2

Rows are upstream x interface, columns are tasks (metric and direction), plus a column for each second
metric (ml_multi's LID accuracy: column lid). Each cell is the mean and sample standard deviation (ddof=1)
of the task metric over the cell's runs (seeds, ER's folds; ML-SUPERB's monolingual sets are averaged per
language first, then over languages, as ESPnet's mono_superb_score.py does), with n = runs; the best mean of each column is marked, lower or higher as the metric says. Where the paper
(Shih & Harwath, arXiv 2406.12209, Table 2) or the SUPERB paper (arXiv 2105.01051) published a number for
the same upstream, interface and task, it is shown beside ours (downstream/reporting/published.yaml).
Job directories without results.json are listed as incomplete and never averaged in.

A row's interface label carries whatever distinguishes its runs: overrides such as interface.num_groups=3
or trainer.lr=1e-3 (an override shared by every run is reported once, under the table), a head widened by
task.head.extra_params ("+ larger head"), and a trainable upstream ("fine-tuned", on the upstream label).
Within an upstream, rows go from the fewest trainable interface parameters to the most.

--plots DIR writes DIR/comparison.png (per task: mean ± std per row, every run, the published number),
DIR/trainable_params.png (interface, head and fine-tuned upstream parameters on a log axis) with
DIR/trainable_params.md, and DIR/layer_weights/<run>.png (learned layer weights of every run that has them).

Runs that differ only in trainer.lr are a learning-rate search: the notes name each search's learning rate
with the best mean dev score (SUPERB's protocol). --chosen-lr keeps only those runs, one row per search, and
shows the chosen lr in each cell (a test score is then reported only for the dev-chosen learning rate).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from downstream.reporting.aggregate import SPLITS, aggregate
from downstream.reporting.collect import collect_runs
from downstream.reporting.plots import write_plots
from downstream.reporting.render import FORMATS, render, unfinished_state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make_table.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="sweep (or run) directories to search")
    parser.add_argument("--format", choices=FORMATS, default="markdown")
    parser.add_argument("--split", choices=SPLITS, default="test", help="which split's metric to tabulate")
    parser.add_argument(
        "--plots", type=Path, default=None, help="write the comparison, parameter and layer-weight plots here"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write the table here instead of stdout (folders are created)",
    )
    parser.add_argument(
        "--chosen-lr",
        action="store_true",
        help="learning-rate searches (runs differing only in trainer.lr): only the runs of the lr with the best "
        "mean dev score, one row per search, the chosen lr in each cell",
    )
    args = parser.parse_args(argv)

    try:
        collection = collect_runs(args.sweep_dirs, chosen_lr=args.chosen_lr)
        table = aggregate(collection, args.split)
    except (FileNotFoundError, ValueError) as error:  # ResultsFileError is a ValueError
        parser.error(str(error))
    if not collection.runs and not collection.incomplete:
        parser.error(
            f"no results.json and no Hydra job directories under {', '.join(map(str, args.sweep_dirs))}"
        )
    text = render(table, args.format)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)  # as --plots creates its folder
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    if collection.incomplete and args.format == "csv":
        for path in collection.incomplete:
            print(f"not in the table: {path}: {unfinished_state(path)}", file=sys.stderr)
    if args.plots is not None:
        for path in write_plots(collection, args.plots, args.split):
            print(f"wrote {path}", file=sys.stderr)
    return 0
