"""Edit-distance metrics and CTC decoding: PER, WER, CER (and slot-value CER) as corpus-level error rates.

Evaluation accumulates additive statistics (edit counts, reference lengths), so sums over batches, and over
ranks in distributed runs, give exact corpus-level metrics (s3prl's ``metric.py``: sum of edits / sum of
reference lengths).
"""

from __future__ import annotations

from collections.abc import Sequence

import editdistance
import torch


def ctc_greedy_decode(logits: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best path per utterance: argmax per frame, collapse repeats, drop blanks. logits [B, T, V]."""
    best = logits.argmax(dim=-1)
    keep = torch.ones_like(best, dtype=torch.bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != blank
    best, keep, lengths = best.cpu(), keep.cpu(), lengths.cpu()
    return [best[b, : lengths[b]][keep[b, : lengths[b]]].tolist() for b in range(best.shape[0])]


def edit_statistics(references: Sequence[Sequence], hypotheses: Sequence[Sequence]) -> tuple[int, int]:
    """(total Levenshtein edits, total reference length) over pairs of token sequences."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    edits = sum(
        editdistance.eval(list(ref), list(hyp)) for ref, hyp in zip(references, hypotheses, strict=True)
    )
    return edits, sum(len(ref) for ref in references)


def error_rate_percent(edits: float, reference_length: float) -> float:
    """100 * edits / reference tokens (PER, WER, CER)."""
    if reference_length <= 0:
        raise ValueError("error rate over an empty reference set")
    return 100.0 * edits / reference_length
