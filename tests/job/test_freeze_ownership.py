"""A job never claims a freeze it did not hold (issue 11, defect 1).

* A mount someone else froze (FIFREEZE answers EBUSY) is left as its owner
  froze it, and the verdict is at most crash (``freeze_not_owned``, warning
  ``FsFreezeNotOwned``) in the report, the status file and the job record.
* Two ``snapshot-runtime run`` processes on one machine never overlap: the
  single-job lock (the handler daemon's) refuses the second at once with
  ``JobAlreadyRunning`` and a status that says so; it freezes and snapshots
  nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from snapshot_sidecar.ingest import apply_record
from snapshot_sidecar.metrics import MetricValues
from snapshot_sidecar.spool_reader import JobRecord

from snapshot_runtime.freeze.ioctl import KernelFreezeIoctl
from tests.freeze_support import writable_within
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs, loop_filesystem

pytestmark = [pytest.mark.root, pytest.mark.azurite]


@pytest.fixture
def ext4() -> Iterator[LoopFs]:
    with loop_filesystem("ext4") as fs:
        yield fs


def test_a_mount_frozen_by_someone_else_is_at_most_crash_and_stays_frozen(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    disks = jobkit.make_disks(azurite, 1)
    task_id = "not-owned_1"
    settings = ws.settings(disks, task_id=task_id)
    config = ws.config()
    # The state, log and spool live in the workspace, not on the frozen mount.
    ioctl = KernelFreezeIoctl()
    fd = ioctl.open_mount(ext4.mountpoint)
    try:
        ioctl.freeze(fd)  # the "someone else": this test holds the freeze
        try:
            report = ws.run(settings, config_path=config, include_mounts=(ext4.mountpoint,))

            # Still frozen: the job left the owner's freeze alone.
            assert not writable_within(ext4.mountpoint, 0.5)
        finally:
            ioctl.thaw(fd)
    finally:
        ioctl.close(fd)
    assert writable_within(ext4.mountpoint, 10.0)

    assert (report.consistency, report.consistency_reason) == ("crash", "freeze_not_owned")
    assert report.warnings == ("FsFreezeNotOwned",)
    assert report.error_code == "FsFreezeNotOwned"
    assert report.snapshot_taken and report.status_code == 1
    assert report.freeze is not None
    (mount,) = report.freeze.mounts
    assert (mount.already_frozen, mount.frozen) == (True, False)
    assert report.disks[0].ok

    # The status file: success, but crash consistent (3), not application (2).
    doc = json.loads(ws.status_file(task_id).read_text())
    assert doc[0]["status"]["status"] == "success"
    assert jobkit.status_inner(doc)["snapshotConsistency"] == 3
    assert "freeze_not_owned" in jobkit.status_inner(doc)["messageStr"]
    # The job record (what the sidecar turns into metrics) carries the verdict.
    record = json.loads((ws.state_dir / "jobs" / f"{task_id}.json").read_text())["record"]
    assert (record["consistency"], record["consistency_reason"]) == ("crash", "freeze_not_owned")
    assert record["warnings"] == ["FsFreezeNotOwned"]
    # What the sidecar counts from that record.
    values = MetricValues()
    apply_record(values, JobRecord.parse(record))
    assert values.counter("vmsnap_jobs_total", ("success", "crash")) == 1
    assert values.counter("vmsnap_jobs_total", ("success", "application")) == 0
    assert values.counter("vmsnap_job_warnings_total", ("freeze",)) == 1  # FsFreezeNotOwned


HOLDING_PRE_SCRIPT = """\
#!/bin/sh
# Marks that it runs, then holds the job in its pre-script until released.
marks="$1"
touch "$marks/pre.started.$$"
i=0
while [ ! -e "$marks/release" ] && [ $i -lt 600 ]; do
  sleep 0.05
  i=$((i + 1))
done
"""


def wait_for(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} not within {within}s")


def test_a_second_run_while_one_runs_fails_at_once_and_freezes_nothing(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    pre = ws.script("hold.sh", HOLDING_PRE_SCRIPT)
    post = ws.script("post.sh", jobkit.POST_SCRIPT)
    config = ws.config(pre=pre, post=post, timeoutInSeconds=60)
    first_disks = jobkit.make_disks(azurite, 1)
    second_disks = jobkit.make_disks(azurite, 1)
    first_settings = ws.settings(first_disks, task_id="first_1", name="1.settings")
    second_settings = ws.settings(second_disks, task_id="second_1", name="2.settings")
    mounts = [ext4.mountpoint]

    first = ws.start_cli(*ws.run_args(first_settings, config=config, mounts=mounts))
    wait_for(lambda: bool(list(ws.marks.glob("pre.started.*"))), 30.0, "first pre-script")
    started = list(ws.marks.glob("pre.started.*"))

    began = time.monotonic()
    second = ws.start_cli(*ws.run_args(second_settings, config=config, mounts=mounts))
    try:
        second_out, _ = second.communicate(timeout=20)
    finally:
        (ws.marks / "release").touch()
    refused_in = time.monotonic() - began
    first_out, _ = first.communicate(timeout=60)

    # The second job: refused at once, before its pre-script, no freeze, no snapshot.
    assert second.returncode == 14, second_out
    refused = json.loads(second_out)
    assert (refused["consistency"], refused["errorCode"]) == ("none", "JobAlreadyRunning")
    assert "another job is running" in refused["errorMessage"]
    assert "first_1" in refused["errorMessage"]
    assert refused["mounts"] == [] and refused["freeze"] is None
    assert [p["name"] for p in refused["phases"]] == ["settings", "status_end"]
    assert len(list(ws.marks.glob("pre.started.*"))) == len(started) == 1
    assert jobkit.snapshots_of(azurite, jobkit.strip(second_disks[0])) == []
    doc = json.loads(ws.status_file("second_1").read_text())
    # (An ARM VM's terminal status is always "success" on file: the code says it.)
    assert doc[0]["status"]["code"] == "14"
    assert "another job is running" in jobkit.status_inner(doc)["messageStr"]
    print(f"\nsecond run refused in {refused_in:.3f}s")

    # The first job: the only one that froze; application consistent.
    assert first.returncode == 0, first_out
    done = json.loads(first_out)
    assert (done["consistency"], done["consistencyReason"]) == (
        "application",
        "application_consistent",
    )
    assert [m["frozen"] for m in done["mounts"]] == [True]
    assert not any(m["alreadyFrozen"] for m in done["mounts"])
    assert os.path.exists(ws.mark("post.ran"))
    assert Path(ext4.mountpoint).is_dir()


def test_a_foreign_freeze_on_a_two_disk_job_takes_no_snapshot(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    disks = jobkit.make_disks(azurite, 2)
    settings = ws.settings(disks)
    ioctl = KernelFreezeIoctl()
    fd = ioctl.open_mount(ext4.mountpoint)
    try:
        ioctl.freeze(fd)
        try:
            report = ws.run(settings, config_path=ws.config(), include_mounts=(ext4.mountpoint,))
            assert not writable_within(ext4.mountpoint, 0.5)
        finally:
            ioctl.thaw(fd)
    finally:
        ioctl.close(fd)

    # Several disks not covered by a freeze we hold are not consistent with each other.
    assert (report.consistency, report.consistency_reason) == (
        "none",
        "freeze_not_owned_multi_disk",
    )
    assert (report.error_code, report.status_code) == ("FsFreezeNotOwned", 124)
    assert not report.snapshot_taken
    assert all(jobkit.snapshots_of(azurite, jobkit.strip(url)) == [] for url in disks)
    assert ws.mark("post.ran").exists()
