"""MariaDB/MySQL: BACKUP STAGE BLOCK_COMMIT (MariaDB >= 10.4) or FLUSH TABLES WITH
READ LOCK, held by one PyMySQL session the runtime owns (docs/workloads.md).

``workload_name=mariadb`` on a server >= 10.4 uses ``BACKUP STAGE START`` then
``BACKUP STAGE BLOCK_COMMIT`` (the documented recipe for storage snapshots:
commits and binlog writes blocked, system/log/statistics tables flushed);
anything else (``mysql``, older MariaDB) uses ``FLUSH TABLES WITH READ LOCK``.
No ``read_only=ON``: global state that would outlive a crash. The binlog
position is read while commits are blocked, before the freeze.

Deadlines, all set before the freeze, none needing I/O inside it:
``lock_wait_timeout`` bounds the wait for the lock (a long query cannot stall
the server for more); the session's ``wait_timeout`` is the hold deadline: an
idle session is dropped by the server after it, and the lock with it. The
release notices a dropped session (or a hold longer than the deadline) and
reports ``FailedWorkloadQuiescingTimeout``.
"""

from __future__ import annotations

import contextlib
import getpass
import time
from typing import Any

import pymysql

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.inputs.workload_conf import WorkloadConf
from snapshot_runtime.quiesce.quiescer import QuiesceError, QuiesceFacts, ReleaseFacts

__all__ = [
    "DEFAULT_SOCKET",
    "MariaDbQuiescer",
    "backup_stage_supported",
    "binlog_position",
    "mariadb_connect",
]

DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"
_CONNECT_TIMEOUT = 10
_LOCK_WAIT_SECONDS = 30


def mariadb_connect(conf: WorkloadConf) -> pymysql.connections.Connection[Any]:
    """A session with ``conf``'s credentials; defaults: socket auth as this user."""
    cred = conf.credentials
    kwargs: dict[str, Any] = {
        "user": cred.user or getpass.getuser(),
        "connect_timeout": _CONNECT_TIMEOUT,
        "autocommit": True,
    }
    if cred.password is not None:
        kwargs["password"] = cred.password
    if cred.option_file:
        kwargs["read_default_file"] = cred.option_file
        if cred.user is None:
            del kwargs["user"]  # the option file's [client] user
    if cred.host and not cred.socket:
        kwargs["host"] = cred.host
        kwargs["port"] = cred.port or 3306
    elif cred.socket or not cred.option_file:
        kwargs["unix_socket"] = cred.socket or DEFAULT_SOCKET
    if cred.database:
        kwargs["database"] = cred.database
    return pymysql.connect(**kwargs)


def backup_stage_supported(version: str) -> bool:
    """MariaDB >= 10.4 (``SELECT VERSION()``: ``10.11.19-MariaDB-...``)."""
    if "mariadb" not in version.lower():
        return False
    parts = version.split("-", 1)[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= (10, 4)
    except (IndexError, ValueError):
        return False


class MariaDbQuiescer:
    """Quiesce/hold/release in one session (see the module doc)."""

    def __init__(self, conf: WorkloadConf, *, lock_wait_seconds: int = _LOCK_WAIT_SECONDS) -> None:
        self.conf = conf
        self.lock_wait_seconds = lock_wait_seconds
        self._conn: pymysql.connections.Connection[Any] | None = None
        self._method: str | None = None
        self._blocked_at: float | None = None
        self._held = False  # the block statement(s) succeeded

    @property
    def workload(self) -> str:
        return self.conf.name or "mariadb"

    def quiesce(self) -> QuiesceFacts:
        started = time.monotonic()
        try:
            conn = mariadb_connect(self.conf)
        except pymysql.err.MySQLError as exc:
            raise QuiesceError(ErrorCode.WORKLOAD_CONNECTION, _describe("connect", exc)) from None
        self._conn = conn
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                row = cur.fetchone()
                version = str(row[0]) if row else ""
                # Server-side deadlines, set before anything is locked.
                cur.execute("SET SESSION lock_wait_timeout = %s", (self.lock_wait_seconds,))
                cur.execute("SET SESSION wait_timeout = %s", (self.conf.hold_seconds,))
                use_stage = self.conf.name == "mariadb" and backup_stage_supported(version)
                self._blocked_at = time.monotonic()
                if use_stage:
                    self._method = "backup_stage"
                    cur.execute("BACKUP STAGE START")
                    cur.execute("BACKUP STAGE BLOCK_COMMIT")
                else:
                    self._method = "read_lock"
                    cur.execute("FLUSH TABLES WITH READ LOCK")
                self._held = True
                # Commits are blocked: this position is the snapshot's.
                position, position_problem = binlog_position(cur)
        except pymysql.err.MySQLError as exc:
            raise QuiesceError(
                ErrorCode.WORKLOAD_QUIESCING_ERROR, _describe("quiesce", exc)
            ) from None
        quiesced_at = time.monotonic()
        return QuiesceFacts(
            workload=self.workload,
            method=self._method,
            blocks_commits=True,
            log_position=position,
            server_version=version,
            quiesce_seconds=quiesced_at - started,
            hold_deadline_seconds=self.conf.hold_seconds,
            blocked_at=self._blocked_at,
            session_id=conn.thread_id(),
            quiesced_at=quiesced_at,
            note=position_problem and f"no binlog position recorded: {position_problem}",
        )

    def release(self) -> ReleaseFacts:
        conn, self._conn = self._conn, None
        blocked_at = self._blocked_at
        held = time.monotonic() - blocked_at if blocked_at is not None else 0.0
        if conn is None or not self._held:
            # Nothing was held (a quiesce that failed): close what is open, if anything.
            if conn is not None:
                with contextlib.suppress(pymysql.err.MySQLError):
                    conn.close()
            return ReleaseFacts(True, None, None, None, 0.0)
        self._held = False
        error: ErrorCode | None = None
        message: str | None = None
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "BACKUP STAGE END" if self._method == "backup_stage" else "UNLOCK TABLES"
                )
        except pymysql.err.MySQLError as exc:
            # The server dropped the session (wait_timeout: the hold deadline) or
            # died: the lock ended before this release, perhaps before the snapshot.
            error = ErrorCode.WORKLOAD_QUIESCING_TIMEOUT
            message = _describe("release", exc)
        finally:
            stall = time.monotonic() - blocked_at if blocked_at is not None else None
            # Closing a dropped session: nothing left to release.
            with contextlib.suppress(pymysql.err.MySQLError):
                conn.close()
        if error is None and held > self.conf.hold_seconds:
            error = ErrorCode.WORKLOAD_QUIESCING_TIMEOUT
            message = f"held {held:.1f}s, longer than the {self.conf.hold_seconds}s deadline"
        return ReleaseFacts(error is None, error, message, stall, held)


def binlog_position(cur: Any) -> tuple[str | None, str | None]:
    """(``file:position``, None), or (None, why not). Never fails the quiesce: the
    lock is what makes the copy consistent; the position is what documents it."""
    try:
        cur.execute("SHOW MASTER STATUS")
        status = cur.fetchone()
    except pymysql.err.MySQLError as exc:
        # MariaDB >= 10.5 needs BINLOG MONITOR (or SUPER) to read it.
        return None, _describe("binlog position", exc)
    if not status:
        return None, "binary log off"
    return f"{status[0]}:{status[1]}", None


def _describe(step: str, exc: pymysql.err.MySQLError) -> str:
    # The server's code and text only: PyMySQL never puts the password in them.
    args = exc.args
    if len(args) >= 2:
        return f"{step}: ({args[0]}) {args[1]}"
    return f"{step}: {type(exc).__name__}"
