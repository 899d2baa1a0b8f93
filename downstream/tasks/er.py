"""ER: emotion recognition on IEMOCAP (SUPERB), four classes, leave-one-session-out folds, accuracy."""

from __future__ import annotations

from typing import Any

from downstream.data.corpus import Utterance
from downstream.data.iemocap import EMOTIONS, read_iemocap
from downstream.tasks.classification import ClassificationTask


class EmotionRecognition(ClassificationTask):
    """neutral, happy (with excited merged in), angry, sad. ``fold`` k in 1..5 tests on Session k; dev
    is held out of the four training sessions as s3prl does (``downstream.data.iemocap``): with
    ``s3prl_meta_data`` (the folder of s3prl's ``downstream/emotion/meta_data``) its members are s3prl's,
    without it the same split of the id-sorted list (recorded in results.json ``data_policy.dev_split``).
    The reported number is the mean over the five folds (one run per fold; scripts/make_table.py averages
    them)."""

    name = "er"

    def __init__(
        self,
        data_root: str,
        fold: int = 1,
        s3prl_meta_data: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        if fold not in range(1, 6):
            raise ValueError(f"task.fold must be 1, 2, 3, 4 or 5 (the session left out for test), got {fold}")
        self.fold = fold
        self.s3prl_meta_data = s3prl_meta_data

    def read_split(self, split: str) -> list[Utterance]:
        return read_iemocap(self.data_root, fold=self.fold, split=split, s3prl_meta_data=self.s3prl_meta_data)

    def review_targets(self, split: str) -> tuple[dict[str, Any], set[str]]:
        """dev: which order s3prl's seed-0 random_split was applied to (results.json ``data_policy``)."""
        if split != "dev":
            return {}, set()
        if self.s3prl_meta_data is None:
            order = "id-sorted (no task.s3prl_meta_data: same sizes as s3prl's dev, different members)"
        else:
            order = f"s3prl's meta order ({self.s3prl_meta_data}/Session{self.fold}/train_meta_data.json)"
        return {"dev_split": {"rule": "torch.manual_seed(0) + random_split 80/20", "order": order}}, set()

    def labels(self) -> list[str]:
        return list(EMOTIONS)
