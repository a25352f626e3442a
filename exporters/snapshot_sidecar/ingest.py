"""What one complete job record adds to the metrics. Pure: no I/O.

``apply_record(values, record)`` is called exactly once per job run, by the
sidecar, inside the same ledger transaction that marks the run as counted.
"""

from __future__ import annotations

from snapshot_runtime.core.errors import error_group
from snapshot_runtime.core.phases import PHASES
from snapshot_sidecar.metrics import (
    CONSISTENCIES,
    NO_ERROR,
    SCRIPTS,
    WATCHDOG_REASONS,
    WORKLOADS,
    MetricValues,
    blob_failure_group,
)
from snapshot_sidecar.spool_reader import JobRecord, WatchdogReport

__all__ = ["apply_record", "apply_watchdog_report", "watchdog_reason"]


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def apply_record(values: MetricValues, record: JobRecord) -> None:
    """Count one complete job record into ``values``."""
    exemplar = (record.trace_id, record.ended_at or 0.0) if record.trace_id else None
    outcome = record.outcome if record.outcome in ("success", "failed") else "failed"
    consistency = record.consistency if record.consistency in CONSISTENCIES else "none"
    values.inc("vmsnap_jobs_total", (outcome, consistency))
    values.inc("vmsnap_sidecar_records_ingested_total")
    if record.error:
        values.inc("vmsnap_job_errors_total", (error_group(record.error),))
    for warning in record.warnings:
        values.inc("vmsnap_job_warnings_total", (error_group(warning),))
    if record.started_at is not None and record.ended_at is not None:
        values.observe(
            "vmsnap_job_duration_seconds",
            max(0.0, record.ended_at - record.started_at),
            exemplar=exemplar,
        )
    if record.ended_at is not None:
        # The latest job by end time (a record ingested late does not replace it).
        if record.ended_at >= values.gauges["vmsnap_last_job_timestamp_seconds"].get((), 0.0):
            values.replace("vmsnap_last_job_info", (outcome, consistency, record.error or NO_ERROR))
        values.set_max("vmsnap_last_job_timestamp_seconds", record.ended_at)
        if outcome == "success":
            values.set_max("vmsnap_last_success_timestamp_seconds", record.ended_at)

    for phase in record.phases:
        name, seconds = phase.get("name"), _num(phase.get("seconds"))
        if name in PHASES and seconds is not None and phase.get("status") != "skipped":
            values.inc("vmsnap_phase_seconds_total", (name,), seconds)

    freeze = record.freeze
    if freeze is not None:
        window = _num(freeze.get("window_seconds"))
        frozen = (_num(freeze.get("mounts")) or 0) > 0 or (window or 0) > 0
        if window is not None and frozen:
            values.observe("vmsnap_freeze_duration_seconds", window, exemplar=exemplar)
            thawed_by = freeze.get("thawed_by")
            values.inc("vmsnap_freezes_total", (str(thawed_by or "runtime"),))
        if freeze.get("timed_out") is True:
            values.inc("vmsnap_freeze_timeouts_total")

    for which in SCRIPTS:
        script = record.script(which)
        if script is None:
            continue
        attempts = _num(script.get("attempts")) or 0
        retries = _num(script.get("retries"))
        if retries is None:
            retries = max(0.0, attempts - 1)
        values.inc("vmsnap_script_runs_total", (which,), attempts)
        values.inc("vmsnap_script_retries_total", (which,), retries)
        if script.get("timed_out") is True:
            values.inc("vmsnap_script_timeouts_total", (which,))
        if script.get("error"):
            values.inc("vmsnap_script_failures_total", (which,))
        seconds = _num(script.get("seconds"))
        if seconds is not None:
            values.observe("vmsnap_script_duration_seconds", seconds, exemplar=exemplar)

    workload = record.workload
    if workload is not None:
        stall = _num(workload.get("write_stall_seconds"))
        if stall is not None and workload.get("name") in WORKLOADS:
            values.observe("vmsnap_workload_write_stall_seconds", stall, exemplar=exemplar)

    for disk in record.disks:
        values.inc("vmsnap_disk_snapshot_attempts_total", (), _num(disk.get("attempts")) or 1)
        if disk.get("ok") is not True:
            kind = blob_failure_group(str(disk.get("error_kind")))
            values.inc("vmsnap_disk_snapshot_failures_total", (kind,))
        seconds = _num(disk.get("seconds"))
        if seconds is not None:
            values.observe("vmsnap_disk_snapshot_duration_seconds", seconds, exemplar=exemplar)

    snapshot = record.snapshot
    path = snapshot.get("path")
    if isinstance(path, str):
        values.inc("vmsnap_snapshot_jobs_total", (path, outcome))
        seconds = _num(snapshot.get("seconds"))
        if seconds is not None and seconds >= 0:
            values.inc("vmsnap_snapshot_runs_total", (path,))
            values.inc("vmsnap_snapshot_seconds_total", (path,), seconds)
    fallback = snapshot.get("fallback")
    if fallback is not None:
        values.inc("vmsnap_snapshot_fallbacks_total", (str(fallback),))

    dropped = record.dropped
    for kind in ("log_lines", "spans"):
        amount = _num(dropped.get(kind))
        if amount:
            values.inc("vmsnap_spool_dropped_total", (kind,), amount)


def watchdog_reason(raw: object) -> str:
    """Bound the watchdog's trigger text: eof, deadline, other (signals, protocol errors)."""
    text = str(raw or "")
    return text if text in WATCHDOG_REASONS else "other"


def apply_watchdog_report(values: MetricValues, report: WatchdogReport) -> None:
    """Count one watchdog report: one thaw per mount it actually thawed."""
    reason = watchdog_reason(report.doc.get("reason"))
    mounts = report.doc.get("mounts")
    thawed = 0
    if isinstance(mounts, list):
        thawed = sum(1 for m in mounts if isinstance(m, dict) and m.get("result") == "thawed")
    # A report with no mount list still records a watchdog intervention.
    values.inc("vmsnap_watchdog_thaws_total", (reason,), thawed if isinstance(mounts, list) else 1)
