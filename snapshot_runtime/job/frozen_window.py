"""The frozen-window sequence: prepare, freeze, snapshot all disks, thaw (I1, I4).

``FrozenWindowSequence.run`` is the job's middle: the snapshotter's preflight
and warmed connections, a ready ``FreezeSession`` (mount fds, the watchdog),
then either the frozen window, the crash-consistent fallback after a freeze
that could not happen, or a snapshot without a freeze. It records what happens
in the job's ``JobState``; ``consistency`` decides.

Frozen window (I1): between ``FreezeSession.freeze()`` and the return of
``FreezeSession.thaw()`` this module calls nothing but
``DiskSnapshotter.snapshot_all()``, memory-only bookkeeping (phase records,
spans) and one log line; the log gate is closed for the whole window so no
sink writes to a filesystem that may be frozen. Everything it needs is
imported at the top of this module and prepared before the first FIFREEZE.
I4: the thaw is in a ``finally``.
"""

from __future__ import annotations

import os
import time

from snapshot_runtime.core.consistency import decide_after_freeze
from snapshot_runtime.core.errors import ErrorCode, FreezeError
from snapshot_runtime.core.phases import PhaseRecorder
from snapshot_runtime.freeze.session import FreezeSession
from snapshot_runtime.job.records import JobOptions
from snapshot_runtime.job.state import JobState
from snapshot_runtime.snapshot.azure_blob import DiskSnapshotter
from snapshot_runtime.telemetry.job_log import JobLog
from snapshot_runtime.telemetry.job_telemetry import JobTelemetry

__all__ = ["FrozenWindowSequence"]


class FrozenWindowSequence:
    """Prepare, freeze, snapshot, thaw for one job; the results go to ``state``."""

    def __init__(
        self,
        options: JobOptions,
        state: JobState,
        *,
        log: JobLog,
        phases: PhaseRecorder,
        telemetry: JobTelemetry | None,
    ) -> None:
        self.options = options
        self.state = state
        self.log = log
        self.phases = phases
        self.telemetry = telemetry

    def run(self, freeze_enabled: bool) -> None:
        """Snapshot every disk, inside a frozen window when ``freeze_enabled``."""
        settings = self.state.settings
        assert settings is not None and self.state.plan is not None
        log = self.log.phase("prepare")
        snapshotter = DiskSnapshotter(
            settings.disk_sas_urls,
            policy=self.options.blob_policy,
            deadline_seconds=self.options.snapshot_deadline(),
            metadata=dict(settings.backup_metadata),
        )
        session: FreezeSession | None = None
        try:
            with self.phases.phase("prepare") as ph:
                failures = snapshotter.prepare()
                self.state.preflight_failures = failures
                for failure in failures:
                    log.warning("disk {} failed preflight: {}", failure.blob_url, failure.error)
                if freeze_enabled:
                    session = self._prepare_freeze()
                ph.attributes["mounts"] = [m.mountpoint for m in self.state.plan.mounts]
                ph.attributes["mount_count"] = len(self.state.plan.mounts)
                ph.attributes["disk_count"] = len(settings.disk_sas_urls)
                if freeze_enabled:
                    log.info(
                        "ready: {} mount(s) to freeze {}, {} disk(s)",
                        len(self.state.plan.mounts),
                        [m.mountpoint for m in self.state.plan.mounts],
                        len(settings.disk_sas_urls),
                    )
                else:
                    log.info("ready: {} disk(s), no freeze", len(settings.disk_sas_urls))
            if session is not None:
                self._frozen_window(session, snapshotter, len(settings.disk_sas_urls))
            elif self.state.freeze_attempted:
                self._after_failed_freeze(snapshotter, len(settings.disk_sas_urls))
            else:
                self._snapshot_phase(snapshotter)
        finally:
            # Thaw first (a no-op after a normal window), then release the held logs (I1).
            if session is not None and self.state.freeze is None:
                self.state.freeze = session.thaw()
            self.log.gate.open()
            snapshotter.close()
        self._log_freeze_outcome()

    def _prepare_freeze(self) -> FreezeSession | None:
        """A ready FreezeSession, or None when there is nothing (or no way) to freeze.

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
        spool = self.telemetry.spool if self.telemetry else None
        # docs/spool.md: the sidecar reads watchdog reports from the spool.
        wanted = spool.watchdog_dir if spool is not None else self.options.run_dir
        report_dir: str | None = wanted
        try:
            os.makedirs(wanted, mode=0o700, exist_ok=True)
        except OSError as exc:
            # Only the watchdog's after-the-fact report is lost; the thaw guard is not.
            log.warning("watchdog report directory {}: {}", wanted, exc)
            report_dir = None
        session = FreezeSession(
            plan,
            timeout_seconds=self.options.freeze_timeout_seconds,
            use_watchdog=self.options.use_watchdog,
            watchdog_report_dir=report_dir,
        )
        try:
            session.prepare()
        except FreezeError as exc:
            self.state.freeze = session.thaw()
            self._record_freeze_failure(exc.code, exc.message)
            return None
        return session

    def _record_freeze_failure(self, code: ErrorCode, message: str) -> None:
        self.state.freeze_attempted = True
        self.state.freeze_ok = False
        self.state.freeze_error = code
        self.state.freeze_message = message
        self.log.phase("freeze").error("freeze not possible: {}", message)

    def _after_failed_freeze(self, snapshotter: DiskSnapshotter, disks: int) -> None:
        after = decide_after_freeze(
            freeze_ok=False, freeze_error=self.state.freeze_error, disk_count=disks
        )
        if after.proceed:
            self._snapshot_phase(snapshotter)

    def _snapshot_phase(self, snapshotter: DiskSnapshotter) -> None:
        with self.phases.phase("snapshot") as ph:
            result = snapshotter.snapshot_all()
            self.state.snapshot = result
            ph.attributes["disk_count"] = len(result.disks)
            ph.attributes["disks_ok"] = result.ok_count
            if result.error:
                ph.fail(result.error, result.error_message)
        if self.telemetry is not None:
            self.telemetry.on_snapshot(result)

    def _frozen_window(
        self, session: FreezeSession, snapshotter: DiskSnapshotter, disks: int
    ) -> None:
        self.state.freeze_attempted = True
        # Last spool write before the window: the record names the mounts about
        # to be frozen and the deadline, so the sidecar's backstop knows exactly
        # what a runtime that dies now (with its watchdog) leaves frozen.
        self.state.freeze_deadline_at = time.time() + self.options.freeze_timeout_seconds
        if self.telemetry is not None:
            self.telemetry.flush()
        # I1: from here to session.thaw(): no file writes, no imports, no network but
        # the snapshot requests. Logs are held in memory by the closed gate.
        self.log.gate.close()
        plan = self.state.plan
        with self.phases.phase("freeze") as ph:
            if plan is not None:
                ph.attributes["mounts"] = [m.mountpoint for m in plan.mounts]
                ph.attributes["mount_count"] = len(plan.mounts)
            self.state.freeze_ok = session.freeze()
            if not self.state.freeze_ok:
                partial = session.thaw()
                self.state.freeze = partial
                self.state.freeze_error = partial.error or ErrorCode.FS_FREEZE_FAILED
                self.state.freeze_message = partial.error_message
                ph.fail(self.state.freeze_error, partial.error_message)
            else:
                # Held in memory for the local log; appended to the tmpfs spool at
                # once (the line a SIGKILL inside the window must not lose, I2).
                self.log.phase("freeze").info(
                    "filesystems frozen: snapshot of {} disk(s) started", disks
                )
        after = decide_after_freeze(
            freeze_ok=self.state.freeze_ok,
            freeze_error=self.state.freeze_error,
            disk_count=disks,
        )
        if after.proceed:
            self._snapshot_phase(snapshotter)
        if self.state.freeze is None:
            with self.phases.phase("thaw") as ph:
                self.state.freeze = session.thaw()
                ph.attributes["frozen_window_seconds"] = self.state.freeze.window_seconds
                ph.attributes["thawed_by"] = self.state.freeze.thawed_by
                ph.attributes["freeze_timed_out"] = self.state.freeze.timed_out
                if self.state.freeze.error:
                    ph.fail(self.state.freeze.error, self.state.freeze.error_message)
        self.log.gate.open()

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
                log.warning("{} was already frozen by someone else: left as is", mount.mountpoint)
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
