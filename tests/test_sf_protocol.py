"""SF under protocol=superb (s3prl 0.4.18 ``downstream/ctc/text.py`` and ``metric.py``): text normalisation and
slot parsing, checked against the encoder's rules and a regex-free re-derivation of its parser's rules."""

from __future__ import annotations

import random

import editdistance
import pytest

from downstream.metrics.slot_filling import parse_slots, s3prl_slot_text, slot_statistics, tagged_transcript
from downstream.tasks.sf import s3prl_slot_tokens


# -- SF: text normalisation -------------------------------------------------------------------------------
def test_sf_superb_normalisation_follows_s3prl_encoder_rules():
    words = ["PLAY", "ROCK", "&", "ROLL", "by", "BEYONCÉ", ",", "!.", "NOW", "?"]
    tags = ["O", "genre", "genre", "genre", "O", "artist", "artist", "O", "O", "O"]
    tokens = s3prl_slot_tokens(words, tags, eos=True)
    unk = "<unk>"
    expected = [
        *"PLAY", " ",
        "B-genre", *"ROCK", " ", *"AND", " ", *"ROLL", "E-genre", " ",
        unk, unk, " ",  # lower case is not in s3prl's vocabulary
        "B-artist", *"BEYONC", unk, " ",  # no E-artist: the slot's last word ',' is skipped
        *"NOW", " ",  # the last word '?' is skipped, so there is no <eos> (text.py:122-125)
    ]  # fmt: skip
    assert tokens == expected
    assert s3prl_slot_tokens(["GO", "HOME"], ["O", "O"], eos=True)[-1] == "<eos>"


# -- SF: s3prl's slot parser ------------------------------------------------------------------------------
def _collapse(text: str) -> str:
    out: list[str] = []
    for char in text:
        if not (char == " " and out and out[-1] == " "):
            out.append(char)
    return "".join(out)


def _run_end(text: str, start: int) -> int:
    """End of the run of non-space characters starting at ``start``."""
    while start < len(text) and text[start] != " ":
        start += 1
    return start


def _clean(text: str) -> str:
    """Rule: remove every 'B-' + (non-space run, at least one character) + ' ', scanning left to right, then in
    the result every ' E-' + (non-space run, at least one character)."""
    out, i = [], 0
    while i < len(text):
        end = _run_end(text, i + 2) if text.startswith("B-", i) else i
        if end > i + 2 and end < len(text):
            i = end + 1
            continue
        out.append(text[i])
        i += 1
    text, out, i = "".join(out), [], 0
    while i < len(text):
        end = _run_end(text, i + 3) if text.startswith(" E-", i) else i
        if end > i + 3:
            i = end
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _rederived_slots(text: str, clean_values: bool) -> dict[str, list[str]]:
    """Rule: at each position from the left, 'B-' + a non-space run (the type: the whole run, which a space must
    follow) + ' ' opens a slot; it is closed by the nearest later ' E-<type>' (a prefix of a longer name counts)
    that leaves at least one character of value; then the scan goes on after it, else at the next position."""
    text, slots, i = _collapse(text), {}, 0
    while i < len(text):
        if text.startswith("B-", i):
            end = _run_end(text, i + 2)
            name = text[i + 2 : end]
            if name and end < len(text):
                closing = text.find(" E-" + name, end + 2)
                if closing != -1:
                    value = text[end + 1 : closing]
                    slots.setdefault(name, []).append(_clean(value) if clean_values else value)
                    i = closing + len(" E-" + name)
                    continue
        i += 1
    return slots


def _rederived_statistics(references: list[str], hypotheses: list[str]) -> tuple[float, int, int]:
    f1_sum, edits, chars = 0.0, 0, 0
    for reference_text, hypothesis_text in zip(references, hypotheses, strict=True):
        reference = _rederived_slots(reference_text, clean_values=False)
        hypothesis = _rederived_slots(hypothesis_text, clean_values=True)
        if not reference or not hypothesis:
            f1_sum += float(not reference and not hypothesis)
        else:
            recall = sum(t in hypothesis for t in reference) / len(reference)
            precision = sum(t in reference for t in hypothesis) / len(hypothesis)
            f1_sum += 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        for slot_type, values in reference.items():
            for value in values:
                best, lowest = "", 100.0  # s3prl metric.py: min_cer starts at 100, strict '>'
                for candidate in hypothesis.get(slot_type, []):
                    rate = editdistance.eval(candidate, value) / len(value)
                    if rate < lowest:
                        best, lowest = candidate, rate
                edits += editdistance.eval(best, value)
                chars += len(value)
    return f1_sum, edits, chars


SF_TYPES = ["playlist", "playlist_owner", "artist", "city"]
SF_SENTENCES = [
    (
        ["ADD", "RAY", "CHARLES", "TO", "MY", "WORKOUT"],
        ["O", "artist", "artist", "O", "playlist_owner", "playlist"],
    ),
    (["RAIN", "IN", "PARIS", "TODAY"], ["O", "O", "city", "O"]),
    (["PLAY", "SOMETHING"], ["O", "O"]),
    (["PUT", "ADELE", "ON", "JAZZ", "HITS"], ["O", "artist", "O", "playlist", "playlist"]),
]


def _perturbed(tokens: list[str], rng: random.Random) -> list[str]:
    tokens = list(tokens)
    alphabet = [*"ABCDEFGHIJKLMNOPQRSTUVWXYZ'", " ", " "]
    slot_tokens = [prefix + name for name in SF_TYPES for prefix in ("B-", "E-")]
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        position = rng.randrange(len(tokens) + 1)
        if kind < 0.3 and tokens:
            del tokens[min(position, len(tokens) - 1)]
        elif kind < 0.6:
            tokens.insert(position, rng.choice(slot_tokens))  # stray, often glued to characters
        elif kind < 0.8:
            tokens.insert(position, rng.choice(alphabet))
        elif tokens:
            tokens[min(position, len(tokens) - 1)] = rng.choice(alphabet + slot_tokens)
    return tokens


def test_s3prl_slot_parser_equals_a_rederivation_of_its_rules_on_perturbed_hypotheses():
    rng = random.Random(0)
    references, hypotheses, differ = [], [], 0
    for _ in range(600):
        words, tags = SF_SENTENCES[rng.randrange(len(SF_SENTENCES))]
        reference = [t for t in s3prl_slot_tokens(words, tags, eos=True) if t != "<eos>"]
        hypothesis = _perturbed(reference, rng)
        references.append(s3prl_slot_text(reference))
        hypotheses.append(s3prl_slot_text(hypothesis))
        differ += parse_slots(tagged_transcript(hypothesis)) != _rederived_slots(
            hypotheses[-1], clean_values=True
        )
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ours = slot_statistics([reference], [hypothesis], parser="s3prl")
        f1_sum, edits, chars = _rederived_statistics([reference], [hypothesis])
        assert (
            ours["slot_type_f1_sum"],
            ours["slot_value_edits"],
            ours["slot_value_chars"],
        ) == pytest.approx((f1_sum, edits, chars)), (reference, hypothesis)
    # the generated cases include many where the project's token-wise parse (protocol=exact) reads differently
    assert differ > 20


def test_s3prl_slot_parser_on_documented_cases():
    glued = s3prl_slot_text([*"PLAY", " ", "B-artist", *"ADE", "E-city", *"LE", "E-artist"])
    assert glued == "PLAY B-artist ADE E-cityLE E-artist"
    stats = slot_statistics(["PLAY B-artist ADELE E-artist"], [glued], parser="s3prl")
    # value 'ADE E-cityLE' cleaned of ' E-cityLE' -> 'ADE': 2 edits against ADELE
    assert (stats["slot_value_edits"], stats["slot_value_chars"]) == (2, 5)
    prefix = "B-playlist JAZZ E-playlist_owner HITS E-playlist"
    assert _rederived_slots(prefix, True) == {"playlist": ["JAZZ"]}
    assert slot_statistics([prefix], [prefix], parser="s3prl")["slot_value_edits"] == 0
    empty = "B-city E-city PARIS E-city"  # an empty slot runs to the next end token and keeps it
    assert _rederived_slots(empty, False) == {"city": ["E-city PARIS"]}
