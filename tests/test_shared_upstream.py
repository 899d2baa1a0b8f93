"""The shared-upstream fast path: jobs trained together equal the same jobs trained alone."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from downstream.training.runner import Job, resolved_job_config, run_experiment, run_jobs
from hydra_plugins.shared_upstream_launcher.launcher import group_key
from tests.helpers import SHARED_FAST as FAST
from tests.helpers import assert_same_metrics, run_downstream_cli


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "interfaces"),
    [
        ("pr", ["weighted_sum", "hconv", "cls_pooling"]),  # cls_pooling has dropout: per-branch RNG streams
        ("asr", ["weighted_sum", "last_layer"]),  # SpecAugment draws random masks in every branch
        ("sd", ["weighted_sum", "last_layer"]),
        ("qbe", ["single_layer", "last_layer"]),  # nothing trained: the no-training path
    ],
)
def test_jobs_trained_together_equal_jobs_trained_alone(make_config, tmp_path, task, interfaces):
    extra = {
        "asr": ["task.head.hidden_size=32", "task.head.lstm_size=16"],
        "sd": ["task.head.hidden_size=16"],
    }.get(task, [])
    alone, jobs = {}, []
    for name in interfaces:
        overrides = [f"task={task}", f"interface={name}", *FAST, *extra]
        alone[name] = run_experiment(
            make_config(overrides, run_dir=tmp_path / "alone" / name), tmp_path / "alone" / name
        )
        cfg = resolved_job_config(make_config(overrides, run_dir=tmp_path / "together" / name))
        jobs.append(Job(cfg, tmp_path / "together" / name, overrides))
    together = run_jobs(jobs)
    for name, results in zip(interfaces, together, strict=True):
        assert results["interface"] == name
        assert_same_metrics(results, alone[name])
        assert json.loads((tmp_path / "together" / name / "results.json").read_text()) == results


def test_group_key_ignores_only_interface_head_and_optimizer_settings(make_config):
    def key(overrides):
        return group_key(OmegaConf.to_container(resolved_job_config(make_config(overrides))))

    base = key(["interface=weighted_sum"])
    assert key(["interface=hconv", "task.head.extra_params=1000"]) == base
    optimizer = [
        "trainer.lr=0.5",
        "trainer.interface_lr=0.1",
        "trainer.optimizer=adamw",
        "trainer.weight_decay=0.01",
    ]
    assert (
        key(["interface=hconv", *optimizer, "trainer.scheduler=linear_warmup", "trainer.warmup_steps=5"])
        == base
    )
    # what changes the data stream, the loop or the upstream keeps jobs apart
    for other in (
        "seed=1",
        "task=sid",
        "trainer.batch_size=3",
        "trainer.grad_accum=2",
        "trainer.max_steps=7",
        "upstream.precision=bf16",
        "upstream=fbank",
        "trainer.halving_steps=[100]",
    ):
        assert key(["interface=weighted_sum", other]) != base, other


@pytest.mark.slow
def test_shared_upstream_launcher_sweep(tmp_path):
    """`-m ... hydra/launcher=shared_upstream` writes one results.json per job, as separate runs would."""
    sweep_dir = tmp_path / "sweep"
    completed = run_downstream_cli(
        [
            "-m",
            "interface=weighted_sum,last_layer",
            "hydra/launcher=shared_upstream",
            *FAST,
            f"hydra.sweep.dir={sweep_dir}",
        ]
    )
    assert "training 2 job(s) on one upstream" in completed.stderr + completed.stdout
    found = {json.loads(p.read_text())["interface"] for p in sweep_dir.rglob("results.json")}
    assert found == {"weighted_sum", "last_layer"}
