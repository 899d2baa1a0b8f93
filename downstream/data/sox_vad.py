"""s3prl's voice-activity detection for speaker verification: the ``sox`` program's ``silence`` effect, cached.

s3prl 0.4.18 reads every SV file (train, dev and test) through sox effects ``channels 1``, ``rate 16000``,
``gain -3.0`` and ``silence 1 0.1 0.1% -1 0.1 0.1%`` (``sv_voxceleb1/dataset.py:22-27``): leading audio
is dropped until 0.1 s stays above 0.1 % of full scale, and every later stretch of 0.1 s below it is cut
out. torchaudio 2.11 no longer has ``sox_effects``, so ``vad_files`` runs the Debian ``sox`` program (SoX
14.4) once per file and keeps the result in a cache; training then reads the cached files like any others.

The gain matters to the VAD (the threshold is relative to full scale), so sox applies it before
``silence``, then undoes it (``gain +3``): the cached file holds the kept samples at their original scale
(exactly, for 16-bit 16 kHz mono sources, stored as 16-bit FLAC without dither; other sources are stored
as 32-bit float WAV), and the gain itself is applied when the audio is loaded, by the one gain mechanism
(``downstream.data.audio.load_audio``, ``task.gain_db``). Loaded with the same ``gain_db``, a cached file
equals sox's own output of the whole chain (tests/test_sox_audio.py).

Cache: ``<cache>/sox_vad/<2 hex>/<sha1>.flac|.wav``, keyed by the source's resolved path, size and
modification time and the effect chain, in ``$SSL_BENCH_CACHE`` (default ``~/.cache/ssl-interface-bench``)
unless a folder is given. A source whose every sample is removed leaves an ``.empty`` marker instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile

from downstream.data.audio import SAMPLE_RATE
from downstream.data.corpus import cache_dir
from downstream.data.text import shown

logger = logging.getLogger(__name__)

#: sox's ``silence`` arguments in s3prl's SV chain (sv_voxceleb1/dataset.py:26).
VAD_EFFECT = ("silence", "1", "0.1", "0.1%", "-1", "0.1", "0.1%")
#: Bump when the cached files' meaning changes.
_FORMAT = "1"


_UNKNOWN_FRAMES = 2**63 - 1


class SoxError(RuntimeError):
    """The ``sox`` program is missing or failed on a file (the message names it and what to do)."""


def sox_program() -> str:
    """The path of the ``sox`` program; SoxError saying how to install it when it is not on PATH."""
    program = shutil.which("sox")
    if program is None:
        raise SoxError(
            "task.vad=true runs the 'sox' program (s3prl's SV voice-activity detection, sox's 'silence' "
            "effect) but it is not on PATH: install it (Debian/Ubuntu: apt-get install sox; conda: conda "
            "install -c conda-forge sox) or set task.vad=false"
        )
    return program


def vad_effects(gain_db: float) -> list[str]:
    """sox's effect chain for one file: s3prl's (channels, rate, gain, silence), then the gain undone."""
    chain = ["channels", "1", "rate", str(SAMPLE_RATE)]
    if gain_db:
        chain += ["gain", f"{gain_db:g}"]
    chain += list(VAD_EFFECT)
    if gain_db:
        chain += ["gain", f"{-gain_db:g}"]
    return chain


def _cache_stem(directory: Path, source: Path, chain: list[str]) -> Path:
    """``<directory>/<2 hex>/<sha1>`` (no suffix) of ``source`` as it is now and ``chain``."""
    stat = source.stat()
    key = "\n".join([_FORMAT, str(source), str(stat.st_size), str(stat.st_mtime_ns), " ".join(chain)])
    digest = hashlib.sha1(key.encode()).hexdigest()
    return directory / digest[:2] / digest


def _cached(stem: Path) -> Path | None | bool:
    """The cached file of ``stem``, None when its result was empty, False when not cached yet."""
    for suffix in (".flac", ".wav"):
        if stem.with_suffix(suffix).exists():
            return stem.with_suffix(suffix)
    return None if stem.with_suffix(".empty").exists() else False


def _target(stem: Path, source: Path) -> Path:
    """16-bit FLAC for a 16-bit 16 kHz mono source (exact), 32-bit float WAV otherwise."""
    info = soundfile.info(str(source))
    exact_16_bit = info.subtype == "PCM_16" and info.samplerate == SAMPLE_RATE and info.channels == 1
    return stem.with_suffix(".flac" if exact_16_bit else ".wav")


def _run_sox(program: str, source: Path, stem: Path, chain: list[str]) -> None:
    """sox source -> the cached file of ``stem`` (atomically: a temporary file renamed into place); an
    empty result leaves ``<stem>.empty`` instead."""
    target = _target(stem, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix)
    os.close(handle)
    encoding = ["-b", "16"] if target.suffix == ".flac" else ["-b", "32", "-e", "floating-point"]
    command = [program, "-q", "-D", str(source), *encoding, temporary, *chain]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SoxError(
                f"sox failed on {shown(source, True)} (exit {done.returncode}): "
                f"{done.stderr.strip() or 'no message'}; command: {' '.join(command)}"
            )
        # sox's FLAC of no samples declares total samples 0 ("unknown"), which libsndfile reports as the
        # largest count; sox writes the true count of any other output
        if soundfile.info(temporary).frames in (0, _UNKNOWN_FRAMES):
            stem.with_suffix(".empty").touch()
        else:
            os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def vad_files(
    sources: Sequence[Path],
    gain_db: float = 0.0,
    directory: str | Path | None = None,
    threads: int | None = None,
) -> list[Path | None]:
    """The VAD'ed version of each of ``sources`` (cached; sox runs only for files not cached yet), or None
    where sox's ``silence`` removed every sample.

    ``gain_db``: the gain s3prl applies before the VAD (the threshold is relative to full scale); the cached
    audio is at the source's scale, so load it with the same ``gain_db``. ``directory``: the cache folder
    (None: ``<$SSL_BENCH_CACHE>/sox_vad``). ``threads``: sox processes at a time (None: the usable cores).
    Raises SoxError when sox is missing or fails, naming the file.
    """
    if directory is None:
        base = cache_dir()
        if base is None:
            raise SoxError(
                "task.vad=true keeps sox's output in a cache, but SSL_BENCH_CACHE=off leaves no default "
                "folder: set task.vad_cache_dir=<folder>"
            )
        directory = base / "sox_vad"
    directory = Path(directory).expanduser()
    chain = vad_effects(gain_db)
    stems = [_cache_stem(directory, Path(source).resolve(), chain) for source in sources]
    todo = [
        (Path(source), stem) for source, stem in zip(sources, stems, strict=True) if _cached(stem) is False
    ]
    if todo:
        program = sox_program()
        workers = threads or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
        logger.info(
            "sox VAD (%s): processing %d of %d files with %d processes at a time into %s",
            " ".join(chain),
            len(todo),
            len(sources),
            workers,
            directory,
        )
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(lambda pair: _run_sox(program, pair[0], pair[1], chain), todo):
                pass
    found = [_cached(stem) for stem in stems]
    lost = [str(source) for source, path in zip(sources, found, strict=True) if path is False]
    if lost:
        raise SoxError(
            f"sox's output of {len(lost)} file(s) is missing from the cache {directory}: {lost[:3]}"
        )
    return found  # type: ignore[return-value]
