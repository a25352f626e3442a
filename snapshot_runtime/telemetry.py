"""One job's telemetry: spans per phase, the spool hand-off, the record (docs/telemetry.md).

``JobTelemetry`` listens to the job's ``PhaseRecorder`` and ``JobLog`` and is
told the results the phases produce. It never fails the job: every effect is
guarded, and a failure is counted in the record (``telemetry_errors``).

Frozen window (I1). While the job's ``FreezeGate`` is closed:

* phase spans start and end in memory (``tracing.JobTracer``: no I/O);
* log lines go to the spool's ``log.jsonl`` at once (one ``write(2)`` each,
  to a tmpfs), unless the spool sits on a filesystem being frozen, in which
  case they are held like the local log (``check_spool_frozen``);
* nothing else: spans.jsonl, record.json and the per-disk spans wait until
  the gate reopens (``FreezeGate.on_open``), after the last FITHAW.

After the job (``finish``): the root span ends; spans go to ``spans.jsonl``;
with no sidecar key in the spool they are also sent over OTLP when an
endpoint is configured, and the job log is uploaded to ``logsBlobUri`` by the
runtime itself; the final record (``complete: true``) is written last, to the
spool and to ``<state-dir>/jobs/<taskId>.json`` (for ``snapshot-runtime trace``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from snapshot_runtime.blobs import BlobOpError, BlobPolicy, upload_block_blob
from snapshot_runtime.errors import ErrorCode
from snapshot_runtime.record import RecordFacts, build_record
from snapshot_runtime.redact import strip_sas
from snapshot_runtime.sealing import seal
from snapshot_runtime.spool import JobSpool, Spool, atomic_write, job_dir_name
from snapshot_runtime.tracing import (
    JobTracer,
    build_resource,
    export_otlp,
    span_to_json,
    split_task_id,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span
    from opentelemetry.util.types import AttributeValue

    from snapshot_runtime.consistency import Verdict
    from snapshot_runtime.joblog import JobLog
    from snapshot_runtime.mounts import FreezePlan
    from snapshot_runtime.phases import PhaseHandle, PhaseRecord, PhaseRecorder
    from snapshot_runtime.redact import Redactor
    from snapshot_runtime.scripts import ScriptResult
    from snapshot_runtime.snapshot import SnapshotResult

__all__ = [
    "LOG_MIRROR_MAX_BYTES",
    "ROOT_SPAN",
    "SPAN_PREFIX",
    "JobTelemetry",
    "TelemetryOptions",
    "root_attributes",
    "span_name",
]

ROOT_SPAN = "vmsnap.job"
SPAN_PREFIX = "vmsnap."
# The runtime's own log upload (no sidecar) sends at most this much, newest lines kept.
LOG_MIRROR_MAX_BYTES = 4 * 1024 * 1024
_MAX_ERRORS = 20
_SCRIPT_CODES = {
    "pre": (ErrorCode.PRE_SCRIPT_FAILED, ErrorCode.PRE_SCRIPT_TIMEOUT),
    "post": (ErrorCode.POST_SCRIPT_FAILED, ErrorCode.POST_SCRIPT_TIMEOUT),
}


def span_name(phase: str) -> str:
    return SPAN_PREFIX + phase


@dataclass(frozen=True)
class TelemetryOptions:
    """- ``spool_dir``/``max_bytes``: the spool; ``otlp_endpoint``: full traces URL or None.

    - ``traceparent``: incoming W3C context; ``state_dir``: where ``jobs/<taskId>.json`` goes.
    - ``span_exporter``: an extra exporter handed every span after the job (tests, embedders).
    """

    spool_dir: str
    max_bytes: int
    state_dir: str
    log_path: str | None
    blob_policy: BlobPolicy
    traceparent: str | None = None
    otlp_endpoint: str | None = None
    otlp_timeout_seconds: float = 5.0
    span_exporter: SpanExporter | None = None
    host_name: str | None = None
    host_id: str | None = None


class JobTelemetry:
    """See the module docstring. ``facts()`` returns the job's part of the record."""

    def __init__(
        self,
        options: TelemetryOptions,
        *,
        log: JobLog,
        phases: PhaseRecorder,
        redactor: Redactor,
        facts: Callable[[], RecordFacts],
        started_at: float,
        started_monotonic: float,
    ) -> None:
        self.options = options
        self._log = log
        self._phases = phases
        self._redact = redactor
        self._facts = facts
        self._started_at = started_at
        self.errors: list[str] = []
        self.spool: Spool | None = None
        try:
            self.spool = Spool(options.spool_dir, max_bytes=options.max_bytes)
        except (OSError, ValueError) as exc:
            self._error("spool", exc)
        self.job: JobSpool | None = None
        self.sidecar_key: bytes | None = None
        self.sealed = False
        self.spool_gated = False
        wall_ns = int(started_at * 1e9)
        self.tracer = JobTracer(
            resource=build_resource(
                redact=redactor, host_name=options.host_name, host_id=options.host_id
            ),
            traceparent=options.traceparent,
            clock_pair=(wall_ns, int(started_monotonic * 1e9)),
        )
        self._job_start_ns = wall_ns
        self._pending_lines: list[str] = []
        self._mirror: collections.deque[str] = collections.deque()
        self._mirror_bytes = 0
        self._spans_flushed = 0
        self._span_json: list[dict[str, Any]] = []
        self._phase_spans: dict[str, Span] = {}
        self._settings_start_ns: int | None = None
        self._deferred_snapshot: SnapshotResult | None = None
        self.logs_mirrored_by: str | None = None
        self.logs_mirror_error: str | None = None
        self.otlp: dict[str, Any] | None = None
        self.ended = False
        self.finished = False
        self._window_events: list[tuple[str, PhaseHandle, int, int]] = []
        self._window_span_ids: list[int] = []
        self.line_sink = log.add_line_sink(self._on_line, gated=False)
        log.set_trace_source(self.current_ids)
        log.gate.on_open(self._after_window)
        phases.subscribe(self._on_phase)

    # -- bookkeeping --------------------------------------------------------

    def _error(self, where: str, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        if len(self.errors) < _MAX_ERRORS:
            self.errors.append(self._redact(f"{where}: {text}"))

    @property
    def trace_id(self) -> str | None:
        return self.tracer.trace_id

    @property
    def job_dir(self) -> str | None:
        return self.job.path if self.job else None

    def _on_line(self, line: str) -> None:
        # Called for every log line, inside the frozen window too: memory, or one write(2).
        self._mirror.append(line)
        self._mirror_bytes += len(line)
        while self._mirror_bytes > LOG_MIRROR_MAX_BYTES and len(self._mirror) > 1:
            self._mirror_bytes -= len(self._mirror.popleft())
        if self.finished:
            return  # after the final record nothing more enters the spool
        if self.job is not None:
            self.job.append_log(line)
        elif self.spool is not None:
            self._pending_lines.append(line)

    # -- the job's milestones -------------------------------------------------

    def begin(self, task_id: str, *, logs_blob_uri: str | None = None) -> None:
        """The taskId is known: start the root span, open the job's spool directory."""
        if self.tracer.root is not None:
            return
        _base, attempt = split_task_id(task_id)
        attrs: dict[str, AttributeValue] = {"vmsnap.task_id": task_id}
        if attempt is not None:
            attrs["vmsnap.attempt"] = attempt
        try:
            root = self.tracer.start_root(
                ROOT_SPAN, task_id=task_id, start_ns=self._job_start_ns, attributes=attrs
            )
            for done in self._phases.records:  # phases that ended before the root existed
                if done.name in self._phase_spans:
                    continue
                start = int(done.started_at * 1e9)
                self.tracer.record(
                    span_name(done.name),
                    parent=root,
                    start_ns=start,
                    end_ns=start + int(done.seconds * 1e9),
                    attributes={"vmsnap.phase": done.name, "vmsnap.phase.status": done.status},
                    error_type=(done.error or ErrorCode.INTERNAL_ERROR.value)
                    if done.status == "error"
                    else None,
                    description=self._redact(done.detail) if done.detail else None,
                )
            if self._settings_start_ns is not None and not self._phases.records:
                self._phase_spans["settings"] = self.tracer.start_child(
                    span_name("settings"), start_ns=self._settings_start_ns
                )
        except Exception as exc:
            self._error("tracing", exc)
        if self.spool is None:
            return
        try:
            self.job = self.spool.open_job(task_id)
        except OSError as exc:
            self._error("spool", exc)
            self._pending_lines.clear()
            return
        pending, self._pending_lines = self._pending_lines, []
        for line in pending:
            self.job.append_log(line)
        self.sidecar_key = self.spool.sidecar_public_key()
        if self.sidecar_key is not None and logs_blob_uri:
            try:
                sealed = seal(self.sidecar_key, json.dumps({"logsBlobUri": logs_blob_uri}).encode())
                self.sealed = self.job.write_sealed(sealed)
                if not self.sealed:
                    self._error("spool", "credentials.sealed not written")
            except (ValueError, OSError) as exc:
                self._error("sealing", exc)
        self.flush()

    def check_spool_frozen(self, plan: FreezePlan) -> bool:
        """Hold spool writes during the window if the spool is on a mount being frozen."""
        if self.spool is None or not plan.mounts:
            return False
        try:
            spool_dev = os.stat(self.spool.root).st_dev
            planned = {os.stat(m.mountpoint).st_dev for m in plan.mounts}
        except OSError as exc:
            self._error("spool", exc)
            spool_dev, planned = -1, set()
        real = os.path.realpath(self.spool.root)
        under = any(
            real == m.mountpoint or real.startswith(m.mountpoint.rstrip("/") + "/")
            for m in plan.mounts
        )
        # Under a planned mount but on another device: a separate (unfrozen) fs is
        # mounted in between, unless it is the same superblock (st_dev equal).
        self.spool_gated = spool_dev in planned
        if under and not self.spool_gated:
            self.spool_gated = _same_fs_as_any(real, plan)
        self.line_sink.gated = self.spool_gated
        return self.spool_gated

    def traceparent(self) -> str | None:
        """For the scripts: the current (phase) span's ``traceparent``."""
        try:
            return self.tracer.traceparent()
        except Exception as exc:
            self._error("tracing", exc)
            return None

    def on_script(self, which: str, result: ScriptResult) -> None:
        """One child span per attempt, from the result (called inside the script phase)."""
        parent = self._phase_spans.get(f"{which}_script")
        if parent is None:
            return
        failed_code, timeout_code = _SCRIPT_CODES[which]
        name = span_name(f"{which}_script.attempt")
        try:
            for attempt in result.attempts:
                start = int(attempt.started_at * 1e9)
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
                self.tracer.record(
                    name,
                    parent=parent,
                    start_ns=start,
                    end_ns=start + int(attempt.duration_seconds * 1e9),
                    attributes=attrs,
                    error_type=error_type,
                )
            parent.set_attributes(_script_attributes(result))
        except Exception as exc:
            self._error("tracing", exc)

    def on_snapshot(self, result: SnapshotResult) -> None:
        """Remember the disks; their spans are made after the thaw (nothing extra while frozen)."""
        self._deferred_snapshot = result

    # -- phase listener -------------------------------------------------------

    def _on_phase(self, event: str, handle: PhaseHandle, record: PhaseRecord | None) -> None:
        if self.tracer.root is None:
            if event == "start" and handle.name == "settings":
                self._settings_start_ns = time.time_ns()
            return
        if self._log.gate.closed:
            # Frozen window: no span work at all. Note the event (a clock read and
            # an append) and reserve the span id the log lines will carry; the
            # span itself is made after the thaw (_after_window).
            now = time.time_ns()
            if event == "start":
                span_id = self.tracer.ids.generate_span_id()
                self._window_events.append(("start", handle, now, span_id))
                self._window_span_ids.append(span_id)
            else:
                self._window_events.append(("end", handle, now, 0))
                if self._window_span_ids:
                    self._window_span_ids.pop()
            return
        if event == "start":
            self._phase_spans[handle.name] = self.tracer.start_child(span_name(handle.name))
            return
        span = self._phase_spans.get(handle.name)
        if span is None:  # started before the root existed
            assert record is not None
            span = self.tracer.start_child(
                span_name(handle.name), start_ns=int(record.started_at * 1e9)
            )
            self._phase_spans[handle.name] = span
        self._end_phase_span(span, handle, None)
        self.flush()

    def _end_phase_span(self, span: Span, handle: PhaseHandle, end_ns: int | None) -> None:
        attrs: dict[str, AttributeValue] = {
            "vmsnap.phase": handle.name,
            "vmsnap.phase.status": handle.status,
        }
        for key, value in handle.attributes.items():
            converted = _attribute(value, self._redact)
            if converted is not None:
                attrs[f"vmsnap.{key}"] = converted
        if handle.status in ("warning", "skipped") and handle.detail:
            attrs["vmsnap.phase.detail"] = self._redact(handle.detail)
        if handle.status == "warning" and handle.error is not None:
            attrs["vmsnap.warning"] = handle.error.value
        error_type = None
        if handle.status == "error":
            error_type = (handle.error or ErrorCode.INTERNAL_ERROR).value
        self.tracer.end(
            span,
            end_ns=end_ns,
            attributes=attrs,
            error_type=error_type,
            description=self._redact(handle.detail) if error_type and handle.detail else None,
        )

    def current_ids(self) -> tuple[str, str]:
        """For log lines: the current phase span; inside the window, its reserved id."""
        if self._window_span_ids:
            trace_id = self.tracer.trace_id or ""
            return trace_id, (format(self._window_span_ids[-1], "016x") if trace_id else "")
        return self.tracer.current_ids()

    def _after_window(self) -> None:
        events, self._window_events = self._window_events, []
        self._window_span_ids.clear()
        try:
            self._replay_window(events)
        except Exception as exc:
            self._error("tracing", exc)
        result, self._deferred_snapshot = self._deferred_snapshot, None
        if result is not None:
            self._disk_spans(result)
        if events or result is not None:
            self.flush()

    def _replay_window(self, events: list[tuple[str, PhaseHandle, int, int]]) -> None:
        """Make the spans of the phases that ran while frozen, with their real times and ids."""
        open_spans: dict[int, Span] = {}
        stack: list[Span] = []
        for kind, handle, when, span_id in events:
            if kind == "start":
                self.tracer.ids.force_next_span_id(span_id)
                span = self.tracer.start_child(span_name(handle.name), start_ns=when)
                self._phase_spans[handle.name] = span
                open_spans[id(handle)] = span
                stack.append(span)
            else:
                started = open_spans.pop(id(handle), None)
                if started is None:  # started before the window (its span is live)
                    started = self._phase_spans.get(handle.name)
                if started is not None:
                    self._end_phase_span(started, handle, when)
                    if started in stack:
                        stack.remove(started)
        for span in stack:  # still open when the gate reopened: a live phase from now on
            self.tracer.current = span

    def _disk_spans(self, result: SnapshotResult) -> None:
        parent = self._phase_spans.get("snapshot")
        if parent is None:
            return
        try:
            for disk in result.disks:
                start = self.tracer.wall_ns_from_monotonic(disk.started_at)
                attrs: dict[str, AttributeValue] = {
                    "vmsnap.disk.index": disk.index,
                    "vmsnap.disk.blob_url": self._redact(strip_sas(disk.blob_url)),
                    "vmsnap.disk.attempts": disk.attempts,
                }
                if disk.snapshot:
                    attrs["vmsnap.disk.snapshot"] = disk.snapshot
                if disk.status_code is not None:
                    attrs["http.response.status_code"] = disk.status_code
                if disk.failure_kind:
                    attrs["vmsnap.disk.failure_kind"] = disk.failure_kind
                error_type = None if disk.ok else _disk_error(disk.failure_kind).value
                self.tracer.record(
                    span_name("snapshot.disk"),
                    parent=parent,
                    start_ns=start,
                    end_ns=start + int(disk.duration_seconds * 1e9),
                    attributes=attrs,
                    error_type=error_type,
                    description=self._redact(disk.error) if disk.error else None,
                )
        except Exception as exc:
            self._error("tracing", exc)

    # -- writing ------------------------------------------------------------

    def _record(self, *, complete: bool) -> dict[str, Any]:
        job = self.job
        facts = dataclasses.replace(
            self._facts(),
            trace_id=self.tracer.trace_id,
            root_span_id=self.tracer.root_span_id,
            complete=complete,
            updated_at=time.time(),
            log_file=self.options.log_path,
            log_lines=job.log_lines if job else 0,
            log_bytes=job.log_bytes if job else 0,
            spans=job.spans if job else 0,
            dropped_log_lines=job.dropped_log_lines if job else 0,
            dropped_spans=job.dropped_spans if job else 0,
            spool_gated=self.spool_gated,
            logs_mirrored_by=self.logs_mirrored_by,
            logs_mirror_error=self.logs_mirror_error,
            otlp=self.otlp,
            telemetry_errors=[*self.errors, *(job.errors if job else ())],
            redact=self._redact,
        )
        return build_record(facts)

    def _span_docs(self) -> list[dict[str, Any]]:
        """Every finished span as JSON (each converted once)."""
        spans = self.tracer.collector.take(len(self._span_json))
        self._span_json.extend(span_to_json(s) for s in spans)
        return self._span_json

    def flush(self, *, record: bool = True) -> None:
        """Append the spans finished since the last flush; rewrite the record. Not while frozen."""
        if self.job is None or self.finished:
            return
        try:
            docs = self._span_docs()
            self.job.append_spans(docs[self._spans_flushed :])
            self._spans_flushed = len(docs)
            if record:
                self.job.write_record(self._record(complete=False))
        except Exception as exc:
            self._error("spool", exc)

    def end_job(
        self,
        verdict: Verdict | None,
        *,
        root_attributes: dict[str, AttributeValue],
        task_id: str,
    ) -> None:
        """End the root span; spans to the spool, over OTLP (no sidecar), to ``span_exporter``.

        Called before the job's last log line ("job done"); may log one warning.
        """
        if self.ended:
            return
        self.ended = True
        if self.tracer.root is None:
            self.begin(task_id)
        root = self.tracer.root
        try:
            if root is not None:
                error_type = None
                if verdict is None or not verdict.snapshot_taken:
                    error_type = (
                        verdict.error.value if verdict and verdict.error else "InternalError"
                    )
                self.tracer.end(root, attributes=root_attributes, error_type=error_type)
        except Exception as exc:
            self._error("tracing", exc)
        self.flush(record=False)  # the record comes with close(), complete
        spans = self.tracer.finished()
        if self.sidecar_key is None and self.options.otlp_endpoint:
            error = export_otlp(
                spans,
                endpoint=self.options.otlp_endpoint,
                timeout_seconds=self.options.otlp_timeout_seconds,
            )
            self.otlp = {
                "endpoint": strip_sas(self.options.otlp_endpoint),
                "exported": 0 if error else len(spans),
                "error": self._redact(error) if error else None,
            }
            if error:
                self._log.phase("telemetry").warning("OTLP span export failed: {}", error)
        if self.options.span_exporter is not None:
            try:
                self.options.span_exporter.export(spans)
            except Exception as exc:
                self._error("span_exporter", exc)

    def close(self, *, task_id: str, logs_blob_uri: str | None) -> dict[str, Any] | None:
        """Mirror the log (no sidecar), then write the final record (last); returns it.

        Called after the job's last log line. Only a failed log upload logs (a
        warning, before the final record, so the spool has it too).
        """
        if self.finished:
            return None
        if not self.ended:
            self.end_job(None, root_attributes={}, task_id=task_id)
        if logs_blob_uri:
            if self.sealed:
                self.logs_mirrored_by = "sidecar"
            else:  # no sidecar, or it cannot be handed the URL: mirror it ourselves
                self._upload_logs(logs_blob_uri)
        self.finished = True
        record = self._record(complete=True)
        if self.job is not None:
            self.job.write_record(record)
            self.job.close()
        self._write_state(task_id, record, spans_json=self._span_docs())
        try:
            self.tracer.shutdown()
        except Exception as exc:
            self._error("tracing", exc)
        return record

    def _upload_logs(self, logs_blob_uri: str) -> None:
        data = "".join(self._mirror).encode("utf-8")
        try:
            upload_block_blob(
                logs_blob_uri,
                data,
                policy=self.options.blob_policy,
                content_type="application/x-ndjson",
            )
            self.logs_mirrored_by = "runtime"
        except BlobOpError as exc:
            self.logs_mirror_error = self._redact(f"log upload failed: {exc.failure.message}")
            self._log.phase("telemetry").warning(
                "job log upload to {} failed: {}", strip_sas(logs_blob_uri), exc.failure.message
            )
        except Exception as exc:
            self.logs_mirror_error = self._redact(f"log upload failed: {type(exc).__name__}")

    def _write_state(self, task_id: str, record: dict[str, Any], *, spans_json: list[Any]) -> None:
        if not task_id:
            return
        directory = os.path.join(self.options.state_dir, "jobs")
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            doc = {"record": record, "spans": spans_json}
            atomic_write(
                os.path.join(directory, f"{job_dir_name(task_id)}.json"),
                (json.dumps(doc, default=str, separators=(",", ":")) + "\n").encode("utf-8"),
                fsync=False,  # a convenience copy for `trace`; the spool has the real one
            )
        except OSError as exc:
            self._error("state", exc)


def _same_fs_as_any(path: str, plan: FreezePlan) -> bool:
    try:
        dev = os.stat(path).st_dev
    except OSError:
        return True  # unknown: be safe (I1 first)
    for mount in plan.mounts:
        try:
            if os.stat(mount.mountpoint).st_dev == dev:
                return True
        except OSError:
            continue
    return False


def _attribute(value: object, redact: Callable[[str], str]) -> AttributeValue | None:
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


def _script_attributes(result: ScriptResult) -> dict[str, AttributeValue]:
    codes = [a.exit_code if a.exit_code is not None else -(a.signal or 0) for a in result.attempts]
    attrs: dict[str, AttributeValue] = {
        "vmsnap.script.path": result.path,
        "vmsnap.script.attempts": len(result.attempts),
        "vmsnap.script.retries": result.retries,
        "vmsnap.script.timed_out": result.timed_out,
        "vmsnap.script.exit_codes": codes,
    }
    return attrs


def _disk_error(kind: str | None) -> ErrorCode:
    if kind == "limit":
        return ErrorCode.SNAPSHOT_LIMIT_REACHED
    if kind == "throttled":
        return ErrorCode.SNAPSHOT_RATE_EXCEEDED
    return ErrorCode.SNAPSHOT_FAILED


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
