"""The thaw backstop: decisions on fakes, and a really frozen loop filesystem thawed."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from snapshot_sidecar.backstop import Backstop, pid_alive
from snapshot_sidecar.spool_reader import JobRecord

from snapshot_runtime.freeze.ioctl import KernelFreezeIoctl
from tests.sidecar.conftest import Rig
from tests.support.loopfs import loop_filesystem
from tests.support.spoolgen import dead_pid

FROZEN_PHASES = [("settings", 0.0), ("pre_script", 0.1), ("prepare", 0.1)]


class FakeIoctl:
    def __init__(self, frozen: set[str]) -> None:
        self.frozen = frozen
        self.thawed: list[str] = []
        self._fds: dict[int, str] = {}

    def open_mount(self, mountpoint: str) -> int:
        fd = len(self._fds) + 100
        self._fds[fd] = mountpoint
        return fd

    def thaw(self, fd: int) -> None:
        mountpoint = self._fds[fd]
        if mountpoint not in self.frozen:
            raise OSError(errno.EINVAL, "not frozen")
        self.frozen.discard(mountpoint)
        self.thawed.append(mountpoint)

    def close(self, fd: int) -> None:
        del self._fds[fd]


def _record(rig: Rig, name: str, **kw: object) -> JobRecord:
    job = rig.gen.job(name, complete=False, phases=FROZEN_PHASES, **kw)  # type: ignore[arg-type]
    return JobRecord.parse(job.record)


def test_thaws_only_a_dead_runtime_past_its_deadline(rig: Rig) -> None:
    ioctl = FakeIoctl({"/a", "/b"})
    past = time.time() - 5
    backstop = Backstop(ioctl, mountpoints=lambda: ["/a", "/b", "/c"])
    alive = _record(rig, "alive", pid=os.getpid(), extra={"freeze": {"deadline_at": past}})
    assert backstop.due(alive) is None
    future = _record(
        rig, "future", pid=dead_pid(), extra={"freeze": {"deadline_at": time.time() + 60}}
    )
    assert backstop.due(future) is None
    no_pid = _record(rig, "nopid", extra={"freeze": {"deadline_at": past}})
    assert backstop.due(no_pid) is None
    before_window = JobRecord.parse(
        rig.gen.job("early", complete=False, pid=dead_pid(), phases=[("settings", 0.0)]).record
    )
    assert backstop.due(before_window) is None

    listed = _record(
        rig,
        "listed",
        pid=dead_pid(),
        extra={"freeze": {"deadline_at": past, "mountpoints": ["/a"]}},
    )
    assert backstop.due(listed) == ["/a"]
    # Without a list: the freeze plan's mounts; without a deadline: last update + 60 s.
    stale = _record(rig, "stale", pid=dead_pid(), started_at=time.time() - 300, duration=10)
    assert backstop.due(stale) == ["/a", "/b", "/c"]
    outcomes = backstop.thaw(["/a", "/b", "/c"])
    assert [(o.mountpoint, o.result) for o in outcomes] == [
        ("/c", "not_frozen"),
        ("/b", "thawed"),
        ("/a", "thawed"),
    ]


def test_pid_reuse_is_not_mistaken_for_the_runtime() -> None:
    assert pid_alive(os.getpid(), time.time())  # started before "the job"
    assert not pid_alive(os.getpid(), 1000.0)  # started long after a job of 1970
    assert not pid_alive(dead_pid(), None)


def test_sidecar_counts_backstop_thaws_once_and_abandons_the_job(rig: Rig) -> None:
    ioctl = FakeIoctl({"/x"})
    past = time.time() - 1
    rig.gen.job(
        "dead",
        complete=False,
        pid=dead_pid(),
        phases=FROZEN_PHASES,
        extra={"freeze": {"deadline_at": past, "mountpoints": ["/x"]}},
    )
    sidecar = rig.sidecar(backstop=Backstop(ioctl))
    sidecar.run_once()
    sidecar.run_once()
    assert ioctl.thawed == ["/x"]
    assert rig.value(sidecar, "vmsnap_backstop_thaws_total") == 1
    assert rig.value(sidecar, "vmsnap_backstop_thaw_attempts_total", result="thawed") == 1
    assert rig.value(sidecar, "vmsnap_jobs_abandoned_total") == 1
    restarted = rig.sidecar(backstop=Backstop(FakeIoctl({"/x"})))
    restarted.run_once()
    assert rig.value(restarted, "vmsnap_backstop_thaws_total") == 1


def _writable(path: Path, timeout: float) -> bool:
    """A write + fsync in a thread: False when it blocks (a frozen filesystem)."""
    done = threading.Event()

    def write() -> None:
        with open(path / "probe", "wb") as fh:
            fh.write(b"x")
            fh.flush()
            os.fsync(fh.fileno())
        done.set()

    threading.Thread(target=write, daemon=True).start()
    return done.wait(timeout)


@pytest.mark.root
def test_really_frozen_loop_filesystem_is_thawed(rig: Rig) -> None:
    with loop_filesystem("ext4") as fs:
        mnt = Path(fs.mountpoint)
        subprocess.run(["fsfreeze", "-f", fs.mountpoint], check=True, timeout=30)
        try:
            assert not _writable(mnt, 0.3), "the filesystem should be frozen"
            rig.gen.job(
                "left-frozen",
                complete=False,
                pid=dead_pid(),
                phases=FROZEN_PHASES,
                extra={"freeze": {"deadline_at": time.time() - 1, "mountpoints": [fs.mountpoint]}},
            )
            sidecar = rig.sidecar(backstop=Backstop(KernelFreezeIoctl()))
            sidecar.ingest()  # one iteration of the main loop
            assert _writable(mnt, 5.0), "the backstop should have thawed it"
            assert rig.value(sidecar, "vmsnap_backstop_thaws_total") == 1
            # Thawing again finds it not frozen (EINVAL), which is fine.
            again = Backstop(KernelFreezeIoctl()).thaw([fs.mountpoint])
            assert again[0].result == "not_frozen"
        finally:
            subprocess.run(
                ["fsfreeze", "-u", fs.mountpoint], capture_output=True, timeout=30, check=False
            )


def test_recovered_record_of_an_abandoned_job_is_not_a_second_outcome(rig: Rig) -> None:
    job = rig.gen.job("crashed", complete=False, pid=dead_pid(), phases=[("settings", 0.0)])
    sidecar = rig.sidecar(backstop=Backstop(FakeIoctl(set())), keep_jobs=False)
    sidecar.run_once()
    assert rig.value(sidecar, "vmsnap_jobs_abandoned_total") == 1
    assert job.path.exists()  # kept for the next runtime's recovery
    # The next run's recovery completes the record (interrupted, InternalError).
    rig.gen.complete(job, outcome="failed", error="InternalError", interrupted=True)
    sidecar.run_once()
    sidecar.run_once()
    assert rig.value(sidecar, "vmsnap_jobs_abandoned_total") == 1
    assert rig.value(sidecar, "vmsnap_sidecar_records_ingested_total") == 0
    assert rig.value(sidecar, "vmsnap_job_errors_total", group="other") == 0  # InternalError
    assert not job.path.exists()  # complete now: handled and removed
    # Recovered while the sidecar was down: still exactly one abandoned job.
    other = rig.gen.job("crashed-2", complete=False, pid=dead_pid(), phases=[("settings", 0.0)])
    rig.gen.complete(other, outcome="failed", error="InternalError", interrupted=True)
    sidecar.run_once()
    assert rig.value(sidecar, "vmsnap_jobs_abandoned_total") == 2
