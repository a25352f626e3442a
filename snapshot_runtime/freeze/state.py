"""What a freeze session knows about each mount, and the result built from it.

``MountState`` is the mutable per-mount bookkeeping of a ``FreezeSession``
(guarded by the session's lock where threads meet); its ``record_*`` methods
decide what an ioctl's outcome means (EBUSY from FIFREEZE: someone else's
freeze, left alone; EINVAL from FITHAW: already thawed by someone else) and
do no I/O, so they are safe inside the frozen window. ``build_result`` is pure:
it turns the states and the session's facts into the frozen
``FreezeResult``, adding the failures only visible at the end:

* a mount our FITHAW found already thawed (EINVAL: the watchdog or an
  operator got there first): the window was cut short, FsFreezeFailed;
* a FITHAW error, or a thaw probe that never finished: ThawFailed.

The first error recorded wins (as everywhere in the session). ``ok`` means
every planned mount was frozen and thawed by us, or was already frozen by
someone else, and no error was recorded. ``window_seconds`` runs from the
first FIFREEZE to the last FITHAW, 0 when nothing was frozen.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.freeze.ioctl import describe_error
from snapshot_runtime.freeze.lanes import IoctlCall, Lane
from snapshot_runtime.freeze.mounts import Mount
from snapshot_runtime.freeze.watchdog_client import WatchdogOutcome

__all__ = ["FreezeResult", "MountFreezeResult", "MountState", "build_result"]


@dataclass(frozen=True)
class MountFreezeResult:
    """One planned mount's part in the freeze."""

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
    """The outcome of a freeze session (``FreezeSession.thaw``)."""

    mounts: tuple[MountFreezeResult, ...]
    ok: bool  # every planned mount frozen (or already frozen by someone else) and thawed
    error: ErrorCode | None
    error_message: str | None
    first_freeze_at: float | None  # clock() when the first FIFREEZE started
    last_thaw_at: float | None  # clock() when the last FITHAW returned
    window_seconds: float  # first FIFREEZE start -> last FITHAW end; 0 if nothing frozen
    timed_out: bool  # the deadline passed and the mounts were thawed regardless
    thawed_by: str  # "runtime" | "deadline" | "watchdog"


class MountState:
    """Mutable per-mount bookkeeping; frozen into MountFreezeResult at the end."""

    def __init__(self, mount: Mount) -> None:
        self.mount = mount
        self.fd: int | None = None
        self.lane: Lane | None = None
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

    def record_freeze(self, call: IoctlCall | None, timeout: float) -> None:
        """What FIFREEZE's outcome means (None: it did not return in ``timeout``)."""
        if call is None:
            self.freeze_pending = True
            self.error = f"FIFREEZE did not return within {timeout:g}s"
        elif call.error is None:
            self.frozen = True
        elif isinstance(call.error, OSError) and call.error.errno == errno.EBUSY:
            self.already_frozen = True
        else:
            self.error = f"FIFREEZE failed: {describe_error(call.error)}"

    def record_thaw(self, call: IoctlCall | None, timeout: float) -> None:
        """What FITHAW's outcome means; EINVAL: someone else thawed it first."""
        if call is None:
            self.thaw_error = f"FITHAW did not return within {timeout:g}s"
        elif call.error is None:
            self.thawed = True
        elif isinstance(call.error, OSError) and call.error.errno == errno.EINVAL:
            self.thawed = self.thawed_elsewhere = True
        else:
            self.thaw_error = f"FITHAW failed: {describe_error(call.error)}"


def build_result(
    states: Sequence[MountState],
    *,
    error: ErrorCode | None,
    error_message: str | None,
    watchdog_outcome: WatchdogOutcome | None,
    freeze_called: bool,
    first_freeze_at: float | None,
    last_thaw_at: float | None,
    timed_out: bool,
    thawed_by: str,
) -> FreezeResult:
    """The session's result; ``error`` is kept when already set (module docstring)."""

    def fail(code: ErrorCode, message: str) -> None:
        nonlocal error, error_message
        if error is None:
            error, error_message = code, message

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
        for s in states
    )
    thaw_problems = [
        f"{s.mount.mountpoint}: {s.thaw_error or s.probe_error}"
        for s in states
        if (s.thaw_error and not s.freeze_pending) or s.probe_blocked
    ]
    early = [s.mount.mountpoint for s in states if s.thawed_elsewhere]
    if early:
        # The freeze did not last until our thaw: a snapshot taken in the
        # window may have caught writes.
        outcome = watchdog_outcome
        who = f"the watchdog ({outcome.reason})" if outcome and outcome.thawed else "someone else"
        fail(ErrorCode.FS_FREEZE_FAILED, f"{early} thawed by {who} before the runtime's thaw")
    if thaw_problems:
        fail(ErrorCode.THAW_FAILED, "; ".join(thaw_problems))
    held = any(s.frozen or s.freeze_pending for s in states)
    window = 0.0
    if held and first_freeze_at is not None and last_thaw_at is not None:
        window = max(0.0, last_thaw_at - first_freeze_at)
    complete = all((s.frozen and s.thawed) or s.already_frozen for s in states) and (
        freeze_called or not states
    )
    return FreezeResult(
        mounts=mounts,
        ok=complete and error is None,
        error=error,
        error_message=error_message,
        first_freeze_at=first_freeze_at,
        last_thaw_at=last_thaw_at,
        window_seconds=window,
        timed_out=timed_out,
        thawed_by=thawed_by,
    )
