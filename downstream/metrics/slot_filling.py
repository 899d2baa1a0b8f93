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

Two parsers (``SLOT_PARSERS``; the task's ``slot_parser``, by protocol):

- ``s3prl`` (protocol=superb): s3prl's own parse of its decoded string, every case included. The tokens are
  rendered as s3prl's ``CharacterTextSlotEncoder.decode`` joins them (``ctc/text.py:128-138,164-175``: a begin
  token as ``'B-<type> '``, an end token as ``' E-<type>'``, glued to the characters around them;
  ``s3prl_slot_text``), runs of spaces collapse, slots are the non-overlapping left-to-right matches of
  ``B-(\\S+) (.+?) E-\\1`` (``ctc/metric.py:32-50``), a hypothesis value is ``clean``ed of slot tokens (``'B-\\S+ '``
  and ``' E-\\S+'``, ``metric.py:27-30``), a reference value is kept as matched, and the best hypothesis value
  is the first with a CER below the running minimum that starts at 100 (``metric.py:121-127``).
- ``tokens`` (protocol=exact): this project's parse of the tagged transcript above (``parse_slots``), where a
  slot token is a word of its own wherever the decoder put it: a stray token glued to a word does not split or
  swallow the word, and a type name that is a prefix of another does not close it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

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


#: ``slot_statistics``' parsers (the module docstring)
SLOT_PARSERS = ("s3prl", "tokens")
_S3PRL_SLOT = re.compile(r"B-(\S+) (.+?) E-\1")
_S3PRL_BEGIN = re.compile(r"B-\S+ ")
_S3PRL_END = re.compile(r" E-\S+")
_SPACES = re.compile(r" +")


def s3prl_slot_text(tokens: Sequence[str]) -> str:
    """Tokens (characters, ' ', ``<unk>``, slot tokens) joined as s3prl's CharacterTextSlotEncoder.decode joins
    them: ``B-<type>`` as ``'B-<type> '``, ``E-<type>`` as ``' E-<type>'``, everything else as it is."""
    return "".join(
        (token + " " if token.startswith(BEGIN) else " " + token) if is_slot_token(token) else token
        for token in tokens
    )


def s3prl_clean(text: str) -> str:
    """s3prl's ``clean``: every ``'B-<type> '`` and then every ``' E-<type>'`` removed (``ctc/metric.py:27-30``)."""
    return _S3PRL_END.sub("", _S3PRL_BEGIN.sub("", text))


def parse_slots_s3prl(text: str, clean_values: bool) -> dict[str, list[str]]:
    """Slot type -> values, as s3prl's ``parse`` finds them in a ``s3prl_slot_text`` string (module docstring);
    ``clean_values``: values ``s3prl_clean``ed, as s3prl does for the hypothesis (not the reference)."""
    slots: dict[str, list[str]] = {}
    for slot_type, value in _S3PRL_SLOT.findall(_SPACES.sub(" ", text)):
        slots.setdefault(slot_type, []).append(s3prl_clean(value) if clean_values else value)
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
    reference: Mapping[str, list[str]], hypothesis: Mapping[str, list[str]], start_rate: float | None = None
) -> list[tuple[str, str]]:
    """(reference value, best hypothesis value of the same type) for every reference slot value: the first
    candidate with the lowest CER, or with ``start_rate`` (s3prl: 100) the first whose CER is below the running
    minimum that starts there (the empty string when none is)."""
    pairs = []
    for slot_type, values in reference.items():
        candidates = hypothesis.get(slot_type, [])
        for value in values:
            best, best_rate = "", start_rate
            for candidate in candidates:
                rate = editdistance.eval(candidate, value) / len(value)
                if best_rate is None or rate < best_rate:
                    best, best_rate = candidate, rate
            pairs.append((value, best))
    return pairs


def slot_statistics(
    references: Sequence[str], hypotheses: Sequence[str], parser: str = "tokens"
) -> dict[str, float]:
    """Additive statistics over pairs of transcripts: ``slot_type_f1_sum`` (sum of per-utterance F1
    fractions), ``utterances``, ``slot_value_edits`` and ``slot_value_chars`` (reference characters).
    ``parser`` (``SLOT_PARSERS``): ``tokens`` reads tagged transcripts (``tagged_transcript``), ``s3prl`` reads
    s3prl's decoded strings (``s3prl_slot_text``) with s3prl's rules. ValueError for an unknown parser or
    unequal counts."""
    if parser not in SLOT_PARSERS:
        raise ValueError(f"slot_parser={parser!r}: expected one of {', '.join(SLOT_PARSERS)}")
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    parse_reference: Callable[[str], dict[str, list[str]]] = parse_slots
    parse_hypothesis: Callable[[str], dict[str, list[str]]] = parse_slots
    start_rate = None
    if parser == "s3prl":
        parse_reference = lambda text: parse_slots_s3prl(text, clean_values=False)  # noqa: E731
        parse_hypothesis = lambda text: parse_slots_s3prl(text, clean_values=True)  # noqa: E731
        start_rate = 100.0
    f1_sum, edits, chars = 0.0, 0, 0
    for reference_text, hypothesis_text in zip(references, hypotheses, strict=True):
        reference, hypothesis = parse_reference(reference_text), parse_hypothesis(hypothesis_text)
        f1_sum += utterance_slot_type_f1(reference, hypothesis)
        for value, best in slot_value_pairs(reference, hypothesis, start_rate):
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
