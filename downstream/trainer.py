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
    num_workers: int = 0
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
    """torch.save to a temporary file beside ``path``, fsync, then rename over ``path``.

    A crash or a full disk never leaves a torn ``path``. With ``keep_previous`` the file being replaced
    is first renamed to ``<name>.previous`` so a later-damaged checkpoint still has a fallback.
    """
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise CheckpointWriteError(
            f"could not write {path}: {error}; the previous checkpoint is intact"
        ) from error
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_checkpoint_path(path))
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise CheckpointWriteError(
                f"could not write {path}: {error}; the previous checkpoint is intact"
            ) from error
        raise


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
    """Adam/AdamW over named parameter groups (name, params, lr); empty groups are left out."""
    param_groups = [{"name": name, "params": params, "lr": lr} for name, params, lr in groups if params]
    optimizer_class = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(param_groups, weight_decay=settings.weight_decay)


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
        self.interface_fitted = False

    @contextlib.contextmanager
    def own_random_stream(self) -> Iterator[None]:
        """Run the block on this branch's torch RNG stream (seeded with the run's seed on first use)."""
        outer = _torch_rng_state()
        if self.rng_state is None:
            torch.manual_seed(self.seed)
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
        """Unscale, clip, and step unless the gradient is non-finite (then skip and count the update)."""
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.parameters, self.settings.grad_clip)
        finite = bool(torch.isfinite(grad_norm))  # the one host sync per update
        if finite or self.scaler.is_enabled():
            # fp16: the grad scaler itself skips an overflowing update and lowers its scale.
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            self.bad_steps_in_a_row = 0
            return
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
                f"stopped at step {step}: {self.bad_steps_in_a_row} updates in a row had a non-finite loss or "
                f"gradient (trainer.max_bad_steps={self.settings.max_bad_steps}); lower trainer.lr or use "
                "trainer.precision=fp32"
            )

    def keep_if_best(self, metrics: dict[str, float], task: Task, step: int) -> None:
        value = metrics[task.metric]
        improved = self.best_metric is None or (
            value > self.best_metric if task.higher_is_better else value < self.best_metric
        )
        if improved:
            self.best_metric, self.best_step = value, step
            save_atomically(self.model_state(), self.run_dir / "best.pt")

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
        self.load_model_state(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.rng_state = checkpoint["branch_rng"]
        progress = checkpoint["progress"]
        self.best_metric, self.best_step = progress["best_metric"], progress["best_step"]
        self.bad_steps_total = progress["bad_steps_total"]
        self.interface_fitted = progress["interface_fitted"]


def _torch_rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_torch_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopRequested(Exception):
    """Internal: SIGTERM arrived; the trainer checkpoints at the end of the current update."""


class Trainer:
    """Trains every branch on ``task`` with the shared ``upstream`` (run once per batch)."""

    def __init__(
        self, settings: TrainerSettings, upstream: Upstream, task: Task, branches: list[Branch], seed: int = 0
    ) -> None:
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

        self.train_loader = self._loader("train")
        self.eval_loaders = {split: self._loader(split) for split in ("dev", "test")}

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.stop_requested = False
        #: Optional store of precomputed hidden states (``has(split)``, ``lookup(batch, split, device)``);
        #: when it covers a split, the upstream is not run on that split's batches.
        self.hidden_state_cache = None

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
        with _stop_on_sigterm(self):
            finished = self.train()
        if not finished:
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
                steps_per_s = window_steps / (time.perf_counter() - window_start)
                for branch in self.branches:
                    record = {"loss": branch.running_loss.item() / window_steps, "steps_per_s": steps_per_s}
                    branch.logger.log(self.step, "train", record)
                    branch.running_loss.zero_()
                if progress is not None:
                    progress.set_postfix(loss=f"{record['loss']:.3f}", steps_per_s=f"{steps_per_s:.2f}")
                window_start, window_steps = time.perf_counter(), 0
            if self.step % settings.eval_every == 0 or self.step == settings.max_steps:
                self.evaluate_and_keep_best()
                window_start = time.perf_counter()
            save_every = settings.save_every or settings.eval_every
            if self.step % save_every == 0 or self.step == settings.max_steps:
                self.save_checkpoints()
            stop_after = (
                settings.stop_after_steps and self.step - launch_start_step >= settings.stop_after_steps
            )
            if (stop_after or self.stop_requested) and self.step < settings.max_steps:
                self.save_checkpoints()
                reason = (
                    "SIGTERM"
                    if self.stop_requested
                    else f"trainer.stop_after_steps={settings.stop_after_steps}"
                )
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
        self.step += 1
        for branch in self.branches:
            branch.optimizer_step(self.step)

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
        for index, batch in enumerate(self.eval_loaders[split]):
            if self.settings.limit_eval_batches is not None and index >= self.settings.limit_eval_batches:
                break
            hidden_states, frame_lengths = self.upstream_forward(batch, split)
            for branch, totals in zip(self.branches, statistics, strict=True):
                with self._autocast():
                    logits = branch.forward(hidden_states, frame_lengths, self.task, training=False)
                accumulate_statistics(totals, self.task.eval_statistics(logits, frame_lengths, batch))
        return [self.task.metrics(totals) for totals in statistics]

    def evaluate_and_keep_best(self) -> None:
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
        for branch in self.branches:
            branch.load_model_state(
                torch.load(branch.run_dir / "best.pt", map_location=self.device, weights_only=True)
            )
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
        progress = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}
        for branch in self.branches:
            save_atomically(branch.checkpoint(progress), branch.checkpoint_path, keep_previous=True)

    def resume(self) -> None:
        """Restore every branch from its newest readable checkpoint; all must be at the same step."""
        checkpoints = [load_checkpoint(branch.checkpoint_path, self.device) for branch in self.branches]
        found = [c for c in checkpoints if c is not None]
        if not found:
            return
        steps = {c["progress"]["step"] for c in found}
        if len(found) != len(checkpoints) or len(steps) != 1:
            places = [str(b.run_dir) for b in self.branches]
            raise RuntimeError(
                f"cannot resume these runs together: their checkpoints disagree ({sorted(steps)}) in {places}"
            )
        for branch, checkpoint in zip(self.branches, checkpoints, strict=True):
            branch.restore(checkpoint)
        progress = found[0]["progress"]
        self.step, self.epoch, self.batch_in_epoch = (
            progress["step"],
            progress["epoch"],
            progress["batch_in_epoch"],
        )
        restore_rng_state(found[0]["global_rng"])
        log.info(
            "resumed at step %d from %s", self.step, ", ".join(str(b.checkpoint_path) for b in self.branches)
        )

    # -- construction helpers ---------------------------------------------------------------
    def _loader(self, split: str, shuffle_seed: int | None = None) -> DataLoader:
        training = split == "train"
        utterances = self.task.utterances(split)
        dataset = AudioDataset(
            utterances,
            crop_seconds=self.task.train_crop_seconds if training else None,
            seed=self.seed,
            max_seconds=self.task.max_seconds,
            on_too_long=self.task.on_too_long,
        )
        sampler = BucketBatchSampler(
            dataset.num_samples,
            batch_size=self.settings.batch_size,
            max_batch_seconds=self.settings.max_batch_seconds,
            shuffle=training,
            seed=self.seed if shuffle_seed is None else shuffle_seed,
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=_SplitCollate(self.task, split, dataset.utterances),
            num_workers=self.settings.num_workers,
            pin_memory=self.device.type == "cuda",
            # its own generator, so creating an iterator never draws from the global RNG
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _training_batches(self) -> Iterator[dict[str, Any]]:
        """Endless training batches; (epoch, batch_in_epoch) always names the next batch to load."""
        sampler: BucketBatchSampler = self.train_loader.batch_sampler
        dataset: AudioDataset = self.train_loader.dataset
        while True:
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


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "trainer.device=cuda but no CUDA device is available; use trainer.device=auto or cpu"
        )
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@contextlib.contextmanager
def _stop_on_sigterm(trainer: Trainer) -> Iterator[None]:
    """On SIGTERM (what SLURM sends before preemption) finish the current update, checkpoint, and stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame) -> None:
        log.warning("SIGTERM: checkpointing at the end of this update, then stopping")
        trainer.stop_requested = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _SplitCollate:
    """Picklable collate function for DataLoader workers: the task's collate for one split."""

    def __init__(self, task: Task, split: str, utterances: list) -> None:
        self.task, self.split, self.utterances = task, split, utterances

    def __call__(self, items: list[dict]) -> dict[str, Any]:
        return self.task.collate(items, self.split, self.utterances)
