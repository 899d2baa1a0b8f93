"""SID: speaker identification on VoxCeleb1 (SUPERB), mean-pooled linear classifier, accuracy."""

from __future__ import annotations

from typing import Any

from downstream.data.corpus import Utterance
from downstream.data.voxceleb1 import read_voxceleb1_sid
from downstream.tasks.classification import ClassificationTask


class SpeakerIdentification(ClassificationTask):
    """Classes are the speakers of the training split (1,251 on VoxCeleb1); training crops
    ``train_crop_seconds`` (8 s in SUPERB), evaluation uses whole utterances."""

    name = "sid"

    def __init__(
        self,
        data_root: str,
        train_crop_seconds: float | None = 8.0,
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        self.train_crop_seconds = train_crop_seconds

    def read_split(self, split: str) -> list[Utterance]:
        return read_voxceleb1_sid(self.data_root, split)

    def labels(self) -> list[str]:
        return sorted({utterance.label for utterance in self.utterances("train")})
