"""What every corpus reader returns, the layout error they raise, and the audio header probe they share.

Readers check a corpus before training starts: every layout problem is a ``DataLayoutError`` naming the
path and the expected layout, every unreadable audio header an ``AudioDecodeError`` naming the file.

Header probing (frames, sample rate, channels of every file) reads headers only (``soundfile.info``) and
is cached in a small TSV manifest per corpus split, so a second read of a large corpus costs one ``stat``
per file. The cache lives in ``$SSL_BENCH_CACHE`` if set, else ``$XDG_CACHE_HOME/ssl-interface-bench``,
else ``~/.cache/ssl-interface-bench``; ``SSL_BENCH_CACHE=off`` disables it. A cached row is reused only
while the file's size and modification time are unchanged; the cache is never written next to the data.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import soundfile

from downstream.data.audio import FLOAT_SUBTYPES, SAMPLE_RATE, AudioDecodeError, resampled_length
from downstream.data.text import shown as shown_value
from downstream.files import write_atomically

logger = logging.getLogger(__name__)

CACHE_ENV = "SSL_BENCH_CACHE"
_MANIFEST_HEADER = "path\tsize\tmtime_ns\tframes\tsample_rate\tchannels\tsubtype"
# Probing headers is I/O bound (libsndfile releases the GIL); threads help on cold or network disks.
_PROBE_THREADS = 8
_PROBE_PARALLEL_FROM = 256


@dataclass(frozen=True)
class Utterance:
    """One audio file of a corpus with its target.

    ``num_samples`` is the length at 16 kHz after any resampling (what ``load_audio`` returns);
    ``text`` is the transcript (LibriSpeech), ``label`` the class (speaker id, emotion). ``start`` is
    where the utterance begins in the file, in samples at 16 kHz: an utterance that is a window of a
    longer recording (Speech Commands' 1 s silence windows) spans [start, start + num_samples).
    ``source`` is where the id was read ('<text file>:<line>'); empty when the id comes from the audio
    file's own name (``origin`` then names the audio file). ``derived_from`` is the corpus file when a
    task's preprocessing rewrote the audio into ``path`` (SV's sox VAD: ``path`` is sox's cached output);
    None when ``path`` is the corpus file itself.
    """

    id: str
    path: Path
    num_samples: int
    text: str | None = None
    label: str | None = None
    start: int = 0
    source: str = ""
    derived_from: Path | None = None

    @property
    def origin(self) -> str:
        """Where this utterance comes from, for messages: ``source``, else the corpus file."""
        return self.source or str(self.corpus_file)

    @property
    def described(self) -> str:
        """The id and where it comes from, for messages: ``<id> (<origin>)``, each through ``text.shown``
        (an invisible character in either appears as its escape)."""
        return f"{shown_value(self.id)} ({shown_value(self.origin)})"

    @property
    def corpus_file(self) -> Path:
        """The audio file of the corpus this utterance comes from: ``derived_from``, else ``path``. The
        integrity pass checks these files (ids, leakage, sample rates, NaN/inf samples)."""
        return self.path if self.derived_from is None else self.derived_from

    @property
    def seconds(self) -> float:
        return self.num_samples / SAMPLE_RATE


class DataLayoutError(ValueError):
    """A corpus folder, split file, label file or lexicon is missing or malformed (message: path + expected layout)."""


def require_dir(path: Path, what: str, expected_layout: str) -> Path:
    """Return ``path`` if it is a directory, else raise DataLayoutError naming it and the expected layout."""
    if not path.is_dir():
        problem = "is not a directory" if path.exists() else "does not exist"
        raise DataLayoutError(f"{what} '{path}' {problem}; expected layout: {expected_layout}")
    return path


def require_file(path: Path, what: str, expected_layout: str) -> Path:
    """Return ``path`` if it is a file, else raise DataLayoutError naming it and the expected layout."""
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise DataLayoutError(f"{what} '{path}' {problem}; expected layout: {expected_layout}")
    return path


def check_choice(owner: str, name: str, value: object, choices: Sequence[object]) -> None:
    """Raise ValueError naming the parameter, the value and the allowed values unless value is one of them."""
    if value not in choices:
        allowed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{owner}: {name} must be one of {allowed}, got {value!r}")


def raise_if_missing(paths: Iterable[Path], what: str, expected_layout: str) -> None:
    """Raise one DataLayoutError listing how many of ``paths`` are missing and the first few of them."""
    missing = [path for path in paths if not path.is_file()]
    if missing:
        shown = "\n  ".join(shown_value(str(path)) for path in missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataLayoutError(
            f"{what}: {len(missing)} audio file(s) listed but not found:\n  {shown}{more}\n"
            f"expected layout: {expected_layout}"
        )


# Audio file endings the readers accept: the real corpora's .wav, and .flac (the shipped mini corpus).
AUDIO_SUFFIXES = (".wav", ".flac")


def audio_path(stem: Path) -> Path:
    """<stem>.wav as on the real corpus, or <stem>.flac (the shipped mini corpus) when only that exists."""
    for suffix in AUDIO_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file():
            return candidate
    return stem.with_name(stem.name + AUDIO_SUFFIXES[0])


def label_vocabulary(utterances: Iterable[Utterance]) -> list[str]:
    """The sorted distinct labels of ``utterances`` (speaker ids for SID, emotions for ER)."""
    labels = {utterance.label for utterance in utterances}
    if None in labels:
        raise ValueError("label_vocabulary: some utterances have no label")
    return sorted(labels)  # type: ignore[arg-type]


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of one audio file."""

    frames: int
    sample_rate: int
    channels: int
    #: libsndfile's sample format ('PCM_16', 'FLOAT', ...): only 'FLOAT' and 'DOUBLE' can hold NaN or inf
    subtype: str = ""

    @property
    def can_be_nonfinite(self) -> bool:
        """Whether the file stores floating-point samples (integer PCM and FLAC are always finite)."""
        return self.subtype.upper() in FLOAT_SUBTYPES

    @property
    def num_samples(self) -> int:
        """Length at 16 kHz after resampling."""
        return resampled_length(self.frames, self.sample_rate, SAMPLE_RATE)


def cache_dir() -> Path | None:
    """Where manifests are cached, or None when ``SSL_BENCH_CACHE=off``."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return None if configured.strip().lower() in {"", "off", "0", "none"} else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ssl-interface-bench"


def _probe_one(path: Path) -> AudioInfo:
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError) as error:
        problem = f"cannot read the audio header of {shown_value(path, True)}: {error}"
        raise AudioDecodeError(problem) from error
    return AudioInfo(
        frames=int(info.frames),
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        subtype=str(info.subtype),
    )


def _read_manifest(manifest: Path) -> dict[str, tuple[int, int, AudioInfo]]:
    rows: dict[str, tuple[int, int, AudioInfo]] = {}
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    if not lines or lines[0] != _MANIFEST_HEADER:
        return rows
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != 7:
            continue
        try:
            size, mtime, frames, rate, channels = (int(field) for field in fields[1:6])
        except ValueError:
            continue
        rows[fields[0]] = (size, mtime, AudioInfo(frames, rate, channels, fields[6]))
    return rows


def _write_manifest(manifest: Path, rows: dict[str, tuple[int, int, AudioInfo]]) -> None:
    lines = [_MANIFEST_HEADER]
    for path, (size, mtime, info) in sorted(rows.items()):
        lines.append(
            f"{path}\t{size}\t{mtime}\t{info.frames}\t{info.sample_rate}\t{info.channels}\t{info.subtype}"
        )
    text = ("\n".join(lines) + "\n").encode("utf-8")
    try:
        write_atomically(manifest, lambda stream: stream.write(text))
    except OSError as error:
        logger.debug("could not write the audio manifest cache %s: %s", manifest, error)


def probe_audio(paths: Sequence[Path], corpus: str) -> list[AudioInfo]:
    """Header facts of every file in ``paths`` (cached per ``corpus``, a name such as 'LibriSpeech/dev-clean').

    Raises AudioDecodeError naming every file (first few) whose header cannot be read or that is empty.
    Logs one warning per call when files need resampling to 16 kHz or downmixing to mono.
    """
    resolved = [str(Path(path).resolve()) for path in paths]
    directory = cache_dir()
    manifest = None
    cached: dict[str, tuple[int, int, AudioInfo]] = {}
    if directory is not None and resolved:
        key = hashlib.sha1(f"{corpus}\n{os.path.commonpath(resolved)}".encode()).hexdigest()[:16]
        safe_name = "".join(char if char.isalnum() else "_" for char in corpus)
        manifest = directory / "manifests" / f"{safe_name}-{key}.tsv"
        cached = _read_manifest(manifest)

    infos: list[AudioInfo | None] = [None] * len(resolved)
    stats: list[tuple[int, int]] = []
    to_probe: list[int] = []
    for position, path in enumerate(resolved):
        try:
            stat = os.stat(path)
        except OSError as error:
            raise AudioDecodeError(f"cannot open audio file {shown_value(path, True)}: {error}") from error
        stats.append((stat.st_size, stat.st_mtime_ns))
        row = cached.get(path)
        if row is not None and row[:2] == stats[-1]:
            infos[position] = row[2]
        else:
            to_probe.append(position)

    failures: list[str] = []

    def probe(position: int) -> None:
        try:
            infos[position] = _probe_one(Path(resolved[position]))
        except AudioDecodeError as error:
            failures.append(str(error))

    if len(to_probe) >= _PROBE_PARALLEL_FROM:
        with ThreadPoolExecutor(_PROBE_THREADS) as pool:
            list(pool.map(probe, to_probe))
    else:
        for position in to_probe:
            probe(position)
    empty = [resolved[i] for i, info in enumerate(infos) if info is not None and info.frames == 0]
    failures.extend(f"{shown_value(path, True)} holds no audio samples" for path in empty)
    if failures:
        shown = "\n  ".join(sorted(failures)[:5])
        more = f"\n  ... and {len(failures) - 5} more" if len(failures) > 5 else ""
        raise AudioDecodeError(f"{corpus}: {len(failures)} audio file(s) cannot be used:\n  {shown}{more}")

    if manifest is not None and to_probe:
        for position in to_probe:
            cached[resolved[position]] = (*stats[position], infos[position])  # type: ignore[assignment]
        _write_manifest(manifest, cached)

    result: list[AudioInfo] = infos  # type: ignore[assignment]
    _PROBED.update(zip(resolved, zip(stats, result, strict=True), strict=True))
    _warn_about_conversions(result, resolved, corpus)
    return result


#: Every header this process probed, by resolved path: the engine's data check reads rates and sample
#: formats from here instead of probing again (``audio_info``).
_PROBED: dict[str, tuple[tuple[int, int], AudioInfo]] = {}


def audio_info(path: str | Path, resolved: bool = False) -> AudioInfo:
    """The header facts of ``path`` as ``probe_audio`` found them (probed again if no reader did, or if the
    file's size or modification time changed since). ``resolved``: ``path`` is already a real path."""
    resolved = str(path) if resolved else str(Path(path).resolve())
    stat = os.stat(resolved)
    known = _PROBED.get(resolved)
    if known is None or known[0] != (stat.st_size, stat.st_mtime_ns):
        probe_audio([Path(resolved)], "audio")
    return _PROBED[resolved][1]


def rate_examples(files: Sequence[tuple[str, int]], shown: int = 10) -> str:
    """'<file> (<rate> Hz)' for the first ``shown`` of ``files`` and how many more there are."""
    named = ", ".join(f"{shown_value(path, True)} ({rate} Hz)" for path, rate in files[:shown])
    return named + (f" and {len(files) - shown} more" if len(files) > shown else "")


def _warn_about_conversions(infos: Sequence[AudioInfo], paths: Sequence[str], corpus: str) -> None:
    other_rate = [(path, info.sample_rate) for path, info in zip(paths, infos, strict=True)]
    other_rate = [(path, rate) for path, rate in other_rate if rate != SAMPLE_RATE]
    multichannel = sum(info.channels > 1 for info in infos)
    if other_rate:
        rates = Counter(rate for _, rate in other_rate)
        described = ", ".join(f"{count} at {rate} Hz" for rate, count in sorted(rates.items()))
        logger.warning(
            "%s: %d of %d files are not at %d Hz (%s); they are resampled on load unless the data check "
            "refuses them (a 16 kHz corpus needs task.resample=true): %s",
            corpus,
            len(other_rate),
            len(infos),
            SAMPLE_RATE,
            described,
            rate_examples(other_rate),
        )
    if multichannel:
        logger.warning(
            "%s: %d of %d files have several channels; they are averaged to mono on load",
            corpus,
            multichannel,
            len(infos),
        )
