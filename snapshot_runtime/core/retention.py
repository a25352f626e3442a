"""Retention of the runtime's own files: which old job records and status files go.

Pure: ``files_to_prune`` decides from names and modification times only; the
effect (listing, deleting) is ``job.housekeeping``. The rule, for one
directory of one kind of file:

* files are ranked newest first (modification time, then name, so equal
  times give one order on every run);
* the newest file always stays (``keep`` is at least 1): the last job's
  record is what ``snapshot-runtime trace`` and an operator look at first,
  however long ago it ran;
* beyond it a file goes when it is not among the ``keep`` newest, or when it
  is older than ``max_age_days``; either limit may be off (None);
* a protected name (the status file the guest agent is reading now) never
  goes; it still takes its place in the ranking.

Only files the runtime writes are ever offered here: the spool has its own
size cap with counted drops and nothing unmirrored is pruned by age
(docs/spool.md); the guest agent's other files are never listed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from snapshot_runtime.core import defaults

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "DEFAULT_RETENTION_KEEP",
    "RetainedFile",
    "RetentionPolicy",
    "files_to_prune",
]

# The reference keeps 60 .status/.settings files in the agent's folders (the
# values live in core/defaults.py, which --help reads without this module).
DEFAULT_RETENTION_KEEP = defaults.DEFAULT_RETENTION_KEEP
DEFAULT_RETENTION_DAYS = defaults.DEFAULT_RETENTION_DAYS
_DAY = 86400.0


@dataclass(frozen=True)
class RetentionPolicy:
    """``keep``: most files kept per directory (None: no count limit, else >= 1).
    ``max_age_days``: files older than this go (None: no age limit)."""

    keep: int | None = DEFAULT_RETENTION_KEEP
    max_age_days: float | None = DEFAULT_RETENTION_DAYS

    def __post_init__(self) -> None:
        if self.keep is not None and self.keep < 1:
            raise ValueError("retention keep must be at least 1 (the newest file always stays)")
        if self.max_age_days is not None and not (
            math.isfinite(self.max_age_days) and self.max_age_days > 0
        ):
            raise ValueError("retention max_age_days must be a positive number of days")

    @property
    def enabled(self) -> bool:
        return self.keep is not None or self.max_age_days is not None


@dataclass(frozen=True)
class RetainedFile:
    """One candidate: its name in the directory and its modification time (epoch s)."""

    name: str
    mtime: float


def files_to_prune(
    files: Sequence[RetainedFile],
    policy: RetentionPolicy,
    *,
    now: float,
    protected: Collection[str] = (),
) -> list[str]:
    """The names to delete, oldest first. Pure."""
    ranked = sorted(files, key=lambda f: (f.mtime, f.name), reverse=True)
    cutoff = None if policy.max_age_days is None else now - policy.max_age_days * _DAY
    doomed: list[str] = []
    for rank, candidate in enumerate(ranked):
        if rank == 0 or candidate.name in protected:
            continue
        beyond_count = policy.keep is not None and rank >= policy.keep
        too_old = cutoff is not None and candidate.mtime < cutoff
        if beyond_count or too_old:
            doomed.append(candidate.name)
    doomed.reverse()
    return doomed
