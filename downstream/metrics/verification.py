"""Speaker verification: detection error rates over scored trials (EER, minDCF), computed once over all
trials."""

from __future__ import annotations

import numpy as np

# -- speaker verification: detection error rates over scored trials ----------------------------------


def _check_trials(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} trial scores but {labels.size} trial labels")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("trial labels must be 1 (same speaker) or 0 (different speakers)")
    if not np.isfinite(scores).all():
        raise ValueError("trial scores must be finite")
    targets = int(labels.sum())
    if targets == 0 or targets == labels.size:
        raise ValueError(
            f"detection rates need target and non-target trials; got {targets} target and "
            f"{labels.size - targets} non-target trials"
        )
    return scores, labels.astype(bool)


def detection_rates(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False-alarm and miss rates (fractions) as the acceptance threshold sweeps down the scores.

    A trial is accepted when its score is >= the threshold. Point 0 accepts nothing (false alarm 0,
    miss 1); point k accepts every trial scoring at least the k-th highest distinct score, so tied
    scores move together and the last point accepts everything (false alarm 1, miss 0).
    ``labels``: 1 for a target (same-speaker) trial, 0 for a non-target trial.
    """
    scores, is_target = _check_trials(scores, labels)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_targets = scores[order], is_target[order]
    accepted_targets = np.cumsum(sorted_targets)
    accepted_nontargets = np.cumsum(~sorted_targets)
    # the last position of every run of equal scores
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    accepted_targets = np.r_[0, accepted_targets[last_of_tie]]
    accepted_nontargets = np.r_[0, accepted_nontargets[last_of_tie]]
    false_alarm = accepted_nontargets / accepted_nontargets[-1]
    miss = 1.0 - accepted_targets / accepted_targets[-1]
    return false_alarm, miss


def equal_error_rate(scores: np.ndarray, labels: np.ndarray) -> float:
    """EER in percent: where the miss rate equals the false-alarm rate along the detection curve.

    The curve joins the points of ``detection_rates`` with straight lines (the ROC polyline); the EER is the rate at which it crosses miss = false alarm, interpolated linearly
    between the last point with miss > false alarm and the first with miss <= false alarm.
    """
    false_alarm, miss = detection_rates(scores, labels)
    gap = miss - false_alarm  # starts at 1, ends at -1, never increases
    after = int(np.argmax(gap <= 0))
    before = after - 1
    fraction = gap[before] / (gap[before] - gap[after])
    return 100.0 * float(false_alarm[before] + fraction * (false_alarm[after] - false_alarm[before]))


def minimum_detection_cost(
    scores: np.ndarray,
    labels: np.ndarray,
    p_target: float = 0.01,
    cost_miss: float = 1.0,
    cost_false_alarm: float = 1.0,
) -> float:
    """minDCF: min over thresholds of C = c_miss * P_miss * p_target + c_fa * P_fa * (1 - p_target),
    divided by the cost of the best threshold-free decision, min(c_miss * p_target, c_fa * (1 - p_target)).
    Unitless (not percent); 1.0 is no better than always accepting or always rejecting."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if cost_miss <= 0 or cost_false_alarm <= 0:
        raise ValueError(f"detection costs must be > 0, got miss {cost_miss}, false alarm {cost_false_alarm}")
    false_alarm, miss = detection_rates(scores, labels)
    costs = cost_miss * miss * p_target + cost_false_alarm * false_alarm * (1.0 - p_target)
    default_cost = min(cost_miss * p_target, cost_false_alarm * (1.0 - p_target))
    return float(costs.min() / default_cost)
