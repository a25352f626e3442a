"""The single-job lock: one snapshot job on a machine at a time.

``fcntl.flock`` on ``<run_dir>/handler.lock`` (``JOB_LOCK_FILE``; tmpfs,
never frozen). The kernel drops the lock when the last descriptor of the open
file goes away, i.e. when its holder dies however it dies, so it cannot be
left stale. Two takers share it:

* the handler: ``enable`` takes it, hands the descriptor to the daemon it
  spawns, and exits; the daemon holds it for the whole job;
* ``snapshot-runtime run`` (``JobOptions.single_job_lock``): the job takes
  it before anything else and holds it to the end.

A refused taker starts nothing (no script, no freeze, no snapshot) and
reports ``JobAlreadyRunning``. The file's text names the holder (pid, task
id, handler sequence number) for that message; the text is informative only,
the flock is the truth. Two jobs on one mount would otherwise meet at
FIFREEZE, where the second finds the first's freeze (EBUSY) and could only
report a freeze it does not hold (docs/consistency.md, issue 11).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["JOB_LOCK_FILE", "JobLock", "LockHolder"]

# The lock's file name in the run directory (its historical, handler-era name).
JOB_LOCK_FILE = "handler.lock"


@dataclass(frozen=True)
class LockHolder:
    pid: int | None
    task_id: str | None
    seq: int | None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> LockHolder:
        pid, task, seq = doc.get("pid"), doc.get("taskId"), doc.get("seq")
        return cls(
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            task_id=task if isinstance(task, str) else None,
            seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        )


class JobLock:
    """The single-job lock: a non-blocking ``flock`` on one file.

    ``try_acquire()`` -> True when this process now holds it. ``fd`` is the
    descriptor to hand to a child (``pass_fds``); the lock lives as long as any
    process keeps that open file. ``adopt(fd)`` wraps an inherited descriptor.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise RuntimeError("the lock is not held")
        return self._fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    @classmethod
    def adopt(cls, path: str, fd: int) -> JobLock:
        """Wrap an inherited descriptor that already holds the lock.

        The descriptor is made close-on-exec, so the job's own children
        (scripts, the watchdog) never inherit the lock and cannot outlive it.
        """
        os.set_inheritable(fd, False)
        lock = cls(path)
        lock._fd = fd
        return lock

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def set_holder(self, *, pid: int, task_id: str, seq: int | None) -> None:
        """Describe the holder in the lock file (informative; OSError on failure)."""
        data = json.dumps({"pid": pid, "taskId": task_id, "seq": seq}).encode("utf-8")
        fd = self.fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def holder(self) -> LockHolder | None:
        """What the lock file says about its holder (any process may read it)."""
        try:
            with open(self.path, "rb") as fh:
                doc = json.loads(fh.read(4096).decode("utf-8"))
        except (OSError, ValueError):
            return None
        return LockHolder.from_json(doc) if isinstance(doc, dict) else None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing our descriptor drops our hold on the flock
