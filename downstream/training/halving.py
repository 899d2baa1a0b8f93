"""Successive halving of a group's branches (``trainer.halving_steps``; off when null).

Successive halving (Jamieson & Talwalkar, "Non-stochastic Best Arm Identification and Hyperparameter
Optimization", AISTATS 2016) gives a budget to many configurations, then repeatedly keeps the better half.
Here the configurations are the branches of one shared-upstream group that differ only in optimizer
settings (a learning-rate search): at each step listed in ``trainer.halving_steps`` (each an evaluation
step), right after the dev evaluation, the branches of each pool (same interface and head config) that are
still training are ranked by their best dev metric so far (the task's direction; ties keep the earlier job),
the better ceil(n/2) continue and the other floor(n/2) stop. A stopped branch trains no further (the
upstream forward is shared, so what it frees is its own interface + head forward, backward and update),
keeps its best dev checkpoint (best.pt), is tested with it at the end like every branch, and its
results.json records ``stopped_early`` (step, rank, pool size). A pool of one branch is never cut.

Risk: a configuration that starts slowly but would end best (a small learning rate, a long warmup) is cut
at an early decision step; put the first decision late enough for the ranking to settle.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence

from downstream.training.branch import Branch

log = logging.getLogger(__name__)


def halve(branches: Sequence[Branch], higher_is_better: bool, step: int) -> list[Branch]:
    """Stop the worse half of each pool's training branches at ``step``; returns the branches it stopped.

    Each branch must have been evaluated (``best_metric`` set); a stopped one gets ``stopped_early``.
    """
    pools: dict[str, list[tuple[int, Branch]]] = defaultdict(list)
    for position, branch in enumerate(branches):
        if branch.stopped_early is None:
            if branch.best_metric is None:
                raise RuntimeError(
                    f"successive halving at step {step}: {branch.run_dir} has no dev metric yet"
                )
            pools[branch.halving_pool].append((position, branch))
    stopped = []
    for members in pools.values():
        ranked = sorted(
            members,
            key=lambda item: (-item[1].best_metric if higher_is_better else item[1].best_metric, item[0]),
        )
        keep = math.ceil(len(ranked) / 2)
        for rank, (_, branch) in enumerate(ranked[keep:], start=keep + 1):
            branch.stopped_early = {"step": step, "rank": rank, "of": len(ranked)}
            stopped.append(branch)
            log.info(
                "successive halving at step %d: stopped (dev %g, rank %d of %d in its pool) [%s]",
                step,
                branch.best_metric,
                rank,
                len(ranked),
                branch.run_dir,
            )
    return stopped
