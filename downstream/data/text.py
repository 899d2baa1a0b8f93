"""Text files of a corpus (transcripts, split lists, CSVs, trial lists, label files, lexicons): one way to
read them, one way to show what they hold, one rule for the ids and paths they name.

Every reader in ``downstream.data`` reads its text files with ``read_text`` or ``open_text``: UTF-8 with an
optional byte-order mark (a BOM written by Windows editors would otherwise become part of the first id,
invisible in every message). Values from text files are shown with ``shown`` in messages, so an invisible
character (a BOM, a zero-width space, a NUL, a trailing TAB) appears as its escape. Ids and relative
paths are names inside the corpus: ``inside`` refuses one that would lead out of its folder (issue 30).
"""

from __future__ import annotations

import io
import unicodedata
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

#: The encoding of every corpus text file: UTF-8, a leading BOM dropped.
ENCODING = "utf-8-sig"


def _corpus_error(message: str) -> ValueError:
    from downstream.data.corpus import DataLayoutError  # corpus imports this module

    return DataLayoutError(message)


def read_text(path: str | Path, replace_undecodable: bool = False) -> str:
    """The content of the text file ``path`` (UTF-8, an optional BOM dropped). Raises DataLayoutError naming
    the file, the line and the bytes when it is not UTF-8 (``replace_undecodable``: such bytes become
    U+FFFD instead, for files whose free-text parts are known to hold other encodings: IEMOCAP's
    annotator comments, raw CMU dictionary files); OSError when it cannot be read."""
    path = Path(path)
    data = path.read_bytes()
    if replace_undecodable:
        return data.decode(ENCODING, errors="replace")
    try:
        return data.decode(ENCODING)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        bad = data[error.start : error.end]
        raise _corpus_error(
            f"'{path}' line {line} is not UTF-8 text (bytes {bad!r}); corpus text files are read as UTF-8 "
            "(with or without a byte-order mark)"
        ) from None


def read_lines(path: str | Path, replace_undecodable: bool = False) -> list[tuple[int, str]]:
    """(line number from 1, line) of every non-blank line of ``path`` (``read_text``), line ends dropped."""
    text = read_text(path, replace_undecodable)
    return [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def open_text(path: str | Path) -> io.StringIO:
    """``read_text(path)`` as a stream for ``csv`` (newlines kept as written)."""
    return io.StringIO(read_text(path), newline="")


def _invisible(char: str) -> bool:
    return unicodedata.category(char) in {"Cc", "Cf", "Zl", "Zp"} or (char.isspace() and char != " ")


def shown(value: object, quoted: bool = False) -> str:
    """``value`` (an id, a path, a word read from a text file, or a path built from one) as a message shows
    it: as is (between single quotes with ``quoted``), or ``repr`` when it holds an invisible character (a
    BOM, a zero-width or control character, a TAB) or starts or ends with a space. The one helper of every
    message that prints such a value (docs/input-policies.md)."""
    text = str(value)
    if any(_invisible(char) for char in text) or text != text.strip(" "):
        return repr(text)
    return f"'{text}'" if quoted else text


def inside(value: str, path: str | Path, line: int | None, what: str = "id") -> str:
    """``value`` (an id or relative path read from ``path`` at ``line``) if it names something inside its
    folder: relative, no ``..`` component, no NUL. Raises DataLayoutError naming the file, the line and the
    value otherwise, so no id becomes a path outside the corpus root (for reading or for writing)."""
    problem = None
    if "\0" in value:
        problem = "holds a NUL character"
    elif value.startswith(("/", "\\")) or PurePosixPath(value).is_absolute() or Path(value).is_absolute():
        problem = "is an absolute path"
    elif ".." in PurePosixPath(value.replace("\\", "/")).parts:
        problem = "has a '..' component"
    if problem:
        where = f"'{path}'" + (f" line {line}" if line is not None else "")
        raise _corpus_error(
            f"{where}: the {what} {value!r} {problem}; ids and listed paths name files inside the corpus "
            "folder"
        )
    return value


def refuse_repeated_ids(entries: Iterable[tuple[str, str]], what: str) -> dict[str, str]:
    """Id -> where it was read, for ``entries`` of (id, where: '<file>:<line>' or a path). Raises
    DataLayoutError naming every repeated id (the first five) with both places it occurs: an id names one
    utterance (a second line would silently give it another's audio or target). The one duplicate check of
    every reader and of the engine's data check."""
    first: dict[str, str] = {}
    repeated: list[str] = []
    for value, where in entries:
        if value in first:
            repeated.append(f"{shown(value)} at {first[value]} and at {where}")
        else:
            first[value] = where
    if repeated:
        more = f" (and {len(repeated) - 5} more)" if len(repeated) > 5 else ""
        raise _corpus_error(
            f"{what}: {len(repeated)} id(s) occur more than once: {'; '.join(repeated[:5])}{more}. Each id "
            "must name one utterance: remove or rename the repeated lines"
        )
    return first
