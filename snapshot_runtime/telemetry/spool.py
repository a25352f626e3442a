"""The spool: the runtime's durable hand-off to the sidecar (docs/spool.md, the contract).

Layout under the spool root: ``jobs/<job-dir>/{record.json, log.jsonl,
spans.jsonl, credentials.sealed, lock}`` and ``watchdog/``; the names, the
schema and the line rules are ``spool_schema``'s. This module owns the
writer's file mechanics; what goes into a record is ``record.py``'s business,
completing a dead job's record ``spool_recovery``'s.

Contracts:

* Appends are one ``write(2)`` of whole lines on an ``O_APPEND`` fd opened
  before the freeze: inside the frozen window an append is a write to a
  never-frozen filesystem (tmpfs) and nothing else (no open, no rename).
* ``record.json`` and ``credentials.sealed`` are replaced atomically (a
  temporary file in the job directory, then ``rename``).
* The spool is bounded (``max_bytes``, for the whole spool, measured when a
  job opens): a log line or span that would cross it is dropped and counted;
  the record is always written.
* A live job holds ``flock(LOCK_EX)`` on its ``lock`` file; the kernel drops it
  when the process dies (SIGKILL included). The file is removed once the
  job's record is complete. ``spool_recovery.recover_interrupted`` uses
  both: no lock file, nothing to recover (cheap, whatever the number of
  finished jobs); a lock file it can lock, a dead job.
* Nothing here raises for an I/O failure while a job runs: failures are
  counted (``errors``) and reported in the record. Files 0600, dirs 0700.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from snapshot_runtime.core import defaults
from snapshot_runtime.core.atomic_file import write_atomic
from snapshot_runtime.telemetry.sealing import parse_versions
from snapshot_runtime.telemetry.spool_schema import (
    JOBS_DIR,
    LOCK_FILE,
    LOG_FILE,
    MAX_RECORD_BYTES,
    RECORD_FILE,
    SEALED_FILE,
    SIDECAR_PUB_FILE,
    SIDECAR_SEALING_FILE,
    SPANS_FILE,
    WATCHDOG_DIR,
    SpoolFormatError,
    complete_lines,
    job_dir_name,
    parse_record,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "JobSpool",
    "Spool",
    "find_job",
    "parse_public_key",
    "read_lines",
    "read_record",
    "record_bytes",
]

DEFAULT_MAX_BYTES = defaults.DEFAULT_SPOOL_MAX_BYTES
_MAX_DIR_SUFFIX = 1000


def parse_public_key(data: bytes) -> bytes | None:
    """The 32 raw bytes of ``sidecar.pub``: raw, base64 text or a PEM public key."""
    if len(data) == 32:
        return data
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric.x25519 import (  # noqa: PLC0415
            X25519PublicKey,
        )

        try:
            key = serialization.load_pem_public_key(text)
        except ValueError:
            return None
        if not isinstance(key, X25519PublicKey):
            return None
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def _dir_size(root: str) -> int:
    total = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


@dataclass
class _Budget:
    remaining: int


class Spool:
    """The spool root. Creating it makes ``jobs/`` and ``watchdog/`` (0700)."""

    def __init__(self, root: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.root = root
        self.max_bytes = max_bytes
        self.jobs_dir = os.path.join(root, JOBS_DIR)
        self.watchdog_dir = os.path.join(root, WATCHDOG_DIR)
        for directory in (root, self.jobs_dir, self.watchdog_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)

    def usage(self) -> int:
        return _dir_size(self.root)

    def sidecar_public_key(self) -> bytes | None:
        """The sidecar's key, or None when no sidecar is installed (or the file is bad)."""
        try:
            with open(os.path.join(self.root, SIDECAR_PUB_FILE), "rb") as fh:
                data = fh.read(4096)
        except OSError:
            return None
        return parse_public_key(data)

    def sidecar_sealing_versions(self) -> frozenset[int]:
        """The credentials.sealed versions the sidecar opens (empty: a sidecar before 2)."""
        try:
            with open(os.path.join(self.root, SIDECAR_SEALING_FILE), "rb") as fh:
                return parse_versions(fh.read(4096))
        except OSError:
            return frozenset()

    def open_job(self, task_id: str) -> JobSpool:
        """Create and lock a new job directory (``<name>``, else ``<name>~2``, ``~3``...)."""
        base = job_dir_name(task_id) if task_id else f"unknown-{os.getpid()}-{time.time_ns()}"
        budget = _Budget(max(0, self.max_bytes - self.usage()))
        for n in range(1, _MAX_DIR_SUFFIX + 1):
            name = base if n == 1 else f"{base}~{n}"
            path = os.path.join(self.jobs_dir, name)
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            return JobSpool(path, budget=budget)
        raise OSError(f"no free job directory for {base} in {self.jobs_dir}")


@dataclass
class JobSpool:
    """One job's directory: appends, the record, the sealed credentials, the lock."""

    path: str
    budget: _Budget
    log_lines: int = 0
    log_bytes: int = 0
    spans: int = 0
    dropped_log_lines: int = 0
    dropped_spans: int = 0
    errors: list[str] = field(default_factory=list)
    _log_fd: int = -1
    _span_fd: int = -1
    _lock_fd: int = -1

    def __post_init__(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._lock_fd = os.open(os.path.join(self.path, LOCK_FILE), flags, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._log_fd = os.open(os.path.join(self.path, LOG_FILE), flags, 0o600)
        self._span_fd = os.open(os.path.join(self.path, SPANS_FILE), flags, 0o600)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def _append(self, fd: int, data: bytes) -> bool:
        if len(data) > self.budget.remaining:
            return False
        try:
            written = os.write(fd, data)
        except OSError as exc:
            self._error(f"append: {exc.strerror or exc}")
            return False
        self.budget.remaining -= written
        if written != len(data):  # ENOSPC midway: a torn line; readers skip it
            self._error(f"short append ({written} of {len(data)} bytes)")
            return False
        return True

    def _error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)

    def append_log(self, line: str) -> bool:
        """Append one log line (``line`` ends with a newline); False if dropped."""
        if self._log_fd < 0:
            self.dropped_log_lines += 1
            return False
        data = line.encode("utf-8")
        if self._append(self._log_fd, data):
            self.log_lines += 1
            self.log_bytes += len(data)
            return True
        self.dropped_log_lines += 1
        return False

    def append_spans(self, docs: list[dict[str, Any]]) -> None:
        """Append spans, one line each; those over the cap are dropped and counted."""
        for doc in docs:
            data = (json.dumps(doc, separators=(",", ":"), default=str) + "\n").encode()
            if self._span_fd >= 0 and self._append(self._span_fd, data):
                self.spans += 1
            else:
                self.dropped_spans += 1

    def write_record(self, doc: dict[str, Any]) -> bool:
        """Replace record.json; fsync only the complete one (a tmpfs ignores it anyway)."""
        try:
            write_atomic(
                os.path.join(self.path, RECORD_FILE),
                record_bytes(doc),
                fsync=bool(doc.get("complete")),
            )
        except OSError as exc:
            self._error(f"record: {exc.strerror or exc}")
            return False
        return True

    def write_sealed(self, sealed: str) -> bool:
        try:
            write_atomic(os.path.join(self.path, SEALED_FILE), sealed.encode("ascii"))
        except OSError as exc:
            self._error(f"credentials.sealed: {exc.strerror or exc}")
            return False
        return True

    def close(self) -> None:
        """Close the appenders and release the lock (the job is over: its record is complete)."""
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.path, LOCK_FILE))
        for attr in ("_log_fd", "_span_fd", "_lock_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, -1)


def record_bytes(doc: dict[str, Any]) -> bytes:
    """A record as the one line record.json holds."""
    return (json.dumps(doc, separators=(",", ":"), default=str) + "\n").encode("utf-8")


def read_record(job_dir: str) -> dict[str, Any] | None:
    """The record of a job directory, or None (absent, unreadable, unknown schema)."""
    try:
        with open(os.path.join(job_dir, RECORD_FILE), "rb") as fh:
            return parse_record(fh.read(MAX_RECORD_BYTES + 1))
    except (OSError, SpoolFormatError):
        return None


def read_lines(path: str) -> list[bytes]:
    """The whole lines of a spool file (none when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return complete_lines(fh.read())
    except OSError:
        return []


def find_job(root: str, task_id: str) -> str | None:
    """The newest job directory of ``task_id`` in the spool, or None."""
    jobs = os.path.join(root, JOBS_DIR)
    base = job_dir_name(task_id)
    try:
        names = [n for n in os.listdir(jobs) if n == base or n.startswith(base + "~")]
    except OSError:
        return None
    best: tuple[float, str] | None = None
    for name in names:
        record = read_record(os.path.join(jobs, name))
        if record is None or record.get("task_id") != task_id:
            continue
        key = (float(record.get("started_at") or 0.0), name)
        if best is None or key > best:
            best = key
    return os.path.join(jobs, best[1]) if best else None
