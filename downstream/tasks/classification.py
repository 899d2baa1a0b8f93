"""Utterance classification (SID, ER): one label per utterance, cross-entropy, accuracy."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from downstream.data.corpus import Utterance
from downstream.metrics.classification import accuracy_percent
from downstream.tasks.base import Task


class ClassificationTask(Task):
    """Logits [B, C] against integer labels; ``labels`` lists the classes (index = class id)."""

    metric = "acc"
    higher_is_better = True

    @abstractmethod
    def labels(self) -> list[str]:
        """The class names; the index of a name is its class id (the head's output position)."""

    @property
    def num_outputs(self) -> int:
        return len(self.labels())

    def encode(self, utterance: Utterance, split: str) -> int:
        label_ids = getattr(self, "_label_ids", None)
        if label_ids is None:
            label_ids = self._label_ids = {label: index for index, label in enumerate(self.labels())}
        if utterance.label not in label_ids:
            raise ValueError(
                f"{self.name}: utterance {utterance.described} in the {split} split has label "
                f"{utterance.label!r}, which the training split does not have"
            )
        return label_ids[utterance.label]

    def label_values(self, utterance: Utterance) -> list[tuple[str, str]]:
        return [("label", str(utterance.label))]

    def loss(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        targets = torch.tensor(batch["targets"], dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits.float(), targets)

    def eval_statistics(
        self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: dict[str, Any]
    ) -> dict[str, float]:
        targets = torch.tensor(batch["targets"], dtype=torch.long)
        correct = (logits.argmax(dim=-1).cpu() == targets).sum().item()
        return {"correct": correct, "total": len(targets)}

    def metrics(self, statistics: Mapping[str, float]) -> dict[str, float]:
        return {"acc": accuracy_percent(statistics["correct"], statistics["total"])}

    def output_names(self) -> list[str]:
        return list(self.labels())

    def predictions(
        self,
        logits: torch.Tensor,
        frame_lengths: torch.Tensor,
        num_samples: list[int],
        outputs: list[str],
    ) -> list[dict[str, Any]]:
        """``label``: the argmax class (as the accuracy counts it); ``probabilities``: class -> softmax
        probability of the logits [B, C]."""
        return [class_record(row, outputs) for row in logits.float().cpu()]


def class_record(logits: torch.Tensor, names: list[str]) -> dict[str, Any]:
    """{label: names[argmax], probabilities: {name: softmax probability}} of one row of logits [C]."""
    probabilities = torch.softmax(logits, dim=-1).tolist()
    return {
        "label": names[int(logits.argmax())],
        "probabilities": dict(zip(names, probabilities, strict=True)),
    }
