"""Audio decoding with soundfile: float32 mono at 16 kHz, whatever the file holds, with an optional gain.

torchaudio.load needs ffmpeg in recent versions; soundfile (libsndfile) decodes WAV and FLAC on its own.
The gain (``gain_db``, a task key: ``task.gain_db``) is the one place where audio is scaled: s3prl 0.4.18
runs sox ``gain -3.0`` on every SV, KS and QbE file (``sv_voxceleb1/dataset.py:25``,
``speech_commands/dataset.py:22``, ``quesst14_dtw/dataset.py:31``); sox's gain is the multiplication by
10^(dB/20) done here (checked against the ``sox`` program in tests/test_sox_audio.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

from downstream.data.text import shown

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000


class AudioDecodeError(ValueError):
    """An audio file cannot be decoded or holds no samples (the message names the file)."""


class NonFiniteAudioError(AudioDecodeError):
    """A floating-point audio file holds NaN or infinite samples (the message names the file and counts
    them). Integer PCM and FLAC cannot hold such values, so only float files are checked."""


#: Sample formats that can hold NaN or inf (soundfile's subtype names); the only ones checked.
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


def resampled_length(frames: int, source_rate: int, target_rate: int = SAMPLE_RATE) -> int:
    """Samples after resampling ``frames`` from ``source_rate`` to ``target_rate``: round(frames * target / source).

    Computed in integers (halves round up) so readers and ``load_audio`` agree exactly.
    """
    if source_rate == target_rate:
        return frames
    return (2 * frames * target_rate + source_rate) // (2 * source_rate)


def gain_factor(gain_db: float) -> float:
    """The amplitude factor of a gain of ``gain_db`` decibels: 10^(gain_db / 20) (sox ``gain``)."""
    return 10.0 ** (gain_db / 20.0)


def load_audio(
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    start: int = 0,
    stop: int | None = None,
    gain_db: float = 0.0,
) -> torch.Tensor:
    """Decode ``path`` to a float32 mono tensor [N] at ``sample_rate``, scaled by ``gain_db`` decibels.

    Channels are averaged; another file rate is resampled with soxr (high quality) and the result is
    trimmed or zero-padded to ``resampled_length`` so it matches what the corpus readers report.
    ``start``/``stop`` select samples [start, stop) of the result (at ``sample_rate``); when the file is
    already at that rate only those frames are decoded. Raises AudioDecodeError naming the file when it
    cannot be decoded or is empty, NonFiniteAudioError when a float file holds NaN or inf samples (checked
    on the decoded samples; integer formats cannot hold them).
    """
    path = Path(path)
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(
            f"load_audio: need 0 <= start <= stop, got start={start}, stop={stop} for {shown(path, True)}"
        )
    try:
        with soundfile.SoundFile(str(path)) as handle:
            file_rate = handle.samplerate
            total = handle.frames
            floating = str(handle.subtype).upper() in FLOAT_SUBTYPES
            if file_rate == sample_rate:
                end = total if stop is None else min(stop, total)
                handle.seek(min(start, total))
                data = handle.read(max(end - start, 0), dtype="float32", always_2d=True)
            else:
                data = handle.read(dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise AudioDecodeError(f"cannot decode audio file {shown(path, True)}: {error}") from error
    if total == 0:
        raise AudioDecodeError(f"audio file {shown(path, True)} holds no samples")
    if floating and not np.isfinite(data).all():
        bad = int(data.size - np.isfinite(data).sum())
        raise NonFiniteAudioError(
            f"audio file {shown(path, True)} holds {bad} NaN or infinite sample(s) (of {data.size} read); "
            "task.on_nonfinite=skip leaves such files out"
        )
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if file_rate != sample_rate:
        logger.debug("resampling '%s' from %d Hz to %d Hz", path, file_rate, sample_rate)
        target = resampled_length(total, file_rate, sample_rate)
        mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
        mono = np.pad(mono[:target], (0, max(target - len(mono), 0)))
        mono = mono[start:stop]
    if gain_db:
        mono = (mono * np.float32(gain_factor(gain_db))).astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(mono))


def nonfinite_problem(path: str | Path, subtype: str | None = None) -> str | None:
    """The ``NonFiniteAudioError`` message of ``path`` when it is a float file holding NaN or infinite
    samples, else None. Only float files (``FLOAT_SUBTYPES``; ``subtype``: the header's, read here when
    None) are decoded, once: integer PCM and FLAC cannot hold such values. For files that are not read by
    ``load_audio`` later, whose decoding would check them: the sources of a task's preprocessing (SV's sox
    VAD turns NaN into finite samples), and the integrity pass before training."""
    if subtype is None:
        subtype = soundfile.info(str(path)).subtype
    if str(subtype).upper() not in FLOAT_SUBTYPES:
        return None
    try:
        load_audio(path)
    except NonFiniteAudioError as error:
        return str(error)
    return None
