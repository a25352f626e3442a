"""What a job's phases learn (``JobState``), and what is built from it.

Pure: the verdict's inputs (``job_verdict``), the status message
(``final_message``), the ``JobReport`` (``build_report``) and the job's part
of the telemetry record (``job_record_facts``) are functions of the state; the
phases (``job``, ``frozen_window``, ``job_status``) fill it in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.core.phases import PhaseRecord
from snapshot_runtime.inputs.settings import HandlerSettings
from snapshot_runtime.job.records import GuestAttempt, JobReport
from snapshot_runtime.telemetry.record import RecordFacts

if TYPE_CHECKING:
    from snapshot_runtime.core.consistency import ConfigState, Verdict

    # Only named in annotations: the job's state is built at start-up, before
    # the freezer, the script runner and the quiescers are imported (docs/startup.md).
    from snapshot_runtime.freeze.mounts import FreezePlan
    from snapshot_runtime.freeze.state import FreezeResult
    from snapshot_runtime.inputs.plugin_config import PluginConfig
    from snapshot_runtime.inputs.workload_conf import WorkloadConf
    from snapshot_runtime.job.workload import WorkloadOutcome
    from snapshot_runtime.scripts.runner import ScriptResult
    from snapshot_runtime.snapshot.registry import BackendDeclined
    from snapshot_runtime.snapshot.results import DiskSnapshot, SnapshotResult

__all__ = [
    "JobState",
    "build_report",
    "final_message",
    "guest_attempt_facts",
    "job_record_facts",
    "job_verdict",
    "post_script_due",
    "script_error",
    "workload_facts",
    "workload_promise",
]


@dataclass
class JobState:
    """Everything the phases learn, gathered for the verdict and the report."""

    task_id: str = ""
    settings: HandlerSettings | None = None
    settings_error: ConfigError | None = None
    config: PluginConfig | None = None
    config_state: ConfigState = "absent"
    config_error: ErrorCode | None = None
    pre: ScriptResult | None = None
    post: ScriptResult | None = None
    plan: FreezePlan | None = None
    # The snapshot backend chosen before the freeze (None: every one declined),
    # and the ones that declined first, with their reasons (docs/snapshot-backends.md).
    backend: str | None = None
    backends_declined: tuple[BackendDeclined, ...] = ()
    freeze_attempted: bool = False
    freeze_ok: bool = False
    freeze_error: ErrorCode | None = None
    freeze_message: str | None = None
    # Mountpoints found frozen by someone else (EBUSY), left as is: not our freeze.
    freeze_not_owned: tuple[str, ...] = ()
    freeze_deadline_at: float | None = None  # epoch seconds, set before the first FIFREEZE
    freeze: FreezeResult | None = None
    snapshot: SnapshotResult | None = None
    preflight_failures: list[DiskSnapshot] = field(default_factory=list)
    status_upload: str = "skipped"
    status_file: str | None = None
    interrupted: str | None = None  # the signal that stopped the job
    # workload.conf naming a database: it replaces the pre/post scripts.
    workload_conf: WorkloadConf | None = None
    workload: WorkloadOutcome | None = None
    # Set when firstGuestThenHost fell back to the host after every guest
    # snapshot failed: the first window's figures; the fields above are the host's.
    guest_attempt: GuestAttempt | None = None


def guest_attempt_facts(attempt: GuestAttempt | None) -> dict[str, Any] | None:
    """The first window of a guest-first job that fell back to the host, as plain values.

    Codes and numbers only (no error text: a guest failure may quote a URL, I5).
    """
    if attempt is None:
        return None
    freeze, snap = attempt.freeze, attempt.snapshot
    return {
        "backend": attempt.backend,
        "freeze_attempted": attempt.freeze_attempted,
        "freeze_ok": attempt.freeze_ok,
        "frozen_window_seconds": round(freeze.window_seconds, 6) if freeze else None,
        "thawed_by": freeze.thawed_by if freeze else None,
        "disks": len(snap.disks) if snap else 0,
        "disks_ok": snap.ok_count if snap else 0,
        "error": snap.error.value if snap and snap.error else None,
        "seconds": round(snap.duration_seconds, 6) if snap else None,
    }


def script_error(result: ScriptResult | None) -> ErrorCode | None:
    return None if result is None or result.ok else result.error


def post_script_due(state: JobState) -> bool:
    """Whether the post-script runs: scripts are configured, and the pre-script
    was not refused before its first attempt.

    The post-script runs even after a cancel, to resume an application the
    pre-script may have quiesced. A pre-script that never started (not found,
    refused by the trust checks) quiesced nothing; the reference then runs
    neither script and reports the pre-script's code (its pre_check), which
    the shipped template (both locations "") relies on: Pre-ScriptNotFound.
    """
    if state.config is None or state.workload_conf is not None:
        return False  # no scripts, or a workload replaced them
    return state.pre is None or bool(state.pre.attempts)


def job_verdict(state: JobState) -> Verdict:
    """``consistency.verdict`` over the facts the phases gathered."""
    from snapshot_runtime.core.consistency import verdict  # noqa: PLC0415 - at the end

    config = state.config
    snap = state.snapshot
    freeze = state.freeze
    disks_total = len(state.settings.disk_sas_urls) if state.settings else 0
    # The host path's module (and http.client under it) is not a start-up
    # import (docs/startup.md); the job imported it before any freeze.
    from snapshot_runtime.snapshot.host import HostSnapshotResult  # noqa: PLC0415

    if isinstance(snap, HostSnapshotResult):
        # The host path has no guest disk URL: its disks are the LUNs it asked for.
        disks_total = len(snap.disks)
    elif state.settings is not None and state.settings.host.given and not disks_total:
        # A host-only request that never reached the host still names its disks
        # (an empty LUN list is "every disk": at least one).
        disks_total = max(len(state.settings.host.lun_list), 1)
    if state.workload_conf is not None:
        return _workload_verdict(state, disks_total)
    return verdict(
        config_state=state.config_state,
        config_error=state.config_error,
        continue_on_failure=config.continue_backup_on_failure if config else True,
        fs_freeze_enabled=config.fs_freeze_enabled if config else True,
        pre_error=script_error(state.pre),
        freeze_attempted=state.freeze_attempted,
        freeze_ok=state.freeze_ok,
        freeze_error=state.freeze_error or (freeze.error if freeze and freeze.timed_out else None),
        freeze_timed_out=bool(freeze and freeze.timed_out),
        snapshot_error=snap.error if snap else None,
        disks_ok=snap.ok_count if snap else 0,
        disks_total=disks_total,
        post_error=script_error(state.post),
        thaw_error=freeze.error if freeze and freeze.error is ErrorCode.THAW_FAILED else None,
        config_warnings=config.warning_codes if config else (),
        freeze_not_owned=bool(state.freeze_not_owned),
    )


def _workload_verdict(state: JobState, disks_total: int) -> Verdict:
    """A named workload replaces the scripts (as in the reference): the freeze
    always runs, and the quiesce's success, not a script's, decides application."""
    from snapshot_runtime.core.consistency import verdict  # noqa: PLC0415 - at the end

    snap = state.snapshot
    freeze = state.freeze
    outcome = state.workload
    error = outcome.error if outcome is not None else ErrorCode.WORKLOAD_PRE_ERROR
    if error is None and outcome is not None and not outcome.held and state.freeze_attempted:
        # The window ran but the quiesce never completed (a stop before the release).
        error = ErrorCode.WORKLOAD_QUIESCING_TIMEOUT
    return verdict(
        config_state="valid",
        config_error=None,
        continue_on_failure=True,
        fs_freeze_enabled=True,
        pre_error=None,
        freeze_attempted=state.freeze_attempted,
        freeze_ok=state.freeze_ok,
        freeze_error=state.freeze_error or (freeze.error if freeze and freeze.timed_out else None),
        freeze_timed_out=bool(freeze and freeze.timed_out),
        snapshot_error=snap.error if snap else None,
        disks_ok=snap.ok_count if snap else 0,
        disks_total=disks_total,
        post_error=None,
        thaw_error=freeze.error if freeze and freeze.error is ErrorCode.THAW_FAILED else None,
        config_warnings=(ErrorCode.WORKLOAD_REPLACES_SCRIPTS,)
        if state.config_state != "absent"
        else (),
        freeze_not_owned=bool(state.freeze_not_owned),
        workload_error=error,
    )


def workload_facts(outcome: WorkloadOutcome | None) -> dict[str, Any] | None:
    """The workload's part of the record and the status: what a DBA needs.

    ``write_stall_seconds``: commits blocked, quiesce to release (MariaDB/MySQL;
    None for PostgreSQL, which never blocks them). ``log_position``: the binlog
    ``file:position`` read while blocked, or the WAL LSN right after the CHECKPOINT.
    ``promise``: what a restore of this snapshot gives, in plain words.
    """
    if outcome is None:
        return None
    quiesced, released = outcome.quiesced, outcome.released
    return {
        "name": outcome.name,
        "held": outcome.held,
        "method": quiesced.method if quiesced else None,
        "log_position": quiesced.log_position if quiesced else None,
        "server_version": quiesced.server_version if quiesced else None,
        "quiesce_seconds": round(quiesced.quiesce_seconds, 6) if quiesced else None,
        "write_stall_seconds": round(released.stall_seconds, 6)
        if released is not None and released.stall_seconds is not None
        else None,
        "held_seconds": round(released.held_seconds, 6) if released else None,
        "hold_deadline_seconds": quiesced.hold_deadline_seconds if quiesced else None,
        "error": outcome.error.value if outcome.error else None,
        "promise": workload_promise(outcome),
    }


def workload_promise(outcome: WorkloadOutcome) -> str:
    """What restoring this snapshot gives, said plainly (docs/workloads.md)."""
    if not outcome.held:
        return "not quiesced: the filesystem freeze only (crash recovery at start-up)"
    if outcome.name == "postgres":
        return (
            "atomic filesystem snapshot under fsfreeze; PostgreSQL starts with crash "
            "recovery from the CHECKPOINT at log_position; every commit acknowledged "
            "before the freeze is present"
        )
    return (
        "commits blocked from the quiesce to the release: the copy ends exactly at "
        "log_position; InnoDB replays its redo at start-up"
    )


def final_message(state: JobState, final: Verdict) -> str:
    """The terminal status message: the outcome, and the first failure's detail."""
    if state.interrupted:
        return f"Enable failed: interrupted by {state.interrupted} ({final.reason})"
    if final.snapshot_taken and final.consistency == "application":
        return "Enable Succeeded with App Consistent Snapshot"
    if final.snapshot_taken:
        return f"Enable Succeeded with {final.consistency} consistent snapshot ({final.reason})"
    details = [
        m
        for m in (
            state.snapshot.error_message if state.snapshot else None,
            state.freeze_message,
            state.pre.error_message if state.pre else None,
        )
        if m
    ]
    return f"Enable failed: {final.reason}" + (f": {details[0]}" if details else "")


def build_report(
    state: JobState,
    final: Verdict,
    message: str,
    *,
    phases: tuple[PhaseRecord, ...],
    started_at: float,
    duration_seconds: float,
    trace_id: str | None,
    spool_job_dir: str | None,
) -> JobReport:
    snap = state.snapshot
    freeze = state.freeze
    return JobReport(
        task_id=state.task_id,
        consistency=final.consistency,
        consistency_reason=final.reason,
        error_code=final.error.value if final.error else None,
        error_message=None if final.snapshot_taken and not final.error else message,
        warnings=tuple(w.value for w in final.warnings),
        status_code=final.status_code,
        health=int(final.health),
        snapshot_taken=final.snapshot_taken,
        phases=phases,
        freeze_seconds=freeze.window_seconds if freeze else 0.0,
        freeze=freeze,
        disks=snap.disks if snap else tuple(state.preflight_failures),
        pre_script=state.pre,
        post_script=state.post,
        plugin_config=state.config_state,
        status_file=state.status_file,
        status_upload=state.status_upload,
        started_at=started_at,
        duration_seconds=duration_seconds,
        trace_id=trace_id,
        spool_job_dir=spool_job_dir,
        snapshot_backend=state.backend,
        backends_declined=tuple((d.name, d.reason) for d in state.backends_declined),
        workload=state.workload,
        guest_attempt=state.guest_attempt,
    )


def job_record_facts(
    state: JobState,
    *,
    final: Verdict | None,
    phases: tuple[PhaseRecord, ...],
    started_at: float,
    now: float,
    pid: int,
    redact: Callable[[str], str],
) -> RecordFacts:
    """The job's part of the telemetry record (telemetry adds its own counters)."""
    snap = state.snapshot
    plan = state.plan
    from snapshot_runtime.snapshot.host import fallback_reason, snapshot_path  # noqa: PLC0415

    return RecordFacts(
        task_id=state.task_id,
        started_at=started_at,
        updated_at=now,
        pid=pid,
        ended_at=now,
        verdict=final,
        phases=phases,
        freeze=state.freeze,
        mountpoints=tuple(m.mountpoint for m in plan.mounts) if plan else (),
        freezing=state.freeze_deadline_at is not None,
        freeze_deadline_at=state.freeze_deadline_at,
        pre=state.pre,
        post=state.post,
        disks=snap.disks if snap else tuple(state.preflight_failures),
        snapshot_path=snapshot_path(state.backend),
        snapshot_fallback=fallback_reason(
            state.backend,
            [(d.name, d.reason) for d in state.backends_declined],
            guest_failed=state.guest_attempt is not None,
        ),
        guest_attempt=guest_attempt_facts(state.guest_attempt),
        # Only a snapshot_all() that ran (its disks are reported, failed or not);
        # a job stopped before it has a result without disks.
        snapshot_seconds=snap.duration_seconds if snap and snap.disks and state.backend else None,
        workload=workload_facts(state.workload),
        redact=redact,
    )
