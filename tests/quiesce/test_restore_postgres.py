"""The PostgreSQL proof: a CHECKPOINT before the freeze, the host clones the disk, and the
clone, restored, starts with crash recovery from that checkpoint and holds every commit
acknowledged before the first FIFREEZE.

Same real parts as the MariaDB proof (test_restore_mariadb.py). The redo replayed at
start-up is read from the restored server's own log ("redo starts at" / "redo done at")
and printed, with the quiescer on and, as a figure only, off.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from snapshot_runtime.inputs.workload_conf import WORKLOAD_CONF_ENV
from snapshot_runtime.job.records import JobReport
from snapshot_runtime.job.run import run_job
from tests.support.databases import Postgres, Writer, attached, combined_rate, pg_bin
from tests.support.host_service import Rig, host_settings
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.root]

WRITERS = 3


def _inserter(conn: Any) -> Callable[[int], None]:
    return lambda n: conn.execute("INSERT INTO t VALUES (%s)", (n,))


def _acks(writers: list[Writer]) -> int:
    return sum(len(w.acked) for w in writers)


def lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def controldata(datadir: str) -> dict[str, str]:
    out = subprocess.run(
        ["runuser", "-u", "postgres", "--", pg_bin("pg_controldata"), "-D", datadir],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)


def run(rig: Rig, settings: str) -> JobReport:
    return run_job(rig.ws.options(settings, include_mounts=(rig.disk.mountpoint,)))


@pytest.mark.parametrize("quiesce", [True, False], ids=["quiesced", "unquiesced"])
def test_a_restored_postgres_snapshot_recovers_every_commit_before_the_freeze(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiesce: bool
) -> None:
    db = Postgres(os.path.join(rig.disk.mountpoint, "pgdata"), str(tmp_path / "run"))
    with db.install().start():
        with db.connect() as conn:
            conn.execute("CREATE TABLE t (id INT PRIMARY KEY)")
        conns = [db.connect() for _ in range(WRITERS)]
        writers = [
            Writer(_inserter(c), first=j + 1, step=WRITERS).start() for j, c in enumerate(conns)
        ]
        if quiesce:
            path = tmp_path / "workload.conf"
            path.write_text(
                "[workload]\nworkload_name = postgres\n"
                f"credString = -U postgres -h {db.rundir} -p {db.port}\n"
            )
            os.chmod(path, 0o600)
            monkeypatch.setenv(WORKLOAD_CONF_ENV, str(path))
        else:
            monkeypatch.setenv(WORKLOAD_CONF_ENV, str(tmp_path / "absent.conf"))
        try:
            wait_until(lambda: _acks(writers) > 1500, timeout=60, what="writers warmed up")
            settings, _ = host_settings(rig.ws, luns=[0])
            report = run(rig, settings)
            after = _acks(writers)
            wait_until(lambda: _acks(writers) > after + 600, timeout=60, what="after the job")
        finally:
            for w in writers:
                w.stop()
            for c in conns:
                c.close()
    assert [e for w in writers for e in w.errors] == []
    acked = sorted((at, i) for w in writers for i, at in w.acked)
    freeze = report.freeze
    assert freeze is not None and freeze.first_freeze_at is not None
    if quiesce:
        assert (report.consistency, report.error_code) == ("application", None), report
        assert report.workload is not None and report.workload.held
        facts = report.workload.quiesced
        assert facts is not None and facts.log_position is not None
        assert facts.quiesced_at is not None and facts.quiesced_at < freeze.first_freeze_at
    else:
        assert report.workload is None

    (taken,) = rig.host.snapshots
    assert taken.clone_path is not None
    with attached(taken.clone_path) as mnt:
        datadir = os.path.join(mnt, "pgdata")
        carried = os.path.exists(os.path.join(datadir, "postmaster.pid"))
        if carried:
            # The live server's lock file: its pid may even be alive on this machine.
            os.unlink(os.path.join(datadir, "postmaster.pid"))
        control = controldata(datadir)
        copy = Postgres(datadir, str(tmp_path / "copy"))
        started = time.monotonic()
        with copy.start():
            startup = time.monotonic() - started
            with copy.connect() as conn:
                ids = {int(r[0]) for r in conn.execute("SELECT id FROM t").fetchall()}
                row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
                assert row is not None
                copy_lsn = row[0]
        log = copy.server_log()
    assert carried, "the clone was expected to carry the live server's postmaster.pid"
    missing = [i for at, i in acked if at < freeze.first_freeze_at and i not in ids]
    starts = re.search(r"redo starts at ([0-9A-F]+/[0-9A-F]+)", log)
    done = re.search(r"redo done at ([0-9A-F]+/[0-9A-F]+)", log)
    replayed = lsn(done.group(1)) - lsn(starts.group(1)) if starts and done else 0
    checkpoint = control["Latest checkpoint location"].strip()
    label = "quiesced" if quiesce else "unquiesced"
    print(
        f"\n[postgres {label}] {WRITERS} writers {combined_rate(writers):.0f} commits/s; "
        f"frozen window {freeze.window_seconds * 1000:.0f} ms; restored copy started in "
        f"{startup:.2f}s, redo replayed {replayed} bytes ({starts.group(1) if starts else '-'}"
        f" .. {done.group(1) if done else '-'}); {len(ids)} rows; "
        f"{len(missing)} acknowledged-before-freeze ids missing; copy checkpoint {checkpoint}"
    )
    if quiesce:
        assert missing == [], f"{len(missing)} acknowledged ids missing, first {missing[:5]}"
        assert facts.log_position is not None
        # The recorded position is at or before what the copy recovered to, and recovery
        # started from our CHECKPOINT (the copy's latest checkpoint is ours or earlier).
        assert lsn(facts.log_position) <= lsn(copy_lsn)
        assert lsn(checkpoint) <= lsn(facts.log_position)
