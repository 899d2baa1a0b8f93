"""Checkpoint files: atomic saves, loading with a fallback to the previous file, random-number state, and the
best dev model (kept beside the resumable checkpoint, rolled back after an interrupted launch). Saving and
resuming a group of branches trained together is ``resume``'s.

A run directory holds ``last.pt`` (everything needed to resume) and ``best.pt`` (the best dev model and
its step), each with a ``.previous`` copy of the file it replaced.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from downstream.files import previous_path, write_atomically
from downstream.training.distributed import barrier, rank_info

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
#: Layout version of best.pt: 1 adds ``format_version`` and ``outputs`` (the name of each head output) to
#: the model state dicts and ``step``. Files without ``format_version`` are version 0 (still readable).
#: Raise it whenever a change makes older files unreadable by this code, or this code's files by older code.
MODEL_FORMAT_VERSION = 1


class ModelFormatError(ValueError):
    """A model file written in a format this code cannot read (the message names both versions)."""


def save_best_model(model_state: dict[str, Any], path: Path, step: int) -> None:
    """Write the best model with its ``step`` and ``MODEL_FORMAT_VERSION``; the replaced best.pt stays as
    best.pt.previous, so a launch killed after this write and before its next checkpoint can roll back
    (``roll_back_best_model``)."""
    save_checkpoint({**model_state, "step": step, "format_version": MODEL_FORMAT_VERSION}, path)


def load_model_file(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The model state a best-model file holds (``interface``, ``head``, optionally ``upstream`` state
    dicts, ``step``, ``format_version``, ``outputs``), tensors on ``device``; the one reader of best.pt for
    the trainer and for loading a finished run. Raises FileNotFoundError naming the file when it is absent,
    and ``ModelFormatError`` naming the file's version and this code's when it was written by a newer,
    incompatible version."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no model file at {path}")
    state = torch.load(path, map_location=device, weights_only=True)
    version = state.get("format_version", 0) if isinstance(state, dict) else None
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise ModelFormatError(
            f"{path} was written in model format version {version!r}; this code reads versions 0 to "
            f"{MODEL_FORMAT_VERSION}: use the version of this project that trained the run"
        )
    return state


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
