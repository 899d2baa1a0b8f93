"""The command that continues a launch: what every "relaunch to resume" message prints.

Torch-free: ``run_downstream.py`` prints it after Ctrl-C or an early stop, the shared-upstream launcher after a
stop signal or a failed group. The command is this process's own command line, run from the same working
directory, with the folder pinned: ``hydra.sweep.dir=<sweep folder>`` for a sweep (its default folder is named
after the launch time, so the bare command would start a new sweep from step 0) and ``hydra.run.dir=<run
folder>`` for one run (the folder it trained in, whatever its name was made from).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

#: Arguments that ``run_downstream.prepare_torchrun_arguments`` adds on ranks other than 0.
_RANK_ONLY_ARGUMENTS = ("hydra.output_subdir=null",)


def continue_command(
    folder: str | Path,
    sweep: bool,
    argv: Sequence[str] | None = None,
    cwd: str | Path | None = None,
) -> str:
    """The shell command that continues the same run (``sweep=False``: ``folder`` is its run folder) or sweep
    (``folder``: the sweep folder): ``cd <cwd> && <python> <script> <arguments> hydra.<run|sweep>.dir=<folder>``,
    the folder made absolute and replacing any such argument already given. ``argv`` defaults to
    ``sys.argv``, ``cwd`` to the working directory. Under torchrun on one node the command is
    ``torchrun --nproc_per_node <N> <script> ...``."""
    argv = list(sys.argv if argv is None else argv)
    cwd = Path.cwd() if cwd is None else Path(cwd)
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    folder = (cwd / Path(folder)).absolute()
    arguments = [a for a in argv[1:] if not a.startswith(key + "=") and a not in _RANK_ONLY_ARGUMENTS]
    world_size = os.environ.get("WORLD_SIZE")
    if world_size is not None and world_size == os.environ.get("LOCAL_WORLD_SIZE") and int(world_size) > 1:
        program = ["torchrun", "--nproc_per_node", world_size, argv[0]]
    else:
        program = [sys.executable, argv[0]]
    return f"cd {shlex.quote(str(cwd))} && " + shlex.join([*program, *arguments, f"{key}={folder}"])
