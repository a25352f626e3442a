"""Guards that decide whether ``enable`` may start a job.

* ``ProcessedTasks``: the task ids whose job ran to completion
  (``<state>/handler/processed-tasks.json``, the last ``MAX_PROCESSED``
  kept). The reference keeps only the last one (``task_identity_...``); a
  bounded list also catches a retry that arrives after another task.
* ``JobLock``: one job at a time. ``fcntl.flock`` on ``<run>/handler.lock``
  (tmpfs, never frozen). The kernel drops the lock when the last descriptor of
  the open file goes away, i.e. when its holder dies however it dies, so it
  cannot be left stale. ``enable`` takes it, hands the descriptor to the
  daemon it spawns, and exits; the daemon holds it for the whole job. The
  file's text names the holder (pid, task id, sequence number) for the
  message a refused ``enable`` writes; the text is informative only, the
  flock is the truth.
* ``command_too_late``: the reference's 140-minute limit on
  ``commandStartTimeUTCTicks`` (``FailedGuestAgentInvokedCommandTooLate``).
* ``reset_guards_on_new_identity``: the sequence (``mrseq``) and task guards
  belong to one VM. A restored or cloned VM carries its source's guard files
  on its disks, so it would refuse its first job as already processed; the
  reference resets them when its ``MachineIdentity`` (the agent's Role GUID)
  changes. Ours is keyed to ``inputs.machine.VmIdentity`` (the SMBIOS product
  UUID and that Role GUID), stored next to the processed task ids.

``command_too_late`` is pure; the classes and functions do file I/O only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from snapshot_runtime.core.atomic_file import write_atomic

__all__ = [
    "COMMAND_DEADLINE",
    "MAX_PROCESSED",
    "IdentityCheck",
    "JobLock",
    "LockHolder",
    "ProcessedTasks",
    "command_too_late",
    "reset_guards_on_new_identity",
]

COMMAND_DEADLINE = timedelta(minutes=140)
MAX_PROCESSED = 128
_MAX_REGISTRY_BYTES = 256 * 1024


def command_too_late(start: datetime | None, now: datetime) -> bool:
    """True when more than 140 minutes passed since ``start``. Pure.

    No start time means no limit (the field is optional). A start in the
    future (clock skew) is not late.
    """
    if start is None:
        return False
    return now - start > COMMAND_DEADLINE


class ProcessedTasks:
    """A bounded, ordered set of task ids, persisted as JSON (atomic rewrite).

    Callers serialise writers through ``JobLock``: only the lock's holder
    adds. A missing, unreadable or malformed file reads as empty (and is
    replaced on the next ``add``): losing the history may re-run a task,
    which is better than refusing every task forever.
    """

    def __init__(self, path: str, *, limit: int = MAX_PROCESSED) -> None:
        self.path = path
        self.limit = limit

    def _load(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                data = fh.read(_MAX_REGISTRY_BYTES + 1)
            doc = json.loads(data.decode("utf-8"))
        except (OSError, ValueError):
            return []
        tasks = doc.get("tasks") if isinstance(doc, dict) else None
        if not isinstance(tasks, list):
            return []
        return [t for t in tasks if isinstance(t, str)]

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._load()

    def tasks(self) -> list[str]:
        return self._load()

    def add(self, task_id: str) -> None:
        """Record ``task_id`` as the most recent; OSError on failure."""
        tasks = [t for t in self._load() if t != task_id]
        tasks.append(task_id)
        tasks = tasks[-self.limit :]
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        data = json.dumps({"version": 1, "tasks": tasks}, indent=1).encode("utf-8")
        write_atomic(self.path, data, mode=0o600)

    def clear(self) -> None:
        """Forget every task id (a new VM identity); OSError on failure."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@dataclass(frozen=True)
class IdentityCheck:
    """What ``reset_guards_on_new_identity`` found and did."""

    previous: str | None
    current: str | None
    reset: bool


_MAX_IDENTITY_BYTES = 4096


def _stored_identity(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            text = fh.read(_MAX_IDENTITY_BYTES).decode("utf-8", errors="replace").strip()
    except OSError:
        return None
    return text or None


def reset_guards_on_new_identity(
    current: str | None,
    *,
    identity_path: str,
    processed: ProcessedTasks,
    sequence_path: str,
) -> IdentityCheck:
    """Reset the sequence and task guards when the VM identity changed.

    ``current`` None (no identity readable, e.g. a container): nothing is
    touched, the guards keep working as before. No stored identity (first run,
    or an older version): ``current`` is stored, nothing reset; a clone made
    before this was ever stored cannot be told apart. A stored identity that
    differs: ``processed`` and ``sequence_path`` (``mrseq``) are removed and
    ``current`` stored, so the first job of the restored or cloned VM runs.
    OSError if the guards cannot be reset or the identity stored.
    """
    previous = _stored_identity(identity_path)
    if current is None or previous == current:
        return IdentityCheck(previous=previous, current=current, reset=False)
    reset = previous is not None
    if reset:
        processed.clear()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sequence_path)
    os.makedirs(os.path.dirname(os.path.abspath(identity_path)), mode=0o700, exist_ok=True)
    write_atomic(identity_path, (current + "\n").encode("utf-8"), mode=0o600)
    return IdentityCheck(previous=previous, current=current, reset=reset)


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

    def set_holder(self, *, pid: int, task_id: str, seq: int) -> None:
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
