"""LibriSpeech (PR and ASR): <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac with transcripts."""

from __future__ import annotations

import logging
from pathlib import Path

from downstream.data.corpus import (
    DataLayoutError,
    Utterance,
    probe_audio,
    raise_if_missing,
    require_dir,
)
from downstream.data.text import inside, read_lines, shown

logger = logging.getLogger(__name__)

LAYOUT = (
    "<root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac, one "
    "<speaker>-<chapter>.trans.txt per chapter folder with lines '<speaker>-<chapter>-<utterance> TRANSCRIPT' "
    "(root is the folder holding train-clean-100, dev-clean, test-clean)"
)


def read_librispeech(root: str | Path, split: str) -> list[Utterance]:
    """Every utterance of ``split`` (a folder name such as 'train-clean-100'), sorted by id.

    ``text`` is the transcript exactly as in trans.txt (upper case, apostrophes kept); ``num_samples``
    comes from the FLAC headers. Raises DataLayoutError for a missing root, split or transcript file, a
    malformed transcript line or a transcribed utterance without audio.
    """
    root = require_dir(Path(root), "LibriSpeech root", LAYOUT)
    split_dir = root / split
    if not split_dir.is_dir():
        available = sorted(child.name for child in root.iterdir() if child.is_dir())
        raise DataLayoutError(
            f"LibriSpeech split '{split_dir}' does not exist (folders in the root: {available or 'none'}); "
            f"expected layout: {LAYOUT}"
        )
    transcript_files = sorted(split_dir.glob("*/*/*.trans.txt"))
    if not transcript_files:
        raise DataLayoutError(
            f"LibriSpeech split '{split_dir}' holds no */*/*.trans.txt; expected layout: {LAYOUT}"
        )

    ids: list[str] = []
    paths: list[Path] = []
    texts: list[str] = []
    sources: list[str] = []
    for transcript_file in transcript_files:
        for line_number, line in read_lines(transcript_file):
            utterance_id, _, text = line.strip().partition(" ")
            inside(utterance_id, transcript_file, line_number)
            if utterance_id.count("-") != 2:
                raise DataLayoutError(
                    f"LibriSpeech transcript '{transcript_file}' line {line_number} is not "
                    f"'<speaker>-<chapter>-<utterance> TRANSCRIPT': {line!r}"
                )
            if not text.strip():
                logger.warning(
                    "LibriSpeech transcript '%s' line %d: the transcript of utterance %s is empty; empty "
                    "transcripts are left out of training and kept in dev/test",
                    transcript_file,
                    line_number,
                    shown(utterance_id),
                )
            ids.append(utterance_id)
            paths.append(transcript_file.parent / f"{utterance_id}.flac")
            texts.append(text.strip())
            sources.append(f"{transcript_file}:{line_number}")
    raise_if_missing(paths, f"LibriSpeech {split}", LAYOUT)
    infos = probe_audio(paths, f"LibriSpeech/{split}")
    utterances = [
        Utterance(id=utterance_id, path=path, num_samples=info.num_samples, text=text, source=source)
        for utterance_id, path, text, info, source in zip(ids, paths, texts, infos, sources, strict=True)
    ]
    return sorted(utterances, key=lambda utterance: utterance.id)
