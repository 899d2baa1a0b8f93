"""Query-by-example spoken term detection: subsequence DTW scoring, MTWV and Cnxe.

Scoring follows s3prl's quesst14_dtw recipe (SUPERB's QbE):
1. every feature dimension is standardised with the mean and standard deviation over all frames of all
   queries and documents of the split;
2. frame distances are "cosine_exp": exp(cosine distance) - 1, then each query frame's row is min-max
   normalised within the document;
3. subsequence DTW with dtw-python's asymmetric step pattern, g[i, j] = d[i, j] + min(g[i-1, j],
   g[i-1, j-1], g[i-1, j-2]), open begin and open end (the query may match anywhere in the document); the
   cost is the best end's accumulated distance divided by the query length (normalisation "N");
4. the score is -cost; queries shorter than 5 frames score 0 against every document; each query's scores
   over the documents are then standardised (z-norm), and s3prl marks scores above 2 as detections.

The metrics are those of QUESST 2014 (MediaEval; the NIST spoken term detection definitions applied to
query-document trials), with its scoring script's costs P_target = 0.0008, C_miss = 100, C_fa = 1:
- TWV(theta) = 1 - mean over queries with at least one occurrence of [P_miss(q, theta) + beta P_fa(q, theta)],
  beta = (C_fa / C_miss) (1 - P_target) / P_target = 12.49; a trial is accepted when its score is >= theta;
  P_fa(q) counts false alarms over the documents not containing q. MTWV is the maximum over theta (accepting
  nothing gives TWV 0, so MTWV >= 0); ATWV is TWV at the system's own decision threshold.
- Cnxe: the normalised cross-entropy of the scores read as log-likelihood ratios, at the effective prior
  P = C_miss P_target / (C_miss P_target + C_fa (1 - P_target)); 1 means no information, 0 perfect. minCnxe
  is Cnxe after the best monotone calibration (pool-adjacent-violators, as BOSARIS's minimum Cllr).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

P_TARGET = 0.0008
C_MISS = 100.0
C_FA = 1.0
#: s3prl's queries below this many frames are not matched (every document scores 0).
MIN_QUERY_FRAMES = 5
#: s3prl marks z-normalised scores above this as detections ('YES').
DECISION_THRESHOLD = 2.0
#: QUESST's scorer scores a trial the system output lacks with this default score (SUPERB's command line).
DEFAULT_SCORE = -10.0
#: s3prl writes each score with 4 decimals (``score=f"{score:.4f}"`` in quesst14_dtw/expert.py).
WRITTEN_DECIMALS = 4


# -- scoring ----------------------------------------------------------------------------------------


def standardise_features(features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each [T_i, D] standardised per dimension with the mean and std over all frames of all items
    (std clamped at 1e-9), as s3prl's feature_normalization."""
    frames = torch.cat([feature.float() for feature in features])
    mean, std = frames.mean(dim=0), frames.std(dim=0).clamp(min=1e-9)
    return [(feature.float() - mean) / std for feature in features]


def cosine_exp_distance(query: torch.Tensor, document: torch.Tensor) -> torch.Tensor:
    """[N, M] exp(1 - cos(q_i, d_j)) - 1 between the frames of query [N, D] and document [M, D]
    (scipy's cosine distance; a zero vector has cosine distance 1 to everything)."""
    q = torch.nn.functional.normalize(query.float(), dim=-1)
    d = torch.nn.functional.normalize(document.float(), dim=-1)
    return torch.expm1(1.0 - q @ d.T)


def subsequence_dtw_costs(distance: torch.Tensor, document_lengths: Sequence[int]) -> torch.Tensor:
    """Normalised subsequence DTW cost of one query against each of several documents.

    ``distance`` [N, sum(document_lengths)]: the query's frame distances to the documents' frames laid end to
    end. Each document's block is min-max normalised per row (query frame), then aligned with the asymmetric
    step pattern, open begin and open end (see the module docstring); returns [num documents] costs divided
    by N. Equal to dtw-python's ``dtw(block, step_pattern='asymmetric', open_begin=True,
    open_end=True).normalizedDistance`` for each block.
    """
    lengths = torch.as_tensor(list(document_lengths), device=distance.device)
    if (lengths < 1).any():
        raise ValueError("subsequence DTW: every document needs at least one frame")
    num_rows, total = distance.shape
    if int(lengths.sum()) != total:
        raise ValueError(
            f"distance has {total} columns but the document lengths add up to {int(lengths.sum())}"
        )
    doc_index = torch.repeat_interleave(torch.arange(len(lengths), device=distance.device), lengths)
    index = doc_index.expand(num_rows, -1)
    shape = (num_rows, len(lengths))
    like = {"device": distance.device, "dtype": distance.dtype}
    low = torch.full(shape, torch.inf, **like).scatter_reduce(1, index, distance, "amin")
    high = torch.full(shape, -torch.inf, **like).scatter_reduce(1, index, distance, "amax")
    low, high = low.gather(1, index), high.gather(1, index)
    distance = (distance - low) / (high - low).clamp(min=1e-9)
    # Position within its document: a step from j-1 (j-2) is allowed only at offsets >= 1 (>= 2).
    starts = torch.cumsum(lengths, 0) - lengths
    offset = torch.arange(total, device=distance.device) - starts[doc_index]
    blocked_1, blocked_2 = offset < 1, offset < 2
    inf = torch.tensor(torch.inf, **like)
    accumulated = distance[0]
    for row in range(1, num_rows):
        from_left = torch.where(blocked_1, inf, torch.roll(accumulated, 1))
        from_left_2 = torch.where(blocked_2, inf, torch.roll(accumulated, 2))
        accumulated = distance[row] + torch.minimum(accumulated, torch.minimum(from_left, from_left_2))
    best_end = torch.full((len(lengths),), torch.inf, **like).scatter_reduce(
        0, doc_index, accumulated, "amin"
    )
    return best_end / num_rows


def qbe_scores(
    queries: Sequence[torch.Tensor],
    documents: Sequence[torch.Tensor],
    min_query_frames: int = MIN_QUERY_FRAMES,
    max_frames_per_block: int = 400_000,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, int]:
    """(scores [num queries, num documents], number of queries too short to match) by s3prl's recipe.

    ``queries``/``documents``: features [T, D] of one layer (any device). Features are standardised over
    all of them, distances are cosine-exp, costs come from ``subsequence_dtw_costs``; score = -cost, 0 for
    queries of fewer than ``min_query_frames`` frames, then z-normalised per query over the documents.
    Documents are processed in blocks of at most ``max_frames_per_block`` frames to bound memory, on
    ``device`` (default: where the features are).
    """
    if not queries or not documents:
        raise ValueError(f"QbE scoring needs queries and documents, got {len(queries)} and {len(documents)}")
    normalised = standardise_features([feature.to(device) for feature in (*queries, *documents)])
    queries, documents = normalised[: len(queries)], normalised[len(queries) :]
    blocks: list[list[int]] = [[]]
    frames = 0
    for k, document in enumerate(documents):
        if blocks[-1] and frames + len(document) > max_frames_per_block:
            blocks.append([])
            frames = 0
        blocks[-1].append(k)
        frames += len(document)
    concatenated = [torch.cat([documents[k] for k in block]) for block in blocks]
    block_lengths = [[len(documents[k]) for k in block] for block in blocks]
    scores = np.zeros((len(queries), len(documents)), dtype=np.float64)
    too_short = 0
    with torch.no_grad():
        for q, query in enumerate(queries):
            if len(query) < min_query_frames:
                too_short += 1
                continue
            for block, frames_of, lengths in zip(blocks, concatenated, block_lengths, strict=True):
                costs = subsequence_dtw_costs(cosine_exp_distance(query, frames_of), lengths)
                scores[q, block] = -costs.double().cpu().numpy()
    return znorm_per_query(scores), too_short


def znorm_per_query(scores: np.ndarray) -> np.ndarray:
    """Each row standardised: (s - mean) / max(std, 1e-9) (population std, as numpy's default)."""
    scores = np.asarray(scores, dtype=np.float64)
    mean = scores.mean(axis=1, keepdims=True)
    std = np.clip(scores.std(axis=1, keepdims=True), 1e-9, None)
    return (scores - mean) / std


# -- metrics ----------------------------------------------------------------------------------------


def effective_prior(p_target: float = P_TARGET, c_miss: float = C_MISS, c_fa: float = C_FA) -> float:
    """C_miss P_target / (C_miss P_target + C_fa (1 - P_target)) (0.0741 for QUESST 2014's costs)."""
    if not 0 < p_target < 1 or c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"need 0 < p_target < 1 and positive costs, got {p_target}, {c_miss}, {c_fa}")
    return c_miss * p_target / (c_miss * p_target + c_fa * (1 - p_target))


def _check_trials(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores {scores.shape} and targets {targets.shape} must be equal [queries, documents]"
        )
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be 1 (the query occurs in the document) or 0")
    if not np.isfinite(scores).all():
        raise ValueError("QbE scores must be finite")
    return scores, targets.astype(bool)


@dataclass(frozen=True)
class TermWeightedValue:
    """MTWV, the threshold reaching it (trials scoring >= it are accepted; inf = accept nothing), and the
    number of queries scored (those with at least one occurrence)."""

    mtwv: float
    threshold: float
    queries_scored: int


def _trial_gains(scores: np.ndarray, targets: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores and TWV change of accepting each trial, over the queries with at least one occurrence."""
    scored = targets.any(axis=1)
    if not scored.any():
        raise ValueError("TWV needs at least one query that occurs in some document")
    scores, targets = scores[scored], targets[scored]
    num_queries = int(scored.sum())
    n_true = targets.sum(axis=1, keepdims=True)
    n_false = np.maximum(targets.shape[1] - n_true, 1)  # a query found in every document has no false alarm
    gains = np.where(targets, 1.0 / n_true, -beta / n_false) / num_queries
    return scores.ravel(), gains.ravel(), num_queries


def maximum_term_weighted_value(
    scores: np.ndarray,
    targets: np.ndarray,
    p_target: float = P_TARGET,
    c_miss: float = C_MISS,
    c_fa: float = C_FA,
) -> TermWeightedValue:
    """MTWV over query-document trials: the maximum over one global threshold of TWV (module docstring).

    scores, targets [queries, documents]; targets 1 where the query occurs in the document.
    """
    scores, targets = _check_trials(scores, targets)
    beta = (c_fa / c_miss) * (1.0 - p_target) / p_target
    flat, gains, num_queries = _trial_gains(scores, targets, beta)
    order = np.argsort(-flat, kind="stable")
    flat, twv = flat[order], np.cumsum(gains[order])
    last_of_tie = np.r_[flat[1:] != flat[:-1], True]
    candidates, thresholds = twv[last_of_tie], flat[last_of_tie]
    best = int(np.argmax(candidates))
    if candidates[best] <= 0.0:
        return TermWeightedValue(0.0, float("inf"), num_queries)
    return TermWeightedValue(float(candidates[best]), float(thresholds[best]), num_queries)


def actual_term_weighted_value(
    scores: np.ndarray,
    targets: np.ndarray,
    threshold: float = DECISION_THRESHOLD,
    p_target: float = P_TARGET,
    c_miss: float = C_MISS,
    c_fa: float = C_FA,
) -> float:
    """ATWV: TWV when the trials scoring above ``threshold`` are the detections (s3prl: z-score > 2)."""
    scores, targets = _check_trials(scores, targets)
    beta = (c_fa / c_miss) * (1.0 - p_target) / p_target
    flat, gains, _ = _trial_gains(scores, targets, beta)
    return float(gains[flat > threshold].sum())


def normalized_cross_entropy(
    scores: np.ndarray,
    targets: np.ndarray,
    p_target: float = P_TARGET,
    c_miss: float = C_MISS,
    c_fa: float = C_FA,
) -> float:
    """Cnxe of scores read as log-likelihood ratios (module docstring): Cxe / H(P) with P the effective prior,
    Cxe = P mean_targets log2(1 + e^-(s + logit P)) + (1 - P) mean_nontargets log2(1 + e^(s + logit P))."""
    scores, targets = _check_trials(scores, targets)
    return _cnxe(scores.ravel(), targets.ravel(), effective_prior(p_target, c_miss, c_fa))


def _cnxe(llr: np.ndarray, is_target: np.ndarray, prior: float) -> float:
    if is_target.all() or not is_target.any():
        raise ValueError("Cnxe needs target and non-target trials")
    offset = np.log(prior / (1 - prior))
    target_cost = np.logaddexp(0.0, -(llr[is_target] + offset)).mean()
    nontarget_cost = np.logaddexp(0.0, llr[~is_target] + offset).mean()
    cxe = (prior * target_cost + (1 - prior) * nontarget_cost) / np.log(2)
    entropy = -(prior * np.log2(prior) + (1 - prior) * np.log2(1 - prior))
    return float(cxe / entropy)


def minimum_normalized_cross_entropy(
    scores: np.ndarray,
    targets: np.ndarray,
    p_target: float = P_TARGET,
    c_miss: float = C_MISS,
    c_fa: float = C_FA,
) -> float:
    """minCnxe: Cnxe after the best monotone calibration of the scores. The PAV fit of the labels sorted by
    score gives posteriors p; their log-likelihood ratios logit(p) - logit(fraction of targets) are scored
    with ``normalized_cross_entropy``'s formula (ties in score share one posterior)."""
    scores, targets = _check_trials(scores, targets)
    flat, is_target = scores.ravel(), targets.ravel()
    order = np.argsort(flat, kind="stable")
    sorted_scores, labels = flat[order], is_target[order].astype(np.float64)
    # Tied scores must share a posterior: average the labels within each tie before PAV, weighted by count.
    _, tie_start, tie_count = np.unique(sorted_scores, return_index=True, return_counts=True)
    tie_means = np.add.reduceat(labels, tie_start) / tie_count
    posterior_per_tie = pool_adjacent_violators(tie_means, tie_count)
    posterior = np.repeat(posterior_per_tie, tie_count)
    base = labels.mean()
    with np.errstate(divide="ignore"):
        llr = np.log(posterior) - np.log1p(-posterior) - np.log(base / (1 - base))
    return _cnxe(llr, labels.astype(bool), effective_prior(p_target, c_miss, c_fa))


def pool_adjacent_violators(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The non-decreasing sequence closest to ``values`` in weighted least squares: runs that violate the
    order are replaced by their weighted mean (weights default to 1)."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
    means: list[float] = []
    totals: list[float] = []
    sizes: list[int] = []
    for value, weight in zip(values, weights, strict=True):
        means.append(float(value))
        totals.append(float(weight))
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            weight_sum = totals[-2] + totals[-1]
            means[-2] = (means[-2] * totals[-2] + means[-1] * totals[-1]) / weight_sum
            totals[-2] = weight_sum
            sizes[-2] += sizes[-1]
            means.pop()
            totals.pop()
            sizes.pop()
    return np.repeat(means, sizes)


def full_ground_truth_trials(
    scores: np.ndarray,
    query_ids: Sequence[str],
    document_ids: Sequence[str],
    truth_queries: Sequence[str],
    truth_documents: Sequence[str],
    truth_targets: frozenset[tuple[str, str]] | set[tuple[str, str]],
    default_score: float = DEFAULT_SCORE,
    decimals: int | None = WRITTEN_DECIMALS,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The trials QUESST 2014's scorer scores when it is given the searched scores: (scores, targets)
    [len(truth_queries), len(truth_documents)] and the number of trials that got ``default_score``.

    ``scores`` [queries, documents] of the searched ``query_ids`` x ``document_ids`` (e.g. English only),
    written with ``decimals`` decimals as s3prl's stdlist.xml has them (None: unrounded); every other trial
    of the ground truth (``truth_queries``: the queries that occur, x ``truth_documents``) gets
    ``default_score`` (SUPERB: -10). ValueError for a searched id the ground truth does not list.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(query_ids), len(document_ids)):
        raise ValueError(
            f"scores {scores.shape} do not match {len(query_ids)} queries x {len(document_ids)} documents"
        )
    row = {query: k for k, query in enumerate(truth_queries)}
    column = {document: k for k, document in enumerate(truth_documents)}
    missing = [document for document in document_ids if document not in column]
    if missing:
        raise ValueError(f"searched documents {missing[:3]} are not in the ground truth's document list")
    full = np.full((len(truth_queries), len(truth_documents)), default_score, dtype=np.float64)
    written = np.round(scores, decimals) if decimals is not None else scores
    kept = [(k, row[query]) for k, query in enumerate(query_ids) if query in row]  # queries that occur
    if kept:
        searched_rows, truth_rows = (list(index) for index in zip(*kept, strict=True))
        columns = [column[document] for document in document_ids]
        full[np.ix_(truth_rows, columns)] = written[searched_rows]
    targets = np.zeros(full.shape, dtype=bool)
    for query, document in truth_targets:
        if query in row:
            targets[row[query], column[document]] = True
    defaulted = full.size - len(kept) * len(document_ids)
    return full, targets, defaulted
