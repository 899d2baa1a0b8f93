"""The task contract: a task is a dataset + a head + a loss + a metric, driven by the one trainer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra.utils
import torch
from torch import nn

from downstream.data.corpus import Utterance
from downstream.data.dataset import collate_wavs

SPLITS = ("train", "dev", "test")

#: One batch's evaluation statistics: numbers (counts, edit distances) or lists of per-utterance records.
Statistics = Mapping[str, float | list]


def accumulate_statistics(totals: dict[str, Any], statistics: Statistics) -> dict[str, Any]:
    """Fold one batch's (or one rank's) evaluation statistics into ``totals`` and return it.

    Numbers add up, so corpus-level rates are exact (sum of edits / sum of reference units). Lists
    concatenate: a task whose metric is not a sum over batches (SV's equal error rate over trials) returns
    per-utterance records, and its ``metrics`` computes the metric from all of them. Across ranks, merge
    the ranks' totals with this same function (or all-reduce the numbers and all-gather the lists).
    """
    for key, value in statistics.items():
        if isinstance(value, list):
            totals.setdefault(key, []).extend(value)
        elif isinstance(totals.get(key), list):
            raise TypeError(f"evaluation statistic {key!r} is a list in one batch and a number in another")
        else:
            totals[key] = totals.get(key, 0.0) + value
    return totals


class Task:
    """Base class of every downstream task.

    Subclasses set ``name``, ``metric`` (the primary metric's key), ``higher_is_better`` and
    implement ``read_split`` (corpus split -> utterances), ``encode`` (utterance -> training target),
    ``num_outputs``, ``loss``, ``eval_statistics`` (one batch's statistics: additive counts, or lists of
    per-utterance records; see ``accumulate_statistics``) and ``metrics`` (accumulated statistics ->
    metrics in percent). The trainer only ever calls the public methods below.
    """

    name: str = "task"
    metric: str = "loss"
    higher_is_better: bool = False
    #: Random crop length of training utterances in seconds (None: whole utterances).
    train_crop_seconds: float | None = None

    def __init__(
        self,
        data_root: str,
        head: Mapping[str, Any],
        schedules: Mapping[str, Any],
        max_seconds: float | None = None,
        on_too_long: str = "crop",
    ) -> None:
        """``max_seconds``: utterances longer than this are cropped to a random window or skipped
        (``on_too_long``: crop | skip); either way they are counted and logged."""
        self.data_root = str(data_root)
        self.max_seconds = max_seconds
        self.on_too_long = on_too_long
        self.head_config = dict(head)
        self.schedules = {name: dict(values) for name, values in schedules.items()}
        self._utterances: dict[str, list[Utterance]] = {}
        self._targets: dict[str, dict[str, Any]] = {}

    # -- data -------------------------------------------------------------------------------
    def read_split(self, split: str) -> list[Utterance]:
        raise NotImplementedError

    def encode(self, utterance: Utterance, split: str) -> Any:
        raise NotImplementedError

    def check_data(self) -> None:
        """Read every split now, so a bad corpus fails before training with a clear message."""
        for split in SPLITS:
            self.utterances(split)

    def utterances(self, split: str) -> list[Utterance]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._utterances:
            utterances = self.read_split(split)
            if not utterances:
                raise ValueError(f"{self.name}: the {split} split under {self.data_root} has no utterances")
            # stored before encoding: encoders may derive their label set from the training split
            self._utterances[split] = utterances
            self._targets[split] = {utterance.id: self.encode(utterance, split) for utterance in utterances}
        return self._utterances[split]

    def collate(self, items: list[dict], split: str, utterances: list[Utterance]) -> dict[str, Any]:
        """Pad the waveforms and attach the targets; item indices point into ``utterances``."""
        batch = collate_wavs(items)
        targets = self._targets[split]
        batch["targets"] = [targets[utterances[index].id] for index in batch["indices"].tolist()]
        return batch

    # -- model ------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        raise NotImplementedError

    def build_head(self, input_size: int, head_config: Mapping[str, Any] | None = None) -> nn.Module:
        """The head from ``head_config`` (default: the task config's ``head``), sized by the interface's
        output_size and the task's number of outputs."""
        config = self.head_config if head_config is None else head_config
        return hydra.utils.instantiate(config, input_size=input_size, num_outputs=self.num_outputs)

    def augment(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Training-time feature augmentation (identity unless a task overrides it)."""
        return features

    def loss(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    # -- evaluation -------------------------------------------------------------------------
    def eval_statistics(
        self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: dict[str, Any]
    ) -> Statistics:
        raise NotImplementedError

    def metrics(self, statistics: Mapping[str, Any]) -> dict[str, float]:
        raise NotImplementedError
