"""Speaker diarization (SD): Kaldi-style data folders as s3prl's diarization recipe reads them.

s3prl's recipe (downstream/diarization, after Hitachi's EEND) trains on 2-speaker Libri2Mix mixtures
prepared into one folder per split, ``<root>/{train,dev,test}``, each holding:

    wav.scp    '<recording id> <audio path>'           (a path relative to the folder, or absolute)
    segments   '<utterance id> <recording id> <start s> <end s>'   one speaker turn per line
    utt2spk    '<utterance id> <speaker id>'
    reco2dur   '<recording id> <duration s>'            optional here (taken from the audio header if absent)
    rttm       'SPEAKER <recording> <channel> <start s> <duration s> <NA> <NA> <speaker> <NA> <NA>'  optional

The frame-level training targets come from segments + utt2spk (as in s3prl's dataset); the scoring
reference is the rttm file when the folder has one (s3prl scores its predictions against it with dscore),
else the same segments. Kaldi's piped wav.scp entries ('... |') are not supported: extract the audio to
files first.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from downstream.data.audio import SAMPLE_RATE
from downstream.data.corpus import (
    DataLayoutError,
    Utterance,
    check_choice,
    probe_audio,
    raise_if_missing,
    require_dir,
    require_file,
)
from downstream.data.text import inside, read_lines, refuse_repeated_ids, shown

SPLITS = ("train", "dev", "test")
LAYOUT = (
    "<root>/{train,dev,test}/ Kaldi-style data folders, each with wav.scp ('<recording> <audio path>'), "
    "segments ('<utterance> <recording> <start s> <end s>'), utt2spk ('<utterance> <speaker>'), and "
    "optionally reco2dur ('<recording> <seconds>') and rttm ('SPEAKER <recording> 1 <start s> <duration s> "
    "<NA> <NA> <speaker> <NA> <NA>')"
)
# A turn may end this far past the recording's end (reco2dur is rounded in the Kaldi files).
_DURATION_TOLERANCE = 0.05


@dataclass(frozen=True)
class SpeakerTurn:
    """One stretch of speech of one speaker, in seconds from the start of the recording."""

    speaker: str
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Recording(Utterance):
    """A multi-speaker recording: ``turns`` (segments + utt2spk) give the training targets,
    ``reference`` (rttm if present, else the turns) the scoring reference; ``speakers`` is the sorted set
    of speakers in ``turns`` (target column k is speakers[k], as in s3prl's dataset)."""

    turns: tuple[SpeakerTurn, ...] = ()
    reference: tuple[SpeakerTurn, ...] = ()

    @property
    def speakers(self) -> tuple[str, ...]:
        return tuple(sorted({turn.speaker for turn in self.turns}))


def _table(path: Path, fields: int, what: str, line_format: str) -> list[tuple[int, list[str]]]:
    """(line number, columns) of the non-blank lines of a Kaldi table split into ``fields`` columns on
    whitespace (the last one keeps any further spaces, as a path may); DataLayoutError naming the line
    otherwise. The first column is a key (an id): refused when it leads out of its folder."""
    rows = []
    for line_number, line in read_lines(path):
        columns = line.split(maxsplit=fields - 1)
        if len(columns) != fields:
            raise DataLayoutError(f"{what} '{path}' line {line_number} is not '{line_format}': {line!r}")
        inside(columns[0], path, line_number)
        rows.append((line_number, columns))
    if not rows:
        raise DataLayoutError(f"{what} '{path}' is empty; expected lines '{line_format}'")
    return rows


def _unique_map(rows: list[tuple[int, list[str]]], path: Path, what: str) -> dict[str, str]:
    """Key -> value of a two-column table whose keys are unique (``refuse_repeated_ids``)."""
    refuse_repeated_ids(((columns[0], f"{path}:{number}") for number, columns in rows), f"{what} '{path}'")
    return {columns[0]: columns[1] for _, columns in rows}


def _seconds(value: str, path: Path, key: str, what: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise DataLayoutError(
            f"{what} '{path}': {shown(key, True)} has the time {value!r}, expected seconds"
        ) from None
    if not seconds >= 0:
        raise DataLayoutError(f"{what} '{path}': {shown(key, True)} has the negative time {value!r}")
    return seconds


def read_rttm(path: str | Path) -> dict[str, list[SpeakerTurn]]:
    """Recording id -> speaker turns of an RTTM file's SPEAKER lines (other line types are ignored).

    Fields: type, file, channel, onset (s), duration (s), ortho, stype, name (speaker), conf[, slat]
    (NIST RT-09 RTTM, as dscore and pyannote read it). DataLayoutError for a malformed SPEAKER line.
    """
    path = Path(path)
    turns: dict[str, list[SpeakerTurn]] = defaultdict(list)
    line_format = "SPEAKER <recording> <channel> <onset s> <duration s> <NA> <NA> <speaker> <NA> [<NA>]"
    for line_number, line in read_lines(path):
        fields = line.split()
        if fields[0] != "SPEAKER":
            continue
        if len(fields) < 9:
            raise DataLayoutError(f"RTTM file '{path}' line {line_number} is not '{line_format}': {line!r}")
        onset = _seconds(fields[3], path, fields[1], "RTTM file")
        duration = _seconds(fields[4], path, fields[1], "RTTM file")
        turns[fields[1]].append(SpeakerTurn(fields[7], onset, onset + duration))
    return dict(turns)


def read_kaldi_diarization(data_dir: str | Path, corpus: str = "diarization") -> list[Recording]:
    """The recordings of one Kaldi-style data folder (see the module docstring), sorted by id.

    Raises DataLayoutError naming the file and line for a missing folder or file, a malformed or duplicate
    line, a segment of an unknown recording or utterance, a turn that ends before it starts or after the
    recording, a recording without turns, and audio files that do not exist.
    """
    data_dir = require_dir(Path(data_dir), "diarization data folder", LAYOUT)
    what = "Kaldi data file"
    wav_scp = require_file(data_dir / "wav.scp", "diarization wav.scp", LAYOUT)
    segments_path = require_file(data_dir / "segments", "diarization segments file", LAYOUT)
    utt2spk_path = require_file(data_dir / "utt2spk", "diarization utt2spk file", LAYOUT)
    scp_rows = _table(wav_scp, 2, what, "<recording> <audio path>")
    wav_paths = _unique_map(scp_rows, wav_scp, what)
    scp_lines = {columns[0]: number for number, columns in scp_rows}
    piped = [rec for rec, value in wav_paths.items() if value.rstrip().endswith("|") or value.strip() == "-"]
    if piped:
        raise DataLayoutError(
            f"'{wav_scp}' gives recording '{piped[0]}' as a command or stdin ({wav_paths[piped[0]]!r}); "
            "only audio file paths are supported: extract the audio to files and list their paths"
        )
    utt2spk = _unique_map(_table(utt2spk_path, 2, what, "<utterance> <speaker>"), utt2spk_path, what)
    durations: dict[str, float] | None = None
    reco2dur = data_dir / "reco2dur"
    if reco2dur.is_file():
        rows = _table(reco2dur, 2, what, "<recording> <seconds>")
        durations = {
            rec: _seconds(value, reco2dur, rec, what)
            for rec, value in _unique_map(rows, reco2dur, what).items()
        }

    turns: dict[str, list[SpeakerTurn]] = defaultdict(list)
    segment_rows = _table(segments_path, 4, what, "<utterance> <recording> <start s> <end s>")
    refuse_repeated_ids(
        ((columns[0], f"{segments_path}:{number}") for number, columns in segment_rows),
        f"{what} '{segments_path}'",
    )
    for _, (utterance, recording, start, end) in segment_rows:
        if recording not in wav_paths:
            raise DataLayoutError(
                f"{what} '{segments_path}': utterance {shown(utterance, True)} is in recording "
                f"{shown(recording, True)}, which '{wav_scp}' does not list"
            )
        if utterance not in utt2spk:
            raise DataLayoutError(
                f"{what} '{segments_path}': utterance {shown(utterance, True)} has no speaker in "
                f"'{utt2spk_path}'"
            )
        start_s = _seconds(start, segments_path, utterance, what)
        end_s = _seconds(end, segments_path, utterance, what)
        if end_s <= start_s:
            raise DataLayoutError(
                f"{what} '{segments_path}': utterance {shown(utterance, True)} ends ({end}) before it "
                f"starts ({start})"
            )
        turns[recording].append(SpeakerTurn(utt2spk[utterance], start_s, end_s))

    silent = sorted(set(wav_paths) - set(turns))
    if silent:
        raise DataLayoutError(
            f"'{segments_path}' has no segment of {len(silent)} recording(s) listed in '{wav_scp}' "
            f"(first: {', '.join(shown(rec) for rec in silent[:5])})"
        )
    references: dict[str, list[SpeakerTurn]] = dict(turns)
    rttm = data_dir / "rttm"
    if rttm.is_file():
        references = read_rttm(rttm)
        unknown = sorted(set(references) - set(wav_paths))
        missing = sorted(set(wav_paths) - set(references))
        if unknown or missing:
            problem = (
                f"names recordings not in '{wav_scp}': {unknown[:5]}"
                if unknown
                else (f"has no turn of the recordings {missing[:5]}")
            )
            raise DataLayoutError(f"RTTM file '{rttm}' {problem}")

    recordings = sorted(wav_paths)
    for recording in recordings:  # Kaldi's absolute paths are kept; a relative one stays inside the folder
        if not Path(wav_paths[recording]).is_absolute() or "\0" in wav_paths[recording]:
            inside(wav_paths[recording], wav_scp, scp_lines[recording], "audio path")
    paths = [
        Path(wav_paths[rec]) if Path(wav_paths[rec]).is_absolute() else data_dir / wav_paths[rec]
        for rec in recordings
    ]
    raise_if_missing(paths, f"diarization recordings (from '{wav_scp}')", LAYOUT)
    infos = probe_audio(paths, f"{corpus}/{data_dir.name}")
    result = []
    for recording, path, info in zip(recordings, paths, infos, strict=True):
        seconds = info.num_samples / SAMPLE_RATE
        if durations is not None:
            if recording not in durations:
                raise DataLayoutError(f"'{reco2dur}' has no duration for recording {shown(recording, True)}")
            if abs(durations[recording] - seconds) > _DURATION_TOLERANCE:
                raise DataLayoutError(
                    f"'{reco2dur}' gives recording {shown(recording, True)} {durations[recording]} s but "
                    f"{shown(path, True)} holds {seconds:.3f} s"
                )
        late = [
            turn
            for turn in (*turns[recording], *references[recording])
            if turn.end > seconds + _DURATION_TOLERANCE
        ]
        if late:
            raise DataLayoutError(
                f"recording {shown(recording, True)} ({shown(path, True)}, {seconds:.3f} s) has a turn of "
                f"speaker {shown(late[0].speaker, True)} ending at {late[0].end} s, after the audio ends "
                f"(files: '{segments_path}'"
                f"{f', {rttm}' if rttm.is_file() else ''})"
            )
        result.append(
            Recording(
                id=recording,
                path=path,
                num_samples=info.num_samples,
                turns=tuple(sorted(turns[recording], key=lambda t: (t.start, t.speaker))),
                reference=tuple(sorted(references[recording], key=lambda t: (t.start, t.speaker))),
                source=f"{wav_scp}:{scp_lines[recording]}",
            )
        )
    return result


def read_diarization(root: str | Path, split: str) -> list[Recording]:
    """The recordings of ``split`` ('train', 'dev' or 'test'): the Kaldi data folder <root>/<split>."""
    check_choice("read_diarization", "split", split, SPLITS)
    root = require_dir(Path(root), "diarization data root", LAYOUT)
    return read_kaldi_diarization(root / split, corpus=f"diarization-{root.name}")
