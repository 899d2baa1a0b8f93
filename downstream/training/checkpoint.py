"""Checkpoint files: data only, verified, written atomically, read with a fallback to the previous file;
random-number state as data; and the best dev model (kept beside the resumable checkpoint, rolled back after
an interrupted launch). Saving and resuming a group of branches trained together is ``resume``'s.

A run directory holds ``last.pt`` (everything needed to resume) and ``best.pt`` (the best dev model and
its step), each with a ``.previous`` copy of the file it replaced.

- **Data only.** A checkpoint holds tensors, numbers, strings, lists, tuples and dicts (random states as
  tensors and lists), so every file is read with ``torch.load(weights_only=True)``; a file that needs pickle
  to load (a class, a function: code that would run) is refused with ``CheckpointUnreadableError`` naming it.
- **Verified.** ``torch.save`` writes an archive whose every record carries the CRC-32 of its bytes, computed
  while it is written, in the same file (so it is written atomically with it). ``read_checkpoint`` reads every
  record against its CRC before loading; a mismatch (bytes overwritten or torn inside a valid archive) makes
  the file unreadable like a truncated one.

Public API (used by the trainer, resuming, checkpoint averaging and prediction): ``save_checkpoint``,
``read_checkpoint`` (one file, verified, or ``CheckpointUnreadableError``), ``load_checkpoint`` /
``find_checkpoint`` (newest usable of a file and its ``.previous``), ``load_model_file`` (best.pt),
``remove_leftover_temporary_files``.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from downstream.files import previous_path, write_atomically
from downstream.training.distributed import barrier, rank_info

log = logging.getLogger(__name__)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. disk full); the previous checkpoint is intact."""


class CheckpointUnreadableError(ValueError):
    """A checkpoint file that cannot be used: truncated or damaged (its CRC-32s do not match its bytes), not a
    torch archive, or needing pickle to load (refused: unpickling can run code). The message names the file."""


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` ``payload`` (data only: see the module doc) to ``path`` atomically
    (``downstream.files.write_atomically``) with a CRC-32 per record, keeping the replaced file as
    ``<name>.previous``. A failed write raises ``CheckpointWriteError`` naming the file and the OS error,
    with ``path`` and its ``.previous`` unchanged."""
    crc32 = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(True)  # the checksums read_checkpoint verifies
    try:
        write_atomically(path, lambda stream: torch.save(payload, stream), keep_previous=True)
    except OSError as error:
        raise CheckpointWriteError(
            f"could not write {path}: {error.strerror or error} (errno {error.errno}); the previous {path.name} "
            "is unchanged. Free space or fix the folder, then relaunch the same command to resume."
        ) from error
    finally:
        torch.serialization.set_crc32_options(crc32)


def verify_checkpoint(path: Path) -> None:
    """Read every record of the archive at ``path`` against the CRC-32 written with it.
    ``CheckpointUnreadableError`` naming the file and the damaged record (or why it is no archive)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise CheckpointUnreadableError(f"{path} is not a complete checkpoint archive ({error})") from error
    if damaged is not None:
        raise CheckpointUnreadableError(
            f"{path} is damaged: the bytes of its record {damaged!r} do not match the checksum written with it"
        )


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The payload of one checkpoint file, verified (``verify_checkpoint``) and loaded as data only
    (``torch.load(weights_only=True)``) onto ``device``. ``CheckpointUnreadableError`` naming the file when
    it is missing, damaged, not a dict, or needs pickle (its code is never run)."""
    if not path.is_file():
        raise CheckpointUnreadableError(f"{path} does not exist")
    verify_checkpoint(path)
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        raise CheckpointUnreadableError(
            f"{path} needs pickle to load, which can run code; refused ({first_line}). Checkpoints written by "
            "this runner hold data only; remove the file (or the run folder) if you did not put it there"
        ) from error
    except Exception as error:  # noqa: BLE001 - any other failure means the file cannot be used
        raise CheckpointUnreadableError(f"{path} is unreadable ({type(error).__name__}: {error})") from error
    if not isinstance(payload, dict):
        raise CheckpointUnreadableError(f"{path} holds a {type(payload).__name__}, not a checkpoint's dict")
    return payload


@dataclass(frozen=True)
class FoundCheckpoint:
    """The checkpoint ``find_checkpoint`` chose: its payload and the file it was read from."""

    payload: dict[str, Any]
    path: Path


def find_checkpoint(path: Path, device: torch.device | str) -> FoundCheckpoint | None:
    """The newest usable checkpoint among ``path`` and its ``.previous`` (one with training progress). An
    unusable file is reported in a warning naming it and why, and the older one is tried. None when neither
    exists or is usable; then, when some file existed, a warning says that nothing in the folder can be
    resumed."""
    problems = []
    for candidate in (path, previous_path(path)):
        if not candidate.exists():
            continue
        try:
            checkpoint = read_checkpoint(candidate, device)
            if "progress" not in checkpoint:
                raise CheckpointUnreadableError(f"{candidate} holds no training progress")
        except CheckpointUnreadableError as error:
            log.warning("unreadable checkpoint, skipping it: %s", error)
            problems.append(candidate.name)
            continue
        if problems:
            log.warning("using the older checkpoint %s instead of %s", candidate, ", ".join(problems))
        return FoundCheckpoint(checkpoint, candidate)
    if problems:
        log.warning(
            "no usable checkpoint in %s (%s unusable): this run starts over from step 0",
            path.parent,
            " and ".join(problems),
        )
    return None


def load_checkpoint(path: Path, device: torch.device | str) -> dict[str, Any] | None:
    """The payload of ``find_checkpoint(path, device)`` (None when no file is usable)."""
    found = find_checkpoint(path, device)
    return None if found is None else found.payload


def remove_leftover_temporary_files(run_dir: Path, keep: tuple[str, ...] = ()) -> list[Path]:
    """Remove the temporary files (``.<name>.*.tmp``) a launch killed while writing (``write_atomically``)
    left in ``run_dir``, logging each with its size; returns them. Call only while holding the folder's lock
    (``run_lock``), so that no other launch is writing there. Names starting with one of ``keep`` stay."""
    removed = []
    for leftover in sorted(run_dir.glob(".*.tmp")):
        if not leftover.is_file() or leftover.name.startswith(keep):
            continue
        size = leftover.stat().st_size
        leftover.unlink(missing_ok=True)
        log.info("removed %s (%d bytes), left by a launch killed while writing it", leftover, size)
        removed.append(leftover)
    return removed


# -- random-number state, as data (tensors, numbers and lists) -------------------------------------------
def capture_rng_state(torch_only: bool = False) -> dict[str, Any]:
    """The state of torch's generator (key ``torch``, a uint8 tensor) and of every initialised CUDA device's
    (``cuda``, a list of tensors); unless ``torch_only``, also Python's ``random`` (``python``: [version,
    list of ints, gauss]) and NumPy's global one (``numpy``: a dict with its key as an int64 tensor). Every
    part loads with ``torch.load(weights_only=True)``."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if not torch_only:
        version, internal, gauss = random.getstate()
        state["python"] = [version, list(internal), gauss]
        name, key, position, has_gauss, cached = np.random.get_state()
        state["numpy"] = {
            "bit_generator": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back every generator ``capture_rng_state`` recorded in ``state`` (``cpu``: the torch state as
    checkpoints before this module named it)."""
    torch.set_rng_state(state["torch"] if "torch" in state else state["cpu"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        saved = state["numpy"]
        if isinstance(saved, dict):
            key = np.asarray(saved["key"].cpu().numpy(), dtype=np.uint32)
            saved = (saved["bit_generator"], key, saved["pos"], saved["has_gauss"], saved["cached_gaussian"])
        np.random.set_state(saved)
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
    ``CheckpointUnreadableError`` when it is damaged or needs pickle (``read_checkpoint``), and
    ``ModelFormatError`` naming the file's version and this code's when it was written by a newer,
    incompatible version."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no model file at {path}")
    state = read_checkpoint(Path(path), device)  # verified, data only
    version = state.get("format_version", 0) if isinstance(state, dict) else None
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise ModelFormatError(
            f"{path} was written in model format version {version!r}; this code reads versions 0 to "
            f"{MODEL_FORMAT_VERSION}: use the version of this project that trained the run"
        )
    return state


def best_model_step(path: Path) -> int | None:
    """The step recorded in a best-model file; None when it is missing, unusable or has no step."""
    if not path.exists():
        return None
    try:
        step = read_checkpoint(path, "cpu").get("step")
    except CheckpointUnreadableError as error:
        log.warning("best model unusable: %s", error)
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
