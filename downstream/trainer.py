"""The one training loop for every task: upstream -> interface -> head -> loss, step-based, resumable.

Read top to bottom: settings, construction (device, data, optimizer), ``run`` (resume, fit the
interface if it needs it, train, test the best dev checkpoint), then the pieces it calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
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
from downstream.tasks.base import Task
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


def save_atomically(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file beside ``path``, fsync, then rename: a crash never leaves a torn file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class Trainer:
    """Trains ``interface`` + the task's head (and the upstream when it is trainable) on ``task``."""

    def __init__(
        self,
        settings: TrainerSettings,
        upstream: Upstream,
        interface: Interface,
        task: Task,
        run_dir: str | Path,
        logger: RunLogger,
        seed: int = 0,
    ) -> None:
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger = logger
        self.seed = seed
        self.task = task
        self.device = self._pick_device(settings.device)
        self.autocast_dtype = PRECISIONS[settings.precision]

        self.upstream = upstream.to(self.device)
        self.interface = interface.to(self.device)
        self.head = task.build_head(interface.output_size).to(self.device)

        self.train_loader = self._loader("train")
        self.eval_loaders = {split: self._loader(split) for split in ("dev", "test")}

        self.optimizer = self._build_optimizer()
        self.scheduler = self._build_scheduler()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=settings.precision == "fp16")

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.bad_steps_in_a_row = 0
        self.bad_steps_total = 0
        self.interface_fitted = False

    # -- the run ----------------------------------------------------------------------------
    def run(self, config: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Resume if a checkpoint exists, fit the interface if needed, train, then test the best dev
        checkpoint. Returns the metrics, or None when the launch stopped early (stop_after_steps)."""
        self.resume()
        self.logger.start(config or {}, resume_step=self.step)
        if self.interface.needs_fit and not self.interface_fitted:
            self.fit_interface()
        finished = self.train()
        if not finished:
            return None
        return self.test_best()

    def train(self) -> bool:
        settings = self.settings
        batches = self._training_batches()
        progress = self._progress_bar()
        running_loss = torch.zeros((), device=self.device)
        window_start, window_steps = time.perf_counter(), 0
        launch_start_step = self.step
        while self.step < settings.max_steps:
            self._set_train_mode(True)
            for _ in range(settings.grad_accum):
                batch = next(batches)
                logits, frame_lengths = self.forward(batch, training=True)
                loss = self.task.loss(logits, frame_lengths, batch) / settings.grad_accum
                self.scaler.scale(loss).backward()
                running_loss += loss.detach()
            self.optimizer_step()
            self.step += 1
            window_steps += 1
            if progress is not None:
                progress.update(1)

            if self.step % settings.log_every == 0 or self.step == settings.max_steps:
                elapsed = time.perf_counter() - window_start
                record = {"loss": running_loss.item() / window_steps, "steps_per_s": window_steps / elapsed}
                self.logger.log(self.step, "train", record)
                if progress is not None:
                    progress.set_postfix(
                        loss=f"{record['loss']:.3f}", steps_per_s=f"{record['steps_per_s']:.2f}"
                    )
                running_loss.zero_()
                window_start, window_steps = time.perf_counter(), 0
            if self.step % settings.eval_every == 0 or self.step == settings.max_steps:
                self.evaluate_and_keep_best()
                window_start = time.perf_counter()
            save_every = settings.save_every or settings.eval_every
            if self.step % save_every == 0 or self.step == settings.max_steps:
                self.save_checkpoint()
            stop_now = (
                settings.stop_after_steps and self.step - launch_start_step >= settings.stop_after_steps
            )
            if stop_now and self.step < settings.max_steps:
                self.save_checkpoint()
                log.info(
                    "stopping after %d updates this launch (step %d); relaunch to resume",
                    self.step - launch_start_step,
                    self.step,
                )
                return False
        if progress is not None:
            progress.close()
        return True

    def forward(self, batch: dict[str, Any], training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """wavs -> hidden states [L,B,T,D] -> features [B,T,D'] -> head output, under the run's autocast."""
        wavs = batch["wavs"].to(self.device, non_blocking=True)
        wav_lengths = batch["wav_lengths"].to(self.device, non_blocking=True)
        with self._autocast():
            hidden_states, frame_lengths = self.upstream(wavs, wav_lengths)
            features = self.interface(hidden_states, frame_lengths)
            if training:
                features = self.task.augment(features, frame_lengths)
            logits = self.head(features, frame_lengths)
        return logits, frame_lengths

    def optimizer_step(self) -> None:
        """Unscale, clip, and step unless the gradient is non-finite (then skip and count the update)."""
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self._trainable_parameters(), self.settings.grad_clip)
        finite = bool(torch.isfinite(grad_norm))  # the one host sync per update
        if finite or self.scaler.is_enabled():
            # fp16: the grad scaler itself skips overflowing updates and lowers its scale.
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
            "step %d: non-finite loss or gradient, update skipped (%d in a row)",
            self.step + 1,
            self.bad_steps_in_a_row,
        )
        self.logger.log(self.step + 1, "train", {"skipped_update": 1.0})
        if self.bad_steps_in_a_row > self.settings.max_bad_steps:
            raise NonFiniteLossError(
                f"stopped at step {self.step + 1}: {self.bad_steps_in_a_row} updates in a row had a non-finite "
                f"loss or gradient (trainer.max_bad_steps={self.settings.max_bad_steps}); lower trainer.lr or "
                "use trainer.precision=fp32"
            )

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Corpus-level metrics on ``split`` from additive per-batch statistics."""
        self._set_train_mode(False)
        statistics: dict[str, float] = defaultdict(float)
        for batch in self.eval_loaders[split]:
            logits, frame_lengths = self.forward(batch, training=False)
            for key, value in self.task.eval_statistics(logits, frame_lengths, batch).items():
                statistics[key] += value
        return self.task.metrics(statistics)

    def evaluate_and_keep_best(self) -> None:
        metrics = self.evaluate("dev")
        value = metrics[self.task.metric]
        improved = self.best_metric is None or (
            value > self.best_metric if self.task.higher_is_better else value < self.best_metric
        )
        if improved:
            self.best_metric, self.best_step = value, self.step
            save_atomically(self._model_state(), self.run_dir / "best.pt")
        self.logger.log(self.step, "dev", metrics)
        weights = self.interface.layer_weights()
        if weights is not None and weights.dim() == 1:
            self.logger.log(
                self.step, "layer_weights", {f"layer_{i}": float(w) for i, w in enumerate(weights)}
            )
        message = ", ".join(f"{key} {value:.2f}" for key, value in metrics.items())
        log.info(
            "step %d/%d dev: %s (best %s %.2f at step %d)",
            self.step,
            self.settings.max_steps,
            message,
            self.task.metric,
            self.best_metric,
            self.best_step,
        )

    def test_best(self) -> dict[str, Any]:
        """Load the best dev checkpoint, evaluate dev and test with it, and return both."""
        state = torch.load(self.run_dir / "best.pt", map_location=self.device, weights_only=True)
        self._load_model_state(state)
        dev = self.evaluate("dev")
        test = self.evaluate("test")
        self.logger.log(self.step, "test", test)
        log.info("best step %s: dev %s, test %s", self.best_step, dev, test)
        return {"best_step": self.best_step, "dev": dev, "test": test, "bad_steps": self.bad_steps_total}

    # -- interfaces that are fitted, not trained (pca_concat) ------------------------------
    @torch.no_grad()
    def fit_interface(self) -> None:
        """Feed the interface training hidden states until it has what it needs (it stops consuming)."""
        self._set_train_mode(False)
        loader = self._loader("train", shuffle_seed=self.seed + 1)

        def hidden_state_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for batch in loader:
                wavs = batch["wavs"].to(self.device)
                wav_lengths = batch["wav_lengths"].to(self.device)
                with self._autocast():
                    hidden_states, frame_lengths = self.upstream(wavs, wav_lengths)
                yield hidden_states.float(), frame_lengths

        started = time.perf_counter()
        self.interface.fit(hidden_state_batches())
        self.interface_fitted = True
        log.info(
            "fitted %s on training features in %.1f s",
            type(self.interface).__name__,
            time.perf_counter() - started,
        )

    # -- checkpoints ------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "last.pt"

    def save_checkpoint(self) -> None:
        payload = {
            "model": self._model_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "progress": {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "best_metric": self.best_metric,
                "best_step": self.best_step,
                "bad_steps_total": self.bad_steps_total,
                "interface_fitted": self.interface_fitted,
            },
        }
        save_atomically(payload, self.checkpoint_path)

    def resume(self) -> None:
        if not self.checkpoint_path.exists():
            return
        checkpoint = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        self._load_model_state(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_state(checkpoint["rng"])
        progress = checkpoint["progress"]
        self.step, self.epoch, self.batch_in_epoch = (
            progress["step"],
            progress["epoch"],
            progress["batch_in_epoch"],
        )
        self.best_metric, self.best_step = progress["best_metric"], progress["best_step"]
        self.bad_steps_total = progress["bad_steps_total"]
        self.interface_fitted = progress["interface_fitted"]
        log.info("resumed from %s at step %d", self.checkpoint_path, self.step)

    def _model_state(self) -> dict[str, Any]:
        state = {"interface": self.interface.state_dict(), "head": self.head.state_dict()}
        if self.upstream.trainable:
            state["upstream"] = self.upstream.state_dict()
        return state

    def _load_model_state(self, state: dict[str, Any]) -> None:
        self.interface.load_state_dict(state["interface"])
        self.head.load_state_dict(state["head"])
        if "upstream" in state:
            self.upstream.load_state_dict(state["upstream"])

    # -- construction helpers ---------------------------------------------------------------
    @staticmethod
    def _pick_device(requested: str) -> torch.device:
        if requested == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                "trainer.device=cuda but no CUDA device is available; use trainer.device=auto or cpu"
            )
        if requested == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(requested)

    def _loader(self, split: str, shuffle_seed: int | None = None) -> DataLoader:
        utterances = self.task.utterances(split)
        training = split == "train"
        crop = self.task.train_crop_seconds if training else None
        dataset = AudioDataset(utterances, crop_seconds=crop, seed=self.seed)
        num_samples = [u.num_samples for u in utterances]
        if crop is not None:
            limit = int(crop * self.upstream.sample_rate)
            num_samples = [min(n, limit) for n in num_samples]
        sampler = BucketBatchSampler(
            num_samples,
            batch_size=self.settings.batch_size,
            max_batch_seconds=self.settings.max_batch_seconds,
            shuffle=training,
            seed=self.seed if shuffle_seed is None else shuffle_seed,
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=_SplitCollate(self.task, split),
            num_workers=self.settings.num_workers,
            pin_memory=self.device.type == "cuda",
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

    def _trainable_parameters(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _build_optimizer(self) -> torch.optim.Optimizer:
        settings = self.settings
        groups = [
            {
                "params": [p for p in self.head.parameters() if p.requires_grad],
                "lr": settings.lr,
                "name": "head",
            },
            {
                "params": [p for p in self.interface.parameters() if p.requires_grad],
                "lr": settings.interface_lr or settings.lr,
                "name": "interface",
            },
        ]
        if self.upstream.trainable:
            upstream_params = [p for p in self.upstream.parameters() if p.requires_grad]
            groups.append({"params": upstream_params, "lr": self.upstream.lr, "name": "upstream"})
        groups = [group for group in groups if group["params"]]
        optimizer_class = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
        return optimizer_class(groups, weight_decay=settings.weight_decay)

    def _build_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        settings = self.settings
        if settings.scheduler == "none":
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        warmup, total = settings.warmup_steps, settings.max_steps

        def linear_warmup_then_decay(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_warmup_then_decay)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _set_train_mode(self, training: bool) -> None:
        self.upstream.train(training)
        self.interface.train(training)
        self.head.train(training)

    def _progress_bar(self):
        show = self.settings.progress_bar
        if show == "auto":
            show = sys.stderr.isatty()
        if not show:
            return None
        from tqdm import tqdm

        return tqdm(total=self.settings.max_steps, initial=self.step, desc="train", dynamic_ncols=True)


class _SplitCollate:
    """Picklable collate function for DataLoader workers: the task's collate for one split."""

    def __init__(self, task: Task, split: str) -> None:
        self.task, self.split = task, split

    def __call__(self, items: list[dict]) -> dict[str, Any]:
        return self.task.collate(items, self.split)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
