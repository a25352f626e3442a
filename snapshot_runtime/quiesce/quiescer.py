"""The quiescer interface: quiesce before the freeze, hold, release after the thaw.

One database session, owned by the runtime process, does all three: no
detached sleeper, no second session for the release (the reference's defect:
``UNLOCK TABLES`` from a new session never releases another session's lock).
If the runtime dies, the kernel closes the session's socket and the server
ends the session and the lock with it.

The hold deadline is enforced by the server, set before the freeze (MariaDB:
the session's ``wait_timeout``; the server drops an idle session after it,
releasing its lock), or noticed only after the thaw: nothing here does
database I/O between ``quiesce`` and ``release``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from snapshot_runtime.core.errors import ErrorCode

__all__ = ["QuiesceError", "QuiesceFacts", "Quiescer", "ReleaseFacts"]


class QuiesceError(Exception):
    """The quiesce failed; ``code`` is the reference's workload code (500-510)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class QuiesceFacts:
    """What the quiesce did, for the log, the record and the status.

    ``method``: ``backup_stage`` (MariaDB BACKUP STAGE BLOCK_COMMIT),
    ``read_lock`` (FLUSH TABLES WITH READ LOCK) or ``checkpoint`` (PostgreSQL).
    ``log_position``: the binlog ``file:position`` read while commits were
    blocked, or the WAL LSN right after the CHECKPOINT; None when the server
    keeps no binlog. ``blocks_commits``: whether commits stall until release.
    """

    workload: str
    method: str
    blocks_commits: bool
    log_position: str | None
    server_version: str
    quiesce_seconds: float
    hold_deadline_seconds: int
    blocked_at: float | None  # time.monotonic() when commits were blocked
    session_id: int | None = None  # the server's id for the holding session (KILL / pid)
    quiesced_at: float | None = None  # time.monotonic() when the quiesce returned
    note: str | None = None  # what a DBA should know (e.g. why no log position)


@dataclass(frozen=True)
class ReleaseFacts:
    """The release: ``ok`` False means the hold was lost before it (never application)."""

    ok: bool
    error: ErrorCode | None
    message: str | None
    stall_seconds: float | None  # commits blocked, quiesce to release (MariaDB)
    held_seconds: float


class Quiescer(Protocol):
    """One workload's quiesce/hold/release in one session the runtime owns."""

    @property
    def workload(self) -> str: ...

    def quiesce(self) -> QuiesceFacts:
        """Block (or checkpoint) and read the log position; raises ``QuiesceError``."""
        ...

    def release(self) -> ReleaseFacts:
        """Release in the same session; never raises. Safe after a failed quiesce."""
        ...
