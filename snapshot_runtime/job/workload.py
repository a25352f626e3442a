"""The job's built-in database quiescing (workload.conf), as a frozen-window observer.

``before_freeze`` (the last moment for I/O, after everything else is
prepared, so commits stall for as short a time as possible) quiesces;
``after_thaw`` (called always once the window began: I4's ``finally``)
releases in the same session. Nothing touches the database in between (I1).
The job also calls ``release`` in its own ``finally``: idempotent, so a job
stopped before the window, or by SIGTERM, never leaves the lock held.

Subscribe it first: its quiesce logs before the log gate closes, and its
release (reverse order) runs after the gate reopened.
"""

from __future__ import annotations

from dataclasses import dataclass

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.core.phases import PhaseRecorder
from snapshot_runtime.inputs.workload_conf import WorkloadConf
from snapshot_runtime.quiesce.quiescer import QuiesceError, QuiesceFacts, Quiescer, ReleaseFacts
from snapshot_runtime.quiesce.select import open_quiescer
from snapshot_runtime.telemetry.job_log import JobLog

__all__ = ["WorkloadOutcome", "WorkloadSession"]


@dataclass
class WorkloadOutcome:
    """What the workload step learned, for the verdict, the record and the status."""

    name: str
    quiesced: QuiesceFacts | None = None
    released: ReleaseFacts | None = None
    error: ErrorCode | None = None
    message: str | None = None

    @property
    def held(self) -> bool:
        """Quiesced and released in time: the condition for application-consistent."""
        return (
            self.error is None
            and self.quiesced is not None
            and self.released is not None
            and self.released.ok
        )


class WorkloadSession:
    """Quiesce before the freeze, release after the thaw (see the module doc)."""

    def __init__(self, conf: WorkloadConf, *, phases: PhaseRecorder, log: JobLog) -> None:
        assert conf.name is not None
        self.conf = conf
        self.phases = phases
        self.log = log
        self.outcome = WorkloadOutcome(name=conf.name, error=conf.error, message=conf.problem)
        self.quiescer: Quiescer | None = None
        if conf.error is None:
            self.quiescer = open_quiescer(conf)
            if self.quiescer is None:
                self.outcome.error = ErrorCode.WORKLOAD_UNSUPPORTED
                self.outcome.message = (
                    f"workload {conf.name} is recognised but not quiesced by this runtime: "
                    "the snapshot is filesystem-consistent"
                )
        self._released = False

    # -- WindowObserver -------------------------------------------------

    def before_freeze(self) -> None:
        log = self.log.phase("workload_quiesce")
        if self.quiescer is None:
            log.warning(
                "workload {}: not quiesced: {} ({})",
                self.outcome.name,
                self.outcome.message,
                self.outcome.error.value if self.outcome.error else "-",
            )
            return
        with self.phases.phase("workload_quiesce") as ph:
            ph.attributes["workload"] = self.outcome.name
            try:
                facts = self.quiescer.quiesce()
            except QuiesceError as exc:
                self.outcome.error, self.outcome.message = exc.code, exc.message
                ph.fail(exc.code, exc.message)
                log.error("workload {}: quiesce failed: {}", self.outcome.name, exc.message)
                return
            except Exception as exc:  # an observer never raises into the window
                self.outcome.error = ErrorCode.WORKLOAD_PRE_ERROR
                self.outcome.message = f"quiesce: {type(exc).__name__}"
                ph.fail(self.outcome.error, self.outcome.message)
                log.error("workload {}: quiesce failed: {}", self.outcome.name, exc)
                return
            self.outcome.quiesced = facts
            if facts.note:
                log.warning("workload {}: {}", facts.workload, facts.note)
            ph.attributes["method"] = facts.method
            ph.attributes["log_position"] = facts.log_position or ""
            ph.attributes["server_version"] = facts.server_version
            log.info(
                "workload {}: quiesced by {} in {:.3f}s (server {}); {} position {}; "
                "hold deadline {}s{}",
                facts.workload,
                facts.method,
                facts.quiesce_seconds,
                facts.server_version,
                "WAL" if facts.workload == "postgres" else "binlog",
                facts.log_position or "none (no binlog)",
                facts.hold_deadline_seconds,
                "; commits blocked until the release" if facts.blocks_commits else "",
            )

    def frozen(self) -> None:
        """Nothing: the hold needs no action while frozen (I1)."""

    def after_thaw(self) -> None:
        self.release()

    # -- the job's own calls ----------------------------------------------

    def release(self) -> None:
        """Release once (idempotent); never raises."""
        if self._released or self.quiescer is None:
            return
        self._released = True
        if self.outcome.quiesced is None:
            # A quiesce that failed half-way may still hold a session: close it.
            self.quiescer.release()
            return
        log = self.log.phase("workload_release")
        with self.phases.phase("workload_release") as ph:
            ph.attributes["workload"] = self.outcome.name
            try:
                released = self.quiescer.release()
            except Exception as exc:  # release() promises not to raise; belt and braces
                released = ReleaseFacts(
                    False, ErrorCode.WORKLOAD_POST_ERROR, f"release: {type(exc).__name__}", None, 0
                )
            self.outcome.released = released
            if released.stall_seconds is not None:
                ph.attributes["write_stall_seconds"] = released.stall_seconds
            if not released.ok:
                self.outcome.error = released.error
                self.outcome.message = released.message
                ph.fail(released.error, released.message)
                log.error(
                    "workload {}: the hold was lost before the release ({}): "
                    "not application-consistent",
                    self.outcome.name,
                    released.message,
                )
            else:
                log.info(
                    "workload {}: released after {:.3f}s{}",
                    self.outcome.name,
                    released.held_seconds,
                    f"; commits were blocked {released.stall_seconds:.3f}s"
                    if released.stall_seconds is not None
                    else "",
                )
