"""SF: end-to-end slot filling on Audio SNIPS (SUPERB): CTC over characters and slot tokens, BiLSTM head,
SpecAugment, slot-type F1 and slot-value CER."""

from __future__ import annotations

import logging
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from downstream.data.corpus import check_choice
from downstream.data.snips import SlotUtterance, read_snips, slot_tag_mapping, slot_types
from downstream.metrics.edit import edit_statistics, error_rate_percent
from downstream.metrics.slot_filling import (
    OUTSIDE,
    SLOT_PARSERS,
    WORD_SPACE,
    begin_token,
    end_token,
    is_slot_token,
    parse_slots,
    parse_slots_s3prl,
    s3prl_slot_text,
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
#: s3prl's end-of-sentence and unknown-character tokens (``ctc/text.py:95-126``)
EOS = "<eos>"
UNK = "<unk>"
#: ``text_normalisation``: ``s3prl`` is s3prl's CharacterTextSlotEncoder.encode (``s3prl_slot_tokens``);
#: ``project`` is ``normalise_words`` (accents folded, other characters left out, counted in the log).
TEXT_NORMALISATIONS = ("s3prl", "project")
#: s3prl's skip rule is ``word in "?!.,;-"``: a substring test, so "", ",;" or "!." are skipped too.
S3PRL_SKIPPED = "?!.,;-"


def s3prl_slot_tokens(words: Sequence[str], tags: Sequence[str], eos: bool) -> list[str]:
    """The CTC target of s3prl's ``CharacterTextSlotEncoder.encode`` (``downstream/ctc/text.py:106-126``): a word
    that is a substring of "?!.,;-" is skipped, '&' becomes AND, a character outside ' ', A-Z and the apostrophe
    becomes ``<unk>``; ``B-<type>``/``E-<type>`` around a slot as decided on the unskipped word list; after each
    kept word ' ', or ``<eos>`` (``eos``) after the file's last word (none when that word is skipped, as in
    s3prl). Raises ValueError when the lengths differ."""
    if len(words) != len(tags):
        raise ValueError(f"s3prl_slot_tokens: {len(words)} words but {len(tags)} tags")
    tokens: list[str] = []
    last = len(words) - 1
    for position, (word, tag) in enumerate(zip(words, tags, strict=True)):
        if word in S3PRL_SKIPPED:
            continue
        word = "AND" if word == "&" else word
        if tag != OUTSIDE and (position == 0 or tags[position - 1] != tag):
            tokens.append(begin_token(tag))
        tokens.extend(char if char in ALPHABET or char == WORD_SPACE else UNK for char in word)
        if tag != OUTSIDE and (position == last or tags[position + 1] != tag):
            tokens.append(end_token(tag))
        if position != last:
            tokens.append(WORD_SPACE)
        elif eos:
            tokens.append(EOS)
    return tokens


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
    out and counted in the log (``text_normalisation=project``), or as s3prl's encoder does
    (``text_normalisation=s3prl``, ``s3prl_slot_tokens``: no upper-casing or accent folding, unknown characters
    become ``<unk>``). ``target_eos`` ends every target with ``<eos>`` (not scored); ``slot_parser``
    (``SLOT_PARSERS``) picks how slots are read from the decoded output. ``speakers``: optional {train, dev,
    test} -> voices overriding SUPERB's split.
    """

    name = "sf"
    metric = "slot_type_f1"
    higher_is_better = True

    def __init__(
        self,
        data_root: str,
        spec_augment: Mapping[str, Any] | None = None,
        speakers: Mapping[str, Sequence[str]] | None = None,
        text_normalisation: str = "project",
        target_eos: bool = False,
        slot_parser: str = "tokens",
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        check_choice("task (sf)", "text_normalisation", text_normalisation, TEXT_NORMALISATIONS)
        check_choice("task (sf)", "slot_parser", slot_parser, SLOT_PARSERS)
        self.text_normalisation = text_normalisation
        self.target_eos = bool(target_eos)
        self.slot_parser = slot_parser
        self.unscored_tokens = frozenset([EOS])
        self.spec_augment = dict(spec_augment) if spec_augment else None
        unknown = sorted(set(speakers or {}) - {"train", "dev", "test"})
        if unknown:
            raise ValueError(f"task.speakers has keys {unknown}; it takes train, dev and test")
        self.speakers = {split: list(names) for split, names in (speakers or {}).items()}

    def read_split(self, split: str) -> list[SlotUtterance]:
        utterances = read_snips(self.data_root, split, self.speakers.get(split))
        dropped: Counter = Counter()
        for utterance in utterances if self.text_normalisation == "project" else []:
            dropped.update(normalise_words(utterance.words, utterance.tags)[2])
        if dropped:
            logger.warning(
                "sf: %d character(s) outside the alphabet left out of the %s targets: %s",
                sum(dropped.values()),
                split,
                ", ".join(f"{char!r} x{count}" for char, count in dropped.most_common(10)),
            )
        return utterances

    def review_targets(self, split: str) -> tuple[dict[str, Any], set[str]]:
        """Empty transcripts as every CTC task, and (every split) the IOB/BIO/BIOES tags the reader mapped
        to bare slot types (``slot_tags``: how many tag names, the mapping)."""
        records, leave_out = super().review_targets(split)
        mapping = slot_tag_mapping(self.data_root)
        records["slot_tags"] = {
            "count": len(mapping),
            "policy": "IOB-style tags mapped to bare slot types" if mapping else "bare slot types",
            "mapping": mapping,
        }
        return records, leave_out

    def label_values(self, utterance: SlotUtterance) -> list[tuple[str, str]]:  # type: ignore[override]
        return [("intent", utterance.intent), *(("slot type", tag) for tag in utterance.tags if tag != "O")]

    def tokens(self) -> list[str]:
        slots = slot_types(self.data_root)
        return [
            WORD_SPACE,
            "'",
            *string.ascii_uppercase,
            *(t(s) for s in slots for t in (begin_token, end_token)),
            *([EOS] if self.target_eos else []),
            *([UNK] if self.text_normalisation == "s3prl" else []),
        ]

    def tokenize(self, utterance: SlotUtterance, split: str) -> list[str]:
        if self.text_normalisation == "s3prl":
            return s3prl_slot_tokens(utterance.words, utterance.tags, self.target_eos)
        words, tags, _ = normalise_words(utterance.words, utterance.tags)
        return [*slot_target_tokens(words, tags), *([EOS] if self.target_eos else [])]

    def sequence_statistics(self, references: list[list[str]], hypotheses: list[list[str]]) -> Statistics:
        """Slot statistics (``downstream.metrics.slot_filling.slot_statistics`` with ``slot_parser``: of s3prl's
        decoded strings or of the tagged transcripts), and word edits of the transcripts without slot tokens."""
        reference_texts = [tagged_transcript(tokens) for tokens in references]
        hypothesis_texts = [tagged_transcript(tokens) for tokens in hypotheses]
        edits, words = edit_statistics(
            [[w for w in text.split() if not is_slot_token(w)] for text in reference_texts],
            [[w for w in text.split() if not is_slot_token(w)] for text in hypothesis_texts],
        )
        if self.slot_parser == "s3prl":
            reference_texts = [s3prl_slot_text(tokens) for tokens in references]
            hypothesis_texts = [s3prl_slot_text(tokens) for tokens in hypotheses]
        return {
            **slot_statistics(reference_texts, hypothesis_texts, self.slot_parser),
            "word_edits": edits,
            "reference_words": words,
        }

    def hypothesis_record(self, tokens: list[str]) -> dict[str, Any]:
        """``hypothesis``: the tagged transcript ('GO B-city ROME E-city'); ``text``: its words without slot
        tokens; ``slots``: slot type -> its values in order, as the metric reads them (``slot_parser``:
        ``parse_slots_s3prl`` of s3prl's decoded string, or ``parse_slots``)."""
        tagged = tagged_transcript(tokens)
        slots = (
            parse_slots_s3prl(s3prl_slot_text(tokens), clean_values=True)
            if self.slot_parser == "s3prl"
            else parse_slots(tagged)
        )
        return {
            "hypothesis": tagged,
            "text": " ".join(word for word in tagged.split() if not is_slot_token(word)),
            "slots": slots,
        }

    def metrics(self, statistics: Mapping[str, float]) -> dict[str, float]:
        return {
            **slot_metrics(statistics),
            "wer": error_rate_percent(statistics["word_edits"], statistics["reference_words"]),
        }
