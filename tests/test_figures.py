"""make_table's figures are laid out for any number of tasks and runs: every piece of text lies inside the
figure and over no other text, measured on the drawn figure (matplotlib's text bounding boxes)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from matplotlib.text import Text

from downstream import reporting
from tests.helpers import write_finished_run

#: (task, metric, higher is better, a plausible score); ten of the project's tasks
TASKS = [
    ("pr", "per", False, 5.4),
    ("asr", "wer", False, 6.4),
    ("ks", "acc", True, 96.3),
    ("ic", "acc", True, 98.3),
    ("sid", "acc", True, 81.4),
    ("er", "acc", True, 64.9),
    ("sv", "eer", False, 5.1),
    ("sd", "der", False, 5.9),
    ("sf", "slot_type_f1", True, 88.5),
    ("qbe", "mtwv", True, 0.0736),
]
INTERFACES = ["weighted_sum", "hconv", "cls_pooling"]
UPSTREAM = "facebook/hubert-large-ll60k"


def write_sweep(root: Path, tasks: int, seeds: int = 2) -> Path:
    """A sweep of ``tasks`` tasks x three interfaces (one with long distinguishing overrides, one on another
    upstream) x seeds, on HuBERT Large, so that published numbers are drawn too."""
    rng = np.random.default_rng(0)
    for (task, metric, higher, score), interface, seed in itertools.product(
        TASKS[:tasks], INTERFACES, range(seeds)
    ):
        overrides = (f"task={task}", f"interface={interface}", f"seed={seed}")
        if interface == "cls_pooling":
            overrides += ("interface.num_layers_transformer=2", "interface.attention_heads=4")
        value = float(score * (1 + 0.05 * rng.standard_normal()))
        # a sweep job's folder: its overrides, longer than a figure is wide
        name = ",".join([*overrides, "trainer.lr=0.0001", "upstream=hf", f"upstream.model={UPSTREAM}"])
        write_finished_run(
            root / name,
            task=task,
            metric=metric,
            higher_is_better=higher,
            interface=interface,
            upstream=UPSTREAM if interface != "hconv" else "microsoft/wavlm-base-plus",
            upstream_config="s3prl",
            num_layers=13,
            hidden_size=768,
            seed=seed,
            schedule="superb",
            trainable_params={"interface": 13 if interface == "weighted_sum" else 4424832, "head": 2000},
            test={metric: value},
            dev={metric: value},
            layer_weights=list(np.linspace(0, 1, 13)) if interface == "weighted_sum" else None,
            overrides=overrides,
        )
    return root


def text_boxes(figure) -> list[tuple[str, object]]:
    """Every text the drawn figure shows with its bounding box in pixels: visible, non-empty, and for tick
    labels only those of ticks inside the view (matplotlib keeps the others, undrawn)."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    tick_labels, drawn = set(), set()
    for axes in figure.axes:
        for axis in (axes.xaxis, axes.yaxis):
            for tick in [*axis.majorTicks, *axis.minorTicks]:
                tick_labels |= {id(tick.label1), id(tick.label2)}
            low, high = sorted(axis.get_view_interval())
            margin = 1e-9 * max(abs(low), abs(high), 1.0)
            for locs, ticks in (
                (axis.get_majorticklocs(), axis.get_major_ticks),
                (axis.get_minorticklocs(), axis.get_minor_ticks),
            ):
                for loc, tick in zip(locs, ticks(len(locs)), strict=True):
                    if low - margin <= loc <= high + margin:
                        drawn |= {id(tick.label1), id(tick.label2)}
    return [
        (text.get_text(), text.get_window_extent(renderer))
        for text in figure.findobj(Text)
        if text.get_visible()
        and text.get_text().strip()
        and (id(text) not in tick_labels or id(text) in drawn)
    ]


def assert_text_fits(figure, tolerance: float = 1.0) -> None:
    """No text box outside the figure, and no two text boxes overlapping (by more than ``tolerance`` px)."""
    boxes = [(label, box) for label, box in text_boxes(figure) if box.width > 0 and box.height > 0]
    page = figure.bbox
    for label, box in boxes:
        assert box.x0 >= page.x0 - tolerance and box.x1 <= page.x1 + tolerance, (
            f"{label!r} clipped left/right"
        )
        assert box.y0 >= page.y0 - tolerance and box.y1 <= page.y1 + tolerance, (
            f"{label!r} clipped top/bottom"
        )
    for (label_a, a), (label_b, b) in itertools.combinations(boxes, 2):
        overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
        overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
        assert overlap_x <= tolerance or overlap_y <= tolerance, f"{label_a!r} overlaps {label_b!r}"


@pytest.fixture(params=[1, 3, 10], ids=lambda n: f"{n}-tasks")
def collection(request, tmp_path):
    root = write_sweep(tmp_path / "sweep", request.param)
    return reporting.collect_runs([root])


def test_comparison_text_stays_inside_and_apart(collection):
    table = reporting.aggregate(collection)
    figure = reporting.plot_comparison(table)
    assert_text_fits(figure)
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert set(INTERFACES) <= set(legend) and "published" in legend
    values = {text.get_text().strip() for axes in figure.axes for text in axes.texts}
    pr = table.cells[next(row for row in table.rows if row.interface == "weighted_sum"), "pr"]
    assert f"{pr.mean:.2f} %" in values  # the mean with its unit at the bar


def test_trainable_params_text_stays_inside_and_apart(collection):
    assert_text_fits(reporting.plot_trainable_params(reporting.parameter_summary(collection)))


def test_layer_weight_text_stays_inside_and_apart(collection):
    run = next(run for run in collection.runs if run.results.layer_weights)
    assert_text_fits(reporting.plot_layer_weights(run))


def test_the_fit_check_catches_overlapping_and_clipped_text():
    figure = reporting.plots.new_figure(2, 2)
    figure.text(0.1, 0.5, "a long label that runs off the page")
    with pytest.raises(AssertionError, match="clipped"):
        assert_text_fits(figure)
    figure = reporting.plots.new_figure(4, 2)
    figure.text(0.1, 0.5, "one")
    figure.text(0.12, 0.5, "two")
    with pytest.raises(AssertionError, match="overlaps"):
        assert_text_fits(figure)
