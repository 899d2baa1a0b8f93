"""Data-parallel training across processes started by ``torchrun`` (one process per GPU, or CPU processes).

``torchrun --nproc_per_node N run_downstream.py ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; the runner then
joins one process group (NCCL on CUDA, gloo on CPU). Every rank builds the same models from the seed and:

- trains on its own shard of every epoch's batch list (``RankBatchSampler``): global batch i goes to rank
  i mod N, so one update of N ranks with grad_accum a consumes the same batches as one process with
  grad_accum a * N, and the global batch is N * batch_size * grad_accum utterances;
- averages gradients with one all-reduce per update (``GradientAverager``);
- evaluates its shard of dev/test; the task's statistics are merged over ranks
  (``merge_statistics_over_ranks``: counts summed), so metrics are corpus-level;
- writes no files: only rank 0 writes checkpoints, best.pt, the curve, results.json and W&B.

With one process (no WORLD_SIZE, or WORLD_SIZE=1) nothing here talks to another process and training is
exactly the single-process path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from downstream.tasks.base import accumulate_statistics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the process group (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and logs progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def environment_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def environment_rank() -> int:
    """This process's RANK as set by torchrun, before any process group exists (0 without torchrun)."""
    return int(os.environ.get("RANK", "0")) if environment_world_size() > 1 else 0


def rank_info() -> RankInfo:
    """The current process group's rank and size; rank 0 of 1 when no group was initialised."""
    if dist.is_available() and dist.is_initialized():
        return RankInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return RankInfo()


def init_distributed(device_request: str) -> RankInfo:
    """Join torchrun's process group when WORLD_SIZE > 1: NCCL when training on CUDA (each process on
    cuda:LOCAL_RANK), gloo on CPU. Without torchrun this does nothing and returns rank 0 of 1."""
    if environment_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return rank_info()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    use_cuda = device_request != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    info = rank_info()
    log.info("distributed: rank %d of %d (%s)", info.rank, info.world_size, "nccl" if use_cuda else "gloo")
    return info


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if rank_info().is_distributed:
        dist.barrier()


def rank_stream_seed(seed: int, rank: int) -> int:
    """The seed of a rank's random stream (dropout, SpecAugment): the run's seed on rank 0, so one process
    draws exactly what it draws without torchrun; a distinct stream per other rank."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


class RankBatchSampler(Sampler[list[int]]):
    """This rank's share of a ``BucketBatchSampler``'s batches: global batch i goes to rank i mod world_size.

    ``limit`` keeps only the first ``limit`` global batches (trainer.limit_eval_batches). ``equal_shares``
    (training) cuts each epoch's batch list to a multiple of world_size, so every rank takes the same
    number of batches per epoch and (epoch, batch_in_epoch) names the same point on every rank; evaluation
    keeps every batch (shares may differ by one; statistics are summed afterwards). With world_size 1 and
    no limit this yields exactly the wrapped sampler's batches.

    ``set_epoch(epoch, start_batch)``: ``start_batch`` counts this rank's batches (resuming mid-epoch).
    """

    def __init__(
        self,
        sampler: Any,
        rank: int = 0,
        world_size: int = 1,
        equal_shares: bool = False,
        limit: int | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"RankBatchSampler: need 0 <= rank < world_size, got rank={rank}, {world_size=}")
        if limit is not None and limit < 1:
            raise ValueError(f"RankBatchSampler: limit must be >= 1 or None, got {limit}")
        self.sampler = sampler
        self.rank, self.world_size = rank, world_size
        self.equal_shares, self.limit = equal_shares, limit
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if start_batch < 0:
            raise ValueError(f"RankBatchSampler.set_epoch: start_batch must be >= 0, got {start_batch}")
        self.epoch, self.start_batch = epoch, start_batch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        batches = self.sampler.epoch_batches(epoch)
        if self.limit is not None:
            batches = batches[: self.limit]
        if self.equal_shares:
            batches = batches[: len(batches) - len(batches) % self.world_size]
        return batches[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches(self.epoch)[self.start_batch :]

    def __len__(self) -> int:
        return max(len(self.epoch_batches(self.epoch)) - self.start_batch, 0)


class GradientAverager:
    """Averages the gradients of ``parameters`` over all ranks with one all-reduce, and ORs flags.

    Used instead of wrapping modules in DistributedDataParallel because one upstream forward feeds several
    branches (each interface + head is its own model with its own optimizer, and a fine-tuned upstream
    gets its gradient through the branch's loss), gradients accumulate over grad_accum batches before one
    reduction, and a skipped non-finite update must be skipped on every rank: reducing once, after the
    last backward of the update, gives all ranks bit-identical gradients, hence the same finite/non-finite
    decision, the same clipping and the same step. The buffer is float32; a parameter whose gradient is
    None on every rank keeps None (as in one process), one that has a gradient on some rank gets the
    average with zeros elsewhere.
    """

    def __init__(self, parameters: Sequence[nn.Parameter]) -> None:
        self.parameters = list(parameters)

    def __call__(self, flags: Sequence[bool] = ()) -> list[bool]:
        """Average the gradients in place; return each flag OR-ed over ranks."""
        world_size = dist.get_world_size()
        present = [p.grad is not None for p in self.parameters]
        gradients = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
            for p in self.parameters
        ]
        markers = torch.tensor([*present, *flags], dtype=torch.float32, device=self._device())
        flat = torch.cat([*gradients, markers])
        dist.all_reduce(flat)
        total = flat.numel() - markers.numel()
        reduced_markers = (flat[total:] > 0).tolist()  # the one host sync
        anywhere, reduced_flags = reduced_markers[: len(present)], reduced_markers[len(present) :]
        averages = torch.split(flat[:total] / world_size, [p.numel() for p in self.parameters])
        for parameter, average, had_gradient, has_gradient in zip(
            self.parameters, averages, present, anywhere, strict=True
        ):
            if had_gradient:
                parameter.grad.copy_(average.view_as(parameter))
            elif has_gradient:
                parameter.grad = average.view_as(parameter).to(parameter.dtype)
        return reduced_flags

    def _device(self) -> torch.device:
        return self.parameters[0].device if self.parameters else torch.device("cpu")


def merge_statistics_over_ranks(statistics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each branch's evaluation statistics merged over ranks with ``accumulate_statistics`` (numbers summed,
    lists concatenated, in rank order, so every rank gets the same result); unchanged in one process. A
    rank whose share of the split was empty contributes nothing."""
    if not rank_info().is_distributed:
        return statistics
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, statistics)
    merged: list[dict[str, Any]] = [{} for _ in statistics]
    for rank_statistics in gathered:
        for totals, rank_totals in zip(merged, rank_statistics, strict=True):
            accumulate_statistics(totals, rank_totals)
    return merged


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``values`` over ranks (a copy; ``values`` itself in one process)."""
    if not rank_info().is_distributed:
        return values
    reduced = values.detach().clone()
    dist.all_reduce(reduced)
    return reduced / dist.get_world_size()


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (``[value]`` in one process)."""
    if not rank_info().is_distributed:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_module_state(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``module`` (what DDP does at construction)."""
    if not rank_info().is_distributed:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if isinstance(tensor, torch.Tensor):
                dist.broadcast(tensor, src=0)
