"""The host backend's pure parts: status mapping, telemetry keys, mode -> backend names."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading

import pytest

from snapshot_runtime.core.snapshot_mode import ModeInputs, choose_mode
from snapshot_runtime.inputs.settings import parse_handler_settings
from snapshot_runtime.job.status_document import render, status_document
from snapshot_runtime.snapshot.backend import SnapshotRequest
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.snapshot.host import (
    HostSnapshotResult,
    HostSnapshotter,
    host_status_entry,
    host_telemetry,
    mode_backend_names,
)
from snapshot_runtime.snapshot.results import SnapshotResult
from snapshot_runtime.snapshot.wireserver import DdIdentifier, HostDiskInfo
from tests.support.host_service import HostService, ImageDisk
from tests.support.jobkit import encode_object_str
from tests.support.loopfs import LoopFs

XSTORE_URI = (
    "https://md-x.z27.blob.storage.azure.net:443/c/abcd?snapshot=2026-08-06T12:00:05.1234567Z"
)
DD_URI = "https://md-dd-1.z48.disk.storage.azure.net/disks/guid/snapshots?snapshotId=ID"


def test_xstore_entry_maps_as_the_reference() -> None:
    entry = host_status_entry(HostDiskInfo("true", True, XSTORE_URI, None, 200, None))
    assert entry == {
        "isSuccessful": "true",
        "snapshotUri": XSTORE_URI,
        "errorMessage": None,
        "blobUri": "https://md-x.z27.blob.storage.azure.net:443/c/abcd",
        "directDriveSnapshotIdentifier": None,
    }


def test_direct_drive_entry_maps_as_the_reference() -> None:
    dd = DdIdentifier(1627726057659, "ID", "DDTOKEN", 1440)
    entry = host_status_entry(HostDiskInfo("true", True, DD_URI, None, 200, dd))
    assert entry["snapshotUri"] is None
    assert entry["blobUri"] == "https://md-dd-1.z48.disk.storage.azure.net/disks/guid"
    assert entry["directDriveSnapshotIdentifier"] == {
        "creationTime": {"DateTime": "/Date(1627726057659)/", "OffsetMinutes": 0},
        "id": "ID",
        "token": "DDTOKEN",
        "instantAccessDurationMinutes": 1440,
    }


def test_status_document_keeps_the_dd_object_and_escapes_its_date() -> None:
    import datetime as dt

    dd = DdIdentifier(1627726057659, "ID", "DDTOKEN", None)
    doc = status_document(
        task_id="t",
        status="success",
        code=1,
        message="m",
        consistency="filesystem",
        command_start_ticks=None,
        snapshots=[host_status_entry(HostDiskInfo("true", True, DD_URI, None, 200, dd))],
        telemetry={},
        health=0,  # type: ignore[arg-type]
        unique_machine_id="m",
        now=dt.datetime(2026, 8, 6, tzinfo=dt.timezone.utc),
        extension_version="1",
    )
    (info,) = doc[0]["status"]["snapshotInfo"]  # type: ignore[index]
    assert info["isSuccessful"] is True
    assert info["directDriveSnapshotIdentifier"]["id"] == "ID"
    rendered = render(doc)
    assert b'"DateTime":"\\/Date(1627726057659)\\/"' in rendered
    assert json.loads(rendered) == doc


def _result(**kw: object) -> HostSnapshotResult:
    return HostSnapshotResult(
        disks=(),
        ok=True,
        error=None,
        error_message=None,
        duration_seconds=0,
        deadline_hit=False,
        **kw,  # type: ignore[arg-type]
    )


def test_telemetry_keys() -> None:
    assert host_telemetry(_result(presnapshot_code=200, dosnapshot_code=556), "host", []) == {
        "snapshotCreator": "backupHostService",
        "hostStatusCodePreSnapshot": "200",
        "hostStatusCodeDoSnapshot": "556",
    }
    guest = SnapshotResult((), True, None, None, 0, False)
    declined = [("host", "presnapshot 555: connect: ConnectionRefusedError")]
    assert host_telemetry(guest, "azure_blob", declined) == {
        "snapshotCreator": "guestExtension",
        "hostStatusCodePreSnapshot": "555",
    }
    assert host_telemetry(guest, "azure_blob", []) == {"snapshotCreator": "guestExtension"}
    assert host_telemetry(None, None, []) == {}


@pytest.mark.parametrize(
    ("mode", "guest", "names"),
    [
        ("firstHostThenGuest", True, ("host", "azure_blob")),
        ("firstHostThenGuest", False, ("host",)),
        ("onlyHost", True, ("host_required",)),
        ("onlyGuest", True, ("azure_blob",)),
        ("onlyGuest", False, ()),
        ("firstGuestThenHost", True, ("azure_blob", "host_required")),
        ("firstGuestThenHost", False, ("host_required",)),
    ],
)
def test_mode_backend_names(mode: str, guest: bool, names: tuple[str, ...]) -> None:
    assert (
        mode_backend_names(choose_mode(ModeInputs(configured_mode=mode)), guest_available=guest)
        == names
    )


def test_a_contradictory_request_names_no_backend() -> None:
    choice = choose_mode(ModeInputs(any_disk_excluded=True, vmgs_blob_included=True))
    assert mode_backend_names(choice, guest_available=True) == ()


# -- I1: snapshot_all sends the prepared request and nothing else ------------------------

_recording: list[tuple[str, str]] | None = None
_main_thread = threading.get_ident()
_FORBIDDEN = {
    "open",
    "import",
    "socket.connect",
    "socket.getaddrinfo",
    "subprocess.Popen",
    "os.system",
    "os.remove",
    "os.rename",
    "os.mkdir",
}


def _audit(event: str, args: tuple[object, ...]) -> None:
    # Only the runtime's thread: the emulator serves (and clones files) on its own threads.
    if _recording is not None and event in _FORBIDDEN and threading.get_ident() == _main_thread:
        _recording.append((event, repr(args)[:120]))


_hook_installed = False


def test_snapshot_all_does_only_the_one_request(
    xfs: LoopFs, caplog: pytest.LogCaptureFixture
) -> None:
    global _recording, _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)  # cannot be removed: it records only while asked to
        _hook_installed = True
    image = os.path.join(xfs.mountpoint, "disk.img")
    with open(image, "wb") as fh:
        fh.write(b"d" * 65536)
    obj = {"snapshotTaskToken": "tok", "includedDisks": {"dataDiskLunList": [0]}}
    settings = parse_handler_settings(
        {
            "publicSettings": {
                "taskId": "t1",
                "commandToExecute": "snapshot",
                "objectStr": encode_object_str(obj),
            },
            "protectedSettings": {},
        }
    )
    request = SnapshotRequest(settings=settings, policy=BlobPolicy(), deadline_seconds=10.0)
    with HostService({0: ImageDisk(image, xfs.mountpoint)}) as host:
        snapper = HostSnapshotter(request, address=("127.0.0.1", host.port))
        try:
            assert snapper.decide().use
            assert snapper.prepare() == []
            threads_before = set(threading.enumerate())
            caplog.set_level(logging.DEBUG)
            caplog.clear()
            _recording = []
            try:
                result = snapper.snapshot_all()
            finally:
                events, _recording = _recording, None
        finally:
            snapper.close()
    assert result.ok and [d.ok for d in result.disks] == [True]
    assert events == []  # no file opened, no import, no DNS, no new connection
    assert caplog.records == []  # not a single log record, even at DEBUG
    # No thread of the runtime's: the only new ones serve the emulator's requests.
    new_threads = set(threading.enumerate()) - threads_before
    assert all("process_request_thread" in t.name for t in new_threads), new_threads
    assert len(host.calls_of("dosnapshot")) == 1
