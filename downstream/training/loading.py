"""What the engine reads and where it computes: each split's dataset and DataLoader, the collate function,
DataLoader workers, and the device."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from downstream.data.corpus import Utterance
from downstream.data.dataset import AudioDataset
from downstream.data.sampler import BucketBatchSampler
from downstream.tasks.base import Batch, Task
from downstream.training.distributed import RankBatchSampler, rank_info
from downstream.training.settings import TrainerSettings


class HiddenStateSource(Protocol):
    """Precomputed hidden states of some splits (``downstream.training.cache.HiddenStateCache``): on a split
    it ``has``, the trainer reads them instead of running the upstream, and the loader decodes no audio."""

    def has(self, split: str) -> bool:
        """Whether every utterance of ``split`` is available."""
        ...

    def lookup(self, batch: Batch, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden states [L, B, T, D] float32 and frame lengths [B] of ``batch``'s utterances, on ``device``."""
        ...

    def index_only(self, dataset: AudioDataset) -> Dataset:
        """``dataset`` yielding the items' indices without their audio."""
        ...


def pick_device(requested: str, setting: str = "trainer.device") -> torch.device:
    """cpu or cuda as requested (auto: cuda when present); under torchrun, this process's cuda:LOCAL_RANK.
    ``setting`` names the option in the error raised when cuda is requested and absent."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{setting}=cuda but no CUDA device is available; use {setting}=auto or cpu")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and rank_info().is_distributed:
        return torch.device("cuda", rank_info().local_rank)
    return torch.device(requested)


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
    """The waveforms of one split as the trainer reads them (``task_dataset`` of its utterances)."""
    return task_dataset(task, task.utterances(split), split == "train", seed, task.pad_to_samples)


def task_dataset(
    task: Task,
    utterances: list[Utterance],
    training: bool,
    seed: int,
    pad_to_samples: int | None,
    dataset_class: type[AudioDataset] = AudioDataset,
) -> AudioDataset:
    """``utterances`` as ``task`` reads them: training crops (task.train_crop_seconds) and the length limit
    (task.max_seconds / on_too_long) in training only, so evaluation audio stays whole; audio shorter than
    ``pad_to_samples`` zero-padded to it; every file scaled by task.gain_db decibels. The trainer's splits
    and a trained run's new inputs (``downstream.inference.inputs.input_batches``) are read by this."""
    return dataset_class(
        utterances,
        crop_seconds=task.train_crop_seconds if training else None,
        seed=seed,
        max_seconds=task.max_seconds if training else None,
        on_too_long=task.on_too_long,
        pad_to_samples=pad_to_samples,
        gain_db=task.gain_db,
    )


def batch_loader(
    dataset: Dataset,
    batch_sampler: Any,
    collate: Callable[[list[dict]], Any],
    settings: TrainerSettings,
    device: torch.device,
    seed: int,
) -> DataLoader:
    """A DataLoader over ``batch_sampler``'s batches with trainer.num_workers workers (pinned memory on
    CUDA). It has its own generator, so creating an iterator never draws from the global RNG."""
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate,
        num_workers=resolve_num_workers(settings.num_workers, device),
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )


def bucket_sampler(
    dataset: AudioDataset,
    settings: TrainerSettings,
    shuffle: bool,
    seed: int = 0,
    weights: list[float] | None = None,
    halve_above_samples: int | None = None,
) -> BucketBatchSampler:
    """Batches of similar lengths, of trainer.batch_size utterances or trainer.max_batch_seconds of audio;
    with ``weights``, a weighted draw with replacement each epoch (``Task.train_sample_weights``); with
    ``halve_above_samples``, a batch whose longest utterance is longer is cut in two (training only)."""
    return BucketBatchSampler(
        dataset.num_samples,
        batch_size=settings.batch_size,
        max_batch_seconds=settings.max_batch_seconds,
        shuffle=shuffle,
        seed=seed,
        weights=weights,
        halve_above_samples=halve_above_samples,
    )


def split_loader(
    task: Task,
    split: str,
    settings: TrainerSettings,
    device: torch.device,
    seed: int,
    shuffle_seed: int | None = None,
    shard: bool = False,
    hidden_states: HiddenStateSource | None = None,
) -> DataLoader:
    """The task's batches of ``split`` (shuffled on train, with ``shuffle_seed`` or ``seed``).

    ``shard``: this rank's share of the batches (``RankBatchSampler``; with trainer.limit_eval_batches
    applied on dev/test); otherwise every batch of the split. Where ``hidden_states`` has the split, the
    dataset yields indices only (no audio to decode)."""
    training = split == "train"
    dataset: Any = split_dataset(task, split, seed)
    if hidden_states is not None and hidden_states.has(split):
        dataset = hidden_states.index_only(dataset)
    weights = task.train_sample_weights() if training else None
    if weights is not None and len(dataset.utterances) != len(task.utterances(split)):
        # on_too_long=skip left utterances out: keep the weights of the kept ones
        kept = {id(utterance) for utterance in dataset.utterances}
        weights = [w for w, u in zip(weights, task.utterances(split), strict=True) if id(u) in kept]
    sampler: Any = bucket_sampler(
        dataset,
        settings,
        shuffle=training,
        seed=seed if shuffle_seed is None else shuffle_seed,
        weights=weights,
        halve_above_samples=task.halve_batch_above_samples if training else None,
    )
    if shard:
        ranks = rank_info()
        sampler = RankBatchSampler(
            sampler,
            rank=ranks.rank,
            world_size=ranks.world_size,
            equal_shares=training,
            limit=None if training else settings.limit_eval_batches,
        )
    return batch_loader(
        dataset, sampler, SplitCollate(task, split, dataset.utterances), settings, device, seed
    )


class SplitCollate:
    """Picklable collate function for DataLoader workers: the task's collate for one split."""

    def __init__(self, task: Task, split: str, utterances: list) -> None:
        self.task, self.split, self.utterances = task, split, utterances

    def __call__(self, items: list[dict]) -> Batch:
        return self.task.collate(items, self.split, self.utterances)
