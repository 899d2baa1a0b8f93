"""run_downstream.py end to end on the tiny upstream and the shipped mini corpus."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch
from omegaconf import OmegaConf

from downstream.data.corpus import DataLayoutError
from downstream.results import RunResults
from downstream.training.identity import schedule_of
from downstream.training.runner import build_task, resolve_trainer_settings, run_experiment
from tests.helpers import (
    REPO_ROOT,
    TWO_STEP_RUN,
    best_dev_record,
    launch_timeout_s,
    read_curve,
    run_downstream_cli,
)

RESULT_KEYS = {
    "task": str,
    "metric": str,
    "higher_is_better": bool,
    "interface": str,
    "upstream": str,
    "upstream_config": str,
    "num_layers": int,
    "hidden_size": int,
    "seed": int,
    "trainable_params": dict,
    "best_step": int,
    "dev": dict,
    "test": dict,
}


# Settings under which the two dev evaluations of a fast case differ (measured on the tiny upstream): PR's
# PER goes 100.0 -> 92.9 (the second is kept), ER's accuracy 100.0 -> 0.0 (the first is kept), so keeping the
# last, the first or the worse evaluation fails the best-step check below.
DISTINCT_DEV_SCORES = {"pr": ["trainer.lr=0.05"], "er": ["trainer.lr=0.05", "seed=2"]}


@pytest.mark.parametrize(
    ("task", "interface", "distinct"),
    [
        ("pr", "weighted_sum", True),
        ("er", "group_ws", True),
        pytest.param("pr", "pca_concat", False, marks=pytest.mark.slow),
        pytest.param("asr", "hconv", False, marks=pytest.mark.slow),
        pytest.param("sid", "cls_pooling", False, marks=pytest.mark.slow),
        pytest.param("er", "layer_attention", False, marks=pytest.mark.slow),
    ],
)
def test_two_step_run_of_every_task(make_config, tmp_path, task, interface, distinct):
    evaluate_each_step = [o for o in TWO_STEP_RUN if not o.startswith("trainer.eval_every=")]
    overrides = [f"task={task}", f"interface={interface}", *evaluate_each_step, "trainer.eval_every=1"]
    if distinct:
        overrides += DISTINCT_DEV_SCORES[task]
    if task == "asr":
        overrides += ["task.head.hidden_size=32", "task.head.lstm_size=16"]
    if interface == "pca_concat":
        overrides += ["interface.max_fit_frames=2000"]
    cfg = make_config(overrides, run_dir=tmp_path)
    results = run_experiment(cfg, tmp_path, overrides=overrides)

    written = json.loads((tmp_path / "results.json").read_text())
    assert written == results
    assert RunResults.from_dict(written).to_dict() == written  # the one results schema covers the record
    assert RunResults.from_dict(written).extra == {}
    for key, kind in RESULT_KEYS.items():
        assert isinstance(written[key], kind), key
    metric = {"pr": "per", "asr": "wer", "sid": "acc", "er": "acc"}[task]
    assert written["task"] == task and written["interface"] == interface and written["metric"] == metric
    assert written["num_layers"] == 3 and written["hidden_size"] == 32
    for split in ("dev", "test"):
        value = written[split][metric]
        assert math.isfinite(value) and value >= 0.0 and (metric != "acc" or value <= 100.0)
    assert written["trainable_params"]["upstream"] == 0
    assert written["trainable_params"]["head"] > 0
    curve = read_curve(tmp_path)
    assert [r["step"] for r in curve if r["split"] == "train"] == [1, 2]
    assert [r["step"] for r in curve if r["split"] == "dev"] == [1, 2]
    # the kept model is the best of the two dev evaluations, and the final dev score is that model's
    if distinct:  # otherwise a tie would let any choice of step pass
        assert len({r[metric] for r in curve if r["split"] == "dev"}) == 2
    best = best_dev_record(curve, metric, written["higher_is_better"])
    assert written["best_step"] == best["step"]
    assert written["dev"][metric] == pytest.approx(best[metric])


def test_results_record_layer_weights_and_parameter_counts(make_config, tmp_path):
    cfg = make_config(["interface=weighted_sum", *TWO_STEP_RUN], run_dir=tmp_path)
    results = run_experiment(cfg, tmp_path)
    weights = results["layer_weights"]
    assert len(weights) == 3 and sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert results["trainable_params"]["interface"] == 3
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    head_params = sum(v.numel() for v in state["head"].values())
    assert results["trainable_params"]["head"] == head_params


def test_results_record_the_upstreams_layer_subset_and_frame_rate(make_config, tmp_path):
    cfg = make_config(["interface=weighted_sum", "upstream.layers=[0,2]", *TWO_STEP_RUN], run_dir=tmp_path)
    results = run_experiment(cfg, tmp_path)
    # the tiny upstream has 3 hidden states at HuBERT's CNN rate: 16000 / 320 samples per frame
    assert results["num_layers"] == 2 and results["layer_ids"] == [0, 2]
    assert len(results["layer_weights"]) == 2
    assert results["frame_rate"] == 16000 / 320
    logged = [record for record in read_curve(tmp_path) if record["split"] == "layer_weights"]
    assert logged and all({"layer_0", "layer_2"} <= set(record) for record in logged)  # named by hidden state
    assert not any("layer_1" in record for record in logged)


@pytest.mark.slow
def test_resume_after_stop_matches_uninterrupted_run(make_config, tmp_path):
    common = ["trainer.max_steps=6", "trainer.eval_every=3", "trainer.save_every=2", *TWO_STEP_RUN[2:]]
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    straight = run_experiment(make_config(common, run_dir=straight_dir), straight_dir)

    first = run_experiment(
        make_config([*common, "trainer.stop_after_steps=4"], run_dir=resumed_dir), resumed_dir
    )
    assert first is None and not (resumed_dir / "results.json").exists()
    assert torch.load(resumed_dir / "last.pt", weights_only=True)["progress"]["step"] == 4
    resumed = run_experiment(make_config(common, run_dir=resumed_dir), resumed_dir)

    for split in ("dev", "test"):
        assert resumed[split] == straight[split]
    assert resumed["best_step"] == straight["best_step"]
    losses = {
        name: [json.loads(x)["loss"] for x in (d / "curve.jsonl").read_text().splitlines() if '"train"' in x]
        for name, d in (("straight", straight_dir), ("resumed", resumed_dir))
    }
    assert losses["resumed"] == losses["straight"]


@pytest.mark.slow
def test_finished_run_is_skipped_unless_overwrite(make_config, tmp_path):
    cfg = make_config(TWO_STEP_RUN, run_dir=tmp_path)
    run_experiment(cfg, tmp_path)
    stamp = (tmp_path / "results.json").stat().st_mtime_ns
    run_experiment(make_config(TWO_STEP_RUN, run_dir=tmp_path), tmp_path)
    assert (tmp_path / "results.json").stat().st_mtime_ns == stamp
    run_experiment(make_config([*TWO_STEP_RUN, "overwrite=true"], run_dir=tmp_path), tmp_path)
    assert (tmp_path / "results.json").stat().st_mtime_ns != stamp


def test_missing_dataset_root_fails_before_training(make_config, tmp_path):
    missing = tmp_path / "no_such_corpus"
    cfg = make_config([*TWO_STEP_RUN, f"task.data_root={missing}"], run_dir=tmp_path / "run")
    with pytest.raises(DataLayoutError, match=str(missing)):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_schedule_auto_picks_demo_on_the_mini_corpus_and_superb_elsewhere(make_config, tmp_path):
    demo = make_config(["task=sid"])
    assert schedule_of(demo) == "demo"
    assert resolve_trainer_settings(demo).max_steps == demo.task.schedules.demo.max_steps
    real = make_config(["task=sid", f"task.data_root={tmp_path}", "trainer.lr=0.5"])
    settings = resolve_trainer_settings(real)
    assert schedule_of(real) == "superb"
    assert settings.max_steps == 200_000 and settings.batch_size == 8 and settings.grad_accum == 4
    assert settings.lr == 0.5  # an explicit trainer key wins over the schedule


def test_unknown_trainer_key_and_bad_precision_are_errors(make_config):
    cfg = make_config(["+trainer.max_stepz=3"])
    with pytest.raises(ValueError, match="unknown trainer keys \\['max_stepz'\\]"):
        resolve_trainer_settings(cfg)
    cfg = make_config(["trainer.precision=fp8"])
    with pytest.raises(ValueError, match="trainer.precision must be one of"):
        resolve_trainer_settings(cfg)


def test_every_task_config_composes(make_config):
    for task_file in sorted((REPO_ROOT / "configs" / "task").glob("*.yaml")):
        cfg = make_config([f"task={task_file.stem}"])
        assert OmegaConf.select(cfg, "task._target_")
        assert set(cfg.task.schedules) == {"superb", "demo"}


@pytest.mark.parametrize(
    "task_name", sorted(path.stem for path in (REPO_ROOT / "configs" / "task").glob("*.yaml"))
)
def test_every_task_config_builds_its_task_and_keeps_head_and_schedules_for_the_runner(
    make_config, task_name
):
    cfg = make_config([f"task={task_name}"])
    task = build_task(cfg.task)  # every key but head/schedules is a constructor parameter
    assert task.name == task_name
    with pytest.raises(TypeError, match="head"):
        type(task)(cfg.task.data_root, head=cfg.task.head)


@pytest.mark.slow
def test_command_line_run(tmp_path):
    """The real entry point, as a user types it (a subprocess with Hydra's own argument parsing)."""
    run_dir = tmp_path / "cli"
    run_downstream_cli([*TWO_STEP_RUN, f"hydra.run.dir={run_dir}", "task=er", "task.fold=3"])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == "er" and results["fold"] == 3
    assert "task.fold=3" in results["overrides"]


@pytest.mark.slow
def test_wandb_logger_falls_back_to_offline_without_credentials(tmp_path):
    """logger=wandb with no API key and no network: the run logs offline by itself and finishes."""
    run_dir = tmp_path / "wandb_run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), NETRC=str(tmp_path / "no_netrc"))
    run_downstream_cli([*TWO_STEP_RUN, "logger=wandb", f"hydra.run.dir={run_dir}"], env=env)
    assert (run_dir / "results.json").is_file()
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, sorted(p.name for p in (run_dir / "wandb").iterdir())


@pytest.mark.slow
def test_default_experiment_end_to_end_learns(tmp_path):
    """`python run_downstream.py` exactly as in the README's Quick start: the demo finishes and learns."""
    run_dir = tmp_path / "demo"
    # the demo: 300 updates of batch 8 and three full dev evaluations (about 5 times a small run's update)
    run_downstream_cli([f"hydra.run.dir={run_dir}"], timeout=launch_timeout_s(updates=5 * 300))
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["task"], results["interface"], results["upstream_config"]) == (
        "pr",
        "weighted_sum",
        "tiny_pretrained",
    )
    assert results["schedule"] == "demo" and results["steps"] == 300
    assert results["test"]["per"] < 70.0  # clearly below 100%: the probe learned phones


def test_only_entry_points_import_the_engine():
    """Tasks, data readers, heads, metrics, reporting, interfaces and upstreams never import
    downstream.training; only the drivers do: the engine itself and the inference entry points (predict,
    extract, load_run) that rebuild a finished run with the engine's builders."""
    drivers = [REPO_ROOT / "downstream" / "training", REPO_ROOT / "downstream" / "inference"]
    entry_points = {REPO_ROOT / "downstream" / "predict.py", REPO_ROOT / "downstream" / "extract.py"}
    library = [*(REPO_ROOT / "downstream").rglob("*.py"), *(REPO_ROOT / "interfaces").rglob("*.py")]
    library += list((REPO_ROOT / "upstream").rglob("*.py"))
    importers = [
        str(path.relative_to(REPO_ROOT))
        for path in library
        if not any(driver in path.parents for driver in drivers)
        and path not in entry_points
        and re.search(r"^\s*(from|import) downstream\.training", path.read_text(), re.MULTILINE)
    ]
    assert importers == []
