"""The task contract: a task is a dataset + a head + a loss + a metric, driven by the one trainer.

The engine (``downstream.training``) calls a task's public methods in this order: ``check_data`` (every
split read and encoded before training; the engine's integrity pass and data check then read each split's
``utterances`` once, ask ``label_values``, ``shared_audio``, ``review_targets`` and ``required_frames``, and
remove what their policies leave out with one ``leave_out`` per split), ``num_outputs`` and ``build_head`` (the head on the interface's
``output_size``), ``collate`` in the DataLoader, then per batch ``augment`` and ``loss`` (training) or
``eval_statistics`` (evaluation), and ``metrics`` once per split over the accumulated statistics. The head
and the trainer schedules live in the task's config (``task.head``, ``task.schedules``); the runner reads
them, the task never sees them.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, TypedDict

import hydra.utils
import torch
from torch import nn

from downstream.data.corpus import Utterance, check_choice
from downstream.data.dataset import TOO_LONG_POLICIES, collate_wavs

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
#: What happens to audio shorter than the upstream's ``min_samples`` (``task.on_too_short``): zero-padded
#: to it in every split, or (skip) left out of training and still padded in dev and test.
TOO_SHORT_POLICIES = ("pad", "skip")
#: What happens to a float audio file holding NaN or inf samples (``task.on_nonfinite``): the run stops
#: before training naming the files (error), or its utterances are left out of every split and counted.
NONFINITE_POLICIES = ("error", "skip")

#: One batch's evaluation statistics: numbers (counts, edit distances) or lists of per-utterance records.
Statistics = Mapping[str, float | list]


class _PaddedWaveforms(TypedDict):
    wavs: torch.Tensor
    wav_lengths: torch.Tensor
    indices: torch.Tensor
    targets: list[Any]


class Batch(_PaddedWaveforms, total=False):
    """What ``Task.collate`` returns and the trainer hands back to ``loss`` and ``eval_statistics``.

    Always: ``wavs`` [B, N] float32 at 16 kHz, zero-padded; ``wav_lengths`` [B] long (samples); ``indices``
    [B] long, positions in the split's utterance list; ``targets``: one encoded target per utterance
    (``Task.encode``: token ids, a class id, slot ids, or None where evaluation needs none). SV adds the
    ``split`` and the ``utterance_ids`` its trial scoring looks up. CTC tasks add ``ctc_targets`` (every
    utterance's token ids concatenated, long), ``ctc_target_lengths`` [B] long and ``ctc_min_frames`` [B]
    long (frames each target needs to be alignable), built on the host in
    the DataLoader's workers so that the loss needs no host-side work (``downstream.tasks.ctc``).
    """

    split: str
    utterance_ids: list[str]
    ctc_targets: torch.Tensor
    ctc_target_lengths: torch.Tensor
    ctc_min_frames: torch.Tensor


def accumulate_statistics(totals: dict[str, Any], statistics: Statistics) -> dict[str, Any]:
    """Fold one batch's (or one rank's) evaluation statistics into ``totals`` and return it.

    Numbers add up, so corpus-level rates are exact (sum of edits / sum of reference units). Lists
    concatenate: a task whose metric is not a sum over batches (SV's equal error rate over trials) returns
    per-utterance records, and its ``metrics`` computes the metric from all of them. Across ranks, merge
    the ranks' totals with this same function (or all-reduce the numbers and all-gather the lists).
    """
    for key, value in statistics.items():
        if isinstance(value, list):
            totals.setdefault(key, []).extend(value)
        elif isinstance(totals.get(key), list):
            raise TypeError(f"evaluation statistic {key!r} is a list in one batch and a number in another")
        else:
            totals[key] = totals.get(key, 0.0) + value
    return totals


class Task(ABC):
    """Base class of every downstream task.

    Subclasses set ``name`` (the config name), ``metric`` (the key of the primary metric, chosen on dev),
    ``higher_is_better``, and implement the abstract methods below. Every metric is in percent except
    where a task says otherwise (SV's ``min_dcf`` is a normalised cost).
    """

    name: str = "task"
    metric: str = "loss"
    higher_is_better: bool = False
    #: The dev metric that picks the best checkpoint when it is not ``metric`` (SD under protocol=superb:
    #: s3prl keeps the best dev frame accuracy) and whether higher is better there.
    selection_metric: str | None = None
    selection_higher_is_better: bool | None = None
    #: Set by the trainer before it evaluates the best checkpoint on dev and test (``finish_test`` follows):
    #: a task may score more there than at the evaluations during training (SD's post-processing grid).
    final_evaluation: bool = False
    #: Random crop length of training utterances in seconds (None: whole utterances).
    train_crop_seconds: float | None = None
    #: Whether the target describes the whole utterance in order (a transcript: CTC tasks), so the audio
    #: must never be cut.
    transcript_target: bool = False
    #: False for a task that trains nothing (QbE): the runner evaluates it by downstream.training.untrained.
    trains: bool = True
    #: Training batches whose longest utterance has more samples than this are cut in two halves
    #: (``BucketBatchSampler.halve_above_samples``; PR under s3prl's rule); None: never.
    halve_batch_above_samples: int | None = None
    #: The splits the task reads (QbE: dev and test only).
    splits: tuple[str, ...] = SPLITS
    #: The sample rate of the corpus by definition (LibriSpeech, VoxCeleb1, IEMOCAP, ... are 16 kHz): a file
    #: at another rate is refused by the data check unless ``task.resample=true``. None (ML-SUPERB, whose
    #: sources differ): files at other rates are resampled on load, named in a warning.
    native_sample_rate: int | None = 16000

    def __init__(
        self,
        data_root: str,
        max_seconds: float | None = None,
        on_too_long: str = "crop",
        on_too_short: str = "pad",
        on_nonfinite: str = "error",
        resample: bool = False,
        gain_db: float = 0.0,
    ) -> None:
        """``data_root``: the corpus as distributed. ``max_seconds``: training utterances longer than this
        are cropped to a random window or skipped (``on_too_long``: crop | skip); dev and test are always
        whole. A task whose target is a transcript (``transcript_target``) never crops: ``crop`` becomes
        ``skip`` there, with a warning. ``on_too_short`` (pad | skip): audio shorter than the upstream's
        ``min_samples`` is zero-padded to it, or left out of training (dev/test are padded either way).
        The engine's data check (``downstream.training.data_check``) counts all of it per split.
        ``gain_db``: every split's audio is scaled by 10^(gain_db / 20) when loaded
        (``downstream.data.audio.load_audio``; s3prl runs sox ``gain -3.0`` for SV, KS and QbE).
        ``on_nonfinite`` (error | skip): a float audio file with NaN/inf samples stops the run before
        training, or is left out of every split. ``resample``: allow files of a 16 kHz corpus
        (``native_sample_rate``) at another rate, resampled on load (refused otherwise); the engine's
        integrity pass (``downstream.training.integrity``) applies both."""
        check_choice(f"task ({self.name})", "on_too_long", on_too_long, TOO_LONG_POLICIES)
        check_choice(f"task ({self.name})", "on_too_short", on_too_short, TOO_SHORT_POLICIES)
        check_choice(f"task ({self.name})", "on_nonfinite", on_nonfinite, NONFINITE_POLICIES)
        check_choice(f"task ({self.name})", "resample", resample, (True, False))
        self.on_nonfinite = on_nonfinite
        self.resample = resample
        self.data_root = str(data_root)
        self.max_seconds = max_seconds
        #: the policy as asked for in the config (``on_too_long`` is the one applied)
        self.requested_on_too_long = on_too_long
        if on_too_long == "crop" and self.transcript_target and max_seconds is not None:
            log.warning(
                "%s: task.on_too_long=crop would cut audio whose target is the whole transcript; training "
                "utterances over task.max_seconds=%s are left out instead (skip)",
                self.name,
                max_seconds,
            )
            on_too_long = "skip"
        self.on_too_long = on_too_long
        self.on_too_short = on_too_short
        if isinstance(gain_db, bool) or not isinstance(gain_db, int | float):
            raise ValueError(f"task.gain_db must be a number of decibels, got {gain_db!r}")
        self.gain_db = float(gain_db)
        #: waveforms shorter than this are zero-padded to it when loaded (set by the engine's data check
        #: from the upstream's ``min_samples``; None: no padding)
        self.pad_to_samples: int | None = None
        self._utterances: dict[str, list[Utterance]] = {}
        self._targets: dict[str, dict[str, Any]] = {}

    @property
    def select_metric(self) -> str:
        """The dev metric the trainer keeps the best checkpoint by (``selection_metric``, else ``metric``)."""
        return self.selection_metric or self.metric

    @property
    def select_higher_is_better(self) -> bool:
        """Whether a higher ``select_metric`` is better."""
        if self.selection_metric is None or self.selection_higher_is_better is None:
            return self.higher_is_better
        return self.selection_higher_is_better

    # -- data -------------------------------------------------------------------------------
    @abstractmethod
    def read_split(self, split: str) -> list[Utterance]:
        """The utterances of ``split`` (train, dev or test) under ``data_root``. Raises
        ``downstream.data.corpus.DataLayoutError`` naming the missing or malformed file."""

    @abstractmethod
    def encode(self, utterance: Utterance, split: str) -> Any:
        """The training target of ``utterance`` (what ``Batch.targets`` holds). Raises ValueError naming the
        utterance when its label or token is unknown to the training split."""

    def evaluation_inputs(self, utterances: list[Utterance]) -> list[Utterance]:
        """The utterances as this task's evaluation reads them, before ``load_audio`` (which applies
        ``gain_db``): the same ids, with the path and ``num_samples`` the audio is then read from, 0
        samples where nothing is left, and ``derived_from`` the given file where the audio was rewritten
        (its NaN/inf samples are checked there: ``downstream.data.audio.nonfinite_problem``). A trained
        run's new inputs go through this (``downstream.predict``), so they are read as its test split was. Default: unchanged; SV with ``vad``: sox's VAD output."""
        return list(utterances)

    def check_data(self) -> None:
        """Read every split now, so a bad corpus fails before training with a clear message."""
        for split in self.splits:
            self.utterances(split)

    def utterances(self, split: str) -> list[Utterance]:
        """The utterances of ``split``, read and encoded once. Raises ValueError for an unknown or empty split."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._utterances:
            utterances = self.read_split(split)
            if not utterances:
                raise ValueError(f"{self.name}: the {split} split under {self.data_root} has no utterances")
            # stored before encoding: encoders may derive their label set from the training split
            self._utterances[split] = utterances
            self._targets[split] = {utterance.id: self.encode(utterance, split) for utterance in utterances}
        return self._utterances[split]

    def target(self, utterance: Utterance, split: str) -> Any:
        """The encoded target of ``utterance`` in ``split`` (what ``encode`` returned)."""
        self.utterances(split)
        return self._targets[split][utterance.id]

    def leave_out(self, split: str, ids: set[str]) -> None:
        """Remove the utterances ``ids`` from ``split`` (the engine's data check does this, before any
        dataset is built, and records what it left out and why)."""
        if ids:
            self._utterances[split] = [u for u in self.utterances(split) if u.id not in ids]
            if not self._utterances[split]:
                raise ValueError(
                    f"{self.name}: every utterance of the {split} split under {self.data_root} was left out "
                    "by the data policies (see the log)"
                )

    def label_values(self, utterance: Utterance) -> list[tuple[str, str]]:
        """(field, value) of every training label of ``utterance`` that names a class (the data check refuses
        values of one field that differ only in case or surrounding whitespace). Default: none; utterance
        classification gives its label, IC its three slots, SF its intent and slot types."""
        return []

    def shared_audio(self, splits: frozenset[str], first: Utterance, second: Utterance) -> str | None:
        """Why ``first`` and ``second`` (of the two ``splits``, the same audio) may share it under the task's
        protocol, or None (the default: the integrity pass refuses the overlap as leakage)."""
        return None

    def review_targets(self, split: str) -> tuple[dict[str, Any], set[str]]:
        """Task-specific findings about the targets of ``split``: records for results.json's
        ``data_policy`` (kind -> record) and the ids to leave out. Default: nothing to report."""
        return {}, set()

    def required_frames(self, target: Any) -> int:
        """Frames the head needs to emit ``target`` (CTC: tokens plus repeats); 1 for utterance labels."""
        return 1

    def collate(self, items: list[dict], split: str, utterances: list[Utterance]) -> Batch:
        """Pad the waveforms (``collate_wavs``) and attach the targets; item indices point into ``utterances``."""
        batch = collate_wavs(items)
        targets = self._targets[split]
        batch["targets"] = [targets[utterances[index].id] for index in batch["indices"].tolist()]
        return batch  # type: ignore[return-value]

    def train_sample_weights(self) -> list[float] | None:
        """Sampling weights of the training utterances (in ``utterances("train")`` order): each epoch then
        draws as many utterances as the split has, with replacement, utterance i with probability
        weights[i] / sum (KS: class-balanced). None (the default): every utterance once per epoch."""
        return None

    # -- model ------------------------------------------------------------------------------
    @property
    @abstractmethod
    def num_outputs(self) -> int:
        """The head's output count: vocabulary size with the CTC blank, classes, or summed slot sizes."""

    def build_head(
        self, input_size: int, head_config: Mapping[str, Any], num_outputs: int | None = None
    ) -> nn.Module:
        """The head of ``head_config`` (the task config's ``head`` node, a ``_target_`` config) with
        ``input_size`` (the interface's output_size D') and ``num_outputs`` (default: the task's, which
        may read the training split; a finished run passes the count its best.pt records)."""
        outputs = self.num_outputs if num_outputs is None else num_outputs
        return hydra.utils.instantiate(head_config, input_size=input_size, num_outputs=outputs)

    def augment(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Training-time augmentation of the interface's features [B, T, D'] with valid frame counts [B];
        same shape out. Identity unless a task overrides it (ASR, ML-SUPERB: SpecAugment)."""
        return features

    @abstractmethod
    def loss(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The scalar training loss (mean over the batch) of the head's output: ``logits`` [B, T, V] for
        CTC tasks, [B, C] for utterance classification (IC: [B, sum of slot sizes]), cosines
        [B, speakers] for SV in training mode; ``frame_lengths`` [B] valid frames."""

    # -- evaluation -------------------------------------------------------------------------
    @abstractmethod
    def eval_statistics(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> Statistics:
        """One batch's statistics of the head's eval-mode output (shapes as in ``loss``; SV: embeddings
        [B, E]): additive numbers (``edits``/``reference_units``, ``correct``/``total``, ...) or lists of
        per-utterance records, folded over batches and ranks by ``accumulate_statistics``."""

    def finish_test(self, dev: Mapping[str, float], test: Mapping[str, float]) -> dict[str, float]:
        """The test metrics recorded for the best checkpoint, given its dev and test ``metrics``: a task whose
        test number depends on a setting chosen on dev (SD's post-processing) finishes it here. Default:
        ``test`` unchanged."""
        return dict(test)

    # -- prediction on new audio (downstream.inference) --------------------------------------------
    def output_names(self) -> list[str]:
        """The name of each head output, position i naming output i: the CTC vocabulary with the blank,
        the class names, ``slot=value`` (IC), the training speakers (SV), one column per speaker (SD).
        Recorded in best.pt, so a finished run predicts without its corpus. Default: none."""
        return []

    def predictions(
        self,
        logits: torch.Tensor,
        frame_lengths: torch.Tensor,
        num_samples: list[int],
        outputs: list[str],
    ) -> list[dict[str, Any]]:
        """One JSON-ready record per utterance of the head's eval-mode output (shapes as in
        ``eval_statistics``): hypotheses, labels with class probabilities, embeddings or speaker turns.
        ``num_samples`` [B]: each waveform's samples at 16 kHz before any padding; ``outputs``: the
        trained run's ``output_names``. Raises NotImplementedError for a task without them (QbE scores
        queries against documents instead: ``downstream.inference.qbe``)."""
        raise NotImplementedError(f"task {self.name} has no per-utterance predictions")

    @abstractmethod
    def metrics(self, statistics: Mapping[str, Any]) -> dict[str, float]:
        """Corpus-level metrics of a split's accumulated statistics, keyed by name (``metric`` among
        them); percent unless the task says otherwise. Raises ValueError on an empty evaluation set."""
