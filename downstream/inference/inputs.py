"""Audio to predict on or extract from: listing the inputs, checking them before anything runs, batching them
as the trainer batches an evaluation split, and output paths that stay inside the output folder.

Inputs are a folder (every audio file below it, ids = paths relative to it without the extension), a JSON
Lines manifest (``*.jsonl``: one object per line with ``path`` and optionally ``id``), or a list file (one
``path`` or ``id path`` per line, as a Kaldi wav.scp). Relative paths in a manifest or list are relative to
the file's folder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile
import torch

from downstream.data.audio import SAMPLE_RATE, AudioDecodeError, resampled_length
from downstream.data.corpus import Utterance
from downstream.data.dataset import AudioDataset, collate_wavs
from downstream.data.text import shown
from downstream.tasks.base import Task
from downstream.training.loading import batch_loader, bucket_sampler, task_dataset
from downstream.training.settings import TrainerSettings

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".sph")


@dataclass
class InputReport:
    """What the input checks changed, counted: ``resampled`` (files not at 16 kHz, resampled with soxr),
    ``downmixed`` (files with several channels, averaged), ``padded`` (shorter than the upstream's
    ``min_samples``, zero-padded to it as in training), ``skipped`` ({path, reason} of every file left
    out: unreadable, empty, or longer than an upstream that refuses long audio)."""

    total: int = 0
    resampled: int = 0
    downmixed: int = 0
    padded: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)

    def skip(self, path: Path | str, reason: str) -> None:
        log.warning("skipped %s: %s", path, reason)
        self.skipped.append({"path": str(path), "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "used": self.total - len(self.skipped),
            "resampled": self.resampled,
            "downmixed": self.downmixed,
            "padded": self.padded,
            "skipped": len(self.skipped),
            "skipped_files": list(self.skipped),
        }

    def summary(self) -> str:
        return (
            f"{self.total - len(self.skipped)} of {self.total} inputs used; {len(self.skipped)} skipped, "
            f"{self.resampled} resampled to 16 kHz, {self.downmixed} downmixed, {self.padded} padded to the "
            "upstream's shortest input"
        )


def _line_entries(list_file: Path) -> list[tuple[str | None, str]]:
    entries = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if list_file.suffix == ".jsonl":
            try:
                record = json.loads(line)
                entries.append((record.get("id"), str(record["path"])))
            except (ValueError, KeyError, AttributeError) as error:
                raise ValueError(
                    f"{list_file}:{number}: expected a JSON object with 'path' (and optionally 'id'), got "
                    f"{line[:80]!r} ({error})"
                ) from None
        else:
            parts = line.split(maxsplit=1)
            entries.append((parts[0], parts[1]) if len(parts) == 2 else (None, parts[0]))
    return entries


def list_inputs(source: str | Path) -> list[Utterance]:
    """The audio files of ``source`` (a folder, a ``*.jsonl`` manifest or a list file) as utterances with
    their id and path (``num_samples`` 0 until ``check_inputs``). Raises ValueError naming ``source`` when it
    does not exist or lists nothing, and naming both paths when two inputs have one id."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        entries = [(path.relative_to(source).with_suffix("").as_posix(), str(path)) for path in files]
    elif source.is_file():
        entries = []
        for given_id, given_path in _line_entries(source):
            path = Path(given_path)
            path = path if path.is_absolute() else source.parent / path
            entries.append((given_id or path.stem, str(path)))
    else:
        raise ValueError(f"inputs={source}: no such folder or file (a folder of audio, a list or a .jsonl)")
    if not entries:
        raise ValueError(f"inputs={source} holds no audio file (looked for {', '.join(AUDIO_SUFFIXES)})")
    seen: dict[str, str] = {}
    for utterance_id, path in entries:
        if utterance_id in seen:
            raise ValueError(
                f"inputs={source}: {shown(seen[utterance_id])} and {shown(path)} both have the id "
                f"{utterance_id!r}"
            )
        seen[utterance_id] = path
    return [Utterance(id=utterance_id, path=Path(path), num_samples=0) for utterance_id, path in entries]


def check_inputs(
    utterances: list[Utterance], min_samples: int, max_samples: int | None, report: InputReport
) -> list[Utterance]:
    """The readable inputs with their length at 16 kHz (``resampled_length``, what ``load_audio`` returns);
    the others are named in ``report`` (unreadable, empty, or longer than ``max_samples``, an upstream
    that refuses long audio) and left out. Other rates, several channels and audio shorter than
    ``min_samples`` (padded when loaded, as in training) are counted."""
    report.total += len(utterances)
    kept = []
    for utterance in utterances:
        try:
            info = soundfile.info(str(utterance.path))
        except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
            report.skip(utterance.path, f"unreadable ({error})")
            continue
        if info.frames <= 0:
            report.skip(utterance.path, "holds no samples")
            continue
        samples = resampled_length(info.frames, info.samplerate)
        if max_samples is not None and samples > max_samples:
            report.skip(
                utterance.path,
                f"{samples / SAMPLE_RATE:.1f} s is longer than the upstream accepts ({max_samples / SAMPLE_RATE:g} "
                "s; upstream.whisper_long_audio=error in the run's settings)",
            )
            continue
        report.resampled += info.samplerate != SAMPLE_RATE
        report.downmixed += info.channels > 1
        report.padded += samples < min_samples
        kept.append(Utterance(id=utterance.id, path=utterance.path, num_samples=samples))
    return kept


class _TolerantDataset(AudioDataset):
    """An ``AudioDataset`` whose item is ``wav`` None (with the ``error``) when the file cannot be decoded."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return super().__getitem__(index)
        except AudioDecodeError as error:
            return {"wav": None, "index": index, "error": str(error)}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    good = [item for item in items if item["wav"] is not None]
    batch: dict[str, Any] = collate_wavs(good) if good else {}
    batch["failed"] = [(int(item["index"]), item["error"]) for item in items if item["wav"] is None]
    return batch


def input_batches(
    utterances: list[Utterance],
    settings: TrainerSettings,
    device: torch.device,
    min_samples: int,
    seed: int = 0,
    task: Task | None = None,
) -> Iterator[dict[str, Any]]:
    """Batches as the trainer forms an evaluation split's: whole waveforms read as ``task`` reads its
    evaluation audio (``loading.task_dataset``: its ``gain_db``; without a task, as decoded), zero-padded
    to ``min_samples``, sorted by length and cut by ``trainer.batch_size`` or ``trainer.max_batch_seconds``
    (``loading.bucket_sampler``), loaded by ``trainer.num_workers`` workers. Each batch is
    ``collate_wavs``' (wavs [B, N], wav_lengths [B], indices [B] into ``utterances``) plus ``failed``:
    (index, message) of files that could not be decoded."""
    if task is None:
        dataset: AudioDataset = _TolerantDataset(utterances, pad_to_samples=min_samples)
    else:
        dataset = task_dataset(task, utterances, False, seed, min_samples, dataset_class=_TolerantDataset)
    sampler = bucket_sampler(dataset, settings, shuffle=False)
    yield from batch_loader(dataset, sampler, _collate, settings, device, seed)


def inside(folder: Path, relative: str) -> Path:
    """``folder / relative``, refused (ValueError naming it) when it would lie outside ``folder`` (an id
    with '..', an absolute path): output paths derived from ids never escape the output folder."""
    root = folder.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ValueError(
            f"output path {relative!r} (from an input id) would lie outside {folder}; rename the input"
        )
    return path
