"""Jobs with a workload.conf on real parts: honest verdicts, the release on SIGTERM,
no password anywhere, Oracle recognised but not claimed, scripts replaced with a warning."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshot_runtime.inputs.workload_conf import WORKLOAD_CONF_ENV
from snapshot_runtime.job.records import JobReport
from snapshot_runtime.job.run import run_job
from tests.support import jobkit
from tests.support.databases import MariaDb, Writer
from tests.support.host_service import Rig, host_settings
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.root]

SECRET = "Pw-SECRET-0xC0FFEE"


@pytest.fixture
def live(rig: Rig, tmp_path: Path) -> Iterator[MariaDb]:
    db = MariaDb(os.path.join(rig.disk.mountpoint, "mysql"), str(tmp_path / "run"))
    with db.install().start():
        with db.connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE w")
            cur.execute("CREATE TABLE w.t (id INT PRIMARY KEY) ENGINE=InnoDB")
        yield db


def use_workload_conf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str) -> None:
    path = tmp_path / "workload.conf"
    path.write_text("[workload]\n" + body)
    os.chmod(path, 0o600)
    monkeypatch.setenv(WORKLOAD_CONF_ENV, str(path))


def run(rig: Rig, settings: str, **overrides: object) -> JobReport:
    return run_job(rig.ws.options(settings, include_mounts=(rig.disk.mountpoint,), **overrides))


def everything_written(rig: Rig, task_id: str, report: JobReport) -> dict[str, str]:
    places = {
        "log": rig.ws.log_path.read_text(),
        "report": repr(report),
        "status": rig.ws.status_file(task_id).read_text(),
    }
    for root in (rig.ws.spool_dir, rig.ws.state_dir):
        for path in Path(root).rglob("*"):
            if path.is_file():
                places[str(path)] = path.read_text(errors="replace")
    return places


def test_a_failed_quiesce_is_never_application_and_its_password_is_nowhere(
    rig: Rig, live: MariaDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with live.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE USER 'weak'@'localhost' IDENTIFIED BY %s", (SECRET,))
        cur.execute("GRANT SELECT ON *.* TO 'weak'@'localhost'")
    use_workload_conf(
        monkeypatch,
        tmp_path,
        f"workload_name = mariadb\ncredString = -u weak -p{SECRET} -S {live.socket}\n",
    )
    settings, task_id = host_settings(rig.ws, luns=[0])

    report = run(rig, settings)

    assert report.snapshot_taken
    assert (report.consistency, report.consistency_reason) == (
        "filesystem",
        "workload_not_quiesced",
    )
    assert report.error_code == "FailedWorkloadQuiescingError"
    assert report.status_code == 1
    for where, text in everything_written(rig, task_id, report).items():
        assert SECRET not in text, f"the password in {where}"
    assert "RELOAD" in rig.ws.log_path.read_text()


def test_sigterm_while_held_releases_the_lock_and_claims_nothing(
    rig: Rig, live: MariaDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_workload_conf(
        monkeypatch, tmp_path, f"workload_name = mariadb\ncredString = -u root -S {live.socket}\n"
    )
    rig.host.script.delay_seconds = {"dosnapshot": 60.0}  # the job waits inside the window
    settings, task_id = host_settings(rig.ws, luns=[0])
    wconn = live.connect()
    wcur = wconn.cursor()
    writer = Writer(lambda n: wcur.execute("INSERT INTO w.t VALUES (%s)", (n,))).start()
    try:
        wait_until(lambda: len(writer.acked) > 100, timeout=30, what="writer running")
        proc = rig.ws.start_cli(
            *rig.ws.run_args(settings, mounts=[rig.disk.mountpoint], extra=["--quiet"])
        )
        wait_until(
            lambda: any(kind == "dosnapshot" for kind, _ in rig.host.arrivals),
            timeout=60,
            what="the job inside its window (quiesced, frozen, dosnapshot sent)",
        )
        # While the job holds the lock (its dosnapshot waits 60 s): no commit.
        assert writer.acks_within(1.0) == 0, "commits went on while the job held the lock"
        signalled = len(writer.acked)
        proc.send_signal(signal.SIGTERM)
        wait_until(
            lambda: len(writer.acked) > signalled + 50, timeout=15, what="commits after SIGTERM"
        )
        proc.communicate(timeout=60)
    finally:
        writer.stop()
        wconn.close()
    assert proc.returncode != 0
    doc = json.loads(rig.ws.status_file(task_id).read_text())
    status = json.loads(doc[0]["status"]["substatus"][0]["name"])[0]["status"]
    assert status.get("code") != 0, "an interrupted job claimed application consistency"
    log = rig.ws.log_path.read_text()
    assert "workload mariadb: released" in log or "hold was lost" in log


def test_oracle_is_recognised_frozen_and_snapshotted_with_a_defined_warning(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_workload_conf(monkeypatch, tmp_path, "workload_name = oracle\nlinux_user = oracle\n")
    settings, _ = host_settings(rig.ws, luns=[0])

    report = run(rig, settings)

    assert report.snapshot_taken  # never a lost backup
    assert (report.consistency, report.consistency_reason) == (
        "filesystem",
        "workload_not_quiesced",
    )
    assert report.error_code == "WorkloadUnsupported" and report.status_code == 1
    assert report.freeze is not None and report.freeze.ok


def test_a_workload_replaces_the_scripts_and_says_so(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_workload_conf(monkeypatch, tmp_path, "workload_name = oracle\n")
    settings, _ = host_settings(rig.ws, luns=[0])

    report = run(rig, settings, config_path=rig.ws.config())

    assert report.pre_script is None and report.post_script is None
    assert "WorkloadReplacesScripts" in report.warnings
    assert not list(Path(rig.ws.marks).glob("*")), "a replaced script ran"
    assert "the workload replaces the scripts" in rig.ws.log_path.read_text()


def test_the_password_can_come_from_protected_settings_and_goes_nowhere_else(
    rig: Rig, live: MariaDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with live.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE USER 'backup'@'localhost' IDENTIFIED BY %s", (SECRET,))
        cur.execute("GRANT RELOAD ON *.* TO 'backup'@'localhost'")
    # No password in workload.conf: only the user and the socket.
    use_workload_conf(
        monkeypatch, tmp_path, f"workload_name = mariadb\ncredString = -u backup -S {live.socket}\n"
    )
    settings, task_id = host_settings(rig.ws, luns=[0])
    doc = json.loads(Path(settings).read_text())
    doc["runtimeSettings"][0]["handlerSettings"]["protectedSettings"]["workloadPassword"] = SECRET
    Path(settings).write_text(json.dumps(doc))

    report = run(rig, settings)

    assert (report.consistency, report.error_code) == ("application", None), report
    for where, text in everything_written(rig, task_id, report).items():
        assert SECRET not in text, f"the password in {where}"
    # RELOAD alone quiesces; reading the binlog position needs BINLOG MONITOR: the
    # lock still held, the missing position is said, not hidden.
    assert report.workload is not None and report.workload.quiesced is not None
    assert report.workload.quiesced.log_position is None
    assert "no binlog position recorded" in rig.ws.log_path.read_text()


def test_a_sigkilled_job_inside_the_window_leaves_no_lock(
    rig: Rig, live: MariaDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime SIGKILLed while it holds the lock and the freeze: the kernel closes
    the session (the server ends the lock), the thaw watchdog thaws; commits resume."""
    use_workload_conf(
        monkeypatch, tmp_path, f"workload_name = mariadb\ncredString = -u root -S {live.socket}\n"
    )
    rig.host.script.delay_seconds = {"dosnapshot": 60.0}
    settings, _ = host_settings(rig.ws, luns=[0])
    wconn = live.connect()
    wcur = wconn.cursor()
    writer = Writer(lambda n: wcur.execute("INSERT INTO w.t VALUES (%s)", (n,))).start()
    try:
        wait_until(lambda: len(writer.acked) > 100, timeout=30, what="writer running")
        proc = rig.ws.start_cli(
            *rig.ws.run_args(settings, mounts=[rig.disk.mountpoint], extra=["--quiet"])
        )
        wait_until(
            lambda: any(kind == "dosnapshot" for kind, _ in rig.host.arrivals),
            timeout=60,
            what="the job inside its window",
        )
        for pid in jobkit.child_pids(proc.pid):
            rig.ws.adopt_pid(pid)  # the thaw watchdog: the workspace reaps it
        assert writer.acks_within(1.0) == 0, "commits went on while the job held the lock"
        killed = len(writer.acked)
        proc.kill()
        proc.communicate(timeout=30)
        wait_until(
            lambda: len(writer.acked) > killed + 50, timeout=30, what="commits after SIGKILL"
        )
    finally:
        writer.stop()
        wconn.close()

    def other_sessions() -> int:
        with live.connect() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE ID <> CONNECTION_ID() AND COMMAND <> 'Daemon'"
            )
            row = cur.fetchone()
            return int(row[0]) if row else -1

    # The dead runtime's session is gone from the server, not merely idle.
    wait_until(lambda: other_sessions() == 0, timeout=30, what="the killed session gone")
