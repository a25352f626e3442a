"""The outcome of a snapshot run: one record per disk, and the code to report.

Pure records and decisions, no I/O. ``aggregate`` maps a set of disk
outcomes to the job's error code and a message: all ok, none; all failed,
``SNAPSHOT_LIMIT_REACHED`` or ``SNAPSHOT_RATE_EXCEEDED`` when every failure
is of that kind, else ``SNAPSHOT_FAILED``; some failed,
``SNAPSHOT_PARTIALLY_FAILED``; no disks at all, ``SNAPSHOT_FAILED``. URLs in
records and messages are ``strip_sas`` forms (I5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.core.redact import strip_sas
from snapshot_runtime.snapshot.failures import FailureKind

__all__ = ["DiskSnapshot", "SnapshotResult", "aggregate"]

# Failing disks named in an aggregate message; the rest are counted.
_MAX_LISTED = 8


@dataclass(frozen=True)
class DiskSnapshot:
    """One disk's outcome. ``blob_url`` and ``snapshot_url`` carry no SAS."""

    index: int
    blob_url: str
    ok: bool
    snapshot: str | None
    snapshot_url: str | None
    attempts: int
    started_at: float
    duration_seconds: float
    status_code: int | None
    error: str | None
    failure_kind: FailureKind | None
    lun: int | None = None  # the host path's disk id (includedDisks LUN); None on the guest path


@dataclass(frozen=True)
class SnapshotResult:
    """All disks' outcomes, in disk order, and the code to report."""

    disks: tuple[DiskSnapshot, ...]
    ok: bool
    error: ErrorCode | None
    error_message: str | None
    duration_seconds: float
    deadline_hit: bool

    @property
    def ok_count(self) -> int:
        return sum(1 for d in self.disks if d.ok)


def aggregate(
    disks: Sequence[DiskSnapshot], *, deadline_hit: bool
) -> tuple[ErrorCode | None, str | None]:
    """The error code and message for a set of disk outcomes. Pure.

    All ok: none. All failed: ``SNAPSHOT_LIMIT_REACHED`` or
    ``SNAPSHOT_RATE_EXCEEDED`` when every failure is of that kind, else
    ``SNAPSHOT_FAILED``. Some failed: ``SNAPSHOT_PARTIALLY_FAILED``. No disks at
    all is a failure: a job that snapshots nothing has not succeeded.
    """
    if not disks:
        return ErrorCode.SNAPSHOT_FAILED, "no disks to snapshot"
    failed = [d for d in disks if not d.ok]
    if not failed:
        return None, None
    kinds = {d.failure_kind for d in failed}
    if len(failed) < len(disks):
        code = ErrorCode.SNAPSHOT_PARTIALLY_FAILED
    elif kinds == {"limit"}:
        code = ErrorCode.SNAPSHOT_LIMIT_REACHED
    elif kinds == {"throttled"}:
        code = ErrorCode.SNAPSHOT_RATE_EXCEEDED
    else:
        code = ErrorCode.SNAPSHOT_FAILED
    listed = "; ".join(
        f"disk {d.index} {strip_sas(d.blob_url)}: {d.error or d.failure_kind or 'failed'}"
        for d in failed[:_MAX_LISTED]
    )
    more = f"; and {len(failed) - _MAX_LISTED} more" if len(failed) > _MAX_LISTED else ""
    deadline = " (deadline reached)" if deadline_hit else ""
    return code, f"{len(failed)} of {len(disks)} disk(s) failed{deadline}: {listed}{more}"
