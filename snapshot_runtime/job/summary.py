"""Rendering a job report for people (a table) and machines (one JSON object).

Pure module: takes a ``JobReport``, returns text or a dict. URLs in a report
are already stripped of their SAS; nothing here adds one. Table cells are
shortened with ``redact_then_truncate`` (redacted, then cut).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from snapshot_runtime.core.redact import redact_then_truncate

if TYPE_CHECKING:
    from snapshot_runtime.job.records import GuestAttempt, JobReport
    from snapshot_runtime.scripts.runner import ScriptResult

__all__ = ["report_json", "report_text", "table"]


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain left-aligned text table."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _script_json(result: ScriptResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "path": result.path,
        "ok": result.ok,
        "attempts": len(result.attempts),
        "retries": result.retries,
        "timedOut": result.timed_out,
        "exitCodes": list(result.exit_codes),
        "signals": [a.signal for a in result.attempts],
        "attemptSeconds": [round(a.duration_seconds, 6) for a in result.attempts],
        "seconds": round(result.duration_seconds, 6),
        "errorCode": result.error.value if result.error else None,
        "error": result.error_message,
        "interpreter": result.interpreter,
        "outputBytes": result.output_bytes,
        "stdout": result.stdout,
        "stderr": result.stderr,
    }


def report_json(report: JobReport) -> dict[str, Any]:
    freeze = report.freeze
    return {
        "taskId": report.task_id,
        "traceId": report.trace_id,
        "snapshotTaken": report.snapshot_taken,
        "consistency": report.consistency,
        "consistencyReason": report.consistency_reason,
        "errorCode": report.error_code,
        "errorMessage": report.error_message,
        "warnings": list(report.warnings),
        "statusCode": report.status_code,
        "health": report.health,
        "pluginConfig": report.plugin_config,
        "seconds": round(report.duration_seconds, 6),
        "freezeSeconds": round(report.freeze_seconds, 6),
        "phases": [
            {
                "name": p.name,
                "seconds": round(p.seconds, 6),
                "status": p.status,
                "error": p.error,
                "detail": p.detail,
            }
            for p in report.phases
        ],
        "mounts": [
            {
                "mountpoint": m.mountpoint,
                "fstype": m.fstype,
                "frozen": m.frozen,
                "alreadyFrozen": m.already_frozen,
                "thawed": m.thawed,
                "error": m.error,
                "thawError": m.thaw_error,
                "writableAfterThaw": m.probe_ok,
            }
            for m in (freeze.mounts if freeze else ())
        ],
        "freeze": None
        if freeze is None
        else {
            "ok": freeze.ok,
            "timedOut": freeze.timed_out,
            "thawedBy": freeze.thawed_by,
            "errorCode": freeze.error.value if freeze.error else None,
        },
        "disks": [
            {
                "index": d.index,
                "blobUrl": d.blob_url,
                "ok": d.ok,
                "snapshot": d.snapshot,
                "snapshotUrl": d.snapshot_url,
                "attempts": d.attempts,
                "seconds": round(d.duration_seconds, 6),
                "error": d.error,
            }
            for d in report.disks
        ],
        "scripts": {
            "pre": _script_json(report.pre_script),
            "post": _script_json(report.post_script),
        },
        "statusFile": report.status_file,
        "statusUpload": report.status_upload,
        # Only when firstGuestThenHost froze twice (docs/host-snapshot.md).
        **(
            {"guestAttempt": _guest_attempt_json(report.guest_attempt)}
            if report.guest_attempt
            else {}
        ),
    }


def _guest_attempt_json(attempt: GuestAttempt) -> dict[str, Any]:
    """The first (guest) window of a job that fell back to the host: codes and numbers."""
    freeze, snap = attempt.freeze, attempt.snapshot
    return {
        "backend": attempt.backend,
        "freezeOk": attempt.freeze_ok,
        "frozenWindowSeconds": round(freeze.window_seconds, 6) if freeze else None,
        "disks": len(snap.disks) if snap else 0,
        "disksOk": snap.ok_count if snap else 0,
        "errorCode": snap.error.value if snap and snap.error else None,
    }


def _script_row(name: str, result: ScriptResult | None) -> list[str]:
    if result is None:
        return [name, "-", "-", "-", "not run"]
    codes = ",".join("sig" if c is None else str(c) for c in result.exit_codes) or "-"
    outcome = "ok" if result.ok else (result.error.value if result.error else "failed")
    return [
        name,
        str(len(result.attempts)),
        codes,
        f"{result.duration_seconds:.3f}",
        outcome + (" (timed out)" if result.timed_out else ""),
    ]


def report_text(report: JobReport) -> str:
    out: list[str] = []
    verdict = report.consistency
    out.append(f"task {report.task_id or '-'}: consistency {verdict} ({report.consistency_reason})")
    if report.error_code:
        out.append(f"error: {report.error_code}: {report.error_message or ''}".rstrip(": "))
    if report.warnings:
        out.append("warnings: " + ", ".join(report.warnings))
    out.append("")
    out.append(
        table(
            ["phase", "seconds", "status", "detail"],
            [
                [
                    p.name,
                    f"{p.seconds:.3f}",
                    p.status,
                    redact_then_truncate(p.error or p.detail or "", 80),
                ]
                for p in report.phases
            ],
        )
    )
    out.append("")
    if report.freeze is not None:
        out.append(
            f"frozen window: {report.freeze_seconds * 1000:.1f} ms "
            f"(thawed by {report.freeze.thawed_by}"
            + (", deadline passed" if report.freeze.timed_out else "")
            + ")"
        )
        for m in report.freeze.mounts:
            state = (
                "frozen+thawed"
                if m.frozen and m.thawed
                else ("already frozen" if m.already_frozen else "not frozen")
            )
            probe = {True: "writable again", False: "NOT writable", None: "no probe"}[m.probe_ok]
            out.append(
                f"  {m.mountpoint} ({m.fstype}): {state}, {probe}"
                + (f", {m.error}" if m.error else "")
            )
    else:
        out.append("frozen window: none (no freeze)")
    out.append("")
    if report.disks:
        out.append(
            table(
                ["disk", "blob", "snapshot", "seconds", "attempts", "result"],
                [
                    [
                        str(d.index),
                        d.blob_url,
                        d.snapshot or "-",
                        f"{d.duration_seconds:.3f}",
                        str(d.attempts),
                        "ok" if d.ok else redact_then_truncate(d.error or "failed", 60),
                    ]
                    for d in report.disks
                ],
            )
        )
        out.append("")
    if report.pre_script or report.post_script:
        out.append(
            table(
                ["script", "attempts", "exit codes", "seconds", "result"],
                [_script_row("pre", report.pre_script), _script_row("post", report.post_script)],
            )
        )
        out.append("")
    out.append(f"status: {report.status_file or 'not written'}; upload {report.status_upload}")
    if report.trace_id:
        out.append(f"trace: {report.trace_id} (snapshot-runtime trace {report.task_id})")
    return "\n".join(out)
