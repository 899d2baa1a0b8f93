"""The CTC training step (issue 19): targets built as tensors by the collate function, the loss equal to
torch's reference, trainer.tf32, and (on CUDA) no synchronising call of the step's own."""

from __future__ import annotations

import warnings

import hydra.utils
import pytest
import torch
import torch.nn.functional as F

from downstream.tasks.ctc import ctc_min_frames_tensor, ctc_target_tensors
from downstream.training.runner import build_branch, build_task, resolve_trainer_settings
from downstream.training.trainer import Trainer
from tests.helpers import TINY_UPSTREAM

PR = [*TINY_UPSTREAM, "task=pr", "trainer.batch_size=3", "trainer.max_steps=2", "trainer.eval_every=2"]


def trainer_for(make_config, tmp_path, overrides: list[str]) -> Trainer:
    cfg = make_config(overrides, run_dir=tmp_path)
    settings = resolve_trainer_settings(cfg)
    task = build_task(cfg.task)
    upstream = hydra.utils.instantiate(cfg.upstream)
    return Trainer(
        settings, upstream, task, [build_branch(cfg, upstream, task, settings, tmp_path)], seed=cfg.seed
    )


def test_collate_builds_the_ctc_targets_as_tensors(make_config, tmp_path):
    trainer = trainer_for(make_config, tmp_path, PR)
    batch = next(iter(trainer.train_loader))  # through the task's collate, as in training
    targets = batch["targets"]  # token id lists, per utterance (what evaluation decodes)
    assert all(isinstance(t, list) and t for t in targets)
    expected_flat = [token for target in targets for token in target]
    assert batch["ctc_targets"].dtype == batch["ctc_target_lengths"].dtype == torch.long
    assert batch["ctc_targets"].tolist() == expected_flat
    assert batch["ctc_target_lengths"].tolist() == [len(target) for target in targets]
    # the same ids the task encodes for those utterances
    utterances = trainer.train_loader.dataset.utterances
    encoded = [trainer.task.encode(utterances[i], "train") for i in batch["indices"].tolist()]
    assert targets == encoded


@pytest.mark.parametrize("protocol", ["exact", "superb"])
def test_ctc_loss_equals_torch_mean_reduction_over_the_feasible_utterances(make_config, tmp_path, protocol):
    """protocol=exact: torch's reduction="mean" over the utterances CTC can align; an infeasible one (issue 14)
    is left out of the average instead of counting as zero. protocol=superb: torch's mean over all of them with
    zero_infinity=True, as s3prl computes it (issue 24)."""
    trainer = trainer_for(make_config, tmp_path, [*PR, f"protocol={protocol}"])
    task = trainer.task
    generator = torch.Generator().manual_seed(0)
    targets = [[3, 4, 5], [7], [9, 9, 2, 1, 6, 8]]
    batch = {"targets": targets}
    flat, lengths = ctc_target_tensors(targets)
    batch.update(ctc_targets=flat, ctc_target_lengths=lengths, ctc_min_frames=ctc_min_frames_tensor(targets))
    logits = torch.randn(3, 12, task.num_outputs, generator=generator, requires_grad=True)
    frame_lengths = torch.tensor([12, 5, 2])  # the last is too short for its 6 targets: an infinite loss
    loss = task.loss(logits, frame_lengths, batch)
    padded = torch.zeros(3, 6, dtype=torch.long)
    for row, target in enumerate(targets):
        padded[row, : len(target)] = torch.tensor(target)
    rows = 2 if protocol == "exact" else 3
    reference = F.ctc_loss(
        F.log_softmax(logits[:rows], dim=-1).transpose(0, 1),
        padded[:rows],  # the padded 2-D layout, another of torch's target formats
        frame_lengths[:rows],
        torch.tensor([3, 1, 6][:rows]),
        blank=0,
        reduction="mean",
        zero_infinity=True,
    )
    torch.testing.assert_close(loss, reference)
    (gradient,) = torch.autograd.grad(loss, logits)
    (reference_gradient,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(gradient, reference_gradient)
    # a batch built by hand, without the collate's tensors, gets the same loss
    torch.testing.assert_close(task.loss(logits, frame_lengths, {"targets": targets}), reference)


def test_tf32_setting_switches_matmul_precision(make_config, tmp_path):
    try:
        trainer_for(make_config, tmp_path, [*PR, "trainer.tf32=true"])
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        trainer_for(make_config, tmp_path, PR)
        assert torch.get_float32_matmul_precision() == "highest"
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.set_float32_matmul_precision("highest")
    with pytest.raises(ValueError, match="trainer.tf32 must be true or false"):
        trainer_for(make_config, tmp_path, [*PR, "trainer.tf32=maybe"])


def count_syncs(call) -> int:
    """Synchronising CUDA calls made by ``call()`` (torch.cuda.set_sync_debug_mode('warn') warnings)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message).lower() for w in caught)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="counts synchronising CUDA calls: needs a CUDA device"
)
def test_training_step_syncs_only_inside_torch_ctc(make_config, tmp_path):
    """The step's only synchronising calls are those torch's CUDA CTC makes itself (it copies the lengths to
    the device and reads device input lengths on the host); measured against F.ctc_loss alone, forward and
    backward, on the same batch. With set_sync_debug_mode('error') the step fails exactly there."""
    trainer = trainer_for(make_config, tmp_path, [*PR, "trainer.device=cuda", "trainer.num_workers=0"])
    batch = next(iter(trainer.train_loader))
    batch = {
        key: value.pin_memory() if isinstance(value, torch.Tensor) else value for key, value in batch.items()
    }
    trainer.check_updates_lazily = True
    trainer.training_update(iter([batch]))  # warm-up: optimizer state, cuDNN/cuBLAS handles

    hidden_states, frame_lengths = trainer.upstream_forward(batch)
    branch = trainer.branches[0]
    logits = branch.forward(hidden_states, frame_lengths, trainer.task, training=True)[0]
    logits = logits.detach().requires_grad_()

    def bare_ctc() -> None:
        loss = F.ctc_loss(
            F.log_softmax(logits.float(), dim=-1).transpose(0, 1),
            batch["ctc_targets"].to("cuda", non_blocking=True),
            frame_lengths,
            batch["ctc_target_lengths"],
            blank=0,
            reduction="none",
            zero_infinity=True,
        )
        loss.sum().backward()

    inherent = count_syncs(bare_ctc)
    step = count_syncs(lambda: trainer.training_update(iter([batch])))
    assert step == inherent, f"the step made {step} synchronising calls, torch's CTC alone {inherent}"
    if inherent == 0:  # a torch whose CTC does not synchronise: then the whole step must not either
        torch.cuda.set_sync_debug_mode("error")
        try:
            trainer.training_update(iter([batch]))
        finally:
            torch.cuda.set_sync_debug_mode("default")
