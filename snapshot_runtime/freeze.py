"""Freeze and thaw the planned filesystems: FIFREEZE/FITHAW, bounded, always thawed.

``FreezeSession`` is the entry point::

    with FreezeSession(plan, timeout_seconds=60) as session:
        session.prepare()          # may raise FreezeError
        if session.freeze():
            take_snapshots()
    result = session.thaw()        # idempotent; __exit__ calls it too

Contracts:

* **prepare()** does everything the frozen window needs: opens every mount
  (O_RDONLY|O_DIRECTORY|O_CLOEXEC|O_NONBLOCK), resolves ``libc.syncfs``,
  starts one ioctl *lane* thread per mount and the deadline timer thread,
  picks the probe file names, and starts the out-of-process thaw watchdog
  (``snapshot_runtime.watchdog``) and waits until it is armed. Raises
  ``FreezeError`` (UnableToOpenMount, or FsFreezeFailed when the watchdog
  cannot be armed); ``thaw()`` then reports the same error.
* **freeze()** syncfs()es every filesystem (outside the window, so FIFREEZE
  has little left to flush while writers are blocked), re-arms the watchdog
  with the real deadline and waits for its ack (never freezes unguarded: no
  ack, no freeze; so freeze() must follow prepare() within
  ``timeout_seconds``), then FIFREEZEs in plan order. EBUSY means someone
  else holds a freeze: recorded as ``already_frozen`` and never thawed by us
  (nor by the watchdog). Any other failure thaws what we froze and returns
  False (FsFreezeFailed).
* **Frozen window (I1)**: between the first FIFREEZE and the last FITHAW this
  module opens no file, writes to no filesystem, logs nothing, imports
  nothing and starts no thread; it only waits on pre-started threads, reads
  ``clock`` and writes at most one line to the watchdog pipe (pipefs, never
  frozen). The cyclic garbage collector is paused for the window, so no
  finaliser (e.g. a buffered file flushing on collection) runs in it.
* **Bounded ioctls**: each ioctl runs on its mount's pre-started lane thread
  and is waited for at most ``per_ioctl_timeout``. A FIFREEZE stuck in the
  kernel (D state, azure-linux-extensions#1868) fails that mount, every other
  mount is thawed and the job goes on; the stuck thread is abandoned (a daemon
  thread; it cannot be interrupted). Its FITHAW and close are queued on the
  same lane, so a late-completing FIFREEZE is thawed at once, and the watchdog
  is released rather than disarmed so it thaws from outside too. One lane per
  mount (instead of a shared worker) keeps a stuck mount from blocking the
  thaw of the others without creating threads while frozen.
* **Deadline (I4)**: ``timeout_seconds`` (default 60 s, as the reference)
  after the first FIFREEZE, the timer thread thaws everything even if the
  caller is still busy (``timed_out``, FsFreezeTimeout, ``thawed_by`` =
  "deadline"), then stands the watchdog down. The watchdog fires
  ``WATCHDOG_GRACE_SECONDS`` later, so it only acts when this process cannot
  (stopped, hung, killed: on a kill it sees EOF and thaws at once). If our
  FITHAW finds a mount already thawed (the watchdog, or an operator, got
  there first) the window was cut short: FsFreezeFailed (FsFreezeTimeout when
  the watchdog's deadline did it), ``thawed_by`` = "watchdog".
* **thaw()** FITHAWs in reverse plan order, then proves the thaw: in every
  filesystem it thawed or tried to freeze, a worker thread creates, writes,
  fsyncs and unlinks a small file, bounded to ``PROBE_TIMEOUT``. A probe that
  does not finish means "still frozen": ThawFailed. A probe that fails with an
  errno (ENOSPC, EROFS) is reported but does not fail the session.

Threads: ``thaw()`` may race the deadline timer; both go through one lock.
The session object is otherwise not thread-safe. Time comes from ``clock``
(``time.monotonic``); the watchdog always uses CLOCK_MONOTONIC.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gc
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from snapshot_runtime.errors import ErrorCode, FreezeError
from snapshot_runtime.mounts import FreezePlan, Mount
from snapshot_runtime.watchdog import ARMED, DISARM, ERROR_PREFIX, THAWED_PREFIX, LineReader

__all__ = [
    "DEFAULT_FREEZE_TIMEOUT",
    "DEFAULT_PER_IOCTL_TIMEOUT",
    "FIFREEZE",
    "FITHAW",
    "PROBE_TIMEOUT",
    "WATCHDOG_GRACE_SECONDS",
    "FreezeIoctl",
    "FreezeResult",
    "FreezeSession",
    "KernelFreezeIoctl",
    "MountFreezeResult",
    "WatchdogClient",
    "WatchdogOutcome",
]

FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)
DEFAULT_FREEZE_TIMEOUT = 60.0
DEFAULT_PER_IOCTL_TIMEOUT = 10.0
PROBE_TIMEOUT = 1.0
# The watchdog is the backstop: it fires this long after our own deadline so
# the two never race while this process is healthy.
WATCHDOG_GRACE_SECONDS = 0.2
PROBE_PREFIX = ".snapshot-runtime-thaw-probe"


class FreezeIoctl(Protocol):
    """The kernel effects of a freeze; every method raises OSError."""

    def open_mount(self, mountpoint: str) -> int: ...
    def syncfs(self, fd: int) -> None: ...
    def freeze(self, fd: int) -> None: ...
    def thaw(self, fd: int) -> None: ...
    def close(self, fd: int) -> None: ...


class KernelFreezeIoctl:
    """The real thing: open(2), syncfs(2) via ctypes, ioctl FIFREEZE/FITHAW."""

    def __init__(self) -> None:
        # Resolved here, before any freeze: dlsym is not something to do frozen.
        libc = ctypes.CDLL(None, use_errno=True)
        self._syncfs = libc.syncfs
        self._syncfs.argtypes = [ctypes.c_int]
        self._syncfs.restype = ctypes.c_int

    def open_mount(self, mountpoint: str) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NONBLOCK
        return os.open(mountpoint, flags)

    def syncfs(self, fd: int) -> None:
        if self._syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    def freeze(self, fd: int) -> None:
        fcntl.ioctl(fd, FIFREEZE, 0)

    def thaw(self, fd: int) -> None:
        fcntl.ioctl(fd, FITHAW, 0)

    def close(self, fd: int) -> None:
        os.close(fd)


@dataclass(frozen=True)
class MountFreezeResult:
    mountpoint: str
    fstype: str
    frozen: bool  # frozen by us at some point
    already_frozen: bool  # EBUSY: someone else's freeze, left alone
    error: str | None  # open / syncfs / FIFREEZE failure
    freeze_seconds: float  # FIFREEZE duration
    thawed: bool
    thaw_error: str | None
    probe_ok: bool | None  # None: not probed (read-only, someone else's freeze)
    probe_error: str | None


@dataclass(frozen=True)
class FreezeResult:
    mounts: tuple[MountFreezeResult, ...]
    ok: bool  # every planned mount frozen (or already frozen by someone else) and thawed
    error: ErrorCode | None
    error_message: str | None
    first_freeze_at: float | None  # clock() when the first FIFREEZE started
    last_thaw_at: float | None  # clock() when the last FITHAW returned
    window_seconds: float  # first FIFREEZE start -> last FITHAW end; 0 if nothing frozen
    timed_out: bool  # the deadline passed and the mounts were thawed regardless
    thawed_by: str  # "runtime" | "deadline" | "watchdog"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, str(exc.errno))} ({exc.strerror})"
    return repr(exc)


class _Call:
    __slots__ = ("done", "error", "fd", "fn")

    def __init__(self, fn: Callable[[int], None], fd: int) -> None:
        self.fn = fn
        self.fd = fd
        self.done = threading.Event()
        self.error: BaseException | None = None


class _Lane:
    """One pre-started daemon thread running one mount's ioctls in order."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self.stuck = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (call := self._queue.get()) is not None:
            try:
                call.fn(call.fd)
            except BaseException as exc:  # reported to the waiter, never lost
                call.error = exc
            finally:
                call.done.set()

    def submit(self, fn: Callable[[int], None], fd: int) -> _Call:
        call = _Call(fn, fd)
        self._queue.put(call)
        return call

    def run(self, fn: Callable[[int], None], fd: int, timeout: float) -> _Call | None:
        """The finished call, or None (and the lane marked stuck) after ``timeout``."""
        call = self.submit(fn, fd)
        if call.done.wait(timeout):
            return call
        self.stuck = True
        return None

    def stop(self) -> None:
        self._queue.put(None)


class _State:
    """Mutable per-mount bookkeeping; frozen into MountFreezeResult at the end."""

    def __init__(self, mount: Mount) -> None:
        self.mount = mount
        self.fd: int | None = None
        self.lane: _Lane | None = None
        self.frozen = False
        self.already_frozen = False
        self.freeze_pending = False  # FIFREEZE submitted and never returned
        self.error: str | None = None
        self.freeze_seconds = 0.0
        self.thaw_done = False
        self.thawed = False
        self.thawed_elsewhere = False  # FITHAW said EINVAL: someone thawed first
        self.thaw_error: str | None = None
        self.probe_name = ""
        self.probe_ok: bool | None = None
        self.probe_error: str | None = None
        self.probe_blocked = False


# -- the watchdog's client ------------------------------------------------
# Here rather than in watchdog.py so that the watchdog process itself does not
# pay for importing subprocess and dataclasses (about half its start time).


@dataclass(frozen=True)
class WatchdogOutcome:
    """How the watchdog ended. ``exit_code`` None: still running (released)."""

    exit_code: int | None
    thawed: bool
    reason: str | None = None
    thawed_at: float | None = None
    mounts: tuple[dict[str, object], ...] = ()
    stderr: str = ""


@dataclass
class _Proc:
    popen: subprocess.Popen[bytes]
    reader: LineReader
    lines: list[str] = field(default_factory=list)


def _watchdog_error(message: str) -> FreezeError:
    return FreezeError(ErrorCode.FS_FREEZE_FAILED, message)


class WatchdogClient:
    """Start, arm and stop one watchdog process. Not thread-safe.

    Every method is bounded by its ``timeout``; ``start`` and ``rearm`` raise
    FreezeError (FsFreezeFailed), the others never raise. Only ``send_disarm``
    and ``leave_frozen`` may be called from another thread: each is a single
    non-blocking write of less than PIPE_BUF bytes, which the kernel keeps whole.
    """

    def __init__(self, mounts: Sequence[str], *, report_dir: str | None = None) -> None:
        self.mounts = tuple(mounts)
        self.report_dir = report_dir
        self._proc: _Proc | None = None
        self.arm_seconds: float | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.popen.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.popen.poll() is None

    def start(self, deadline_monotonic: float, *, timeout: float = 5.0) -> float:
        """Start the process and wait until it is armed; returns the seconds it took."""
        started = time.monotonic()
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        # -S skips site (no .pth imports); PYTHONPATH finds this package only.
        env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=package_parent)
        try:
            popen = subprocess.Popen(
                [sys.executable, "-S", "-m", "snapshot_runtime.watchdog"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                cwd="/",
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise _watchdog_error(f"cannot start the thaw watchdog: {exc}") from exc
        assert popen.stdin is not None and popen.stdout is not None
        # Our writes must never block the runtime (we write once in the frozen window).
        os.set_blocking(popen.stdin.fileno(), False)
        self._proc = _Proc(popen=popen, reader=LineReader(popen.stdout.fileno()))
        first = {
            "mounts": list(self.mounts),
            "deadline_monotonic": deadline_monotonic,
            "report_dir": self.report_dir,
        }
        try:
            self._write(json.dumps(first))
            self._await_armed(timeout)
        except FreezeError:
            self.kill()
            raise
        self.arm_seconds = time.monotonic() - started
        return self.arm_seconds

    def rearm(self, deadline_monotonic: float, *, timeout: float = 2.0) -> None:
        """Move the deadline and wait for the acknowledgement."""
        self._write(json.dumps({"deadline_monotonic": deadline_monotonic}))
        self._await_armed(timeout)

    def leave_frozen(self, mountpoints: Sequence[str]) -> None:
        """Tell the watchdog never to thaw these (frozen by someone else)."""
        with contextlib.suppress(FreezeError):
            self._write(json.dumps({"leave_frozen": list(mountpoints)}))

    def send_disarm(self) -> None:
        """Write ``disarm`` without waiting (from the deadline timer thread)."""
        with contextlib.suppress(FreezeError):
            self._write(DISARM)

    def disarm(self, *, timeout: float = 2.0) -> WatchdogOutcome:
        """Ask the watchdog to exit without thawing; kill it if it does not."""
        with contextlib.suppress(FreezeError):
            self._write(DISARM)
        return self._finish(timeout, kill=True)

    def release(self, *, timeout: float = 1.0) -> WatchdogOutcome:
        """Close the pipe without disarming: the watchdog thaws everything now.

        Used when one of our own ioctls is stuck. The process is left running
        if it has not finished within ``timeout`` (its FITHAW may be waiting
        behind the stuck FIFREEZE, which is exactly where it should be).
        """
        return self._finish(timeout, kill=False)

    def kill(self) -> None:
        if self._proc is not None and self._proc.popen.poll() is None:
            self._proc.popen.kill()
            self._proc.popen.wait(2.0)

    def _write(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.popen.stdin is None or proc.popen.stdin.closed:
            raise _watchdog_error("thaw watchdog is not running")
        try:
            os.write(proc.popen.stdin.fileno(), line.encode("utf-8", "surrogateescape") + b"\n")
        except OSError as exc:
            raise _watchdog_error(f"thaw watchdog pipe: {exc}") from exc

    def _await_armed(self, timeout: float) -> None:
        proc = self._proc
        assert proc is not None
        until = time.monotonic() + timeout
        while time.monotonic() < until and not proc.reader.eof:
            for line in proc.reader.read_lines(until - time.monotonic()):
                proc.lines.append(line)
                if line == ARMED:
                    return
                if line.startswith(ERROR_PREFIX):
                    raise _watchdog_error(f"thaw watchdog: {line[len(ERROR_PREFIX) :]}")
        if proc.reader.eof:
            code = proc.popen.wait(1.0)
            raise _watchdog_error(f"thaw watchdog exited ({code}) before it was armed")
        raise _watchdog_error(f"thaw watchdog not armed within {timeout:g}s")

    def _finish(self, timeout: float, *, kill: bool) -> WatchdogOutcome:
        proc = self._proc
        if proc is None:
            return WatchdogOutcome(exit_code=None, thawed=False)
        assert proc.popen.stdin is not None
        with contextlib.suppress(OSError):
            proc.popen.stdin.close()
        try:
            code: int | None = proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
            if kill:
                self.kill()
                code = proc.popen.returncode
        stderr = ""
        if code is not None:
            # It has exited: what is left in the pipes is all there will be.
            until = time.monotonic() + 1.0
            while not proc.reader.eof and time.monotonic() < until:
                proc.lines.extend(proc.reader.read_lines(until - time.monotonic()))
            assert proc.popen.stderr is not None
            with contextlib.suppress(OSError):
                stderr = proc.popen.stderr.read().decode("utf-8", "replace")[-2000:]
                proc.popen.stderr.close()
            if proc.popen.stdout is not None:
                proc.popen.stdout.close()
        else:
            proc.lines.extend(proc.reader.read_lines(0.0))
        for line in proc.lines:
            if line.startswith(THAWED_PREFIX):
                data = json.loads(line[len(THAWED_PREFIX) :])
                return WatchdogOutcome(
                    exit_code=code,
                    thawed=True,
                    reason=str(data.get("reason")),
                    thawed_at=float(data["thawed_at_monotonic"]),
                    mounts=tuple(data.get("mounts", ())),
                    stderr=stderr,
                )
        return WatchdogOutcome(exit_code=code, thawed=False, stderr=stderr)


class FreezeSession:
    """Freeze a ``FreezePlan`` for at most ``timeout_seconds``; see the module doc.

    - ``plan``: mounts in freeze order (``mounts.plan_freeze``).
    - ``timeout_seconds``: the freeze deadline, from the first FIFREEZE.
    - ``per_ioctl_timeout``: bound on each syncfs/FIFREEZE/FITHAW.
    - ``ioctl``: the kernel seam (default ``KernelFreezeIoctl``).
    - ``use_watchdog`` / ``watchdog_report_dir``: the out-of-process guard and
      where it writes a report after a thaw it performed (a never-frozen fs).
    - ``clock``: monotonic seconds, for measurements and the deadline.
    """

    def __init__(
        self,
        plan: FreezePlan,
        *,
        timeout_seconds: float = DEFAULT_FREEZE_TIMEOUT,
        per_ioctl_timeout: float = DEFAULT_PER_IOCTL_TIMEOUT,
        ioctl: FreezeIoctl | None = None,
        use_watchdog: bool = True,
        watchdog_report_dir: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_seconds <= 0 or per_ioctl_timeout <= 0:
            raise ValueError("timeout_seconds and per_ioctl_timeout must be positive")
        self.plan = plan
        self.timeout_seconds = timeout_seconds
        self.per_ioctl_timeout = per_ioctl_timeout
        self._ioctl = ioctl
        self._use_watchdog = use_watchdog
        self._report_dir = watchdog_report_dir
        self._clock = clock
        self._states = [_State(m) for m in plan.mounts]
        self._lock = threading.RLock()
        self._armed = threading.Event()  # the timer starts counting
        self._done = threading.Event()  # the timer stops
        self._timer: threading.Thread | None = None
        self._watchdog: WatchdogClient | None = None
        self._watchdog_outcome: WatchdogOutcome | None = None
        self._prepared = False
        self._freeze_called = False
        self._runtime_thawing = False
        self._gc_was_enabled = False
        self._error: ErrorCode | None = None
        self._error_message: str | None = None
        self._deadline: float | None = None
        self._first_freeze_at: float | None = None
        self._last_thaw_at: float | None = None
        self._timed_out = False
        self._thawed_by = "runtime"
        self._result: FreezeResult | None = None

    # -- context manager --------------------------------------------------

    def __enter__(self) -> FreezeSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.thaw()

    # -- state --------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        """True while any mount we froze (or whose FIFREEZE hangs) is not thawed."""
        return any((s.frozen or s.freeze_pending) and not s.thawed for s in self._states)

    def deadline_passed(self) -> bool:
        return self._deadline is not None and self._clock() >= self._deadline

    @property
    def watchdog_arm_seconds(self) -> float | None:
        """Watchdog start to "armed", measured in prepare()."""
        return self._watchdog.arm_seconds if self._watchdog else None

    @property
    def watchdog_pid(self) -> int | None:
        return self._watchdog.pid if self._watchdog else None

    @property
    def watchdog_outcome(self) -> WatchdogOutcome | None:
        return self._watchdog_outcome

    # -- prepare --------------------------------------------------------------

    def prepare(self) -> None:
        """Open, resolve, start and arm everything; raises FreezeError."""
        if self._prepared:
            raise RuntimeError("prepare() called twice")
        self._prepared = True
        if not self._states:
            return
        if self._ioctl is None:
            self._ioctl = KernelFreezeIoctl()
        token = os.urandom(4).hex()
        for index, state in enumerate(self._states):
            state.probe_name = f"{PROBE_PREFIX}-{os.getpid()}-{index}-{token}"
            try:
                state.fd = self._ioctl.open_mount(state.mount.mountpoint)
            except OSError as exc:
                state.error = f"cannot open: {_describe(exc)}"
        unopened = [s.mount.mountpoint for s in self._states if s.fd is None]
        if unopened:
            self._abort_prepare(ErrorCode.UNABLE_TO_OPEN_MOUNT, f"cannot open {unopened}")
        for index, state in enumerate(self._states):
            state.lane = _Lane(f"freeze-lane-{index}")
        self._timer = threading.Thread(target=self._timer_main, name="freeze-deadline", daemon=True)
        self._timer.start()
        if self._use_watchdog:
            self._watchdog = WatchdogClient(
                [s.mount.mountpoint for s in self._states], report_dir=self._report_dir
            )
            try:
                # Provisional deadline: freeze() must follow within timeout_seconds.
                self._watchdog.start(self._watchdog_deadline())
            except FreezeError as exc:
                self._watchdog = None  # start() has already killed it
                self._abort_prepare(ErrorCode.FS_FREEZE_FAILED, exc.message)

    def _abort_prepare(self, code: ErrorCode, message: str) -> None:
        self._fail(code, message)
        self._done.set()
        self._armed.set()
        self._release_resources()
        raise FreezeError(code, message)

    def _watchdog_deadline(self) -> float:
        return time.monotonic() + self.timeout_seconds + WATCHDOG_GRACE_SECONDS

    def _fail(self, code: ErrorCode, message: str) -> None:
        if self._error is None:
            self._error, self._error_message = code, message

    # -- freeze ---------------------------------------------------------------

    def freeze(self) -> bool:
        """syncfs all, then FIFREEZE all in plan order; False: failed and rolled back."""
        if not self._prepared:
            raise RuntimeError("prepare() first")
        if self._freeze_called:
            raise RuntimeError("freeze() called twice")
        self._freeze_called = True
        if self._error is not None or self._result is not None:
            return False
        if not self._states:
            return True
        ioctl = self._kernel()
        for state in self._states:
            assert state.lane is not None and state.fd is not None
            call = state.lane.run(ioctl.syncfs, state.fd, self.per_ioctl_timeout)
            if call is None:
                # A sync that hangs now would hang FIFREEZE too: do not start.
                state.error = f"syncfs did not return within {self.per_ioctl_timeout:g}s"
                self._fail(ErrorCode.FS_FREEZE_FAILED, f"{state.mount.mountpoint}: {state.error}")
                return False
            # A syncfs errno (EIO...) is left to FIFREEZE, which syncs again and decides.
        return self._freeze_all(ioctl)

    def _freeze_all(self, ioctl: FreezeIoctl) -> bool:
        if self._watchdog is not None:
            # The real deadline, right before the first FIFREEZE (after the
            # syncs, which may take a while); acknowledged, or we do not freeze.
            try:
                self._watchdog.rearm(self._watchdog_deadline())
            except FreezeError as exc:
                self._fail(ErrorCode.FS_FREEZE_FAILED, f"not freezing unguarded: {exc.message}")
                return False
        # I1 starts at the first FIFREEZE: no files, no logging, no imports, no threads.
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        leave_frozen: list[str] = []
        failed: _State | None = None
        with self._lock:
            self._first_freeze_at = self._clock()
            self._deadline = self._first_freeze_at + self.timeout_seconds
        self._armed.set()
        for state in self._states:
            with self._lock:
                if self._timed_out:
                    break
                assert state.lane is not None and state.fd is not None
                started = self._clock()
                call = state.lane.run(ioctl.freeze, state.fd, self.per_ioctl_timeout)
                state.freeze_seconds = self._clock() - started
                if call is None:
                    state.freeze_pending = True
                    state.error = f"FIFREEZE did not return within {self.per_ioctl_timeout:g}s"
                elif call.error is None:
                    state.frozen = True
                elif isinstance(call.error, OSError) and call.error.errno == errno.EBUSY:
                    state.already_frozen = True
                    leave_frozen.append(state.mount.mountpoint)
                else:
                    state.error = f"FIFREEZE failed: {_describe(call.error)}"
                if state.error is not None:
                    failed = state
                    break
        if leave_frozen and self._watchdog is not None:
            self._watchdog.leave_frozen(leave_frozen)
        if failed is not None:
            self._fail(ErrorCode.FS_FREEZE_FAILED, f"{failed.mount.mountpoint}: {failed.error}")
            self._thaw_mounts("runtime")
            return False
        return not self._timed_out

    def _kernel(self) -> FreezeIoctl:
        assert self._ioctl is not None
        return self._ioctl

    # -- thaw -----------------------------------------------------------------

    def _timer_main(self) -> None:
        self._armed.wait()
        while not self._done.is_set() and self._deadline is not None:
            remaining = self._deadline - self._clock()
            if remaining <= 0:
                with self._lock:
                    held = any(s.frozen and not s.thaw_done for s in self._states)
                    if self._runtime_thawing or not held:
                        return
                    self._timed_out = True
                    self._fail(
                        ErrorCode.FS_FREEZE_TIMEOUT,
                        f"freeze deadline of {self.timeout_seconds:g}s passed: thawed regardless",
                    )
                    self._thaw_mounts("deadline")
                    clean = all(s.thawed for s in self._states if s.frozen or s.freeze_pending)
                    if clean and self._watchdog is not None:
                        # Nothing of ours is frozen any more: stand the guard down so
                        # it does not "thaw" (and report) at its own deadline.
                        self._watchdog.send_disarm()
                return
            self._done.wait(remaining)

    def _thaw_mounts(self, by: str) -> None:
        """FITHAW, reverse plan order, everything we froze and have not thawed."""
        ioctl = self._kernel()
        with self._lock:
            acted = False
            for state in reversed(self._states):
                if state.thaw_done or state.lane is None or state.fd is None:
                    continue
                if state.freeze_pending:
                    # Queued behind the stuck FIFREEZE: runs the moment it returns.
                    state.lane.submit(ioctl.thaw, state.fd)
                    state.thaw_done = True
                    state.thaw_error = "FIFREEZE never returned; FITHAW queued behind it"
                    acted = True
                    continue
                if not state.frozen:
                    continue
                state.thaw_done = True
                acted = True
                call = state.lane.run(ioctl.thaw, state.fd, self.per_ioctl_timeout)
                if call is None:
                    state.thaw_error = f"FITHAW did not return within {self.per_ioctl_timeout:g}s"
                elif call.error is None:
                    state.thawed = True
                elif isinstance(call.error, OSError) and call.error.errno == errno.EINVAL:
                    state.thawed = state.thawed_elsewhere = True
                else:
                    state.thaw_error = f"FITHAW failed: {_describe(call.error)}"
            if acted:
                if self._last_thaw_at is None:
                    self._thawed_by = by
                self._last_thaw_at = self._clock()
            if self._gc_was_enabled:
                self._gc_was_enabled = False
                gc.enable()

    def thaw(self) -> FreezeResult:
        """Thaw (reverse order), probe, stop the watchdog; idempotent."""
        if self._result is not None:
            return self._result
        with self._lock:
            self._runtime_thawing = True
        self._done.set()
        self._armed.set()
        if self._prepared and self._states and self._ioctl is not None:
            self._thaw_mounts("runtime")
        self._probe_all()
        self._stop_watchdog()
        self._release_resources()
        self._result = self._build_result()
        return self._result

    def _stop_watchdog(self) -> None:
        if self._watchdog is None:
            return
        stuck = any(s.lane is not None and s.lane.stuck for s in self._states)
        blocked = any(s.probe_blocked for s in self._states)
        # After a stuck ioctl or a blocked probe, let it thaw from outside as well
        # (release); it stays up while its own FITHAW waits.
        outcome = self._watchdog.release() if stuck or blocked else self._watchdog.disarm()
        self._watchdog_outcome = outcome
        ours = [s for s in self._states if s.frozen]
        if outcome.thawed and ours and all(s.thawed_elsewhere for s in ours):
            # Every FITHAW of ours found the fs thawed: the watchdog got there first
            # (this process was stopped or starved past the deadline).
            self._thawed_by = "watchdog"
            if outcome.thawed_at is not None and self._clock is time.monotonic:
                self._last_thaw_at = outcome.thawed_at
            if outcome.reason == "deadline":
                self._timed_out = True
                self._fail(
                    ErrorCode.FS_FREEZE_TIMEOUT,
                    f"freeze deadline of {self.timeout_seconds:g}s passed: the watchdog thawed",
                )

    def _probe_all(self) -> None:
        threads: list[tuple[_State, threading.Thread]] = []
        for state in self._states:
            if state.fd is None or not self._freeze_called:
                continue
            if state.already_frozen or state.mount.read_only:
                continue  # not ours to prove / nothing can be written
            dirfd = os.dup(state.fd)
            thread = threading.Thread(
                target=_probe, args=(state, dirfd), name="thaw-probe", daemon=True
            )
            thread.start()
            threads.append((state, thread))
        until = time.monotonic() + PROBE_TIMEOUT
        for state, thread in threads:
            thread.join(max(0.0, until - time.monotonic()))
            if thread.is_alive():
                state.probe_blocked = True
                state.probe_ok = False
                state.probe_error = (
                    f"write+fsync did not complete within {PROBE_TIMEOUT:g}s: still frozen?"
                )

    def _release_resources(self) -> None:
        ioctl = self._ioctl
        for state in self._states:
            if state.fd is not None and ioctl is not None:
                if state.lane is not None and state.lane.stuck:
                    # The stuck ioctl still uses this fd: close it after it, in order.
                    state.lane.submit(ioctl.close, state.fd)
                else:
                    try:
                        ioctl.close(state.fd)
                    except OSError as exc:  # pragma: no cover - close of our own fd
                        state.thaw_error = state.thaw_error or f"close: {_describe(exc)}"
                state.fd = None
            if state.lane is not None:
                state.lane.stop()
        if self._watchdog is not None and self._watchdog_outcome is None:
            self._watchdog.kill()

    def _build_result(self) -> FreezeResult:
        mounts = tuple(
            MountFreezeResult(
                mountpoint=s.mount.mountpoint,
                fstype=s.mount.fstype,
                frozen=s.frozen,
                already_frozen=s.already_frozen,
                error=s.error,
                freeze_seconds=s.freeze_seconds,
                thawed=s.thawed,
                thaw_error=s.thaw_error,
                probe_ok=s.probe_ok,
                probe_error=s.probe_error,
            )
            for s in self._states
        )
        thaw_problems = [
            f"{s.mount.mountpoint}: {s.thaw_error or s.probe_error}"
            for s in self._states
            if (s.thaw_error and not s.freeze_pending) or s.probe_blocked
        ]
        early = [s.mount.mountpoint for s in self._states if s.thawed_elsewhere]
        if early:
            # The freeze did not last until our thaw: a snapshot taken in the
            # window may have caught writes.
            outcome = self._watchdog_outcome
            who = (
                f"the watchdog ({outcome.reason})" if outcome and outcome.thawed else "someone else"
            )
            self._fail(
                ErrorCode.FS_FREEZE_FAILED, f"{early} thawed by {who} before the runtime's thaw"
            )
        if thaw_problems:
            self._fail(ErrorCode.THAW_FAILED, "; ".join(thaw_problems))
        held = any(s.frozen or s.freeze_pending for s in self._states)
        window = 0.0
        if held and self._first_freeze_at is not None and self._last_thaw_at is not None:
            window = max(0.0, self._last_thaw_at - self._first_freeze_at)
        complete = all((s.frozen and s.thawed) or s.already_frozen for s in self._states) and (
            self._freeze_called or not self._states
        )
        return FreezeResult(
            mounts=mounts,
            ok=complete and self._error is None,
            error=self._error,
            error_message=self._error_message,
            first_freeze_at=self._first_freeze_at,
            last_thaw_at=self._last_thaw_at,
            window_seconds=window,
            timed_out=self._timed_out,
            thawed_by=self._thawed_by,
        )


def _probe(state: _State, dirfd: int) -> None:
    """Proof of thaw: create, write, fsync, unlink; runs in its own thread."""
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(state.probe_name, flags, 0o600, dir_fd=dirfd)
        try:
            os.write(fd, b"snapshot-runtime thaw probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(state.probe_name, dir_fd=dirfd)
        if not state.probe_blocked:
            state.probe_ok, state.probe_error = True, None
    except OSError as exc:
        if not state.probe_blocked:
            state.probe_ok, state.probe_error = False, _describe(exc)
    finally:
        os.close(dirfd)
