"""FreezeSession against real loop-mounted ext4/xfs filesystems.

Only one fault is faked: a FIFREEZE that hangs in the kernel (D state, #1868),
which cannot be produced on demand; the other mounts in that test are real.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from snapshot_runtime.core.errors import ErrorCode, FreezeError
from snapshot_runtime.freeze.ioctl import KernelFreezeIoctl
from snapshot_runtime.freeze.mounts import (
    FreezePlan,
    Mount,
    parse_mountinfo,
    plan_freeze,
    read_mountinfo,
)
from snapshot_runtime.freeze.session import FreezeSession
from tests.freeze_support import (
    fsfreeze,
    start_driver,
    start_writer,
    writable_within,
)
from tests.support.loopfs import loop_filesystem
from tests.support.waiting import wait_until


def _mounts_by_point() -> dict[str, Mount]:
    return {m.mountpoint: m for m in parse_mountinfo(read_mountinfo())}


def plan_for(*mountpoints: str) -> FreezePlan:
    plan = plan_freeze(parse_mountinfo(read_mountinfo()), include=list(mountpoints))
    assert sorted(m.mountpoint for m in plan.mounts) == sorted(mountpoints), plan.skipped
    return plan


def plan_in_order(*mountpoints: str) -> FreezePlan:
    """A plan in exactly this order (plan_freeze orders by depth, then table)."""
    table = _mounts_by_point()
    return FreezePlan(mounts=tuple(table[mp] for mp in mountpoints), skipped=())


class RecordingIoctl(KernelFreezeIoctl):
    """The real kernel calls, with (operation, mountpoint) recorded in call order."""

    def __init__(self) -> None:
        super().__init__()
        self.names: dict[int, str] = {}
        self.ops: list[tuple[str, str]] = []

    def open_mount(self, mountpoint: str) -> int:
        fd = super().open_mount(mountpoint)
        self.names[fd] = mountpoint
        return fd

    def syncfs(self, fd: int) -> None:
        self.ops.append(("syncfs", self.names[fd]))
        super().syncfs(fd)

    def freeze(self, fd: int) -> None:
        self.ops.append(("freeze", self.names[fd]))
        super().freeze(fd)

    def thaw(self, fd: int) -> None:
        self.ops.append(("thaw", self.names[fd]))
        super().thaw(fd)

    def close(self, fd: int) -> None:
        self.ops.append(("close", self.names[fd]))
        super().close(fd)


class HangingIoctl(RecordingIoctl):
    """Real calls, except FIFREEZE of one mount blocks like a D-state freeze.

    The blocked call never freezes anything; releasing it lets the lane run
    whatever was queued behind it (the FITHAW and close).
    """

    def __init__(self, hang_mountpoint: str) -> None:
        super().__init__()
        self.hang_mountpoint = hang_mountpoint
        self.release = threading.Event()

    def freeze(self, fd: int) -> None:
        if self.names[fd] == self.hang_mountpoint:
            self.ops.append(("freeze-hangs", self.names[fd]))
            self.release.wait(60)
            return
        super().freeze(fd)


# -- no root needed ---------------------------------------------------------


def test_empty_plan_is_a_no_op() -> None:
    session = FreezeSession(FreezePlan(mounts=(), skipped=()))
    session.prepare()
    assert session.freeze()
    result = session.thaw()
    assert result.ok and result.error is None
    assert result.window_seconds == 0 and result.mounts == ()
    assert session.watchdog_pid is None


def test_unopenable_mount_is_unable_to_open_mount(tmp_path) -> None:
    missing = Mount(1, 0, "8:99", "/", str(tmp_path / "gone"), ("rw",), "ext4", "/dev/x", ("rw",))
    session = FreezeSession(FreezePlan(mounts=(missing,), skipped=()))
    with pytest.raises(FreezeError) as info:
        session.prepare()
    assert info.value.code is ErrorCode.UNABLE_TO_OPEN_MOUNT
    assert not session.freeze()
    result = session.thaw()
    assert result.error is ErrorCode.UNABLE_TO_OPEN_MOUNT and not result.ok
    assert "cannot open" in (result.mounts[0].error or "")
    assert session.watchdog_pid is None  # never started: nothing could be frozen


def test_misuse_is_a_runtime_error() -> None:
    session = FreezeSession(FreezePlan(mounts=(), skipped=()))
    with pytest.raises(RuntimeError):
        session.freeze()
    session.prepare()
    with pytest.raises(RuntimeError):
        session.prepare()
    with pytest.raises(ValueError):
        FreezeSession(FreezePlan(mounts=(), skipped=()), timeout_seconds=0)


# -- real freezes -------------------------------------------------------------


@pytest.mark.root
def test_freeze_is_real_and_thaw_releases_writers() -> None:
    with loop_filesystem("ext4") as ext4, loop_filesystem("xfs") as xfs:
        plan = plan_for(ext4.mountpoint, xfs.mountpoint)
        with FreezeSession(plan, timeout_seconds=30) as session:
            session.prepare()
            assert session.freeze()
            assert session.frozen and not session.deadline_passed()
            writers = [start_writer(fs.mountpoint) for fs in (ext4, xfs)]
            # This sleep is the test, not a wait: for 0.3 s no write may get through.
            time.sleep(0.3)
            assert [w.poll() for w in writers] == [None, None], "a write got through the freeze"
            result = session.thaw()
        for writer in writers:
            out, _ = writer.communicate(timeout=5)
            assert writer.returncode == 0 and out.strip() == "done"
    assert result.ok and result.error is None and not result.timed_out
    assert result.thawed_by == "runtime" and not session.frozen
    assert 0.3 < result.window_seconds < 30  # covers the 0.3 s hold; ended by us, not the deadline
    assert result.first_freeze_at is not None and result.last_thaw_at is not None
    assert result.window_seconds == pytest.approx(result.last_thaw_at - result.first_freeze_at)
    for mount in result.mounts:
        assert mount.frozen and mount.thawed and not mount.already_frozen
        assert mount.error is None and mount.thaw_error is None
        assert mount.probe_ok is True and mount.probe_error is None
        assert mount.freeze_seconds > 0
    outcome = session.watchdog_outcome
    assert outcome is not None and outcome.exit_code == 0 and not outcome.thawed


@pytest.mark.root
def test_frozen_window_with_a_no_op_body() -> None:
    with loop_filesystem("ext4") as one, loop_filesystem("xfs") as two:
        windows = {}
        for mounts in ((one.mountpoint,), (one.mountpoint, two.mountpoint)):
            samples = []
            for _ in range(3):
                session = FreezeSession(plan_for(*mounts))
                session.prepare()
                assert session.freeze()
                result = session.thaw()
                assert result.ok
                samples.append(result.window_seconds)
            windows[len(mounts)] = min(samples)
    print(f"\nfrozen window, no-op body: 1 mount {windows[1]:.4f}s, 2 mounts {windows[2]:.4f}s")
    assert windows[1] < 1.0 and windows[2] < 1.0


@pytest.mark.root
def test_already_frozen_is_reported_and_left_frozen() -> None:
    with loop_filesystem("ext4") as theirs, loop_filesystem("xfs") as ours:
        assert fsfreeze("-f", theirs.mountpoint) == 0
        try:
            plan = plan_in_order(ours.mountpoint, theirs.mountpoint)
            with FreezeSession(plan, timeout_seconds=30) as session:
                session.prepare()
                assert session.freeze()
                result = session.thaw()
            # Still frozen: we did not thaw someone else's freeze (nor did the watchdog).
            assert not writable_within(theirs.mountpoint, 0.3)
        finally:
            was_frozen = fsfreeze("-u", theirs.mountpoint) == 0
        assert was_frozen
        assert writable_within(theirs.mountpoint, 2)
    ours_result, theirs_result = result.mounts
    assert theirs_result.already_frozen and not theirs_result.frozen
    assert theirs_result.error is None and theirs_result.probe_ok is None
    assert ours_result.frozen and ours_result.thawed and ours_result.probe_ok
    assert result.ok and result.error is None
    assert session.watchdog_outcome is not None and session.watchdog_outcome.exit_code == 0


@pytest.mark.root
def test_deadline_thaws_while_the_job_is_busy() -> None:
    with loop_filesystem("ext4") as fs:
        with FreezeSession(plan_for(fs.mountpoint), timeout_seconds=0.5) as session:
            session.prepare()
            assert session.freeze()
            start = time.monotonic()
            writer = start_writer(fs.mountpoint)
            finished_at = None
            busy = 3.0  # the "job" is busy for 3 s, far past the 0.5 s deadline
            while time.monotonic() - start < busy:
                if finished_at is None and writer.poll() is not None:
                    finished_at = time.monotonic()
                time.sleep(0.01)  # the job being busy is the test, not a wait
            assert session.deadline_passed() and not session.frozen
            result = session.thaw()
        assert writer.wait(5) == 0
    # Released while the job was still busy: by the deadline, not by thaw().
    assert finished_at is not None, "writer not released before the job's own thaw"
    assert result.timed_out and not result.ok
    assert result.error is ErrorCode.FS_FREEZE_TIMEOUT and result.thawed_by == "deadline"
    assert 0.45 <= result.window_seconds < busy  # not before the deadline; before thaw()
    assert result.mounts[0].thawed and result.mounts[0].probe_ok
    # The deadline thaw was clean, so the watchdog was stood down before its own deadline.
    outcome = session.watchdog_outcome
    assert outcome is not None and outcome.exit_code == 0 and not outcome.thawed


@pytest.mark.root
def test_hung_fifreeze_fails_the_freeze_and_thaws_the_others() -> None:
    with (
        loop_filesystem("ext4") as first,
        loop_filesystem("ext4") as hung,
        loop_filesystem("xfs") as last,
    ):
        ioctl = HangingIoctl(hung.mountpoint)
        plan = plan_in_order(first.mountpoint, hung.mountpoint, last.mountpoint)
        session = FreezeSession(plan, timeout_seconds=30, per_ioctl_timeout=0.5, ioctl=ioctl)
        try:
            session.prepare()
            started = time.monotonic()
            assert not session.freeze()
            freeze_took = time.monotonic() - started
            result = session.thaw()
            thaw_took = time.monotonic() - started - freeze_took
            assert writable_within(first.mountpoint, 2) and writable_within(last.mountpoint, 2)
        finally:
            ioctl.release.set()
        # The abandoned lane runs the FITHAW and close queued behind the stuck call.
        wait_until(lambda: ("close", hung.mountpoint) in ioctl.ops, 5, "the abandoned close")
    # Gave up after per_ioctl_timeout, far before the hung call's 60 s.
    assert 0.5 <= freeze_took < 30 and thaw_took < 30
    first_r, hung_r, last_r = result.mounts
    assert result.error is ErrorCode.FS_FREEZE_FAILED and not result.ok
    assert "FIFREEZE did not return within 0.5s" in (hung_r.error or "")
    assert first_r.frozen and first_r.thawed and first_r.probe_ok
    assert not last_r.frozen and last_r.error is None and last_r.probe_ok
    hung_ops = [op for op, mp in ioctl.ops if mp == hung.mountpoint]
    assert hung_ops == ["syncfs", "freeze-hangs", "thaw", "close"]
    assert ("freeze", last.mountpoint) not in ioctl.ops
    # The watchdog was released, not disarmed: it thawed from outside as well.
    outcome = session.watchdog_outcome
    assert outcome is not None and outcome.thawed and outcome.reason == "eof"


@pytest.mark.root
def test_real_fifreeze_failure_rolls_back(tmp_path) -> None:
    # tmpfs has no freeze support: a real EOPNOTSUPP from the kernel, no fake.
    tmpfs = tmp_path / "tmpfs"
    tmpfs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "snaprt-test", str(tmpfs)], check=True)
    try:
        with loop_filesystem("ext4") as fs:
            plan = plan_in_order(fs.mountpoint, str(tmpfs))
            with FreezeSession(plan, timeout_seconds=30) as session:
                session.prepare()
                assert not session.freeze()
                assert not session.frozen
                assert writable_within(fs.mountpoint, 2)
                result = session.thaw()
    finally:
        subprocess.run(["umount", "-l", str(tmpfs)], check=False)
    assert result.error is ErrorCode.FS_FREEZE_FAILED and not result.ok
    assert "Operation not supported" in (result.mounts[1].error or "")
    assert result.mounts[0].frozen and result.mounts[0].thawed
    assert result.window_seconds > 0


@pytest.mark.root
def test_nested_mounts_freeze_child_first_and_thaw_in_reverse() -> None:
    with loop_filesystem("ext4") as outer, loop_filesystem("ext4") as inner:
        sub = os.path.join(outer.mountpoint, "sub")
        os.mkdir(sub)
        subprocess.run(["mount", "--bind", inner.mountpoint, sub], check=True)
        try:
            plan = plan_for(outer.mountpoint, sub)
            assert [m.mountpoint for m in plan.mounts] == [sub, outer.mountpoint]
            ioctl = RecordingIoctl()
            with FreezeSession(plan, ioctl=ioctl) as session:
                session.prepare()
                assert session.freeze()
                result = session.thaw()
        finally:
            subprocess.run(["fsfreeze", "-u", sub], capture_output=True, check=False)
            subprocess.run(["umount", "-l", sub], check=False)
    assert result.ok
    assert [op for op in ioctl.ops if op[0] != "close"] == [
        ("syncfs", sub),
        ("syncfs", outer.mountpoint),
        ("freeze", sub),
        ("freeze", outer.mountpoint),
        ("thaw", outer.mountpoint),
        ("thaw", sub),
    ]


@pytest.mark.root
def test_thaw_is_idempotent_and_safe_before_freeze() -> None:
    with loop_filesystem("ext4") as fs:
        session = FreezeSession(plan_for(fs.mountpoint))
        session.prepare()
        assert session.freeze()
        first = session.thaw()
        assert session.thaw() is first
        session.__exit__(None, None, None)
        assert session.thaw() is first and first.ok
        with pytest.raises(RuntimeError):
            session.freeze()

        never = FreezeSession(plan_for(fs.mountpoint))
        never.prepare()
        result = never.thaw()
        assert not result.ok and result.error is None and result.window_seconds == 0
        assert not result.mounts[0].frozen and result.mounts[0].probe_ok is None
        assert never.watchdog_outcome is not None and never.watchdog_outcome.exit_code == 0
        assert not never.freeze()  # after thaw: refused, nothing frozen
        assert writable_within(fs.mountpoint, 2)


@pytest.mark.root
def test_frozen_window_does_no_io_with_cwd_and_log_on_the_frozen_fs() -> None:
    # I1, in a child: its cwd and its live log file are on the frozen fs, every
    # open/import/os.*/thread start is recorded by an audit hook. Any write of
    # ours there would deadlock until the 10 s deadline (timed_out=True).
    with loop_filesystem("ext4") as fs:
        proc, report = start_driver(
            "audit", "--mount", fs.mountpoint, "--hold", "1", "--timeout", "10", cwd="/"
        )
        assert proc.wait(15) == 0
        with open(os.path.join(fs.mountpoint, "logs", "runtime.log")) as fh:
            log = fh.read()
    result = report["result"]
    assert report["frozen"] and result["ok"], result
    assert not result["timed_out"] and 1.0 <= result["window_seconds"] < 2.0
    assert report["window_events"] == []
    assert report["events_outside_window"] > 0  # the hook works: probes open files after
    assert report["gc_enabled_in_window"] is False and report["gc_enabled_after"] is True
    assert "before the freeze" in log and "after the thaw" in log
