"""A job's spans: the root, one per phase, the script attempts and the disks.

``JobSpans`` turns the job's phase events and results into spans on a
``tracing.JobTracer``; what each span says comes from ``span_attributes``.
It writes nothing: ``telemetry.JobTelemetry`` guards every call (a failure is
counted, never raised into the job) and writes the finished spans out.

Frozen window (I1): ``on_phase(..., frozen=True)`` makes no span. It notes
the event (a clock read and an append) and reserves the span id the log lines
will carry (``current_ids``); ``take_window`` + ``replay`` make those spans
after the thaw with their real times and ids.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind

from snapshot_runtime.core.phases import PhaseHandle, PhaseRecord
from snapshot_runtime.snapshot.host import HostSnapshotResult
from snapshot_runtime.telemetry.span_attributes import (
    ROOT_SPAN,
    attempt_outcome,
    disk_outcome,
    phase_outcome,
    recorded_phase_outcome,
    script_attributes,
    span_name,
)
from snapshot_runtime.telemetry.tracing import JobTracer, split_task_id

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from opentelemetry.trace import Span
    from opentelemetry.util.types import AttributeValue

    from snapshot_runtime.scripts.runner import ScriptResult
    from snapshot_runtime.snapshot.results import DiskSnapshot, SnapshotResult

__all__ = ["JobSpans", "WindowEvent"]

WindowEvent = tuple[str, PhaseHandle, int, int]
"""A phase event noted while frozen: ("start"|"end", handle, wall ns, reserved span id)."""


class JobSpans:
    """The spans of one job on ``tracer``; free texts pass ``redact``."""

    def __init__(
        self,
        tracer: JobTracer,
        *,
        redact: Callable[[str], str],
        settings_start_ns: int | None = None,
    ) -> None:
        """``settings_start_ns``: when the settings phase started, if before this object."""
        self.tracer = tracer
        self._redact = redact
        self._phase_spans: dict[str, Span] = {}
        self._settings_start_ns = settings_start_ns
        self._window_events: list[WindowEvent] = []
        self._window_span_ids: list[int] = []

    def start_root(self, task_id: str, *, start_ns: int, records: Sequence[PhaseRecord]) -> None:
        """The root span, then spans for the phases ``records`` says ended before it."""
        _base, attempt = split_task_id(task_id)
        attrs: dict[str, AttributeValue] = {"vmsnap.task_id": task_id}
        if attempt is not None:
            attrs["vmsnap.attempt"] = attempt
        root = self.tracer.start_root(
            ROOT_SPAN, task_id=task_id, start_ns=start_ns, attributes=attrs
        )
        for done in records:  # phases that ended before the root existed
            if done.name in self._phase_spans:
                continue
            start = int(done.started_at * 1e9)
            outcome = recorded_phase_outcome(done, self._redact)
            self.tracer.record(
                span_name(done.name),
                parent=root,
                start_ns=start,
                end_ns=start + int(done.seconds * 1e9),
                attributes=outcome.attributes,
                error_type=outcome.error_type,
                description=outcome.description,
            )
        if self._settings_start_ns is not None and not records:
            self._phase_spans["settings"] = self.tracer.start_child(
                span_name("settings"), start_ns=self._settings_start_ns
            )

    def on_phase(
        self, event: str, handle: PhaseHandle, record: PhaseRecord | None, *, frozen: bool
    ) -> bool:
        """Follow one phase event; True when a phase span ended (time to flush)."""
        if self.tracer.root is None:
            if event == "start" and handle.name == "settings":
                self._settings_start_ns = time.time_ns()
            return False
        if frozen:
            # Frozen window: no span work at all. Note the event (a clock read and
            # an append) and reserve the span id the log lines will carry; the
            # span itself is made after the thaw (replay).
            now = time.time_ns()
            if event == "start":
                span_id = self.tracer.ids.generate_span_id()
                self._window_events.append(("start", handle, now, span_id))
                self._window_span_ids.append(span_id)
            else:
                self._window_events.append(("end", handle, now, 0))
                if self._window_span_ids:
                    self._window_span_ids.pop()
            return False
        if event == "start":
            self._phase_spans[handle.name] = self.tracer.start_child(span_name(handle.name))
            return False
        span = self._phase_spans.get(handle.name)
        if span is None:  # started before the root existed
            assert record is not None
            span = self.tracer.start_child(
                span_name(handle.name), start_ns=int(record.started_at * 1e9)
            )
            self._phase_spans[handle.name] = span
        self._end_phase_span(span, handle, None)
        return True

    def _end_phase_span(self, span: Span, handle: PhaseHandle, end_ns: int | None) -> None:
        outcome = phase_outcome(handle, self._redact)
        self.tracer.end(
            span,
            end_ns=end_ns,
            attributes=outcome.attributes,
            error_type=outcome.error_type,
            description=outcome.description,
        )

    def current_ids(self) -> tuple[str, str]:
        """For log lines: the current phase span; inside the window, its reserved id."""
        if self._window_span_ids:
            trace_id = self.tracer.trace_id or ""
            return trace_id, (format(self._window_span_ids[-1], "016x") if trace_id else "")
        return self.tracer.current_ids()

    def take_window(self) -> list[WindowEvent]:
        """The events noted while frozen; forgets them and the reserved ids."""
        events, self._window_events = self._window_events, []
        self._window_span_ids.clear()
        return events

    def replay(self, events: list[WindowEvent]) -> None:
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

    def script_spans(self, which: str, result: ScriptResult) -> None:
        """One child span per attempt of the ``which`` ("pre"/"post") script phase."""
        parent = self._phase_spans.get(f"{which}_script")
        if parent is None:
            return
        name = span_name(f"{which}_script.attempt")
        for attempt in result.attempts:
            start = int(attempt.started_at * 1e9)
            outcome = attempt_outcome(which, attempt)
            self.tracer.record(
                name,
                parent=parent,
                start_ns=start,
                end_ns=start + int(attempt.duration_seconds * 1e9),
                attributes=outcome.attributes,
                error_type=outcome.error_type,
            )
        parent.set_attributes(script_attributes(result))

    def _host_request_span(self, parent: Span, result: HostSnapshotResult) -> Span:
        """The host path's one ``dosnapshot`` (HTTP client semantic conventions).

        Kind CLIENT, ``server.address``/``server.port`` the WireServer; the disk
        spans (with their LUN) are its children: one request snapshotted them all.
        """
        start = self.tracer.wall_ns_from_monotonic(result.request_started_at)
        attrs: dict[str, AttributeValue] = {
            "http.request.method": "POST",
            "vmsnap.host.dosnapshot_code": result.dosnapshot_code or 0,
        }
        if result.server_address:
            attrs["server.address"] = result.server_address
        if result.server_port is not None:
            attrs["server.port"] = result.server_port
        if result.http_status is not None:
            attrs["http.response.status_code"] = result.http_status
        if result.presnapshot_code is not None:
            attrs["vmsnap.host.presnapshot_code"] = result.presnapshot_code
        span = self.tracer.start_child(
            span_name("snapshot.host_request"),
            parent=parent,
            start_ns=start,
            attributes=attrs,
            current=False,
            kind=SpanKind.CLIENT,
        )
        self.tracer.end(
            span,
            end_ns=start + int(result.duration_seconds * 1e9),
            error_type=result.error.value if result.error else None,
            description=self._redact(result.error_message) if result.error_message else None,
        )
        return span

    def disk_spans(self, result: SnapshotResult) -> None:
        """One child span of the snapshot phase per disk (after the thaw)."""
        parent = self._phase_spans.get("snapshot")
        if parent is None:
            return
        host = isinstance(result, HostSnapshotResult)
        if isinstance(result, HostSnapshotResult):
            parent = self._host_request_span(parent, result)
        for disk in result.disks:
            start = self.tracer.wall_ns_from_monotonic(disk.started_at)
            outcome = disk_outcome(disk, self._redact)
            self.tracer.record(
                span_name("snapshot.disk"),
                parent=parent,
                start_ns=start,
                end_ns=start + int(disk.duration_seconds * 1e9),
                attributes=_host_disk(outcome.attributes, disk) if host else outcome.attributes,
                error_type=outcome.error_type,
                description=outcome.description,
                # Host path: entries of the one request (the CLIENT parent), not requests.
                kind=SpanKind.INTERNAL if host else SpanKind.CLIENT,
            )


# A guest disk span's request attributes (its own Snapshot Blob request).
_REQUEST_KEYS = ("http.", "server.", "url.")


def _host_disk(attrs: dict[str, AttributeValue], disk: DiskSnapshot) -> dict[str, AttributeValue]:
    """A host-path disk span: its LUN; no request attributes of its own.

    The one request is the parent ``vmsnap.snapshot.host_request`` span; a disk
    is one entry of its answer, so it carries no ``http.*``/``server.*``/``url.*``
    attribute that would describe a request of its own.
    """
    out = {k: v for k, v in attrs.items() if not k.startswith(_REQUEST_KEYS)}
    if disk.lun is not None:
        out["vmsnap.disk.lun"] = disk.lun
    return out
