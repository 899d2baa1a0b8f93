"""Writing files so that a crash, a kill or a full disk never leaves a torn one: the project's one atomic write.

Every file writer uses ``write_atomically``: checkpoints and best models (``downstream.training.checkpoint``),
results.json (``downstream.training.run_log``) and the audio-header manifest (``downstream.data.corpus``).
(The hidden-state cache publishes a whole folder at once instead: it fills ``<split>.partial-*`` and renames
it into place.) This module imports nothing from the project, so ``data/`` and the engine both can use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def previous_path(path: Path) -> Path:
    """``<name>.previous``: where ``write_atomically(..., keep_previous=True)`` moves the replaced file."""
    return path.with_name(path.name + ".previous")


def write_atomically(path: Path, write: Callable[[BinaryIO], object], keep_previous: bool = False) -> None:
    """Call ``write(stream)`` on a temporary file beside ``path``, fsync it, then rename it over ``path`` and
    fsync the folder (so the rename survives a power loss, not only a killed process).

    The folder is created if missing; the file gets the usual permissions (0666 less the umask), not
    mkstemp's 0600. With ``keep_previous`` the file being replaced is first renamed to ``previous_path(path)``,
    so a later-damaged file still has a fallback.

    Raises the ``OSError`` of a failed write (ENOSPC, EFBIG, EIO, ...) with ``path`` and its ``.previous``
    unchanged and the temporary file removed. A writer that turns an OSError of its stream into another
    exception (``torch.save`` reports one as ``RuntimeError("... unexpected pos ...")``) still raises the
    OSError underneath, chained from the writer's exception.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    stream = _WriteErrorRecorder(os.fdopen(handle, "wb"))
    try:
        os.chmod(temporary, 0o666 & ~_umask())
        with stream.file:
            write(stream)  # type: ignore[arg-type]
            stream.file.flush()
            os.fsync(stream.file.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, RuntimeError) and stream.error is not None:
            raise stream.error from error
        raise


class _WriteErrorRecorder:
    """A binary file as a writer sees it (``write``, ``flush``), remembering the OSError a write raised."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # folders cannot be opened on some platforms; the rename itself is still atomic
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems do not support fsync on folders
    finally:
        os.close(descriptor)
