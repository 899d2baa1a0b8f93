"""SV: speaker verification on VoxCeleb1 (SUPERB), x-vector head with AM-softmax, cosine scoring, EER."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from downstream.data.corpus import Utterance, label_vocabulary
from downstream.data.voxceleb1 import Trial, read_trials, read_voxceleb1_sv
from downstream.metrics.verification import equal_error_rate, minimum_detection_cost
from downstream.tasks.base import Batch, Statistics, Task

log = logging.getLogger(__name__)


class SpeakerVerification(Task):
    """Train a speaker embedding on the speakers that no trial list names, score trials by cosine.

    Training: the head (``downstream.heads.XVectorHead``) returns cosines cos_c between the utterance and
    each training speaker; AM-softmax (additive margin) loss
    L = -log( e^{s (cos_y - m)} / (e^{s (cos_y - m)} + sum_{c != y} e^{s cos_c}) ),
    scale s = ``am_softmax_scale``, margin m = ``am_softmax_margin`` (SUPERB: 30 and 0.4). Training crops
    ``train_crop_seconds`` (8 s in SUPERB); ``min_train_seconds`` drops shorter training utterances
    (SUPERB drops those under 2 s).

    Evaluation: every utterance of the split's trial list is embedded whole (the head in eval mode), a
    trial's score is the cosine similarity of its two embeddings, and the metrics are the equal error
    rate ``eer`` (percent, the primary metric) and ``min_dcf`` (normalised minimum detection cost at
    ``min_dcf_p_target``). Trials whose utterances were not evaluated (``trainer.limit_eval_batches``,
    ``on_too_long=skip``) are left out and counted in a warning.
    """

    name = "sv"
    metric = "eer"
    higher_is_better = False

    def __init__(
        self,
        data_root: str,
        test_trials: str = "veri_test.txt",
        dev_trials: str = "dev_trials.txt",
        train_crop_seconds: float | None = 8.0,
        min_train_seconds: float | None = None,
        am_softmax_scale: float = 30.0,
        am_softmax_margin: float = 0.4,
        min_dcf_p_target: float = 0.01,
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        if am_softmax_scale <= 0:
            raise ValueError(f"task.am_softmax_scale must be > 0, got {am_softmax_scale}")
        if not 0.0 <= am_softmax_margin < 1.0:
            raise ValueError(f"task.am_softmax_margin must be in [0, 1), got {am_softmax_margin}")
        if not 0.0 < min_dcf_p_target < 1.0:
            raise ValueError(f"task.min_dcf_p_target must be in (0, 1), got {min_dcf_p_target}")
        if min_train_seconds is not None and min_train_seconds < 0:
            raise ValueError(f"task.min_train_seconds must be >= 0 or null, got {min_train_seconds}")
        self.trial_files = {"dev": dev_trials, "test": test_trials}
        self.train_crop_seconds = train_crop_seconds
        self.min_train_seconds = min_train_seconds
        self.am_softmax_scale = am_softmax_scale
        self.am_softmax_margin = am_softmax_margin
        self.min_dcf_p_target = min_dcf_p_target
        self._trials: dict[str, list[Trial]] = {}
        self._speaker_ids: dict[str, int] | None = None

    # -- data -------------------------------------------------------------------------------
    def read_split(self, split: str) -> list[Utterance]:
        utterances = read_voxceleb1_sv(
            self.data_root, split, self.trial_files["test"], self.trial_files["dev"]
        )
        if split == "train" and self.min_train_seconds:
            kept = [utterance for utterance in utterances if utterance.seconds >= self.min_train_seconds]
            log.info(
                "sv: %d of %d training utterances are shorter than min_train_seconds=%s and left out",
                len(utterances) - len(kept),
                len(utterances),
                self.min_train_seconds,
            )
            utterances = kept
        return utterances

    def trials(self, split: str) -> list[Trial]:
        """The trials scored on ``split`` ('dev' or 'test')."""
        if split not in self._trials:
            self._trials[split] = read_trials(Path(self.data_root) / self.trial_files[split])
        return self._trials[split]

    def speakers(self) -> list[str]:
        """The training speakers (the AM-softmax classes)."""
        return label_vocabulary(self.utterances("train"))

    def label_values(self, utterance: Utterance) -> list[tuple[str, str]]:
        return [("speaker", str(utterance.label))]

    def encode(self, utterance: Utterance, split: str) -> int | None:
        """Training: the speaker's class index. Evaluation needs no target (trials are scored)."""
        if split != "train":
            return None
        if self._speaker_ids is None:
            self._speaker_ids = {speaker: index for index, speaker in enumerate(self.speakers())}
        return self._speaker_ids[utterance.label]

    def collate(self, items: list[dict], split: str, utterances: list[Utterance]) -> dict[str, Any]:
        batch = super().collate(items, split, utterances)
        batch["split"] = split
        batch["utterance_ids"] = [utterances[index].id for index in batch["indices"].tolist()]
        return batch

    # -- model ------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return len(self.speakers())

    def loss(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        """AM-softmax over the head's cosines [B, speakers]: cross-entropy of s * (cos - m * one_hot(y))."""
        targets = torch.tensor(batch["targets"], dtype=torch.long, device=logits.device)
        margins = F.one_hot(targets, logits.shape[-1]).to(torch.float32) * self.am_softmax_margin
        return F.cross_entropy(self.am_softmax_scale * (logits.float() - margins), targets)

    # -- evaluation -------------------------------------------------------------------------
    def eval_statistics(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> Statistics:
        """One (split, utterance id, embedding) record per utterance; ``logits`` are the embeddings [B, E]."""
        if logits.dim() != 2:
            raise ValueError(
                f"sv: expected utterance embeddings [B, E] from the head, got shape {tuple(logits.shape)}"
            )
        embeddings = logits.detach().float().cpu().numpy()
        return {
            "embeddings": [
                (batch["split"], utterance_id, embedding)
                for utterance_id, embedding in zip(batch["utterance_ids"], embeddings, strict=True)
            ]
        }

    def metrics(self, statistics: Mapping[str, Any]) -> dict[str, float]:
        records = statistics.get("embeddings") or []
        splits = {split for split, _, _ in records}
        if len(splits) != 1:
            raise ValueError(f"sv: expected embeddings of one split, got {sorted(splits) or 'none'}")
        split = splits.pop()
        embeddings = {utterance_id: embedding for _, utterance_id, embedding in records}
        trials = self.trials(split)
        scored = [t for t in trials if t.enrollment in embeddings and t.test in embeddings]
        if len(scored) < len(trials):
            log.warning(
                "sv: %d of %d %s trials have an utterance that was not evaluated and are left out",
                len(trials) - len(scored),
                len(trials),
                split,
            )
        if len({trial.same_speaker for trial in scored}) < 2:
            raise ValueError(
                f"sv: only {len(scored)} of the {len(trials)} {split} trials have both utterances evaluated, "
                "too few for target and non-target trials; do not limit evaluation (trainer.limit_eval_batches) "
                "for sv"
            )
        scores = cosine_scores(embeddings, scored)
        labels = np.array([trial.same_speaker for trial in scored], dtype=np.int64)
        return {
            "eer": equal_error_rate(scores, labels),
            "min_dcf": minimum_detection_cost(scores, labels, p_target=self.min_dcf_p_target),
        }


def cosine_scores(embeddings: Mapping[str, np.ndarray], trials: list[Trial]) -> np.ndarray:
    """cos(e_a, e_b) = e_a . e_b / (|e_a| |e_b|) for every trial (a zero embedding scores 0)."""
    first = np.stack([embeddings[trial.enrollment] for trial in trials]).astype(np.float64)
    second = np.stack([embeddings[trial.test] for trial in trials]).astype(np.float64)
    norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
    return (first * second).sum(axis=1) / np.maximum(norms, 1e-12)
