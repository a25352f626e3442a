"""The thaw backstop (I4, third layer): filesystems a dead runtime left frozen.

The runtime thaws on its own deadline; its watchdog process thaws the moment
the runtime dies. If both are gone (the watchdog SIGKILLed too, an OOM kill of
the whole cgroup), a filesystem can stay frozen and hang the VM. The sidecar
checks every incomplete job in the spool:

* the runtime is gone: the job's ``lock`` file (flock'ed by a live runtime)
  is free, and the record's ``pid`` is dead (or now belongs to a process
  started after the job: pid reuse);
* the job got as far as the frozen window: ``freeze.mountpoints`` is in the
  record, or its phases include ``prepare`` but not ``thaw``;
* the freeze deadline has passed: ``freeze.deadline_at`` (Unix seconds) if
  the record has it, else the last record update + the 60 s freeze timeout +
  the watchdog's grace.

Then it FITHAWs each mountpoint of the record (or, when the record does not
list them, every mount the runtime's freeze plan would pick from the current
mount table): EINVAL means "not frozen" and is fine. Each FITHAW runs on its
own daemon thread, waited for at most ``ioctl_timeout`` (a FITHAW queued
behind a FIFREEZE stuck in the kernel cannot be interrupted). A job is
handled once. ``vmsnap_backstop_thaws_total`` counts the filesystems thawed.

The kernel seam is ``snapshot_runtime.freeze.session.FreezeIoctl`` (open_mount, thaw,
close); ``KernelFreezeIoctl`` is the real one.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from snapshot_runtime.core.defaults import DEFAULT_FREEZE_TIMEOUT
from snapshot_runtime.freeze.mounts import parse_mountinfo, plan_freeze, read_mountinfo
from snapshot_runtime.freeze.session import WATCHDOG_GRACE_SECONDS
from snapshot_runtime.telemetry.spool_schema import LOCK_FILE
from snapshot_sidecar.spool_reader import JobRecord

__all__ = [
    "Backstop",
    "ThawIoctl",
    "ThawOutcome",
    "lock_free",
    "pid_alive",
    "planned_mountpoints",
]

_log = logging.getLogger("snapshot_sidecar.backstop")


class ThawIoctl(Protocol):
    def open_mount(self, mountpoint: str) -> int: ...
    def thaw(self, fd: int) -> None: ...
    def close(self, fd: int) -> None: ...


@dataclass(frozen=True)
class ThawOutcome:
    mountpoint: str
    result: str  # thawed | not_frozen | error
    error: str | None = None


def _boot_time(proc: str) -> float | None:
    try:
        with open(os.path.join(proc, "stat"), encoding="ascii") as fh:
            for line in fh:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def pid_alive(pid: int, started_at: float | None, *, proc: str = "/proc") -> bool:
    """Is ``pid`` a live process that may be the job's runtime (not a reused pid)?"""
    if pid <= 0:
        return False
    try:
        with open(os.path.join(proc, str(pid), "stat"), encoding="utf-8") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume alive (never thaw under a live runtime)
    fields = stat.rsplit(")", 1)[-1].split()
    if fields and fields[0] in ("Z", "X"):
        return False  # a zombie: exited, not reaped yet
    if started_at is None or len(fields) < 20:
        return True
    boot = _boot_time(proc)
    if boot is None:
        return True
    process_start = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    # Started after the job began (with slack for clock granularity): a new
    # process that got the pid back, not our runtime.
    return process_start <= started_at + 2.0


def lock_free(job_dir: str | os.PathLike[str]) -> bool | None:
    """Is the job's ``lock`` (flock'ed by a live runtime) free? None: no lock file.

    Only asked for jobs that have a record, i.e. after the runtime took the
    lock, so the probe never races the runtime's own LOCK_NB. Shared and
    released at once.
    """
    try:
        fd = os.open(os.path.join(job_dir, LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops our shared lock too
    return True


def planned_mountpoints() -> list[str]:
    """What the runtime's freeze plan would pick from the current mount table."""
    return [m.mountpoint for m in plan_freeze(parse_mountinfo(read_mountinfo())).mounts]


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class Backstop:
    def __init__(
        self,
        ioctl: ThawIoctl,
        *,
        alive: Callable[[int, float | None], bool] = pid_alive,
        mountpoints: Callable[[], list[str]] = planned_mountpoints,
        clock: Callable[[], float] = time.time,
        ioctl_timeout: float = 5.0,
    ) -> None:
        self.ioctl = ioctl
        self.alive = alive
        self.mountpoints = mountpoints
        self.clock = clock
        self.ioctl_timeout = ioctl_timeout

    def runtime_dead(
        self, record: JobRecord, job_dir: str | os.PathLike[str] | None = None
    ) -> bool:
        """The job's runtime is gone: its lock is free (when it has one) and its pid is dead."""
        if job_dir is not None and lock_free(job_dir) is False:
            return False  # a live runtime holds the lock
        return record.pid is not None and not self.alive(record.pid, record.started_at)

    def due(
        self, record: JobRecord, job_dir: str | os.PathLike[str] | None = None
    ) -> list[str] | None:
        """The mountpoints to thaw for this record, or None when not (yet) ours to act."""
        if record.complete or not self.runtime_dead(record, job_dir):
            return None
        freeze = record.freeze or {}
        listed = freeze.get("mountpoints")
        names = [p.get("name") for p in record.phases]
        in_window = isinstance(listed, list) or ("prepare" in names and "thaw" not in names)
        if not in_window:
            return None
        deadline = _num(freeze.get("deadline_at"))
        if deadline is None:
            last = record.updated_at or record.started_at or 0.0
            deadline = last + DEFAULT_FREEZE_TIMEOUT + WATCHDOG_GRACE_SECONDS
        if self.clock() < deadline:
            return None
        if isinstance(listed, list):
            return [str(m) for m in listed if isinstance(m, str)]
        return self.mountpoints()

    def thaw(self, mountpoints: Sequence[str]) -> list[ThawOutcome]:
        """FITHAW each mountpoint, reverse order (the freeze order's reverse), bounded."""
        return [self._thaw_one(mp) for mp in reversed(list(mountpoints))]

    def _thaw_one(self, mountpoint: str) -> ThawOutcome:
        box: list[ThawOutcome] = []

        def run() -> None:
            try:
                fd = self.ioctl.open_mount(mountpoint)
            except OSError as exc:
                box.append(ThawOutcome(mountpoint, "error", f"open: {exc.strerror}"))
                return
            try:
                self.ioctl.thaw(fd)
                box.append(ThawOutcome(mountpoint, "thawed"))
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    box.append(ThawOutcome(mountpoint, "not_frozen"))
                else:
                    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                    box.append(ThawOutcome(mountpoint, "error", f"FITHAW: {name}"))
            finally:
                try:
                    self.ioctl.close(fd)
                except OSError:
                    _log.debug("close of %s failed", mountpoint, exc_info=True)

        thread = threading.Thread(target=run, name="backstop-fithaw", daemon=True)
        thread.start()
        thread.join(self.ioctl_timeout)
        if not box:
            return ThawOutcome(
                mountpoint, "error", f"FITHAW did not return within {self.ioctl_timeout:g}s"
            )
        return box[0]
