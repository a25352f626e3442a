"""The frozen window's seams (docs/snapshot-backends.md), proven with real jobs.

The freezer seam: a ``Freezer`` of the test's own (a ``FreezeSession`` without
the watchdog, recording the calls) handed to ``run_job`` as a factory.

A second backend lives in this module only: ``ImageCopySnapshotter`` snapshots
each disk's IMAGE FILE by copying it while the filesystem on it is really
frozen, and the copy is mounted afterwards to show what it holds. It is handed
to ``run_job`` through the backend table (the registry's ``BACKENDS`` plus one
line), so neither ``frozen_window.py`` nor the registry module changes for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from snapshot_runtime.core.redact import strip_sas
from snapshot_runtime.freeze.freezer import Freezer
from snapshot_runtime.freeze.mounts import FreezePlan
from snapshot_runtime.freeze.session import FreezeSession
from snapshot_runtime.freeze.state import FreezeResult
from snapshot_runtime.job.run import run_job
from snapshot_runtime.snapshot.backend import BackendDecision, SnapshotRequest, Snapshotter
from snapshot_runtime.snapshot.registry import BACKENDS
from snapshot_runtime.snapshot.results import DiskSnapshot, SnapshotResult, aggregate
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs, loop_filesystem

pytestmark = [pytest.mark.root, pytest.mark.azurite]


@pytest.fixture
def ext4() -> Iterator[LoopFs]:
    with loop_filesystem("ext4") as fs:
        yield fs


@dataclass
class Calls:
    """What the job asked of a backend, in order, with monotonic times of the copies."""

    steps: list[str] = field(default_factory=list)
    copied: list[tuple[float, float]] = field(default_factory=list)


class ImageCopySnapshotter:
    """Snapshots disk i by copying ``images[i]`` into ``target`` (a real effect)."""

    def __init__(self, request: SnapshotRequest, images: list[str], target: Path, calls: Calls):
        self._urls = request.settings.disk_sas_urls
        self._images = images
        self._target = target
        self._calls = calls

    def decide(self) -> BackendDecision:
        self._calls.steps.append("decide")
        if len(self._images) != len(self._urls):
            return BackendDecision.decline("one image per disk needed")
        return BackendDecision.accept()

    def prepare(self) -> list[DiskSnapshot]:
        self._calls.steps.append("prepare")
        self._target.mkdir(parents=True, exist_ok=True)
        return []

    def snapshot_all(self) -> SnapshotResult:
        self._calls.steps.append("snapshot_all")
        disks = []
        start = time.monotonic()
        for index, image in enumerate(self._images):
            began = time.monotonic()
            copy = self._target / f"disk{index}.img"
            shutil.copyfile(image, copy)
            ended = time.monotonic()
            self._calls.copied.append((began, ended))
            disks.append(
                DiskSnapshot(
                    index=index,
                    blob_url=strip_sas(self._urls[index]),
                    ok=True,
                    snapshot=str(copy),
                    snapshot_url=str(copy),
                    attempts=1,
                    started_at=began,
                    duration_seconds=ended - began,
                    status_code=None,
                    error=None,
                    failure_kind=None,
                )
            )
        code, message = aggregate(disks, deadline_hit=False)
        return SnapshotResult(
            disks=tuple(disks),
            ok=code is None,
            error=code,
            error_message=message,
            duration_seconds=time.monotonic() - start,
            deadline_hit=False,
        )

    def close(self) -> None:
        self._calls.steps.append("close")


class DecliningSnapshotter:
    """A backend that always answers "not me" (as the host path does without a WireServer)."""

    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    def decide(self) -> BackendDecision:
        self._calls.steps.append("decide")
        return BackendDecision.decline("no host snapshot endpoint on this machine")

    def prepare(self) -> list[DiskSnapshot]:  # pragma: no cover - never reached
        raise AssertionError("prepare() after a decline")

    def snapshot_all(self) -> SnapshotResult:  # pragma: no cover - never reached
        raise AssertionError("snapshot_all() after a decline")

    def close(self) -> None:
        self._calls.steps.append("close")


@contextlib.contextmanager
def read_only_mount(image: Path, mountpoint: Path) -> Iterator[Path]:
    # noload: no journal replay, so only what the freeze wrote to the image counts.
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "ext4", "-o", "ro,loop,noload", str(image), str(mountpoint)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=60, check=False)


def test_a_second_backend_snapshots_disk_images_inside_a_real_freeze(
    azurite: Azurite, ws: Workspace, ext4: LoopFs, tmp_path: Path
) -> None:
    calls = Calls()
    target = tmp_path / "snapshots"

    def image_copy(request: SnapshotRequest) -> Snapshotter:
        return ImageCopySnapshotter(request, [ext4.image], target, calls)

    # Written, not synced: only the freeze's sync puts it into the image.
    marker = Path(ext4.mountpoint) / "written-before-the-job.txt"
    marker.write_text("quiesced\n")

    report = run_job(
        ws.options(
            ws.settings(jobkit.make_disks(azurite, 1)),
            config_path=ws.config(),
            include_mounts=(ext4.mountpoint,),
            snapshot_backends=("image_copy",),
        ),
        backends={**BACKENDS, "image_copy": image_copy},
    )

    assert (report.consistency, report.consistency_reason) == (
        "application",
        "application_consistent",
    )
    assert (report.snapshot_backend, report.backends_declined) == ("image_copy", ())
    assert calls.steps == ["decide", "prepare", "snapshot_all", "close"]
    # The copy ran inside the real frozen window.
    freeze = report.freeze
    assert freeze is not None and freeze.ok and freeze.mounts[0].frozen
    assert freeze.first_freeze_at is not None and freeze.last_thaw_at is not None
    ((began, ended),) = calls.copied
    assert freeze.first_freeze_at < began < ended < freeze.last_thaw_at
    (disk,) = report.disks
    assert disk.ok and disk.snapshot == str(target / "disk0.img")
    # The copy is a consistent filesystem holding what was written before the freeze.
    with read_only_mount(Path(disk.snapshot), tmp_path / "copy") as mounted:
        assert (mounted / marker.name).read_text() == "quiesced\n"
    # Nothing was snapshotted in Azurite: the blob backend was not used.
    assert jobkit.snapshots_of(azurite, disk.blob_url) == []


def test_a_declining_backend_falls_back_and_the_reason_is_recorded(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    calls = Calls()
    disks = jobkit.make_disks(azurite, 2)

    report = run_job(
        ws.options(
            ws.settings(disks),
            config_path=ws.config(),
            include_mounts=(ext4.mountpoint,),
            snapshot_backends=("host", "azure_blob"),
        ),
        backends={**BACKENDS, "host": lambda request: DecliningSnapshotter(calls)},
    )

    # Declined before any freeze, closed at once; the blob backend took over.
    assert calls.steps == ["decide", "close"]
    assert report.snapshot_backend == "azure_blob"
    assert report.backends_declined == (("host", "no host snapshot endpoint on this machine"),)
    assert (report.consistency, report.consistency_reason) == (
        "application",
        "application_consistent",
    )
    for disk in report.disks:
        assert disk.ok and jobkit.snapshot_exists(azurite, disk.blob_url, disk.snapshot)
    log = ws.log_path.read_text()
    assert "snapshot backend host declined: no host snapshot endpoint on this machine" in log
    # The prepare span reports the choice and the decline.
    state = json.loads((ws.state_dir / "jobs" / f"{report.task_id}.json").read_text())
    (prepare,) = [s for s in state["spans"] if s["name"] == "vmsnap.prepare"]
    assert prepare["attributes"]["vmsnap.snapshot_backend"] == "azure_blob"
    assert prepare["attributes"]["vmsnap.snapshot_backends_declined"] == [
        "host: no host snapshot endpoint on this machine"
    ]


def test_every_backend_declining_takes_no_snapshot_and_freezes_nothing(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    calls = Calls()
    disks = jobkit.make_disks(azurite, 1)

    report = run_job(
        ws.options(
            ws.settings(disks),
            config_path=ws.config(),
            include_mounts=(ext4.mountpoint,),
            snapshot_backends=("host", "no-such-backend"),
        ),
        backends={**BACKENDS, "host": lambda request: DecliningSnapshotter(calls)},
    )

    assert report.snapshot_backend is None
    assert report.backends_declined == (
        ("host", "no host snapshot endpoint on this machine"),
        ("no-such-backend", "unknown backend"),
    )
    assert not report.snapshot_taken and report.error_code == "SnapshotFailed"
    assert report.freeze is None
    assert "freeze" not in [p.name for p in report.phases]
    assert jobkit.snapshots_of(azurite, jobkit.strip(disks[0])) == []
    assert os.path.exists(ws.mark("post.ran"))


class UnguardedFreezer:
    """A real freeze without the out-of-process watchdog, recording what the job called."""

    def __init__(self, plan: FreezePlan, calls: Calls) -> None:
        self._session = FreezeSession(plan, timeout_seconds=30, use_watchdog=False)
        self._calls = calls

    def prepare(self) -> None:
        self._calls.steps.append("prepare")
        self._session.prepare()

    def freeze(self) -> bool:
        self._calls.steps.append("freeze")
        return self._session.freeze()

    def thaw(self) -> FreezeResult:
        self._calls.steps.append("thaw")
        return self._session.thaw()

    @property
    def already_frozen(self) -> tuple[str, ...]:
        return self._session.already_frozen


def test_the_job_freezes_through_the_injected_freezer(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    calls = Calls()

    def unguarded(plan: FreezePlan) -> Freezer:
        assert [m.mountpoint for m in plan.mounts] == [ext4.mountpoint]
        return UnguardedFreezer(plan, calls)

    report = run_job(
        ws.options(
            ws.settings(jobkit.make_disks(azurite, 1)),
            config_path=ws.config(),
            include_mounts=(ext4.mountpoint,),
        ),
        freezer_factory=unguarded,
    )

    assert (report.consistency, report.consistency_reason) == (
        "application",
        "application_consistent",
    )
    assert calls.steps == ["prepare", "freeze", "thaw"]
    assert report.freeze is not None and report.freeze.mounts[0].frozen
    assert report.freeze.mounts[0].probe_ok
    assert report.freeze.thawed_by == "runtime"
