"""What ``python -m downstream.predict`` and ``python -m downstream.extract`` share: ``key=value`` arguments,
logging, and ending with one clear message on an error (``debug=true`` shows the traceback)."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import OmegaConf

from downstream.training.errors import error_message, wants_traceback


def parse_arguments(
    argv: Sequence[str],
    known: Sequence[str],
    required: Sequence[str],
    command: str,
    pass_through: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """``key=value`` arguments -> (values of ``known`` keys, the other arguments). Unknown keys are an error
    (ValueError naming them and the known ones) unless ``pass_through``; a ``required`` key must be given."""
    values: dict[str, Any] = {}
    others: list[str] = []
    for argument in argv:
        key, equals, _ = argument.partition("=")
        if not equals:
            raise ValueError(f"{command}: expected key=value arguments, got {argument!r}")
        if key in known:
            values.update(OmegaConf.to_container(OmegaConf.from_dotlist([argument])))  # type: ignore[arg-type]
        elif pass_through:
            others.append(argument)
        else:
            raise ValueError(f"{command}: unknown argument {key!r}; it takes {', '.join(known)}")
    missing = [key for key in required if values.get(key) in (None, "")]
    if missing:
        raise ValueError(f"{command}: {', '.join(f'{key}=...' for key in missing)} is required")
    return values, others


def main_wrapper(run: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """Run ``run(argv)`` with INFO logging; an error ends with one message on stderr and exit status 1."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    debug = any(argument in ("debug=true", "debug=True") for argument in argv)
    argv = [argument for argument in argv if not argument.startswith("debug=")]
    try:
        run(argv)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        if wants_traceback(debug):
            traceback.print_exc()
        print(error_message(error), file=sys.stderr)
        sys.exit(1)
