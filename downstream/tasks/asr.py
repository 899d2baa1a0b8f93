"""ASR: character CTC on LibriSpeech (SUPERB), BiLSTM head, SpecAugment on the features, WER without an LM."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from downstream.data.corpus import Utterance
from downstream.data.librispeech import read_librispeech
from downstream.metrics.edit import edit_statistics, error_rate_percent
from downstream.tasks.base import Statistics
from downstream.tasks.ctc import CTCTask, normalised_characters

WORD_BOUNDARY = "|"


class SpeechRecognition(CTCTask):
    """Characters A-Z, apostrophe and the word boundary '|'; WER over words, CER over the characters of
    the normalised text (``normalised_characters``: words joined by single spaces, as jiwer's cer)."""

    name = "asr"
    metric = "wer"
    higher_is_better = False

    def __init__(
        self,
        data_root: str,
        spec_augment: Mapping[str, Any] | None = None,
        train_split: str = "train-clean-100",
        dev_split: str = "dev-clean",
        test_split: str = "test-clean",
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
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

    def sequence_statistics(self, references: list[list[str]], hypotheses: list[list[str]]) -> Statistics:
        """Word edits (``edits``/``reference_units``) and character edits (``char_edits``/``reference_chars``)
        over ``normalised_characters`` (one space between words; stray boundary tokens do not count)."""
        char_edits, chars = edit_statistics(
            [normalised_characters(r, WORD_BOUNDARY) for r in references],
            [normalised_characters(h, WORD_BOUNDARY) for h in hypotheses],
        )
        return {
            **super().sequence_statistics(references, hypotheses),
            "char_edits": char_edits,
            "reference_chars": chars,
        }

    def metrics(self, statistics: Mapping[str, float]) -> dict[str, float]:
        return {
            "wer": error_rate_percent(statistics["edits"], statistics["reference_units"]),
            "cer": error_rate_percent(statistics["char_edits"], statistics["reference_chars"]),
        }
