"""IEMOCAP emotion recognition (ER): four classes, leave-one-session-out folds.

Labels come from Session*/dialog/EmoEvaluation/<dialog>.txt, whose utterance lines read
'[<start> - <end>]<TAB><utterance id><TAB><emotion><TAB>[<V>, <A>, <D>]'. SUPERB keeps neutral, happy,
angry and sad and merges excited into happy (5,531 utterances on the real corpus); every other label
(frustrated, surprised, 'xxx', ...) is left out.

Fold k (1-5) tests on Session k and trains on the other four. Dev is held out from the training sessions
exactly as s3prl's emotion recipe does it (``downstream/emotion/expert.py``: ``torch.manual_seed(0)`` then
``random_split(dataset, [int(0.8 n), n - int(0.8 n)])``): a seed-0 ``torch.randperm`` of the n training
utterances, the first int(0.8 n) positions train, the rest dev. The permutation indexes s3prl's meta order
(``downstream/emotion/meta_data/Session<k>/train_meta_data.json``, written by its IEMOCAP_preprocess.py in
``os.listdir`` order, so it cannot be rebuilt from the corpus): given that file (``s3prl_meta_data``), dev
holds the same utterances as s3prl's; without it the same permutation indexes the id-sorted list (same sizes,
different members). Train and dev share speakers; the unseen-speaker test session is never looked at before
testing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

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


#: Where s3prl keeps the meta files that fix its training-session order (relative to its repository).
S3PRL_META_DATA = "s3prl/downstream/emotion/meta_data"


def s3prl_meta_order(meta_data: str | Path, fold: int) -> list[str]:
    """Utterance ids of ``<meta_data>/Session<fold>/train_meta_data.json`` in s3prl's order (the stems of
    its ``meta_data[*].path``). Raises DataLayoutError naming the file when it is missing or malformed."""
    path = Path(meta_data) / f"Session{fold}" / "train_meta_data.json"
    where = f"s3prl keeps it as {S3PRL_META_DATA}/Session{fold}/train_meta_data.json"
    require_file(path, "s3prl's IEMOCAP meta file (task.s3prl_meta_data)", where)
    try:
        entries = json.loads(path.read_text(encoding="utf-8-sig"))["meta_data"]
        return [Path(entry["path"]).stem for entry in entries]
    except (ValueError, KeyError, TypeError) as error:
        raise DataLayoutError(
            f"s3prl's IEMOCAP meta file '{path}' is not {{'meta_data': [{{'path': ...}}, ...]}} ({error}); {where}"
        ) from error


def s3prl_dev_split(count: int, dev_fraction: float = 0.2) -> tuple[list[int], list[int]]:
    """(train positions, dev positions) of s3prl's ER split of ``count`` utterances: torch.manual_seed(0) +
    random_split into int((1 - dev_fraction) count) and the rest (downstream/emotion/expert.py)."""
    train_count = int((1 - dev_fraction) * count)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(0)).tolist()
    return order[:train_count], order[train_count:]


def read_iemocap(
    root: str | Path,
    fold: int,
    split: str,
    dev_fraction: float = 0.2,
    s3prl_meta_data: str | Path | None = None,
) -> list[Utterance]:
    """The ``split`` ('train', 'dev', 'test') of leave-one-session-out ``fold`` (1-5), sorted by id.

    test = Session ``fold``; train/dev = s3prl's split (``s3prl_dev_split``) of the other four sessions'
    utterances in s3prl's meta order (``s3prl_meta_data``: the folder holding Session<k>/train_meta_data.json)
    or, without it, in id order. Labels are in EMOTIONS. Raises DataLayoutError when the meta file is missing
    or lists other utterances than the corpus holds (naming the file and the first differences).
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
    training = {utt.id: utt for session in SESSIONS if session != fold for utt in read_session(root, session)}
    if s3prl_meta_data is None:
        order = sorted(training)
    else:
        order = s3prl_meta_order(s3prl_meta_data, fold)
        extra = [u for u in order if u not in training]
        missing = sorted(set(training) - set(order))
        if extra or missing or len(order) != len(set(order)):
            meta_file = Path(s3prl_meta_data) / f"Session{fold}" / "train_meta_data.json"
            raise DataLayoutError(
                f"s3prl's IEMOCAP meta file '{meta_file}' does not list the fold's {len(training)} four-class "
                f"training utterances under '{root}': {len(extra)} listed but not in the corpus (e.g. "
                f"{extra[:3]}), {len(missing)} in the corpus but not listed (e.g. {missing[:3]}), "
                f"{len(order) - len(set(order))} listed twice"
            )
    train_positions, dev_positions = s3prl_dev_split(len(order), dev_fraction)
    chosen = [training[order[k]] for k in (dev_positions if split == "dev" else train_positions)]
    return sorted(chosen, key=lambda utterance: utterance.id)
