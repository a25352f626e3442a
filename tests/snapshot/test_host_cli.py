"""The host path through the real console script: --json output, and SIGKILL mid-dosnapshot (I4)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshot_runtime.snapshot.host import VMBACKUP_CONF_ENV
from snapshot_runtime.snapshot.wireserver import WIRESERVER_ENV
from tests.freeze_support import wait_frozen, writable_within
from tests.support import jobkit
from tests.support.host_service import KEK, TOKEN, HostService, Rig, host_settings, image_disk_fs
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.root]


@pytest.fixture
def cli_rig(
    ws: Workspace, xfs: LoopFs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Rig]:
    with (
        image_disk_fs(xfs.mountpoint) as disk,
        HostService({0: disk.disk(direct_drive=True)}) as host,
    ):
        # The CLI inherits the environment: the emulator's address, no machine conf.
        monkeypatch.setenv(WIRESERVER_ENV, host.address)
        monkeypatch.setenv(VMBACKUP_CONF_ENV, str(tmp_path / "vmbackup.conf"))
        yield Rig(ws, disk, host, tmp_path / "vmbackup.conf")


def test_cli_json_and_every_output_hold_no_token_or_encryption_detail(cli_rig: Rig) -> None:
    rig = cli_rig
    rig.host.script.disk_encryption_settings = KEK
    settings, _ = host_settings(rig.ws, luns=[0], included={"isVMADEEnabled": True})

    result = rig.ws.cli(
        *rig.ws.run_args(settings, config=rig.ws.config(), mounts=[rig.disk.mountpoint])
    )

    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["consistency"] == "application"
    assert len(rig.host.calls_of("dosnapshot")) == 1
    outputs = {"stdout": result.stdout, "stderr": result.stderr, "argv": " ".join(result.args)}
    outputs["log"] = rig.ws.log_path.read_text()
    for root in (rig.ws.spool_dir, rig.ws.state_dir):
        for path in Path(root).rglob("*"):
            if path.is_file():
                outputs[str(path)] = path.read_text(errors="replace")
    for where, text in outputs.items():
        for secret in (TOKEN, KEK, "SECRETKEK"):
            assert secret not in text, f"{secret[:8]}... in {where}"


def test_sigkill_mid_dosnapshot_is_thawed_by_the_watchdog_within_a_second(cli_rig: Rig) -> None:
    rig = cli_rig
    rig.host.script.delay_seconds = {"dosnapshot": 60.0}  # the job sits frozen in dosnapshot
    settings, _ = host_settings(rig.ws, luns=[0])
    args = rig.ws.run_args(
        settings,
        config=rig.ws.config(),
        mounts=[rig.disk.mountpoint],
        extra=["--freeze-timeout", "30", "--quiet"],
    )
    proc = rig.ws.start_cli(*args)

    wait_until(
        lambda: [k for k, _ in rig.host.arrivals if k == "dosnapshot"],
        30,
        "the dosnapshot request to arrive",
        detail=lambda: rig.ws.log_path.read_text() if rig.ws.log_path.exists() else "",
    )
    blocked = wait_frozen(rig.disk.mountpoint, proc)
    for pid in jobkit.child_pids(proc.pid):
        rig.ws.adopt_pid(pid)
    assert not blocked.wait(0.2), "the probe should still be held by the freeze"
    killed_at = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    assert blocked.wait(5.0), "still frozen 5 s after the runtime was SIGKILLed mid-dosnapshot"
    assert blocked.done_at is not None and blocked.error is None
    thawed_after = blocked.done_at - killed_at
    proc.wait(timeout=5)
    print(f"\n[host I4] SIGKILL mid-dosnapshot -> write+fsync done in {thawed_after * 1000:.1f} ms")
    assert thawed_after < 1.0
    assert writable_within(rig.disk.mountpoint, 1.0)
    reports = wait_until(lambda: rig.ws.watchdog_reports(proc.pid), 3.0, "the watchdog's report")
    report = json.loads(Path(reports[-1]).read_text())
    assert report["reason"] == "eof"
    assert [m["mountpoint"] for m in report["mounts"]] == [rig.disk.mountpoint]
    # One presnapshot before the freeze, one dosnapshot, nothing after.
    assert [k for k, _ in rig.host.arrivals] == ["presnapshot", "dosnapshot"]
