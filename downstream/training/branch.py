"""One interface + head trained on the upstream's hidden states (a ``Branch``), with everything that is its
own: optimizer, learning-rate schedule, grad scaler, random stream, best dev model, run directory, logger.

A plain run trains one branch; the shared-upstream launcher trains several on one upstream forward per batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from downstream.heads import head_output_lengths
from downstream.tasks.base import Task
from downstream.training.averaging import AVERAGE_MODEL, BestCheckpoints
from downstream.training.checkpoint import (
    capture_rng_state,
    load_model_file,
    restore_rng_state,
    roll_back_best_model,
    save_best_model,
)
from downstream.training.distributed import rank_info, rank_stream_seed
from downstream.training.run_log import RunLog
from downstream.training.settings import TrainerSettings
from interfaces.base import Interface
from upstream.base import Upstream

log = logging.getLogger(__name__)

#: Trainer settings that are a branch's own (its optimizer and learning-rate schedule). Jobs that differ only
#: in these, the interface and the head train on one upstream forward per batch (``runner.run_jobs``; the
#: shared-upstream launcher groups them); every other trainer setting shapes the data stream or the loop and
#: must be equal within a group.
BRANCH_SETTINGS = ("lr", "interface_lr", "optimizer", "weight_decay", "scheduler", "warmup_steps")


class NonFiniteLossError(RuntimeError):
    """Raised when more than trainer.max_bad_steps updates in a row had a non-finite loss or gradient."""


def build_optimizer(
    settings: TrainerSettings, groups: list[tuple[str, list[nn.Parameter], float]]
) -> torch.optim.Optimizer:
    """Adam/AdamW over named parameter groups (name, params, lr); empty groups are left out.

    The fused implementation: one kernel per device and dtype, and it reads the ``found_inf`` flag that
    ``Branch.optimizer_step`` sets, so a non-finite update is skipped on the device without a host sync.
    """
    param_groups = [{"name": name, "params": params, "lr": lr} for name, params, lr in groups if params]
    optimizer_class = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(param_groups, weight_decay=settings.weight_decay, fused=True)


def build_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainerSettings
) -> torch.optim.lr_scheduler.LRScheduler:
    """Constant, or linear warmup over warmup_steps then linear decay to 0 at max_steps."""
    if settings.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup, total = settings.warmup_steps, settings.max_steps

    def linear_warmup_then_decay(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_then_decay)


class Branch:
    """One interface + head trained on the upstream's hidden states, with everything that is its own:
    optimizer, scheduler, grad scaler, torch RNG stream, best dev metric, run directory and logger."""

    def __init__(
        self,
        interface: Interface,
        head: nn.Module,
        run_dir: str | Path,
        logger: RunLog,
        settings: TrainerSettings,
        device: torch.device,
        seed: int,
        upstream: Upstream | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        """``upstream`` is given only when it is fine-tuned: its parameters join this branch's optimizer."""
        self.interface = interface.to(device)
        self.head = head.to(device)
        self.upstream = upstream
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger = logger
        self.config = config or {}
        self.settings = settings
        groups = [
            ("head", [p for p in self.head.parameters() if p.requires_grad], settings.lr),
            (
                "interface",
                [p for p in self.interface.parameters() if p.requires_grad],
                settings.interface_lr or settings.lr,
            ),
        ]
        if upstream is not None:
            groups.append(("upstream", [p for p in upstream.parameters() if p.requires_grad], upstream.lr))
        self.optimizer = build_optimizer(settings, groups)
        self.parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.scheduler = build_scheduler(self.optimizer, settings)
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
        self.seed = seed
        self.rng_state: dict[str, Any] | None = None
        self.running_loss = torch.zeros((), device=device)
        self.best_metric: float | None = None
        self.best_step: int | None = None
        #: the n best evaluations whose average is the tested model (``use_averaging``; None: best.pt)
        self.best_checkpoints: BestCheckpoints | None = None
        #: the best test metrics over the evaluations of trainer.test_every, with their step (SUPERB's
        #: test-selected figure: results.json's test_selected); None until test is first evaluated
        self.best_test: dict[str, float] | None = None
        self.bad_steps_in_a_row = 0
        self.bad_steps_total = 0
        #: (step, device flag: 1.0 where that update was skipped) not yet counted by ``account_updates``
        self.pending_update_checks: list[tuple[int, torch.Tensor]] = []
        self.interface_fitted = False
        #: branches with equal pools compete in successive halving (``halving.py``): same interface and head
        self.halving_pool = ""
        #: set when successive halving stopped this branch: {"step", "rank", "of"} (``halving.py``)
        self.stopped_early: dict[str, Any] | None = None

    @contextlib.contextmanager
    def own_random_stream(self) -> Iterator[None]:
        """Run the block on this branch's torch RNG stream (seeded with the run's seed on first use; each
        torchrun rank other than 0 draws from a stream of its own)."""
        outer = capture_rng_state(torch_only=True)
        if self.rng_state is None:
            torch.manual_seed(rank_stream_seed(self.seed, rank_info().rank))
        else:
            restore_rng_state(self.rng_state)
        try:
            yield
        finally:
            self.rng_state = capture_rng_state(torch_only=True)
            restore_rng_state(outer)

    def forward(
        self, hidden_states: torch.Tensor, frame_lengths: torch.Tensor, task: Task, training: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(head output, its valid frames [B]): the frame lengths unless the head changes the frame rate
        (a head with ``output_lengths``, e.g. ML-SUPERB's conv2d2 front)."""
        features = self.interface(hidden_states, frame_lengths)
        if training:
            features = task.augment(features, frame_lengths)
        output = self.head(features, frame_lengths)
        return output, head_output_lengths(self.head, frame_lengths, features.shape[1])

    def train(self, training: bool) -> None:
        self.interface.train(training)
        self.head.train(training)

    def optimizer_step(self, step: int) -> None:
        """Unscale, clip and step. An update whose gradient is non-finite changes neither the weights nor
        the optimizer state: the fused optimizer skips it on the device (``found_inf``), so no host sync is
        needed here. The learning-rate schedule advances with every update, skipped or not (as it always
        did under fp16's grad scaler). ``account_updates`` counts the skipped ones later."""
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.parameters, self.settings.grad_clip)
        nonfinite = (~torch.isfinite(grad_norm)).float()
        if self.scaler.is_enabled():
            # fp16: the scaler hands the fused optimizer its own overflow flag (from unscale_) and lowers
            # its scale after an overflow.
            self.scaler.step(self.optimizer)
        else:
            # The flag GradScaler hands to optimizers with _step_supports_amp_scaling (fused Adam/AdamW):
            # where it is 1 they leave parameters, moments and step counts untouched.
            self.optimizer.found_inf = nonfinite
            self.optimizer.step()
            del self.optimizer.found_inf
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending_update_checks.append((step, nonfinite))

    def account_updates(self) -> None:
        """Count the updates skipped since the last call (one host sync for all of them): each one is
        logged, and more than trainer.max_bad_steps in a row stop the run with ``NonFiniteLossError``."""
        if not self.pending_update_checks:
            return
        steps = [step for step, _ in self.pending_update_checks]
        flags = torch.stack([flag for _, flag in self.pending_update_checks]).tolist()
        self.pending_update_checks.clear()
        for step, nonfinite in zip(steps, flags, strict=True):
            if not nonfinite:
                self.bad_steps_in_a_row = 0
                continue
            self.bad_steps_in_a_row += 1
            self.bad_steps_total += 1
            log.warning(
                "%s: step %d had a non-finite loss or gradient; update skipped (%d in a row)",
                self.run_dir,
                step,
                self.bad_steps_in_a_row,
            )
            self.logger.log(step, "train", {"skipped_update": 1.0})
            if self.bad_steps_in_a_row > self.settings.max_bad_steps:
                raise NonFiniteLossError(
                    f"stopped at step {step}: {self.bad_steps_in_a_row} updates in a row had a non-finite loss "
                    f"or gradient (trainer.max_bad_steps={self.settings.max_bad_steps}); lower trainer.lr or "
                    "use trainer.precision=fp32"
                )

    def use_averaging(self, task: Task) -> None:
        """Test the average of the task's ``average_best`` best checkpoints by its ``select_by`` number
        (``averaging.BestCheckpoints`` under <run dir>/nbest) when it asks for more than one."""
        if getattr(task, "average_best", 1) > 1:
            higher = task.select_higher_is_better
            self.best_checkpoints = BestCheckpoints(self.run_dir / "nbest", task.average_best, higher)

    def keep_if_best(self, metrics: dict[str, float], task: Task, step: int) -> None:
        """Keep best.pt (strictly better dev ``task.select_metric``) and the n best for averaging."""
        value = metrics[task.select_metric]
        improved = self.best_metric is None or (
            value > self.best_metric if task.select_higher_is_better else value < self.best_metric
        )
        if improved:
            self.best_metric, self.best_step = value, step
            if rank_info().is_main:
                save_best_model(self.named_model_state(task), self.best_model_path, step)
        if self.best_checkpoints is not None:
            self.best_checkpoints.update(value, step, lambda: self.named_model_state(task))

    def named_model_state(self, task: Task) -> dict[str, Any]:
        """``model_state`` with the head outputs' names (vocabulary, labels): a finished run is usable
        without its training corpus (downstream.inference)."""
        return {**self.model_state(), "outputs": task.output_names()}

    def tested_model_state(self, device: torch.device) -> dict[str, Any]:
        """The model to test: the average of the n best checkpoints (``use_averaging``), written to
        ``average_model_path`` for inference, else best.pt."""
        if self.best_checkpoints is not None and self.best_checkpoints.ranking:
            self.best_checkpoints.finish()
            state = self.best_checkpoints.average(device)
            if rank_info().is_main:
                save_best_model(state, self.average_model_path, self.best_checkpoints.steps()[0])
            log.info(
                "%s: testing the average of the checkpoints of steps %s (%s)",
                self.run_dir,
                self.best_checkpoints.steps(),
                self.average_model_path.name,
            )
            return state
        return load_model_file(self.best_model_path, device)

    @property
    def average_model_path(self) -> Path:
        return self.run_dir / AVERAGE_MODEL

    def keep_if_best_test(self, metrics: dict[str, float], task: Task, step: int) -> None:
        """Keep ``metrics`` (with ``step``) as ``best_test`` when its task metric beats the kept one."""
        value, kept = metrics[task.metric], self.best_test
        if kept is None or (
            value > kept[task.metric] if task.higher_is_better else value < kept[task.metric]
        ):
            self.best_test = {"step": step, **metrics}

    @property
    def best_model_path(self) -> Path:
        return self.run_dir / "best.pt"

    def restore_best_model(self) -> None:
        """After a resume: make best.pt hold the model of the checkpoint's ``best_step``
        (``checkpoint.roll_back_best_model``), or forget the best when no file holds it."""
        if self.best_step is not None and not roll_back_best_model(self.best_model_path, self.best_step):
            self.best_metric, self.best_step = None, None

    def model_state(self) -> dict[str, Any]:
        state = {"interface": self.interface.state_dict(), "head": self.head.state_dict()}
        if self.upstream is not None:
            state["upstream"] = self.upstream.state_dict()
        return state

    def load_model_state(self, state: dict[str, Any]) -> None:
        self.interface.load_state_dict(state["interface"])
        self.head.load_state_dict(state["head"])
        if self.upstream is not None:
            self.upstream.load_state_dict(state["upstream"])

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "last.pt"

    def checkpoint(self, progress: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.model_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "branch_rng": self.rng_state,
            "global_rng": capture_rng_state(),
            "running_loss": self.running_loss.item(),  # the training loss summed since it was last logged
            "progress": {
                **progress,
                "best_metric": self.best_metric,
                "best_step": self.best_step,
                "best_test": self.best_test,
                "bad_steps_total": self.bad_steps_total,
                "interface_fitted": self.interface_fitted,
                "stopped_early": self.stopped_early,
                "best_checkpoints": None if self.best_checkpoints is None else self.best_checkpoints.state(),
            },
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Model, optimizer, schedules, random stream and progress from ``checkpoint`` (rank 0's stream;
        the trainer hands other ranks their own)."""
        self.load_model_state(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.rng_state = checkpoint["branch_rng"]
        self.running_loss.fill_(checkpoint.get("running_loss", 0.0))
        progress = checkpoint["progress"]
        self.best_metric, self.best_step = progress["best_metric"], progress["best_step"]
        self.best_test = progress.get("best_test")  # absent in checkpoints written before trainer.test_every
        self.bad_steps_total = progress["bad_steps_total"]
        self.interface_fitted = progress["interface_fitted"]
        self.stopped_early = progress.get("stopped_early")  # absent in checkpoints written before halving
        if self.best_checkpoints is not None:
            self.best_checkpoints.load_state(progress.get("best_checkpoints"))
