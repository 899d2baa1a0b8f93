"""Fluent Speech Commands (IC): <root>/data/{train,valid,test}_data.csv and the audio files they list.

Each CSV has a header row and the columns (index), path, speakerId, transcription, action, object,
location; ``path`` is relative to the root (wavs/speakers/<speakerId>/<file>.wav on the real corpus; the
shipped mini corpus lists .flac files and is read unchanged). The intent is the (action, object,
location) triple, e.g. ('activate', 'lights', 'kitchen'); 'none' is an ordinary slot value.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from downstream.data.corpus import (
    DataLayoutError,
    Utterance,
    check_choice,
    probe_audio,
    raise_if_missing,
    require_dir,
    require_file,
)
from downstream.data.text import inside, open_text

SLOTS = ("action", "object", "location")
SPLIT_FILES = {"train": "train_data.csv", "dev": "valid_data.csv", "test": "test_data.csv"}
REQUIRED_COLUMNS = ("path", "speakerId", "transcription", *SLOTS)
LAYOUT = (
    "<root>/data/train_data.csv, valid_data.csv, test_data.csv with the header "
    "',path,speakerId,transcription,action,object,location' and the listed audio files under <root> "
    "(wavs/speakers/<speakerId>/<file>.wav)"
)


@dataclass(frozen=True)
class IntentUtterance(Utterance):
    """An utterance with its intent: one value per slot of SLOTS. ``text`` is the transcription,
    ``label`` the speaker id."""

    intent: tuple[str, ...] = ()


def read_fluent_commands(root: str | Path, split: str) -> list[IntentUtterance]:
    """The utterances of ``split`` ('train', 'dev' = valid_data.csv, 'test'), sorted by id.

    The id is the listed path without its extension. Raises DataLayoutError for a missing root, data/
    folder or CSV file, a CSV without the required columns, an empty slot value or a listed file that does
    not exist.
    """
    check_choice("read_fluent_commands", "split", split, tuple(SPLIT_FILES))
    root = require_dir(Path(root), "Fluent Speech Commands root", LAYOUT)
    data_dir = require_dir(root / "data", "Fluent Speech Commands data folder", LAYOUT)
    csv_path = require_file(data_dir / SPLIT_FILES[split], "Fluent Speech Commands split file", LAYOUT)
    with open_text(csv_path) as stream:
        reader = csv.DictReader(stream)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise DataLayoutError(
                f"Fluent Speech Commands split file '{csv_path}' lacks the column(s) {missing} "
                f"(header: {reader.fieldnames}); expected layout: {LAYOUT}"
            )
        rows = list(reader)
    if not rows:
        raise DataLayoutError(f"Fluent Speech Commands split file '{csv_path}' lists no utterance")
    for line_number, row in enumerate(rows, 2):
        empty = [slot for slot in (*SLOTS, "path") if not (row[slot] or "").strip()]
        if empty:
            raise DataLayoutError(
                f"Fluent Speech Commands split file '{csv_path}' line {line_number} has no value for {empty}"
            )
        inside(row["path"], csv_path, line_number, "listed path")
    paths = [root / row["path"] for row in rows]
    raise_if_missing(paths, f"Fluent Speech Commands {split} (from '{csv_path}')", LAYOUT)
    infos = probe_audio(paths, f"FluentSpeechCommands/{split}")
    utterances = [
        IntentUtterance(
            id=str(Path(row["path"]).with_suffix("")),
            path=path,
            num_samples=info.num_samples,
            text=row["transcription"],
            label=row["speakerId"],
            intent=tuple(row[slot].strip() for slot in SLOTS),
            source=f"{csv_path}:{line_number}",
        )
        for line_number, (row, path, info) in enumerate(zip(rows, paths, infos, strict=True), 2)
    ]
    return sorted(utterances, key=lambda utterance: utterance.id)
