"""The MariaDB proof: a job quiesces a live, busy server, the host clones its disk, and
the clone, restored, starts and holds exactly what the quiesce promised.

Real parts only: the data directory is on a loop ext4 whose image sits on an XFS
(reflink) loop filesystem; the host-service emulator clones the image when
dosnapshot arrives (inside the frozen window); a writer commits numbered rows
the whole time and logs each acknowledgement's time. After the job the clone is
attached read-write and a second mariadbd starts on it (the copy carries the
live server's pid file: removed first, as an operator restoring would).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from snapshot_sidecar.ingest import apply_record
from snapshot_sidecar.metrics import MetricValues
from snapshot_sidecar.spool_reader import JobRecord

from snapshot_runtime.inputs.workload_conf import WORKLOAD_CONF_ENV
from snapshot_runtime.job.records import JobReport
from snapshot_runtime.job.run import run_job
from tests.support.databases import MariaDb, Writer, attached, combined_rate
from tests.support.host_service import Rig, host_settings
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.root]

WRITERS = 3


def _inserter(conn: Any) -> Callable[[int], None]:
    cur = conn.cursor()
    return lambda n: cur.execute("INSERT INTO w.t VALUES (%s)", (n,))


def _acks(writers: list[Writer]) -> int:
    return sum(len(w.acked) for w in writers)


def workload_conf(tmp_path: Path, body: str) -> str:
    path = tmp_path / "workload.conf"
    path.write_text(body)
    os.chmod(path, 0o600)
    return str(path)


def run(rig: Rig, settings: str, exporter: InMemorySpanExporter | None = None) -> JobReport:
    return run_job(
        rig.ws.options(settings, include_mounts=(rig.disk.mountpoint,)), span_exporter=exporter
    )


def assert_dba_facts(rig: Rig, report: JobReport, task_id: str, name: str) -> None:
    """The stall, the binlog position and the workload reach the record, the status
    telemetry and the sidecar's histogram (one observation under the job's workload)."""
    facts = report.workload.quiesced if report.workload else None
    assert facts is not None and report.spool_job_dir is not None
    record = json.loads((Path(report.spool_job_dir) / "record.json").read_text())
    workload = record["workload"]
    assert (workload["name"], workload["held"], workload["log_position"]) == (
        name,
        True,
        facts.log_position,
    )
    assert workload["write_stall_seconds"] > 0
    doc = json.loads(rig.ws.status_file(task_id).read_text())
    status = json.loads(doc[0]["status"]["substatus"][0]["name"])[0]["status"]
    data = {e["Key"]: e["Value"] for e in status["telemetryData"]}
    assert data["workloadName"] == name and data["workloadQuiesced"] == "True"
    assert data["workloadLogPosition"] == facts.log_position
    assert float(data["workloadWriteStallSeconds"]) == workload["write_stall_seconds"]
    values = MetricValues()
    apply_record(values, JobRecord.parse(record))
    hist = values.histograms["vmsnap_workload_write_stall_seconds"][()]  # no workload label
    assert sum(hist.counts) == 1 and hist.sum == workload["write_stall_seconds"]


def restored_rows(clone: str, run_dir: str) -> tuple[set[int], list[tuple[Any, ...]], bool, str]:
    """Start a second server on the clone: (ids, binlog events of binlog.000001,
    whether a pid file was carried over, the server's error log)."""
    with attached(clone) as mnt:
        datadir = os.path.join(mnt, "mysql")
        pid_file = os.path.join(datadir, "mariadbd.pid")
        carried = os.path.exists(pid_file)
        if carried:
            os.unlink(pid_file)  # the live server's pid: meaningless on this copy
        with MariaDb(datadir, run_dir).start() as copy:
            with copy.connect() as conn, conn.cursor() as cur:
                cur.execute("SELECT id FROM w.t")
                ids = {int(r[0]) for r in cur.fetchall()}
                cur.execute("SHOW BINLOG EVENTS IN 'binlog.000001'")
                events = list(cur.fetchall())
            log = copy.error_log()
    return ids, events, carried, log


@pytest.mark.parametrize("name", ["mariadb", "mysql"])
def test_a_restored_mariadb_snapshot_starts_and_holds_every_acknowledged_commit(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    run_dir = tmp_path / "run"  # sockets and logs: never on the frozen disk
    db = MariaDb(os.path.join(rig.disk.mountpoint, "mysql"), str(run_dir))
    with db.install().start():
        with db.connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE w")
            cur.execute("CREATE TABLE w.t (id INT PRIMARY KEY) ENGINE=InnoDB")
        # Several sessions: one pure-Python session on this 2-core machine stays
        # under 1,000 commits/s; together they exceed it (the rate is printed).
        conns = [db.connect() for _ in range(WRITERS)]
        writers = [
            Writer(_inserter(conn), first=j + 1, step=WRITERS).start()
            for j, conn in enumerate(conns)
        ]
        monkeypatch.setenv(
            WORKLOAD_CONF_ENV,
            workload_conf(
                tmp_path,
                f"[workload]\nworkload_name = {name}\ncredString = -u root -S {db.socket}\n"
                "timeout = 120\n",
            ),
        )
        try:
            wait_until(lambda: _acks(writers) > 1500, timeout=60, what="writers warmed up")
            settings, task_id = host_settings(rig.ws, luns=[0])
            exporter = InMemorySpanExporter()
            report = run(rig, settings, exporter)
            after = _acks(writers)
            wait_until(lambda: _acks(writers) > after + 600, timeout=60, what="after the job")
        finally:
            for w in writers:
                w.stop()
            for conn in conns:
                conn.close()
    assert [e for w in writers for e in w.errors] == []
    acked = sorted((at, i) for w in writers for i, at in w.acked)
    assert (report.consistency, report.error_code) == ("application", None), report
    outcome = report.workload
    assert outcome is not None and outcome.held
    facts, released = outcome.quiesced, outcome.released
    assert facts is not None and released is not None
    assert facts.method == ("backup_stage" if name == "mariadb" else "read_lock")
    assert facts.blocked_at is not None and facts.quiesced_at is not None
    assert released.stall_seconds is not None
    released_at = facts.blocked_at + released.stall_seconds
    freeze = report.freeze
    assert freeze is not None and freeze.first_freeze_at is not None
    assert facts.quiesced_at < freeze.first_freeze_at
    assert freeze.last_thaw_at is not None and freeze.last_thaw_at < released_at
    # No commit acknowledged between the block and the release (beyond one per
    # session in flight as the lock arrived, whose commits preceded the block).
    during = [i for at, i in acked if facts.quiesced_at < at < released_at]
    assert len(during) <= WRITERS, during

    (taken,) = rig.host.snapshots
    assert taken.clone_path is not None
    ids, events, carried, log = restored_rows(taken.clone_path, str(tmp_path / "copy"))
    assert carried, "the clone was expected to carry the live server's pid file"
    missing = [i for at, i in acked if at < released_at and i not in ids]
    assert missing == [], f"{len(missing)} acknowledged ids missing, first {missing[:5]}"
    # The recorded position is the copy's last binlog event.
    assert facts.log_position == f"binlog.000001:{events[-1][4]}", (facts.log_position, log)
    assert_dba_facts(rig, report, task_id, name)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    quiesce_span = spans["vmsnap.workload_quiesce"]
    release_span = spans["vmsnap.workload_release"]
    assert quiesce_span.attributes is not None and release_span.attributes is not None
    assert quiesce_span.attributes["vmsnap.log_position"] == facts.log_position
    assert release_span.attributes["vmsnap.write_stall_seconds"] == released.stall_seconds
    assert spans["vmsnap.freeze"].start_time > quiesce_span.end_time  # type: ignore[operator]
    assert release_span.start_time > spans["vmsnap.thaw"].end_time  # type: ignore[operator]
    rate = combined_rate(writers)
    stall_ms = released.stall_seconds * 1000
    print(
        f"\n[{name}] {WRITERS} writers {rate:.0f} commits/s; write stall {stall_ms:.0f} ms "
        f"(quiesce {facts.quiesce_seconds * 1000:.0f} ms, frozen window "
        f"{freeze.window_seconds * 1000:.0f} ms); {len(ids)} rows restored, "
        f"binlog {facts.log_position}"
    )


def test_unquiesced_mariadb_snapshot_figures(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same job and restore with the quiescer off (no workload.conf): figures for
    docs/workloads.md, not assertions, beyond the copy starting at all."""
    monkeypatch.setenv(WORKLOAD_CONF_ENV, str(tmp_path / "absent.conf"))
    db = MariaDb(os.path.join(rig.disk.mountpoint, "mysql"), str(tmp_path / "run"))
    with db.install().start():
        with db.connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE w")
            cur.execute("CREATE TABLE w.t (id INT PRIMARY KEY) ENGINE=InnoDB")
        conns = [db.connect() for _ in range(WRITERS)]
        writers = [
            Writer(_inserter(conn), first=j + 1, step=WRITERS).start()
            for j, conn in enumerate(conns)
        ]
        try:
            wait_until(lambda: _acks(writers) > 1500, timeout=60, what="writers warmed up")
            settings, _ = host_settings(rig.ws, luns=[0])
            report = run(rig, settings)
            after = _acks(writers)
            wait_until(lambda: _acks(writers) > after + 600, timeout=60, what="after the job")
        finally:
            for w in writers:
                w.stop()
            for conn in conns:
                conn.close()
    assert report.workload is None and report.snapshot_taken
    freeze = report.freeze
    assert freeze is not None and freeze.first_freeze_at is not None
    assert freeze.last_thaw_at is not None
    acked = sorted((at, i) for w in writers for i, at in w.acked)
    (taken,) = rig.host.snapshots
    assert taken.clone_path is not None
    ids, events, _, _ = restored_rows(taken.clone_path, str(tmp_path / "copy"))
    missing = [i for at, i in acked if at < freeze.first_freeze_at and i not in ids]
    in_window = [i for at, i in acked if freeze.first_freeze_at < at < freeze.last_thaw_at]
    print(
        f"\n[mariadb unquiesced] {WRITERS} writers {combined_rate(writers):.0f} commits/s; "
        f"frozen window {freeze.window_seconds * 1000:.0f} ms; {len(ids)} rows restored; "
        f"{len(missing)} acknowledged-before-freeze ids missing; {len(in_window)} commits "
        f"acknowledged inside the window; copy's last binlog event ends at {events[-1][4]}; "
        f"no position recorded ({report.consistency}, {report.consistency_reason})"
    )
