"""Span forwarding: the runtime's finished spans (spans.jsonl) to OTLP.

``span_from_json`` rebuilds an SDK ``ReadableSpan`` from one spans.jsonl line
(docs/spool.md); ``SpanForwarder.step()`` exports each job's new lines with a
``SpanExporter`` (in production the standard ``OTLPSpanExporter`` of the
protocol ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` names, http/protobuf or grpc,
chosen by ``cli.span_exporter_from_env`` and configured only by the standard
``OTEL_EXPORTER_OTLP_*`` variables; it retries transient failures within its
own timeout). Spans keep the kind, attributes and resource the runtime wrote
(CLIENT disk spans, the Azure ``cloud.*`` resource from the job's cache).
Progress (bytes of spans.jsonl handled) is committed in the ledger after every
successful export, so a restart neither loses nor re-sends a batch that was
acknowledged.

While the collector is down, nothing is lost: the spans wait in the spool, and
the forwarder retries with a capped exponential backoff. The wait is bounded:
when more than ``backlog_bytes`` of spans wait, the oldest jobs' spans are
dropped (``vmsnap_sidecar_spans_dropped_total{reason="backlog"}``), and spans
of a job completed more than ``give_up_seconds`` ago are dropped as
``expired``. Lines that are not valid spans are dropped as ``invalid``.

Thread: ``step()`` runs on one thread (the span worker). Blocking: the
exporter's request, bounded by its timeout.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from snapshot_runtime.telemetry.spool_schema import SPANS_FILE, SpoolFormatError, loads_bounded
from snapshot_sidecar.forwarders import ForwardResult, Guard
from snapshot_sidecar.spool_reader import RecordError, SpoolReader
from snapshot_sidecar.state import TERMINAL, Ledger

__all__ = ["SpanConfig", "SpanForwarder", "span_from_json"]

_log = logging.getLogger("snapshot_sidecar.spans")


@dataclass(frozen=True)
class SpanConfig:
    """- batch_bytes: spans.jsonl bytes per export call (whole lines).
    - backlog_bytes: most span bytes kept waiting for the collector.
    - give_up_seconds: spans of a job completed this long ago are dropped.
    """

    batch_bytes: int = 512 * 1024
    backlog_bytes: int = 16 * 1024 * 1024
    give_up_seconds: float = 24 * 3600.0
    max_backoff: float = 60.0


def _hex(value: object, digits: int) -> int:
    if not isinstance(value, str) or len(value) != digits:
        raise ValueError(f"expected {digits} hex digits, got {value!r}")
    number = int(value, 16)
    if number == 0:
        raise ValueError("all-zero id")
    return number


def _attributes(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    return {
        str(k): v
        for k, v in value.items()
        if isinstance(v, str | bool | int | float)
        or (isinstance(v, list) and all(isinstance(i, str | bool | int | float) for i in v))
    }


_RESOURCES: dict[str, Resource] = {}


def _resource(value: object) -> Resource:
    attributes = _attributes(value)
    key = json.dumps(attributes, sort_keys=True)
    resource = _RESOURCES.get(key)
    if resource is None:
        if len(_RESOURCES) > 64:
            _RESOURCES.clear()
        # Resource(...) directly: no detectors, no environment (the runtime's
        # resource is what it wrote).
        resource = _RESOURCES[key] = Resource(attributes)
    return resource


def span_from_json(doc: Mapping[str, Any]) -> ReadableSpan:
    """One spans.jsonl object as a ReadableSpan. Raises ValueError/KeyError/TypeError."""
    trace_id = _hex(doc["trace_id"], 32)
    flags = TraceFlags(TraceFlags.SAMPLED)
    context = SpanContext(trace_id, _hex(doc["span_id"], 16), is_remote=False, trace_flags=flags)
    parent_id = doc.get("parent_span_id")
    parent = (
        SpanContext(trace_id, _hex(parent_id, 16), is_remote=False, trace_flags=flags)
        if parent_id
        else None
    )
    status_doc: dict[str, Any] = doc["status"] if isinstance(doc.get("status"), dict) else {}
    code = StatusCode[str(status_doc.get("code") or "UNSET")]
    description = status_doc.get("description") if code is StatusCode.ERROR else None
    events = []
    for event in doc.get("events") or []:
        if isinstance(event, dict) and isinstance(event.get("name"), str):
            ts = event.get("timestamp_unix_nano", event.get("timestamp"))
            events.append(
                Event(
                    event["name"],
                    _attributes(event.get("attributes")),
                    int(ts) if isinstance(ts, int | float) else None,
                )
            )
    scope_doc: dict[str, Any] = doc["scope"] if isinstance(doc.get("scope"), dict) else {}
    start, end = int(doc["start_time_unix_nano"]), int(doc["end_time_unix_nano"])
    return ReadableSpan(
        name=str(doc["name"]),
        context=context,
        parent=parent,
        resource=_resource(doc.get("resource")),
        attributes=_attributes(doc.get("attributes")),
        events=events,
        kind=SpanKind[str(doc.get("kind") or "INTERNAL")],
        status=Status(code, description if isinstance(description, str) else None),
        start_time=start,
        end_time=end,
        instrumentation_scope=InstrumentationScope(
            str(scope_doc.get("name") or "snapshot_runtime"),
            str(scope_doc["version"]) if scope_doc.get("version") else None,
        ),
    )


def parse_lines(data: bytes) -> tuple[list[ReadableSpan], int]:
    """Spans from whole spans.jsonl lines, and how many lines were invalid."""
    spans, invalid = [], 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            spans.append(span_from_json(loads_bounded(line)))
        except (SpoolFormatError, ValueError, KeyError, TypeError):
            invalid += 1
    return spans, invalid


class SpanForwarder:
    """The span forwarder: a ``Forwarder`` (forwarders.py) of spans.jsonl over OTLP."""

    name = "spans"

    def __init__(
        self,
        reader: SpoolReader,
        ledger: Ledger,
        exporter: SpanExporter | None,
        config: SpanConfig,
        *,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
    ) -> None:
        self.reader = reader
        self.ledger = ledger
        self.exporter = exporter
        self.config = config
        self.clock = clock
        self.stop = stop or threading.Event()
        self.next_try = 0.0
        self.backoff = 0.0
        self._done: list[str] = []
        self._guard = Guard(ledger)

    def step(self) -> ForwardResult:
        """One pass over every job with spans to export (never raises: ``Forwarder``)."""
        return self._guard.run(self.name, self._pass)

    def close(self) -> None:
        """Nothing to release: the exporter is the caller's (cli shuts it down)."""

    def _pass(self) -> ForwardResult:
        with self.ledger.locked() as state:
            names = sorted(
                (n for n, j in state.jobs.items() if j.spans.status not in TERMINAL),
                key=lambda n: state.jobs[n].first_seen,
            )
        if self.exporter is None:
            self._disabled(names)
            return ForwardResult.SUCCESS
        self._bound(names)
        result = ForwardResult.SUCCESS
        if self.clock() >= self.next_try:
            for name in names:
                if self.stop.is_set():
                    break
                if not self._export_job(name):
                    result = ForwardResult.FAILURE  # the collector refused: back off
                    break
        if self._done:
            with self.ledger.transaction() as state:
                for name in self._done:
                    job = state.jobs.get(name)
                    if job is not None and job.spans.status not in TERMINAL:
                        job.spans.status = "done"
            self._done.clear()
        self.update_backlog()
        return result

    def _finished(self, name: str) -> bool:
        job = self.ledger.state.jobs.get(name)
        if job is None:
            return True
        if job.finished:
            return True
        try:
            record = self.reader.read_record(name)
        except RecordError:
            return False
        return record is not None and record.complete

    def _disabled(self, names: list[str]) -> None:
        # No exporter configured: spans stay in the spool only as long as the job.
        finished = [name for name in names if self._finished(name)]
        if finished:
            with self.ledger.transaction() as state:
                for name in finished:
                    job = state.jobs.get(name)
                    if job is not None:
                        job.spans.status = "none"

    def _export_job(self, name: str) -> bool:
        """Export what is there; False: the exporter failed (stop this step)."""
        exporter = self.exporter
        assert exporter is not None
        while not self.stop.is_set():
            job = self.ledger.state.jobs.get(name)
            if job is None or job.spans.status in TERMINAL:
                return True
            finished = self._finished(name)
            chunk = self.reader.read_lines(
                name, SPANS_FILE, job.spans.offset, self.config.batch_bytes
            )
            if not chunk:
                if finished:
                    self._done.append(name)
                return True
            spans, invalid = parse_lines(chunk.data)
            if spans:
                try:
                    result = exporter.export(spans)
                except Exception:
                    _log.exception("span exporter raised")
                    result = SpanExportResult.FAILURE
                if result is not SpanExportResult.SUCCESS:
                    self._failed(len(spans))
                    return False
            with self.ledger.transaction() as state:
                job.spans.offset = chunk.end
                state.metrics.inc("vmsnap_sidecar_spans_exported_total", (), len(spans))
                if invalid:
                    state.metrics.inc("vmsnap_sidecar_spans_dropped_total", ("invalid",), invalid)
            self.backoff = 0.0
        return True

    def _failed(self, count: int) -> None:
        self.backoff = min(self.config.max_backoff, max(1.0, self.backoff * 2))
        self.next_try = self.clock() + self.backoff
        _log.warning(
            "span export of %d spans failed; %s retry in %.0fs", count, "will", self.backoff
        )
        with self.ledger.transaction() as state:
            state.metrics.inc("vmsnap_sidecar_span_export_errors_total")

    def _waiting(self, name: str) -> int:
        job = self.ledger.state.jobs.get(name)
        if job is None or job.spans.status in TERMINAL:
            return 0
        return max(0, self.reader.file_size(name, SPANS_FILE) - job.spans.offset)

    def _drop(self, name: str, reason: str) -> None:
        job = self.ledger.state.jobs[name]
        size = self.reader.file_size(name, SPANS_FILE)
        chunk = self.reader.read_lines(name, SPANS_FILE, job.spans.offset, max(1, size))
        with self.ledger.transaction() as state:
            job.spans.offset = chunk.end
            state.metrics.inc("vmsnap_sidecar_spans_dropped_total", (reason,), chunk.lines)
            if self._finished(name):
                job.spans.status = "failed"
                job.spans.error = reason
        if chunk.lines:
            _log.warning("job %s: dropped %d spans (%s)", name, chunk.lines, reason)

    def _bound(self, names: list[str]) -> None:
        now = self.clock()
        for name in names:
            job = self.ledger.state.jobs.get(name)
            if job is None or job.completed_at is None:
                continue
            if now - job.completed_at > self.config.give_up_seconds:
                self._drop(name, "expired")
        total = sum(self._waiting(n) for n in names)
        for name in names:  # oldest first
            if total <= self.config.backlog_bytes:
                break
            waiting = self._waiting(name)
            if waiting:
                self._drop(name, "backlog")
                total -= waiting

    def update_backlog(self) -> None:
        with self.ledger.locked() as state:
            names = [n for n, j in state.jobs.items() if j.spans.status not in TERMINAL]
        self.ledger.live("vmsnap_sidecar_span_backlog_bytes", sum(self._waiting(n) for n in names))
