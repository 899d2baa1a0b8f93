"""Sweeps and tables: the experiment and launcher configs compose job by job, and downstream.reporting
(scripts/reporting.py) turns run directories into the right cells (checked against numpy on results.json
files built here) and figures."""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import re
import shlex
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from matplotlib.image import imread
from omegaconf import OmegaConf

from downstream import reporting
from downstream.results import ResultsFileError, load_run, record_failure, scan_runs
from downstream.training.identity import job_dirname
from downstream.training.runner import run_experiment
from scripts.make_table import main as make_table_main
from tests.helpers import (
    CONFIG_DIR,
    ESPNET_MONOLINGUAL_SETS,
    MINI_SUPERB,
    TWO_STEP_RUN,
    compose_config,
    run_downstream_cli,
    write_finished_run,
)

EXPERIMENT_DIR = CONFIG_DIR / "experiment"
PAPER_EXPERIMENTS = ("table1", "table2", "table3", "table4", "superb")
# Layer count L (transformer input + layers) and width D of each upstream the experiments name (DESIGN.md 1).
UPSTREAM_SIZES = {
    "hubert": (13, 768),
    "wavlm_base": (13, 768),
    "wavlm_base_plus": (13, 768),
    "wav2vec2": (13, 768),
    "hubert_large_ll60k": (25, 1024),
    "wavlm_large": (25, 1024),
    "xlsr_53": (25, 1024),
}
CORPUS_FOLDERS = {
    "pr": "LibriSpeech",
    "asr": "LibriSpeech",
    "sid": "VoxCeleb1",
    "er": "IEMOCAP",
    "sv": "VoxCeleb1",
    "ic": "FluentSpeechCommands",
    "ml_mono": "ML-SUPERB",
    "ml_multi": "ML-SUPERB",
    "ks": "SpeechCommands/speech_commands_v0.01",
    "sf": "SNIPS",
    "sd": "Diarization",
    "qbe": "quesst14Database",
}
ML_MONO_LANGUAGES = set(ESPNET_MONOLINGUAL_SETS)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- experiment configs


def documented_launches(name: str) -> list[list[str]]:
    """The command-line overrides of every `python run_downstream.py -m ...` line in the file's header."""
    launches = []
    for line in (EXPERIMENT_DIR / f"{name}.yaml").read_text().splitlines():
        match = re.match(r"#\s+python run_downstream\.py -m (.*?)(?:\s+#.*)?$", line)
        if match:
            launches.append(shlex.split(match.group(1)))
    return launches


def sweep_jobs(arguments: list[str]) -> list[list[str]]:
    """Every job's overrides as Hydra's basic sweeper expands sweep params + command line: one entry per
    key (a later value replaces an earlier one in its place), the cartesian product of the swept values."""
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(arguments) if not o.is_sweep_override()]
    sweep_params = compose_config(fixed).hydra.sweeper.params or {}
    params = [f"{key}={value}" for key, value in sweep_params.items()]
    choices: dict[str, list[str]] = {}
    for override in parser.parse_overrides(params + arguments):
        key = override.get_key_element()
        if override.is_sweep_override():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def covering_jobs(jobs: list[list[str]]) -> list[list[str]]:
    """A few jobs that together hold every swept value at least once (composing all would be slow)."""
    seen: set[str] = set()
    chosen = []
    for job in jobs:
        if not seen.issuperset(job):
            chosen.append(job)
            seen.update(job)
    return chosen


def job_value(job: list[str], key: str) -> str | None:
    values = [value for k, value in map(reporting.parse_override, job) if k == key]
    return values[-1] if values else None


def swept_monolingual_sets(cfg, name: str) -> list[list[str]]:
    """The ML-SUPERB set lists (``task.language``) of an experiment: its sweeper's and each documented
    launch's."""
    values = [(cfg.hydra.sweeper.params or {}).get("task.language")]
    values += [job_value(launch, "task.language") for launch in documented_launches(name)]
    return [str(value).split(",") for value in values if value is not None]


@pytest.mark.parametrize("name", sorted(path.stem for path in EXPERIMENT_DIR.glob("*.yaml")))
def test_every_experiment_file_composes(name):
    """Each experiment composes, reads the mini corpus by default, and every ML-SUPERB monolingual set it
    sweeps (sweeper or documented launch) is ESPnet's list, all 13 (the published number averages them)."""
    cfg = compose_config([f"experiment={name}"])
    assert cfg.hydra.runtime.choices.experiment == name
    assert Path(cfg.task.data_root).is_relative_to(MINI_SUPERB)  # by default, the shipped mini corpus
    for sets in swept_monolingual_sets(cfg, name):
        assert sorted(sets) == sorted(ESPNET_MONOLINGUAL_SETS), f"{name}.yaml sweeps task.language={sets}"


def test_every_paper_experiment_exists_and_documents_its_command():
    for name in PAPER_EXPERIMENTS:
        text = (EXPERIMENT_DIR / f"{name}.yaml").read_text()
        assert text.splitlines()[0] == "# @package _global_", name
        launches = documented_launches(name)
        assert launches, f"{name}.yaml documents no `python run_downstream.py -m` command"
        assert all(launch[0] == f"experiment={name}" for launch in launches), launches


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_documented_launches_compose_job_by_job(name):
    """Each documented launch expands into jobs that all compose, land in the experiment's fixed sweep
    directory, read the corpus of their task, and map to distinct job directories."""
    all_jobs = []
    for launch in documented_launches(name):
        jobs = sweep_jobs(launch)
        all_jobs.extend(jobs)
        for job in covering_jobs(jobs):
            cfg = compose_config(job)
            assert cfg.hydra.sweep.dir == f"multirun/{name}"
            choices = cfg.hydra.runtime.choices
            assert choices.experiment == name
            for key, value in map(reporting.parse_override, job):
                if key in ("interface", "task", "upstream"):
                    assert choices[key] == value
                elif key != "experiment":
                    assert str(OmegaConf.select(cfg, key)) == value, key
            task = choices.task
            corpora = job_value(job, "paths.corpora")
            assert cfg.task.data_root == f"{corpora}/{CORPUS_FOLDERS[task]}"
            if task == "er":
                assert cfg.task.fold in range(1, 6)
    # a job's folder is job_dirname(its overrides, its settings' hash); the readable part alone already
    # tells the jobs apart, and holds no path separator
    job_dirs = {job_dirname(job, "0" * 8) for job in all_jobs}
    assert len(job_dirs) == len(all_jobs), "two jobs of one experiment would share a directory"
    assert not any("/" in name for name in job_dirs)


@functools.cache
def hconv_parameters(num_layers: int, hidden_size: int) -> int:
    """Trainable parameters of the project's HConv interface config, built as the runner builds it."""
    hconv = instantiate(
        compose_config(["interface=hconv"]).interface, num_layers=num_layers, hidden_size=hidden_size
    )
    return sum(p.numel() for p in hconv.parameters() if p.requires_grad)


def launched(name: str) -> list[list[str]]:
    return [job for launch in documented_launches(name) for job in sweep_jobs(launch)]


def test_table1_runs_the_eight_interfaces_of_the_paper_on_hubert_base():
    jobs = launched("table1")
    variants = {(job_value(job, "interface"), job_value(job, "interface.num_groups")) for job in jobs}
    assert variants == {
        ("weighted_sum", None),
        ("group_ws", "2"),
        ("group_ws", "3"),
        ("group_ws", "4"),
        ("concat_proj", None),
        ("pca_concat", None),
        ("hconv", None),
        ("cls_pooling", None),
    }
    assert {job_value(job, "upstream.name") for job in jobs} == {"hubert"}
    scored = {
        (job_value(job, "task"), job_value(job, "task.language"), job_value(job, "task.duration"))
        for job in jobs
    }
    assert scored == {
        ("ml_mono", language, duration) for language in ML_MONO_LANGUAGES for duration in ("10min", "1h")
    }


def test_table2_crosses_five_upstreams_three_interfaces_and_tasks_with_er_folds():
    jobs = launched("table2")
    cells = defaultdict(set)
    for job in jobs:
        replicate = job_value(job, "task.fold") or job_value(job, "task.language")
        cells[(job_value(job, "upstream.name"), job_value(job, "interface"), job_value(job, "task"))].add(
            replicate
        )
    upstreams = {"hubert", "hubert_large_ll60k", "wavlm_base", "wavlm_large", "xlsr_53"}
    expected = {
        (upstream, interface, task)
        for upstream in upstreams
        for interface in ("weighted_sum", "hconv", "cls_pooling")
        for task in ("pr", "sid", "er", "ic", "sv", "ml_multi", "ml_mono")
    }
    assert set(cells) == expected
    replicates = {"er": {"1", "2", "3", "4", "5"}, "ml_mono": ML_MONO_LANGUAGES}
    for (_, _, task), found in cells.items():
        assert found == replicates.get(task, {None})


@pytest.mark.parametrize("upstream_name", sorted(UPSTREAM_SIZES))
def test_table3_widens_the_head_by_hconvs_parameter_count(upstream_name):
    cfg = compose_config(["experiment=table3", f"upstream.name={upstream_name}"])
    num_layers, hidden_size = UPSTREAM_SIZES[upstream_name]
    assert cfg.task.head.extra_params == hconv_parameters(num_layers, hidden_size)
    assert cfg.hydra.runtime.choices.interface == "weighted_sum"


def test_table4_fine_tunes_hubert_base_with_the_three_paper_rows():
    cfg = compose_config(["experiment=table4"])
    assert cfg.upstream.trainable is True and cfg.upstream.lr > 0
    rows = {
        (job_value(job, "interface"), job_value(job, "task.head.extra_params")) for job in launched("table4")
    }
    hconv_base = hconv_parameters(13, 768)
    assert rows == {("weighted_sum", None), ("hconv", None), ("weighted_sum", str(hconv_base))}
    languages = {job_value(job, "task.language") for job in launched("table4")}
    assert languages == ML_MONO_LANGUAGES
    assert {(job_value(job, "task"), job_value(job, "task.duration")) for job in launched("table4")} == {
        ("ml_mono", "1h")
    }


def test_superb_covers_its_tasks_and_every_er_fold():
    jobs = launched("superb")
    tasks = defaultdict(set)
    for job in jobs:
        tasks[job_value(job, "task")].add(job_value(job, "task.fold"))
    single_runs = ("pr", "asr", "sid", "ks", "ic", "sf", "sv", "sd", "qbe")
    assert tasks == {**{task: {None} for task in single_runs}, "er": {"1", "2", "3", "4", "5"}}
    assert compose_config(["experiment=superb"]).hydra.runtime.choices.interface == "weighted_sum"
    # QbE trains nothing: its config picks a non-trainable interface and SUPERB's layer selection
    qbe = compose_config(["experiment=superb", "task=qbe"])
    assert qbe.hydra.runtime.choices.interface == "single_layer" and qbe.task.select_layer


def test_command_line_value_replaces_a_swept_key():
    jobs = sweep_jobs(["experiment=table2", "upstream.name=wavlm_base", "interface=hconv", "task=pr"])
    assert jobs == [["upstream.name=wavlm_base", "interface=hconv", "task=pr", "experiment=table2"]]


def test_corpora_default_is_the_mini_corpus():
    cfg = compose_config(["experiment=corpora", "task=sid"])
    assert Path(cfg.task.data_root) == MINI_SUPERB / "VoxCeleb1"


@pytest.mark.parametrize("launcher", ["slurm", "submitit_slurm", "parallel", "joblib"])
def test_launcher_configs_compose(launcher):
    cfg = compose_config(["experiment=table2", f"hydra/launcher={launcher}"])
    target = cfg.hydra.launcher._target_
    if launcher == "slurm":  # the plugin's launcher, extended (tests/test_slurm.py runs it on SLURM)
        assert target == "hydra_plugins.shared_upstream_launcher.slurm.SlurmLauncher"
    elif "slurm" in launcher:
        assert target == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    else:
        assert target == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def test_slurm_config_extends_the_plugin_with_documented_resources():
    plugin = compose_config(["hydra/launcher=submitit_slurm"]).hydra.launcher
    ours = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]).hydra.launcher
    assert set(ours) == set(plugin)  # every plugin field is still there (extended, not shadowed)
    assert ours.partition == "gpu" and ours.gpus_per_node == 1
    assert ours.cpus_per_task > 0 and ours.mem_gb > 0 and ours.timeout_min > 0
    assert plugin.gpus_per_node is None  # the plugin's own config is untouched
    assert compose_config(["hydra/launcher=parallel"]).hydra.launcher.n_jobs == 2


# ---------------------------------------------------------------- make_table on run directories built here

METRICS = {"pr": ("per", False), "asr": ("wer", False), "sid": ("acc", True), "er": ("acc", True)}


def write_run(
    sweep_dir: Path,
    name: str,
    *,
    task: str,
    interface: str,
    test: float,
    upstream: str = "hubert (s3prl)",
    seed: int = 0,
    fold: int | None = None,
    overrides: tuple[str, ...] = (),
    layer_weights=None,
    params: dict[str, int] | None = None,
    schedule: str = "superb",
    config: str | None = None,
) -> Path:
    """A finished job directory: .hydra/ (with config.yaml if given) and results.json."""
    metric, higher = METRICS[task]
    write_finished_run(
        sweep_dir / name,
        config_yaml=config,
        task=task,
        metric=metric,
        higher_is_better=higher,
        interface=interface,
        upstream=upstream,
        upstream_config="s3prl",
        num_layers=13,
        hidden_size=768,
        seed=seed,
        fold=fold,
        schedule=schedule,
        trainable_params=params or {"interface": 13, "head": 1000, "upstream": 0},
        best_step=10,
        dev={metric: test + 1.0},
        test={metric: test},
        layer_weights=layer_weights,
        overrides=(f"task={task}", f"interface={interface}", f"seed={seed}", *overrides),
    )
    return sweep_dir / name


@pytest.fixture
def sweep(tmp_path):
    """Two sweep directories with known values; returns (roots, expected test values per cell)."""
    first, second = tmp_path / "multirun" / "a", tmp_path / "multirun" / "b"
    values = {
        ("weighted_sum", "pr"): [5.5, 5.9, 6.4],
        ("hconv", "pr"): [3.1, 3.4],
        ("weighted_sum", "sid"): [80.0, 83.0],
        ("hconv", "er"): [66.0, 70.0, 64.0, 69.0, 71.0],
        ("weighted_sum", "er"): [60.0, 62.0],
    }
    for (interface, task), scores in values.items():
        for index, score in enumerate(scores):
            fold = index + 1 if task == "er" else None
            seed = 0 if task == "er" else index
            root = first if interface == "weighted_sum" else second
            name = f"interface={interface},seed={seed},task={task}" + (f",task.fold={fold}" if fold else "")
            write_run(
                root,
                name,
                task=task,
                interface=interface,
                test=score,
                seed=seed,
                fold=fold,
                overrides=(f"task.fold={fold}",) if fold else (),
                layer_weights=list(np.linspace(0.0, 1.0, 13)) if interface == "weighted_sum" else None,
                params={
                    "interface": 13 if interface == "weighted_sum" else 4424832,
                    "head": 2000,
                    "upstream": 0,
                },
            )
    (second / "interface=cls_pooling,task=pr" / ".hydra").mkdir(parents=True)  # started, never finished
    return [first, second], values


def by_labels(table, upstream: str, interface: str, task: str):
    (row,) = [row for row in table.rows if row.upstream == upstream and row.interface == interface]
    return table.cells[(row, task)]


def test_cells_are_mean_and_sample_std_of_their_runs(sweep):
    roots, values = sweep
    table = reporting.aggregate(reporting.collect_runs(roots))
    for (interface, task), scores in values.items():
        cell = by_labels(table, "hubert (s3prl)", interface, task)
        assert cell.n == len(scores)
        assert cell.mean == pytest.approx(np.mean(scores))
        assert cell.std == pytest.approx(np.std(scores, ddof=1))
    dev = reporting.aggregate(reporting.collect_runs(roots), split="dev")
    assert by_labels(dev, "hubert (s3prl)", "hconv", "pr").mean == pytest.approx(
        np.mean(values[("hconv", "pr")]) + 1
    )


def test_best_mark_follows_the_metric_direction(sweep):
    roots, _ = sweep
    table = reporting.aggregate(reporting.collect_runs(roots))
    assert by_labels(table, "hubert (s3prl)", "hconv", "pr").best  # PER: lower is better
    assert not by_labels(table, "hubert (s3prl)", "weighted_sum", "pr").best
    assert by_labels(table, "hubert (s3prl)", "hconv", "er").best  # accuracy: higher is better
    assert not by_labels(table, "hubert (s3prl)", "weighted_sum", "er").best
    assert by_labels(table, "hubert (s3prl)", "weighted_sum", "sid").best  # alone in its column
    assert [c.task for c in table.columns] == ["pr", "sid", "er"]


def test_incomplete_runs_are_listed_not_averaged(sweep):
    roots, _ = sweep
    collection = reporting.collect_runs(roots)
    assert collection.incomplete == [(roots[1] / "interface=cls_pooling,task=pr").resolve()]
    table = reporting.aggregate(collection)
    assert all(row.interface_name != "cls_pooling" for row in table.rows)
    markdown = reporting.render(table, "markdown")
    assert "Runs not in the table (1" in markdown
    assert "interface=cls_pooling,task=pr: incomplete" in markdown.split("not in the table")[1]
    assert "interface=cls_pooling,task=pr: incomplete" in reporting.render(table, "latex")


def test_a_launch_that_failed_is_reported_with_its_error(sweep):
    roots, _ = sweep
    failed = roots[1] / "interface=hconv,task=pr,task.data_root=nowhere"
    (failed / ".hydra").mkdir(parents=True)
    (failed / "curve.jsonl").write_text(
        ""
    )  # something kept: the launch leaves the folder, log ending in the error
    (failed / "run_downstream.log").write_text("[...][INFO] - CPU threads: 1\n")
    record_failure(
        failed,
        "error: DataLayoutError: LibriSpeech root 'nowhere' does not exist\n(hint)",
        "run_downstream.log",
    )
    markdown = reporting.render(reporting.aggregate(reporting.collect_runs(roots)), "markdown")
    assert (
        f"{failed.resolve()}: failed: error: DataLayoutError: LibriSpeech root 'nowhere' does not exist | (hint)"
        in markdown
    )
    assert "interface=cls_pooling,task=pr: incomplete" in markdown  # no FAILED line: still incomplete


def markdown_table(text: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in ``text`` as {header: cell text}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    header, rule, *rows = split
    assert all(set(cell) <= set(":-") for cell in rule), rule
    return [dict(zip(header, row, strict=True)) for row in rows]


def test_markdown_marks_best_shows_published_numbers_and_partial_folds(sweep):
    roots, values = sweep
    markdown = reporting.render(reporting.aggregate(reporting.collect_runs(roots)), "markdown")
    rows = markdown_table(markdown)
    assert list(rows[0]) == [
        "upstream",
        "interface",
        "PR PER ↓",
        "PR published",
        "SID acc ↑",
        "SID published",
        "ER acc ↑",
        "ER published",
    ]
    # rows go from the fewest trainable interface parameters (weighted_sum: 13) to the most (hconv)
    assert [row["interface"] for row in rows] == ["weighted_sum", "hconv"]
    weighted, hconv = rows
    pr = values[("hconv", "pr")]
    assert hconv["PR PER ↓"] == f"**{np.mean(pr):.2f} ± {np.std(pr, ddof=1):.2f}** (n=2)"
    # HuBERT Base HConv in the paper's Table 2: PR PER, ER acc; it has no SID number and no SID run
    assert (hconv["PR published"], hconv["ER published"]) == ("3.07 (paper T2)", "68.49 (paper T2)")
    assert hconv["SID acc ↑"] == "–" and hconv["SID published"] == "–"
    assert (weighted["PR published"], weighted["SID published"]) == ("5.41 (paper T2)", "81.42 (SUPERB)")
    er = values[("weighted_sum", "er")]
    assert weighted["ER acc ↑"] == f"{np.mean(er):.2f} ± {np.std(er, ddof=1):.2f} (n=2, folds 1,2 of 5)"
    assert hconv["ER acc ↑"].endswith("** (n=5)")  # all five folds: nothing to flag, and the best
    assert "- published: paper T2 = Shih & Harwath, arXiv 2406.12209, Table 2; SUPERB = " in markdown


def test_a_dev_table_says_the_published_numbers_beside_it_are_test_scores(sweep):
    roots, _ = sweep
    table = reporting.aggregate(reporting.collect_runs(roots), split="dev")
    markdown = reporting.render(table, "markdown")
    assert [key for key in markdown_table(markdown)[0] if "published" in key] == [
        "PR published (test)",
        "SID published (test)",
        "ER published (test)",
    ]
    assert "- published numbers are test-set scores, beside this table's dev scores." in markdown
    assert "PR publ. (test)" in reporting.render(table, "latex")
    figure = reporting.plot_comparison(table)
    assert "published (test)" in [text.get_text() for text in figure.legends[0].get_texts()]


def test_a_random_weight_model_is_not_compared_with_the_published_model(tmp_path):
    # torchaudio's upstream.pretrained=false: HuBERT Base's architecture with random weights
    write_run(
        tmp_path,
        "random",
        task="pr",
        interface="hconv",
        test=90.0,
        upstream="HUBERT_BASE (torchaudio, random init)",
    )
    write_run(
        tmp_path, "pretrained", task="pr", interface="hconv", test=3.5, upstream="HUBERT_BASE (torchaudio)"
    )
    table = reporting.aggregate(reporting.collect_runs([tmp_path]))
    references = {row.upstream: table.cells[(row, "pr")].reference for row in table.rows}
    assert references["HUBERT_BASE (torchaudio, random init)"] is None
    assert references["HUBERT_BASE (torchaudio)"].value == 3.07  # the paper's Table 2, HuBERT Base HConv PR
    footer = reporting.render(table, "markdown").split("\n\n")[1]
    assert "- published: paper T2 = Shih & Harwath, arXiv 2406.12209, Table 2." in footer
    assert "SUPERB = " not in footer  # no number of the SUPERB paper is shown: its citation is not listed


def test_csv_is_one_parseable_line_per_cell(sweep):
    roots, values = sweep
    table = reporting.aggregate(reporting.collect_runs(roots))
    rows = list(csv.DictReader(io.StringIO(reporting.render(table, "csv"))))
    assert len(rows) == len(values)
    for row in rows:
        scores = values[(row["interface"], row["task"])]
        assert float(row["mean"]) == pytest.approx(np.mean(scores))
        assert float(row["std"]) == pytest.approx(np.std(scores, ddof=1))
        assert int(row["n"]) == len(scores)
        assert row["direction"] == ("higher" if METRICS[row["task"]][1] else "lower")
    best = {(row["interface"], row["task"]) for row in rows if row["best"] == "true"}
    assert best == {("hconv", "pr"), ("weighted_sum", "sid"), ("hconv", "er")}
    published = {(row["interface"], row["task"]): row["published"] for row in rows}
    assert float(published[("weighted_sum", "pr")]) == 5.41


def test_latex_escapes_names_and_bolds_the_best(sweep):
    roots, values = sweep
    latex = reporting.render(reporting.aggregate(reporting.collect_runs(roots)), "latex")
    assert r"\begin{tabular}{ll" in latex and r"\end{tabular}" in latex
    assert r"weighted\_sum" in latex and "weighted_sum" not in latex.split(r"\end{tabular}")[0]
    assert rf"\textbf{{{np.mean(values[('hconv', 'pr')]):.2f}}}" in latex
    assert r"PR PER $\downarrow$" in latex and r"ER acc $\uparrow$" in latex
    with pytest.raises(ValueError, match="format must be one of"):
        reporting.render(reporting.aggregate(reporting.collect_runs(roots)), "html")


def test_rows_are_told_apart_by_what_differs(tmp_path):
    root = tmp_path / "sweep"
    for groups, score in ((2, 5.0), (3, 4.0)):
        write_run(
            root,
            f"g{groups}",
            task="pr",
            interface="group_ws",
            test=score,
            overrides=(f"interface.num_groups={groups}", "trainer.max_steps=9"),
        )
    # the head widened through an interpolation in the job's saved config (as experiment=table3 does)
    config = "hconv_interface_params:\n  hubert: 4424832\nupstream:\n  name: hubert\ntask:\n  head:\n    extra_params: ${hconv_interface_params.${upstream.name}}\n"
    write_run(
        root,
        "wide",
        task="pr",
        interface="weighted_sum",
        test=5.3,
        overrides=("trainer.max_steps=9",),
        config=config,
    )
    write_run(
        root,
        "tuned",
        task="pr",
        interface="weighted_sum",
        test=4.2,
        overrides=("trainer.max_steps=9",),
        params={"interface": 13, "head": 1000, "upstream": 94_000_000},
    )
    collection = reporting.collect_runs([root])
    labels = {(run.name, run.row.upstream, run.row.interface, run.row.comparable) for run in collection.runs}
    assert labels == {
        ("sweep/g2", "hubert (s3prl)", "group_ws (num_groups=2)", False),
        ("sweep/g3", "hubert (s3prl)", "group_ws (num_groups=3)", False),
        # the paper's Table 3 and Table 4 conditions: compared with their own published numbers (none for PR)
        ("sweep/wide", "hubert (s3prl)", "weighted_sum + larger head (+4,424,832)", True),
        ("sweep/tuned", "hubert (s3prl), fine-tuned", "weighted_sum", True),
    }
    assert "all runs: trainer.max_steps=9" in collection.notes  # shared by every run: a note, not a label
    table = reporting.aggregate(collection)
    assert all(cell.reference is None for cell in table.cells.values())  # none is the published setting


def test_demo_schedule_rows_get_no_published_number_and_mixed_schedules_label_rows(tmp_path):
    write_run(tmp_path / "s", "demo", task="pr", interface="weighted_sum", test=50.0, schedule="demo")
    write_run(tmp_path / "s", "full", task="pr", interface="weighted_sum", test=5.0)
    table = reporting.aggregate(reporting.collect_runs([tmp_path / "s"]))
    references = {row.interface: table.cells[(row, "pr")].reference for row in table.rows}
    assert references == {
        "weighted_sum (schedule=demo)": None,
        "weighted_sum (schedule=superb)": reporting.Reference(5.41, "paper T2"),
    }


def test_conflicting_metrics_and_bad_results_files_are_named(tmp_path):
    run = write_run(tmp_path / "s", "one", task="pr", interface="hconv", test=3.0)
    other = write_run(tmp_path / "s", "two", task="pr", interface="hconv", test=3.0)
    payload = json.loads((other / "results.json").read_text())
    payload |= {"metric": "cer", "test": {"cer": 2.0}}
    (other / "results.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="task 'pr' is scored as per .* but as cer"):
        reporting.aggregate(reporting.collect_runs([tmp_path / "s"]))
    payload.pop("higher_is_better")
    (run / "results.json").write_text(json.dumps(payload))
    with pytest.raises(ResultsFileError, match=r"one/results.json: missing keys \['higher_is_better'\]"):
        load_run(run)
    (run / "results.json").write_text("{not json")
    with pytest.raises(ResultsFileError, match="one/results.json: not valid JSON"):
        scan_runs([tmp_path / "s"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_runs([tmp_path / "nowhere"])


def test_paper_model_names_map_to_published_rows():
    assert reporting.paper_model("hubert (s3prl)") == "HuBERT Base"
    assert reporting.paper_model("hubert_large_ll60k (s3prl)") == "HuBERT Large"
    assert reporting.paper_model("microsoft/wavlm-large (hf)") == "WavLM Large"
    assert reporting.paper_model("WAV2VEC2_XLSR53 (torchaudio)") == "XLSR-53"
    assert reporting.paper_model("tiny (random)") is None
    assert reporting.published_reference("XLSR-53", "cls_pooling", "pr") == reporting.Reference(
        5.27, "paper T2"
    )
    assert reporting.published_reference("FBANK", "weighted_sum", "asr") == reporting.Reference(
        23.18, "SUPERB"
    )
    assert reporting.published_reference("WavLM Base", "weighted_sum", "asr") is None


def assert_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    return image


def add_group_ws_run(root: Path) -> None:
    grouped = np.full((2, 13), 0.0)
    grouped[0, :7], grouped[1, 7:] = 1 / 7, 1 / 6
    write_run(
        root,
        "interface=group_ws,task=pr",
        task="pr",
        interface="group_ws",
        test=4.0,
        layer_weights=grouped.tolist(),
        params={"interface": 1_180_416, "head": 2000, "upstream": 0},
    )


def test_layer_weight_bars_stand_at_the_hidden_states_the_upstream_kept(tmp_path):
    # upstream.layers='1::2' on a 7-state model keeps states 1, 3 and 5: the three weights are theirs, not 0, 1, 2
    write_finished_run(
        tmp_path / "sweep" / "run",
        task="pr",
        metric="per",
        higher_is_better=False,
        interface="weighted_sum",
        upstream="tiny",
        trainable_params={"interface": 3, "head": 1000, "upstream": 0},
        test={"per": 50.0},
        num_layers=3,
        layer_ids=[1, 3, 5],
        layer_weights=[0.2, 0.3, 0.5],
    )
    (run,) = reporting.collect_runs([tmp_path / "sweep"]).runs
    axes = reporting.plot_layer_weights(run).axes[0]
    bars = {round(bar.get_x() + bar.get_width() / 2, 6): bar.get_height() for bar in axes.patches}
    assert bars == {1.0: 0.2, 3.0: 0.3, 5.0: 0.5}
    assert list(axes.get_xticks()) == [1, 3, 5]


def test_layer_weight_title_of_a_long_sweep_job_name_stays_inside_the_figure(tmp_path):
    # 224 characters, as sweep job folders often are (a figure line holds about 100)
    name = ",".join(f"trainer.option_{i}=value_{i}" for i in range(9))
    write_run(
        tmp_path / "sweep", name, task="pr", interface="weighted_sum", test=5.0, layer_weights=[0.5, 0.5]
    )
    (run,) = reporting.collect_runs([tmp_path / "sweep"]).runs
    figure = reporting.plot_layer_weights(run)
    figure.canvas.draw()
    title = figure.axes[0].title
    extent, page = title.get_window_extent(), figure.bbox
    assert page.x0 <= extent.x0 and extent.x1 <= page.x1 and extent.y1 <= page.y1
    assert "".join(title.get_text().split("\n")[1:]) == run.name.replace(",", ",")  # wrapped, nothing lost


def test_command_line_writes_pngs_per_run_a_comparison_and_a_parameter_summary(tmp_path, capsys):
    root = tmp_path / "sweep"
    weights = list(np.linspace(0.0, 1.0, 13))
    write_run(root, "ws", task="pr", interface="weighted_sum", test=5.0, layer_weights=weights)
    write_run(
        root, "hconv", task="er", interface="hconv", test=66.0, params={"interface": 4424832, "head": 2000}
    )
    add_group_ws_run(root)
    plots = tmp_path / "plots"
    assert make_table_main([str(root), "--plots", str(plots)]) == 0
    written = {Path(line.removeprefix("wrote ")) for line in capsys.readouterr().err.splitlines()}
    weight_plots = {path.name for path in (plots / "layer_weights").iterdir()}
    assert weight_plots == {"sweep__ws.png", "sweep__interface=group_ws,task=pr.png"}  # hconv has none
    names = {"comparison.png", "trainable_params.png", "trainable_params.md"}
    assert written == {plots / name for name in names} | {plots / "layer_weights" / n for n in weight_plots}
    for path in written:
        if path.suffix == ".png":
            assert_png(path)
    summary = markdown_table((plots / "trainable_params.md").read_text())
    counts = {
        (row["interface"], row["task"]): tuple(row[f"{part} params"] for part in ("interface", "head"))
        for row in summary
    }
    assert counts == {
        ("weighted_sum", "pr"): ("13", "1,000"),
        ("group_ws", "pr"): ("1,180,416", "2,000"),
        ("hconv", "er"): ("4,424,832", "2,000"),
    }
    assert {row["upstream params (trainable)"] for row in summary} == {"0"}


def artists(axes, gid: str) -> list:
    return [artist for artist in [*axes.patches, *axes.collections] if artist.get_gid() == gid]


def test_comparison_figure_has_every_run_the_mean_and_the_published_number(sweep):
    roots, values = sweep
    table = reporting.aggregate(reporting.collect_runs(roots))
    figure = reporting.plot_comparison(table)
    assert len(figure.axes) == len(table.columns) == 3  # one panel per task
    for axes, column in zip(figure.axes, table.columns, strict=True):
        rows = [row for row in table.rows if (row, column.task) in table.cells]
        # every row shares the upstream (named in the legend title): labels are the interfaces
        assert [label.get_text() for label in axes.get_yticklabels()] == [row.interface for row in rows]
        means = [bar.get_width() for bar in artists(axes, "mean")]
        expected = [np.mean(values[(row.interface, column.task)]) for row in rows]
        assert means == pytest.approx(expected)
        (runs,) = artists(axes, "runs")  # every seed / fold is a dot of its own
        dots = sorted(runs.get_offsets()[:, 0])
        assert dots == pytest.approx(sorted(v for row in rows for v in values[(row.interface, column.task)]))
        (published,) = artists(axes, "published")
        stars = sorted(published.get_offsets()[:, 0])
        references = [table.cells[(row, column.task)].reference for row in rows]
        assert stars == pytest.approx(sorted(r.value for r in references if r is not None))
    pr_axes = figure.axes[[c.task for c in table.columns].index("pr")]
    assert sorted(artists(pr_axes, "published")[0].get_offsets()[:, 0]) == pytest.approx([3.07, 5.41])


def test_parameter_plot_has_interface_and_head_bars_on_a_log_axis(sweep):
    roots, _ = sweep
    add_group_ws_run(roots[1])
    summary = reporting.parameter_summary(reporting.collect_runs(roots))
    figure = reporting.plot_trainable_params(summary)
    tasks = sorted({entry["task"] for entry in summary})
    assert len(figure.axes) == len(tasks) == 3
    for axes, task in zip(figure.axes, tasks, strict=True):
        assert axes.get_xscale() == "log"
        entries = [entry for entry in summary if entry["task"] == task]
        for part in ("interface", "head"):
            widths = [bar.get_width() for bar in artists(axes, part)]
            assert widths == [entry[f"{part}_params"][1] for entry in entries]
        assert artists(axes, "upstream") == []  # no run fine-tunes its upstream
        low, high = axes.get_xlim()
        for bar in artists(axes, "interface"):  # weighted_sum's 13 weights are a bar one can see
            assert np.log(bar.get_width() / low) / np.log(high / low) > 0.1
    assert 13 in [bar.get_width() for bar in artists(figure.axes[0], "interface")]


def test_command_line_writes_the_table_and_lists_incomplete_runs(tmp_path, sweep, capsys):
    roots, values = sweep
    # a folder that does not exist yet, as --plots allows
    output = tmp_path / "tables" / "table2" / "table.csv"
    status = make_table_main([*map(str, roots), "--format", "csv", "--output", str(output)])
    assert status == 0
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == len(values)
    assert "interface=cls_pooling,task=pr: incomplete" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_table_main([str(tmp_path / "nowhere")])
    assert (
        "nowhere' does not exist or is not a directory" in capsys.readouterr().err
    )  # one line, no traceback


# ---------------------------------------------------------------- a real multirun of run_downstream.py

# ER fold 1 on the mini corpus: the quickest task to set up (PR first reads its pronunciation lexicon).
TINY_SWEEP = ["task=er", "task.fold=1", *TWO_STEP_RUN]


def launch_sweep(sweep_dir: Path, *overrides: str) -> None:
    """run_downstream.py -m as a user types it: Hydra's basic sweeper and launcher, the tiny upstream."""
    run_downstream_cli(["-m", *TINY_SWEEP, f"hydra.sweep.dir={sweep_dir}", *overrides])


@pytest.mark.slow
def test_multirun_table_and_relaunch_skips_finished_jobs(tmp_path):
    sweep_dir = tmp_path / "sweep"
    launch_sweep(sweep_dir, "interface=weighted_sum,last_layer")
    results = {path.parent.name: json.loads(path.read_text()) for path in sweep_dir.glob("*/results.json")}
    assert sorted(r["interface"] for r in results.values()) == ["last_layer", "weighted_sum"]

    table = reporting.aggregate(reporting.collect_runs([sweep_dir]))
    assert [row.interface for row in table.rows] == ["last_layer", "weighted_sum"]  # shared overrides: notes
    for row in table.rows:
        (written,) = [r for r in results.values() if r["interface"] == row.interface]
        cell = table.cells[(row, "er")]
        assert cell.n == 1 and cell.mean == written["test"]["acc"] and cell.folds == (1,)
        assert row.upstream == written["upstream"]
    assert "all runs: trainer.max_steps=2" in table.notes
    plots = reporting.write_plots(reporting.collect_runs([sweep_dir]), tmp_path / "plots")
    assert [p.parent.name for p in plots if "weighted_sum" in p.name] == [
        "layer_weights"
    ]  # last_layer has none

    # Relaunch: a finished job is left alone; one whose results.json is gone (incomplete) runs again.
    finished = next(sweep_dir.glob("interface=weighted_sum,*/results.json"))
    unfinished = next(sweep_dir.glob("interface=last_layer,*/results.json"))
    unfinished.unlink()
    assert reporting.collect_runs([sweep_dir]).incomplete == [unfinished.parent.resolve()]
    finished_mtime = finished.stat().st_mtime_ns
    launch_sweep(sweep_dir, "interface=weighted_sum,last_layer")
    assert finished.stat().st_mtime_ns == finished_mtime
    assert json.loads(unfinished.read_text())["interface"] == "last_layer"

    # overwrite=true maps to the same job directory (it is left out of the name) and reruns the job there;
    # run in this process, as Hydra's launcher runs a job, to spare a third start of the interpreter.
    overrides = [*TINY_SWEEP, "interface=weighted_sum", "overwrite=true"]
    cfg = compose_config(overrides, run_dir=finished.parent)
    assert sweep_dir / cfg.hydra.sweep.subdir == finished.parent
    run_experiment(cfg, finished.parent, overrides=overrides)
    assert finished.stat().st_mtime_ns > finished_mtime


def test_published_numbers_file_is_checked_against_the_interface_configs(tmp_path):
    from downstream.reporting.published import DATA_FILE, load_published

    text = DATA_FILE.read_text()
    # Table 2: 5 models x 3 interfaces x 7 tasks; SUPERB adds FBANK (2 interfaces x 4 tasks), wav2vec 2.0
    # (4 tasks) and HuBERT Base's ASR and SID (its PR and ER are Table 2's, the first source listed), and
    # HuBERT Base's KS, SF F1 and SF CER, SD and QbE; the fusion paper's Table I (secondary) 3 rows x 2 tasks;
    # Table 1 adds HuBERT Base's 10-minute CER of 5 interfaces and the 1-hour CER of the 2 that Table 2 lacks;
    # Table 3 (5 models x 2 tasks) and Table 4 (3 rows) are numbers of other conditions
    published = load_published(DATA_FILE)
    assert len(published.references) == 5 * 3 * 7 + 2 * 4 + 4 + 2 + 3 + 2 + 3 * 2 + 5 + 2
    assert len(published.conditioned) == 5 * 2 + 3
    assert published.references[("HuBERT Base", "weighted_sum", "pr")] == reporting.Reference(
        5.41, "paper T2"
    )
    bad = tmp_path / "published.yaml"
    bad.write_text(text.replace("        hconv: [33.9, 24.0,", "        h_conv: [33.9, 24.0,"))
    with pytest.raises(ValueError, match="names interface 'h_conv', which is not a config"):
        load_published(bad)
    bad.write_text(text.replace("[35.1, 24.4, 84.6, 64.92, 98.34, 5.11, 5.41]", "[35.1, 24.4]"))
    with pytest.raises(ValueError, match="HuBERT Base / weighted_sum has 2 values for 7 columns"):
        load_published(bad)
