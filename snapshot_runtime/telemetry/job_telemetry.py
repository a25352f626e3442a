"""One job's telemetry: spans per phase, the spool hand-off, the record (docs/telemetry.md).

``JobTelemetry`` listens to the job's ``PhaseRecorder`` and ``JobLog`` and is
told the results the phases produce. It never fails the job: every effect is
guarded, and a failure is counted in the record (``telemetry_errors``).

Frozen window (I1). ``JobTelemetry`` is a ``core.window.WindowObserver``: from
``before_freeze`` (its last spool flush) to ``after_thaw``:

* phase spans are not made: their events are noted in memory and the spans
  made after the thaw (``job_spans.JobSpans``, attributes from ``span_attributes``);
* log lines go to the spool's ``log.jsonl`` at once (one ``write(2)`` each,
  to a tmpfs), unless the spool sits on a filesystem being frozen, in which
  case they are held like the local log (``check_spool_frozen``);
* nothing else: spans.jsonl, record.json and the per-disk spans wait until
  ``after_thaw``, after the last FITHAW (and after the log gate, the
  observer subscribed after it, has released the held lines).

After the job (``end_job``, then ``close``; their I/O is in ``telemetry_export``):
the root span ends; spans go to ``spans.jsonl``; with no sidecar key in the
spool they are also sent over OTLP when an endpoint is configured, and the job
log is uploaded to ``logsBlobUri`` by the runtime itself (so it is too when the
sidecar does not open this sealing version, docs/spool.md); the final record
(``complete: true``) is written last, to the spool and to
``<state-dir>/jobs/<taskId>.json`` (for ``snapshot-runtime trace``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.telemetry.azure_resource import CACHE_FILE, read_cache
from snapshot_runtime.telemetry.export import (
    LOG_MIRROR_MAX_BYTES,
    LogMirror,
    export_spans,
    upload_job_log,
    write_job_state,
)
from snapshot_runtime.telemetry.record import RecordFacts, build_record
from snapshot_runtime.telemetry.sealing import FORMAT_VERSION, seal
from snapshot_runtime.telemetry.spool import JobSpool, Spool

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.util.types import AttributeValue

    from snapshot_runtime.core.consistency import Verdict
    from snapshot_runtime.core.phases import PhaseHandle, PhaseRecord, PhaseRecorder
    from snapshot_runtime.core.redact import Redactor
    from snapshot_runtime.freeze.mounts import FreezePlan
    from snapshot_runtime.scripts.runner import ScriptResult
    from snapshot_runtime.snapshot.results import SnapshotResult
    from snapshot_runtime.telemetry.job_log import JobLog
    from snapshot_runtime.telemetry.job_spans import JobSpans
    from snapshot_runtime.telemetry.tracing import JobTracer

__all__ = [
    "JobTelemetry",
    "TelemetryOptions",
]

_MAX_ERRORS = 20


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
    otlp_protocol: str = "http/protobuf"
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
        self._started_at = started_at
        self._job_start_ns = int(started_at * 1e9)
        self._job_start_monotonic_ns = int(started_monotonic * 1e9)
        # The tracer (OpenTelemetry) is built when the taskId is known (begin,
        # before any freeze), not here: the settings phase starts without
        # loading the SDK (issue 15). Until then only its start time is noted.
        self._tracer: JobTracer | None = None
        self._spans: JobSpans | None = None
        self._settings_start_ns: int | None = None
        self._pending_lines: list[str] = []
        self._mirror = LogMirror(LOG_MIRROR_MAX_BYTES)
        self._spans_flushed = 0
        self._span_json: list[dict[str, Any]] = []
        self._deferred_snapshot: SnapshotResult | None = None
        self.in_window = False
        self.logs_mirrored_by: str | None = None
        self.logs_mirror_error: str | None = None
        self.otlp: dict[str, Any] | None = None
        self.ended = False
        self.finished = False
        self.line_sink = log.add_line_sink(self._on_line, gated=False)
        log.set_trace_source(self.current_ids)
        phases.subscribe(self._on_phase)

    def _cloud_attributes(self, now: float) -> dict[str, str]:
        """The sidecar's Azure resource cache (azure_resource), read at start, before any freeze.

        No cache is normal (no IMDS, no sidecar yet); one that is not believed
        is counted, and the job goes on without cloud attributes.
        """
        path = os.path.join(self.options.spool_dir, CACHE_FILE)
        try:
            return read_cache(path, now=now).attributes
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            self._error("resource_cache", exc)
            return {}

    # -- bookkeeping --------------------------------------------------------

    def _error(self, where: str, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        if len(self.errors) < _MAX_ERRORS:
            self.errors.append(self._redact(f"{where}: {text}"))

    @property
    def tracer(self) -> JobTracer:
        """The job's tracer, built (and OpenTelemetry imported) on first use."""
        if self._tracer is None:
            self._build_tracer()
            assert self._tracer is not None
        return self._tracer

    @property
    def spans(self) -> JobSpans:
        if self._spans is None:
            self._build_tracer()
            assert self._spans is not None
        return self._spans

    def _build_tracer(self) -> None:
        # Imported now, not at module level: see __init__. Always before the
        # first FIFREEZE (begin() runs before the freeze; I1).
        from snapshot_runtime.telemetry.job_spans import JobSpans  # noqa: PLC0415
        from snapshot_runtime.telemetry.tracing import JobTracer, build_resource  # noqa: PLC0415

        self._tracer = JobTracer(
            resource=build_resource(
                redact=self._redact,
                host_name=self.options.host_name,
                host_id=self.options.host_id,
                cloud=self._cloud_attributes(self._started_at),
            ),
            traceparent=self.options.traceparent,
            clock_pair=(self._job_start_ns, self._job_start_monotonic_ns),
        )
        self._spans = JobSpans(
            self._tracer, redact=self._redact, settings_start_ns=self._settings_start_ns
        )

    @property
    def trace_id(self) -> str | None:
        return self._tracer.trace_id if self._tracer is not None else None

    @property
    def job_dir(self) -> str | None:
        return self.job.path if self.job else None

    def _on_line(self, line: str) -> None:
        # Called for every log line, inside the frozen window too: memory, or one write(2).
        self._mirror.append(line)
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
        try:
            self.spans.start_root(
                task_id, start_ns=self._job_start_ns, records=self._phases.records
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
        if (
            self.sidecar_key is not None
            and logs_blob_uri
            and FORMAT_VERSION not in self.spool.sidecar_sealing_versions()
        ):
            # A sidecar older than this sealing format: it could not open what
            # we seal and would drop the job's log, so it gets nothing and
            # close() uploads the log (docs/spool.md, credentials.sealed).
            self._log.phase("telemetry").info(
                "the sidecar does not open credentials.sealed version {}: "
                "the runtime uploads the job log itself",
                FORMAT_VERSION,
            )
        elif self.sidecar_key is not None and logs_blob_uri:
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
        try:
            self.spans.script_spans(which, result)
        except Exception as exc:
            self._error("tracing", exc)

    def on_snapshot(self, result: SnapshotResult) -> None:
        """The per-disk spans: now, or after the thaw when told inside the window."""
        self._deferred_snapshot = result
        if not self.in_window:
            self._after_window()

    # -- core.window.WindowObserver -------------------------------------------

    def before_freeze(self) -> None:
        """Last spool write before the window (the record names what is about to freeze)."""
        self.flush()
        self.in_window = True

    def frozen(self) -> None:
        """Nothing to do: phase events are already noted in memory."""

    def after_thaw(self) -> None:
        """Make the spans noted in the window and write them out."""
        self.in_window = False
        self._after_window()

    # -- phase listener -------------------------------------------------------

    def _on_phase(self, event: str, handle: PhaseHandle, record: PhaseRecord | None) -> None:
        if self._spans is None:
            # Before begin(): no span is made yet (start_root makes the ones
            # that ended); like JobSpans.on_phase before the root, note when
            # the settings phase started.
            if event == "start" and handle.name == "settings":
                self._settings_start_ns = time.time_ns()
            return
        if self.spans.on_phase(event, handle, record, frozen=self.in_window):
            self.flush()

    def current_ids(self) -> tuple[str, str]:
        """For log lines: the current phase span; inside the window, its reserved id."""
        if self._spans is None:
            return "", ""  # before the root span, as the tracer says then
        return self.spans.current_ids()

    def _after_window(self) -> None:
        events = self.spans.take_window()
        try:
            self.spans.replay(events)
        except Exception as exc:
            self._error("tracing", exc)
        result, self._deferred_snapshot = self._deferred_snapshot, None
        if result is not None:
            try:
                self.spans.disk_spans(result)
            except Exception as exc:
                self._error("tracing", exc)
        if events or result is not None:
            self.flush()

    # -- writing ------------------------------------------------------------

    def _record(self, *, complete: bool) -> dict[str, Any]:
        job = self.job
        facts = dataclasses.replace(
            self._facts(),
            trace_id=self.trace_id,
            root_span_id=self._tracer.root_span_id if self._tracer is not None else None,
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
        if self._tracer is None:
            return self._span_json  # no tracer yet: no span
        from snapshot_runtime.telemetry.tracing import span_to_json  # noqa: PLC0415 - loaded

        spans = self._tracer.collector.take(len(self._span_json))
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
        otlp = export_spans(
            self.tracer.finished(),
            # With a sidecar key in the spool the sidecar sends them (docs/telemetry.md).
            otlp_endpoint=self.options.otlp_endpoint if self.sidecar_key is None else None,
            otlp_timeout_seconds=self.options.otlp_timeout_seconds,
            otlp_protocol=self.options.otlp_protocol,
            span_exporter=self.options.span_exporter,
            redact=self._redact,
            log=self._log,
            on_error=self._error,
        )
        if otlp is not None:
            self.otlp = otlp

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
                error = upload_job_log(
                    logs_blob_uri,
                    self._mirror.data(),
                    policy=self.options.blob_policy,
                    redact=self._redact,
                    log=self._log,
                )
                if error is None:
                    self.logs_mirrored_by = "runtime"
                else:
                    self.logs_mirror_error = error
        self.finished = True
        record = self._record(complete=True)
        if self.job is not None:
            self.job.write_record(record)
            self.job.close()
        write_job_state(
            self.options.state_dir,
            task_id,
            record,
            spans_json=self._span_docs(),
            on_error=self._error,
        )
        try:
            if self._tracer is not None:
                self._tracer.shutdown()
        except Exception as exc:
            self._error("tracing", exc)
        return record


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
