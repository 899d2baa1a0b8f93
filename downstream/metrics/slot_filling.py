"""Slot filling (SUPERB SF): tagged transcripts, the CTC target built from them, and SUPERB's two metrics.

A tagged transcript is the word sequence with a begin token ``B-<type>`` before the first word and an
end token ``E-<type>`` after the last word of every slot, e.g. ``PLAY B-artist JOHN LENNON E-artist``
(s3prl ``downstream/ctc/text.py``, CharacterTextSlotEncoder; consecutive words with the same tag are one
slot). The CTC target spells it in characters with each slot token as one symbol.

Metrics, as s3prl ``downstream/ctc/metric.py`` defines them for SUPERB (reported in percent):

- **slot-type F1**: per utterance, precision and recall of the *set* of slot types in the hypothesis
  against the reference, F1 = 2PR / (P + R) (1 when both have no slot, 0 when only one has none); the mean
  over utterances.
- **slot-value CER**: for every reference slot value, the hypothesis value of the same type with the lowest
  CER (the first such on ties; the empty string when the hypothesis has no slot of that type); the
  character edit distance summed over these pairs divided by the summed reference value lengths (spaces
  count as characters).

A slot in a transcript is a ``B-<type>`` token, then at least one word, then the first ``E-<type>`` of the
same type; other tag tokens inside are dropped from the value, and an unmatched ``B-`` is ignored. s3prl
finds slots with the regular expression ``B-(\\S+) (.+?) E-\\1``, which agrees with this except on
hypotheses where a type name is a prefix of another (``E-playlist_owner`` closes ``B-playlist`` there) or a
slot is empty (there the value runs to the next end token and keeps it). The statistics are additive over
batches and ranks (``slot_statistics``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import editdistance

from downstream.metrics.edit import error_rate_percent

OUTSIDE = "O"
BEGIN = "B-"
END = "E-"
WORD_SPACE = " "


def begin_token(slot_type: str) -> str:
    return BEGIN + slot_type


def end_token(slot_type: str) -> str:
    return END + slot_type


def is_slot_token(token: str) -> bool:
    return len(token) > 2 and token[:2] in (BEGIN, END)


def tagged_words(words: Sequence[str], tags: Sequence[str]) -> list[str]:
    """Words with the slot tokens inserted: ``B-<type>`` before a slot's first word, ``E-<type>`` after
    its last. ``tags`` has one entry per word, 'O' or the word's slot type. Raises ValueError when the
    lengths differ."""
    if len(words) != len(tags):
        raise ValueError(f"tagged_words: {len(words)} words but {len(tags)} tags")
    tagged: list[str] = []
    for position, (word, tag) in enumerate(zip(words, tags, strict=True)):
        if tag != OUTSIDE and (position == 0 or tags[position - 1] != tag):
            tagged.append(begin_token(tag))
        tagged.append(word)
        if tag != OUTSIDE and (position == len(words) - 1 or tags[position + 1] != tag):
            tagged.append(end_token(tag))
    return tagged


def slot_target_tokens(words: Sequence[str], tags: Sequence[str]) -> list[str]:
    """The CTC target of s3prl's character-slot encoder: each word spelt in characters, ' ' between
    words, a slot's ``B-<type>`` right before its first character and ``E-<type>`` right after its last.
    ``tagged_transcript`` turns it (or a decoded hypothesis) back into a tagged transcript. Raises
    ValueError when the lengths differ."""
    if len(words) != len(tags):
        raise ValueError(f"slot_target_tokens: {len(words)} words but {len(tags)} tags")
    tokens: list[str] = []
    last = len(words) - 1
    for position, (word, tag) in enumerate(zip(words, tags, strict=True)):
        if tag != OUTSIDE and (position == 0 or tags[position - 1] != tag):
            tokens.append(begin_token(tag))
        tokens.extend(word)
        if tag != OUTSIDE and (position == last or tags[position + 1] != tag):
            tokens.append(end_token(tag))
        if position != last:
            tokens.append(WORD_SPACE)
    return tokens


def tagged_transcript(tokens: Sequence[str]) -> str:
    """A token sequence (characters, ' ' and slot tokens) as a tagged transcript: slot tokens become
    space-separated words, runs of spaces collapse. E.g. ['G','O',' ','B-city','R','O','M','E','E-city']
    -> 'GO B-city ROME E-city'."""
    text = "".join(f" {token} " if is_slot_token(token) else token for token in tokens)
    return " ".join(text.split())


def parse_slots(transcript: str) -> dict[str, list[str]]:
    """Slot type -> its values in order of appearance (see the module docstring for what a slot is)."""
    items = transcript.split()
    slots: dict[str, list[str]] = {}
    position = 0
    while position < len(items):
        item = items[position]
        if item.startswith(BEGIN) and is_slot_token(item):
            slot_type = item[len(BEGIN) :]
            closing = next(
                (later for later in range(position + 1, len(items)) if items[later] == end_token(slot_type)),
                None,
            )
            if closing is not None:
                value = [word for word in items[position + 1 : closing] if not is_slot_token(word)]
                if value:
                    slots.setdefault(slot_type, []).append(" ".join(value))
                    position = closing + 1
                    continue
        position += 1
    return slots


def utterance_slot_type_f1(reference: Mapping[str, list[str]], hypothesis: Mapping[str, list[str]]) -> float:
    """F1 (a fraction) of the hypothesis's set of slot types against the reference's."""
    if not reference and not hypothesis:
        return 1.0
    if not reference or not hypothesis:
        return 0.0
    common = len(set(reference) & set(hypothesis))
    if common == 0:
        return 0.0
    precision, recall = common / len(hypothesis), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def slot_value_pairs(
    reference: Mapping[str, list[str]], hypothesis: Mapping[str, list[str]]
) -> list[tuple[str, str]]:
    """(reference value, best hypothesis value of the same type) for every reference slot value."""
    pairs = []
    for slot_type, values in reference.items():
        candidates = hypothesis.get(slot_type, [])
        for value in values:
            best, best_rate = "", None
            for candidate in candidates:
                rate = editdistance.eval(candidate, value) / len(value)
                if best_rate is None or rate < best_rate:
                    best, best_rate = candidate, rate
            pairs.append((value, best))
    return pairs


def slot_statistics(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Additive statistics over pairs of tagged transcripts: ``slot_type_f1_sum`` (sum of per-utterance
    F1 fractions), ``utterances``, ``slot_value_edits`` and ``slot_value_chars`` (reference characters)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    f1_sum, edits, chars = 0.0, 0, 0
    for reference_text, hypothesis_text in zip(references, hypotheses, strict=True):
        reference, hypothesis = parse_slots(reference_text), parse_slots(hypothesis_text)
        f1_sum += utterance_slot_type_f1(reference, hypothesis)
        for value, best in slot_value_pairs(reference, hypothesis):
            edits += editdistance.eval(best, value)
            chars += len(value)
    return {
        "slot_type_f1_sum": f1_sum,
        "utterances": len(references),
        "slot_value_edits": edits,
        "slot_value_chars": chars,
    }


def slot_metrics(statistics: Mapping[str, float]) -> dict[str, float]:
    """``slot_type_f1`` and ``slot_value_cer`` in percent from (summed) ``slot_statistics``.
    Raises ValueError for no utterances or no reference slot."""
    if statistics["utterances"] <= 0:
        raise ValueError("slot-type F1 over an empty evaluation set")
    return {
        "slot_type_f1": 100.0 * statistics["slot_type_f1_sum"] / statistics["utterances"],
        "slot_value_cer": error_rate_percent(statistics["slot_value_edits"], statistics["slot_value_chars"]),
    }


def slot_type_f1(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """SUPERB's slot-type F1 in percent over pairs of tagged transcripts."""
    return slot_metrics(slot_statistics(references, hypotheses))["slot_type_f1"]


def slot_value_cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """SUPERB's slot-value CER in percent over pairs of tagged transcripts."""
    return slot_metrics(slot_statistics(references, hypotheses))["slot_value_cer"]
