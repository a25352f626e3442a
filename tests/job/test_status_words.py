"""A real job's status file in the reference's words, run without a handler
directory (``run --settings``), and vmbackup.conf's UploadStatusAndLog switch."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from azure.core.exceptions import ResourceNotFoundError

from snapshot_runtime import __version__
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.handlerkit import agent_status_problems
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs, loop_filesystem

pytestmark = [pytest.mark.root, pytest.mark.azurite]


@pytest.fixture
def ext4() -> Iterator[LoopFs]:
    with loop_filesystem("ext4") as fs:
        yield fs


def test_without_a_handler_the_published_name_and_our_version(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    disks = jobkit.make_disks(azurite, 1)
    container, blob, status_url = jobkit.status_blob_url(azurite)
    settings = ws.settings(disks, task_id="words_1", status_url=status_url)
    report = ws.run(settings, include_mounts=(ext4.mountpoint,))  # no plugin config
    assert report.consistency == "filesystem" and report.status_upload == "ok"
    file_doc = json.loads(ws.status_file("words_1").read_text())
    blob_doc = json.loads(jobkit.blob_bytes(azurite, container, blob))
    for doc in (file_doc, blob_doc):
        assert agent_status_problems(doc) == []
        assert doc[0]["version"] == __version__
        assert doc[0]["status"]["name"] == "Microsoft.Azure.RecoveryServices.VMSnapshotLinux"
    status = blob_doc[0]["status"]
    (info,) = status["snapshotInfo"]
    assert info["directDriveSnapshotIdentifier"] is None
    data = {p["Key"]: p["Value"] for p in status["telemetryData"]}
    assert data["consistencyType"] == "fileSystemConsistent"
    assert data["consistencyReason"] == report.consistency_reason
    assert (data["extErrorCode"], data["prePostEnabled"]) == ("success", "False")
    assert {"FreezeTime", "ThawTime", "snapshotTimeTaken"} <= set(data)
    assert status["vmHealthInfo"] == {"vmHealthState": 0, "vmHealthStatusCode": 0}
    assert json.loads(status["formattedMessage"]["message"])["snapshotConsistency"] == 1


def test_upload_status_off_keeps_the_file_and_skips_the_blob(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    disks = jobkit.make_disks(azurite, 1)
    container, blob, status_url = jobkit.status_blob_url(azurite)
    settings = ws.settings(disks, task_id="noupload_1", status_url=status_url)
    report = ws.run(settings, include_mounts=(ext4.mountpoint,), upload_status=False)
    assert report.snapshot_taken
    assert report.status_upload == "skipped: UploadStatusAndLog is off"
    assert json.loads(ws.status_file("noupload_1").read_text())[0]["status"]["code"] == "1"
    with pytest.raises(ResourceNotFoundError):
        jobkit.blob_bytes(azurite, container, blob)
