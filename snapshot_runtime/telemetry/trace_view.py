"""``snapshot-runtime trace TASKID|TRACEID``: a job's spans as a terminal waterfall.

``load_job`` finds the job by its taskId (``<state-dir>/jobs/<taskId>.json``,
written after every job, else the spool's job directory) or, failing that, by
its trace id (the record's ``trace_id``, as a tracing backend or an exemplar
shows it), and ``waterfall`` renders it: a killed script's signal by name,
and with ``attributes`` every span's attributes (which disk, which mount).
Pure except ``load_job``: no tracing backend, no network.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from snapshot_runtime.telemetry.spool import find_job, read_lines, read_record
from snapshot_runtime.telemetry.spool_schema import SPANS_FILE, job_dir_name

__all__ = ["JobView", "WaterfallRow", "load_job", "rows", "signal_name", "waterfall"]

_MIN_BAR = 10
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class JobView:
    record: dict[str, Any]
    spans: list[dict[str, Any]]
    source: str


@dataclass(frozen=True)
class WaterfallRow:
    name: str
    depth: int
    start_ms: float
    duration_ms: float
    status: str
    span_id: str
    error_type: str | None
    signal: str | None = None  # the signal that killed a script attempt, by name


def _state_job(path: str) -> JobView | None:
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    if isinstance(doc, dict) and isinstance(doc.get("record"), dict):
        spans = [s for s in doc.get("spans") or [] if isinstance(s, dict)]
        return JobView(doc["record"], spans, path)
    return None


def _spool_job(job_dir: str) -> JobView | None:
    record = read_record(job_dir)
    if record is None:
        return None
    spans = []
    for line in read_lines(os.path.join(job_dir, SPANS_FILE)):
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            spans.append(item)
    return JobView(record, spans, job_dir)


def _trace_id(ref: str) -> str | None:
    """``ref`` as a trace id (32 hex digits; dashes, as in a UUID, and case ignored)."""
    candidate = ref.replace("-", "").lower()
    return candidate if _TRACE_ID.fullmatch(candidate) else None


def _by_trace_id(trace_id: str, state_dir: str, spool_dir: str) -> JobView | None:
    """The newest job whose record carries ``trace_id``: state directory, then spool."""
    jobs = os.path.join(state_dir, "jobs")
    try:
        names = [n for n in os.listdir(jobs) if n.endswith(".json")]
    except OSError:
        names = []
    paths = [os.path.join(jobs, n) for n in names]
    for path in sorted(paths, key=_mtime, reverse=True):
        view = _state_job(path)
        if view is not None and view.record.get("trace_id") == trace_id:
            return view
    spool_jobs = os.path.join(spool_dir, "jobs")
    try:
        dirs = [os.path.join(spool_jobs, n) for n in os.listdir(spool_jobs)]
    except OSError:
        dirs = []
    for job_dir in sorted(dirs, key=_mtime, reverse=True):
        record = read_record(job_dir)
        if record is not None and record.get("trace_id") == trace_id:
            return _spool_job(job_dir)
    return None


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def load_job(ref: str, *, state_dir: str, spool_dir: str) -> JobView | None:
    """The job's record and spans, by taskId (state directory, else the spool),
    else by trace id."""
    view = _state_job(os.path.join(state_dir, "jobs", f"{job_dir_name(ref)}.json"))
    if view is not None:
        return view
    job_dir = find_job(spool_dir, ref)
    if job_dir is not None:
        view = _spool_job(job_dir)
        if view is not None:
            return view
    trace_id = _trace_id(ref)
    return _by_trace_id(trace_id, state_dir, spool_dir) if trace_id else None


def signal_name(number: object) -> str | None:
    """A signal number as its name ("SIGKILL"), or None when ``number`` is none."""
    if isinstance(number, bool) or not isinstance(number, int):
        return None
    try:
        return signal.Signals(abs(number)).name
    except ValueError:
        return f"signal {abs(number)}"


def rows(spans: Sequence[dict[str, Any]]) -> list[WaterfallRow]:
    """Spans in tree order (children after their parent, by start time). Pure."""
    by_id = {str(s.get("span_id")): s for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span.get("parent_span_id")
        key = parent if parent in by_id else None
        children.setdefault(key, []).append(span)
    for group in children.values():
        group.sort(key=lambda s: (int(s.get("start_time_unix_nano") or 0), str(s.get("name"))))
    starts = [int(s.get("start_time_unix_nano") or 0) for s in spans]
    origin = min(starts) if starts else 0
    out: list[WaterfallRow] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in children.get(parent, []):
            start = int(span.get("start_time_unix_nano") or 0)
            end = int(span.get("end_time_unix_nano") or start)
            status = span.get("status") or {}
            attrs = span.get("attributes") or {}
            out.append(
                WaterfallRow(
                    name=str(span.get("name")),
                    depth=depth,
                    start_ms=(start - origin) / 1e6,
                    duration_ms=max(0, end - start) / 1e6,
                    status=str(status.get("code") or "UNSET"),
                    span_id=str(span.get("span_id")),
                    error_type=attrs.get("error.type"),
                    signal=signal_name(attrs.get("vmsnap.script.signal")),
                )
            )
            walk(str(span.get("span_id")), depth + 1)

    walk(None, 0)
    return out


def _attribute_text(value: object) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def waterfall(view: JobView, *, width: int = 100, attributes: bool = False) -> str:
    """The text waterfall: name by depth, start offset, duration, status, a bar. Pure.

    Under a row: its error.type, the signal that killed a script attempt and,
    with ``attributes``, every attribute of the span (key=value, sorted)."""
    record = view.record
    lines = [
        f"task {record.get('task_id') or '-'}  trace {record.get('trace_id') or '-'}",
        f"outcome {record.get('outcome') or 'running'}  consistency "
        f"{record.get('consistency') or '-'}  error {record.get('error') or '-'}"
        + ("  (interrupted)" if record.get("interrupted") else ""),
    ]
    freeze = record.get("freeze")
    if isinstance(freeze, dict):
        lines.append(
            f"frozen window {float(freeze.get('window_seconds') or 0) * 1000:.1f} ms, "
            f"thawed by {freeze.get('thawed_by')}"
        )
    table = rows(view.spans)
    if not table:
        lines.append("no spans recorded")
        return "\n".join(lines)
    by_id = {str(span.get("span_id")): span for span in view.spans}
    total = max((r.start_ms + r.duration_ms for r in table), default=0.0) or 1.0
    name_width = max(len("  " * r.depth + r.name) for r in table)
    fixed = name_width + 2 + 10 + 2 + 10 + 2 + 7 + 2
    bar_width = max(_MIN_BAR, width - fixed)
    lines.append("")
    lines.append(
        f"{'span'.ljust(name_width)}  {'start ms':>10}  {'dur ms':>10}  {'status':<7}  timeline"
    )
    for r in table:
        begin = int(r.start_ms / total * bar_width)
        length = max(1, round(r.duration_ms / total * bar_width))
        begin = min(begin, bar_width - 1)
        length = min(length, bar_width - begin)
        bar = " " * begin + ("#" if r.status != "ERROR" else "!") * length
        status = r.status if not r.error_type else "ERROR"
        label = ("  " * r.depth + r.name).ljust(name_width)
        lines.append(
            f"{label}  {r.start_ms:>10.1f}  {r.duration_ms:>10.1f}  {status:<7}  {bar.rstrip()}"
        )
        pad = f"{'':{name_width}}  {'':>10}  {'':>10}  {'':<7}  "
        if r.error_type:
            lines.append(f"{pad}error.type={r.error_type}")
        if r.signal:
            lines.append(f"{pad}killed by {r.signal}")
        if attributes:
            indent = "  " * (r.depth + 1)
            attrs = by_id.get(r.span_id, {}).get("attributes") or {}
            for key in sorted(attrs):
                line = f"{indent}{key}={_attribute_text(attrs[key])}"
                lines.append(line if len(line) <= width else line[: width - 3] + "...")
    return "\n".join(lines)
