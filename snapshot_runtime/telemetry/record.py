"""The job record (docs/spool.md, schema version 1): built from what the job knows.

Pure module: ``build_record(facts)`` returns a JSON-ready dict and does no I/O.
It is called after every phase (incremental, ``complete: false``) and once at
the end (``complete: true``). No secret ever enters it (I5): no URL at all, and
every free text (error messages, reasons) passes ``facts.redact``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from snapshot_runtime.core.redact import scrub
from snapshot_runtime.telemetry.spool_schema import SCHEMA, SCHEMA_VERSION

if TYPE_CHECKING:
    from snapshot_runtime.core.consistency import Verdict
    from snapshot_runtime.core.phases import PhaseRecord
    from snapshot_runtime.freeze.state import FreezeResult
    from snapshot_runtime.scripts.runner import ScriptResult
    from snapshot_runtime.snapshot.results import DiskSnapshot

__all__ = ["RecordFacts", "build_record", "script_json"]


@dataclass(frozen=True)
class RecordFacts:
    """Everything a record is made of; the job fills it from its state."""

    task_id: str
    started_at: float
    updated_at: float
    pid: int
    trace_id: str | None = None
    root_span_id: str | None = None
    complete: bool = False
    ended_at: float | None = None
    verdict: Verdict | None = None
    phases: Sequence[PhaseRecord] = ()
    freeze: FreezeResult | None = None
    mountpoints: Sequence[str] = ()
    # Set just before the first FIFREEZE: what a dead runtime may have left
    # frozen, and until when (the sidecar's backstop reads these).
    freezing: bool = False
    freeze_deadline_at: float | None = None
    pre: ScriptResult | None = None
    post: ScriptResult | None = None
    disks: Sequence[DiskSnapshot] = ()
    # workload.conf quiescing (docs/workloads.md): name, method, log position,
    # write stall, error; built by the job (plain values: no secrets in it).
    workload: Mapping[str, Any] | None = None
    log_file: str | None = None
    log_lines: int = 0
    log_bytes: int = 0
    spans: int = 0
    dropped_log_lines: int = 0
    dropped_spans: int = 0
    spool_gated: bool = False
    logs_mirrored_by: str | None = None
    logs_mirror_error: str | None = None
    otlp: Mapping[str, Any] | None = None
    # The snapshot path (docs/host-snapshot.md): "host" or "guest" (None: no
    # backend accepted the job); the bounded fallback reason when the guest path
    # ran after the host declined; the backend's snapshot_all() time.
    snapshot_path: str | None = None
    snapshot_fallback: str | None = None
    snapshot_seconds: float | None = None
    # firstGuestThenHost after every guest snapshot failed: the guest window's
    # figures (plain values); the record's freeze and disks are the host's.
    guest_attempt: Mapping[str, Any] | None = None
    telemetry_errors: Sequence[str] = ()
    redact: Callable[[str], str] = field(default=scrub)


def _text(facts: RecordFacts, value: str | None) -> str | None:
    return facts.redact(value) if value else value


def script_json(result: ScriptResult | None, redact: Callable[[str], str]) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "ok": result.ok,
        "attempts": len(result.attempts),
        "retries": result.retries,
        "timed_out": result.timed_out,
        "exit_codes": list(result.exit_codes),
        "signals": [a.signal for a in result.attempts],
        "attempt_seconds": [round(a.duration_seconds, 6) for a in result.attempts],
        "seconds": round(result.duration_seconds, 6),
        "error": result.error.value if result.error else None,
        "error_message": redact(result.error_message) if result.error_message else None,
    }


def _freeze_json(facts: RecordFacts) -> dict[str, Any] | None:
    result = facts.freeze
    if result is None:
        if not facts.freezing:
            return None
        # Written before the first FIFREEZE: the freeze is (about to be) in progress.
        return {
            "in_progress": True,
            "mountpoints": list(facts.mountpoints),
            "deadline_at": facts.freeze_deadline_at,
            "window_seconds": None,
            "mounts": len(facts.mountpoints),
            "timed_out": None,
            "thawed_by": None,
            "ok": None,
            "error": None,
        }
    return {
        "in_progress": False,
        "window_seconds": round(result.window_seconds, 6),
        "mounts": sum(1 for m in result.mounts if m.frozen),
        "mountpoints": [m.mountpoint for m in result.mounts],
        "deadline_at": facts.freeze_deadline_at,
        "timed_out": result.timed_out,
        "thawed_by": result.thawed_by,
        "ok": result.ok,
        "error": result.error.value if result.error else None,
    }


def build_record(facts: RecordFacts) -> dict[str, Any]:
    """The record as a dict (docs/spool.md). Pure."""
    verdict = facts.verdict
    outcome: str | None = None
    if facts.complete:
        outcome = "success" if verdict is not None and verdict.snapshot_taken else "failed"
    error: str | None = None
    if verdict is not None and verdict.error is not None:
        error = verdict.error.value
    elif facts.complete and verdict is None:
        error = "InternalError"
    first = facts.started_at
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "task_id": facts.task_id,
        "trace_id": facts.trace_id,
        "root_span_id": facts.root_span_id,
        "complete": facts.complete,
        "started_at": facts.started_at,
        "updated_at": facts.updated_at,
        "ended_at": facts.ended_at if facts.complete else None,
        "outcome": outcome,
        "consistency": verdict.consistency if verdict else None,
        "consistency_reason": verdict.reason if verdict else None,
        "error": error,
        "warnings": [w.value for w in verdict.warnings] if verdict else [],
        "status_code": verdict.status_code if verdict else None,
        "phases": [
            {
                "name": p.name,
                "started_at": p.started_at,
                "offset_seconds": round(max(0.0, p.started_at - first), 6),
                "seconds": round(p.seconds, 6),
                "status": p.status,
                "error": p.error,
                "detail": _text(facts, p.detail),
            }
            for p in facts.phases
        ],
        "freeze": _freeze_json(facts),
        "scripts": {
            "pre": script_json(facts.pre, facts.redact),
            "post": script_json(facts.post, facts.redact),
        },
        "workload": dict(facts.workload) if facts.workload is not None else None,
        "disks": [
            {
                "index": d.index,
                "ok": d.ok,
                "seconds": round(d.duration_seconds, 6),
                "attempts": d.attempts,
                "error_kind": d.failure_kind,
                "status_code": d.status_code,
            }
            for d in facts.disks
        ],
        "snapshot": {
            "path": facts.snapshot_path,
            "fallback": facts.snapshot_fallback,
            "seconds": (
                round(facts.snapshot_seconds, 6) if facts.snapshot_seconds is not None else None
            ),
            # Only when firstGuestThenHost froze twice: the record of every other job is unchanged.
            **({"guest_attempt": dict(facts.guest_attempt)} if facts.guest_attempt else {}),
        },
        "dropped": {"log_lines": facts.dropped_log_lines, "spans": facts.dropped_spans},
        "logs": {
            "lines": facts.log_lines,
            "bytes": facts.log_bytes,
            "mirrored_by": facts.logs_mirrored_by,
            "mirror_error": _text(facts, facts.logs_mirror_error),
        },
        "spans": {"count": facts.spans, "otlp": dict(facts.otlp) if facts.otlp else None},
        "pid": facts.pid,
        "log_file": facts.log_file,
        "spool": {"gated": facts.spool_gated},
        "interrupted": False,
        "telemetry_errors": [facts.redact(e) for e in facts.telemetry_errors],
    }
