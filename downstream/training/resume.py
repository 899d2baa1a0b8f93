"""The resumable state of a group of branches trained together (one upstream forward, several interfaces):
every branch's last.pt at a step, and resuming all of them from one consistent step. Files are written and
read by ``checkpoint``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from downstream.training.branch import Branch
from downstream.training.checkpoint import (
    capture_rng_state,
    find_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from downstream.training.distributed import gather_objects, rank_info

log = logging.getLogger(__name__)


def save_branch_checkpoints(branches: Sequence[Branch], progress: dict[str, Any], step: int) -> None:
    """Write every branch's last.pt with the shared ``progress`` (step, epoch, batch_in_epoch, world_size,
    loss_window_steps). Call on every rank: with several ranks, each rank's random streams and running loss
    are gathered into rank 0's files. A branch stopped early by successive halving keeps the last.pt of the
    step it stopped at."""
    ranks = rank_info()
    streams = gather_objects(
        {
            "branch_rng": [branch.rng_state for branch in branches],
            "global_rng": capture_rng_state(),
            "running_loss": [branch.running_loss.item() for branch in branches],
        }
    )
    if not ranks.is_main:
        return
    for index, branch in enumerate(branches):
        if branch.stopped_early is not None and branch.stopped_early["step"] != step:
            continue
        checkpoint = branch.checkpoint(progress)
        if ranks.is_distributed:
            checkpoint["rank_rng"] = [
                {
                    "branch_rng": rank["branch_rng"][index],
                    "global_rng": rank["global_rng"],
                    "running_loss": rank["running_loss"][index],
                }
                for rank in streams
            ]
        save_checkpoint(checkpoint, branch.checkpoint_path)


def resume_branches(branches: Sequence[Branch], device: torch.device) -> dict[str, Any] | None:
    """Restore every branch from its newest usable checkpoint (``checkpoint.find_checkpoint``: verified,
    data only, falling back to ``last.pt.previous``), this rank's random streams, and the best dev model;
    return the checkpoint's progress (``batch_in_epoch`` converted when the number of ranks changed), or None
    when no branch has a usable checkpoint. The log names the files actually loaded.

    Raises RuntimeError when the branches' checkpoints disagree (all must be at the same step; a branch
    stopped by successive halving at the step it stopped, not later) or the ranks found different ones.
    """
    located = [find_checkpoint(branch.checkpoint_path, device) for branch in branches]
    checkpoints = [None if found is None else found.payload for found in located]
    found = [c for c in checkpoints if c is not None]
    training = [c for c in found if c["progress"].get("stopped_early") is None]
    steps = {c["progress"]["step"] for c in training or found}
    stopped_later = [c for c in found if c["progress"]["step"] > max(steps, default=0)]
    if found and (len(found) != len(checkpoints) or len(steps) != 1 or stopped_later):
        places = [str(b.run_dir) for b in branches]
        raise RuntimeError(
            f"cannot resume these runs together: their checkpoints disagree ({sorted(steps)}) in {places}"
        )
    reference = (training or found)[0] if found else None  # holds the data position and random state
    steps_by_rank = gather_objects(reference["progress"]["step"] if reference else None)
    if len(set(steps_by_rank)) > 1:
        raise RuntimeError(
            f"the ranks found different checkpoints in {branches[0].run_dir} (step per rank: "
            f"{steps_by_rank}); put the output folder on a file system that every rank shares"
        )
    if reference is None:
        return None
    for branch, checkpoint in zip(branches, checkpoints, strict=True):
        branch.restore(checkpoint)
    progress = dict(reference["progress"])
    progress["batch_in_epoch"] = _restore_rank_streams(branches, checkpoints, reference)
    for branch in branches:
        branch.restore_best_model()
    log.info(
        "resumed at step %d from %s",
        progress["step"],
        ", ".join(str(found.path) for found in located if found),
    )
    return progress


def _restore_rank_streams(
    branches: Sequence[Branch], checkpoints: list[dict[str, Any]], reference: dict[str, Any]
) -> int:
    """This rank's random streams (rank 0's are the checkpoint's own); returns the batch of the epoch to
    continue from. Resuming with another number of processes keeps the data position (in global batches)
    but restarts the other ranks' streams."""
    ranks = rank_info()
    rank, world_size = ranks.rank, ranks.world_size
    progress = reference["progress"]
    saved_world_size = progress.get("world_size", 1)
    if saved_world_size == world_size:
        if rank > 0:
            for branch, checkpoint in zip(branches, checkpoints, strict=True):
                branch.rng_state = checkpoint["rank_rng"][rank]["branch_rng"]
                branch.running_loss.fill_(checkpoint["rank_rng"][rank].get("running_loss", 0.0))
        restore_rng_state(reference["rank_rng"][rank]["global_rng"] if rank > 0 else reference["global_rng"])
        return progress["batch_in_epoch"]
    consumed = (
        progress["batch_in_epoch"] * saved_world_size
    )  # global batches of this epoch already trained on
    for branch, checkpoint in zip(branches, checkpoints, strict=True):
        if rank > 0:
            branch.rng_state = None
        # every rank takes the ranks' mean, so the logged mean over ranks is unchanged
        saved = [entry.get("running_loss", 0.0) for entry in checkpoint.get("rank_rng", [])]
        if saved:
            branch.running_loss.fill_(sum(saved) / len(saved))
    restore_rng_state(reference["global_rng"])
    log.warning(
        "the checkpoint was written by %d process(es) and is resumed by %d: training continues after the "
        "same data, but batches are grouped differently from here on, so results differ slightly from "
        "an uninterrupted run",
        saved_world_size,
        world_size,
    )
    return -(-consumed // world_size)
