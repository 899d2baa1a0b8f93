"""Sequence tasks trained with CTC and decoded greedily (PR over phones, ASR over characters)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from downstream.augment import spec_augment
from downstream.data.corpus import Utterance
from downstream.metrics import ctc_greedy_decode, edit_statistics, error_rate_percent
from downstream.tasks.base import Batch, Statistics, Task

BLANK = "<blank>"


class CTCTask(Task):
    """Frame logits [B, T, V] against token sequences with CTC (blank = index 0).

    Subclasses define ``tokens`` (the vocabulary without the blank), ``tokenize`` (utterance ->
    token strings) and ``error_units`` (token strings -> the units the error rate counts: phones for
    PER, words for WER).
    """

    #: SpecAugment of the interface's features in training (``downstream.augment.spec_augment`` keyword
    #: arguments; None: off). ASR and ML-SUPERB set it from their config.
    spec_augment: dict[str, int] | None = None

    def __init__(self, data_root: str, **options: Any) -> None:
        super().__init__(data_root, **options)
        self._vocabulary: list[str] | None = None
        self._token_ids: dict[str, int] | None = None

    # -- vocabulary -------------------------------------------------------------------------
    @abstractmethod
    def tokens(self) -> list[str]:
        """The vocabulary without the blank; token i + 1 is output i + 1 of the head (0 is the blank)."""

    @abstractmethod
    def tokenize(self, utterance: Utterance, split: str) -> list[str]:
        """The target of ``utterance`` as tokens of ``tokens()``."""

    def error_units(self, tokens: Sequence[str]) -> list[str]:
        return list(tokens)

    @property
    def vocabulary(self) -> list[str]:
        if self._vocabulary is None:
            self._vocabulary = [BLANK, *self.tokens()]
            self._token_ids = {token: index for index, token in enumerate(self._vocabulary)}
        return self._vocabulary

    @property
    def num_outputs(self) -> int:
        return len(self.vocabulary)

    def encode(self, utterance: Utterance, split: str) -> list[int]:
        self.vocabulary  # noqa: B018 - builds the token table on first use
        assert self._token_ids is not None
        ids = []
        for token in self.tokenize(utterance, split):
            if token not in self._token_ids:
                raise ValueError(
                    f"{self.name}: token {token!r} of utterance {utterance.id} is not in the vocabulary"
                )
            ids.append(self._token_ids[token])
        return ids

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.vocabulary[index] for index in ids]

    # -- training ---------------------------------------------------------------------------
    def augment(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """SpecAugment of features [B, T, D'] when ``spec_augment`` is set, else identity."""
        if not self.spec_augment:
            return features
        return spec_augment(features, lengths, **self.spec_augment)

    def loss(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        targets = batch["targets"]
        target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
        flat_targets = torch.tensor([i for t in targets for i in t], dtype=torch.long)
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
        return F.ctc_loss(
            log_probs,
            flat_targets.to(logits.device),
            frame_lengths,
            target_lengths.to(logits.device),
            blank=0,
            reduction="mean",
            zero_infinity=True,
        )

    # -- evaluation -------------------------------------------------------------------------
    def eval_statistics(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> Statistics:
        """Greedy CTC decoding of ``logits`` [B, T, V] (once), then ``sequence_statistics``."""
        hypotheses = [self.decode(ids) for ids in ctc_greedy_decode(logits, frame_lengths)]
        references = [self.decode(ids) for ids in batch["targets"]]
        return self.sequence_statistics(references, hypotheses)

    def sequence_statistics(self, references: list[list[str]], hypotheses: list[list[str]]) -> Statistics:
        """Statistics of decoded token sequences: ``edits`` and ``reference_units``, counted in
        ``error_units`` (the metric is 100 * edits / reference_units)."""
        edits, length = edit_statistics(
            [self.error_units(r) for r in references], [self.error_units(h) for h in hypotheses]
        )
        return {"edits": edits, "reference_units": length}

    def metrics(self, statistics: Mapping[str, float]) -> dict[str, float]:
        return {self.metric: error_rate_percent(statistics["edits"], statistics["reference_units"])}
