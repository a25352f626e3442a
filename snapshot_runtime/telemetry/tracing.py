"""OpenTelemetry mechanics for one job: ids, resource, an in-memory provider, span JSON.

What the spans *mean* (names, attributes, when they start) is decided by
``telemetry``; this module only holds the OTel plumbing:

* ``trace_id_for_task`` (pure): the job's trace id, derived from its taskId
  (docs/telemetry.md, "Trace id"). ``JobIdGenerator`` hands it to the SDK for
  the one root span of the process; span ids stay random.
* ``build_resource``: ``service.name`` "snapshot-runtime" unless
  ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES`` say otherwise (the
  environment beats our defaults), process attributes without the command
  line (argv could hold a secret), every string value scrubbed.
* ``JobTracer``: a private ``TracerProvider`` (never the global one) whose
  only processor is a ``SimpleSpanProcessor`` in front of ``SpanCollector``,
  an exporter that appends to a list. Ending a span is therefore a memory
  operation with no I/O and no thread, safe inside the frozen window; real
  exports (``export_otlp``, the spool) happen after the thaw, from the list.
  Sampling is ``ALWAYS_ON``: the job record and ``snapshot-runtime trace``
  need every span, whatever an incoming ``TRACEPARENT`` says about sampling.
* ``span_to_json``: the spool's ``spans.jsonl`` line (docs/spool.md).

Not thread-safe: one job thread drives a ``JobTracer``.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import (
    TELEMETRY_SDK_LANGUAGE,
    TELEMETRY_SDK_NAME,
    TELEMETRY_SDK_VERSION,
    OTELResourceDetector,
    ProcessResourceDetector,
    Resource,
    ServiceInstanceIdResourceDetector,
)
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.sdk.version import __version__ as _sdk_version
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from snapshot_runtime import __version__
from snapshot_runtime.core.redact import redact_then_truncate, scrub
from snapshot_runtime.telemetry.otlp_settings import OTLP_GRPC, OTLP_HTTP_PROTOBUF

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "SCOPE_NAME",
    "JobIdGenerator",
    "JobTracer",
    "OtlpProtocolUnavailable",
    "SpanCollector",
    "build_resource",
    "export_otlp",
    "otlp_span_exporter",
    "span_to_json",
    "split_task_id",
    "trace_id_for_task",
]

DEFAULT_SERVICE_NAME = "snapshot-runtime"
# OTEL_EXPORTER_OTLP_PROTOCOL values this runtime speaks.
SCOPE_NAME = "snapshot_runtime"
# Resource keys that would carry argv (which may hold a secret): never sent.
_FORBIDDEN_RESOURCE_KEYS = frozenset({"process.command_line", "process.command_args"})
_ATTEMPT_SUFFIX = re.compile(r"^(?P<base>.+)_(?P<n>[0-9]{1,9})$")
_PROPAGATOR = TraceContextTextMapPropagator()
# What Resource.create() adds first, without its detector plugins.
_SDK_ATTRIBUTES: dict[str, AttributeValue] = {
    TELEMETRY_SDK_LANGUAGE: "python",
    TELEMETRY_SDK_NAME: "opentelemetry",
    TELEMETRY_SDK_VERSION: _sdk_version,
}


def split_task_id(task_id: str) -> tuple[str, int | None]:
    """``("<uuid>", N)`` for ``"<uuid>_N"``; ``(task_id, None)`` otherwise. Pure.

    The backup service numbers the retries of one job ``<uuid>_1``, ``_2``...;
    they share one trace (tagged ``vmsnap.attempt``). The suffix is only
    stripped when what remains is a UUID, so an arbitrary id such as
    ``nightly_2`` keeps its whole text.
    """
    m = _ATTEMPT_SUFFIX.match(task_id)
    if m:
        try:
            uuid.UUID(m.group("base"))
        except ValueError:
            return task_id, None
        return m.group("base"), int(m.group("n"))
    return task_id, None


def trace_id_for_task(task_id: str) -> tuple[int, bool]:
    """(trace id, whether its low 56 bits are random) for a taskId. Pure.

    A UUID (after ``split_task_id``) is the trace id itself (its 128-bit
    value, so the 32 hex digits are the UUID without dashes); anything else
    is the first 16 bytes of SHA-256 of the UTF-8 taskId. Never 0.
    """
    base, _ = split_task_id(task_id)
    try:
        value = uuid.UUID(base)
    except ValueError:
        value = None
    if value is not None and value.int != 0:
        return value.int, value.version == 4
    digest = hashlib.sha256(task_id.encode("utf-8")).digest()
    tid = int.from_bytes(digest[:16], "big")
    return (tid or 1), True


class OtlpProtocolUnavailable(RuntimeError):
    """The selected OTLP protocol's exporter is not installed (the grpc extra)."""


class JobIdGenerator(IdGenerator):
    """Trace ids from the job's taskId (``task_id`` set before the root span); random spans."""

    def __init__(self, task_id: str | None = None) -> None:
        self.task_id = task_id
        self._rng = random.Random()  # noqa: S311 - ids, not secrets
        self._forced: int | None = None

    def force_next_span_id(self, span_id: int) -> None:
        """The next span gets this (reserved) id: for spans made after the fact."""
        self._forced = span_id or None

    def generate_span_id(self) -> int:
        if self._forced is not None:
            forced, self._forced = self._forced, None
            return forced
        span_id = 0
        while span_id == 0:
            span_id = self._rng.getrandbits(64)
        return span_id

    def generate_trace_id(self) -> int:
        if self.task_id:
            return trace_id_for_task(self.task_id)[0]
        trace_id = 0
        while trace_id == 0:
            trace_id = self._rng.getrandbits(128)
        return trace_id

    def is_trace_id_random(self) -> bool:
        return trace_id_for_task(self.task_id)[1] if self.task_id else True


class SpanCollector(SpanExporter):
    """Keeps finished spans in memory (export = append): no I/O, ever."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def take(self, start: int) -> list[ReadableSpan]:
        """The spans finished since index ``start``."""
        with self._lock:
            return self.spans[start:]

    def shutdown(self) -> None:
        return None


def build_resource(
    *,
    redact: Callable[[str], str],
    host_name: str | None = None,
    host_id: str | None = None,
    cloud: Mapping[str, str] | None = None,
) -> Resource:
    """The job's resource; environment attributes (OTEL_*) beat these defaults.

    Precedence, lowest first: our defaults (``host_name``, ``host_id``), the
    process and SDK attributes, ``cloud`` (the sidecar's Azure resource cache,
    ``azure_resource``), then ``OTEL_RESOURCE_ATTRIBUTES``/``OTEL_SERVICE_NAME``.
    No detector plugin runs here (``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS`` is
    not honoured): a plugin such as ``azure_vm`` would ask IMDS during the
    job's start-up, which only the sidecar does.
    """
    attrs: dict[str, AttributeValue] = {"service.version": __version__}
    if host_name:
        attrs["host.name"] = host_name
    if host_id:
        attrs["host.id"] = host_id
    attrs.update(ProcessResourceDetector(include_command_args=False).detect().attributes)
    attrs.update(_SDK_ATTRIBUTES)
    attrs.update(ServiceInstanceIdResourceDetector().detect().attributes)
    if cloud:
        attrs.update(cloud)
    from_env = OTELResourceDetector().detect()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    attrs.update(from_env.attributes)
    name = attrs.get("service.name")
    if not isinstance(name, str) or not name or name.startswith("unknown_service"):
        attrs["service.name"] = DEFAULT_SERVICE_NAME
    clean: dict[str, AttributeValue] = {}
    for key, value in attrs.items():
        if key in _FORBIDDEN_RESOURCE_KEYS:
            continue
        clean[key] = redact(value) if isinstance(value, str) else value
    return Resource(clean, from_env.schema_url)


def _hex_trace(value: int) -> str:
    return format(value, "032x")


def _hex_span(value: int) -> str:
    return format(value, "016x")


class JobTracer:
    """One job's spans: a root, children started live or after the fact, all in memory.

    - ``resource``: from ``build_resource``.
    - ``traceparent``: an incoming W3C ``traceparent``; a valid one becomes the
      root's parent (and decides the trace id), an invalid one is ignored.
    - ``clock_pair``: ``(time.time_ns(), time.monotonic_ns())`` read together, to
      place spans known only by monotonic times.
    """

    def __init__(
        self,
        *,
        resource: Resource,
        traceparent: str | None = None,
        clock_pair: tuple[int, int] | None = None,
    ) -> None:
        self.ids = JobIdGenerator()
        self.collector = SpanCollector()
        self.provider = TracerProvider(
            sampler=ALWAYS_ON,
            resource=resource,
            id_generator=self.ids,
            shutdown_on_exit=False,
        )
        self.provider.add_span_processor(SimpleSpanProcessor(self.collector))
        self.tracer = self.provider.get_tracer(SCOPE_NAME, __version__)
        self._parent: Context | None = None
        self.incoming_traceparent = False
        if traceparent:
            ctx = _PROPAGATOR.extract({"traceparent": traceparent.strip()})
            if trace.get_current_span(ctx).get_span_context().is_valid:
                self._parent = ctx
                self.incoming_traceparent = True
        self._wall0, self._mono0 = clock_pair or (time.time_ns(), time.monotonic_ns())
        self.root: Span | None = None
        self.current: Span | None = None
        # OTEL_(SPAN_)ATTRIBUTE_VALUE_LENGTH_LIMIT makes the SDK cut strings
        # blindly; cut them first ourselves, redacted, dropping a cut secret-like run.
        self._value_limit = SpanLimits().max_span_attribute_length

    def _fit(
        self, attributes: Mapping[str, AttributeValue] | None
    ) -> Mapping[str, AttributeValue] | None:
        """``attributes`` with every string redacted, then cut to the SDK's limit."""
        limit = self._value_limit
        if not attributes or limit is None:
            return attributes
        fitted: dict[str, AttributeValue] = {}
        for key, value in attributes.items():
            if isinstance(value, str):
                fitted[key] = redact_then_truncate(value, limit, scrub)
            elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                fitted[key] = [redact_then_truncate(str(v), limit, scrub) for v in value]
            else:
                fitted[key] = value
        return fitted

    # -- time -------------------------------------------------------------

    def wall_ns_from_monotonic(self, seconds: float) -> int:
        """Epoch ns for a ``time.monotonic()`` value."""
        return self._wall0 + (int(seconds * 1e9) - self._mono0)

    # -- spans ------------------------------------------------------------

    def start_root(
        self,
        name: str,
        *,
        task_id: str | None,
        start_ns: int,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> Span:
        if self.root is not None:
            raise RuntimeError("the root span is already started")
        self.ids.task_id = task_id or None
        self.root = self.tracer.start_span(
            name,
            context=self._parent,
            kind=SpanKind.INTERNAL,
            attributes=self._fit(attributes),
            start_time=start_ns,
            record_exception=False,
            set_status_on_exception=False,
        )
        self.current = self.root
        return self.root

    def start_child(
        self,
        name: str,
        *,
        parent: Span | None = None,
        start_ns: int | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
        current: bool = True,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> Span:
        """A child of ``parent`` (default: the root), optionally made current.

        ``kind``: CLIENT for a span that stands for an outgoing request (a disk's
        snapshot request), INTERNAL otherwise.
        """
        parent = parent or self.root
        ctx = trace.set_span_in_context(parent) if parent is not None else self._parent
        span = self.tracer.start_span(
            name,
            context=ctx,
            kind=kind,
            attributes=self._fit(attributes),
            start_time=start_ns,
            record_exception=False,
            set_status_on_exception=False,
        )
        if current:
            self.current = span
        return span

    def end(
        self,
        span: Span,
        *,
        end_ns: int | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
        error_type: str | None = None,
        description: str | None = None,
    ) -> None:
        """Set the last attributes, ERROR + ``error.type`` when given, and end."""
        fitted = self._fit(attributes)
        if fitted:
            span.set_attributes(fitted)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, description))
        span.end(end_time=end_ns)
        if self.current is span:
            # Lines logged after the last phase (and after the root ended) stay
            # correlated with the job's root span.
            self.current = self.root

    def record(
        self,
        name: str,
        *,
        parent: Span | None,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, AttributeValue] | None = None,
        error_type: str | None = None,
        description: str | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> None:
        """A span known after the fact (start and end already happened)."""
        span = self.start_child(
            name, parent=parent, start_ns=start_ns, attributes=attributes, current=False, kind=kind
        )
        self.end(span, end_ns=max(end_ns, start_ns), error_type=error_type, description=description)

    # -- correlation --------------------------------------------------------

    def current_ids(self) -> tuple[str, str]:
        """(trace id hex, span id hex) of the current span; ("", "") before the root."""
        span = self.current
        if span is None:
            return "", ""
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return "", ""
        return _hex_trace(ctx.trace_id), _hex_span(ctx.span_id)

    def traceparent(self, span: Span | None = None) -> str | None:
        """The W3C ``traceparent`` of ``span`` (default: the current span)."""
        target = span or self.current
        if target is None or not target.get_span_context().is_valid:
            return None
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(target))
        return carrier.get("traceparent")

    @property
    def trace_id(self) -> str | None:
        if self.root is None or not self.root.get_span_context().is_valid:
            return None
        return _hex_trace(self.root.get_span_context().trace_id)

    @property
    def root_span_id(self) -> str | None:
        if self.root is None or not self.root.get_span_context().is_valid:
            return None
        return _hex_span(self.root.get_span_context().span_id)

    def finished(self) -> list[ReadableSpan]:
        return self.collector.take(0)

    def shutdown(self) -> None:
        self.provider.shutdown()


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    return value


def span_to_json(span: ReadableSpan) -> dict[str, Any]:
    """One ``spans.jsonl`` object (docs/spool.md)."""
    ctx = span.get_span_context()
    parent = span.parent
    scope = span.instrumentation_scope
    assert ctx is not None
    return {
        "trace_id": _hex_trace(ctx.trace_id),
        "span_id": _hex_span(ctx.span_id),
        "parent_span_id": _hex_span(parent.span_id) if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "start_time_unix_nano": span.start_time or 0,
        "end_time_unix_nano": span.end_time or 0,
        "attributes": {k: _json_value(v) for k, v in (span.attributes or {}).items()},
        "status": {
            "code": span.status.status_code.name,
            "description": span.status.description,
        },
        "events": [
            {
                "name": e.name,
                "time_unix_nano": e.timestamp,
                "attributes": {k: _json_value(v) for k, v in (e.attributes or {}).items()},
            }
            for e in span.events
        ],
        "resource": {k: _json_value(v) for k, v in span.resource.attributes.items()},
        "scope": {
            "name": scope.name if scope else SCOPE_NAME,
            "version": scope.version if scope else __version__,
        },
    }


def otlp_span_exporter(
    protocol: str, *, endpoint: str | None = None, timeout_seconds: float | None = None
) -> SpanExporter:
    """The standard OTLP span exporter for ``protocol``, imported only now.

    gRPC (the ``snapshot-runtime[grpc]`` extra) is imported only when it is
    selected, so the default costs neither start-up time nor memory. Raises
    ``OtlpProtocolUnavailable`` when grpc is selected but not installed.
    ``endpoint``/``timeout_seconds`` None: the exporter reads the standard
    ``OTEL_EXPORTER_OTLP_*`` variables itself (headers, TLS, compression always).
    """
    if protocol == OTLP_GRPC:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter as GrpcSpanExporter,
            )
        except ImportError as exc:
            raise OtlpProtocolUnavailable(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the grpc extra "
                "(pip install 'snapshot-runtime[grpc]')"
            ) from exc
        # An http:// endpoint means plaintext (the exporter's own rule for a scheme).
        return GrpcSpanExporter(endpoint=endpoint, timeout=timeout_seconds)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    return OTLPSpanExporter(endpoint=endpoint, timeout=timeout_seconds)


def export_otlp(
    spans: Sequence[ReadableSpan],
    *,
    endpoint: str,
    timeout_seconds: float,
    protocol: str = OTLP_HTTP_PROTOBUF,
) -> str | None:
    """Send ``spans`` with the standard OTLP exporter of ``protocol``; ``None`` or an error text.

    Blocks for at most about ``timeout_seconds`` (the exporter's own retry loop
    runs within that deadline). Headers, TLS and compression come from the
    standard ``OTEL_EXPORTER_OTLP_*`` variables, read by the exporter.
    """
    if not spans:
        return None
    try:
        exporter = otlp_span_exporter(protocol, endpoint=endpoint, timeout_seconds=timeout_seconds)
    except OtlpProtocolUnavailable as exc:
        return str(exc)
    try:
        result = exporter.export(spans)
    except Exception as exc:  # the exporter should not raise; never let it fail a job
        return f"{type(exc).__name__}: {exc}"
    finally:
        exporter.shutdown()
    if result is SpanExportResult.SUCCESS:
        return None
    return f"OTLP ({protocol}) export to {endpoint} failed"
