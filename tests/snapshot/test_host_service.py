"""The host-service emulator itself, on real parts: Azurite blob snapshots, XFS reflink clones."""

from __future__ import annotations

import http.client
import json
import os
import re
from typing import Any

import pytest

from tests.support.azurite import Azurite
from tests.support.host_service import (
    API_VERSION,
    DOSNAPSHOT_PATH,
    PRESNAPSHOT_PATH,
    SNAPSHOT_COUNT_MESSAGE,
    BlobDisk,
    Fault,
    HostService,
    ImageDisk,
    ficlone,
    image_disk_fs,
    restored,
)
from tests.support.jobkit import snapshot_exists
from tests.support.loopfs import LoopFs
from tests.support.waiting import wait_until

HEADERS = {"Backup": "true", "Content-type": "application/json", "UserAgent": "VMSnapshot"}


def post(
    host: HostService, path: str, body: object, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=10)
    try:
        conn.request("POST", f"{path}?{API_VERSION}", json.dumps(body).encode(), headers or HEADERS)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def dosnapshot(host: HostService, luns: list[int], **extra: Any) -> dict[str, Any]:
    status, raw = post(host, DOSNAPSHOT_PATH, {"taskId": "t1", "diskIds": luns, **extra})
    assert status == 200
    answer: dict[str, Any] = json.loads(raw)
    return answer


def test_presnapshot_answers_200_with_response_time_and_records_the_call() -> None:
    with HostService({}) as host:
        status, raw = post(host, PRESNAPSHOT_PATH, {"taskId": "t1", "snapshotTaskToken": "tok"})
        assert status == 200
        answer = json.loads(raw)
        assert set(answer["responseTime"]) == {"year", "month", "day", "hour", "minute", "second"}
        (call,) = host.calls_of("presnapshot")
        assert call.body == {"taskId": "t1", "snapshotTaskToken": "tok"}
        assert call.answered_status == 200
        assert call.received_monotonic <= call.answered_monotonic
        assert call.headers["useragent"] == "VMSnapshot"


def test_presnapshot_returns_ade_details_when_asked() -> None:
    with HostService({}) as host:
        host.script.ade_os_encrypted = True
        host.script.disk_encryption_settings = {"kek": "x"}
        body = {
            "taskId": "t",
            "snapshotTaskToken": "",
            "preSnapshotSettings": [{"Key": "isVMADEEnabled", "Value": True}],
        }
        answer = json.loads(post(host, PRESNAPSHOT_PATH, body)[1])
        assert answer["isOsDiskADEEncrypted"] is True
        assert answer["areDataDisksADEEncrypted"] is False
        assert answer["DiskEncryptionSettings"] == {"kek": "x"}


def test_calls_without_the_reference_headers_are_refused_and_recorded() -> None:
    with HostService({}) as host:
        status, _ = post(host, PRESNAPSHOT_PATH, {"taskId": "t"}, {"Content-type": "text/plain"})
        assert status == 400
        assert [c.answered_status for c in host.calls_of("presnapshot")] == [400]


@pytest.mark.parametrize(
    ("fault", "status", "body"),
    [
        (Fault("status", 500, b""), 500, b""),
        (Fault("status", 404, b"not here"), 404, b"not here"),
        (Fault("empty"), 200, b""),
        (Fault("not_json"), 200, b"<html>oops</html>"),
    ],
)
def test_scripted_http_faults(fault: Fault, status: int, body: bytes) -> None:
    with HostService({}) as host:
        host.script.presnapshot = fault
        host.script.dosnapshot = fault
        assert post(host, PRESNAPSHOT_PATH, {"taskId": "t"}) == (status, body)
        assert post(host, DOSNAPSHOT_PATH, {"taskId": "t", "diskIds": [0]}) == (status, body)
        assert host.snapshots == []


def test_dropped_and_hung_calls() -> None:
    with HostService({}) as host:
        host.script.presnapshot = Fault("drop")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            post(host, PRESNAPSHOT_PATH, {"taskId": "t"})
        host.script.presnapshot = Fault("hang")
        conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=0.5)
        conn.request("POST", f"{PRESNAPSHOT_PATH}?{API_VERSION}", b"{}", HEADERS)
        with pytest.raises(TimeoutError):
            conn.getresponse()
        conn.close()
    # close() released the hung handler, which records it as unanswered on its own
    # (daemon) thread: wait for that, then check.
    wait_until(lambda: len(host.calls_of("presnapshot")) == 2, 10, "the hung call's record")
    assert [c.answered_status for c in host.calls_of("presnapshot")] == [None, None]


def test_a_page_blob_lun_gets_a_real_azurite_snapshot(azurite: Azurite) -> None:
    container = azurite.container()
    azurite.create_page_blob(container, "os.vhd")
    azurite.create_page_blob(container, "data0.vhd")
    luns = {-1: BlobDisk(container, "os.vhd"), 0: BlobDisk(container, "data0.vhd")}
    with HostService(
        luns,
        blob_connection_string=azurite.connection_string,
        blob_endpoint=azurite.endpoint,
    ) as host:
        answer = dosnapshot(host, [0, -1], snapshotMetadata=[{"Key": "BackupJob", "Value": "j1"}])
    entries = answer["snapshotInfo"]
    assert [e["isSuccessful"] for e in entries] == ["true", "true"]
    for entry, blob in zip(entries, ["data0.vhd", "os.vhd"], strict=True):
        uri = entry["snapshotUri"]
        base, _, stamp = uri.partition("?snapshot=")
        assert base == f"{azurite.endpoint}/{container}/{blob}"
        assert snapshot_exists(azurite, base, stamp)
        assert entry["ddSnapshotIdentifier"] is None
    snap = (
        azurite.service()
        .get_blob_client(container, "data0.vhd", snapshot=host.snapshots[0].blob_snapshot)
        .get_blob_properties()
    )
    assert snap.metadata == {"BackupJob": "j1"}


def test_per_lun_failures_unknown_luns_and_all_false(azurite: Azurite) -> None:
    container = azurite.container()
    azurite.create_page_blob(container, "d0.vhd")
    azurite.create_page_blob(container, "d1.vhd")
    luns = {0: BlobDisk(container, "d0.vhd"), 1: BlobDisk(container, "d1.vhd")}
    with HostService(
        luns, blob_connection_string=azurite.connection_string, blob_endpoint=azurite.endpoint
    ) as host:
        host.script.failed_luns = {1: SNAPSHOT_COUNT_MESSAGE}
        entries = dosnapshot(host, [0, 1, 7])["snapshotInfo"]
        assert [e["isSuccessful"] for e in entries] == ["true", "false", "false"]
        assert entries[1]["errorMessage"] == SNAPSHOT_COUNT_MESSAGE
        assert entries[1]["snapshotUri"] is None
        assert "LUN 7" in entries[2]["errorMessage"]
        assert [s.lun for s in host.snapshots] == [0]

        host.script.failed_luns = {}
        host.script.dosnapshot = Fault("all_false")
        entries = dosnapshot(host, [0, 1])["snapshotInfo"]
        assert [e["isSuccessful"] for e in entries] == ["false", "false"]
        assert [s.lun for s in host.snapshots] == [0]


def test_reflink_clone_holds_the_source_at_clone_time_and_diverges_after(xfs: LoopFs) -> None:
    source = os.path.join(xfs.mountpoint, "disk.img")
    with open(source, "wb") as fh:
        fh.write(b"A" * 1024 * 1024)
    clone_dir = os.path.join(xfs.mountpoint, "clones")
    os.mkdir(clone_dir)
    with HostService({3: ImageDisk(source, clone_dir)}) as host:
        entries = dosnapshot(host, [3])["snapshotInfo"]
    assert entries[0]["isSuccessful"] == "true"
    (taken,) = host.snapshots
    assert taken.clone_path is not None
    with open(taken.clone_path, "rb") as fh:
        assert fh.read() == b"A" * 1024 * 1024
    with open(source, "r+b") as fh:
        fh.write(b"B" * 4096)
    with open(taken.clone_path, "rb") as fh:
        assert fh.read(4096) == b"A" * 4096
    with open(source, "rb") as fh:
        assert fh.read(4096) == b"B" * 4096


def test_ficlone_refuses_a_filesystem_without_reflink(ext4: LoopFs) -> None:
    # ext4 has no reflink: the emulator never silently falls back to a slow copy.
    source = os.path.join(ext4.mountpoint, "disk.img")
    with open(source, "wb") as fh:
        fh.write(b"x" * 4096)
    with pytest.raises(OSError):
        ficlone(source, os.path.join(ext4.mountpoint, "clone.img"))
    assert not os.path.exists(os.path.join(ext4.mountpoint, "clone.img"))


def test_direct_drive_lun_of_a_mounted_disk_restores_its_files(xfs: LoopFs) -> None:
    with image_disk_fs(xfs.mountpoint) as disk:
        with open(os.path.join(disk.mountpoint, "data.txt"), "w") as fh:
            fh.write("before the snapshot\n")
        os.sync()
        with HostService({0: disk.disk(direct_drive=True)}) as host:
            entries = dosnapshot(host, [0], instantAccessDurationMinutes=60)["snapshotInfo"]
        with open(os.path.join(disk.mountpoint, "data.txt"), "w") as fh:
            fh.write("after the snapshot\n")
        os.sync()
        (entry,) = entries
        assert entry["isSuccessful"] == "true"
        dd = entry["ddSnapshotIdentifier"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", dd["creationTime"])
        assert dd["instantAccessDurationMinutes"] == 60
        assert f"/snapshots?snapshotId={dd['id']}" in entry["snapshotUri"]
        (taken,) = host.snapshots
        assert taken.clone_path is not None
        with restored(taken.clone_path) as mnt, open(os.path.join(mnt, "data.txt")) as fh:
            assert fh.read() == "before the snapshot\n"
