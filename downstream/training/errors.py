"""How a failed launch reports itself: one message on stderr (the error's class and text, which say what was
wrong and how to fix it), no traceback unless asked for (``debug=true`` or ``HYDRA_FULL_ERROR=1``)."""

from __future__ import annotations

import os
import re

#: Where a user asks for the traceback instead of the one message.
DEBUG_HINT = "debug=true or HYDRA_FULL_ERROR=1 shows the traceback"


def wants_traceback(debug: object = False) -> bool:
    """Whether to let the exception (and its traceback) through: ``debug=true`` or ``HYDRA_FULL_ERROR=1``."""
    return bool(debug) or os.environ.get("HYDRA_FULL_ERROR") == "1"


def error_message(error: BaseException, run_dir: object | None = None) -> str:
    """The one message of a failed launch: ``error: <Class>: <text>``, then where the run was and the debug
    hint. When Hydra's instantiate wraps the real error (``InstantiationException``), the message leads with
    the real one (its class and text name the key and value) and says which config node was being built."""
    from hydra.errors import InstantiationException

    cause = error.__cause__
    if isinstance(error, InstantiationException) and cause is not None and str(cause).strip():
        node = re.search(r"^full_key: (\S+)", str(error), flags=re.MULTILINE)
        lines = [f"error: {type(cause).__name__}: {str(cause).strip()}"]
        lines.append(f"(raised while building {node.group(1) if node else 'a configured component'})")
    else:
        lines = [f"error: {type(error).__name__}: {str(error).strip() or '(no message)'}"]
        if cause is not None and str(cause) and str(cause) not in str(error):
            lines.append(f"caused by {type(cause).__name__}: {str(cause).strip()}")
    where = f"run folder {run_dir}; " if run_dir is not None else ""
    lines.append(f"({where}{DEBUG_HINT})")
    return "\n".join(lines)
