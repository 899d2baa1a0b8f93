"""VoxCeleb1 speaker identification (SID): <root>/wav/<speaker>/<video>/<n>.wav listed in iden_split.txt.

iden_split.txt lines are '<set> <speaker>/<video>/<file>' with set 1 = train, 2 = dev, 3 = test. The
reader opens whatever file the line names, so a copy stored as FLAC (the shipped mini corpus) lists
'.flac' paths and is read unchanged.
"""

from __future__ import annotations

from pathlib import Path

from downstream.data.corpus import (
    DataLayoutError,
    Utterance,
    check_choice,
    label_vocabulary,
    probe_audio,
    raise_if_missing,
    require_dir,
    require_file,
)

SPLIT_CODES = {"train": "1", "dev": "2", "test": "3"}
LAYOUT = (
    "<root>/wav/<speaker id>/<video id>/<nnnnn>.wav (the dev and test archives unpacked into one wav/ folder) "
    "and a split file iden_split.txt with lines '<1|2|3> <speaker id>/<video id>/<nnnnn>.wav' "
    "(1 = train, 2 = dev, 3 = test)"
)


def read_voxceleb1_sid(root: str | Path, split: str, split_file: str | Path | None = None) -> list[Utterance]:
    """The utterances of ``split`` ('train', 'dev' or 'test'), label = speaker id (e.g. 'id10001').

    ``split_file`` defaults to <root>/iden_split.txt. The id is the listed path without its extension.
    Raises DataLayoutError for a missing root, wav/ folder or split file, a malformed line or a listed
    file that does not exist.
    """
    check_choice("read_voxceleb1_sid", "split", split, tuple(SPLIT_CODES))
    root = require_dir(Path(root), "VoxCeleb1 root", LAYOUT)
    wav_dir = require_dir(root / "wav", "VoxCeleb1 audio folder", LAYOUT)
    split_path = require_file(
        Path(split_file) if split_file is not None else root / "iden_split.txt",
        "VoxCeleb1 split file",
        LAYOUT,
    )
    code = SPLIT_CODES[split]
    relative_paths: list[str] = []
    for line_number, line in enumerate(split_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[0] not in SPLIT_CODES.values() or fields[1].count("/") != 2:
            raise DataLayoutError(
                f"VoxCeleb1 split file '{split_path}' line {line_number} is not "
                f"'<1|2|3> <speaker>/<video>/<file>': {line!r}"
            )
        if fields[0] == code:
            relative_paths.append(fields[1])
    if not relative_paths:
        raise DataLayoutError(
            f"VoxCeleb1 split file '{split_path}' lists no utterance with set {code} ({split})"
        )
    paths = [wav_dir / relative for relative in relative_paths]
    raise_if_missing(paths, f"VoxCeleb1 {split} (from '{split_path}')", LAYOUT)
    infos = probe_audio(paths, f"VoxCeleb1/{split}")
    utterances = [
        Utterance(
            id=str(Path(relative).with_suffix("")),
            path=path,
            num_samples=info.num_samples,
            label=relative.split("/", 1)[0],
        )
        for relative, path, info in zip(relative_paths, paths, infos, strict=True)
    ]
    return sorted(utterances, key=lambda utterance: utterance.id)


def speakers(utterances: list[Utterance]) -> list[str]:
    """The sorted speaker ids of ``utterances`` (SID's class list; take it from the training split)."""
    return label_vocabulary(utterances)
