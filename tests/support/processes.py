"""``stop_process``: end a child process the test started, bounded, and reap it.

Every test that starts a helper process (a sidecar, a lock holder, Azurite,
Prometheus) must end it even when the test fails half way, without hanging
the suite on a process that ignores SIGTERM and without leaving a zombie.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from typing import Any

__all__ = ["pid_alive", "stop_process"]


def stop_process(
    proc: subprocess.Popen[Any], *, grace: float = 10.0, sig: int = signal.SIGTERM
) -> int:
    """Send ``sig`` (SIGTERM), wait ``grace`` s, then SIGKILL and reap; return the exit code.

    A process that already exited is only reaped. ``sig=signal.SIGKILL`` kills
    at once. Waiting after SIGKILL is bounded too: a process in uninterruptible
    sleep (say, writing to a frozen filesystem) raises ``TimeoutExpired``
    instead of hanging the suite.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # exited since poll(): reaped below
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=grace)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; gone, a zombie (Z) or dead (X) counts as not alive.

    For processes the test did not start itself (a daemon, a watchdog, a
    script's child), which it cannot ``wait()`` for: a zombie has finished,
    only its reaping (by whoever its parent is) is left.
    """
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in {"Z", "X"}
