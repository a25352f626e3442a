"""After the job (after the last FITHAW): spans out, the job log up, the state copy.

Without a sidecar the runtime itself sends the spans over OTLP
(``export_spans``) and uploads its own log to ``logsBlobUri``
(``upload_job_log``, from a ``LogMirror`` of the newest lines); every job
leaves ``<state-dir>/jobs/<taskId>.json`` for ``snapshot-runtime trace``
(``write_job_state``). These functions do network and file I/O: never call
them inside the frozen window. None raises for a failed export: failures go
to ``on_error`` (counted in the record) or come back as text.
``LogMirror.append`` is memory only and runs for every log line, frozen or not.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from snapshot_runtime.core.atomic_file import write_atomic
from snapshot_runtime.core.redact import strip_sas
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.snapshot.failures import BlobOpError
from snapshot_runtime.telemetry.otlp_settings import OTLP_HTTP_PROTOBUF
from snapshot_runtime.telemetry.spool_schema import job_dir_name

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

    from snapshot_runtime.telemetry.job_log import JobLog

__all__ = [
    "LOG_MIRROR_MAX_BYTES",
    "ErrorSink",
    "LogMirror",
    "export_spans",
    "upload_job_log",
    "write_job_state",
]

# The runtime's own log upload (no sidecar) sends at most this much, newest lines kept.
LOG_MIRROR_MAX_BYTES = 4 * 1024 * 1024

ErrorSink = Callable[[str, BaseException | str], None]
"""Where a failure goes: ``(where, exception or text)``."""


class LogMirror:
    """The job's log lines in memory, newest kept within ``max_bytes``."""

    def __init__(self, max_bytes: int = LOG_MIRROR_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lines: collections.deque[str] = collections.deque()
        self._bytes = 0

    def append(self, line: str) -> None:
        # Called for every log line, inside the frozen window too: memory only.
        self._lines.append(line)
        self._bytes += len(line)
        while self._bytes > self.max_bytes and len(self._lines) > 1:
            self._bytes -= len(self._lines.popleft())

    def data(self) -> bytes:
        return "".join(self._lines).encode("utf-8")


def export_spans(
    spans: Sequence[ReadableSpan],
    *,
    otlp_endpoint: str | None,
    otlp_timeout_seconds: float,
    otlp_protocol: str = OTLP_HTTP_PROTOBUF,
    span_exporter: SpanExporter | None,
    redact: Callable[[str], str],
    log: JobLog,
    on_error: ErrorSink,
) -> dict[str, Any] | None:
    """OTLP (when an endpoint is given), then ``span_exporter``; the OTLP outcome.

    A failed OTLP export logs one warning; a failing ``span_exporter`` goes to
    ``on_error``. Returns None when there is no OTLP endpoint.
    """
    otlp: dict[str, Any] | None = None
    if otlp_endpoint:
        # After the thaw; tracing (the OpenTelemetry SDK) is loaded by then,
        # since the job's tracer made these spans: here it costs nothing.
        from snapshot_runtime.telemetry.tracing import export_otlp  # noqa: PLC0415

        error = export_otlp(
            spans,
            endpoint=otlp_endpoint,
            timeout_seconds=otlp_timeout_seconds,
            protocol=otlp_protocol,
        )
        otlp = {
            "endpoint": strip_sas(otlp_endpoint),
            "protocol": otlp_protocol,
            "exported": 0 if error else len(spans),
            "error": redact(error) if error else None,
        }
        if error:
            log.phase("telemetry").warning("OTLP span export failed: {}", error)
    if span_exporter is not None:
        try:
            span_exporter.export(spans)
        except Exception as exc:
            on_error("span_exporter", exc)
    return otlp


def upload_job_log(
    logs_blob_uri: str,
    data: bytes,
    *,
    policy: BlobPolicy,
    redact: Callable[[str], str],
    log: JobLog,
) -> str | None:
    """Upload the job log to ``logsBlobUri``; None, or why it failed (redacted).

    A failed upload logs one warning (an unexpected exception only the text).
    """
    # Not through the Azure SDK unless a proxy is set: importing it after the thaw
    # made a guest job with its own log upload peak at 52 MiB (docs/startup.md).
    from snapshot_runtime.snapshot.block_upload import upload_block_blob_direct  # noqa: PLC0415

    try:
        upload_block_blob_direct(
            logs_blob_uri, data, policy=policy, content_type="application/x-ndjson"
        )
    except BlobOpError as exc:
        log.phase("telemetry").warning(
            "job log upload to {} failed: {}", strip_sas(logs_blob_uri), exc.failure.message
        )
        return redact(f"log upload failed: {exc.failure.message}")
    except Exception as exc:
        return redact(f"log upload failed: {type(exc).__name__}")
    return None


def write_job_state(
    state_dir: str,
    task_id: str,
    record: dict[str, Any],
    *,
    spans_json: list[Any],
    on_error: ErrorSink,
) -> None:
    """``<state-dir>/jobs/<taskId>.json``: the final record and the spans (for ``trace``)."""
    if not task_id:
        return
    directory = os.path.join(state_dir, "jobs")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        doc = {"record": record, "spans": spans_json}
        write_atomic(
            os.path.join(directory, f"{job_dir_name(task_id)}.json"),
            (json.dumps(doc, default=str, separators=(",", ":")) + "\n").encode("utf-8"),
            fsync=False,  # a convenience copy for `trace`; the spool has the real one
        )
    except OSError as exc:
        on_error("state", exc)
