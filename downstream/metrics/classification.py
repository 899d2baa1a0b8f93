"""Classification accuracy (KS, IC, SID, ER, ML-SUPERB's LID) from additive correct / total counts."""

from __future__ import annotations


def accuracy_percent(correct: float, total: float) -> float:
    """100 * correct / total (classification, intent and language-identification accuracy)."""
    if total <= 0:
        raise ValueError("accuracy over an empty evaluation set")
    return 100.0 * correct / total
