"""Query-by-example search with a finished QbE run: the run's layer and interface encode the queries and the
documents, subsequence DTW scores every pair (``downstream.metrics.qbe.qbe_scores``, as the run was scored),
and a document is a detection of a query where the z-normalised score exceeds the run's
``task.decision_threshold`` (the decisions ATWV counts)."""

from __future__ import annotations

from typing import Any

import torch

from downstream.data.corpus import Utterance
from downstream.inference.inputs import InputReport
from downstream.inference.pipeline import Pipeline
from downstream.metrics.qbe import qbe_scores


@torch.no_grad()
def encode(
    pipeline: Pipeline, utterances: list[Utterance], report: InputReport, desc: str
) -> dict[str, torch.Tensor]:
    """Input id -> the interface's features [T, D'] as QbE scores them (float16 on the CPU, as
    ``downstream.training.untrained.encode`` keeps them)."""
    features: dict[str, torch.Tensor] = {}
    for forward in pipeline.batches(utterances, report, desc=desc):
        encoded = forward.features.float().half().cpu()
        for row, utterance in enumerate(forward.utterances):
            features[utterance.id] = encoded[row, : int(forward.frame_lengths[row])].clone()
    return features


def search(
    pipeline: Pipeline,
    task: Any,
    queries: list[Utterance],
    documents: list[Utterance],
    report: InputReport,
) -> list[tuple[Utterance, dict[str, Any]]]:
    """Per query: ``scores`` (document id -> z-normalised DTW score over the given documents) and
    ``detections`` (document ids scoring above ``task.decision_threshold``, best first). Queries shorter
    than ``task.min_query_frames`` frames score 0 everywhere and have no detection (as in scoring)."""
    query_features = encode(pipeline, queries, report, "queries")
    document_features = encode(pipeline, documents, report, "documents")
    queries = [query for query in queries if query.id in query_features]
    documents = [document for document in documents if document.id in document_features]
    scores, _ = qbe_scores(
        [query_features[query.id] for query in queries],
        [document_features[document.id] for document in documents],
        min_query_frames=task.min_query_frames,
        device=pipeline.device,
    )
    rows = []
    for query, row in zip(queries, scores, strict=True):
        by_document = {document.id: float(score) for document, score in zip(documents, row, strict=True)}
        detected = sorted(
            (doc for doc, score in by_document.items() if score > task.decision_threshold),
            key=lambda doc: -by_document[doc],
        )
        rows.append((query, {"detections": detected, "scores": by_document}))
    return rows
