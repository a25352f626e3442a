"""The quiescers against real servers: Debian's mariadbd and PostgreSQL, private instances.

Proves, on MariaDB: commits stop at the quiesce and resume at the release (one
session, BACKUP STAGE or FTWRL); the binlog does not move while held; a
SIGKILLed holder's lock ends with its session; the server-side hold deadline
(wait_timeout) releases a forgotten lock and the release then reports 510; a
user without RELOAD fails with 509 and no password in the message. On
PostgreSQL: a real CHECKPOINT, its WAL position recorded, commits never blocked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.inputs.workload_conf import DbCredentials, WorkloadConf
from snapshot_runtime.job.preflight import preflight
from snapshot_runtime.quiesce.mariadb import MariaDbQuiescer
from snapshot_runtime.quiesce.postgres import PostgresQuiescer
from snapshot_runtime.quiesce.quiescer import QuiesceError
from tests.support.databases import MariaDb, Postgres, Writer
from tests.support.requirements import require_root
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.root]


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDb]:
    require_root()
    base = tmp_path_factory.mktemp("mariadb")
    with MariaDb(str(base / "data"), str(base / "run")).install().start() as db:
        with db.connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE w")
            cur.execute("CREATE TABLE w.t (id INT PRIMARY KEY, at DOUBLE) ENGINE=InnoDB")
        yield db


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    require_root()
    base = tmp_path_factory.mktemp("postgres")
    with Postgres(str(base / "data"), str(base / "run")).install().start() as db:
        with db.connect() as conn:
            conn.execute("CREATE TABLE t (id INT PRIMARY KEY)")
        yield db


def conf_for(db: MariaDb, name: str = "mariadb", hold: int = 90, **cred: object) -> WorkloadConf:
    creds = {"user": "root", "socket": db.socket, **cred}
    return WorkloadConf(name=name, hold_seconds=hold, credentials=DbCredentials(**creds))  # type: ignore[arg-type]


def mariadb_writer(db: MariaDb, table: str) -> Writer:
    conn = db.connect()
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE IF NOT EXISTS w.{table} (id INT PRIMARY KEY) ENGINE=InnoDB")
    return Writer(lambda n: cur.execute(f"INSERT INTO w.{table} VALUES (%s)", (n,)))


def master_status(db: MariaDb) -> str:
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
        assert row is not None
        return f"{row[0]}:{row[1]}"


def session_alive(db: MariaDb, session_id: int | None) -> bool:
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (session_id,)
        )
        row = cur.fetchone()
        return bool(row and row[0])


@pytest.mark.parametrize(("name", "method"), [("mariadb", "backup_stage"), ("mysql", "read_lock")])
def test_commits_stop_at_the_quiesce_and_resume_at_the_release(
    mariadb: MariaDb, name: str, method: str
) -> None:
    writer = mariadb_writer(mariadb, f"blk_{name}").start()
    try:
        wait_until(lambda: len(writer.acked) > 200, timeout=30, what="writer running")
        quiescer = MariaDbQuiescer(conf_for(mariadb, name))
        facts = quiescer.quiesce()
        assert facts.method == method and facts.blocks_commits
        # At most the commit in flight when the lock arrived is acknowledged after it.
        settle = len(writer.acked)
        assert writer.acks_within(0.5) <= 1
        blocked = len(writer.acked)
        assert blocked - settle <= 1
        assert writer.acks_within(1.0) == 0, "a commit was acknowledged while held"
        # The binlog does not move while commits are blocked: the recorded position is the copy's.
        assert master_status(mariadb) == facts.log_position
        released = quiescer.release()
        assert released.ok and released.error is None
        assert released.stall_seconds is not None and released.stall_seconds >= 1.0
        wait_until(lambda: len(writer.acked) > blocked + 50, timeout=30, what="commits resume")
    finally:
        writer.stop()
    assert writer.errors == []


_HOLDER = """
import sys
from snapshot_runtime.inputs.workload_conf import DbCredentials, WorkloadConf
from snapshot_runtime.job.preflight import preflight
from snapshot_runtime.quiesce.mariadb import MariaDbQuiescer
q = MariaDbQuiescer(WorkloadConf(name="mariadb", hold_seconds=600,
    credentials=DbCredentials(user="root", socket=sys.argv[1])))
q.quiesce()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_sigkilled_holder_releases_the_lock_with_its_session(mariadb: MariaDb) -> None:
    writer = mariadb_writer(mariadb, "killed")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, mariadb.socket],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        writer.start()
        assert writer.acks_within(1.0) == 0, "the holder did not block commits"
        killed_at = time.monotonic()
        holder.kill()
        holder.wait(timeout=30)
        wait_until(lambda: len(writer.acked) > 10, timeout=30, what="commits after SIGKILL")
        assert writer.acked[0][1] - killed_at < 5.0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)
        writer.stop()
    assert writer.errors == []


def test_the_server_enforces_the_hold_deadline_and_the_release_reports_it(
    mariadb: MariaDb,
) -> None:
    writer = mariadb_writer(mariadb, "deadline")
    quiescer = MariaDbQuiescer(conf_for(mariadb, hold=2))
    facts = quiescer.quiesce()
    writer.start()
    try:
        # No client I/O at all: the server drops the idle session after wait_timeout.
        wait_until(lambda: len(writer.acked) > 10, timeout=60, what="server-side deadline")
        released = quiescer.release()
    finally:
        writer.stop()
    wait_until(
        lambda: not session_alive(mariadb, facts.session_id),
        timeout=30,
        what="the dropped session's clean-up",
    )
    assert not released.ok
    assert released.error is ErrorCode.WORKLOAD_QUIESCING_TIMEOUT
    assert released.held_seconds >= 2.0


def test_a_user_without_reload_fails_with_509_and_no_password(mariadb: MariaDb) -> None:
    password = "pw-SECRET-4711"
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE USER IF NOT EXISTS 'weak'@'localhost' IDENTIFIED BY %s", (password,))
        cur.execute("GRANT SELECT ON *.* TO 'weak'@'localhost'")
    quiescer = MariaDbQuiescer(conf_for(mariadb, user="weak", password=password))
    with pytest.raises(QuiesceError) as raised:
        quiescer.quiesce()
    assert raised.value.code is ErrorCode.WORKLOAD_QUIESCING_ERROR
    assert password not in raised.value.message and password not in str(raised.value)
    assert "RELOAD" in raised.value.message
    assert quiescer.release().ok  # closes the half-open session; nothing was held
    bad = MariaDbQuiescer(conf_for(mariadb, user="weak", password="wrong-" + password))
    with pytest.raises(QuiesceError) as refused:
        bad.quiesce()
    assert refused.value.code is ErrorCode.WORKLOAD_CONNECTION
    assert password not in refused.value.message


def test_postgres_checkpoints_records_the_wal_position_and_never_blocks(
    postgres: Postgres,
) -> None:
    with postgres.connect() as conn:
        row = conn.execute("SELECT checkpoint_lsn::text FROM pg_control_checkpoint()").fetchone()
        assert row is not None
        before = row[0]
    wconn = postgres.connect()
    writer = Writer(lambda n: wconn.execute("INSERT INTO t VALUES (%s)", (n,))).start()
    try:
        wait_until(lambda: len(writer.acked) > 100, timeout=30, what="writer running")
        conf = WorkloadConf(
            name="postgres",
            credentials=DbCredentials(user="postgres", socket=postgres.rundir, port=postgres.port),
        )
        quiescer = PostgresQuiescer(conf)
        facts = quiescer.quiesce()
        assert facts.method == "checkpoint" and not facts.blocks_commits
        assert facts.log_position is not None
        held_from = len(writer.acked)
        wait_until(lambda: len(writer.acked) > held_from + 100, timeout=30, what="no stall")
        with postgres.connect() as conn:
            row = conn.execute(
                "SELECT checkpoint_lsn::text, checkpoint_lsn > %s::pg_lsn, "
                "%s::pg_lsn >= checkpoint_lsn FROM pg_control_checkpoint()",
                (before, facts.log_position),
            ).fetchone()
        assert row is not None
        assert row[1], "no new checkpoint"
        assert row[2], "the recorded position precedes the checkpoint"
        assert quiescer.release().ok
    finally:
        writer.stop()
        wconn.close()
    assert writer.errors == []


def _workload_checks(tmp_path: Path, body: str) -> list[tuple[str, str, str | None]]:
    path = tmp_path / "workload.conf"
    path.write_text("[workload]\n" + body)
    os.chmod(path, 0o600)
    report = preflight(workload_conf_path=str(path), include_mounts=("/",))
    return [
        (c.name, c.status, c.error.value if c.error else None)
        for c in report.checks
        if c.name.startswith("workload")
    ]


def test_validate_checks_driver_credentials_server_and_privilege(
    mariadb: MariaDb, postgres: Postgres, tmp_path: Path
) -> None:
    ok = _workload_checks(
        tmp_path, f"workload_name = mariadb\ncredString = -u root -S {mariadb.socket}\n"
    )
    assert ("workload driver", "ok", None) in ok
    assert ("workload server", "ok", None) in ok
    assert ("workload privilege", "ok", None) in ok
    assert all(status != "fail" for _, status, _ in ok)
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE USER IF NOT EXISTS 'nosel'@'localhost' IDENTIFIED BY 'x-SECRET-1'")
    weak = _workload_checks(
        tmp_path,
        f"workload_name = mariadb\ncredString = -u nosel -px-SECRET-1 -S {mariadb.socket}\n",
    )
    assert ("workload privilege", "fail", "FailedWorkloadQuiescingError") in weak
    wrong = _workload_checks(
        tmp_path, f"workload_name = mysql\ncredString = -u nosel -pwrong -S {mariadb.socket}\n"
    )
    assert ("workload connect", "fail", "FailedWorkloadConnectionError") in wrong
    pg = _workload_checks(
        tmp_path,
        f"workload_name = postgres\ncredString = -U postgres -h {postgres.rundir} "
        f"-p {postgres.port}\n",
    )
    assert ("workload privilege", "ok", None) in pg
    oracle = _workload_checks(tmp_path, "workload_name = oracle\n")
    assert ("workload", "warn", "WorkloadUnsupported") in oracle
