"""KS: keyword spotting on Speech Commands v0.01 (SUPERB), 12 classes, class-balanced sampling, accuracy."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from downstream.data.corpus import Utterance
from downstream.data.speech_commands import CLASSES, TEST_ARCHIVE, read_speech_commands
from downstream.tasks.classification import ClassificationTask

logger = logging.getLogger(__name__)


class KeywordSpotting(ClassificationTask):
    """The 12 classes of s3prl ``downstream/speech_commands`` (yes ... go, ``_unknown_``, ``_silence_``) from
    a mean-pooled linear classifier [B, 12]; cross-entropy; accuracy on dev and on the official test set.

    ``data_root`` is the training archive (speech_commands_v0.01), ``test_root`` the separate test set
    (default: the folder speech_commands_test_set_v0.01 beside ``data_root``, as s3prl's instructions unpack
    them). Training draws utterances class-balanced (``train_sample_weights``), as s3prl does, because
    ``_unknown_`` (20 words) dominates the archive; dev and test are evaluated whole, once each (s3prl draws
    its dev batches class-balanced too).
    """

    name = "ks"

    def __init__(self, data_root: str, test_root: str | None = None, **options: Any) -> None:
        super().__init__(data_root, **options)
        self.test_root = str(Path(data_root).parent / TEST_ARCHIVE) if test_root is None else str(test_root)

    def read_split(self, split: str) -> list[Utterance]:
        return read_speech_commands(self.data_root, split, test_root=self.test_root)

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
