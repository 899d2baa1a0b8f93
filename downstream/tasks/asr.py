"""ASR: character CTC on LibriSpeech (SUPERB), BiLSTM head, SpecAugment on the features, WER without an LM."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from downstream.augment import spec_augment
from downstream.data.corpus import Utterance
from downstream.data.librispeech import read_librispeech
from downstream.metrics import ctc_greedy_decode, edit_statistics, error_rate_percent
from downstream.tasks.ctc import CTCTask

WORD_BOUNDARY = "|"


class SpeechRecognition(CTCTask):
    """Characters A-Z, apostrophe and the word boundary '|'; WER over words, CER over characters."""

    name = "asr"
    metric = "wer"
    higher_is_better = False

    def __init__(
        self,
        data_root: str,
        head: Mapping[str, Any],
        schedules: Mapping[str, Any],
        spec_augment: Mapping[str, int] | None = None,
        train_split: str = "train-clean-100",
        dev_split: str = "dev-clean",
        test_split: str = "test-clean",
        **options: Any,
    ) -> None:
        super().__init__(data_root, head, schedules, **options)
        self.spec_augment = dict(spec_augment) if spec_augment else None
        self.splits = {"train": train_split, "dev": dev_split, "test": test_split}

    def read_split(self, split: str) -> list[Utterance]:
        return read_librispeech(self.data_root, self.splits[split])

    def tokens(self) -> list[str]:
        return [WORD_BOUNDARY, "'", *string.ascii_uppercase]

    def tokenize(self, utterance: Utterance, split: str) -> list[str]:
        return list(WORD_BOUNDARY.join((utterance.text or "").upper().split()))

    def error_units(self, tokens: Sequence[str]) -> list[str]:
        return "".join(tokens).replace(WORD_BOUNDARY, " ").split()

    def augment(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.spec_augment:
            return features
        return spec_augment(features, lengths, **self.spec_augment)

    def eval_statistics(
        self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: dict[str, Any]
    ) -> dict[str, float]:
        hypotheses = [self.decode(ids) for ids in ctc_greedy_decode(logits, frame_lengths)]
        references = [self.decode(ids) for ids in batch["targets"]]
        word_edits, words = edit_statistics(
            [self.error_units(r) for r in references], [self.error_units(h) for h in hypotheses]
        )
        char_edits, chars = edit_statistics(references, hypotheses)
        return {
            "edits": word_edits,
            "reference_units": words,
            "char_edits": char_edits,
            "reference_chars": chars,
        }

    def metrics(self, statistics: Mapping[str, float]) -> dict[str, float]:
        return {
            "wer": error_rate_percent(statistics["edits"], statistics["reference_units"]),
            "cer": error_rate_percent(statistics["char_edits"], statistics["reference_chars"]),
        }
