"""make_table's figures are laid out for any number of tasks and runs: every piece of text lies inside the
figure and over no other text, measured on the drawn figure (matplotlib's text bounding boxes)."""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from matplotlib.text import Text

from downstream import reporting
from downstream.reporting.cli import main as make_table_main
from downstream.reporting.collect import short_keys
from downstream.reporting.plots import LABEL_WIDTH, row_labels
from tests.helpers import (
    TINY_PAIR_OVERRIDES,
    TINY_UPSTREAM,
    TWO_STEP_RUN,
    run_downstream_cli,
    write_finished_run,
)
from tests.hf_tiny import save_tiny_family

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


# ---------------------------------------------------------------- fusion rows: short labels

PAIR = "openai/whisper-small (hf) + wavlm_base_plus (s3prl)"  # the fused upstream's label (upstream.fusion)


def fusion_overrides(*more: str) -> tuple[str, ...]:
    """The overrides of a fused Whisper Small + WavLM Base+ written member by member, as a user types it."""
    return (
        "upstream=fusion",
        "+upstream@upstream.members.whisper_small=hf",
        "upstream.members.whisper_small.model=openai/whisper-small",
        "+upstream@upstream.members.wavlm_base_plus=s3prl",
        "upstream.members.wavlm_base_plus.name=wavlm_base_plus",
        *more,
    )


def write_fusion_sweep(root: Path) -> Path:
    """ER runs of the pair (three fusion interfaces; ws_fusion also with another Whisper window) and of
    Whisper Small alone, two folds each."""
    jobs = [(PAIR, i, fusion_overrides()) for i in ("ws_fusion", "hconv_fusion", "chconv")]
    jobs.append((PAIR, "ws_fusion", fusion_overrides("upstream.members.whisper_small.whisper_window=trim")))
    jobs.append(
        ("openai/whisper-small (hf)", "weighted_sum", ("upstream=hf", "upstream.model=openai/whisper-small"))
    )
    members = [{"name": "whisper_small"}, {"name": "wavlm_base_plus"}]
    for index, ((upstream, interface, overrides), fold) in enumerate(itertools.product(jobs, (1, 2))):
        write_finished_run(
            root / f"job{index}",
            task="er",
            metric="acc",
            higher_is_better=True,
            interface=interface,
            upstream=upstream,
            upstream_config="fusion" if "+" in upstream else "hf",
            members=members if "+" in upstream else None,
            fold=fold,
            seed=0,
            schedule="superb",
            trainable_params={"interface": 26, "head": 2000},
            test={"acc": 70.0 + index},
            dev={"acc": 70.0 + index},
            overrides=("task=er", f"interface={interface}", f"task.fold={fold}", *overrides),
        )
    return root


def test_fusion_rows_are_labelled_by_member_names_and_what_differs(tmp_path):
    collection = reporting.collect_runs([write_fusion_sweep(tmp_path / "sweep")])
    table = reporting.aggregate(collection)
    cells = {row.interface for row in table.rows}
    # the member overrides every pair run shares are the upstream column's, not each row's
    assert cells == {
        "ws_fusion",
        "ws_fusion (whisper_small.whisper_window=trim)",
        "hconv_fusion",
        "chconv",
        "weighted_sum",
    }
    # nothing is lost: what the rows of one upstream share is in the notes
    assert any(
        note.startswith("runs of whisper_small+wavlm_base_plus: ")
        and "upstream.members.wavlm_base_plus.name=wavlm_base_plus" in note
        for note in collection.notes
    )
    for row, label in zip(table.rows, row_labels(table.rows), strict=True):
        # a few lines, cut only at spaces (no word or key=value broken), the member names first
        assert label.replace("\n", " ") == row.short_label and len(label) <= 90 and label.count("\n") <= 2
        assert label.startswith("whisper_small+wavlm_base_plus /") == (row.upstream == PAIR), label
    # the pair named member by member is still the published model: its ER cells get the paper's number
    # (70.58 for ws_fusion, docs/fusion.md), and the row with another Whisper window does not
    references = {row.interface: table.cells[row, "er"].reference for row in table.rows}
    assert references["ws_fusion"].value == 70.58
    assert references["ws_fusion (whisper_small.whisper_window=trim)"] is None
    assert_text_fits(reporting.plot_comparison(table))
    assert_text_fits(reporting.plot_trainable_params(reporting.parameter_summary(collection)))


#: the fused upstream of docs/fusion.md's offline pair as results.json names it, and its member names
TINY_PAIR = "tiny-hubert L7 D192 (mini_superb_hubert) + tiny-hubert L7 D96"
FUSION_INTERFACES = ("ws_fusion", "hconv_fusion", "chconv")


def tiny_pair_members(*layers: int) -> list[dict]:
    """results.json ``members`` of the pair: 'pretrained' and 'random', of ``layers`` hidden states each."""
    return [
        {"name": name, "num_layers": count, "layer_ids": list(range(count))}
        for name, count in zip(("pretrained", "random"), layers, strict=True)
    ]


def write_tiny_pair_sweep(root: Path, layers: tuple[int, int] = (7, 7), seeds: int = 2) -> Path:
    """The fresh-user trial's sweep (docs/fusion.md's offline pair, three fusion interfaces x seeds on KS);
    ws_fusion logs N x L weights, member 0's first, rising within each member."""
    common = (*TINY_PAIR_OVERRIDES, "task=ks", "trainer.max_steps=4")
    num_layers = max(layers)
    for interface, seed in itertools.product(FUSION_INTERFACES, range(seeds)):
        weights = [(1 + member) * (1 + layer) for member in range(2) for layer in range(num_layers)]
        write_finished_run(
            root / f"{interface}-{seed}",
            task="ks",
            metric="acc",
            higher_is_better=True,
            interface=interface,
            upstream=TINY_PAIR,
            upstream_config="fusion",
            members=tiny_pair_members(*layers),
            num_layers=num_layers,
            layer_ids=list(range(num_layers)),
            seed=seed,
            schedule="demo",
            trainable_params={"interface": 18638, "head": 52492},
            test={"acc": 50.0 + seed},
            dev={"acc": 50.0 + seed},
            layer_weights=[w / sum(weights) for w in weights] if interface == "ws_fusion" else None,
            overrides=(*common, f"interface={interface}", f"seed={seed}"),
        )
    return root


def test_a_fused_upstream_is_named_by_its_members_in_figures_and_table(tmp_path):
    collection = reporting.collect_runs([write_tiny_pair_sweep(tmp_path / "sweep")])
    table = reporting.aggregate(collection)
    figure = reporting.plot_comparison(table)
    assert_text_fits(figure)
    assert figure.legends[0].get_title().get_text() == "upstream: pretrained+random"
    labels = {text.get_text() for text in figure.axes[0].get_yticklabels()}
    assert labels == set(FUSION_INTERFACES)  # the shared upstream is in the legend title only
    params = reporting.plot_trainable_params(reporting.parameter_summary(collection))
    assert_text_fits(params)
    assert {text.get_text() for text in params.axes[0].get_yticklabels()} == {
        f"pretrained+random / {interface}" for interface in FUSION_INTERFACES
    }
    # the table shows the member names; the full name is one note, the CSV has it in upstream_full
    markdown = reporting.render(table)
    table_lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert all(TINY_PAIR not in line for line in table_lines)
    assert sum(line.startswith("| pretrained+random ") for line in table_lines) == 3
    assert f"- pretrained+random: fused upstream {TINY_PAIR}" in markdown.splitlines()
    rows = list(csv.DictReader(io.StringIO(reporting.render(table, "csv"))))
    assert {(row["upstream"], row["upstream_full"]) for row in rows} == {("pretrained+random", TINY_PAIR)}


def test_a_long_shared_upstream_name_widens_the_comparison_to_its_legend_title(tmp_path):
    upstream = "some-organisation/a-rather-long-model-name-of-a-fine-tuned-checkpoint (hf)"
    for interface in ("weighted_sum", "hconv"):
        write_finished_run(
            tmp_path / "sweep" / interface,
            task="ks",
            metric="acc",
            higher_is_better=True,
            interface=interface,
            upstream=upstream,
            trainable_params={"interface": 13, "head": 2000},
            test={"acc": 90.0},
            overrides=(f"interface={interface}",),
        )
    figure = reporting.plot_comparison(reporting.aggregate(reporting.collect_runs([tmp_path / "sweep"])))
    assert figure.legends[0].get_title().get_text() == f"upstream: {upstream}"
    assert_text_fits(figure)


def test_fusion_layer_weights_are_grouped_and_labelled_per_member(tmp_path):
    collection = reporting.collect_runs([write_tiny_pair_sweep(tmp_path / "sweep", seeds=1)])
    (run,) = [run for run in collection.runs if run.results.layer_weights]
    figure = reporting.plot_layer_weights(run)
    assert_text_fits(figure)
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == [str(layer) for layer in range(7)] * 2
    assert [t.get_text() for t in axes.get_xticklabels(minor=True)] == ["pretrained", "random"]
    # each member's block holds its own L weights, in order, left of the next member's
    bars = sorted((bar.get_x(), bar.get_height(), bar.get_gid()) for bar in axes.patches)
    assert [gid for _, _, gid in bars] == ["member 0"] * 7 + ["member 1"] * 7
    assert np.allclose([height for _, height, _ in bars], run.results.layer_weights)
    # the title is the run's short label, task, seed and score on one line: no folder name, no overrides
    title = axes.title.get_text()
    assert title == "pretrained+random / ws_fusion / ks, seed 0 (test accuracy 50.00 %)", title


def test_the_layer_weights_of_two_fused_large_models_stay_apart(tmp_path):
    collection = reporting.collect_runs([write_tiny_pair_sweep(tmp_path / "sweep", layers=(13, 25), seeds=1)])
    (run,) = [run for run in collection.runs if run.results.layer_weights]
    assert_text_fits(reporting.plot_layer_weights(run), tolerance=-2.0)  # 2 px apart at least


def test_members_interpolated_to_the_common_layer_count_are_labelled_so(tmp_path):
    # a 4-state member fused with a 7-state one: its 7 aligned layers are interpolated, not states 0-6
    collection = reporting.collect_runs([write_tiny_pair_sweep(tmp_path / "sweep", layers=(4, 7), seeds=1)])
    (run,) = [run for run in collection.runs if run.results.layer_weights]
    figure = reporting.plot_layer_weights(run)
    assert_text_fits(figure)
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == [str(layer) for layer in range(7)] * 2
    members = [t.get_text() for t in axes.get_xticklabels(minor=True)]
    assert members == ["pretrained\n(4 states to 7)", "random"]


def test_long_nested_keys_are_shortened_to_an_unambiguous_ending():
    shown = short_keys(
        [
            "interface.num_groups",
            "trainer.lr",
            "task.head.hidden_dims",
            "upstream.members.a.whisper_window",
            "upstream.members.b.whisper_window",
        ]
    )
    assert shown == {
        "interface.num_groups": "num_groups",
        "trainer.lr": "trainer.lr",
        "task.head.hidden_dims": "head.hidden_dims",
        "upstream.members.a.whisper_window": "a.whisper_window",
        "upstream.members.b.whisper_window": "b.whisper_window",
    }


@pytest.mark.slow
def test_a_real_fusion_sweep_gets_short_labels_and_a_figure_that_fits(tmp_path):
    """A fusion sweep on the mini corpus (a tiny Whisper + the tiny upstream, two fusion interfaces) and a
    single-model sweep into the same directory, through run_downstream.py and make_table --plots."""
    whisper = save_tiny_family(tmp_path / "whisper", "whisper")
    sweep = tmp_path / "sweep"
    steps = [o for o in TWO_STEP_RUN if o not in TINY_UPSTREAM]
    common = ["-m", "task=ic", *steps, f"hydra.sweep.dir={sweep}"]
    run_downstream_cli(
        [
            *common,
            "upstream=fusion",
            "+upstream@upstream.members.whisper=hf",
            f"upstream.members.whisper.model={whisper}",
            "upstream.members.whisper.whisper_window=trim",
            "+upstream@upstream.members.tiny=tiny",
            "upstream.members.tiny.num_transformer_layers=2",
            "upstream.members.tiny.hidden_size=32",
            "interface=ws_fusion,chconv",
        ]
    )
    run_downstream_cli([*common, *TINY_UPSTREAM, "interface=weighted_sum"])
    collection = reporting.collect_runs([sweep])
    table = reporting.aggregate(collection)
    assert len(table.rows) == 3
    for row, label in zip(table.rows, row_labels(table.rows), strict=True):
        assert label.replace("\n", " ") == row.short_label and len(label) <= 2 * LABEL_WIDTH, label
        assert "upstream" not in label and "=" not in label, label
        assert label.startswith("whisper+tiny /") == ("+" in row.upstream), label
    assert_text_fits(reporting.plot_comparison(table))
    assert_text_fits(reporting.plot_trainable_params(reporting.parameter_summary(collection)))
    plots = tmp_path / "plots"
    assert make_table_main([str(sweep), "--plots", str(plots)]) == 0
    assert (plots / "comparison.png").stat().st_size > 0


def test_a_long_run_name_gives_a_file_name_cut_between_settings():
    from downstream.reporting.plots import safe_file_stem

    settings = [f"trainer.setting_{index}={index * 1111}" for index in range(20)]
    name = "sweep/" + ",".join(settings) + "-0123abcd"
    stem = safe_file_stem(name)
    assert len(stem) <= 150 and stem.startswith("sweep__")
    kept, marker = stem.rsplit("-", 1)[0].rsplit(",", 1)
    assert marker == "..." and all(piece in settings for piece in kept.removeprefix("sweep__").split(","))
    assert safe_file_stem(name) == stem and safe_file_stem(name + "x") != stem  # deterministic, hashed
