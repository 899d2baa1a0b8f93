"""Speech Commands v0.01 (KS): the training archive and the separate official test set, as distributed.

Training archive (speech_commands_v0.01.tar.gz), ``root``::

    <word>/<speaker hash>_nohash_<n>.wav       30 word folders, 1 s clips at 16 kHz
    _background_noise_/<name>.wav              6 noise recordings of about a minute
    validation_list.txt, testing_list.txt      lines '<word>/<file>.wav'

Test set (speech_commands_test_set_v0.01.tar.gz), ``test_root``: one folder per class, ``yes`` ...
``go``, ``_unknown_`` and ``_silence_``, each holding 1 s clips.

SUPERB's KS protocol (s3prl ``downstream/speech_commands``): 12 classes, the 10 keywords plus
``_unknown_`` (every other word) and ``_silence_``. dev is the validation list, train every clip in
neither list; the testing list is not used (the official test set replaces it). ``_silence_`` in train and
dev comes from the background-noise recordings, in one of two ways (``silence``):

- ``random_crops`` (s3prl 0.4.18, ``downstream/speech_commands/dataset.py``): train and dev each list the
  whole recordings as ``_silence_`` items, and every draw of one is a random 1 s crop of it (training: the
  trainer's random crop, ``KeywordSpotting.train_crop_seconds``; dev: ``KeywordSpotting``). Dev windows are
  therefore drawn from the same audio training uses.
- ``held_out_windows``: consecutive 1 s windows; the last ``dev_fraction`` of each recording (at least 1 s)
  gives dev's windows and only the part before it gives training's, so dev never scores audio training
  has seen. The shorter tail of each part is left out and its length logged.

s3prl recomputes the
lists from the file names with the archive's own hash rule (``which_set``); the shipped lists were made by
that rule, so reading them gives the same split.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from downstream.data.audio import SAMPLE_RATE
from downstream.data.corpus import (
    AUDIO_SUFFIXES,
    DataLayoutError,
    Utterance,
    check_choice,
    probe_audio,
    raise_if_missing,
    require_dir,
    require_file,
)
from downstream.data.text import inside, read_lines

logger = logging.getLogger(__name__)

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
#: The 12 KS classes in s3prl's order (class index = position).
CLASSES = (*KEYWORDS, UNKNOWN, SILENCE)
BACKGROUND_NOISE = "_background_noise_"
#: The folder names the two archives unpack to (s3prl's instructions put them side by side).
TRAIN_ARCHIVE = "speech_commands_v0.01"
TEST_ARCHIVE = "speech_commands_test_set_v0.01"
SPLIT_LISTS = {"dev": "validation_list.txt", "test": "testing_list.txt"}
SILENCE_WINDOW_SAMPLES = SAMPLE_RATE  # 1 s
LAYOUT = (
    "the Speech Commands v0.01 training archive: <root>/<word>/<hash>_nohash_<n>.wav for the 10 keywords "
    f"({', '.join(KEYWORDS)}) and other words, <root>/{BACKGROUND_NOISE}/*.wav, "
    "<root>/validation_list.txt and <root>/testing_list.txt (lines '<word>/<file>.wav')"
)
TEST_LAYOUT = (
    "the Speech Commands v0.01 test set (speech_commands_test_set_v0.01): <test_root>/<class>/*.wav with one "
    f"folder per class: {', '.join(CLASSES)}"
)


def class_of(word: str) -> str:
    """The KS class of a spoken word: the word itself for a keyword, else '_unknown_'."""
    return word if word in KEYWORDS else UNKNOWN


def _audio_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix in AUDIO_SUFFIXES and path.is_file())


def _read_list(path: Path, root: Path) -> list[str]:
    """Entries '<word>/<file>' of a split list; each must name a file in a word folder under root."""
    numbered = [
        (number, inside(line.strip(), path, number, "listed path")) for number, line in read_lines(path)
    ]
    entries = [entry for _, entry in numbered]
    malformed = [
        (number, entry)
        for number, entry in numbered
        if len(Path(entry).parts) != 2 or Path(entry).parts[0] == BACKGROUND_NOISE
    ]
    if malformed:
        number, entry = malformed[0]
        raise DataLayoutError(
            f"Speech Commands split list '{path}' line {number} is {entry!r}; expected '<word>/<file>.wav' "
            f"({len(malformed)} such line(s)); expected layout: {LAYOUT}"
        )
    raise_if_missing([root / entry for entry in entries], f"Speech Commands split list '{path}'", LAYOUT)
    return entries


#: How ``_silence_`` items are made from the background-noise recordings (module docstring).
SILENCE_MODES = ("random_crops", "held_out_windows")


def read_speech_commands(
    root: str | Path,
    split: str,
    test_root: str | Path | None = None,
    silence: str = "held_out_windows",
    silence_dev_fraction: float = 0.1,
) -> list[Utterance]:
    """The utterances of ``split`` ('train', 'dev' or 'test'), sorted by id; ``label`` is the KS class.

    train/dev come from the training archive ``root`` (see the module docstring); their ids are
    '<word>/<file stem>' with ``text`` = the spoken word. ``_silence_`` items (``silence``): a whole
    recording '_background_noise_/<stem>' (random_crops), or a window '_background_noise_/<stem>_<start>_<end>'
    (samples, ``start`` set; held_out_windows, dev from the last ``silence_dev_fraction`` of each recording).
    test comes from ``test_root`` (ids '<class>/<file stem>'). Raises DataLayoutError naming the path for a
    missing root, keyword folder, background-noise folder, split list or test class folder, a malformed or
    dangling list entry, or a test folder that is not one of the 12 classes; AudioDecodeError for
    unreadable audio.
    """
    check_choice("read_speech_commands", "split", split, ("train", "dev", "test"))
    check_choice("read_speech_commands", "silence", silence, SILENCE_MODES)
    if not 0.0 < silence_dev_fraction < 1.0:
        raise ValueError(
            f"read_speech_commands: silence_dev_fraction must be in (0, 1), got {silence_dev_fraction}"
        )
    if split == "test":
        if test_root is None:
            raise ValueError("read_speech_commands: the test split needs test_root (the official test set)")
        return _read_test_set(Path(test_root))
    root = require_dir(Path(root), "Speech Commands root", LAYOUT)
    missing_keywords = [word for word in KEYWORDS if not (root / word).is_dir()]
    if missing_keywords:
        raise DataLayoutError(
            f"Speech Commands root '{root}' lacks the keyword folder(s) {missing_keywords}; expected layout: {LAYOUT}"
        )
    listed = {
        name: set(_read_list(require_file(root / filename, "Speech Commands split list", LAYOUT), root))
        for name, filename in SPLIT_LISTS.items()
    }
    both = listed["dev"] & listed["test"]
    if both:
        raise DataLayoutError(
            f"Speech Commands: {len(both)} file(s) are in both validation_list.txt and testing_list.txt under "
            f"'{root}', e.g. {sorted(both)[0]!r}"
        )
    words = sorted(
        folder.name
        for folder in root.iterdir()
        if folder.is_dir() and folder.name != BACKGROUND_NOISE and not folder.name.startswith(".")
    )
    if split == "dev":
        entries = sorted(listed["dev"])
    else:
        excluded = listed["dev"] | listed["test"]
        entries = [
            f"{word}/{path.name}"
            for word in words
            for path in _audio_files(root / word)
            if f"{word}/{path.name}" not in excluded
        ]
    paths = [root / entry for entry in entries]
    infos = probe_audio(paths, f"SpeechCommands/{split}")
    utterances = [
        Utterance(
            id=str(Path(entry).with_suffix("")),
            path=path,
            num_samples=info.num_samples,
            text=Path(entry).parts[0],
            label=class_of(Path(entry).parts[0]),
        )
        for entry, path, info in zip(entries, paths, infos, strict=True)
    ]
    utterances += _silence_items(root, split, silence, silence_dev_fraction)
    _log_counts(utterances, f"{root} {split}")
    return sorted(utterances, key=lambda utterance: utterance.id)


def silence_regions(num_samples: int, dev_fraction: float) -> dict[str, tuple[int, int]]:
    """[start, end) samples of a noise recording that give training's and dev's ``_silence_`` windows under
    held_out_windows: dev the last max(1 s, round(dev_fraction x length)), train everything before it."""
    held_out = min(num_samples, max(SILENCE_WINDOW_SAMPLES, round(dev_fraction * num_samples)))
    return {"train": (0, num_samples - held_out), "dev": (num_samples - held_out, num_samples)}


def _silence_items(root: Path, split: str, silence: str, dev_fraction: float) -> list[Utterance]:
    """The '_silence_' items of ``split`` from the background-noise recordings (module docstring)."""
    noise_dir = require_dir(root / BACKGROUND_NOISE, "Speech Commands background-noise folder", LAYOUT)
    recordings = _audio_files(noise_dir)
    if not recordings:
        raise DataLayoutError(
            f"Speech Commands background-noise folder '{noise_dir}' holds no audio file; expected layout: {LAYOUT}"
        )
    infos = probe_audio(recordings, f"SpeechCommands/{BACKGROUND_NOISE}")
    short = [
        path.name
        for path, info in zip(recordings, infos, strict=True)
        if info.num_samples < SILENCE_WINDOW_SAMPLES
    ]
    if short:
        raise DataLayoutError(
            f"Speech Commands background-noise recording(s) {short} in '{noise_dir}' are shorter than the 1 s "
            "_silence_ window"
        )
    if silence == "random_crops":
        items = [
            Utterance(
                id=f"{BACKGROUND_NOISE}/{path.stem}", path=path, num_samples=info.num_samples, label=SILENCE
            )
            for path, info in zip(recordings, infos, strict=True)
        ]
        logger.info(
            "Speech Commands %s: _silence_ = the %d whole background-noise recordings, a random 1 s crop at each "
            "draw (s3prl); these crops overlap the audio the other split draws from",
            split,
            len(items),
        )
        return items
    windows = []
    tail_samples = 0
    for path, info in zip(recordings, infos, strict=True):
        first, last = silence_regions(info.num_samples, dev_fraction)[split]
        count = (last - first) // SILENCE_WINDOW_SAMPLES
        tail_samples += last - first - count * SILENCE_WINDOW_SAMPLES
        for number in range(count):
            start = first + number * SILENCE_WINDOW_SAMPLES
            end = start + SILENCE_WINDOW_SAMPLES
            windows.append(
                Utterance(
                    id=f"{BACKGROUND_NOISE}/{path.stem}_{start}_{end}",
                    path=path,
                    num_samples=SILENCE_WINDOW_SAMPLES,
                    label=SILENCE,
                    start=start,
                )
            )
    if not windows:
        raise DataLayoutError(
            f"Speech Commands background-noise folder '{noise_dir}': no recording leaves a 1 s {split} window "
            f"(dev takes the last {dev_fraction:.0%} of each, at least 1 s), so there is no _silence_ window"
        )
    logger.info(
        "Speech Commands %s: %d _silence_ windows of 1 s from the %s part of %d background-noise recordings "
        "(dev: the last %.0f%% of each, at least 1 s; train: the rest, so no dev window is training audio); "
        "%.2f s in all (each part's tail shorter than 1 s) are left out",
        split,
        len(windows),
        "held-out" if split == "dev" else "training",
        len(recordings),
        100 * dev_fraction,
        tail_samples / SAMPLE_RATE,
    )
    return windows


def _read_test_set(test_root: Path) -> list[Utterance]:
    test_root = require_dir(test_root, "Speech Commands test set root", TEST_LAYOUT)
    folders = sorted(
        folder.name for folder in test_root.iterdir() if folder.is_dir() and not folder.name.startswith(".")
    )
    unexpected = [name for name in folders if name not in CLASSES]
    if unexpected:
        raise DataLayoutError(
            f"Speech Commands test set root '{test_root}' has folder(s) {unexpected[:5]} that are not KS classes "
            f"(is it the training archive?); expected layout: {TEST_LAYOUT}"
        )
    missing = [name for name in CLASSES if name not in folders]
    if missing:
        raise DataLayoutError(
            f"Speech Commands test set root '{test_root}' lacks the class folder(s) {missing}; "
            f"expected layout: {TEST_LAYOUT}"
        )
    entries = [(name, path) for name in CLASSES for path in _audio_files(test_root / name)]
    empty = [name for name in CLASSES if not any(label == name for label, _ in entries)]
    if empty:
        raise DataLayoutError(
            f"Speech Commands test set: the class folder(s) {empty} under '{test_root}' hold no audio file"
        )
    infos = probe_audio([path for _, path in entries], "SpeechCommands/test")
    utterances = [
        Utterance(id=f"{label}/{path.stem}", path=path, num_samples=info.num_samples, label=label)
        for (label, path), info in zip(entries, infos, strict=True)
    ]
    _log_counts(utterances, f"{test_root} test")
    return sorted(utterances, key=lambda utterance: utterance.id)


def _log_counts(utterances: list[Utterance], where: str) -> None:
    counts = Counter(utterance.label for utterance in utterances)
    logger.info(
        "Speech Commands %s: %d utterances; per class: %s",
        where,
        len(utterances),
        ", ".join(f"{label} {counts[label]}" for label in CLASSES),
    )
