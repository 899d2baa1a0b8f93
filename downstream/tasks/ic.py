"""IC: intent classification on Fluent Speech Commands (SUPERB), three slots, accuracy of the whole intent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from downstream.data.corpus import Utterance
from downstream.data.fluent_commands import SLOTS, IntentUtterance, read_fluent_commands
from downstream.metrics.classification import accuracy_percent
from downstream.tasks.base import Batch, Statistics, Task
from downstream.tasks.classification import class_record


class IntentClassification(Task):
    """One utterance-level head output [B, sum of slot sizes], read as one block of logits per slot
    (action, object, location; values in sorted order, taken from the training split).

    Loss: the sum over slots of the cross-entropy of the slot's block (SUPERB's recipe). Prediction: the
    argmax of each block. Metrics (percent): ``acc``, the utterances whose three slots are all right (the
    primary metric), and ``<slot>_acc`` per slot.
    """

    name = "ic"
    metric = "acc"
    higher_is_better = True

    def __init__(self, data_root: str, **options: Any) -> None:
        super().__init__(data_root, **options)
        self._slot_values: list[list[str]] | None = None
        self._slot_ids: list[dict[str, int]] | None = None

    # -- data -------------------------------------------------------------------------------
    def read_split(self, split: str) -> list[Utterance]:
        return read_fluent_commands(self.data_root, split)

    def slot_values(self) -> list[list[str]]:
        """Per slot, the sorted values of the training split (index = class within the slot's block)."""
        if self._slot_values is None:
            train = self.utterances("train")
            self._slot_values = [sorted({utt.intent[slot] for utt in train}) for slot in range(len(SLOTS))]
            self._slot_ids = [
                {value: index for index, value in enumerate(values)} for values in self._slot_values
            ]
        return self._slot_values

    def label_values(self, utterance: IntentUtterance) -> list[tuple[str, str]]:  # type: ignore[override]
        return list(zip(SLOTS, utterance.intent, strict=True))

    def encode(self, utterance: IntentUtterance, split: str) -> tuple[int, ...]:
        self.slot_values()
        assert self._slot_ids is not None
        ids = []
        for slot, value, value_ids in zip(SLOTS, utterance.intent, self._slot_ids, strict=True):
            if value not in value_ids:
                raise ValueError(
                    f"ic: utterance {utterance.described} in the {split} split has {slot} {value!r}, "
                    f"which the training split does not have (it has {sorted(value_ids)})"
                )
            ids.append(value_ids[value])
        return tuple(ids)

    # -- model ------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return sum(len(values) for values in self.slot_values())

    def slot_logits(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """The head output [B, sum of slot sizes] split into one [B, slot size] block per slot."""
        return list(torch.split(logits, [len(values) for values in self.slot_values()], dim=-1))

    def loss(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        targets = torch.tensor(batch["targets"], dtype=torch.long, device=logits.device)
        blocks = self.slot_logits(logits.float())
        return sum(F.cross_entropy(block, targets[:, slot]) for slot, block in enumerate(blocks))

    # -- evaluation -------------------------------------------------------------------------
    def eval_statistics(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> Statistics:
        targets = torch.tensor(batch["targets"], dtype=torch.long)
        predictions = torch.stack([block.argmax(dim=-1).cpu() for block in self.slot_logits(logits)], dim=1)
        right = predictions == targets  # [B, slots]
        statistics = {"correct": right.all(dim=1).sum().item(), "total": len(targets)}
        for slot, name in enumerate(SLOTS):
            statistics[f"{name}_correct"] = right[:, slot].sum().item()
        return statistics

    def output_names(self) -> list[str]:
        """``<slot>=<value>`` for every slot's values, in the head's block order."""
        return [
            f"{slot}={value}"
            for slot, values in zip(SLOTS, self.slot_values(), strict=True)
            for value in values
        ]

    def predictions(
        self,
        logits: torch.Tensor,
        frame_lengths: torch.Tensor,
        num_samples: list[int],
        outputs: list[str],
    ) -> list[dict[str, Any]]:
        """Per utterance: ``label``, the three predicted values joined by '/' (action/object/location);
        ``slots``: slot -> predicted value (the argmax of its block, as the accuracy counts it);
        ``probabilities``: slot -> value -> softmax probability within the slot's block."""
        blocks: dict[str, list[int]] = {}
        for index, name in enumerate(outputs):
            blocks.setdefault(name.split("=", 1)[0], []).append(index)
        records = []
        for row in logits.float().cpu():
            slots, probabilities = {}, {}
            for slot, columns in blocks.items():
                names = [outputs[column].split("=", 1)[1] for column in columns]
                block = class_record(row[columns], names)
                slots[slot], probabilities[slot] = block["label"], block["probabilities"]
            records.append(
                {"label": "/".join(slots.values()), "slots": slots, "probabilities": probabilities}
            )
        return records

    def metrics(self, statistics: Mapping[str, Any]) -> dict[str, float]:
        total = statistics["total"]
        metrics = {"acc": accuracy_percent(statistics["correct"], total)}
        for name in SLOTS:
            metrics[f"{name}_acc"] = accuracy_percent(statistics[f"{name}_correct"], total)
        return metrics
