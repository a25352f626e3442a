"""Stopping a job from outside: ``JobInterrupted`` and the name of what stopped it.

The entry point (``cli``) turns SIGTERM/SIGHUP into ``JobInterrupted``;
Ctrl-C arrives as ``KeyboardInterrupt``. Pure: no signal handlers here.
"""

from __future__ import annotations

import signal

__all__ = ["JobInterrupted", "interrupt_name"]


class JobInterrupted(BaseException):
    """A stop signal (SIGTERM, SIGHUP) turned into an exception by the entry point.

    A ``BaseException``, like ``KeyboardInterrupt``: nothing in the job catches
    it by accident. The job thaws, runs the post-script, writes a terminal
    status, then re-raises it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def interrupt_name(exc: BaseException) -> str:
    """``SIGTERM``/``SIGHUP`` for a ``JobInterrupted``, ``SIGINT`` for anything else."""
    if isinstance(exc, JobInterrupted):
        try:
            return signal.Signals(exc.signum).name
        except ValueError:
            return f"signal {exc.signum}"
    return "SIGINT"
