"""VoxCeleb1 speaker identification (SID): <root>/wav/<speaker>/<video>/<n>.wav listed in iden_split.txt.

iden_split.txt lines are '<set> <speaker>/<video>/<file>' with set 1 = train, 2 = dev, 3 = test. The
reader opens whatever file the line names, so a copy stored as FLAC (the shipped mini corpus) lists
'.flac' paths and is read unchanged.

Speaker verification (SV) reads the same wav/ folder with trial lists instead (``read_trials``,
``read_voxceleb1_sv``): the speakers a trial list names are held out of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from downstream.data.corpus import (
    AUDIO_SUFFIXES,
    DataLayoutError,
    Utterance,
    audio_path,
    check_choice,
    label_vocabulary,
    probe_audio,
    raise_if_missing,
    require_dir,
    require_file,
)
from downstream.data.text import inside, read_lines

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
    sources: list[str] = []
    for line_number, line in read_lines(split_path):
        fields = line.split()
        if len(fields) == 2:
            inside(fields[1], split_path, line_number, "listed path")
        if len(fields) != 2 or fields[0] not in SPLIT_CODES.values() or fields[1].count("/") != 2:
            raise DataLayoutError(
                f"VoxCeleb1 split file '{split_path}' line {line_number} is not "
                f"'<1|2|3> <speaker>/<video>/<file>': {line!r}"
            )
        if fields[0] == code:
            relative_paths.append(fields[1])
            sources.append(f"{split_path}:{line_number}")
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
            source=source,
        )
        for relative, path, info, source in zip(relative_paths, paths, infos, sources, strict=True)
    ]
    return sorted(utterances, key=lambda utterance: utterance.id)


def speakers(utterances: list[Utterance]) -> list[str]:
    """The sorted speaker ids of ``utterances`` (SID's class list; take it from the training split)."""
    return label_vocabulary(utterances)


# -- speaker verification (SV) ----------------------------------------------------------------------

TRIAL_LAYOUT = (
    "a trial list with lines '<1|0> <speaker>/<video>/<file> <speaker>/<video>/<file>' (1 = same speaker; "
    "paths relative to <root>/wav, as in VoxCeleb1's veri_test.txt and s3prl's dev_meta_data.txt)"
)


@dataclass(frozen=True)
class Trial:
    """One verification trial: two utterance ids (listed paths without extension) and whether they share
    the speaker."""

    same_speaker: bool
    enrollment: str
    test: str
    #: the trial's line in its list (from 1; 0: not read from a list)
    line: int = 0


def read_trials(path: str | Path) -> list[Trial]:
    """The trials of a VoxCeleb1-style trial list, in file order; DataLayoutError for a missing file, a
    malformed line or a list without both target and non-target trials."""
    path = require_file(Path(path), "VoxCeleb1 trial list", TRIAL_LAYOUT)
    trials = []
    for line_number, line in read_lines(path):
        fields = line.split()
        for field in fields[1:3]:
            inside(field, path, line_number, "listed path")
        if len(fields) != 3 or fields[0] not in ("0", "1") or any(f.count("/") != 2 for f in fields[1:]):
            raise DataLayoutError(
                f"VoxCeleb1 trial list '{path}' line {line_number} is not "
                f"'<1|0> <speaker>/<video>/<file> <speaker>/<video>/<file>': {line!r}"
            )
        enrollment, test = (str(Path(field).with_suffix("")) for field in fields[1:])
        trials.append(Trial(fields[0] == "1", enrollment, test, line_number))
    kinds = {trial.same_speaker for trial in trials}
    if kinds != {True, False}:
        raise DataLayoutError(
            f"VoxCeleb1 trial list '{path}' needs target (1) and non-target (0) trials; "
            f"it has {len(trials)} trial(s), all {'targets' if True in kinds else 'non-targets'}"
        )
    return trials


def read_voxceleb1_sv(
    root: str | Path,
    split: str,
    test_trials: str | Path,
    dev_trials: str | Path,
    hold_out_dev_speakers: bool = True,
) -> list[Utterance]:
    """Utterances of ``split`` for speaker verification, label = speaker id, sorted by id.

    test / dev: every utterance a trial of ``test_trials`` / ``dev_trials`` names (trial lists relative to
    ``root`` unless absolute). train: every audio file under <root>/wav/<speaker>/<video>/ (.wav or
    .flac) of the speakers that the test list does not name (on VoxCeleb1: the 1,211 dev speakers, as
    s3prl trains, ``sv_voxceleb1/expert.py:58``), and with ``hold_out_dev_speakers`` not those of the dev
    list either (so that dev trials are of unseen speakers, as test trials are).
    """
    check_choice("read_voxceleb1_sv", "split", split, tuple(SPLIT_CODES))
    root = require_dir(Path(root), "VoxCeleb1 root", LAYOUT)
    wav_dir = require_dir(root / "wav", "VoxCeleb1 audio folder", LAYOUT)
    trial_lists = {"test": root / test_trials, "dev": root / dev_trials}
    if split in trial_lists:
        trials = read_trials(trial_lists[split])
        first_line: dict[str, int] = {}
        for trial in trials:
            for utterance_id in (trial.enrollment, trial.test):
                first_line.setdefault(utterance_id, trial.line)
        ids = sorted(first_line)
        sources = [f"{trial_lists[split]}:{first_line[utterance_id]}" for utterance_id in ids]
        paths = [audio_path(wav_dir / utterance_id) for utterance_id in ids]
        raise_if_missing(paths, f"VoxCeleb1 {split} trials (from '{trial_lists[split]}')", TRIAL_LAYOUT)
    else:
        held_out = {
            utterance_id.split("/", 1)[0]
            for name, path in trial_lists.items()
            if name == "test" or hold_out_dev_speakers
            for trial in read_trials(path)
            for utterance_id in (trial.enrollment, trial.test)
        }
        paths = sorted(
            path
            for path in wav_dir.glob("*/*/*")
            if path.suffix in AUDIO_SUFFIXES and path.relative_to(wav_dir).parts[0] not in held_out
        )
        if not paths:
            raise DataLayoutError(
                f"VoxCeleb1 audio folder '{wav_dir}' holds no .wav or .flac file of a speaker outside the "
                f"trial lists (held out: {len(held_out)} speakers); expected layout: {LAYOUT}"
            )
        ids = [str(path.relative_to(wav_dir).with_suffix("")) for path in paths]
        sources = [""] * len(ids)  # the id is the file's own name
    infos = probe_audio(paths, f"VoxCeleb1/sv-{split}")
    return [
        Utterance(
            id=utterance_id,
            path=path,
            num_samples=info.num_samples,
            label=utterance_id.split("/", 1)[0],
            source=source,
        )
        for utterance_id, path, info, source in zip(ids, paths, infos, sources, strict=True)
    ]
