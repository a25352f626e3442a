"""Housekeeping: prune old job records and status files (``core.retention`` decides).

* ``prune_state_dir``: ``<state-dir>/jobs/<taskId>.json`` (the copy
  ``snapshot-runtime trace`` reads) and ``<state-dir>/status/<taskId>.status``
  (the default local status file), each directory on its own.
* ``prune_handler_status``: the guest agent's status folder. It is the
  agent's, so only the files this handler writes there (``<N>.status``) are
  candidates, and the current sequence number's file is never removed.

Run after a job has finished (status written, log closed): never in the
frozen window, never for the spool (its cap and counted drops are its own,
docs/spool.md). Only regular files whose names the runtime itself gives are
listed (symlinks, temporary ``.name.tmp`` files and anything else stay). A
file that cannot be removed is reported and left for the next run; nothing
here fails a job.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from dataclasses import dataclass, field

from snapshot_runtime.core.retention import RetainedFile, RetentionPolicy, files_to_prune

__all__ = ["PruneReport", "prune_directory", "prune_handler_status", "prune_state_dir"]

# The names the runtime gives (job_dir_name, status_report's safe name): never a
# leading dot, so atomic_file's temporary files are not candidates.
_JOB_RECORD = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\.json")
_STATUS_FILE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\.status")
_SEQUENCE_STATUS = re.compile(r"(0|[1-9][0-9]{0,9})\.status")


@dataclass
class PruneReport:
    """What one pass removed (paths) and what it could not (path: reason)."""

    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def extend(self, other: PruneReport) -> None:
        self.removed.extend(other.removed)
        self.errors.extend(other.errors)


def prune_directory(
    directory: str,
    pattern: re.Pattern[str],
    policy: RetentionPolicy,
    *,
    now: float | None = None,
    protected: frozenset[str] = frozenset(),
) -> PruneReport:
    """Remove what ``files_to_prune`` picks among the regular files named ``pattern``."""
    report = PruneReport()
    if not policy.enabled:
        return report
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return report
    except OSError as exc:
        report.errors.append(f"{directory}: {exc.strerror}")
        return report
    candidates: list[RetainedFile] = []
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        with contextlib.suppress(OSError):  # gone meanwhile: not a candidate
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode):
                candidates.append(RetainedFile(entry.name, info.st_mtime))
    when = time.time() if now is None else now
    for name in files_to_prune(candidates, policy, now=when, protected=protected):
        path = os.path.join(directory, name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            report.errors.append(f"{path}: {exc.strerror}")
        else:
            report.removed.append(path)
    return report


def prune_state_dir(
    state_dir: str, policy: RetentionPolicy, *, now: float | None = None
) -> PruneReport:
    """Old job records (``jobs/``) and local status files (``status/``) of a state dir."""
    report = prune_directory(os.path.join(state_dir, "jobs"), _JOB_RECORD, policy, now=now)
    report.extend(prune_directory(os.path.join(state_dir, "status"), _STATUS_FILE, policy, now=now))
    return report


def prune_handler_status(
    status_folder: str, policy: RetentionPolicy, *, current_seq: int, now: float | None = None
) -> PruneReport:
    """Old ``<N>.status`` files in the agent's status folder; ``current_seq``'s stays."""
    return prune_directory(
        status_folder,
        _SEQUENCE_STATUS,
        policy,
        now=now,
        protected=frozenset({f"{current_seq}.status"}),
    )
