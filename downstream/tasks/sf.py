"""SF: end-to-end slot filling on Audio SNIPS (SUPERB): CTC over characters and slot tokens, BiLSTM head,
SpecAugment, slot-type F1 and slot-value CER."""

from __future__ import annotations

import logging
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from downstream.data.snips import SlotUtterance, read_snips, slot_types
from downstream.metrics.edit import edit_statistics, error_rate_percent
from downstream.metrics.slot_filling import (
    WORD_SPACE,
    begin_token,
    end_token,
    is_slot_token,
    parse_slots,
    slot_metrics,
    slot_statistics,
    slot_target_tokens,
    tagged_transcript,
)
from downstream.tasks.base import Statistics
from downstream.tasks.ctc import CTCTask

logger = logging.getLogger(__name__)

#: Word tokens s3prl's encoder leaves out (with their tags), and its replacements (s3prl
#: problem/asr/superb_sf.py: '&' -> AND, accented capitals -> plain ones, '"' -> space).
PUNCTUATION_WORDS = frozenset(["?", "!", ".", ",", ";", "-", "–", "…"])
CHARACTER_MAP = str.maketrans('ÁÃÄÅÆÇÈÉÊËÍÏÐÒÓÔÖØÚÛĘŃŌŞŪ"', "AAAAACEEEEIIDOOOOOUUENOSU ")
ALPHABET = frozenset(string.ascii_uppercase + "'")


def normalise_words(words: Sequence[str], tags: Sequence[str]) -> tuple[list[str], list[str], Counter]:
    """(words, tags, characters left out) as the target spells them: punctuation-only words are left out with
    their tags, '&' becomes AND, accented capitals their plain letter, other characters outside A-Z and the
    apostrophe are left out (a word left empty goes with its tag)."""
    kept_words, kept_tags, dropped = [], [], Counter()
    for word, tag in zip(words, tags, strict=True):
        if word in PUNCTUATION_WORDS:
            continue
        word = "AND" if word == "&" else word.upper().translate(CHARACTER_MAP)
        dropped.update(char for char in word if char not in ALPHABET and not char.isspace())
        for part in word.split():
            part = "".join(char for char in part if char in ALPHABET)
            if part:
                kept_words.append(part)
                kept_tags.append(tag)
    return kept_words, kept_tags, dropped


class SlotFilling(CTCTask):
    """Frame logits [B, T, V] over the blank, ' ', the apostrophe, A-Z and a ``B-<type>``/``E-<type>`` pair per
    slot type of the corpus (s3prl's character-slot encoder, ``downstream.metrics.slot_filling``); CTC; greedy
    decoding. Metrics (percent): ``slot_type_f1`` (primary, chosen on dev as in s3prl), ``slot_value_cer``,
    and ``wer`` of the transcript with the slot tokens removed.

    Transcripts are normalised as s3prl does: words that are only punctuation are left out with their tags,
    '&' becomes AND, accented capitals their plain letter; any other character outside the alphabet is left
    out and counted in the log. ``speakers``: optional {train, dev, test} -> voices overriding SUPERB's split.
    """

    name = "sf"
    metric = "slot_type_f1"
    higher_is_better = True

    def __init__(
        self,
        data_root: str,
        spec_augment: Mapping[str, Any] | None = None,
        speakers: Mapping[str, Sequence[str]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        self.spec_augment = dict(spec_augment) if spec_augment else None
        unknown = sorted(set(speakers or {}) - {"train", "dev", "test"})
        if unknown:
            raise ValueError(f"task.speakers has keys {unknown}; it takes train, dev and test")
        self.speakers = {split: list(names) for split, names in (speakers or {}).items()}

    def read_split(self, split: str) -> list[SlotUtterance]:
        utterances = read_snips(self.data_root, split, self.speakers.get(split))
        dropped: Counter = Counter()
        for utterance in utterances:
            dropped.update(normalise_words(utterance.words, utterance.tags)[2])
        if dropped:
            logger.warning(
                "sf: %d character(s) outside the alphabet left out of the %s targets: %s",
                sum(dropped.values()),
                split,
                ", ".join(f"{char!r} x{count}" for char, count in dropped.most_common(10)),
            )
        return utterances

    def tokens(self) -> list[str]:
        slots = slot_types(self.data_root)
        return [
            WORD_SPACE,
            "'",
            *string.ascii_uppercase,
            *(t(s) for s in slots for t in (begin_token, end_token)),
        ]

    def tokenize(self, utterance: SlotUtterance, split: str) -> list[str]:
        words, tags, _ = normalise_words(utterance.words, utterance.tags)
        return slot_target_tokens(words, tags)

    def sequence_statistics(self, references: list[list[str]], hypotheses: list[list[str]]) -> Statistics:
        """Slot statistics (``downstream.metrics.slot_filling.slot_statistics``) of the tagged transcripts, and word
        edits of the transcripts without slot tokens."""
        reference_texts = [tagged_transcript(tokens) for tokens in references]
        hypothesis_texts = [tagged_transcript(tokens) for tokens in hypotheses]
        edits, words = edit_statistics(
            [[w for w in text.split() if not is_slot_token(w)] for text in reference_texts],
            [[w for w in text.split() if not is_slot_token(w)] for text in hypothesis_texts],
        )
        return {
            **slot_statistics(reference_texts, hypothesis_texts),
            "word_edits": edits,
            "reference_words": words,
        }

    def hypothesis_record(self, tokens: list[str]) -> dict[str, Any]:
        """``hypothesis``: the tagged transcript ('GO B-city ROME E-city'); ``text``: its words without slot
        tokens; ``slots``: slot type -> its values in order (``parse_slots``, as the metric reads them)."""
        tagged = tagged_transcript(tokens)
        return {
            "hypothesis": tagged,
            "text": " ".join(word for word in tagged.split() if not is_slot_token(word)),
            "slots": parse_slots(tagged),
        }

    def metrics(self, statistics: Mapping[str, float]) -> dict[str, float]:
        return {
            **slot_metrics(statistics),
            "wer": error_rate_percent(statistics["word_edits"], statistics["reference_words"]),
        }
