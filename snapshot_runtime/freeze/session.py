"""Freeze and thaw the planned filesystems: FIFREEZE/FITHAW, bounded, always thawed.

``FreezeSession`` is the entry point::

    with FreezeSession(plan, timeout_seconds=60) as session:
        session.prepare()          # may raise FreezeError
        if session.freeze():
            take_snapshots()
    result = session.thaw()        # idempotent; __exit__ calls it too

Contracts (the operator's view, with the reasons, is docs/freeze.md):

* **prepare()** does everything the frozen window needs: opens every mount
  and resolves syncfs (``fsioctl``), starts one ioctl lane per mount
  (``freeze_lanes``) and the deadline timer thread, names the probe files,
  and starts the thaw watchdog and waits until it is armed
  (``watchdog_client``). Raises ``FreezeError`` (UnableToOpenMount, or
  FsFreezeFailed when the watchdog cannot be armed); ``thaw()`` then reports
  the same error.
* **freeze()** syncfs()es every filesystem, re-arms the watchdog with the
  real deadline and waits for its ack (no ack, no freeze: freeze() must
  follow prepare() within ``timeout_seconds``), then FIFREEZEs in plan order.
  EBUSY (someone else's freeze) is ``already_frozen``, never thawed by us nor
  by the watchdog. Any other failure, or a FIFREEZE not back within
  ``per_ioctl_timeout`` (its FITHAW and close queue behind it, and the
  watchdog is released to thaw from outside too), thaws what we froze and
  returns False (FsFreezeFailed).
* **Frozen window (I1)**: between the first FIFREEZE and the last FITHAW this
  module opens no file, writes to no filesystem, logs nothing, imports
  nothing and starts no thread; it only waits on pre-started threads, reads
  ``clock`` and writes at most one line to the watchdog pipe (pipefs, never
  frozen). The cyclic garbage collector is paused for the window.
* **Deadline (I4)**: ``timeout_seconds`` after the first FIFREEZE the timer
  thread thaws everything even if the caller is busy (``timed_out``,
  FsFreezeTimeout, ``thawed_by`` = "deadline") and stands the watchdog down.
  The watchdog fires ``WATCHDOG_GRACE_SECONDS`` later, so it only acts when
  this process cannot (on a kill it sees EOF and thaws at once). A FITHAW
  finding a mount already thawed means the window was cut short:
  FsFreezeFailed (FsFreezeTimeout when the watchdog's deadline did it),
  ``thawed_by`` = "watchdog".
* **thaw()** FITHAWs in reverse plan order, then proves the thaw
  (``thaw_probe``; not finished within ``PROBE_TIMEOUT``: ThawFailed) and
  builds the result (``freeze_state``).

Threads: ``thaw()`` may race the deadline timer; both go through one lock.
The session object is otherwise not thread-safe. Time comes from ``clock``
(``time.monotonic``); the watchdog always uses CLOCK_MONOTONIC.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType

from snapshot_runtime.core.defaults import DEFAULT_FREEZE_TIMEOUT
from snapshot_runtime.core.errors import ErrorCode, FreezeError
from snapshot_runtime.freeze.ioctl import (
    FreezeIoctl,
    KernelFreezeIoctl,
    describe_error,
)
from snapshot_runtime.freeze.lanes import Lane
from snapshot_runtime.freeze.mounts import FreezePlan
from snapshot_runtime.freeze.state import (
    FreezeResult,
    MountState,
    build_result,
)
from snapshot_runtime.freeze.thaw_probe import PROBE_PREFIX, probe_all
from snapshot_runtime.freeze.watchdog_client import WatchdogClient, WatchdogOutcome

__all__ = [
    "DEFAULT_PER_IOCTL_TIMEOUT",
    "WATCHDOG_GRACE_SECONDS",
    "FreezeSession",
]

DEFAULT_PER_IOCTL_TIMEOUT = 10.0
# The watchdog is the backstop: it fires this long after our own deadline so
# the two never race while this process is healthy.
WATCHDOG_GRACE_SECONDS = 0.2


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
        self._states = [MountState(m) for m in plan.mounts]
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

    @property
    def already_frozen(self) -> tuple[str, ...]:
        """Mountpoints FIFREEZE found frozen by someone else (EBUSY): not our freeze."""
        return tuple(s.mount.mountpoint for s in self._states if s.already_frozen)

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
                state.error = f"cannot open: {describe_error(exc)}"
        unopened = [s.mount.mountpoint for s in self._states if s.fd is None]
        if unopened:
            self._abort_prepare(ErrorCode.UNABLE_TO_OPEN_MOUNT, f"cannot open {unopened}")
        for index, state in enumerate(self._states):
            state.lane = Lane(f"freeze-lane-{index}")
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
        failed: MountState | None = None
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
                state.record_freeze(call, self.per_ioctl_timeout)
                if state.already_frozen:
                    leave_frozen.append(state.mount.mountpoint)
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
                state.record_thaw(call, self.per_ioctl_timeout)
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
        if not self._freeze_called:
            return
        probe_all(
            [
                (state, state.fd)
                for state in self._states
                # Not ours to prove (someone else's freeze) / nothing can be written.
                if state.fd is not None and not state.already_frozen and not state.mount.read_only
            ]
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
                        state.thaw_error = state.thaw_error or f"close: {describe_error(exc)}"
                state.fd = None
            if state.lane is not None:
                state.lane.stop()
        if self._watchdog is not None and self._watchdog_outcome is None:
            self._watchdog.kill()

    def _build_result(self) -> FreezeResult:
        result = build_result(
            self._states,
            error=self._error,
            error_message=self._error_message,
            watchdog_outcome=self._watchdog_outcome,
            freeze_called=self._freeze_called,
            first_freeze_at=self._first_freeze_at,
            last_thaw_at=self._last_thaw_at,
            timed_out=self._timed_out,
            thawed_by=self._thawed_by,
        )
        self._error, self._error_message = result.error, result.error_message
        return result
