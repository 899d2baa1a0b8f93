"""How a failed launch reports itself: one message on stderr (the error's class and text, which say what was
wrong and how to fix it), no traceback unless asked for (``debug=true`` or ``HYDRA_FULL_ERROR=1``)."""

from __future__ import annotations

import os

#: Where a user asks for the traceback instead of the one message.
DEBUG_HINT = "debug=true or HYDRA_FULL_ERROR=1 shows the traceback"


def wants_traceback(debug: object = False) -> bool:
    """Whether to let the exception (and its traceback) through: ``debug=true`` or ``HYDRA_FULL_ERROR=1``."""
    return bool(debug) or os.environ.get("HYDRA_FULL_ERROR") == "1"


def error_message(error: BaseException, run_dir: object | None = None) -> str:
    """The one message of a failed launch: ``error: <Class>: <text>``, the cause's class and text where the
    error wraps another one (Hydra's instantiate does), then where the run was and the debug hint."""
    lines = [f"error: {type(error).__name__}: {str(error).strip() or '(no message)'}"]
    cause = error.__cause__
    if cause is not None and str(cause) and str(cause) not in str(error):
        lines.append(f"caused by {type(cause).__name__}: {str(cause).strip()}")
    where = f"run folder {run_dir}; " if run_dir is not None else ""
    lines.append(f"({where}{DEBUG_HINT})")
    return "\n".join(lines)
