"""What a job's spans say: names, attributes, error types (docs/telemetry.md).

Pure: each function turns a result the job already has (a phase handle or
record, a script attempt, a disk snapshot, the verdict) into span attributes,
an ``error.type`` and a description, with every free text redacted. No spans
are made here; ``telemetry.JobTelemetry`` makes them with ``tracing.JobTracer``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.core.redact import strip_sas

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from snapshot_runtime.core.consistency import Verdict
    from snapshot_runtime.core.phases import PhaseHandle, PhaseRecord
    from snapshot_runtime.scripts.attempt import AttemptResult
    from snapshot_runtime.scripts.runner import ScriptResult
    from snapshot_runtime.snapshot.results import DiskSnapshot

__all__ = [
    "ROOT_SPAN",
    "SPAN_PREFIX",
    "SpanOutcome",
    "attempt_outcome",
    "attribute_value",
    "disk_error",
    "disk_outcome",
    "phase_outcome",
    "recorded_phase_outcome",
    "root_attributes",
    "script_attributes",
    "span_name",
]

ROOT_SPAN = "vmsnap.job"
SPAN_PREFIX = "vmsnap."
_SCRIPT_CODES = {
    "pre": (ErrorCode.PRE_SCRIPT_FAILED, ErrorCode.PRE_SCRIPT_TIMEOUT),
    "post": (ErrorCode.POST_SCRIPT_FAILED, ErrorCode.POST_SCRIPT_TIMEOUT),
}


class SpanOutcome(NamedTuple):
    """A span's attributes, its ``error.type`` (None: ok) and status description."""

    attributes: dict[str, AttributeValue]
    error_type: str | None
    description: str | None


def span_name(phase: str) -> str:
    return SPAN_PREFIX + phase


def attribute_value(value: object, redact: Callable[[str], str]) -> AttributeValue | None:
    """A phase attribute as a span attribute; None when it has no span form."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        strings = [redact(v) for v in value if isinstance(v, str)]
        if len(strings) == len(value):
            return strings
        ints = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
        if len(ints) == len(value):
            return ints
    return None


def phase_outcome(handle: PhaseHandle, redact: Callable[[str], str]) -> SpanOutcome:
    """A phase span's closing attributes, from what the phase body set."""
    attrs: dict[str, AttributeValue] = {
        "vmsnap.phase": handle.name,
        "vmsnap.phase.status": handle.status,
    }
    for key, value in handle.attributes.items():
        converted = attribute_value(value, redact)
        if converted is not None:
            attrs[f"vmsnap.{key}"] = converted
    if handle.status in ("warning", "skipped") and handle.detail:
        attrs["vmsnap.phase.detail"] = redact(handle.detail)
    if handle.status == "warning" and handle.error is not None:
        attrs["vmsnap.warning"] = handle.error.value
    error_type = None
    if handle.status == "error":
        error_type = (handle.error or ErrorCode.INTERNAL_ERROR).value
    description = redact(handle.detail) if error_type and handle.detail else None
    return SpanOutcome(attrs, error_type, description)


def recorded_phase_outcome(done: PhaseRecord, redact: Callable[[str], str]) -> SpanOutcome:
    """The span of a phase that ended before the root span existed."""
    return SpanOutcome(
        {"vmsnap.phase": done.name, "vmsnap.phase.status": done.status},
        (done.error or ErrorCode.INTERNAL_ERROR.value) if done.status == "error" else None,
        redact(done.detail) if done.detail else None,
    )


def attempt_outcome(which: str, attempt: AttemptResult) -> SpanOutcome:
    """One pre-/post-script attempt's span (``which``: "pre" or "post")."""
    failed_code, timeout_code = _SCRIPT_CODES[which]
    attrs: dict[str, AttributeValue] = {
        "vmsnap.script.attempt": attempt.attempt,
        "vmsnap.script.timed_out": attempt.timed_out,
    }
    if attempt.exit_code is not None:
        attrs["process.exit.code"] = attempt.exit_code
    if attempt.signal is not None:
        attrs["vmsnap.script.signal"] = attempt.signal
    error_type: str | None = None
    if not attempt.ok:
        error_type = (timeout_code if attempt.timed_out else failed_code).value
    return SpanOutcome(attrs, error_type, None)


def script_attributes(result: ScriptResult) -> dict[str, AttributeValue]:
    """The script phase span's summary of all attempts."""
    codes = [a.exit_code if a.exit_code is not None else -(a.signal or 0) for a in result.attempts]
    attrs: dict[str, AttributeValue] = {
        "vmsnap.script.path": result.path,
        "vmsnap.script.attempts": len(result.attempts),
        "vmsnap.script.retries": result.retries,
        "vmsnap.script.timed_out": result.timed_out,
        "vmsnap.script.exit_codes": codes,
    }
    return attrs


def disk_error(kind: str | None) -> ErrorCode:
    if kind == "limit":
        return ErrorCode.SNAPSHOT_LIMIT_REACHED
    if kind == "throttled":
        return ErrorCode.SNAPSHOT_RATE_EXCEEDED
    return ErrorCode.SNAPSHOT_FAILED


def disk_outcome(disk: DiskSnapshot, redact: Callable[[str], str]) -> SpanOutcome:
    """One disk's snapshot span; its URL without the SAS."""
    attrs: dict[str, AttributeValue] = {
        "vmsnap.disk.index": disk.index,
        "vmsnap.disk.blob_url": redact(strip_sas(disk.blob_url)),
        "vmsnap.disk.attempts": disk.attempts,
    }
    if disk.snapshot:
        attrs["vmsnap.disk.snapshot"] = disk.snapshot
    if disk.status_code is not None:
        attrs["http.response.status_code"] = disk.status_code
    if disk.failure_kind:
        attrs["vmsnap.disk.failure_kind"] = disk.failure_kind
    error_type = None if disk.ok else disk_error(disk.failure_kind).value
    return SpanOutcome(attrs, error_type, redact(disk.error) if disk.error else None)


def root_attributes(
    *,
    verdict: Verdict | None,
    frozen_window_seconds: float,
    mounts: Sequence[str],
    disk_count: int,
    disks_ok: int,
) -> dict[str, AttributeValue]:
    """The root span's closing attributes (docs/telemetry.md)."""
    attrs: dict[str, AttributeValue] = {
        "vmsnap.frozen_window_seconds": round(frozen_window_seconds, 6),
        "vmsnap.mounts": list(mounts),
        "vmsnap.mount_count": len(mounts),
        "vmsnap.disk_count": disk_count,
        "vmsnap.disks_ok": disks_ok,
    }
    if verdict is not None:
        attrs["vmsnap.consistency"] = verdict.consistency
        attrs["vmsnap.consistency_reason"] = verdict.reason
        attrs["vmsnap.snapshot_taken"] = verdict.snapshot_taken
        attrs["vmsnap.status_code"] = verdict.status_code
        if verdict.warnings:
            attrs["vmsnap.warnings"] = [w.value for w in verdict.warnings]
        if verdict.error is not None:
            attrs["vmsnap.error_code"] = verdict.error.value
    return attrs
