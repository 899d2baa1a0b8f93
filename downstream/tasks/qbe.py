"""QbE: query-by-example spoken term detection on QUESST 2014 (SUPERB), no training, DTW scores, MTWV.

Nothing is trained: every query and document is encoded by the upstream through a non-trainable interface
(single_layer, last_layer, or a fitted one such as pca_concat, fitted on the documents), each query is
scored against every document by subsequence DTW (``downstream.metrics.qbe``, s3prl's quesst14_dtw
recipe), and the metrics are MTWV (primary), ATWV at s3prl's decision threshold, Cnxe and minCnxe. The
engine takes the no-training path for it (``Task.trains`` is False; ``downstream.training.untrained``).

SUPERB's protocol runs every layer on dev and reports the best dev layer's test score: with
``interface=single_layer`` and ``task.select_layer=true`` (the defaults of configs/task/qbe.yaml) the run
does exactly that in one launch (one upstream pass per layer) and records every layer's dev MTWV.

Two trial sets are scored (``mtwv_trials`` picks the primary ``mtwv``/``atwv``/``cnxe``/``min_cnxe``):
- ``full_ground_truth`` (protocol=superb): what SUPERB's number is. s3prl searches English only, and SUPERB
  runs QUESST's scorer over the FULL ground truth (every occurring query of every language x every
  document), so each trial that was not searched scores -10 (``docs/superb.md``, QUESST's scoring README);
  recorded as ``*_full_ground_truth`` too.
- ``searched`` (protocol=exact): only the trials that were searched (English queries x English documents
  under SUPERB's language filter), recorded as ``*_english_only`` (``*_<language>_only``; with
  ``language=null`` the two sets coincide up to s3prl's 4-decimal scores).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from downstream.data.corpus import Utterance, check_choice
from downstream.data.quesst14 import SUPERB_LANGUAGE, QbeSet, read_quesst14
from downstream.metrics.qbe import (
    C_FA,
    C_MISS,
    DECISION_THRESHOLD,
    DEFAULT_SCORE,
    MIN_QUERY_FRAMES,
    P_TARGET,
    actual_term_weighted_value,
    full_ground_truth_trials,
    maximum_term_weighted_value,
    minimum_normalized_cross_entropy,
    normalized_cross_entropy,
    qbe_scores,
)
from downstream.tasks.base import Batch, Task

EVALUATED_SPLITS = ("dev", "test")
#: Which trials the primary metrics are computed over (module docstring).
MTWV_TRIALS = ("full_ground_truth", "searched")


class QueryByExample(Task):
    """Queries of ``dev`` (QUESST's dev queries) and ``test`` (its eval queries), searched in one set of
    documents; ``language`` filters both (SUPERB: 'nnenglish'; null keeps every language)."""

    name = "qbe"
    metric = "mtwv"
    higher_is_better = True
    trains = False
    splits = EVALUATED_SPLITS
    #: QUESST 2014 is distributed at 8 kHz (torchaudio's QUESST14: SAMPLE_RATE = 8000): resampled on load.
    native_sample_rate = None

    def __init__(
        self,
        data_root: str,
        language: str | None = SUPERB_LANGUAGE,
        select_layer: bool = True,
        min_query_frames: int = MIN_QUERY_FRAMES,
        decision_threshold: float = DECISION_THRESHOLD,
        p_target: float = P_TARGET,
        c_miss: float = C_MISS,
        c_fa: float = C_FA,
        mtwv_trials: str = "full_ground_truth",
        default_score: float = DEFAULT_SCORE,
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        if options.get("max_seconds") is not None:
            raise ValueError("task=qbe scores whole queries and documents; leave task.max_seconds null")
        self.language = language
        self.select_layer = select_layer
        self.min_query_frames = min_query_frames
        self.decision_threshold = decision_threshold
        self.costs = {"p_target": p_target, "c_miss": c_miss, "c_fa": c_fa}
        check_choice("task (qbe)", "mtwv_trials", mtwv_trials, MTWV_TRIALS)
        self.mtwv_trials = mtwv_trials
        self.default_score = default_score
        label = "all_languages" if language is None else f"{language.removeprefix('nn')}_only"
        #: the suffix of the searched-trials metrics (``mtwv_english_only`` under SUPERB's filter)
        self.searched_label = label
        self._sets: dict[str, QbeSet] = {}
        self._document_ids: set[str] | None = None

    # -- data: each evaluated split is its queries followed by the shared documents ---------------------
    def qbe_set(self, split: str) -> QbeSet:
        """The queries, documents and ground truth of ``split`` ('dev' or 'test'), read once."""
        if split not in EVALUATED_SPLITS:
            raise ValueError(
                f"qbe has no {split!r} split: nothing is trained; it evaluates {EVALUATED_SPLITS}"
            )
        if split not in self._sets:
            self._sets[split] = read_quesst14(self.data_root, split, language=self.language)
        return self._sets[split]

    def read_split(self, split: str) -> list[Utterance]:
        qbe_set = self.qbe_set(split)
        return [*qbe_set.queries, *qbe_set.documents]

    def shared_audio(self, splits: frozenset[str], first: Utterance, second: Utterance) -> str | None:
        """dev and test search the same documents (QUESST 2014's one search set)."""
        if self._document_ids is None:
            self._document_ids = {d.id for split in EVALUATED_SPLITS for d in self.qbe_set(split).documents}
        if first.id in self._document_ids and second.id in self._document_ids:
            return "the documents every query is searched in (QUESST 2014 has one search set)"
        return None

    def encode(self, utterance: Utterance, split: str) -> None:
        return None

    # -- model: none ------------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return 0

    def build_head(self, input_size: int, head_config: Mapping[str, Any]) -> nn.Module:
        return nn.Identity()

    def loss(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        raise NotImplementedError("qbe is not trained (Task.trains is False)")

    def eval_statistics(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> dict:
        raise NotImplementedError("qbe scores whole splits: QueryByExample.score")

    # -- evaluation ---------------------------------------------------------------------------------------
    def score(
        self, split: str, features: Mapping[str, torch.Tensor], device: torch.device | None = None
    ) -> dict[str, Any]:
        """Statistics of ``split`` from each utterance's features [T, D'] (keyed by utterance id): the
        z-normalised DTW scores [queries, documents], the ground truth, and the count of queries too
        short to match. DTW runs on ``device`` (default: where the features are)."""
        qbe_set = self.qbe_set(split)
        scores, too_short = qbe_scores(
            [features[query.id] for query in qbe_set.queries],
            [features[document.id] for document in qbe_set.documents],
            min_query_frames=self.min_query_frames,
            device=device,
        )
        targets = np.array(
            [
                [(query.id, doc.id) in qbe_set.targets for doc in qbe_set.documents]
                for query in qbe_set.queries
            ]
        )
        return {"scores": scores, "targets": targets, "too_short_queries": too_short, "set": qbe_set}

    def _trial_metrics(self, scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        twv = maximum_term_weighted_value(scores, targets, **self.costs)
        return {
            "mtwv": twv.mtwv,
            "mtwv_threshold": twv.threshold,
            "atwv": actual_term_weighted_value(scores, targets, self.decision_threshold, **self.costs),
            "cnxe": normalized_cross_entropy(scores, targets, **self.costs),
            "min_cnxe": minimum_normalized_cross_entropy(scores, targets, **self.costs),
            "queries_scored": float(twv.queries_scored),
        }

    def metrics(self, statistics: Mapping[str, Any]) -> dict[str, float]:
        """MTWV (and the threshold reaching it), ATWV at ``decision_threshold``, Cnxe and minCnxe (fractions,
        not percent, as QUESST reports them) over the searched trials (``<name>_<language>_only``) and over
        the full ground truth with ``default_score`` for the trials not searched (``<name>_full_ground_truth``);
        the unsuffixed names are those of ``mtwv_trials``. Plus the counts of queries, documents and
        occurrences."""
        scores, targets = statistics["scores"], statistics["targets"]
        qbe_set: QbeSet = statistics["set"]
        searched = self._trial_metrics(scores, targets)
        truth = qbe_set.truth
        if truth is None:
            raise ValueError("qbe: the split has no full ground truth (read_quesst14 reads it)")
        full_scores, full_targets, defaulted = full_ground_truth_trials(
            scores,
            [query.id for query in qbe_set.queries],
            [document.id for document in qbe_set.documents],
            truth.queries,
            truth.documents,
            truth.targets,
            default_score=self.default_score,
        )
        full = self._trial_metrics(full_scores, full_targets)
        primary = full if self.mtwv_trials == "full_ground_truth" else searched
        result = {key: primary[key] for key in ("mtwv", "mtwv_threshold", "atwv", "cnxe", "min_cnxe")}
        for suffix, values in ((self.searched_label, searched), ("full_ground_truth", full)):
            result.update({f"{key}_{suffix}": value for key, value in values.items()})
        result.update(
            {
                "queries": float(len(qbe_set.queries)),
                "queries_too_short": float(statistics["too_short_queries"]),
                "documents": float(len(qbe_set.documents)),
                "occurrences": float(len(qbe_set.targets)),
                "occurrences_outside_language": float(qbe_set.targets_outside_language),
                "documents_full_ground_truth": float(len(truth.documents)),
                "trials_default_score": float(defaulted),
            }
        )
        return result

    def fit_utterances(self) -> list[Utterance]:
        """What a fitted interface (pca_concat) is fitted on: the documents, without their labels."""
        return list(self.qbe_set("dev").documents)
