"""The one training loop for every task: upstream -> interface -> head -> loss, step-based, resumable.

Read top to bottom: settings; a ``Branch`` (one interface + head with its optimizer, RNG stream and run
directory); the ``Trainer`` (``run``: resume, fit interfaces that need it, train, test the best dev
checkpoint), then the pieces it calls. A plain run trains one branch. The shared-upstream launcher
trains several branches on one upstream forward per batch; each branch draws its random numbers from
its own stream, so its numbers equal those of the same job run alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from downstream.data.dataset import AudioDataset
from downstream.data.sampler import BucketBatchSampler
from downstream.distributed import (
    GradientAverager,
    RankBatchSampler,
    barrier,
    broadcast_module_state,
    gather_objects,
    mean_over_ranks,
    merge_statistics_over_ranks,
    rank_info,
    rank_stream_seed,
)
from downstream.run_log import RunLogger
from downstream.tasks.base import Task, accumulate_statistics
from interfaces.base import Interface
from upstream.base import Upstream

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainerSettings:
    """Resolved trainer configuration (configs/trainer/default.yaml, nulls filled from the task schedule)."""

    max_steps: int
    eval_every: int
    lr: float
    batch_size: int | None
    grad_accum: int
    save_every: int | None = None
    interface_lr: float | None = None
    max_batch_seconds: float | None = None
    optimizer: str = "adam"
    weight_decay: float = 0.0
    scheduler: str = "none"
    warmup_steps: int = 0
    grad_clip: float = 1.0
    precision: str = "fp32"
    device: str = "auto"
    num_workers: int | str = 0
    max_bad_steps: int = 10
    progress_bar: str | bool = "auto"
    log_every: int = 50
    stop_after_steps: int | None = None
    limit_eval_batches: int | None = None

    @classmethod
    def resolve(cls, trainer_config: dict[str, Any], schedule: dict[str, Any]) -> TrainerSettings:
        """Trainer keys left null take the task schedule's value; unknown keys are errors."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(trainer_config) - known)
        if unknown:
            raise ValueError(f"unknown trainer keys {unknown}; known keys: {sorted(known)}")
        values = {key: value for key, value in trainer_config.items() if value is not None}
        for key, value in schedule.items():
            values.setdefault(key, value)
        missing = [name for name in ("max_steps", "eval_every", "lr", "grad_accum") if name not in values]
        if missing:
            raise ValueError(f"trainer keys {missing} are null and the task schedule does not set them")
        values.setdefault("batch_size", None)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("max_steps", "eval_every", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"trainer.lr must be > 0, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"trainer.optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.scheduler not in ("none", "linear_warmup"):
            raise ValueError(f"trainer.scheduler must be none or linear_warmup, got {self.scheduler!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"trainer.device must be auto, cpu or cuda, got {self.device!r}")
        if (self.batch_size is None) == (self.max_batch_seconds is None):
            raise ValueError("set exactly one of trainer.batch_size and trainer.max_batch_seconds")
        workers = self.num_workers
        if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
            raise ValueError(f"trainer.num_workers must be a count >= 0 or 'auto', got {workers!r}")


class NonFiniteLossError(RuntimeError):
    """Raised when more than trainer.max_bad_steps updates in a row had a non-finite loss or gradient."""


def capture_rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. disk full); the previous checkpoint is intact."""


def save_atomically(payload: dict[str, Any], path: Path, keep_previous: bool = False) -> None:
    """torch.save to a temporary file beside ``path``, fsync, then rename over ``path`` (and fsync the folder).

    A crash or a full disk never leaves a torn ``path``. With ``keep_previous`` the file being replaced
    is first renamed to ``<name>.previous`` so a later-damaged checkpoint still has a fallback. A failed
    write (ENOSPC, EFBIG, EIO, ...) raises ``CheckpointWriteError`` naming the file and the OS error, with
    ``path`` and its ``.previous`` unchanged and the temporary file removed.
    """

    def write_failed(error: OSError) -> CheckpointWriteError:
        return CheckpointWriteError(
            f"could not write {path}: {error.strerror or error} (errno {error.errno}); the previous {path.name} "
            "is unchanged. Free space or fix the folder, then relaunch the same command to resume."
        )

    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise write_failed(error) from error
    stream = _WriteErrorRecorder(os.fdopen(handle, "wb"))
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would hide checkpoints from the group
        with stream.file:
            torch.save(payload, stream)
            stream.file.flush()
            os.fsync(stream.file.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_checkpoint_path(path))
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        # torch.save reports a failed write of its zip writer as RuntimeError("... unexpected pos ...");
        # the OSError underneath is the useful part.
        os_error = error if isinstance(error, OSError) else stream.error
        if os_error is not None and isinstance(error, (OSError, RuntimeError)):
            raise write_failed(os_error) from error
        raise


class _WriteErrorRecorder:
    """A binary file as torch.save sees it (``write``), remembering the OSError a write raised."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (survives a power loss, not only a killed process)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # folders cannot be opened on some platforms; the rename itself is still atomic
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems do not support fsync on folders
    finally:
        os.close(descriptor)


def previous_checkpoint_path(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any] | None:
    """The newest readable checkpoint among ``path`` and its ``.previous``; a torn one is reported and skipped."""
    for candidate in (path, previous_checkpoint_path(path)):
        if not candidate.exists():
            continue
        try:
            checkpoint = torch.load(candidate, map_location=device, weights_only=False)
            if not isinstance(checkpoint, dict) or "progress" not in checkpoint:
                raise ValueError("no training progress in it")
            return checkpoint
        except Exception as error:  # noqa: BLE001 - any unreadable file is skipped in favour of the older one
            log.warning(
                "checkpoint %s is unreadable (%s: %s); skipping it", candidate, type(error).__name__, error
            )
    return None


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


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class Branch:
    """One interface + head trained on the upstream's hidden states, with everything that is its own:
    optimizer, scheduler, grad scaler, torch RNG stream, best dev metric, run directory and logger."""

    def __init__(
        self,
        interface: Interface,
        head: nn.Module,
        run_dir: str | Path,
        logger: RunLogger,
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
        self.bad_steps_in_a_row = 0
        self.bad_steps_total = 0
        #: (step, device flag: 1.0 where that update was skipped) not yet counted by ``account_updates``
        self.pending_update_checks: list[tuple[int, torch.Tensor]] = []
        self.interface_fitted = False

    @contextlib.contextmanager
    def own_random_stream(self) -> Iterator[None]:
        """Run the block on this branch's torch RNG stream (seeded with the run's seed on first use; each
        torchrun rank other than 0 draws from a stream of its own)."""
        outer = _torch_rng_state()
        if self.rng_state is None:
            torch.manual_seed(rank_stream_seed(self.seed, rank_info().rank))
        else:
            _set_torch_rng_state(self.rng_state)
        try:
            yield
        finally:
            self.rng_state = _torch_rng_state()
            _set_torch_rng_state(outer)

    def forward(
        self, hidden_states: torch.Tensor, frame_lengths: torch.Tensor, task: Task, training: bool
    ) -> torch.Tensor:
        features = self.interface(hidden_states, frame_lengths)
        if training:
            features = task.augment(features, frame_lengths)
        return self.head(features, frame_lengths)

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

    def keep_if_best(self, metrics: dict[str, float], task: Task, step: int) -> None:
        value = metrics[task.metric]
        improved = self.best_metric is None or (
            value > self.best_metric if task.higher_is_better else value < self.best_metric
        )
        if improved:
            self.best_metric, self.best_step = value, step
            if rank_info().is_main:
                # The step travels with the weights, and the replaced best.pt stays as best.pt.previous:
                # a launch killed after this write and before its next checkpoint resumes with the best
                # model that checkpoint knows (``restore_best_model``).
                save_atomically(
                    {**self.model_state(), "step": step}, self.best_model_path, keep_previous=True
                )

    @property
    def best_model_path(self) -> Path:
        return self.run_dir / "best.pt"

    def restore_best_model(self) -> None:
        """After a resume: make best.pt hold the model of the checkpoint's ``best_step``.

        The interrupted launch may have written best.pt after its last checkpoint (an evaluation whose
        checkpoint never completed). Evaluations are always followed by a checkpoint, so the model the
        checkpoint knows as best is then best.pt.previous; it is moved back. If neither file holds it
        (files from an older version, or damaged), the best is forgotten and the next evaluation sets it.
        """
        if self.best_step is None:
            return
        candidates = (self.best_model_path, previous_checkpoint_path(self.best_model_path))
        steps = [_best_model_step(path) for path in candidates]
        if steps[0] == self.best_step:
            return
        barrier()  # every rank has read the files before rank 0 changes them
        if steps[1] == self.best_step:
            if rank_info().is_main:
                os.replace(candidates[1], candidates[0])
            log.info(
                "%s was written after the last checkpoint by the interrupted launch; restored the best model "
                "of step %d from %s",
                candidates[0],
                self.best_step,
                candidates[1].name,
            )
        else:
            log.warning(
                "neither %s nor %s holds the best model of step %d (found steps %s); the best dev model "
                "is chosen again from the evaluations still to come",
                *candidates,
                self.best_step,
                steps,
            )
            self.best_metric, self.best_step = None, None
        barrier()

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
            "progress": {
                **progress,
                "best_metric": self.best_metric,
                "best_step": self.best_step,
                "bad_steps_total": self.bad_steps_total,
                "interface_fitted": self.interface_fitted,
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
        progress = checkpoint["progress"]
        self.best_metric, self.best_step = progress["best_metric"], progress["best_step"]
        self.bad_steps_total = progress["bad_steps_total"]
        self.interface_fitted = progress["interface_fitted"]


def _best_model_step(path: Path) -> int | None:
    """The step recorded in a best-model file; None when it is missing, unreadable or has no step."""
    if not path.exists():
        return None
    try:
        step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("step")
    except Exception as error:  # noqa: BLE001 - an unreadable file simply does not hold the best model
        log.warning("best model %s is unreadable (%s: %s)", path, type(error).__name__, error)
        return None
    return step if isinstance(step, int) else None


def _torch_rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_torch_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Trains every branch on ``task`` with the shared ``upstream`` (run once per batch)."""

    def __init__(
        self,
        settings: TrainerSettings,
        upstream: Upstream,
        task: Task,
        branches: list[Branch],
        seed: int = 0,
        hidden_state_cache: Any = None,
    ) -> None:
        """``hidden_state_cache``: optional store of precomputed hidden states (``has(split)``,
        ``lookup(batch, split, device)``, ``index_only(dataset)``; downstream.feature_cache): on the splits
        it covers the upstream is not run and the loaders do not decode audio."""
        if not branches:
            raise ValueError("Trainer needs at least one branch")
        if upstream.trainable and len(branches) > 1:
            raise ValueError(
                "a fine-tuned upstream (upstream.trainable=true) cannot be shared by several branches"
            )
        self.settings = settings
        self.task = task
        self.seed = seed
        self.branches = branches
        self.device = pick_device(settings.device)
        self.autocast_dtype = PRECISIONS[settings.precision]
        self.upstream = upstream.to(self.device)
        self.hidden_state_cache = hidden_state_cache
        #: this process's rank among torchrun's processes (rank 0 of 1 without torchrun)
        self.ranks = rank_info()

        self.train_loader = self._loader("train", shard=True)
        self.eval_loaders = {split: self._loader(split, shard=True) for split in ("dev", "test")}
        #: utterances longer than task.max_seconds per split (cropped or left out, per task.on_too_long)
        self.too_long_counts = {
            split: loader.dataset.num_too_long
            for split, loader in (("train", self.train_loader), *self.eval_loaders.items())
        }
        #: averages gradients over ranks, once per update (None in one process)
        self.gradient_averager = (
            GradientAverager([p for branch in branches for p in branch.parameters])
            if self.ranks.is_distributed
            else None
        )

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        #: a stop signal (SIGTERM, or submitit's preemption signal) this process received, not yet acted on
        self.stop_signal: int | None = None
        #: set after an update when any rank received a stop signal: every rank checkpoints and stops there
        self.stop_requested = False
        #: Count skipped updates (``Branch.account_updates``, a host sync) only where the loop syncs anyway
        #: (logging, evaluation, checkpoints) instead of after every update; on by default on accelerators.
        self.check_updates_lazily = self.device.type != "cpu"

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]] | None:
        """Resume if checkpoints exist, fit interfaces that need it, train, then test each branch's best
        dev checkpoint. Returns one outcome per branch, or None when this launch stopped early."""
        self.resume()
        for branch in self.branches:
            branch.logger.start(branch.config, resume_step=self.step)
        for branch in self.branches:
            if branch.interface.needs_fit and not branch.interface_fitted:
                self.fit_interface(branch)
        for branch in self.branches:  # what DDP does at construction: every rank starts from rank 0's model
            for module in (branch.interface, branch.head, branch.upstream):
                if module is not None:
                    broadcast_module_state(module)
        with _stop_on_signals(self):
            finished = self.train()
        if not finished:
            if self.stop_signal is not None:
                _pass_signal_on(self.stop_signal)
            return None
        return self.test_best()

    def train(self) -> bool:
        settings = self.settings
        batches = self._training_batches()
        progress = self._progress_bar()
        window_start, window_steps = time.perf_counter(), 0
        launch_start_step = self.step
        while self.step < settings.max_steps:
            self.training_update(batches)
            window_steps += 1
            if progress is not None:
                progress.update(1)

            if self.step % settings.log_every == 0 or self.step == settings.max_steps:
                self.account_updates()
                steps_per_s = window_steps / (time.perf_counter() - window_start)
                losses = mean_over_ranks(torch.stack([branch.running_loss for branch in self.branches]))
                for branch, loss in zip(self.branches, losses, strict=True):
                    record = {"loss": loss.item() / window_steps, "steps_per_s": steps_per_s}
                    branch.logger.log(self.step, "train", record)
                    branch.running_loss.zero_()
                if progress is not None:
                    progress.set_postfix(loss=f"{record['loss']:.3f}", steps_per_s=f"{steps_per_s:.2f}")
                window_start, window_steps = time.perf_counter(), 0
            evaluated = self.step % settings.eval_every == 0 or self.step == settings.max_steps
            if evaluated:
                self.evaluate_and_keep_best()
                window_start = time.perf_counter()
            save_every = settings.save_every or settings.eval_every
            # Every evaluation is followed by a checkpoint, so at most one best.pt is newer than last.pt
            # (see Branch.restore_best_model).
            saved = evaluated or self.step % save_every == 0
            if saved:
                self.save_checkpoints()
            stop_after = (
                settings.stop_after_steps and self.step - launch_start_step >= settings.stop_after_steps
            )
            if (stop_after or self.stop_requested) and self.step < settings.max_steps:
                if not saved:
                    self.save_checkpoints()
                if not self.stop_requested:
                    reason = f"trainer.stop_after_steps={settings.stop_after_steps}"
                elif self.stop_signal is not None:
                    reason = signal.Signals(self.stop_signal).name
                else:
                    reason = "another rank received a stop signal"
                log.info(
                    "stopped at step %d (%s) with a checkpoint; relaunch the same command to resume",
                    self.step,
                    reason,
                )
                return False
        if progress is not None:
            progress.close()
        return True

    def training_update(self, batches: Iterator[dict[str, Any]]) -> None:
        """One optimizer update of every branch: grad_accum batches, each through the upstream once."""
        self._set_train_mode(True)
        accumulation = self.settings.grad_accum
        for _ in range(accumulation):
            batch = next(batches)
            hidden_states, frame_lengths = self.upstream_forward(batch)
            for branch in self.branches:
                with branch.own_random_stream(), self._autocast():
                    logits = branch.forward(hidden_states, frame_lengths, self.task, training=True)
                    loss = self.task.loss(logits, frame_lengths, batch) / accumulation
                branch.scaler.scale(loss).backward()
                branch.running_loss += loss.detach()
        if self.gradient_averager is not None:
            # one all-reduce: every rank's gradients averaged, and whether any rank was asked to stop
            (self.stop_requested,) = self.gradient_averager([self.stop_signal is not None])
        else:
            self.stop_requested = self.stop_signal is not None
        self.step += 1
        for branch in self.branches:
            branch.optimizer_step(self.step)
        if not self.check_updates_lazily:
            self.account_updates()

    def account_updates(self) -> None:
        """Count every branch's skipped updates so far (see ``Branch.account_updates``)."""
        for branch in self.branches:
            branch.account_updates()

    def upstream_forward(
        self, batch: dict[str, Any], split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """wavs [B, N] -> hidden states [L, B, T, D] and frame lengths [B], under the run's autocast."""
        cache = self.hidden_state_cache
        if cache is not None and cache.has(split):
            return cache.lookup(batch, split, self.device)
        wavs = batch["wavs"].to(self.device, non_blocking=True)
        wav_lengths = batch["wav_lengths"].to(self.device, non_blocking=True)
        with self._autocast():
            return self.upstream(wavs, wav_lengths)

    @torch.no_grad()
    def evaluate(self, split: str) -> list[dict[str, float]]:
        """Corpus-level metrics of every branch on ``split``, from per-batch statistics (numbers summed,
        lists concatenated: ``accumulate_statistics``)."""
        self._set_train_mode(False)
        statistics: list[dict[str, Any]] = [{} for _ in self.branches]
        # this rank's share of the split (its first limit_eval_batches batches when that is set)
        for batch in self.eval_loaders[split]:
            hidden_states, frame_lengths = self.upstream_forward(batch, split)
            for branch, totals in zip(self.branches, statistics, strict=True):
                with self._autocast():
                    logits = branch.forward(hidden_states, frame_lengths, self.task, training=False)
                accumulate_statistics(totals, self.task.eval_statistics(logits, frame_lengths, batch))
        return [self.task.metrics(totals) for totals in merge_statistics_over_ranks(statistics)]

    def evaluate_and_keep_best(self) -> None:
        self.account_updates()
        for branch, metrics in zip(self.branches, self.evaluate("dev"), strict=True):
            branch.keep_if_best(metrics, self.task, self.step)
            branch.logger.log(self.step, "dev", metrics)
            weights = branch.interface.layer_weights()
            if weights is not None and weights.dim() == 1:
                branch.logger.log(
                    self.step, "layer_weights", {f"layer_{i}": float(w) for i, w in enumerate(weights)}
                )
            summary = ", ".join(f"{key} {value:.2f}" for key, value in metrics.items())
            log.info(
                "step %d/%d dev: %s (best %s %.2f at step %d) [%s]",
                self.step,
                self.settings.max_steps,
                summary,
                self.task.metric,
                branch.best_metric,
                branch.best_step,
                branch.run_dir,
            )

    def test_best(self) -> list[dict[str, Any]]:
        """Load each branch's best dev checkpoint, evaluate dev and test with it."""
        if any(branch.best_step is None for branch in self.branches):
            self.evaluate_and_keep_best()  # only after a resume that found no usable best.pt
        barrier()  # rank 0 has written best.pt
        for branch in self.branches:
            state = torch.load(branch.best_model_path, map_location=self.device, weights_only=True)
            branch.load_model_state(state)
        dev, test = self.evaluate("dev"), self.evaluate("test")
        outcomes = []
        for branch, dev_metrics, test_metrics in zip(self.branches, dev, test, strict=True):
            branch.logger.log(self.step, "test", test_metrics)
            log.info(
                "best step %s: dev %s, test %s [%s]",
                branch.best_step,
                dev_metrics,
                test_metrics,
                branch.run_dir,
            )
            outcomes.append(
                {
                    "best_step": branch.best_step,
                    "dev": dev_metrics,
                    "test": test_metrics,
                    "bad_steps": branch.bad_steps_total,
                    "too_long": dict(self.too_long_counts),
                }
            )
        return outcomes

    # -- interfaces that are fitted, not trained (pca_concat) ------------------------------
    @torch.no_grad()
    def fit_interface(self, branch: Branch) -> None:
        """Feed the interface training hidden states until it has what it needs (it stops consuming)."""
        self._set_train_mode(False)
        loader = self._loader("train", shuffle_seed=self.seed + 1)

        def hidden_state_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for batch in loader:
                hidden_states, frame_lengths = self.upstream_forward(batch)
                yield hidden_states.float(), frame_lengths

        started = time.perf_counter()
        branch.interface.fit(hidden_state_batches())
        branch.interface_fitted = True
        log.info(
            "fitted %s on training features in %.1f s",
            type(branch.interface).__name__,
            time.perf_counter() - started,
        )

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoints(self) -> None:
        """Rank 0 writes every branch's last.pt; with several ranks it also holds each rank's random streams."""
        self.account_updates()  # the checkpoint records bad_steps_total
        progress = {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.ranks.world_size,
        }
        streams = gather_objects(
            {"branch_rng": [branch.rng_state for branch in self.branches], "global_rng": capture_rng_state()}
        )
        if not self.ranks.is_main:
            return
        for index, branch in enumerate(self.branches):
            checkpoint = branch.checkpoint(progress)
            if self.ranks.is_distributed:
                checkpoint["rank_rng"] = [
                    {"branch_rng": rank["branch_rng"][index], "global_rng": rank["global_rng"]}
                    for rank in streams
                ]
            save_atomically(checkpoint, branch.checkpoint_path, keep_previous=True)

    def resume(self) -> None:
        """Restore every branch from its newest readable checkpoint; all must be at the same step, on
        every rank."""
        checkpoints = [load_checkpoint(branch.checkpoint_path, self.device) for branch in self.branches]
        found = [c for c in checkpoints if c is not None]
        steps = {c["progress"]["step"] for c in found}
        if found and (len(found) != len(checkpoints) or len(steps) != 1):
            places = [str(b.run_dir) for b in self.branches]
            raise RuntimeError(
                f"cannot resume these runs together: their checkpoints disagree ({sorted(steps)}) in {places}"
            )
        resumed_step = found[0]["progress"]["step"] if found else None
        steps_by_rank = gather_objects(resumed_step)
        if len(set(steps_by_rank)) > 1:
            raise RuntimeError(
                f"the ranks found different checkpoints in {self.branches[0].run_dir} (step per rank: "
                f"{steps_by_rank}); put the output folder on a file system that every rank shares"
            )
        if not found:
            return
        for branch, checkpoint in zip(self.branches, checkpoints, strict=True):
            branch.restore(checkpoint)
        progress = found[0]["progress"]
        self.step, self.epoch, self.batch_in_epoch = (
            progress["step"],
            progress["epoch"],
            progress["batch_in_epoch"],
        )
        self._restore_rank_streams(checkpoints, saved_world_size=progress.get("world_size", 1))
        for branch in self.branches:
            branch.restore_best_model()
        log.info(
            "resumed at step %d from %s", self.step, ", ".join(str(b.checkpoint_path) for b in self.branches)
        )

    def _restore_rank_streams(self, checkpoints: list[dict[str, Any]], saved_world_size: int) -> None:
        """This rank's random streams (rank 0's are the checkpoint's own). Resuming with another number
        of processes keeps the data position (in global batches) but restarts the other ranks' streams."""
        rank, world_size = self.ranks.rank, self.ranks.world_size
        if saved_world_size == world_size:
            if rank > 0:
                for branch, checkpoint in zip(self.branches, checkpoints, strict=True):
                    branch.rng_state = checkpoint["rank_rng"][rank]["branch_rng"]
            restore_rng_state(
                checkpoints[0]["rank_rng"][rank]["global_rng"] if rank > 0 else checkpoints[0]["global_rng"]
            )
            return
        consumed = self.batch_in_epoch * saved_world_size  # global batches of this epoch already trained on
        self.batch_in_epoch = -(-consumed // world_size)
        if rank > 0:
            for branch in self.branches:
                branch.rng_state = None
        restore_rng_state(checkpoints[0]["global_rng"])
        log.warning(
            "the checkpoint was written by %d process(es) and is resumed by %d: training continues after the "
            "same data, but batches are grouped differently from here on, so results differ slightly from "
            "an uninterrupted run",
            saved_world_size,
            world_size,
        )

    # -- construction helpers ---------------------------------------------------------------
    def _loader(self, split: str, shuffle_seed: int | None = None, shard: bool = False) -> DataLoader:
        """``shard``: this rank's share of the batches (``RankBatchSampler``; with trainer.limit_eval_batches
        applied on dev/test); otherwise every batch of the split."""
        training = split == "train"
        dataset = split_dataset(self.task, split, self.seed)
        if self.hidden_state_cache is not None and self.hidden_state_cache.has(split):
            dataset = self.hidden_state_cache.index_only(dataset)  # no audio to decode
        sampler = BucketBatchSampler(
            dataset.num_samples,
            batch_size=self.settings.batch_size,
            max_batch_seconds=self.settings.max_batch_seconds,
            shuffle=training,
            seed=self.seed if shuffle_seed is None else shuffle_seed,
        )
        if shard:
            sampler = RankBatchSampler(
                sampler,
                rank=self.ranks.rank,
                world_size=self.ranks.world_size,
                equal_shares=training,
                limit=None if training else self.settings.limit_eval_batches,
            )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=_SplitCollate(self.task, split, dataset.utterances),
            num_workers=resolve_num_workers(self.settings.num_workers, self.device),
            pin_memory=self.device.type == "cuda",
            # its own generator, so creating an iterator never draws from the global RNG
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _training_batches(self) -> Iterator[dict[str, Any]]:
        """Endless training batches; (epoch, batch_in_epoch) always names the next batch to load."""
        sampler: RankBatchSampler = self.train_loader.batch_sampler
        dataset: AudioDataset = self.train_loader.dataset
        while True:
            if not sampler.epoch_batches(self.epoch):
                raise ValueError(
                    f"the training split has {sampler.sampler.batches_per_epoch(self.epoch)} batch(es) in epoch "
                    f"{self.epoch}, fewer than the {self.ranks.world_size} processes that share them; use fewer "
                    "processes or a smaller trainer.batch_size"
                )
            sampler.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
            dataset.set_epoch(self.epoch)
            for batch in self.train_loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _set_train_mode(self, training: bool) -> None:
        self.upstream.train(training)
        for branch in self.branches:
            branch.train(training)

    def _progress_bar(self):
        show = self.settings.progress_bar
        if show == "auto":
            show = sys.stderr.isatty()
        if not show:
            return None
        from tqdm import tqdm

        return tqdm(total=self.settings.max_steps, initial=self.step, desc="train", dynamic_ncols=True)


def resolve_num_workers(setting: int | str, device: torch.device) -> int:
    """DataLoader workers for trainer.num_workers: a count as given; ``auto`` is 0 on CPU (there the model,
    not decoding, is the bottleneck) and on an accelerator every core this process may use but two (the
    main process and the pin-memory thread), at most 16: a HuBERT Base step on 32 x 12 s takes about
    0.04 s on one H100/H200, so batches must arrive at about 10,000x real time, and one worker decodes
    FLAC at roughly 1,000-1,500x (docs/benchmarks.md)."""
    if setting != "auto":
        return int(setting)
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(16, cores - 2))


def split_dataset(task: Task, split: str, seed: int) -> AudioDataset:
    """The waveforms of one split as the trainer reads them: training crops (task.train_crop_seconds)
    on train only, task.max_seconds / on_too_long on every split."""
    return AudioDataset(
        task.utterances(split),
        crop_seconds=task.train_crop_seconds if split == "train" else None,
        seed=seed,
        max_seconds=task.max_seconds,
        on_too_long=task.on_too_long,
    )


def pick_device(requested: str) -> torch.device:
    """cpu or cuda as requested (auto: cuda when present); under torchrun, this process's cuda:LOCAL_RANK."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "trainer.device=cuda but no CUDA device is available; use trainer.device=auto or cpu"
        )
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and rank_info().is_distributed:
        return torch.device("cuda", rank_info().local_rank)
    return torch.device(requested)


#: Exit status of a launch that stopped before the end with a checkpoint (a stop signal or
#: trainer.stop_after_steps): EX_TEMPFAIL, "try again"; relaunching the same command resumes.
EXIT_STOPPED_EARLY = 75


def stop_signals() -> list[signal.Signals]:
    """SIGTERM (what SLURM and torchrun send to stop a job) and submitit's preemption/timeout signal
    (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL names another one)."""
    preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    return [signal.SIGTERM] + ([preempt] if preempt is not None and preempt != signal.SIGTERM else [])


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """While training, a stop signal finishes the current update, checkpoints, and stops (every rank at
    the same update). The handlers installed before (submitit's) are put back afterwards and the signal is
    then passed on to them (``_pass_signal_on``), so submitit requeues the job after the checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame) -> None:
        log.warning("%s: checkpointing at the end of this update, then stopping", signal.Signals(signum).name)
        trainer.stop_signal = signum

    previous = {signum: signal.signal(signum, request_stop) for signum in stop_signals()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _pass_signal_on(signum: int) -> None:
    """Call the handler that was installed before the trainer's for ``signum`` (e.g. submitit's, which
    requeues the job and exits). A default or ignored disposition is left alone: the launch then ends
    with EXIT_STOPPED_EARLY."""
    handler = signal.getsignal(signum)
    if callable(handler):
        handler(signum, None)


class _SplitCollate:
    """Picklable collate function for DataLoader workers: the task's collate for one split."""

    def __init__(self, task: Task, split: str, utterances: list) -> None:
        self.task, self.split, self.utterances = task, split, utterances

    def __call__(self, items: list[dict]) -> dict[str, Any]:
        return self.task.collate(items, self.split, self.utterances)
