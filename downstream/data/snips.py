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
import re
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
from downstream.data.text import inside, read_lines, refuse_repeated_ids

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
    number: int = 0


#: An IOB/BIO/BIOES tag: a position prefix (Begin, Inside, End, Single; L/U as BILOU writes E/S) and the type.
_PREFIXED_TAG = re.compile(r"^([BIESLU])-(.+)$")


def _bare_tags(numbered: list[tuple[int, tuple[str, ...]]], path: Path) -> dict[str, str]:
    """Tag -> bare slot type when the file writes its slot tags in IOB/BIO/BIOES form (every tag but 'O'
    prefixed), {} when every tag is already a bare type. DataLayoutError naming the file and line for a file
    that mixes both forms, or for two adjacent slots of one type (the bare form would merge them)."""
    tags = {tag for _, line_tags in numbered for tag in line_tags} - {OUTSIDE}
    prefixed = {tag for tag in tags if _PREFIXED_TAG.match(tag)}
    if not prefixed:
        return {}
    for number, line_tags in numbered:
        bare = [tag for tag in line_tags if tag != OUTSIDE and tag not in prefixed]
        if bare:
            raise DataLayoutError(
                f"SNIPS transcript file '{path}' line {number} mixes bare slot types ({bare[0]!r}) with "
                f"IOB-style tags (e.g. {sorted(prefixed)[0]!r}); write every tag one way"
            )
        for previous, tag in zip(("O", *line_tags), line_tags, strict=False):
            match, before = _PREFIXED_TAG.match(tag), _PREFIXED_TAG.match(previous)
            if match and before and match[1] in "BSU" and match[2] == before[2]:
                raise DataLayoutError(
                    f"SNIPS transcript file '{path}' line {number} has two adjacent {match[2]!r} slots "
                    f"({previous} {tag}), which bare slot types cannot tell apart"
                )
    return {tag: _PREFIXED_TAG.match(tag)[2] for tag in sorted(prefixed)}  # type: ignore[index]


def _parse_transcripts(path: Path) -> tuple[dict[str, _Line], dict[str, str]]:
    """Id -> line of the transcript file, and the IOB tag -> bare slot type mapping applied ({} if none)."""
    lines: dict[str, _Line] = {}
    numbered: list[tuple[int, tuple[str, ...]]] = []
    ids: list[tuple[str, str]] = []
    for number, raw in read_lines(path):
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
        if problem:
            raise DataLayoutError(f"SNIPS transcript file '{path}' line {number} {problem}: {raw[:120]!r}")
        inside(fields[0], path, number)
        ids.append((fields[0], f"{path}:{number}"))
        numbered.append((number, tuple(tags[1:-1])))
        lines[fields[0]] = _Line(tuple(fields[2:-1]), tuple(tags[1:-1]), tags[-1], number)
    if not lines:
        raise DataLayoutError(f"SNIPS transcript file '{path}' holds no utterance; expected layout: {LAYOUT}")
    refuse_repeated_ids(ids, f"SNIPS transcript file '{path}'")
    mapping = _bare_tags(numbered, path)
    if mapping:
        lines = {
            key: _Line(
                line.words, tuple(mapping.get(tag, tag) for tag in line.tags), line.intent, line.number
            )
            for key, line in lines.items()
        }
    return lines, mapping


def slot_tag_mapping(root: str | Path) -> dict[str, str]:
    """The IOB/BIO/BIOES tag -> bare slot type mapping the reader applies to ``root``'s transcript file
    ({} when its tags are bare slot types, SNIPS's own form)."""
    return _parse_transcripts(require_file(Path(root) / TRANSCRIPTS, "SNIPS transcript file", LAYOUT))[1]


def slot_types(root: str | Path) -> list[str]:
    """The sorted slot types of the whole transcript file (every split and speaker), the tags without 'O'."""
    path = require_file(Path(root) / TRANSCRIPTS, "SNIPS transcript file", LAYOUT)
    return sorted({tag for line in _parse_transcripts(path)[0].values() for tag in line.tags} - {OUTSIDE})


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
    transcripts, mapping = _parse_transcripts(
        require_file(root / TRANSCRIPTS, "SNIPS transcript file", LAYOUT)
    )
    if mapping:
        logger.warning(
            "SNIPS transcript file '%s' writes slot tags in IOB/BIO/BIOES form; they are mapped to bare slot "
            "types (%d tags): %s",
            root / TRANSCRIPTS,
            len(mapping),
            ", ".join(f"{tag} -> {bare}" for tag, bare in mapping.items()),
        )
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
            source=f"{root / TRANSCRIPTS}:{chosen[utterance_id].number}",
        )
        for utterance_id, path, info in zip(ids, paths, infos, strict=True)
    ]
