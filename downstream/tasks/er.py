"""ER: emotion recognition on IEMOCAP (SUPERB), four classes, leave-one-session-out folds, accuracy."""

from __future__ import annotations

from typing import Any

from downstream.data.corpus import Utterance
from downstream.data.iemocap import EMOTIONS, read_iemocap
from downstream.tasks.classification import ClassificationTask


class EmotionRecognition(ClassificationTask):
    """neutral, happy (with excited merged in), angry, sad. ``fold`` k in 1..5 tests on Session k; dev
    is held out of the four training sessions. The reported number is the mean over the five folds
    (one run per fold; scripts/make_table.py averages them)."""

    name = "er"

    def __init__(
        self,
        data_root: str,
        fold: int = 1,
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        if fold not in range(1, 6):
            raise ValueError(f"task.fold must be 1, 2, 3, 4 or 5 (the session left out for test), got {fold}")
        self.fold = fold

    def read_split(self, split: str) -> list[Utterance]:
        return read_iemocap(self.data_root, fold=self.fold, split=split)

    def labels(self) -> list[str]:
        return list(EMOTIONS)
