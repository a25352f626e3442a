"""The snapshot backend seam: what the job's frozen window needs from a snapshotter.

A backend is one module with a class implementing ``Snapshotter`` and one line
in ``registry.BACKENDS`` (docs/snapshot-backends.md). The job calls, in order::

    decide()        before anything else, before the freeze: use, or decline(reason)
    prepare()       before the freeze: preflight, clients, threads, warm connections
    snapshot_all()  inside the frozen window: the snapshot request(s), nothing else
    close()         after the thaw, always (also after a decline or a failure)

Both shapes fit: one request per disk (``AzureBlobSnapshotter``), or one
request for all disks whose answer is mapped back to the disks (the host /
WireServer path): ``snapshot_all`` returns one ``DiskSnapshot`` per disk, in
disk order, either way.

Rules (I1, I5):

* ``decide`` may do I/O (a host "presnapshot" call); a decline names why, and
  the job falls back to the next backend and records the reason.
* ``prepare`` returns the disks that failed their preflight for good; they
  are reported failed, not attempted, by ``snapshot_all``.
* ``snapshot_all`` runs while filesystems are frozen: no file writes, no
  logging, no imports, no new threads; only the snapshot requests, on
  connections and threads ``prepare`` made. It returns by ``deadline_seconds``
  and reports request failures in its result, never raises them.
* ``close`` is idempotent.
* No SAS (or any secret) in any result, reason or exception text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from snapshot_runtime.inputs.settings import HandlerSettings
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.snapshot.results import DiskSnapshot, SnapshotResult

__all__ = [
    "BackendDecision",
    "SnapshotRequest",
    "Snapshotter",
    "SnapshotterFactory",
]


@dataclass(frozen=True)
class BackendDecision:
    """A backend's answer before the freeze: ``use``, or decline with a ``reason``."""

    use: bool
    reason: str | None = None

    @classmethod
    def accept(cls) -> BackendDecision:
        return cls(use=True)

    @classmethod
    def decline(cls, reason: str) -> BackendDecision:
        return cls(use=False, reason=reason)


@dataclass(frozen=True)
class SnapshotRequest:
    """What every backend is built from: the job's settings and its limits.

    - ``settings``: the disks (``disk_sas_urls``, in disk order), the backup
      metadata, the task id; everything a host request needs as well.
    - ``policy``: timeouts and retry budget per request.
    - ``deadline_seconds``: ``snapshot_all`` returns by then, whatever happens.
    """

    settings: HandlerSettings
    policy: BlobPolicy
    deadline_seconds: float


class Snapshotter(Protocol):
    """Snapshots every disk of the VM inside the frozen window (see the module doc)."""

    def decide(self) -> BackendDecision: ...

    def prepare(self) -> list[DiskSnapshot]: ...

    def snapshot_all(self) -> SnapshotResult: ...

    def close(self) -> None: ...


# Builds a backend for one job; must not do I/O (``decide`` and ``prepare`` do).
SnapshotterFactory = Callable[[SnapshotRequest], Snapshotter]
