"""Guards that decide whether ``enable`` may start a job.

* ``ProcessedTasks``: the task ids whose job ran to completion
  (``<state>/handler/processed-tasks.json``, the last ``MAX_PROCESSED``
  kept). The reference keeps only the last one (``task_identity_...``); a
  bounded list also catches a retry that arrives after another task.
* The single-job lock lives in ``job.lock`` (``JobLock``): ``enable`` and
  its daemon share it with ``snapshot-runtime run``.
* ``command_too_late``: the reference's 140-minute limit on
  ``commandStartTimeUTCTicks`` (``FailedGuestAgentInvokedCommandTooLate``).

``command_too_late`` is pure; the classes do file I/O only.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

from snapshot_runtime.core.atomic_file import write_atomic

__all__ = [
    "COMMAND_DEADLINE",
    "MAX_PROCESSED",
    "ProcessedTasks",
    "command_too_late",
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

    Callers serialise writers through ``job.lock.JobLock``: only the lock's holder
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
