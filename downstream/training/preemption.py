"""Stopping a launch cleanly: stop signals (SLURM, torchrun, submitit preemption, Ctrl-C) and the exit status.

While training, a stop signal is only recorded; the trainer finishes the current update, checkpoints and
stops (every rank at the same update), then hands the signal on to the handler that was there before
(submitit's, which requeues the job; Python's for SIGINT, which raises KeyboardInterrupt). The launch exits
with ``EXIT_STOPPED_EARLY``, or ``EXIT_INTERRUPTED`` after Ctrl-C. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

#: Exit status of a launch that stopped before the end with a checkpoint (a stop signal or
#: trainer.stop_after_steps): EX_TEMPFAIL, "try again"; relaunching the same command resumes.
EXIT_STOPPED_EARLY = 75
#: Exit status after Ctrl-C (SIGINT): 128 + 2, as shells report a process ended by SIGINT.
EXIT_INTERRUPTED = 130


def stop_signals() -> list[signal.Signals]:
    """SIGTERM (what SLURM and torchrun send to stop a job), SIGINT (Ctrl-C) and submitit's
    preemption/timeout signal (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL names another one)."""
    preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    extra = [preempt] if preempt is not None and preempt not in (signal.SIGTERM, signal.SIGINT) else []
    return [signal.SIGTERM, signal.SIGINT, *extra]


@contextlib.contextmanager
def record_stop_signals(record: Callable[[int], None]) -> Iterator[None]:
    """Inside the block, a stop signal calls ``record(signum)`` instead of ending the process. The handlers
    installed before (submitit's) are put back afterwards; ``pass_signal_on`` then calls them. Outside the
    main thread (where signals cannot be handled) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    received: set[int] = set()

    def request_stop(signum, frame) -> None:
        if signum == signal.SIGINT and signum in received:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without the checkpoint of this update
        received.add(signum)
        hint = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
        log.warning(
            "%s: checkpointing at the end of this update, then stopping%s", signal.Signals(signum).name, hint
        )
        record(signum)

    previous = {signum: signal.signal(signum, request_stop) for signum in stop_signals()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def pass_signal_on(signum: int) -> None:
    """Call the handler of ``signum`` that was installed before the trainer's (e.g. submitit's, which
    requeues the job and exits). A default or ignored disposition is left alone: the launch then ends
    with EXIT_STOPPED_EARLY. SIGINT raises KeyboardInterrupt (the launch ends with EXIT_INTERRUPTED)."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt  # what Ctrl-C does in Python, also where SIGINT was ignored at start
    handler = signal.getsignal(signum)
    if callable(handler):
        handler(signum, None)
