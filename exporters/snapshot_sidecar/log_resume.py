"""Where a job's log continues in a blob that already holds part of it.

Used by the mirror when its state has no progress for a job (first sight, or
a fresh start after state.json was deleted, corrupt or of a newer version)
but the blob has content: the blob, not the local state, is the truth about
what it holds (issue 11, defect 3).

``resume_point`` reads the blob's last ``WINDOW`` bytes (through the
``LogTarget``, so append, block and page blobs alike, a page blob up to its
logical length), splits them into whole lines and streams the spooled log
against them: the last spool line found there, byte for byte, is where
mirroring resumes. A spool line carries its ``seq``, timestamp and the job's
trace id, so it matches one line of one job only; the mirror writes in
order, so what the blob holds of a log is a prefix of it, and lines others
appended after ours do not hide it. None: no line of this log in the blob's
end (a platform header only, another job's log).

Blocking: one ranged blob read (what the target's SDK call raises, the
caller's ``call_with_retries`` classifies) and a read of the spooled log.
"""

from __future__ import annotations

from dataclasses import dataclass

from snapshot_runtime.telemetry.spool_schema import LOG_FILE, line_seq
from snapshot_sidecar.blob_targets import BLOCK_BYTES, LogTarget
from snapshot_sidecar.spool_reader import SpoolReader

__all__ = ["WINDOW", "Resume", "resume_point"]

WINDOW = BLOCK_BYTES  # how much of the blob's end is read: one block


@dataclass(frozen=True)
class Resume:
    """Where the log continues: spool bytes and lines already in the blob, last seq."""

    offset: int
    lines: int
    seq: int


def resume_point(
    reader: SpoolReader, name: str, target: LogTarget, *, batch: int, timeout: float
) -> Resume | None:
    """How much of job ``name``'s log the blob behind ``target`` already holds."""
    size = target.size
    start = max(0, size - WINDOW)
    pieces = target.read(start, size - start, timeout=timeout).split(b"\n")
    # The last piece is torn (or empty); the first is partial unless at 0.
    in_blob = set(pieces[(1 if start else 0) : -1])
    in_blob.discard(b"")
    found: Resume | None = None
    offset = lines = 0
    while True:
        chunk = reader.read_lines(name, LOG_FILE, offset, batch)
        if not chunk:
            return found
        data, pos = chunk.data, 0
        while pos < len(data):
            end = data.find(b"\n", pos)
            end = len(data) if end < 0 else end + 1
            line, pos = data[pos:end], end
            lines += 1
            if line.rstrip(b"\n") in in_blob:
                found = Resume(chunk.offset + end, lines, line_seq(line) or 0)
        offset = chunk.end
