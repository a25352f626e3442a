"""`validate` for workload.conf: the driver, the credentials, the server, the privilege.

Each check is what a job's quiesce needs, tried without locking anything:
the session opens with the job's credentials, the server answers, and the
user holds the privilege the quiesce statement needs (MariaDB/MySQL: RELOAD
for BACKUP STAGE and FLUSH TABLES WITH READ LOCK; PostgreSQL: superuser or
``pg_checkpoint`` for CHECKPOINT). Messages carry the server's words, never a
credential.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import psycopg
import pymysql

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.inputs.workload_conf import WorkloadConf
from snapshot_runtime.quiesce.mariadb import (
    backup_stage_supported,
    binlog_position,
    mariadb_connect,
)
from snapshot_runtime.quiesce.postgres import postgres_connect

__all__ = ["WorkloadCheck", "workload_checks"]


@dataclass(frozen=True)
class WorkloadCheck:
    name: str
    status: str  # "ok" | "warn" | "fail" | "info"
    detail: str
    error: ErrorCode | None = None


def workload_checks(conf: WorkloadConf) -> list[WorkloadCheck]:
    """The checks for ``conf``'s database (none for Oracle: the caller warns)."""
    option_file = conf.credentials.option_file
    if option_file and not os.access(option_file, os.R_OK):
        return [
            WorkloadCheck(
                "credentials",
                "fail",
                f"option file {option_file} is not readable",
                ErrorCode.WORKLOAD_AUTH_MISSING,
            )
        ]
    if conf.name in ("mariadb", "mysql"):
        return _mariadb(conf)
    if conf.name == "postgres":
        return _postgres(conf)
    return []


def _mariadb(conf: WorkloadConf) -> list[WorkloadCheck]:
    checks = [WorkloadCheck("driver", "ok", f"PyMySQL {pymysql.__version__}")]
    try:
        conn = mariadb_connect(conf)
    except pymysql.err.MySQLError as exc:
        reason = f"({exc.args[0]}) {exc.args[1]}" if len(exc.args) >= 2 else type(exc).__name__
        checks.append(WorkloadCheck("connect", "fail", reason, ErrorCode.WORKLOAD_CONNECTION))
        return checks
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION(), CURRENT_USER()")
            row = cur.fetchone()
            version, user = (str(row[0]), str(row[1])) if row else ("?", "?")
            stage = conf.name == "mariadb" and backup_stage_supported(version)
            method = "BACKUP STAGE BLOCK_COMMIT" if stage else "FLUSH TABLES WITH READ LOCK"
            checks.append(
                WorkloadCheck("server", "ok", f"{version} as {user}; quiesce by {method}")
            )
            cur.execute("SHOW GRANTS")
            grants = " ".join(str(r[0]) for r in cur.fetchall()).upper()
            if "ALL PRIVILEGES ON *.*" in grants or "RELOAD" in grants:
                checks.append(WorkloadCheck("privilege", "ok", f"{user} holds RELOAD"))
            else:
                checks.append(
                    WorkloadCheck(
                        "privilege",
                        "fail",
                        f"{user} lacks RELOAD (needed by {method})",
                        ErrorCode.WORKLOAD_QUIESCING_ERROR,
                    )
                )
            position, problem = binlog_position(cur)
            if position is None:
                checks.append(
                    WorkloadCheck("binlog", "warn", f"no position would be recorded: {problem}")
                )
            else:
                checks.append(WorkloadCheck("binlog", "ok", f"position readable ({position})"))
    except pymysql.err.MySQLError as exc:
        reason = f"({exc.args[0]}) {exc.args[1]}" if len(exc.args) >= 2 else type(exc).__name__
        checks.append(WorkloadCheck("server", "fail", reason, ErrorCode.WORKLOAD_CONNECTION))
    finally:
        with contextlib.suppress(pymysql.err.MySQLError):
            conn.close()
    return checks


def _postgres(conf: WorkloadConf) -> list[WorkloadCheck]:
    checks = [WorkloadCheck("driver", "ok", f"psycopg {psycopg.__version__}")]
    try:
        conn = postgres_connect(conf)
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        checks.append(WorkloadCheck("connect", "fail", first, ErrorCode.WORKLOAD_CONNECTION))
        return checks
    try:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_user, "
            "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR "
            # CASE: pg_checkpoint exists from PG 15 only; never evaluated before.
            "CASE WHEN current_setting('server_version_num')::int >= 150000 "
            "THEN pg_has_role(current_user, 'pg_checkpoint', 'MEMBER') ELSE false END"
        ).fetchone()
        version, user, allowed = (
            (str(row[0]), str(row[1]), bool(row[2])) if row else ("?", "?", False)
        )
        checks.append(WorkloadCheck("server", "ok", f"PostgreSQL {version} as {user}"))
        checks.append(
            WorkloadCheck("privilege", "ok", f"{user} may CHECKPOINT")
            if allowed
            else WorkloadCheck(
                "privilege",
                "fail",
                f"{user} may not CHECKPOINT (superuser or pg_checkpoint needed)",
                ErrorCode.WORKLOAD_QUIESCING_ERROR,
            )
        )
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        checks.append(WorkloadCheck("server", "fail", first, ErrorCode.WORKLOAD_CONNECTION))
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.close()
    return checks
