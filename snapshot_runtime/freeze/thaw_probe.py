"""Proof of thaw: write and fsync a file in every filesystem we froze, with a bound.

``probe_all`` runs one daemon thread per target: it creates (``O_EXCL``,
``O_NOFOLLOW``, relative to the mount's directory fd), writes, fsyncs and
unlinks a small file named ``target.probe_name`` (``PROBE_PREFIX``-...).
It blocks at most ``timeout`` (``PROBE_TIMEOUT``) in all. A probe that does
not finish in time means "still frozen": ``probe_blocked`` and
``probe_ok = False`` (the caller fails the session with ThawFailed; the
stuck thread is abandoned and cannot change the verdict any more). A probe
that fails with an errno (ENOSPC, EROFS) sets ``probe_ok = False`` and a
``probe_error`` but is only reported. It never raises.

Runs only after the thaw, never in the frozen window (it opens files and
starts threads).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from snapshot_runtime.freeze.ioctl import describe_error

__all__ = ["PROBE_PREFIX", "PROBE_TIMEOUT", "ProbeTarget", "probe_all"]

PROBE_TIMEOUT = 1.0
PROBE_PREFIX = ".snapshot-runtime-thaw-probe"


class ProbeTarget(Protocol):
    """Where a probe's verdict is written (a mount's state in the session)."""

    probe_name: str
    probe_ok: bool | None
    probe_error: str | None
    probe_blocked: bool


def probe_all(targets: Sequence[tuple[ProbeTarget, int]], timeout: float = PROBE_TIMEOUT) -> None:
    """Probe every (target, mount directory fd) at once; wait at most ``timeout``."""
    threads: list[tuple[ProbeTarget, threading.Thread]] = []
    for target, mount_fd in targets:
        dirfd = os.dup(mount_fd)
        thread = threading.Thread(
            target=_probe, args=(target, dirfd), name="thaw-probe", daemon=True
        )
        thread.start()
        threads.append((target, thread))
    until = time.monotonic() + timeout
    for target, thread in threads:
        thread.join(max(0.0, until - time.monotonic()))
        if thread.is_alive():
            target.probe_blocked = True
            target.probe_ok = False
            target.probe_error = f"write+fsync did not complete within {timeout:g}s: still frozen?"


def _probe(state: ProbeTarget, dirfd: int) -> None:
    """Proof of thaw: create, write, fsync, unlink; runs in its own thread."""
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(state.probe_name, flags, 0o600, dir_fd=dirfd)
        try:
            os.write(fd, b"snapshot-runtime thaw probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(state.probe_name, dir_fd=dirfd)
        if not state.probe_blocked:
            state.probe_ok, state.probe_error = True, None
    except OSError as exc:
        if not state.probe_blocked:
            state.probe_ok, state.probe_error = False, describe_error(exc)
    finally:
        os.close(dirfd)
