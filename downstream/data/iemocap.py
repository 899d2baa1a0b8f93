"""IEMOCAP emotion recognition (ER): four classes, leave-one-session-out folds.

Labels come from Session*/dialog/EmoEvaluation/<dialog>.txt, whose utterance lines read
'[<start> - <end>]<TAB><utterance id><TAB><emotion><TAB>[<V>, <A>, <D>]'. SUPERB keeps neutral, happy,
angry and sad and merges excited into happy (5,531 utterances on the real corpus); every other label
(frustrated, surprised, 'xxx', ...) is left out.

Fold k (1-5) tests on Session k and trains on the other four. Dev is held out from the training sessions
the way s3prl's emotion recipe does it: a fixed fraction (default 0.2) of them, chosen by a shuffle seeded
with ``seed``, so train and dev share speakers and dev tracks the training objective; the unseen-speaker
test session is never looked at before testing.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

from downstream.data.corpus import (
    DataLayoutError,
    Utterance,
    audio_path,
    check_choice,
    probe_audio,
    raise_if_missing,
    require_dir,
)
from downstream.data.text import inside, read_lines, refuse_repeated_ids

EMOTIONS = ("neu", "hap", "ang", "sad")
MERGED_LABELS = {"exc": "hap"}
SESSIONS = (1, 2, 3, 4, 5)
SPLITS = ("train", "dev", "test")
LAYOUT = (
    "<root>/Session{1..5}/sentences/wav/<dialog>/<utterance>.wav and "
    "<root>/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt with lines "
    "'[<start> - <end>]\\t<utterance>\\t<emotion>\\t[V, A, D]'"
)
_LABEL_LINE = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(\S+)\s+(\S+)\s+\[")


def read_emotion_labels(session_dir: Path) -> dict[str, tuple[str, str]]:
    """Utterance id -> (raw IEMOCAP emotion code, '<label file>:<line>') for every EmoEvaluation/<dialog>.txt
    of one session. DataLayoutError for an id that leads out of the folder or occurs twice."""
    evaluation_dir = require_dir(session_dir / "dialog" / "EmoEvaluation", "IEMOCAP label folder", LAYOUT)
    label_files = sorted(path for path in evaluation_dir.glob("*.txt") if not path.name.startswith("."))
    if not label_files:
        raise DataLayoutError(
            f"IEMOCAP label folder '{evaluation_dir}' holds no <dialog>.txt; expected: {LAYOUT}"
        )
    rows: list[tuple[str, str, str]] = []
    for label_file in label_files:
        for line_number, line in read_lines(label_file, replace_undecodable=True):
            match = _LABEL_LINE.match(line)
            if match:
                inside(match.group(1), label_file, line_number)
                rows.append((match.group(1), match.group(2), f"{label_file}:{line_number}"))
    refuse_repeated_ids(((row[0], row[2]) for row in rows), f"IEMOCAP labels of '{session_dir}'")
    return {utterance_id: (label, source) for utterance_id, label, source in rows}


def read_session(root: Path, session: int) -> list[Utterance]:
    """The four-class utterances of one session (excited counted as happy), sorted by id."""
    session_dir = require_dir(root / f"Session{session}", "IEMOCAP session folder", LAYOUT)
    wav_dir = require_dir(session_dir / "sentences" / "wav", "IEMOCAP audio folder", LAYOUT)
    kept = []
    for utterance_id, (raw_label, source) in sorted(read_emotion_labels(session_dir).items()):
        label = MERGED_LABELS.get(raw_label, raw_label)
        if label in EMOTIONS:
            dialog = utterance_id.rsplit("_", 1)[0]
            kept.append((utterance_id, label, wav_dir / dialog / utterance_id, source))
    paths = [audio_path(stem) for _, _, stem, _ in kept]
    raise_if_missing(paths, f"IEMOCAP Session{session}", LAYOUT)
    infos = probe_audio(paths, f"IEMOCAP/Session{session}")
    return [
        Utterance(id=utterance_id, path=path, num_samples=info.num_samples, label=label, source=source)
        for (utterance_id, label, _, source), path, info in zip(kept, paths, infos, strict=True)
    ]


def read_iemocap(
    root: str | Path, fold: int, split: str, dev_fraction: float = 0.2, seed: int = 0
) -> list[Utterance]:
    """The ``split`` ('train', 'dev', 'test') of leave-one-session-out ``fold`` (1-5), sorted by id.

    test = Session ``fold``; dev = ceil(dev_fraction * n) utterances of the other sessions picked by a
    shuffle seeded with ``seed`` (the shuffle starts from the id-sorted list, so it is reproducible);
    train = the rest. Labels are in EMOTIONS.
    """
    check_choice("read_iemocap", "fold", fold, SESSIONS)
    check_choice("read_iemocap", "split", split, SPLITS)
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"read_iemocap: dev_fraction must be in (0, 1), got {dev_fraction!r}")
    root = require_dir(Path(root), "IEMOCAP root", LAYOUT)
    for session in SESSIONS:  # a fold needs all five sessions; report a missing one whatever the split
        require_dir(root / f"Session{session}", "IEMOCAP session folder", LAYOUT)
    if split == "test":
        return read_session(root, fold)
    training_sessions = [
        utt for session in SESSIONS if session != fold for utt in read_session(root, session)
    ]
    shuffled = list(training_sessions)
    random.Random(seed).shuffle(shuffled)
    dev_count = math.ceil(dev_fraction * len(shuffled))
    chosen = shuffled[:dev_count] if split == "dev" else shuffled[dev_count:]
    return sorted(chosen, key=lambda utterance: utterance.id)
