"""Upstream -> interface [-> head] in evaluation mode, over batches of files or one waveform: the forward pass
of the trainer's evaluation (same batching, padding, precision), shared by ``predict``, ``extract`` and the
Python API."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch
from torch import nn

from downstream.data.audio import SAMPLE_RATE, nonfinite_problem, resampled_length
from downstream.data.corpus import Utterance
from downstream.inference.inputs import InputReport, input_batches
from downstream.tasks.base import Task
from downstream.training.settings import PRECISIONS, TrainerSettings, apply_tf32
from interfaces.base import Interface
from upstream.base import Upstream


@dataclass
class Forward:
    """One batch through the pipeline: ``utterances`` (its inputs, in batch order), ``hidden_states``
    [L, B, T, D], ``frame_lengths`` [B] long, ``features`` [B, T, D'] (the interface's output) and
    ``logits`` (the head's eval-mode output, None without a head); padded frames beyond each
    ``frame_lengths[b]`` are not part of utterance b."""

    utterances: list[Utterance]
    hidden_states: torch.Tensor
    frame_lengths: torch.Tensor
    features: torch.Tensor
    logits: torch.Tensor | None


def waveform_at_16k(wav: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
    """A waveform [N] or [channels, N] (float, any rate) as ``load_audio`` would decode it: float32 mono
    [N'] at 16 kHz (channels averaged; resampled with soxr HQ, trimmed or padded to ``resampled_length``).
    Raises ValueError for an empty waveform, a bad shape or NaN/inf samples."""
    array = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    array = array.astype(np.float32, copy=False)
    if array.ndim == 2:
        array = array.mean(axis=0)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"expected a waveform [N] or [channels, N] with N > 0, got shape {array.shape}")
    finite = np.isfinite(array)
    if not finite.all():
        raise ValueError(f"the waveform holds {array.size - int(finite.sum())} NaN or infinite sample(s)")
    if sample_rate != SAMPLE_RATE:
        target = resampled_length(array.size, sample_rate)
        array = soxr.resample(array, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
        array = np.pad(array[:target], (0, max(target - array.size, 0)))
    return torch.from_numpy(np.ascontiguousarray(array))


class Pipeline:
    """A frozen upstream, an interface and optionally a head, on ``device``, in evaluation mode; run with
    the trainer's precision (``settings.precision``) and batching (``settings.batch_size`` /
    ``max_batch_seconds``). With a ``task``, files and waveforms are read as its evaluation reads its test
    split (``Task.evaluation_inputs``, then its ``gain_db``: SV's sox VAD and gain, KS's and QbE's gain)."""

    def __init__(
        self,
        upstream: Upstream,
        interface: Interface,
        head: nn.Module | None,
        settings: TrainerSettings,
        device: torch.device,
        seed: int = 0,
        task: Task | None = None,
    ) -> None:
        self.device = device
        self.task = task
        self.upstream = upstream.to(device).eval()
        self.interface = interface.to(device).eval()
        self.head = None if head is None else head.to(device).eval()
        self.settings = settings
        self.seed = seed
        apply_tf32(settings.tf32)
        self.autocast_dtype = PRECISIONS[settings.precision]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """wavs [B, N] float32 at 16 kHz, wav_lengths [B] -> (hidden states [L, B, T, D], frame lengths [B],
        features [B, T, D'], logits or None), as ``Trainer.evaluate`` computes them."""
        wavs = wavs.to(self.device)
        wav_lengths = wav_lengths.to(self.device)
        with self._autocast():
            hidden_states, frame_lengths = self.upstream(wavs, wav_lengths)
        with self._autocast():
            features = self.interface(hidden_states, frame_lengths)
            logits = None if self.head is None else self.head(features, frame_lengths)
        return hidden_states, frame_lengths, features, logits

    def one(self, wav: torch.Tensor | np.ndarray, sample_rate: int) -> Forward:
        """One waveform (``waveform_at_16k``) as a batch of one, padded to the upstream's ``min_samples``
        (with a task: written to a temporary file and read as ``batches`` reads files). Raises ValueError
        when the upstream refuses its length (Whisper with whisper_long_audio=error) or the task's reading
        leaves no audio (SV's VAD on silence)."""
        audio = waveform_at_16k(wav, sample_rate)
        samples = audio.shape[0]
        limit = self.upstream.max_samples
        if limit is not None and samples > limit:
            raise ValueError(
                f"the waveform has {samples} samples at 16 kHz, more than this upstream accepts ({limit})"
            )
        if self.task is not None:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "waveform.wav"
                soundfile.write(path, audio.numpy(), SAMPLE_RATE, subtype="FLOAT")
                report = InputReport()
                forwards = list(self.batches([Utterance("waveform", path, samples)], report, desc="waveform"))
            if not forwards:
                raise ValueError(f"the waveform cannot be used: {report.skipped[0]['reason']}")
            return forwards[0]
        padded = torch.nn.functional.pad(audio, (0, max(0, int(self.upstream.min_samples) - samples)))
        outputs = self.forward(padded[None], torch.tensor([padded.shape[0]]))
        utterance = Utterance(id="waveform", path=None, num_samples=samples)  # type: ignore[arg-type]
        return Forward([utterance], *outputs)

    def batches(self, utterances: list[Utterance], report: InputReport, desc: str) -> Iterator[Forward]:
        """Every checked input (``inputs.check_inputs``) in the trainer's evaluation batches, read as the
        task reads its test split; with a progress bar on a terminal (``trainer.progress_bar``). Files that
        fail to decode, or that the task's reading empties, are named in ``report`` and left out. Each
        ``Forward`` names its inputs by their given id and path, with the length of the audio read."""
        read = utterances if self.task is None else self.task.evaluation_inputs(utterances)
        kept, readable = [], []
        for given, audio in zip(utterances, read, strict=True):
            if audio.num_samples <= 0:
                report.skip(
                    given.path, f"task {self.task.name}'s evaluation reading leaves no audio (its VAD)"
                )
            # a rewritten copy (SV's VAD) is finite whatever the given file holds: check the given file
            elif audio.derived_from is not None and (problem := nonfinite_problem(given.path)) is not None:
                report.skip(given.path, problem)
            else:
                kept.append(dataclasses.replace(audio, path=given.path))
                readable.append(audio)
        loader = input_batches(
            readable,
            self.settings,
            self.device,
            int(self.upstream.min_samples),
            self.seed,
            task=self.task,
        )
        show = self.settings.progress_bar
        if show == "auto":
            show = sys.stderr.isatty()
        progress = None
        if show:
            from tqdm import tqdm

            progress = tqdm(total=len(utterances), desc=desc, unit="file", dynamic_ncols=True)
        for batch in loader:
            for index, message in batch["failed"]:
                report.skip(kept[index].path, message)
            if "wavs" in batch:
                outputs = self.forward(batch["wavs"], batch["wav_lengths"])
                yield Forward([kept[i] for i in batch["indices"].tolist()], *outputs)
            if progress is not None:
                progress.update(len(batch["failed"]) + len(batch.get("indices", ())))
        if progress is not None:
            progress.close()
