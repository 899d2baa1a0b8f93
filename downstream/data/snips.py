"""Audio SNIPS (SF): the SLU release spoken by 16 TTS voices, in the layout s3prl's SF recipe reads.

``root`` (s3prl's ``preprocess/snips_prepare_data.sh`` output, also distributed preprocessed)::

    all.iob.snips.txt                  '<Speaker>-snips-<split>-<n> BOS <WORDS> EOS<TAB>O <tags> <intent>'
    slots.txt                          the slot tags, one per line ('O' first); not needed here
    train/, valid/, test/              <Speaker>-snips-<split>-<n>.wav, 16 kHz mono

``<tags>`` has one tag per word: 'O' or the slot type of the word (``artist``, ``playlist``, ...;
consecutive words with the same type form one slot). SUPERB's split is by speaker (s3prl
``downstream/ctc/snips.yaml``): train voices Ivy, Joanna, Joey, Justin, Kendra, Kimberly, Matthew, Salli
(US English) from ``train/``; dev Aditi, Amy, Geraint, Nicole from ``valid/``; test Brian, Emma,
Raveena, Russell from ``test/``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from downstream.data.corpus import (
    DataLayoutError,
    Utterance,
    audio_path,
    check_choice,
    probe_audio,
    raise_if_missing,
    require_dir,
    require_file,
)

logger = logging.getLogger(__name__)

TRANSCRIPTS = "all.iob.snips.txt"
OUTSIDE = "O"
#: SUPERB's speakers per split (s3prl downstream/ctc/snips.yaml and problem/asr/superb_sf.py).
SPEAKERS = {
    "train": ("Ivy", "Joanna", "Joey", "Justin", "Kendra", "Kimberly", "Matthew", "Salli"),
    "dev": ("Aditi", "Amy", "Geraint", "Nicole"),
    "test": ("Brian", "Emma", "Raveena", "Russell"),
}
SPLIT_FOLDERS = {"train": "train", "dev": "valid", "test": "test"}
LAYOUT = (
    f"<root>/{TRANSCRIPTS} with lines '<Speaker>-snips-<split>-<n> BOS <WORDS> EOS<TAB>O <one tag per word> "
    "<intent>' and the audio <root>/{train,valid,test}/<Speaker>-snips-<split>-<n>.wav"
)


@dataclass(frozen=True)
class SlotUtterance(Utterance):
    """An utterance with its slots: ``words`` and one tag per word in ``tags`` ('O' or a slot type), and
    the intent. ``text`` is the words joined by spaces, ``label`` the speaker (TTS voice)."""

    words: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    intent: str = ""


@dataclass(frozen=True)
class _Line:
    words: tuple[str, ...]
    tags: tuple[str, ...]
    intent: str


def _parse_transcripts(path: Path) -> dict[str, _Line]:
    lines: dict[str, _Line] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        text, tab, tagging = raw.partition("\t")
        fields, tags = text.split(), tagging.split()
        problem = None
        if not tab:
            problem = "has no TAB between the words and the tags"
        elif len(fields) < 3 or fields[1] != "BOS" or fields[-1] != "EOS":
            problem = "does not read '<id> BOS <words> EOS'"
        elif len(tags) < 2 or tags[0] != OUTSIDE:
            problem = "has no tags 'O <one tag per word> <intent>' after the TAB"
        elif len(tags) - 2 != len(fields) - 3:
            problem = f"has {len(fields) - 3} words but {len(tags) - 2} tags"
        elif fields[0] in lines:
            problem = f"repeats the id {fields[0]!r}"
        if problem:
            raise DataLayoutError(f"SNIPS transcript file '{path}' line {number} {problem}: {raw[:120]!r}")
        lines[fields[0]] = _Line(tuple(fields[2:-1]), tuple(tags[1:-1]), tags[-1])
    if not lines:
        raise DataLayoutError(f"SNIPS transcript file '{path}' holds no utterance; expected layout: {LAYOUT}")
    return lines


def slot_types(root: str | Path) -> list[str]:
    """The sorted slot types of the whole transcript file (every split and speaker), the tags without 'O'."""
    path = require_file(Path(root) / TRANSCRIPTS, "SNIPS transcript file", LAYOUT)
    return sorted({tag for line in _parse_transcripts(path).values() for tag in line.tags} - {OUTSIDE})


def read_snips(root: str | Path, split: str, speakers: Sequence[str] | None = None) -> list[SlotUtterance]:
    """The utterances of ``split`` ('train', 'dev' = valid/, 'test') spoken by ``speakers`` (default:
    SUPERB's voices of the split, SPEAKERS), sorted by id.

    Every transcript line of the split's folder name and a listed speaker must have its audio file
    (``<root>/<folder>/<id>.wav``, or ``.flac``). Raises DataLayoutError naming the path for a missing root,
    transcript file or split folder, a malformed transcript line (line number), a listed speaker with no
    utterance in the split, or missing audio files; AudioDecodeError for unreadable audio.
    """
    check_choice("read_snips", "split", split, tuple(SPLIT_FOLDERS))
    speakers = tuple(SPEAKERS[split] if speakers is None else speakers)
    if not speakers:
        raise ValueError(f"read_snips: no speakers given for the {split} split")
    root = require_dir(Path(root), "SNIPS root", LAYOUT)
    transcripts = _parse_transcripts(require_file(root / TRANSCRIPTS, "SNIPS transcript file", LAYOUT))
    folder_name = SPLIT_FOLDERS[split]
    folder = require_dir(root / folder_name, f"SNIPS {split} folder", LAYOUT)
    chosen = {
        utterance_id: line
        for utterance_id, line in transcripts.items()
        if utterance_id.split("-", 1)[0] in speakers and f"-snips-{folder_name}-" in utterance_id
    }
    per_speaker = {speaker: 0 for speaker in speakers}
    for utterance_id in chosen:
        per_speaker[utterance_id.split("-", 1)[0]] += 1
    silent = [speaker for speaker, count in per_speaker.items() if count == 0]
    if silent:
        raise DataLayoutError(
            f"SNIPS: the speaker(s) {silent} have no '<Speaker>-snips-{folder_name}-<n>' line in "
            f"'{root / TRANSCRIPTS}' (speakers of the {split} split: {list(speakers)})"
        )
    ids = sorted(chosen)
    paths = [audio_path(folder / utterance_id) for utterance_id in ids]
    raise_if_missing(paths, f"SNIPS {split} (speakers {', '.join(speakers)})", LAYOUT)
    infos = probe_audio(paths, f"SNIPS/{split}")
    logger.info(
        "SNIPS %s: %d utterances from %s",
        split,
        len(ids),
        ", ".join(f"{speaker} {count}" for speaker, count in per_speaker.items()),
    )
    return [
        SlotUtterance(
            id=utterance_id,
            path=path,
            num_samples=info.num_samples,
            text=" ".join(chosen[utterance_id].words),
            label=utterance_id.split("-", 1)[0],
            words=chosen[utterance_id].words,
            tags=chosen[utterance_id].tags,
            intent=chosen[utterance_id].intent,
        )
        for utterance_id, path, info in zip(ids, paths, infos, strict=True)
    ]
