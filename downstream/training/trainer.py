"""The one training loop for every task: upstream -> interface -> head -> loss, step-based, resumable.

Read top to bottom: ``Trainer.run`` resumes, fits interfaces that need it, trains, then tests each branch's
best dev checkpoint; ``train`` is the loop (update, log, evaluate, checkpoint, stop on request);
``training_update`` one optimizer update of every branch; ``evaluate`` corpus-level dev/test metrics;
then checkpoints and resuming. What a branch owns is in ``branch.py``, files in ``checkpoint.py``, data
and device in ``loading.py``, signals in ``preemption.py``, several processes in ``distributed.py``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from downstream.data.dataset import AudioDataset
from downstream.metrics.display import metric_format, results_line
from downstream.tasks.base import Batch, Task, accumulate_statistics
from downstream.training.branch import Branch
from downstream.training.distributed import (
    GradientAverager,
    RankBatchSampler,
    barrier,
    broadcast_module_state,
    mean_over_ranks,
    merge_statistics_over_ranks,
    rank_info,
)
from downstream.training.halving import halve
from downstream.training.loading import HiddenStateSource, pick_device, split_loader
from downstream.training.preemption import pass_signal_on, record_stop_signals
from downstream.training.resume import resume_branches, save_branch_checkpoints
from downstream.training.run_log import about_run
from downstream.training.settings import PRECISIONS, TrainerSettings, apply_tf32
from upstream.base import Upstream

log = logging.getLogger(__name__)


class Trainer:
    """Trains every branch on ``task`` with the shared ``upstream`` (run once per batch)."""

    def __init__(
        self,
        settings: TrainerSettings,
        upstream: Upstream,
        task: Task,
        branches: list[Branch],
        seed: int = 0,
        hidden_state_cache: HiddenStateSource | None = None,
    ) -> None:
        """``hidden_state_cache``: optional precomputed hidden states (``downstream.training.cache``): on
        the splits it covers the upstream is not run and the loaders do not decode audio."""
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
        apply_tf32(settings.tf32)
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
        #: updates since the training loss was last logged: the window each branch's ``running_loss`` sums
        #: over (checkpointed with it, so a resumed run logs the loss an uninterrupted one would)
        self.loss_window_steps = 0
        #: a stop signal (SIGTERM, or submitit's preemption signal) this process received, not yet acted on
        self.stop_signal: int | None = None
        #: set after an update when any rank received a stop signal: every rank checkpoints and stops there
        self.stop_requested = False
        #: Count skipped updates (``Branch.account_updates``, a host sync) only where the loop syncs anyway
        #: (logging, evaluation, checkpoints) instead of after every update; on by default on accelerators.
        self.check_updates_lazily = self.device.type != "cpu"

    @property
    def training_branches(self) -> list[Branch]:
        """The branches still training: all but those successive halving stopped (``halving.py``)."""
        return [branch for branch in self.branches if branch.stopped_early is None]

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
        with record_stop_signals(self._record_stop_signal):
            finished = self.train()
        if not finished:
            if self.stop_signal is not None:
                pass_signal_on(self.stop_signal)
            return None
        return self.test_best()

    def train(self) -> bool:
        settings = self.settings
        batches = self._training_batches()
        progress = self._progress_bar()
        # timed_steps: updates of this launch since window_start (speed); loss_window_steps may include
        # updates of the launch before a resume (loss)
        window_start, timed_steps = time.perf_counter(), 0
        launch_start_step = self.step
        while self.step < settings.max_steps and self.training_branches:
            self.training_update(batches)
            timed_steps += 1
            self.loss_window_steps += 1
            if progress is not None:
                progress.update(1)

            if self.step % settings.log_every == 0 or self.step == settings.max_steps:
                self.account_updates()
                steps_per_s = timed_steps / (time.perf_counter() - window_start)
                training = self.training_branches
                losses = mean_over_ranks(torch.stack([branch.running_loss for branch in training]))
                for branch, loss in zip(training, losses, strict=True):
                    record = {"loss": loss.item() / self.loss_window_steps, "steps_per_s": steps_per_s}
                    branch.logger.log(self.step, "train", record)
                    branch.running_loss.zero_()
                if progress is not None:
                    progress.set_postfix(loss=f"{record['loss']:.3f}", steps_per_s=f"{steps_per_s:.2f}")
                else:  # not on a terminal (a log file, SLURM): a line every log_every updates instead
                    log.info(
                        "step %d/%d: train loss %.4f, %.2f steps/s%s",
                        self.step,
                        settings.max_steps,
                        record["loss"],
                        steps_per_s,
                        "" if len(self.branches) == 1 else f" ({len(self.branches)} runs; loss of the last)",
                    )
                window_start, timed_steps = time.perf_counter(), 0
                self.loss_window_steps = 0
            evaluated = self.step % settings.eval_every == 0 or self.step == settings.max_steps
            if evaluated:
                self.evaluate_and_keep_best()
            if settings.test_every and self.step % settings.test_every == 0:
                self.evaluate_test_and_keep_best()
            if evaluated or (settings.test_every and self.step % settings.test_every == 0):
                window_start, timed_steps = time.perf_counter(), 0
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
                    "stopped at step %d (%s) with a checkpoint",
                    self.step,
                    reason,
                )
                return False
        if progress is not None:
            progress.close()
        return True

    def training_update(self, batches: Iterator[Batch]) -> None:
        """One optimizer update of every branch: grad_accum batches, each through the upstream once."""
        self._set_train_mode(True)
        accumulation = self.settings.grad_accum
        for _ in range(accumulation):
            batch = next(batches)
            hidden_states, frame_lengths = self.upstream_forward(batch)
            for branch in self.training_branches:
                with branch.own_random_stream(), self._autocast():
                    logits, lengths = branch.forward(hidden_states, frame_lengths, self.task, training=True)
                    loss = self.task.loss(logits, lengths, batch) / accumulation
                branch.scaler.scale(loss).backward()
                branch.running_loss += loss.detach()
        if self.gradient_averager is not None:
            # one all-reduce: every rank's gradients averaged, and whether any rank was asked to stop
            (self.stop_requested,) = self.gradient_averager([self.stop_signal is not None])
        else:
            self.stop_requested = self.stop_signal is not None
        self.step += 1
        for branch in self.training_branches:
            branch.optimizer_step(self.step)
        if not self.check_updates_lazily:
            self.account_updates()

    def account_updates(self) -> None:
        """Count every branch's skipped updates so far (see ``Branch.account_updates``)."""
        for branch in self.branches:
            branch.account_updates()

    def upstream_forward(self, batch: Batch, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """wavs [B, N] -> hidden states [L, B, T, D] and frame lengths [B], under the run's autocast."""
        cache = self.hidden_state_cache
        if cache is not None and cache.has(split):
            return cache.lookup(batch, split, self.device)
        wavs = batch["wavs"].to(self.device, non_blocking=True)
        wav_lengths = batch["wav_lengths"].to(self.device, non_blocking=True)
        with self._autocast():
            return self.upstream(wavs, wav_lengths)

    @torch.no_grad()
    def evaluate(self, split: str, branches: list[Branch] | None = None) -> list[dict[str, float]]:
        """Corpus-level metrics of each of ``branches`` (default: all) on ``split``, from per-batch
        statistics (numbers summed, lists concatenated: ``accumulate_statistics``)."""
        branches = self.branches if branches is None else branches
        self._set_train_mode(False)
        statistics: list[dict[str, Any]] = [{} for _ in branches]
        # this rank's share of the split (its first limit_eval_batches batches when that is set)
        for batch in self.eval_loaders[split]:
            hidden_states, frame_lengths = self.upstream_forward(batch, split)
            for branch, totals in zip(branches, statistics, strict=True):
                with self._autocast():
                    logits, lengths = branch.forward(hidden_states, frame_lengths, self.task, training=False)
                accumulate_statistics(totals, self.task.eval_statistics(logits, lengths, batch))
        return [self.task.metrics(totals) for totals in merge_statistics_over_ranks(statistics)]

    def evaluate_and_keep_best(self, branches: list[Branch] | None = None) -> None:
        """Evaluate dev for ``branches`` (default: those still training) and keep each one's best; at a
        step of trainer.halving_steps, successive halving then stops the worse half (``halving.py``)."""
        self.account_updates()
        branches = self.training_branches if branches is None else branches
        for branch, metrics in zip(branches, self.evaluate("dev", branches), strict=True):
            branch.keep_if_best(metrics, self.task, self.step)
            branch.logger.log(self.step, "dev", metrics)
            weights = branch.interface.layer_weights()
            if weights is not None and weights.dim() == 1:
                ids = self.upstream.layer_ids or range(len(weights))  # hidden-state indices (upstream.layers)
                labels = branch.interface.layer_weight_labels(ids)
                branch.logger.log(
                    self.step,
                    "layer_weights",
                    {label: float(w) for label, w in zip(labels, weights, strict=True)},
                )
            log.info(
                "step %d/%d %s (best %s at step %d) [%s]",
                self.step,
                self.settings.max_steps,
                results_line("dev", metrics, self.task.metric),
                metric_format(self.task.select_metric).format(branch.best_metric),
                branch.best_step,
                branch.run_dir,
            )
        if self.step in (self.settings.halving_steps or ()) and self.step < self.settings.max_steps:
            halve(self.branches, self.task.select_higher_is_better, self.step)

    def evaluate_test_and_keep_best(self) -> None:
        """trainer.test_every: evaluate test with the models of this step and keep each branch's best
        (``Branch.best_test``, results.json's ``test_selected``): SUPERB's SV selection, the best test EER
        over checkpoints (s3prl ``sv_voxceleb1/test_expdir.sh``). Selection on test is optimistic; the
        run's ``test`` stays the best dev checkpoint's."""
        branches = self.training_branches
        for branch, metrics in zip(branches, self.evaluate("test", branches), strict=True):
            branch.keep_if_best_test(metrics, self.task, self.step)
            branch.logger.log(self.step, "test_every", metrics)
            log.info(
                "step %d/%d %s (best test %s at step %d) [%s]",
                self.step,
                self.settings.max_steps,
                results_line("test", metrics, self.task.metric),
                metric_format(self.task.metric).format(branch.best_test[self.task.metric]),
                branch.best_test["step"],
                branch.run_dir,
            )

    def test_best(self) -> list[dict[str, Any]]:
        """Load each branch's best dev checkpoint, evaluate dev and test with it."""
        unevaluated = [branch for branch in self.branches if branch.best_step is None]
        if unevaluated:
            self.evaluate_and_keep_best(unevaluated)  # only after a resume that found no usable best.pt
        barrier()  # rank 0 has written best.pt
        for branch in self.branches:
            branch.load_model_state(branch.tested_model_state(self.device))
        self.task.final_evaluation = True
        dev, test = self.evaluate("dev"), self.evaluate("test")
        outcomes = []
        for branch, dev_metrics, test_metrics in zip(self.branches, dev, test, strict=True):
            test_metrics = self.task.finish_test(dev_metrics, test_metrics)
            branch.logger.log(self.step, "test", test_metrics)
            log.info("results of the best dev step %s [%s]", branch.best_step, branch.run_dir)
            for split, metrics in (("dev", dev_metrics), ("test", test_metrics)):
                log.info(
                    "%s", results_line(split, metrics, self.task.metric), extra=about_run(branch.run_dir)
                )
            if branch.best_test is not None:  # trainer.test_every: SUPERB's SV figure, chosen on test
                log.info(
                    "%s (the best test evaluation, at step %d; results.json test_selected)",
                    results_line("test_selected", branch.best_test, self.task.metric),
                    branch.best_test["step"],
                    extra=about_run(branch.run_dir),
                )
            outcomes.append(
                {
                    "best_step": branch.best_step,
                    "dev": dev_metrics,
                    "test": test_metrics,
                    "bad_steps": branch.bad_steps_total,
                    "too_long": dict(self.too_long_counts),
                    "stopped_early": branch.stopped_early,
                    "averaged_steps": branch.best_checkpoints.steps() if branch.best_checkpoints else None,
                    "test_selected": branch.best_test,
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
        """Every branch's last.pt at this step (``resume.save_branch_checkpoints``)."""
        self.account_updates()  # the checkpoint records bad_steps_total
        progress = {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.ranks.world_size,
            "loss_window_steps": self.loss_window_steps,
        }
        save_branch_checkpoints(self.branches, progress, self.step)

    def resume(self) -> None:
        """Continue from the branches' checkpoints, if any (``resume.resume_branches``, which logs the files
        it loaded)."""
        progress = resume_branches(self.branches, self.device)
        if progress is None:
            return
        self.step, self.epoch, self.batch_in_epoch = (
            progress["step"],
            progress["epoch"],
            progress["batch_in_epoch"],
        )
        # checkpoints written before the loss window was recorded: the window restarts at the resume
        self.loss_window_steps = progress.get("loss_window_steps", 0)

    # -- construction helpers ---------------------------------------------------------------
    def _loader(self, split: str, shuffle_seed: int | None = None, shard: bool = False) -> DataLoader:
        return split_loader(
            self.task,
            split,
            self.settings,
            self.device,
            self.seed,
            shuffle_seed=shuffle_seed,
            shard=shard,
            hidden_states=self.hidden_state_cache,
        )

    def _training_batches(self) -> Iterator[Batch]:
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

    def _record_stop_signal(self, signum: int) -> None:
        self.stop_signal = signum

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
