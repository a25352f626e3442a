"""Recovery replay: completing the records of jobs whose runtime died (docs/spool.md).

``recover_interrupted`` is run by the next ``snapshot-runtime run`` (first
thing) and by ``snapshot-runtime recover``. For each job directory with an
incomplete record and a free ``lock`` (the kernel dropped a dead runtime's
flock), it appends the spool's log lines the runtime's local log lacks, in
``seq`` order, then rewrites the record complete and ``interrupted``.
Never raises for I/O; nothing here runs while a job is frozen.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from snapshot_runtime.core.atomic_file import write_atomic
from snapshot_runtime.telemetry.spool import read_lines, read_record, record_bytes
from snapshot_runtime.telemetry.spool_schema import (
    JOBS_DIR,
    LOCK_FILE,
    LOG_FILE,
    RECORD_FILE,
    complete_lines,
    line_seq,
)

__all__ = ["Recovered", "recover_interrupted"]

_REPLAY_TAIL_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Recovered:
    """One interrupted job found by ``recover_interrupted``."""

    job_dir: str
    task_id: str
    log_file: str | None
    lines_in_spool: int
    lines_replayed: int
    note: str | None


@contextlib.contextmanager
def _dead_owner(job_dir: str) -> Iterator[bool]:
    """True (while held) when the job's lock file exists and its owner is gone."""
    try:
        fd = os.open(os.path.join(job_dir, LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        yield False  # no lock file: a finished job (or not a job directory)
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _tail(path: str, limit: int) -> bytes:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(0, size - limit))
        return fh.read()


def _replay(log_file: str, lines: list[bytes]) -> tuple[int, str | None]:
    """Append to ``log_file`` the spool lines it lacks; (count, note)."""
    if not os.path.isdir(os.path.dirname(log_file) or "."):
        return 0, "log file directory is gone"
    try:
        present = set(complete_lines(_tail(log_file, _REPLAY_TAIL_BYTES)))
    except FileNotFoundError:
        present = set()
    except OSError as exc:
        return 0, f"cannot read the log file: {exc.strerror}"
    missing = [line for line in lines if line not in present]
    if not missing:
        return 0, None
    try:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        return 0, f"cannot open the log file: {exc.strerror}"
    try:
        with contextlib.suppress(OSError):
            # A torn last line in the file would glue onto our first line.
            if os.fstat(fd).st_size and not _tail(log_file, 1).endswith(b"\n"):
                os.write(fd, b"\n")
        os.write(fd, b"".join(line + b"\n" for line in missing))
    except OSError as exc:
        return 0, f"cannot append to the log file: {exc.strerror}"
    finally:
        os.close(fd)
    return len(missing), None


def recover_interrupted(root: str, *, replay: bool = True) -> list[Recovered]:
    """Close the records of jobs that died before completing (docs/spool.md, "Recovery").

    A job directory whose record says ``complete: false`` and whose lock is
    free belongs to a runtime that died (a SIGKILL while frozen, an OOM
    kill). For each: the spool's log lines that never reached the job's local
    log file (``record.log_file``) are appended to it in ``seq`` order
    (``replay``), then the record is completed with ``interrupted: true``,
    ``outcome: "failed"`` and ``error: "InternalError"``. Never raises for I/O.
    """
    jobs = os.path.join(root, JOBS_DIR)
    try:
        names = sorted(os.listdir(jobs))
    except OSError:
        return []
    found: list[Recovered] = []
    for name in names:
        job_dir = os.path.join(jobs, name)
        with _dead_owner(job_dir) as dead:
            if not dead:
                continue
            record = read_record(job_dir)
            if record is None or record.get("complete"):
                continue
            lines = read_lines(os.path.join(job_dir, LOG_FILE))
            log_file = record.get("log_file")
            replayed, note = 0, None
            if replay and isinstance(log_file, str) and log_file:
                replayed, note = _replay(log_file, _by_seq(lines))
            now = time.time()
            record.update(
                complete=True,
                interrupted=True,
                outcome="failed",
                error=record.get("error") or "InternalError",
                updated_at=now,
                ended_at=record.get("ended_at") or now,
                recovered={"at": now, "lines_replayed": replayed, "note": note},
            )
            logs = record.get("logs") if isinstance(record.get("logs"), dict) else {}
            assert isinstance(logs, dict)
            logs["lines"] = len(lines)
            record["logs"] = logs
            with contextlib.suppress(OSError):
                write_atomic(os.path.join(job_dir, RECORD_FILE), record_bytes(record))
                os.unlink(os.path.join(job_dir, LOCK_FILE))
            found.append(
                Recovered(
                    job_dir=job_dir,
                    task_id=str(record.get("task_id") or ""),
                    log_file=log_file if isinstance(log_file, str) else None,
                    lines_in_spool=len(lines),
                    lines_replayed=replayed,
                    note=note,
                )
            )
    return found


def _by_seq(lines: list[bytes]) -> list[bytes]:
    return sorted(lines, key=lambda line: line_seq(line) or 0)
