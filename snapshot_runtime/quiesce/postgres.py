"""PostgreSQL: a CHECKPOINT just before the freeze, the WAL position recorded then.

What it promises (docs/workloads.md, said plainly): PostgreSQL has no
"quiesced files" state. The snapshot is an atomic filesystem snapshot taken
under fsfreeze; restored, it starts with ordinary crash recovery from the
last checkpoint, and every transaction committed before the freeze is
present. The CHECKPOINT shortens that recovery; it does not stop commits.
No backup mode: exclusive mode is gone in PG 15, and the non-exclusive one
needs a WAL archive on restore. The session (psycopg 3) is the runtime's; its
``idle_session_timeout`` (PG >= 14) ends it if the runtime stops answering.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import psycopg

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.inputs.workload_conf import WorkloadConf
from snapshot_runtime.quiesce.quiescer import QuiesceError, QuiesceFacts, ReleaseFacts

__all__ = ["DEFAULT_SOCKET_DIR", "PostgresQuiescer", "postgres_connect"]

DEFAULT_SOCKET_DIR = "/var/run/postgresql"
_CONNECT_TIMEOUT = 10
_STATEMENT_SECONDS = 60


def postgres_connect(conf: WorkloadConf) -> psycopg.Connection[Any]:
    """A session with ``conf``'s credentials; defaults: the local socket as ``postgres``."""
    cred = conf.credentials
    kwargs: dict[str, Any] = {
        "host": cred.socket or cred.host or DEFAULT_SOCKET_DIR,
        "user": cred.user or "postgres",
        "dbname": cred.database or "postgres",
        "connect_timeout": _CONNECT_TIMEOUT,
        "autocommit": True,
        "application_name": "snapshot-runtime",
    }
    if cred.port:
        kwargs["port"] = cred.port
    if cred.password is not None:
        kwargs["password"] = cred.password
    if cred.option_file:
        kwargs["passfile"] = cred.option_file
    return psycopg.connect(**kwargs)


class PostgresQuiescer:
    """CHECKPOINT + WAL position before the freeze; the release closes the session."""

    def __init__(self, conf: WorkloadConf) -> None:
        self.conf = conf
        self._conn: psycopg.Connection[Any] | None = None
        self._started: float | None = None

    @property
    def workload(self) -> str:
        return "postgres"

    def quiesce(self) -> QuiesceFacts:
        started = self._started = time.monotonic()
        try:
            conn = postgres_connect(self.conf)
        except psycopg.Error as exc:
            raise QuiesceError(ErrorCode.WORKLOAD_CONNECTION, _describe("connect", exc)) from None
        self._conn = conn
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_setting('server_version')")
                row = cur.fetchone()
                version = str(row[0]) if row else ""
                cur.execute(f"SET statement_timeout = '{_STATEMENT_SECONDS}s'")
                cur.execute(f"SET idle_session_timeout = '{self.conf.hold_seconds}s'")
                cur.execute("CHECKPOINT")
                cur.execute("SELECT pg_current_wal_lsn()::text")
                row = cur.fetchone()
                position = str(row[0]) if row else None
        except psycopg.Error as exc:
            raise QuiesceError(
                ErrorCode.WORKLOAD_QUIESCING_ERROR, _describe("checkpoint", exc)
            ) from None
        quiesced_at = time.monotonic()
        return QuiesceFacts(
            workload="postgres",
            method="checkpoint",
            blocks_commits=False,
            log_position=position,
            server_version=version,
            quiesce_seconds=quiesced_at - started,
            hold_deadline_seconds=self.conf.hold_seconds,
            blocked_at=None,
            session_id=conn.info.backend_pid,
            quiesced_at=quiesced_at,
        )

    def release(self) -> ReleaseFacts:
        conn, self._conn = self._conn, None
        held = time.monotonic() - self._started if self._started is not None else 0.0
        if conn is not None:
            # Nothing is held server-side: a lost session loses nothing.
            with contextlib.suppress(psycopg.Error):
                conn.close()
        return ReleaseFacts(True, None, None, None, held)


def _describe(step: str, exc: psycopg.Error) -> str:
    diag = getattr(exc, "sqlstate", None)
    # The server's message only (libpq never echoes the password).
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{step}: ({diag or '-'}) {first}"
