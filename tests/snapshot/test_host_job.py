"""Real jobs on the host path: a loop ext4 really frozen, the host-service emulator, Azurite.

The "VM disk" is an ext4 filesystem in an image file on an XFS (reflink) loop
filesystem; the emulator's dosnapshot reflink-clones that image while the job
holds it frozen, and the clone is mounted afterwards to show what it holds.
The emulator's call log (monotonic times) is set against the job's freeze
window (``FreezeResult.first_freeze_at`` / ``last_thaw_at``, same clock).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.job.records import JobReport
from snapshot_runtime.job.run import run_job
from snapshot_runtime.job.summary import report_json
from snapshot_runtime.snapshot.host import SNAPSHOT_MODE_ENV, VMBACKUP_CONF_ENV
from snapshot_runtime.snapshot.wireserver import WIRESERVER_ENV
from snapshot_runtime.telemetry.spool_schema import RECORD_FILE, SPANS_FILE
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.faultproxy import FaultProxy
from tests.support.host_service import (
    KEK,
    SNAPSHOT_COUNT_MESSAGE,
    THROTTLED_MESSAGE,
    TOKEN,
    BlobDisk,
    Fault,
    HostService,
    Rig,
    host_settings,
    image_disk_fs,
    restored,
)
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs

pytestmark = [pytest.mark.root, pytest.mark.azurite]

_UTC = dt.timezone.utc


def utc_now() -> dt.datetime:
    return dt.datetime.now(_UTC)


@pytest.fixture
def rig(
    ws: Workspace, xfs: LoopFs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Rig]:
    with (
        image_disk_fs(xfs.mountpoint) as disk,
        HostService({0: disk.disk(direct_drive=True)}) as host,
    ):
        conf = tmp_path / "vmbackup.conf"
        monkeypatch.setenv(WIRESERVER_ENV, host.address)
        monkeypatch.setenv(VMBACKUP_CONF_ENV, str(conf))  # never the machine's own
        yield Rig(ws, disk, host, conf)


def run(rig: Rig, settings: str, **overrides: Any) -> JobReport:
    overrides.setdefault("include_mounts", (rig.disk.mountpoint,))
    return run_job(rig.ws.options(settings, config_path=rig.ws.config(), **overrides))


def status_of(rig: Rig, task_id: str) -> dict[str, Any]:
    doc = json.loads(rig.ws.status_file(task_id).read_text())
    blob = json.loads(doc[0]["status"]["substatus"][0]["name"])
    status: dict[str, Any] = blob[0]["status"]
    return status


def telemetry(status: dict[str, Any]) -> dict[str, str]:
    return {e["Key"]: e["Value"] for e in status["telemetryData"]}


def snapshot_record(report: JobReport) -> dict[str, Any]:
    """The job record's ``snapshot`` object (docs/spool.md): path, fallback, seconds."""
    assert report.spool_job_dir is not None
    record = json.loads((Path(report.spool_job_dir) / RECORD_FILE).read_text())
    snapshot: dict[str, Any] = record["snapshot"]
    return snapshot


def assert_host_calls_fit_the_window(rig: Rig, report: JobReport) -> None:
    """At most one dosnapshot, only while frozen; no presnapshot while frozen."""
    freeze = report.freeze
    assert freeze is not None and freeze.first_freeze_at is not None
    assert freeze.last_thaw_at is not None
    dos = rig.host.calls_of("dosnapshot")
    assert len(dos) <= 1
    for call in dos:
        assert freeze.first_freeze_at < call.received_monotonic
        assert call.answered_monotonic < freeze.last_thaw_at
    for call in rig.host.calls_of("presnapshot"):
        assert call.answered_monotonic < freeze.first_freeze_at or (
            call.received_monotonic > freeze.last_thaw_at
        )


def assert_no_secret_anywhere(rig: Rig, report: JobReport, task_id: str, *secrets: str) -> None:
    """I5: the token and encryption details reach the host request only."""
    places: dict[str, str] = {
        "log": rig.ws.log_path.read_text(),
        "report": repr(report),
        "status": rig.ws.status_file(task_id).read_text(),
    }
    for root in (rig.ws.spool_dir, rig.ws.state_dir):
        for path in Path(root).rglob("*"):
            if path.is_file():
                places[str(path)] = path.read_text(errors="replace")
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, f"secret in {where}"


def test_default_mode_one_dosnapshot_inside_the_window_restores_the_frozen_disk(rig: Rig) -> None:
    # Written, not synced: only the freeze's sync puts it into the image the host clones.
    marker = Path(rig.disk.mountpoint) / "app.txt"
    marker.write_text("quiesced\n")
    settings, task_id = host_settings(rig.ws, luns=[0])

    report = run(rig, settings)

    assert (report.snapshot_backend, report.backends_declined) == ("host", ())
    assert (report.consistency, report.error_code) == ("application", None)
    assert_host_calls_fit_the_window(rig, report)
    (pre,) = rig.host.calls_of("presnapshot")
    (do,) = rig.host.calls_of("dosnapshot")
    assert pre.body["snapshotTaskToken"] == TOKEN and pre.body["taskId"] == task_id
    assert do.body["diskIds"] == [0]
    freeze = report.freeze
    assert freeze is not None
    print(
        f"\n[host] frozen window {freeze.window_seconds * 1000:.1f} ms; dosnapshot "
        f"(reflink clone) {(do.answered_monotonic - do.received_monotonic) * 1000:.1f} ms "
        f"at the host; presnapshot answered "
        f"{(freeze.first_freeze_at or 0) - pre.answered_monotonic:.3f} s before the freeze"
    )
    assert do.body["snapshotTaskToken"] == TOKEN
    assert do.body["snapshotMetadata"] == [{"Key": "BackupJob", "Value": "j1"}]
    assert [s["Key"] for s in do.body["settings"]][:1] == ["isSnapshotTtlEnabled"]
    # The clone the host took while frozen is a consistent disk with the unsynced write.
    (taken,) = rig.host.snapshots
    assert taken.clone_path is not None
    marker.write_text("after the job\n")
    with restored(taken.clone_path) as mnt:
        assert (Path(mnt) / "app.txt").read_text() == "quiesced\n"
    (disk,) = report.disks
    assert disk.ok and disk.snapshot == taken.dd_id
    # Status: the reference's snapshotInfo mapping and telemetry keys.
    status = status_of(rig, report.task_id)
    (entry,) = status["snapshotInfo"]
    assert entry["isSuccessful"] is True
    assert entry["snapshotUri"] is None  # DirectDrive: forced null
    assert entry["blobUri"] == f"http://{rig.host.address}/images/lun0"
    ident = entry["directDriveSnapshotIdentifier"]
    assert ident["id"] == taken.dd_id and ident["token"].startswith("ddtoken-")
    assert ident["creationTime"]["OffsetMinutes"] == 0
    assert ident["creationTime"]["DateTime"].startswith("/Date(")
    # The blob document (a string inside the file) holds \/Date(ms)\/, as .NET reads it.
    assert 'DateTime\\":\\"\\\\/Date(' in rig.ws.status_file(report.task_id).read_text()
    data = telemetry(status)
    assert data["snapshotCreator"] == "backupHostService"
    assert (data["hostStatusCodePreSnapshot"], data["hostStatusCodeDoSnapshot"]) == ("200", "200")
    log = rig.ws.log_path.read_text()
    assert "snapshot mode firstHostThenGuest from default" in log
    snap = snapshot_record(report)
    assert (snap["path"], snap["fallback"]) == ("host", None)
    assert 0 < snap["seconds"] < freeze.window_seconds
    assert_no_secret_anywhere(rig, report, task_id, TOKEN)


@pytest.mark.parametrize(
    ("fault", "code", "fallback"),
    [
        (Fault("drop"), "555", "presnapshot_unreachable"),
        (Fault("status", 500, b""), "500", "presnapshot_failed"),
        (Fault("empty"), "557", "presnapshot_failed"),
    ],
)
def test_failed_presnapshot_falls_back_to_the_guest_before_any_freeze(
    rig: Rig, azurite: Azurite, fault: Fault, code: str, fallback: str
) -> None:
    rig.host.script.presnapshot = fault
    guest = jobkit.make_disks(azurite, 1)
    settings, task_id = host_settings(rig.ws, luns=[0], guest_disks=guest)

    report = run(rig, settings)

    assert report.snapshot_backend == "azure_blob"
    ((name, reason),) = report.backends_declined
    assert name == "host" and reason.startswith(f"presnapshot {code}: ")
    assert report.consistency == "application"
    assert rig.host.calls_of("dosnapshot") == []
    assert len(rig.host.arrivals) == 1  # the one presnapshot, before the freeze
    (disk,) = report.disks
    assert disk.ok and jobkit.snapshot_exists(azurite, disk.blob_url, disk.snapshot)
    data = telemetry(status_of(rig, report.task_id))
    assert data["snapshotCreator"] == "guestExtension"
    assert data["hostStatusCodePreSnapshot"] == code
    assert "hostStatusCodeDoSnapshot" not in data
    snap = snapshot_record(report)
    assert (snap["path"], snap["fallback"]) == ("guest", fallback)
    assert snap["seconds"] > 0
    assert_no_secret_anywhere(rig, report, task_id, TOKEN, *jobkit.secrets_of(guest))


def test_failed_presnapshot_without_guest_disks_freezes_nothing(rig: Rig) -> None:
    rig.host.script.presnapshot = Fault("status", 503, b"")
    settings, _ = host_settings(rig.ws, luns=[0])

    report = run(rig, settings)

    assert report.snapshot_backend is None
    assert report.error_code == "SnapshotFailed" and not report.snapshot_taken
    assert report.freeze is None
    assert rig.host.calls_of("dosnapshot") == []
    # No backend: no path, and no fallback either (nothing to fall back to).
    assert snapshot_record(report) == {"path": None, "fallback": None, "seconds": None}


def test_only_host_from_our_config_snapshots_even_when_presnapshot_fails(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, azurite: Azurite
) -> None:
    monkeypatch.setenv(SNAPSHOT_MODE_ENV, "onlyHost")
    rig.host.script.presnapshot = Fault("status", 500, b"")
    settings, _ = host_settings(rig.ws, luns=[0], guest_disks=jobkit.make_disks(azurite, 1))

    report = run(rig, settings)

    assert report.snapshot_backend == "host_required"
    assert report.consistency == "application"
    assert_host_calls_fit_the_window(rig, report)
    assert len(rig.host.calls_of("dosnapshot")) == 1
    data = telemetry(status_of(rig, report.task_id))
    assert (data["hostStatusCodePreSnapshot"], data["hostStatusCodeDoSnapshot"]) == ("500", "200")


def test_a_direct_drive_disk_forces_the_host_over_only_guest(rig: Rig, azurite: Azurite) -> None:
    rig.conf.write_text("[SnapshotThread]\nSnapshotMethod = onlyGuest\n")
    settings, _ = host_settings(
        rig.ws,
        luns=[0],
        guest_disks=jobkit.make_disks(azurite, 1),
        included={"isAnyDirectDriveDiskIncluded": True},
    )

    report = run(rig, settings)

    assert report.snapshot_backend == "host_required"
    assert report.consistency == "application"
    assert "snapshot mode onlyHost from host-only disks" in rig.ws.log_path.read_text()


def test_only_guest_from_vmbackup_conf_never_calls_the_host(rig: Rig, azurite: Azurite) -> None:
    rig.conf.write_text("[SnapshotThread]\nSnapshotMethod = onlyGuest\n")
    settings, _ = host_settings(
        rig.ws,
        luns=[0],
        guest_disks=jobkit.make_disks(azurite, 1),
        custom={"takeSnapshotFrom": "onlyHost"},
    )

    report = run(rig, settings)

    assert report.snapshot_backend == "azure_blob"
    assert report.consistency == "application"
    assert rig.host.arrivals == []
    data = telemetry(status_of(rig, report.task_id))
    assert data["snapshotCreator"] == "guestExtension"
    assert "hostStatusCodePreSnapshot" not in data


def test_first_guest_then_host_without_guest_disks_takes_the_host(rig: Rig) -> None:
    settings, _ = host_settings(rig.ws, luns=[0], custom={"takeSnapshotFrom": "firstGuestThenHost"})

    report = run(rig, settings)

    assert report.snapshot_backend == "host_required"
    assert report.consistency == "application"
    assert_host_calls_fit_the_window(rig, report)


def test_excluded_disk_and_host_only_disk_is_refused_before_anything(rig: Rig) -> None:
    settings, _ = host_settings(
        rig.ws, luns=[], included={"isAnyDiskExcluded": True, "isAnyWADiskIncluded": True}
    )

    report = run(rig, settings)

    assert report.error_code == "InvalidDiskList"
    assert report.freeze is None and rig.host.arrivals == []


@pytest.mark.parametrize(
    ("setup", "error", "do_code"),
    [
        ("all_false", "SnapshotFailed", "200"),
        ("partial", "SnapshotPartiallyFailed", "200"),
        ("throttled", "SnapshotRateExceeded", "200"),
        ("count", "SnapshotLimitReached", "200"),
        ("bhs_down", "SnapshotFailed", "556"),
        ("error_500", "SnapshotFailed", "500"),
        ("empty", "SnapshotFailed", "557"),
        ("not_json", "SnapshotFailed", "558"),
        ("drop", "SnapshotFailed", "555"),
    ],
)
def test_dosnapshot_failures_are_final_and_honest(
    rig: Rig, azurite: Azurite, setup: str, error: str, do_code: str
) -> None:
    script = rig.host.script
    luns = [0]
    if setup == "all_false":
        script.dosnapshot = Fault("all_false")
    elif setup == "partial":
        luns = [0, 5]  # LUN 5 has no disk: the host answers "false" for it
    elif setup == "throttled":
        script.failed_luns = {0: THROTTLED_MESSAGE}
    elif setup == "count":
        script.failed_luns = {0: SNAPSHOT_COUNT_MESSAGE}
    elif setup == "bhs_down":
        script.dosnapshot = Fault("status", 500, b"")
    elif setup == "error_500":
        script.dosnapshot = Fault("status", 500, b'{ "error": "internal" }')
    else:
        script.dosnapshot = Fault(setup)  # type: ignore[arg-type]
    # Guest disks exist: a failed dosnapshot must still never fall back to them.
    guest = jobkit.make_disks(azurite, 1)
    settings, task_id = host_settings(rig.ws, luns=luns, guest_disks=guest)

    report = run(rig, settings)

    assert report.snapshot_backend == "host"
    assert (report.consistency, report.error_code) == ("none", error)
    assert not report.snapshot_taken
    assert_host_calls_fit_the_window(rig, report)
    assert len(rig.host.calls_of("dosnapshot")) == 1  # never retried
    assert (snapshot_record(report)["path"], snapshot_record(report)["fallback"]) == ("host", None)
    assert jobkit.snapshots_of(azurite, jobkit.strip(guest[0])) == []  # never the guest
    freeze = report.freeze
    assert freeze is not None and freeze.ok
    data = telemetry(status_of(rig, report.task_id))
    assert data["hostStatusCodeDoSnapshot"] == do_code
    if setup == "partial":
        assert [d.ok for d in report.disks] == [True, False]
    assert_no_secret_anywhere(rig, report, task_id, TOKEN)


def test_a_slow_dosnapshot_is_cut_at_the_snapshot_deadline_and_thawed(rig: Rig) -> None:
    rig.host.script.delay_seconds = {"dosnapshot": 30.0}
    settings, _ = host_settings(rig.ws, luns=[0])

    report = run(rig, settings, snapshot_deadline_seconds=2.0)

    assert (report.consistency, report.error_code) == ("none", "SnapshotFailed")
    (disk,) = report.disks
    assert disk.failure_kind == "timeout"
    freeze = report.freeze
    assert freeze is not None and freeze.ok
    print(
        f"\n[host] dosnapshot hung 30 s, deadline 2 s: frozen window {freeze.window_seconds:.3f} s"
    )
    # Thawed at the deadline, not after the host's 30 s.
    assert 2.0 <= freeze.window_seconds < 4.0
    assert len(rig.host.arrivals) == 2  # one presnapshot, one dosnapshot


def test_ade_details_go_to_dosnapshot_only(rig: Rig) -> None:
    rig.host.script.disk_encryption_settings = KEK
    rig.host.script.ade_os_encrypted = True
    settings, task_id = host_settings(rig.ws, luns=[0], included={"isVMADEEnabled": True})

    report = run(rig, settings)

    assert report.consistency == "application"
    (pre,) = rig.host.calls_of("presnapshot")
    assert pre.body["preSnapshotSettings"] == [{"Key": "isVMADEEnabled", "Value": True}]
    (do,) = rig.host.calls_of("dosnapshot")
    assert {"Key": "DiskEncryptionSettings", "Value": KEK} in do.body["snapshotMetadata"]
    assert {"Key": "isOsDiskADEEncrypted", "Value": True} in do.body["settings"]
    assert_no_secret_anywhere(rig, report, task_id, TOKEN, KEK, "SECRETKEK")


def test_only_guest_without_guest_disks_is_refused_before_anything(rig: Rig) -> None:
    settings, _ = host_settings(rig.ws, luns=[0], custom={"takeSnapshotFrom": "onlyGuest"})

    report = run(rig, settings)

    assert report.error_code == "InvalidDiskList"
    assert "no guest disk URL" in (report.error_message or "")
    assert report.freeze is None and rig.host.arrivals == []


def test_a_page_blob_lun_and_an_image_lun_in_one_dosnapshot(rig: Rig, azurite: Azurite) -> None:
    container = azurite.container()
    azurite.create_page_blob(container, "data1.vhd")
    rig.host.luns[1] = BlobDisk(container, "data1.vhd")
    rig.host.blob_connection_string = azurite.connection_string
    rig.host.blob_endpoint = azurite.endpoint
    settings, _ = host_settings(rig.ws, luns=[1, 0])

    report = run(rig, settings)

    assert report.consistency == "application"
    assert [d.ok for d in report.disks] == [True, True]
    blob_disk, image_disk = report.disks
    # LUN 1: a real Azurite snapshot, tagged with the backup metadata.
    base = f"{azurite.endpoint}/{container}/data1.vhd"
    assert blob_disk.blob_url == base
    assert jobkit.snapshot_exists(azurite, base, blob_disk.snapshot)
    props = (
        azurite.service()
        .get_blob_client(container, "data1.vhd", snapshot=blob_disk.snapshot)
        .get_blob_properties()
    )
    assert props.metadata == {"BackupJob": "j1"}
    assert image_disk.snapshot == rig.host.snapshots[1].dd_id
    status = status_of(rig, report.task_id)
    xstore, dd = status["snapshotInfo"]
    # The status keeps the snapshot parameter (percent-encoded, as on the guest path).
    assert unquote(xstore["snapshotUri"]) == f"{base}?snapshot={blob_disk.snapshot}"
    assert xstore["blobUri"] == base
    assert xstore["directDriveSnapshotIdentifier"] is None
    assert dd["snapshotUri"] is None and dd["directDriveSnapshotIdentifier"]["id"]


def test_no_wireserver_at_all_falls_back_to_the_guest_at_once(
    rig: Rig, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(WIRESERVER_ENV, f"127.0.0.1:{port}")
    settings, _ = host_settings(rig.ws, luns=[0], guest_disks=jobkit.make_disks(azurite, 1))

    report = run(rig, settings)

    assert report.snapshot_backend == "azure_blob"
    assert report.backends_declined == (
        ("host", "presnapshot 555: connect: ConnectionRefusedError"),
    )
    assert report.consistency == "application"
    (prepare,) = [p for p in report.phases if p.name == "prepare"]
    assert prepare.seconds < 5.0  # a refused WireServer costs no timeout


def test_the_140_minute_limit_runs_on_the_hosts_clock_before_any_freeze(rig: Rig) -> None:
    # The VM's clock says the command is a second old; the host's says 141 minutes.
    rig.host.script.response_time = utc_now() + dt.timedelta(minutes=141)
    settings, task_id = host_settings(rig.ws, luns=[0])

    report = run(rig, settings)

    assert (report.error_code, report.snapshot_taken) == ("CommandTooLate", False)
    assert report.status_code == 402
    assert report.freeze is None  # nothing frozen
    assert len(rig.host.calls_of("presnapshot")) == 1
    assert rig.host.calls_of("dosnapshot") == []
    assert "minutes before the host's time" in rig.ws.log_path.read_text()
    assert snapshot_record(report) == {"path": "host", "fallback": None, "seconds": None}
    assert_no_secret_anywhere(rig, report, task_id, TOKEN)


def test_a_host_clock_within_the_limit_lets_the_job_run(rig: Rig) -> None:
    # 139 minutes by the host's clock: inside the limit, the snapshot is taken.
    rig.host.script.response_time = utc_now() + dt.timedelta(minutes=139)
    settings, _ = host_settings(rig.ws, luns=[0])

    report = run(rig, settings)

    assert (report.consistency, report.error_code) == ("application", None)
    assert len(rig.host.calls_of("dosnapshot")) == 1


def test_a_failed_freeze_on_one_host_lun_takes_the_crash_consistent_snapshot(
    rig: Rig, tmp_path: Path
) -> None:
    # A requested mount that is not mounted: the freeze cannot happen. One LUN
    # is one atomic host snapshot, a valid crash-consistent point (the guest
    # path's single-disk rule, counted on the host's disks, not guest URLs).
    missing = tmp_path / "not-mounted"
    missing.mkdir()
    settings, _ = host_settings(rig.ws, luns=[0])

    report = run(rig, settings, include_mounts=(rig.disk.mountpoint, str(missing)))

    assert report.snapshot_backend == "host"
    assert (report.snapshot_taken, report.consistency) == (True, "crash")
    assert len(rig.host.calls_of("dosnapshot")) == 1


def test_a_failed_freeze_on_several_host_luns_stops_the_job(rig: Rig, tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"
    missing.mkdir()
    settings, _ = host_settings(rig.ws, luns=[0, 5])

    report = run(rig, settings, include_mounts=(rig.disk.mountpoint, str(missing)))

    assert report.snapshot_backend == "host"
    assert not report.snapshot_taken and report.consistency == "none"
    assert rig.host.calls_of("dosnapshot") == []  # several disks unfrozen: not consistent


def test_the_dosnapshot_is_a_client_span_to_the_wireserver_with_a_disk_span_per_lun(
    rig: Rig, azurite: Azurite
) -> None:
    # One image LUN and one page-blob LUN: two disks, one request.
    container = azurite.container()
    azurite.create_page_blob(container, "data3.vhd")
    rig.host.luns[3] = BlobDisk(container, "data3.vhd")
    rig.host.blob_connection_string = azurite.connection_string
    rig.host.blob_endpoint = azurite.endpoint
    settings, _ = host_settings(rig.ws, luns=[0, 3])

    report = run(rig, settings)

    assert report.consistency == "application"
    assert report.spool_job_dir is not None
    spans = jobkit.read_json_lines(Path(report.spool_job_dir) / SPANS_FILE)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    (phase,) = by_name["vmsnap.snapshot"]
    (request,) = by_name["vmsnap.snapshot.host_request"]
    assert request["kind"] == "CLIENT"
    assert request["parent_span_id"] == phase["span_id"]
    host, port = rig.host.address.rsplit(":", 1)
    attrs = request["attributes"]
    assert (attrs["server.address"], attrs["server.port"]) == (host, int(port))
    assert (attrs["http.request.method"], attrs["http.response.status_code"]) == ("POST", 200)
    assert (attrs["vmsnap.host.presnapshot_code"], attrs["vmsnap.host.dosnapshot_code"]) == (
        200,
        200,
    )
    disks = by_name["vmsnap.snapshot.disk"]
    assert sorted(d["attributes"]["vmsnap.disk.lun"] for d in disks) == [0, 3]
    for disk in disks:
        assert disk["kind"] == "INTERNAL" and disk["parent_span_id"] == request["span_id"]
        # Inside the request, not at the monotonic clock's epoch.
        assert request["start_time_unix_nano"] <= disk["start_time_unix_nano"]
        assert disk["end_time_unix_nano"] <= request["end_time_unix_nano"] + 1_000_000
    (do,) = rig.host.calls_of("dosnapshot")
    assert do.body["diskIds"] == [0, 3]


def test_first_guest_then_host_whose_guest_disks_all_fail_freezes_again_for_the_host(
    rig: Rig, azurite: Azurite
) -> None:
    # Written, not synced: only the second (host) window's sync puts it into the clone.
    marker = Path(rig.disk.mountpoint) / "app.txt"
    marker.write_text("quiesced\n")
    # A forged signature: the real Azurite refuses every guest snapshot (403).
    guest = [jobkit.wrong_signature(u) for u in jobkit.make_disks(azurite, 2)]
    settings, task_id = host_settings(
        rig.ws, luns=[0], guest_disks=guest, custom={"takeSnapshotFrom": "firstGuestThenHost"}
    )

    report = run(rig, settings)

    # The verdict is the host's: its window, its snapshot.
    assert report.snapshot_backend == "host_required"
    assert (report.consistency, report.error_code) == ("application", None)
    attempt = report.guest_attempt
    assert attempt is not None and attempt.backend == "azure_blob"
    assert attempt.freeze_ok and attempt.snapshot is not None
    assert len(attempt.snapshot.disks) == 2 and attempt.snapshot.ok_count == 0
    first, second = attempt.freeze, report.freeze
    assert first is not None and second is not None
    assert first.first_freeze_at is not None and first.last_thaw_at is not None
    assert second.first_freeze_at is not None and second.last_thaw_at is not None
    assert first.last_thaw_at < second.first_freeze_at  # two windows, one after the other
    # Nothing asked of the host during the guest window; the presnapshot before
    # the SECOND freeze, exactly one dosnapshot inside it.
    assert rig.host.arrivals
    for _, received in rig.host.arrivals:
        assert received > first.last_thaw_at
    pres = rig.host.calls_of("presnapshot")
    assert pres and all(p.answered_monotonic < second.first_freeze_at for p in pres)
    (do,) = rig.host.calls_of("dosnapshot")
    assert second.first_freeze_at < do.received_monotonic
    assert do.answered_monotonic < second.last_thaw_at
    assert do.body["diskIds"] == [0]
    (taken,) = rig.host.snapshots
    assert taken.clone_path is not None
    marker.write_text("after the job\n")
    with restored(taken.clone_path) as mnt:
        assert (Path(mnt) / "app.txt").read_text() == "quiesced\n"
    print(
        f"\n[fallback] guest window {first.window_seconds * 1000:.1f} ms, host window "
        f"{second.window_seconds * 1000:.1f} ms, between the thaw and the second freeze "
        f"{(second.first_freeze_at - first.last_thaw_at) * 1000:.1f} ms"
    )
    # The record: the host's path and window; the guest window kept aside.
    assert report.spool_job_dir is not None
    record = json.loads((Path(report.spool_job_dir) / RECORD_FILE).read_text())
    snap = record["snapshot"]
    assert (snap["path"], snap["fallback"]) == ("host", "guest_failed")
    kept = snap["guest_attempt"]
    assert (kept["backend"], kept["disks"], kept["disks_ok"]) == ("azure_blob", 2, 0)
    assert kept["error"] is not None and kept["freeze_ok"] is True
    assert kept["frozen_window_seconds"] == round(first.window_seconds, 6)
    assert record["freeze"]["window_seconds"] == round(second.window_seconds, 6)
    names = [p["name"] for p in record["phases"]]
    assert names.count("prepare") == 2 and names.count("freeze") == 2
    assert names.count("snapshot") == 2 and names.count("thaw") == 2
    # The spans: both windows.
    spans = jobkit.read_json_lines(Path(report.spool_job_dir) / SPANS_FILE)
    thaws = [s for s in spans if s["name"] == "vmsnap.thaw"]
    assert len([s for s in spans if s["name"] == "vmsnap.freeze"]) == 2 and len(thaws) == 2
    windows = sorted(s["attributes"]["vmsnap.frozen_window_seconds"] for s in thaws)
    assert windows == sorted(w.window_seconds for w in (first, second))
    # The status: the host's snapshot.
    data = telemetry(status_of(rig, report.task_id))
    assert data["snapshotCreator"] == "backupHostService"
    assert data["hostStatusCodeDoSnapshot"] == "200"
    assert "falls back to the host, which freezes again" in rig.ws.log_path.read_text()
    assert_no_secret_anywhere(rig, report, task_id, TOKEN, *jobkit.secrets_of(guest))


def test_first_guest_then_host_whose_snapshots_fail_inside_the_window_freezes_again(
    rig: Rig, azurite: Azurite, proxy: FaultProxy
) -> None:
    # The guest disks pass their preflight; every Snapshot Blob request, sent
    # inside the first window through the fault proxy, is refused (409, not retried).
    guest = jobkit.make_disks(azurite, 2, endpoints={0: proxy.endpoint(), 1: proxy.endpoint()})
    proxy.fail_next(100, status=409, error_code="SnapshotCountExceeded", match="comp=snapshot")
    settings, _ = host_settings(
        rig.ws, luns=[0], guest_disks=guest, custom={"takeSnapshotFrom": "firstGuestThenHost"}
    )

    report = run(rig, settings)

    assert proxy.stats.failures == 2  # one refused snapshot per guest disk, not retried
    attempt = report.guest_attempt
    assert attempt is not None and attempt.snapshot is not None
    assert [d.attempts for d in attempt.snapshot.disks] == [1, 1]
    assert attempt.snapshot.error is ErrorCode.SNAPSHOT_LIMIT_REACHED
    # The verdict is the host's, not the guest's 85.
    assert report.snapshot_backend == "host_required"
    assert (report.consistency, report.error_code) == ("application", None)
    first, second = attempt.freeze, report.freeze
    assert first is not None and first.last_thaw_at is not None
    assert second is not None and second.first_freeze_at is not None
    assert second.last_thaw_at is not None
    assert all(received > first.last_thaw_at for _, received in rig.host.arrivals)
    (pre,) = rig.host.calls_of("presnapshot")
    assert pre.answered_monotonic < second.first_freeze_at
    (do,) = rig.host.calls_of("dosnapshot")
    assert second.first_freeze_at < do.received_monotonic < do.answered_monotonic
    assert do.answered_monotonic < second.last_thaw_at
    snap = snapshot_record(report)
    assert (snap["path"], snap["fallback"]) == ("host", "guest_failed")
    assert snap["guest_attempt"]["error"] == ErrorCode.SNAPSHOT_LIMIT_REACHED.value
    # --json: the host's freeze, the guest window aside.
    doc = report_json(report)
    assert doc["guestAttempt"]["backend"] == "azure_blob"
    assert (doc["guestAttempt"]["disks"], doc["guestAttempt"]["disksOk"]) == (2, 0)
    assert doc["guestAttempt"]["errorCode"] == ErrorCode.SNAPSHOT_LIMIT_REACHED.value


def test_first_guest_then_host_with_one_guest_disk_ok_does_not_fall_back(
    rig: Rig, azurite: Azurite, proxy: FaultProxy
) -> None:
    # A partial guest failure is final (761), as in the reference: no second window.
    guest = jobkit.make_disks(azurite, 2, endpoints={1: proxy.endpoint()})
    proxy.fail_next(100, status=409, error_code="SnapshotCountExceeded", match="comp=snapshot")
    settings, _ = host_settings(
        rig.ws, luns=[0], guest_disks=guest, custom={"takeSnapshotFrom": "firstGuestThenHost"}
    )

    report = run(rig, settings)

    assert report.snapshot_backend == "azure_blob"
    assert report.error_code == "SnapshotPartiallyFailed" and report.consistency == "none"
    assert report.guest_attempt is None
    assert rig.host.arrivals == []
    snap = snapshot_record(report)
    assert (snap["path"], snap["fallback"]) == ("guest", None)


def test_first_guest_then_host_whose_guest_snapshot_succeeds_never_calls_the_host(
    rig: Rig, azurite: Azurite
) -> None:
    guest = jobkit.make_disks(azurite, 1)
    settings, _ = host_settings(
        rig.ws, luns=[0], guest_disks=guest, custom={"takeSnapshotFrom": "firstGuestThenHost"}
    )

    report = run(rig, settings)

    assert report.snapshot_backend == "azure_blob"
    assert (report.consistency, report.error_code) == ("application", None)
    assert report.guest_attempt is None
    assert rig.host.arrivals == []
    snap = snapshot_record(report)
    assert (snap["path"], snap["fallback"]) == ("guest", None)
    assert "guest_attempt" not in snap
    assert "guestAttempt" not in report_json(report)
    assert report.spool_job_dir is not None
    record = json.loads((Path(report.spool_job_dir) / RECORD_FILE).read_text())
    assert [p["name"] for p in record["phases"]].count("freeze") == 1
