"""The host-path rig for the workload tests: a "VM disk" (ext4 image on XFS reflink)
the job freezes and the host-service emulator clones (see tests/snapshot/test_host_job.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshot_runtime.snapshot.host import VMBACKUP_CONF_ENV
from snapshot_runtime.snapshot.wireserver import WIRESERVER_ENV
from tests.support.host_service import HostService, Rig, image_disk_fs
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs


@pytest.fixture
def rig(
    ws: Workspace, xfs: LoopFs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Rig]:
    with (
        image_disk_fs(xfs.mountpoint, size_mb=256) as disk,
        HostService({0: disk.disk(direct_drive=True)}) as host,
    ):
        conf = tmp_path / "vmbackup.conf"
        monkeypatch.setenv(WIRESERVER_ENV, host.address)
        monkeypatch.setenv(VMBACKUP_CONF_ENV, str(conf))  # never the machine's own
        yield Rig(ws, disk, host, conf)
