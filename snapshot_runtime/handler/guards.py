"""Guards that decide whether ``enable`` may start a job.

* ``ProcessedTasks``: the task ids whose job ran to completion
  (``<state>/handler/processed-tasks.json``, the last ``MAX_PROCESSED``
  kept). The reference keeps only the last one (``task_identity_...``); a
  bounded list also catches a retry that arrives after another task.
* The single-job lock lives in ``job.lock`` (``JobLock``): ``enable`` and
  its daemon share it with ``snapshot-runtime run``.
* the reference's 140-minute limit on ``commandStartTimeUTCTicks``
  (``FailedGuestAgentInvokedCommandTooLate``) is ``core.command_deadline``:
  the host path applies it too, with the host's clock.
* ``reset_guards_on_new_identity``: the sequence (``mrseq``) and task guards
  belong to one VM. A restored or cloned VM carries its source's guard files
  on its disks, so it would refuse its first job as already processed; the
  reference resets them when its ``MachineIdentity`` (the agent's Role GUID)
  changes. Ours is keyed to ``inputs.machine.VmIdentity`` (the SMBIOS product
  UUID and that Role GUID), stored next to the processed task ids.

The classes and functions do file I/O.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

from snapshot_runtime.core.atomic_file import write_atomic

__all__ = [
    "MAX_PROCESSED",
    "IdentityCheck",
    "ProcessedTasks",
    "reset_guards_on_new_identity",
]

MAX_PROCESSED = 128
_MAX_REGISTRY_BYTES = 256 * 1024


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
