"""The frozen-window sequence: choose, prepare, freeze, snapshot all disks, thaw (I1, I4).

``FrozenWindowSequence.run`` is the job's middle: the snapshot backend chosen
through the registry (``snapshot.registry``: each backend may decline, the
declines are recorded), its preflight and warmed connections, a ready
``Freezer`` from the injected factory (mount fds, the watchdog), then either
the frozen window, the crash-consistent fallback after a freeze that could not
happen, or a snapshot without a freeze. It records what happens in the job's
``JobState``; ``consistency`` decides.

Frozen window (I1): between ``Freezer.freeze()`` and the return of
``Freezer.thaw()`` this module calls nothing but ``Snapshotter.snapshot_all()``,
memory-only bookkeeping (phase records) and one log line; the window's
observers (``core.window.WindowObserver``: the log gate, telemetry) are told
``before_freeze`` (their last I/O), ``frozen`` and ``after_thaw``, so no sink
writes to a filesystem that may be frozen. This module knows nothing of what
they do. Everything it needs is imported at the top and prepared before the
first FIFREEZE. I4: the thaw is in a ``finally``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence

from snapshot_runtime.core.consistency import decide_after_freeze
from snapshot_runtime.core.errors import ErrorCode, FreezeError
from snapshot_runtime.core.phases import PhaseRecorder
from snapshot_runtime.core.window import WindowObserver
from snapshot_runtime.freeze.freezer import Freezer, FreezerFactory
from snapshot_runtime.job.records import GuestAttempt, JobOptions
from snapshot_runtime.job.state import JobState
from snapshot_runtime.snapshot.backend import SnapshotRequest, Snapshotter, SnapshotterFactory
from snapshot_runtime.snapshot.host import (
    GUEST_BACKEND,
    HOST_BACKEND,
    HOST_REQUIRED_BACKEND,
    HostSnapshotter,
)
from snapshot_runtime.snapshot.registry import choose_backend
from snapshot_runtime.snapshot.results import SnapshotResult
from snapshot_runtime.telemetry.job_log import JobLog

__all__ = ["FrozenWindowSequence"]


class FrozenWindowSequence:
    """Choose, prepare, freeze, snapshot, thaw for one job; the results go to ``state``.

    - ``backends``: the snapshot backend table (``registry.BACKENDS`` unless a
      caller adds its own); ``options.snapshot_backends`` is the preference order.
    - ``freezer_factory``: builds the ``Freezer`` for the plan.
    - ``observers``: told when the window starts and ends (``WindowObserver``).
    """

    def __init__(
        self,
        options: JobOptions,
        state: JobState,
        *,
        log: JobLog,
        phases: PhaseRecorder,
        backends: Mapping[str, SnapshotterFactory],
        freezer_factory: FreezerFactory,
        observers: Sequence[WindowObserver] = (),
    ) -> None:
        self.options = options
        self.state = state
        self.log = log
        self.phases = phases
        self.backends = backends
        self.freezer_factory = freezer_factory
        self.observers = tuple(observers)
        self._fallback_backend: str | None = None

    def run(self, freeze_enabled: bool) -> None:
        """Snapshot every disk, inside a frozen window when ``freeze_enabled``.

        firstGuestThenHost: when every guest snapshot failed (after the thaw),
        the host path runs once more with its own prepare, freeze (a new
        Freezer: a new session and watchdog), ONE dosnapshot and thaw; its
        presnapshot is asked before that second freeze (docs/host-snapshot.md).
        """
        self._run_once(freeze_enabled, self._choose_backend)
        host = self._host_after_failed_guest()
        if host is not None:
            self._keep_guest_attempt()
            self._run_once(freeze_enabled, lambda: host)

    def _run_once(self, freeze_enabled: bool, choose: Callable[[], Snapshotter | None]) -> None:
        """One prepare, then at most one frozen window (or none), its thaw and its log."""
        settings = self.state.settings
        assert settings is not None and self.state.plan is not None
        log = self.log.phase("prepare")
        freezer: Freezer | None = None
        snapshotter: Snapshotter | None = None
        in_window = False
        try:
            with self.phases.phase("prepare") as ph:
                snapshotter = choose()
                ph.attributes["snapshot_backend"] = self.state.backend or "none"
                if self.state.backends_declined:
                    ph.attributes["snapshot_backends_declined"] = [
                        f"{d.name}: {d.reason}" for d in self.state.backends_declined
                    ]
                if snapshotter is None:
                    ph.fail(ErrorCode.SNAPSHOT_FAILED, self._no_backend_message())
                    self.state.snapshot = _no_backend_result(self._no_backend_message())
                    return
                late = _too_late_by_host_clock(snapshotter, settings.command_start_utc)
                if late is not None:
                    log.error("{}", late)
                    ph.fail(ErrorCode.COMMAND_TOO_LATE, late)
                    self.state.snapshot = _no_backend_result(late, ErrorCode.COMMAND_TOO_LATE)
                    return
                disks = _disk_count(snapshotter, len(settings.disk_sas_urls))
                failures = snapshotter.prepare()
                self.state.preflight_failures = failures
                for failure in failures:
                    log.warning("disk {} failed preflight: {}", failure.blob_url, failure.error)
                if freeze_enabled:
                    freezer = self._prepare_freeze()
                ph.attributes["mounts"] = [m.mountpoint for m in self.state.plan.mounts]
                ph.attributes["mount_count"] = len(self.state.plan.mounts)
                ph.attributes["disk_count"] = disks
                if freeze_enabled:
                    log.info(
                        "ready: {} mount(s) to freeze {}, {} disk(s)",
                        len(self.state.plan.mounts),
                        [m.mountpoint for m in self.state.plan.mounts],
                        disks or "every",
                    )
                else:
                    log.info("ready: {} disk(s), no freeze", disks or "every")
            if freezer is not None:
                in_window = True
                self._frozen_window(freezer, snapshotter, disks)
            elif self.state.freeze_attempted:
                self._after_failed_freeze(snapshotter, disks)
            else:
                self._snapshot_phase(snapshotter)
        finally:
            # Thaw first (a no-op after a normal window), then let the observers
            # write what they held (I1, I4).
            if freezer is not None and self.state.freeze is None:
                self.state.freeze = freezer.thaw()
            if in_window:
                for observer in reversed(self.observers):
                    observer.after_thaw()
            if snapshotter is not None:
                snapshotter.close()
        self._log_freeze_outcome()

    def _choose_backend(self) -> Snapshotter | None:
        """The first backend (in ``options.snapshot_backends`` order) that accepts."""
        settings = self.state.settings
        assert settings is not None
        log = self.log.phase("prepare")
        choice = choose_backend(
            self.options.snapshot_backends,
            SnapshotRequest(
                settings=settings,
                policy=self.options.blob_policy,
                deadline_seconds=self.options.snapshot_deadline(),
            ),
            backends=self.backends,
        )
        self.state.backend = choice.name
        self.state.backends_declined = choice.declined
        for declined in choice.declined:
            log.warning("snapshot backend {} declined: {}", declined.name, declined.reason)
        if choice.name is not None:
            log.info("snapshot backend: {}", choice.name)
        return choice.snapshotter

    def _host_after_failed_guest(self) -> Snapshotter | None:
        """The host backend for firstGuestThenHost's fallback, or None (no second window).

        The reference falls back only when **every** guest snapshot failed
        (reference §3, "Modes and fallback"); a partial failure is final. Not
        after a freeze or thaw that went wrong (the verdict already says why),
        nor after an interrupt. The host is asked here, not frozen: its
        ``decide()`` sends the presnapshot before the second freeze (I1).
        """
        state = self.state
        names = self.options.snapshot_backends
        snap = state.snapshot
        if state.backend != GUEST_BACKEND or state.backend not in names:
            return None
        hosts = tuple(
            n
            for n in names[names.index(state.backend) + 1 :]
            if n in (HOST_BACKEND, HOST_REQUIRED_BACKEND)
        )
        if not hosts or snap is None or not snap.disks or snap.ok_count or state.interrupted:
            return None
        if state.freeze is not None and (state.freeze.error or state.freeze.timed_out):
            return None
        if state.freeze_attempted and not state.freeze_ok:
            return None
        settings = state.settings
        assert settings is not None
        log = self.log.phase("prepare")
        if state.workload_conf is not None:
            # The workload quiesces once per job (its release is once, then a no-op):
            # a second window would hold the database with nothing to release it.
            log.warning(
                "every guest snapshot failed; no host fallback for a workload.conf job "
                "(its quiesce runs once per job): the guest path's result stands"
            )
            return None
        log.warning(
            "every guest snapshot failed ({}): firstGuestThenHost falls back to the host, "
            "which freezes again",
            snap.error.value if snap.error else "no error code",
        )
        choice = choose_backend(
            hosts,
            SnapshotRequest(
                settings=settings,
                policy=self.options.blob_policy,
                deadline_seconds=self.options.snapshot_deadline(),
            ),
            backends=self.backends,
        )
        state.backends_declined = (*state.backends_declined, *choice.declined)
        for declined in choice.declined:
            log.warning("snapshot backend {} declined: {}", declined.name, declined.reason)
        if choice.snapshotter is None:
            log.error("no host backend for the fallback: the guest path's result stands")
            return None
        log.info("snapshot backend: {} (after the failed guest snapshot)", choice.name)
        self._fallback_backend = choice.name
        return choice.snapshotter

    def _keep_guest_attempt(self) -> None:
        """Move the guest window's figures aside; the host window's count (docs/consistency.md)."""
        state = self.state
        assert state.backend is not None
        state.guest_attempt = GuestAttempt(
            backend=state.backend,
            freeze_attempted=state.freeze_attempted,
            freeze_ok=state.freeze_ok,
            freeze=state.freeze,
            snapshot=state.snapshot,
        )
        state.backend = self._fallback_backend
        state.freeze_attempted = False
        state.freeze_ok = False
        state.freeze_error = None
        state.freeze_message = None
        state.freeze_not_owned = ()
        # Nothing is frozen between the windows: the backstop's record says so.
        state.freeze_deadline_at = None
        state.freeze = None
        state.snapshot = None
        state.preflight_failures = []

    def _no_backend_message(self) -> str:
        reasons = "; ".join(f"{d.name}: {d.reason}" for d in self.state.backends_declined)
        return f"no snapshot backend accepted the job ({reasons or 'none configured'})"

    def _prepare_freeze(self) -> Freezer | None:
        """A ready Freezer, or None when there is nothing (or no way) to freeze.

        Records a freeze failure when a requested mount is not mounted or a
        mount cannot be opened: the verdict then decides (crash-consistent
        fallback on a single disk, no snapshot on several).
        """
        plan = self.state.plan
        assert plan is not None
        log = self.log.phase("prepare")
        missing = [s.mountpoint for s in plan.skipped if s.reason == "not_mounted"]
        if missing:
            self._record_freeze_failure(
                ErrorCode.UNABLE_TO_OPEN_MOUNT,
                f"not a mounted, freezable filesystem: {', '.join(missing)}",
            )
            return None
        if not plan.mounts:
            log.warning("no eligible filesystem to freeze: snapshot without a freeze")
            return None
        freezer = self.freezer_factory(plan)
        try:
            freezer.prepare()
        except FreezeError as exc:
            self.state.freeze = freezer.thaw()
            self._record_freeze_failure(exc.code, exc.message)
            return None
        return freezer

    def _record_freeze_failure(self, code: ErrorCode, message: str) -> None:
        self.state.freeze_attempted = True
        self.state.freeze_ok = False
        self.state.freeze_error = code
        self.state.freeze_message = message
        self.log.phase("freeze").error("freeze not possible: {}", message)

    def _after_failed_freeze(self, snapshotter: Snapshotter, disks: int) -> None:
        after = decide_after_freeze(
            freeze_ok=False, freeze_error=self.state.freeze_error, disk_count=disks
        )
        if after.proceed:
            self._snapshot_phase(snapshotter)

    def _snapshot_phase(self, snapshotter: Snapshotter) -> None:
        with self.phases.phase("snapshot") as ph:
            result = snapshotter.snapshot_all()
            self.state.snapshot = result
            ph.attributes["disk_count"] = len(result.disks)
            ph.attributes["disks_ok"] = result.ok_count
            if result.error:
                ph.fail(result.error, result.error_message)

    def _frozen_window(self, freezer: Freezer, snapshotter: Snapshotter, disks: int) -> None:
        self.state.freeze_attempted = True
        # Before the observers' last I/O: the record they write names the mounts
        # about to be frozen and the deadline, so the sidecar's backstop knows
        # exactly what a runtime that dies now (with its watchdog) leaves frozen.
        self.state.freeze_deadline_at = time.time() + self.options.freeze_timeout_seconds
        for observer in self.observers:
            observer.before_freeze()
        # I1: from here to freezer.thaw(): no file writes, no imports, no network but
        # the snapshot requests. The observers hold their writes in memory.
        plan = self.state.plan
        with self.phases.phase("freeze") as ph:
            if plan is not None:
                ph.attributes["mounts"] = [m.mountpoint for m in plan.mounts]
                ph.attributes["mount_count"] = len(plan.mounts)
            self.state.freeze_ok = freezer.freeze()
            if not self.state.freeze_ok:
                partial = freezer.thaw()
                self.state.freeze = partial
                self.state.freeze_error = partial.error or ErrorCode.FS_FREEZE_FAILED
                self.state.freeze_message = partial.error_message
                ph.fail(self.state.freeze_error, partial.error_message)
            else:
                for observer in self.observers:
                    observer.frozen()
                # Held in memory for the local log; appended to the tmpfs spool at
                # once (the line a SIGKILL inside the window must not lose, I2).
                self.log.phase("freeze").info(
                    "filesystems frozen: snapshot of {} disk(s) started", disks
                )
        # EBUSY: someone else's freeze, left as is; not ours to claim (issue 11).
        self.state.freeze_not_owned = freezer.already_frozen if self.state.freeze_ok else ()
        after = decide_after_freeze(
            freeze_ok=self.state.freeze_ok,
            freeze_error=self.state.freeze_error,
            disk_count=disks,
            freeze_not_owned=bool(self.state.freeze_not_owned),
        )
        if after.proceed:
            self._snapshot_phase(snapshotter)
        if self.state.freeze is None:
            with self.phases.phase("thaw") as ph:
                self.state.freeze = freezer.thaw()
                ph.attributes["frozen_window_seconds"] = self.state.freeze.window_seconds
                ph.attributes["thawed_by"] = self.state.freeze.thawed_by
                ph.attributes["freeze_timed_out"] = self.state.freeze.timed_out
                if self.state.freeze.error:
                    ph.fail(self.state.freeze.error, self.state.freeze.error_message)

    def _log_freeze_outcome(self) -> None:
        result = self.state.freeze
        log = self.log.phase("thaw")
        if result is None:
            return
        log.info(
            "frozen window {:.3f}s over {} mount(s), thawed by {}",
            result.window_seconds,
            sum(1 for m in result.mounts if m.frozen),
            result.thawed_by,
        )
        for mount in result.mounts:
            if mount.already_frozen:
                log.warning(
                    "{} was already frozen by someone else: left as is; this job does not "
                    "hold that freeze and claims no consistency from it",
                    mount.mountpoint,
                )
            if mount.error:
                log.error("{}: {}", mount.mountpoint, mount.error)
            if mount.probe_ok is False:
                log.error("{} is not writable after thaw: {}", mount.mountpoint, mount.probe_error)
            elif mount.probe_ok:
                log.info("{} accepts writes again (proof of thaw)", mount.mountpoint)
        if result.timed_out:
            log.error("freeze deadline passed: thawed before the snapshots completed")
        if self.state.snapshot is not None:
            for disk in self.state.snapshot.disks:
                if disk.ok:
                    log.info(
                        "disk {} snapshot {} in {:.3f}s ({} attempt(s))",
                        disk.blob_url,
                        disk.snapshot,
                        disk.duration_seconds,
                        disk.attempts,
                    )
                else:
                    log.error("disk {} failed: {}", disk.blob_url, disk.error)


def _disk_count(snapshotter: Snapshotter, guest_disks: int) -> int:
    """The disks the chosen backend snapshots: what the single-disk crash rule counts.

    The host backend asks for its LUNs, not the guest disk URLs (a host-only
    job has none); 0 stands for "every disk of the VM" (an empty LUN list),
    which is not one disk, so a failed freeze stops such a job.
    """
    if isinstance(snapshotter, HostSnapshotter):
        return snapshotter.disk_count or 0
    return guest_disks


def _too_late_by_host_clock(snapshotter: Snapshotter, start: dt.datetime | None) -> str | None:
    """The 140-minute limit by the host's clock (host path only; before any freeze)."""
    if isinstance(snapshotter, HostSnapshotter):
        return snapshotter.too_late_by_host_clock(start)
    return None


def _no_backend_result(
    message: str, error: ErrorCode = ErrorCode.SNAPSHOT_FAILED
) -> SnapshotResult:
    """Nothing was snapshotted, no freeze: every backend declined (or ``error``)."""
    return SnapshotResult(
        disks=(),
        ok=False,
        error=error,
        error_message=message,
        duration_seconds=0.0,
        deadline_hit=False,
    )
