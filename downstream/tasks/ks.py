"""KS: keyword spotting on Speech Commands v0.01 (SUPERB), 12 classes, class-balanced sampling, accuracy."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from downstream.data.corpus import Utterance, check_choice
from downstream.data.speech_commands import (
    CLASSES,
    SILENCE,
    SILENCE_MODES,
    SILENCE_WINDOW_SAMPLES,
    TEST_ARCHIVE,
    read_speech_commands,
)
from downstream.tasks.classification import ClassificationTask

logger = logging.getLogger(__name__)


class KeywordSpotting(ClassificationTask):
    """The 12 classes of s3prl ``downstream/speech_commands`` (yes ... go, ``_unknown_``, ``_silence_``) from
    a mean-pooled linear classifier [B, 12]; cross-entropy; accuracy on dev and on the official test set.

    ``data_root`` is the training archive (speech_commands_v0.01), ``test_root`` the separate test set
    (default: the folder speech_commands_test_set_v0.01 beside ``data_root``, as s3prl's instructions unpack
    them). Training draws utterances class-balanced (``train_sample_weights``), as s3prl does, because
    ``_unknown_`` (20 words) dominates the archive. Test is evaluated whole.

    ``dev_sampling``: ``balanced_resample`` (s3prl ``speech_commands/expert.py``: a WeightedRandomSampler
    over the dev list, class-balanced, as many draws as the list has, with replacement; drawn here once per
    run with ``torch.multinomial`` seeded by ``dev_resample_seed``, where s3prl draws anew at every
    evaluation) or ``whole`` (every dev utterance once). ``silence``: how ``_silence_`` items come from the
    noise recordings (``downstream.data.speech_commands``): ``random_crops`` (s3prl: whole recordings, a
    random 1 s crop per draw; dev crops come from training audio) or ``held_out_windows`` (dev windows from
    the last ``silence_dev_fraction`` of each recording, which training never uses).
    """

    name = "ks"

    def __init__(
        self,
        data_root: str,
        test_root: str | None = None,
        silence: str = "random_crops",
        dev_sampling: str = "balanced_resample",
        silence_dev_fraction: float = 0.1,
        dev_resample_seed: int = 0,
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        check_choice("task (ks)", "silence", silence, SILENCE_MODES)
        check_choice("task (ks)", "dev_sampling", dev_sampling, DEV_SAMPLING)
        self.test_root = str(Path(data_root).parent / TEST_ARCHIVE) if test_root is None else str(test_root)
        self.silence = silence
        self.dev_sampling = dev_sampling
        self.silence_dev_fraction = silence_dev_fraction
        self.dev_resample_seed = dev_resample_seed
        #: s3prl crops every training draw of a whole noise recording to a random 1 s (keyword clips are 1 s
        #: at most, so the crop leaves them whole)
        self.train_crop_seconds = SILENCE_WINDOW_SAMPLES / 16000 if silence == "random_crops" else None

    def read_split(self, split: str) -> list[Utterance]:
        utterances = read_speech_commands(
            self.data_root,
            split,
            test_root=self.test_root,
            silence=self.silence,
            silence_dev_fraction=self.silence_dev_fraction,
        )
        if split != "dev":
            return utterances
        if self.dev_sampling == "balanced_resample":
            utterances = balanced_resample(utterances, self.dev_resample_seed)
        if self.silence == "random_crops":
            utterances = random_silence_crops(utterances, self.dev_resample_seed)
        return utterances

    def review_targets(self, split: str) -> tuple[dict[str, Any], set[str]]:
        """dev: how it was drawn and where its ``_silence_`` audio comes from (results.json ``data_policy``).
        Under random_crops the dev silence crops come from the recordings training crops too: the overlap is
        recorded (``silence_overlap``), because s3prl's protocol (and so SUPERB's numbers) has it."""
        if split != "dev":
            return {}, set()
        dev = self.utterances("dev")
        record: dict[str, Any] = {
            "dev_sampling": {
                "mode": self.dev_sampling,
                "draws": len(dev),
                "distinct": len(
                    {utterance.id.split("#")[0] for utterance in dev if utterance.label != SILENCE}
                ),
                "per_class": dict(sorted(Counter(utterance.label for utterance in dev).items())),
            }
        }
        silence = [utterance for utterance in dev if utterance.label == SILENCE]
        if self.silence == "random_crops":
            record["silence_overlap"] = {
                "dev_silence_items": len(silence),
                "recordings": len({utterance.path for utterance in silence}),
                "why": "s3prl (SUPERB) crops dev _silence_ from the same noise recordings training crops",
            }
            logger.warning(
                "ks: %d dev _silence_ crops come from the %d noise recordings training also crops (s3prl's "
                "protocol; task.silence=held_out_windows keeps dev silence out of training audio)",
                len(silence),
                record["silence_overlap"]["recordings"],
            )
        else:
            record["silence_held_out"] = {
                "dev_windows": len(silence),
                "dev_fraction": self.silence_dev_fraction,
            }
        return record, set()

    def labels(self) -> list[str]:
        return list(CLASSES)

    def shared_audio(self, splits: frozenset[str], first: Utterance, second: Utterance) -> str | None:
        """Train and dev ``_silence_`` windows cut from the same background-noise recordings: s3prl's recipe
        draws both from the same six files (``speech_commands/dataset.py``, docs/protocols.md row 19)."""
        if splits == {"train", "dev"} and first.label == second.label == CLASSES[-1]:
            return (
                "_silence_ windows of the same background-noise recordings (s3prl speech_commands/dataset.py)"
            )
        return None

    def train_sample_weights(self) -> list[float]:
        """Weight 1 / (utterances of the class) for every training utterance, so that each of the 12 classes
        is drawn equally often (s3prl: len(data) / class count, the same up to a constant)."""
        train = self.utterances("train")
        counts = Counter(utterance.label for utterance in train)
        missing = [label for label in CLASSES if counts[label] == 0]
        if missing:
            raise ValueError(f"ks: the training split under {self.data_root} has no utterance of {missing}")
        logger.info(
            "ks: class-balanced sampling of %d training utterances (each class drawn with probability 1/%d); "
            "utterances per class: %s",
            len(train),
            len(CLASSES),
            ", ".join(f"{label} {counts[label]}" for label in CLASSES),
        )
        return [1.0 / counts[utterance.label] for utterance in train]


#: How the dev split is evaluated (``KeywordSpotting``).
DEV_SAMPLING = ("balanced_resample", "whole")


def balanced_resample(utterances: list[Utterance], seed: int) -> list[Utterance]:
    """As many draws from ``utterances`` as it holds, with replacement, each class equally likely (weight
    1 / class count, s3prl's ``len(data) / class_count`` up to a constant), by ``torch.multinomial`` with a
    generator seeded ``seed`` (what WeightedRandomSampler calls). Draw k of utterance u has the id
    '<u.id>#<k>', so repeated draws stay distinct items; the result is in draw order."""
    counts = Counter(utterance.label for utterance in utterances)
    weights = torch.tensor([1.0 / counts[utterance.label] for utterance in utterances], dtype=torch.double)
    drawn = torch.multinomial(
        weights, len(utterances), replacement=True, generator=torch.Generator().manual_seed(seed)
    ).tolist()
    return [
        dataclasses.replace(utterances[index], id=f"{utterances[index].id}#{k}")
        for k, index in enumerate(drawn)
    ]


def random_silence_crops(utterances: list[Utterance], seed: int) -> list[Utterance]:
    """Each ``_silence_`` item longer than 1 s replaced by a 1 s window at a random offset in
    [0, length - 1 s] (both ends included, as s3prl's ``randint``), from ``random.Random(seed)``."""
    rng = random.Random(seed)
    cropped = []
    for utterance in utterances:
        if utterance.label == SILENCE and utterance.num_samples > SILENCE_WINDOW_SAMPLES:
            offset = rng.randint(0, utterance.num_samples - SILENCE_WINDOW_SAMPLES)
            utterance = dataclasses.replace(
                utterance, start=utterance.start + offset, num_samples=SILENCE_WINDOW_SAMPLES
            )
        cropped.append(utterance)
    return cropped
