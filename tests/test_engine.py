"""The trainer's core promises, checked directly and fast (in process, the tiny upstream): an accumulated
update's gradient is the mean of its batches' gradients, a resumed run equals the uninterrupted one, the
kept model is the best dev evaluation in the metric's direction, evaluation runs in eval mode, and each
rank's evaluation share holds every batch exactly once."""

from __future__ import annotations

import copy
from pathlib import Path

import hydra
import pytest
import torch

from downstream.training.distributed import RankBatchSampler
from downstream.training.runner import build_branch, build_task, resolve_trainer_settings, run_experiment
from downstream.training.trainer import Trainer
from tests.helpers import TINY_UPSTREAM, assert_same_run

# protocol=exact: a padded utterance's hidden states equal its single run, so gradients do not depend on
# which utterances share a batch.
PR_TINY = ["task=pr", "protocol=exact", "trainer.batch_size=2", "trainer.log_every=1", *TINY_UPSTREAM]


def build_trainer(make_config, overrides: list[str], run_dir: Path) -> Trainer:
    """A Trainer as the runner builds it for one job (task, upstream, one branch)."""
    cfg = make_config([*PR_TINY, *overrides], run_dir=run_dir)
    settings = resolve_trainer_settings(cfg)
    task = build_task(cfg.task)
    upstream = hydra.utils.instantiate(cfg.upstream)
    branch = build_branch(cfg, upstream, task, settings, run_dir)
    return Trainer(settings, upstream, task, [branch], seed=cfg.seed)


def test_an_accumulated_update_uses_the_mean_gradient_of_its_batches(make_config, tmp_path):
    trainer = build_trainer(make_config, ["trainer.grad_accum=2", "trainer.grad_clip=1e9"], tmp_path)
    branch, task = trainer.branches[0], trainer.task
    batches = [batch for batch, _ in zip(trainer.train_loader, range(2), strict=False)]
    assert len(batches) == 2

    # independent: each batch's gradient at the starting weights, averaged
    expected = None
    trainer._set_train_mode(True)
    for batch in batches:
        hidden, frames = trainer.upstream_forward(batch)
        logits, lengths = branch.forward(hidden, frames, task, training=True)
        loss = task.loss(logits, lengths, batch)
        grads = torch.autograd.grad(loss, list(branch.head.parameters()))
        expected = grads if expected is None else [a + b for a, b in zip(expected, grads, strict=True)]
    expected = [g / 2 for g in expected]

    seen = []
    original = branch.optimizer_step

    def record_then_step(step: int) -> None:
        seen.extend(p.grad.detach().clone() for p in branch.head.parameters())
        original(step)

    branch.optimizer_step = record_then_step
    trainer.training_update(iter(batches))
    assert trainer.step == 1 and len(seen) == len(expected)
    for got, want in zip(seen, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_a_stopped_and_resumed_run_equals_the_uninterrupted_run(make_config, tmp_path):
    """Stopped mid-interval at step 3 (between evaluations), relaunched: the same curve, best model and
    metrics, exactly. A checkpoint without the optimizer state or a resume that skips or repeats a batch
    changes the losses after step 3."""
    schedule = [*PR_TINY, "trainer.max_steps=5", "trainer.eval_every=2", "trainer.limit_eval_batches=1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_experiment(make_config(schedule, run_dir=straight), straight)
    stopped = [*schedule, "trainer.stop_after_steps=3", "trainer.save_every=1"]
    assert run_experiment(make_config(stopped, run_dir=resumed), resumed) is None
    assert not (resumed / "results.json").exists()
    run_experiment(make_config([*schedule, "trainer.save_every=1"], run_dir=resumed), resumed)
    assert_same_run(resumed, straight)


@pytest.mark.parametrize(
    ("task", "metric_values", "best"),
    [("pr", [50.0, 40.0, 45.0, 40.0], (40.0, 2)), ("sid", [50.0, 60.0, 55.0, 60.0], (60.0, 2))],
    ids=["lower_is_better", "higher_is_better"],
)
def test_the_kept_model_is_the_first_best_in_the_metrics_direction(
    make_config, tmp_path, task, metric_values, best
):
    cfg = make_config([*PR_TINY, f"task={task}", "schedule=demo"], run_dir=tmp_path)
    settings = resolve_trainer_settings(cfg)
    task_object = build_task(cfg.task)
    upstream = hydra.utils.instantiate(cfg.upstream)
    branch = build_branch(cfg, upstream, task_object, settings, tmp_path)
    for step, value in enumerate(metric_values, start=1):
        with torch.no_grad():  # a different model at each step, to tell the saved ones apart
            next(branch.head.parameters()).fill_(float(step))
        branch.keep_if_best({task_object.metric: value}, task_object, step)
    assert (branch.best_metric, branch.best_step) == best
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert saved["step"] == best[1]
    assert torch.all(next(iter(saved["head"].values())) == float(best[1]))  # that step's model


def test_evaluation_runs_in_eval_mode_and_training_in_train_mode(make_config, tmp_path):
    trainer = build_trainer(
        make_config,
        ["trainer.limit_eval_batches=1", "interface=cls_pooling", "trainer.max_steps=2"],
        tmp_path,
    )
    branch = trainer.branches[0]
    modes: dict[str, list[bool]] = {"interface": [], "head": [], "upstream": []}
    for name, module in (
        ("interface", branch.interface),
        ("head", branch.head),
        ("upstream", trainer.upstream),
    ):
        module.register_forward_pre_hook(lambda module, args, name=name: modes[name].append(module.training))
    trainer.evaluate("dev")
    assert modes == {"interface": [False], "head": [False], "upstream": [False]}  # dropout off in eval
    for values in modes.values():
        values.clear()
    trainer.training_update(iter([next(iter(trainer.train_loader))]))
    # the frozen upstream stays in eval mode while the interface (dropout in cls_pooling) and head train
    assert modes == {"interface": [True], "head": [True], "upstream": [False]}


class _Batches:
    """A stand-in for the bucket sampler: a fixed list of batches per epoch."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return copy.deepcopy(self.batches)


@pytest.mark.parametrize("count", [1, 2, 5, 7])
@pytest.mark.parametrize("world_size", [2, 3])
def test_evaluation_shares_hold_every_batch_exactly_once(count, world_size):
    batches = [[2 * i, 2 * i + 1] for i in range(count)]
    shares = [list(RankBatchSampler(_Batches(batches), rank, world_size)) for rank in range(world_size)]
    scored = sorted(tuple(batch) for share in shares for batch in share)
    assert scored == [tuple(batch) for batch in batches]  # none twice, none left out
