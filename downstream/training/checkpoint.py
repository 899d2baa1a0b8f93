"""Checkpoint files: atomic saves, loading with a fallback to the previous file, random-number state, the
best dev model (kept beside the resumable checkpoint, rolled back after an interrupted launch), and saving
and resuming a group of branches trained together (per-rank random streams under torchrun).

A run directory holds ``last.pt`` (everything needed to resume) and ``best.pt`` (the best dev model and
its step), each with a ``.previous`` copy of the file it replaced.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from downstream.files import previous_path, write_atomically
from downstream.training.distributed import barrier, gather_objects, rank_info

if TYPE_CHECKING:
    from downstream.training.branch import Branch

log = logging.getLogger(__name__)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. disk full); the previous checkpoint is intact."""


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` ``payload`` to ``path`` atomically (``downstream.files.write_atomically``), keeping the
    replaced file as ``<name>.previous``. A failed write raises ``CheckpointWriteError`` naming the file and
    the OS error, with ``path`` and its ``.previous`` unchanged."""
    try:
        write_atomically(path, lambda stream: torch.save(payload, stream), keep_previous=True)
    except OSError as error:
        raise CheckpointWriteError(
            f"could not write {path}: {error.strerror or error} (errno {error.errno}); the previous {path.name} "
            "is unchanged. Free space or fix the folder, then relaunch the same command to resume."
        ) from error


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any] | None:
    """The newest readable checkpoint among ``path`` and its ``.previous``; a torn one is reported and
    skipped; None when neither exists or is readable."""
    for candidate in (path, previous_path(path)):
        if not candidate.exists():
            continue
        try:
            checkpoint = torch.load(candidate, map_location=device, weights_only=False)
            if not isinstance(checkpoint, dict) or "progress" not in checkpoint:
                raise ValueError("no training progress in it")
            return checkpoint
        except Exception as error:  # noqa: BLE001 - any unreadable file is skipped in favour of the older one
            log.warning(
                "checkpoint %s is unreadable (%s: %s); skipping it", candidate, type(error).__name__, error
            )
    return None


# -- random-number state -----------------------------------------------------------------------------
def capture_rng_state(torch_only: bool = False) -> dict[str, Any]:
    """The state of torch's generator (key ``torch``) and of every initialised CUDA device's (``cuda``);
    unless ``torch_only``, also Python's ``random`` (``python``) and NumPy's global one (``numpy``)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if not torch_only:
        state["python"], state["numpy"] = random.getstate(), np.random.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back every generator ``capture_rng_state`` recorded in ``state`` (``cpu``: the torch state as
    checkpoints before this module named it)."""
    torch.set_rng_state(state["torch"] if "torch" in state else state["cpu"])
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- the best dev model --------------------------------------------------------------------------------
def save_best_model(model_state: dict[str, Any], path: Path, step: int) -> None:
    """Write the best model with its ``step``; the replaced best.pt stays as best.pt.previous, so a launch
    killed after this write and before its next checkpoint can roll back (``roll_back_best_model``)."""
    save_checkpoint({**model_state, "step": step}, path)


def best_model_step(path: Path) -> int | None:
    """The step recorded in a best-model file; None when it is missing, unreadable or has no step."""
    if not path.exists():
        return None
    try:
        step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("step")
    except Exception as error:  # noqa: BLE001 - an unreadable file simply does not hold the best model
        log.warning("best model %s is unreadable (%s: %s)", path, type(error).__name__, error)
        return None
    return step if isinstance(step, int) else None


def roll_back_best_model(path: Path, best_step: int) -> bool:
    """After a resume, make ``path`` (best.pt) hold the model of the checkpoint's ``best_step``; returns
    whether it does. Call on every rank.

    The interrupted launch may have written best.pt after its last checkpoint (an evaluation whose
    checkpoint never completed). Evaluations are always followed by a checkpoint, so the model the
    checkpoint knows as best is then best.pt.previous; rank 0 moves it back. False when neither file holds
    it (files from an older version, or damaged): the caller then forgets the best, and the next
    evaluation sets it.
    """
    candidates = (path, previous_path(path))
    steps = [best_model_step(candidate) for candidate in candidates]
    if steps[0] == best_step:
        return True
    barrier()  # every rank has read the files before rank 0 changes them
    found = steps[1] == best_step
    if found:
        if rank_info().is_main:
            os.replace(candidates[1], candidates[0])
        log.info(
            "%s was written after the last checkpoint by the interrupted launch; restored the best model "
            "of step %d from %s",
            candidates[0],
            best_step,
            candidates[1].name,
        )
    else:
        log.warning(
            "neither %s nor %s holds the best model of step %d (found steps %s); the best dev model "
            "is chosen again from the evaluations still to come",
            *candidates,
            best_step,
            steps,
        )
    barrier()
    return found


# -- the resumable state of a group of branches trained together ---------------------------------------
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
    """Restore every branch from its newest readable checkpoint, this rank's random streams, and the best
    dev model; return the checkpoint's progress (``batch_in_epoch`` converted when the number of ranks
    changed), or None when no branch has a checkpoint.

    Raises RuntimeError when the branches' checkpoints disagree (all must be at the same step; a branch
    stopped by successive halving at the step it stopped, not later) or the ranks found different ones.
    """
    checkpoints = [load_checkpoint(branch.checkpoint_path, device) for branch in branches]
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
