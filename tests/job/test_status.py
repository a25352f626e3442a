from __future__ import annotations

import json
import os
import stat
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from snapshot_runtime.core.consistency import Consistency, Verdict, verdict
from snapshot_runtime.core.errors import ErrorCode, Health
from snapshot_runtime.core.phases import PhaseRecorder
from snapshot_runtime.core.redact import Redactor
from snapshot_runtime.inputs.settings import parse_handler_settings
from snapshot_runtime.job.state import JobState
from snapshot_runtime.job.status_document import (
    ARM_VM_TYPE,
    REFERENCE_NAME,
    StorageDetails,
    consistency_number,
    consistency_type,
    render,
    status_document,
    status_file_document,
    write_status_file,
)
from snapshot_runtime.job.status_report import status_snapshots, status_telemetry
from snapshot_runtime.snapshot.results import DiskSnapshot
from tests.inputs.test_settings import ALL_SIGS, DISK0, DISK1, LOGS, TICKS, flat
from tests.support.handlerkit import SNAPSHOT_KEYS, STATUS_KEYS, TOP_KEYS

NOW = datetime(2017, 11, 9, 8, 13, 20, 123456, tzinfo=timezone.utc)
NOW_MS = 1510215200123


def make(**overrides: Any) -> list[dict[str, object]]:
    args: dict[str, Any] = {
        "task_id": "task-1",
        "status": "success",
        "code": 0,
        "message": "Enable Succeeded with App Consistent Snapshot",
        "consistency": "application",
        "command_start_ticks": TICKS,
        "snapshots": [],
        "telemetry": {"pythonVersion": "3.11.7", "consistencyType": "applicationConsistent"},
        "health": Health.GREEN,
        "unique_machine_id": "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
        "now": NOW,
        "extension_version": "1.0.9225.0",
    }
    args.update(overrides)
    return status_document(**args)


def inner(doc: list[dict[str, object]]) -> dict[str, Any]:
    value = doc[0]["status"]
    assert isinstance(value, dict)
    return value


def message_of(doc: list[dict[str, object]]) -> dict[str, Any]:
    decoded = json.loads(inner(doc)["formattedMessage"]["message"])
    assert isinstance(decoded, dict)
    return decoded


# --- the blob document --------------------------------------------------------


def test_blob_document_golden_shape() -> None:
    doc = make()
    assert isinstance(doc, list) and len(doc) == 1
    assert list(doc[0]) == TOP_KEYS
    assert doc[0]["version"] == "1.0.9225.0"
    assert doc[0]["timestampUTC"] == f"/Date({NOW_MS})/"
    s = inner(doc)
    assert list(s) == STATUS_KEYS
    assert s["name"] == "Microsoft.Azure.RecoveryServices.VMSnapshotLinux"  # reference's
    assert s["operation"] == "Enable"
    assert s["status"] == "success"
    assert s["substatus"] == []
    assert s["code"] == "0"
    assert s["taskId"] == "task-1"
    assert s["formattedMessage"]["lang"] == "en-US"
    assert isinstance(s["formattedMessage"]["message"], str)
    assert s["storageDetails"] == {
        "partitionCount": 0,
        "totalUsedSizeInBytes": 0,
        "isStoragespacePresent": False,
        "isSizeComputationFailed": False,
    }
    assert s["commandStartTimeUTCTicks"] == str(TICKS)
    assert s["telemetryData"] == [
        {"Key": "pythonVersion", "Value": "3.11.7"},
        {"Key": "consistencyType", "Value": "applicationConsistent"},
    ]
    assert s["uniqueMachineId"] == "0f1e2d3c-aaaa-bbbb-cccc-000000000001"
    assert s["snapshotInfo"] is None
    assert s["vmHealthInfo"] == {"vmHealthState": 0, "vmHealthStatusCode": 0}


def test_formatted_message_is_json_with_consistency() -> None:
    doc = make(
        consistency="filesystem",
        job_message="job",
        storage=StorageDetails(2, 4096, False, True),
    )
    assert message_of(doc) == {
        "messageStr": "Enable Succeeded with App Consistent Snapshot",
        "snapshotConsistency": 1,
        "jobMessage": "job",
        "isSizeComputationFailed": True,
    }
    assert inner(doc)["storageDetails"]["totalUsedSizeInBytes"] == 4096


@pytest.mark.parametrize(
    ("consistency", "number"),
    [(None, 0), ("none", 0), ("filesystem", 1), ("application", 2), ("crash", 3)],
)
def test_consistency_numbers(consistency: Consistency | None, number: int) -> None:
    assert consistency_number(consistency) == number
    assert message_of(make(consistency=consistency))["snapshotConsistency"] == number


def test_error_document_codes_and_health() -> None:
    doc = make(
        status="error",
        code=ErrorCode.SNAPSHOT_FAILED.code,
        consistency="none",
        health=Health.RED,
        command_start_ticks=None,
    )
    s = inner(doc)
    assert s["code"] == "76"
    assert s["commandStartTimeUTCTicks"] is None
    assert s["vmHealthInfo"] == {"vmHealthState": 256, "vmHealthStatusCode": 76}
    warned = make(code=1, consistency="filesystem", health=Health.YELLOW, vm_health_code=300)
    assert inner(warned)["vmHealthInfo"] == {"vmHealthState": 128, "vmHealthStatusCode": 300}


def test_transitioning_document() -> None:
    doc = make(status="transitioning", code=4, consistency=None, message="Transitioning state")
    assert inner(doc)["status"] == "transitioning"
    assert message_of(doc)["snapshotConsistency"] == 0


def test_snapshot_info_entries_are_normalised() -> None:
    snapshot = DISK0 + "&snapshot=2017-11-09T14:23:28.1234567Z"
    doc = make(
        snapshots=[
            {
                "isSuccessful": True,
                "snapshotUri": snapshot,
                "errorMessage": None,
                "blobUri": DISK0,
                "directDriveSnapshotIdentifier": None,
                "unexpected": "dropped",
            },
            {"isSuccessful": "true", "blobUri": DISK1, "errorMessage": "PUT " + DISK1 + " failed"},
            {"isSuccessful": "False", "blobUri": None},
        ]
    )
    info = inner(doc)["snapshotInfo"]
    assert [list(e) for e in info] == [SNAPSHOT_KEYS] * 3
    first = info[0]
    assert first["isSuccessful"] is True
    assert first["snapshotUri"] == (
        "https://acct1.blob.core.windows.net/vhds/os.vhd?snapshot=2017-11-09T14%3A23%3A28.1234567Z"
    )
    assert first["blobUri"] == "https://acct1.blob.core.windows.net/vhds/os.vhd"
    assert info[1]["isSuccessful"] is True
    assert info[1]["snapshotUri"] is None
    assert "acct2.blob.core.windows.net/vhds/data-0.vhd" in info[1]["errorMessage"]
    assert info[2]["isSuccessful"] is False
    assert info[2]["blobUri"] is None


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        make(status="done")
    with pytest.raises(ValueError):
        make(now=datetime(2020, 1, 1))
    with pytest.raises(ValueError):
        status_file_document([], now=NOW)
    with pytest.raises(ValueError):
        status_file_document([{"status": "x"}], now=NOW)


def test_timestamp_uses_utc_milliseconds() -> None:
    plus2 = NOW.astimezone(timezone(timedelta(hours=2)))
    assert make(now=plus2)[0]["timestampUTC"] == f"/Date({NOW_MS})/"


# --- rendering ----------------------------------------------------------------------


def test_render_escapes_the_date_like_the_reference() -> None:
    doc = make()
    data = render(doc)
    assert f'"timestampUTC":"\\/Date({NOW_MS})\\/"'.encode() in data
    assert b"/Date(" not in data.replace(b"\\/Date(", b"")
    assert json.loads(data) == doc
    assert data.isascii()
    assert b": " not in data and b", " not in data.replace(b"Enable Succeeded", b"")


def test_render_leaves_other_date_looking_strings_alone() -> None:
    doc = {"message": "/Date(1)/", "timestampUTC": "2020-01-01T00:00:00Z"}
    assert render(doc) == json.dumps(doc, separators=(",", ":")).encode()


# --- the file document --------------------------------------------------------------


def test_file_document_shape() -> None:
    blob = make(snapshots=[{"isSuccessful": True, "blobUri": DISK0}])
    doc = status_file_document(blob, now=NOW)
    assert list(doc[0]) == TOP_KEYS
    assert doc[0]["version"] == "1.0.9225.0"
    assert doc[0]["timestampUTC"] == "2017-11-09T08:13:20Z"
    s = inner(doc)
    assert list(s) == STATUS_KEYS
    assert s["telemetryData"] is None
    assert s["snapshotInfo"] is None
    assert s["vmHealthInfo"] is None
    for key in ("name", "operation", "status", "code", "taskId", "formattedMessage"):
        assert s[key] == inner(blob)[key]
    assert s["storageDetails"] == inner(blob)["storageDetails"]
    assert s["commandStartTimeUTCTicks"] == str(TICKS)
    assert s["uniqueMachineId"] == inner(blob)["uniqueMachineId"]
    (sub,) = s["substatus"]
    assert sub == {
        "code": "0",
        "name": render(blob).decode(),
        "status": "success",
        "formattedMessage": None,
    }
    assert json.loads(sub["name"]) == blob
    # The embedded blob JSON keeps its escaped date, escaped once more.
    assert f'\\"timestampUTC\\":\\"\\\\/Date({NOW_MS})\\\\/\\"'.encode() in render(doc)


@pytest.mark.parametrize(
    ("status", "vm_type", "expected"),
    [
        ("error", ARM_VM_TYPE, "success"),
        ("error", "Microsoft.Compute/virtualMachines", "success"),
        ("success", ARM_VM_TYPE, "success"),
        ("transitioning", ARM_VM_TYPE, "transitioning"),
        ("error", None, "error"),
        ("error", "microsoft.classiccompute/virtualmachines", "error"),
    ],
)
def test_file_status_forced_only_for_terminal_arm(
    status: str, vm_type: str | None, expected: str
) -> None:
    blob = make(status=status, code=76, consistency="none", health=Health.RED)
    doc = status_file_document(blob, now=NOW, vm_type=vm_type)
    assert inner(doc)["status"] == expected
    # The truth stays: the blob is untouched, the file keeps code and substatus.
    assert inner(blob)["status"] == status
    assert inner(doc)["code"] == "76"
    assert json.loads(inner(doc)["substatus"][0]["name"])[0]["status"]["status"] == status


# --- the atomic write ---------------------------------------------------------------


def test_write_status_file_is_complete_private_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "0.status"
    doc = status_file_document(make(), now=NOW)
    old_umask = os.umask(0)
    try:
        write_status_file(str(path), doc)
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == render(doc)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["0.status"]


def test_write_status_file_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "0.status"
    path.write_text("old")
    path.chmod(0o644)
    before = path.stat().st_ino
    write_status_file(str(path), make())
    assert path.stat().st_ino != before  # renamed over, not rewritten in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_bytes()) == make()


def test_write_failures_leave_no_temp_file(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_status_file(str(tmp_path / "a.status"), {"x": object()})
    with pytest.raises(ValueError):
        write_status_file(str(tmp_path / "a.status"), {"x": float("nan")})
    target = tmp_path / "is-a-dir"
    (target / "child").mkdir(parents=True)
    with pytest.raises(OSError):
        write_status_file(str(target), make())
    with pytest.raises(OSError):
        write_status_file(str(tmp_path / "missing-dir" / "a.status"), make())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["is-a-dir"]


def test_a_concurrent_reader_never_sees_half_a_file(tmp_path: Path) -> None:
    path = tmp_path / "0.status"
    big = make(telemetry={f"k{i}": "v" * 200 for i in range(500)})
    small = make()
    write_status_file(str(path), small)
    stop = threading.Event()
    bad: list[bytes] = []

    def read() -> None:
        while not stop.is_set():
            data = path.read_bytes()
            try:
                json.loads(data)
            except ValueError:
                bad.append(data[:80])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for i in range(60):
            write_status_file(str(path), big if i % 2 else small)
    finally:
        stop.set()
        reader.join(10)
    assert not bad
    assert [p.name for p in tmp_path.iterdir()] == ["0.status"]


# --- secrets (I5) -------------------------------------------------------------------


def _leaks(data: bytes, secrets: list[str]) -> list[str]:
    text = data.decode()
    found = []
    for secret in secrets:
        for form in {secret, unquote(secret), json.dumps(secret)[1:-1]}:
            if len(form) >= 8 and form in text:
                found.append(form)
    return found


@pytest.mark.parametrize("use_redactor", [False, True])
def test_no_sas_signature_reaches_the_status(use_redactor: bool) -> None:
    settings = parse_handler_settings(flat())
    redact = Redactor(settings.secrets) if use_redactor else None
    snapshots = [
        {
            "isSuccessful": True,
            "snapshotUri": url + "&snapshot=2017-11-09T14:23:28.1234567Z",
            "blobUri": url,
            "errorMessage": f"retry of {url} after 409",
        }
        for url in settings.disk_sas_urls
    ]
    blob = make(
        task_id=settings.task_id,
        command_start_ticks=settings.command_start_ticks,
        message=f"snapshot of {settings.disk_sas_urls[0]} done, logs at {LOGS}",
        snapshots=snapshots,
        # A bare secret (no sig= around it) is only found by the job's Redactor.
        telemetry={"statusBlob": str(settings.status_blob_uri)}
        | ({"bare": unquote(ALL_SIGS[0])} if use_redactor else {}),
        job_message=f"uploaded to {settings.logs_blob_uri}",
        **({"redact": redact} if redact else {}),
    )
    file_doc = status_file_document(blob, now=NOW, vm_type=settings.vm_type)
    secrets = [s for s in settings.secrets if len(s) >= 8]
    for data in (render(blob), render(file_doc)):
        assert _leaks(data, secrets) == []
        for sig in ALL_SIGS:
            assert sig not in data.decode()
            assert unquote(sig) not in data.decode()
    # The blobs stay identifiable.
    assert b"acct1.blob.core.windows.net/vhds/os.vhd" in render(blob)
    assert DISK0.split("?")[0] in inner(blob)["snapshotInfo"][0]["blobUri"]


# --- the reference's words (issue 12) -------------------------------------------


@pytest.mark.parametrize(
    ("consistency", "word"),
    [
        (None, "none"),
        ("none", "none"),
        ("filesystem", "fileSystemConsistent"),
        ("application", "applicationConsistent"),
        ("crash", "crashConsistent"),
    ],
)
def test_consistency_type_uses_the_reference_words(
    consistency: Consistency | None, word: str
) -> None:
    assert consistency_type(consistency) == word


def _verdict_for(consistency: str) -> Verdict:
    """A real ``verdict`` whose consistency is ``consistency``."""
    facts: dict[str, Any] = {
        "config_state": "absent",
        "config_error": None,
        "continue_on_failure": True,
        "fs_freeze_enabled": True,
        "pre_error": None,
        "freeze_attempted": True,
        "freeze_ok": True,
        "freeze_error": None,
        "freeze_timed_out": False,
        "snapshot_error": None,
        "disks_ok": 1,
        "disks_total": 1,
        "post_error": None,
        "thaw_error": None,
    }
    variants: dict[str, dict[str, Any]] = {
        "application": {"config_state": "valid"},
        "filesystem": {},
        "crash": {"freeze_ok": False, "freeze_error": ErrorCode.FS_FREEZE_FAILED},
        "none": {"snapshot_error": ErrorCode.SNAPSHOT_FAILED, "disks_ok": 0},
    }
    facts.update(variants[consistency])
    result = verdict(**facts)
    assert result.consistency == consistency
    return result


def _phases(*names: str) -> PhaseRecorder:
    ticks = iter(float(i) for i in range(100))
    recorder = PhaseRecorder(clock=lambda: next(ticks), wall=lambda: 1.0)
    for name in names:
        with recorder.phase(name):
            pass
    return recorder


@pytest.mark.parametrize(
    ("consistency", "word", "code"),
    [
        ("application", "applicationConsistent", "success"),
        ("filesystem", "fileSystemConsistent", "success"),
        ("crash", "crashConsistent", "FsFreezeFailed"),
        ("none", "none", "SnapshotFailed"),
    ],
)
def test_status_telemetry_keeps_the_reference_keys_for_each_verdict(
    consistency: str, word: str, code: str
) -> None:
    final = _verdict_for(consistency)
    data = status_telemetry(
        JobState(config_state="valid" if consistency == "application" else "absent"),
        _phases("freeze", "snapshot", "thaw"),
        final,
    )
    assert data["consistencyType"] == word
    assert data["consistencyReason"] == final.reason  # ours, in its own key
    assert data["extErrorCode"] == code
    assert data["prePostEnabled"] == str(consistency == "application")
    # The reference's timedelta strings: each fake phase lasted exactly 1 s.
    assert data["FreezeTime"] == data["ThawTime"] == data["snapshotTimeTaken"] == "0:00:01"
    assert data["freezeSeconds"] == "1.000000"  # ours stay alongside


def test_status_telemetry_omits_the_times_of_phases_that_never_ran() -> None:
    data = status_telemetry(JobState(), _phases(), None)
    assert not {"FreezeTime", "ThawTime", "snapshotTimeTaken"} & set(data)
    assert data["prePostEnabled"] == "False"


def test_snapshot_info_direct_drive_identifier_is_null() -> None:
    disk = DiskSnapshot(
        index=0,
        blob_url="https://acct.blob.core.windows.net/vhds/os.vhd",
        ok=True,
        snapshot="2026-12-04T10:00:00.0000000Z",
        snapshot_url="https://acct.blob.core.windows.net/vhds/os.vhd?snapshot=x",
        attempts=1,
        started_at=1.0,
        duration_seconds=0.1,
        status_code=201,
        error=None,
        failure_kind=None,
    )
    (entry,) = status_snapshots([disk])
    assert entry["directDriveSnapshotIdentifier"] is None
    (rendered,) = inner(make(snapshots=[entry]))["snapshotInfo"]
    assert rendered["directDriveSnapshotIdentifier"] is None
    assert list(rendered) == SNAPSHOT_KEYS


def test_the_default_name_is_the_reference_published_one() -> None:
    assert REFERENCE_NAME == "Microsoft.Azure.RecoveryServices.VMSnapshotLinux"
    assert inner(make())["name"] == REFERENCE_NAME
    assert inner(make(name="Custom.Name"))["name"] == "Custom.Name"
