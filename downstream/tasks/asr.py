"""ASR: character CTC on LibriSpeech (SUPERB), BiLSTM head, SpecAugment on the features, WER without an LM."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from downstream.data.corpus import Utterance, check_choice
from downstream.data.librispeech import read_librispeech
from downstream.metrics.edit import edit_statistics, error_rate_percent
from downstream.tasks.base import Statistics
from downstream.tasks.ctc import CTCTask, normalised_characters

WORD_BOUNDARY = "|"
#: fairseq's end-of-sentence symbol (s3prl ``downstream/asr/fairseq_dictionary.py``: <s>=0 the CTC blank, <pad>,
#: </s>, <unk>, then ``downstream/asr/char.dict`` in its order of frequency)
EOS = "</s>"
S3PRL_CHAR_DICT = tuple("|ETAONIHSRDLUMCWFGYPBVK'XJQZ")
#: ``vocabulary``: ``s3prl`` is the blank, <pad>, </s>, <unk> and char.dict's 28 characters; ``plain`` the blank,
#: '|', the apostrophe and A-Z.
VOCABULARIES = ("s3prl", "plain")


class SpeechRecognition(CTCTask):
    """Characters A-Z, apostrophe and the word boundary '|'; WER over words, CER over the characters of
    the normalised text (``normalised_characters``: words joined by single spaces, as jiwer's cer).

    ``vocabulary`` (``VOCABULARIES``) picks the output inventory; ``target_eos`` ends every target with '|' and
    '</s>' as s3prl's ASR dataset does (``downstream/asr/dataset.py:118-121``: characters '|'-separated plus a
    trailing '|', and fairseq's ``encode_line`` appends </s>, ``fairseq_dictionary.py:420-445``); </s> is not
    scored (fairseq's ``string`` leaves it out) and the trailing '|' ends the last word.
    """

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
        vocabulary: str = "plain",
        target_eos: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        check_choice("task (asr)", "vocabulary", vocabulary, VOCABULARIES)
        self.vocabulary_kind = vocabulary
        self.target_eos = bool(target_eos)
        self.unscored_tokens = frozenset([EOS])
        self.spec_augment = dict(spec_augment) if spec_augment else None
        self.splits = {"train": train_split, "dev": dev_split, "test": test_split}

    def read_split(self, split: str) -> list[Utterance]:
        return read_librispeech(self.data_root, self.splits[split])

    def tokens(self) -> list[str]:
        if self.vocabulary_kind == "s3prl":
            return ["<pad>", EOS, "<unk>", *S3PRL_CHAR_DICT]
        return [WORD_BOUNDARY, "'", *string.ascii_uppercase, *([EOS] if self.target_eos else [])]

    def tokenize(self, utterance: Utterance, split: str) -> list[str]:
        characters = list(WORD_BOUNDARY.join((utterance.text or "").upper().split()))
        if self.target_eos and characters:
            return [*characters, WORD_BOUNDARY, EOS]
        return characters

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
