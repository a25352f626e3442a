"""``snapshot-runtime trace TASKID``: a job's spans as a terminal waterfall.

``load_job`` finds the job (``<state-dir>/jobs/<taskId>.json``, written after
every job, else the spool's job directory) and ``waterfall`` renders it.
Pure except ``load_job``: no tracing backend, no network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from snapshot_runtime.telemetry.spool import find_job, read_lines, read_record
from snapshot_runtime.telemetry.spool_schema import SPANS_FILE, job_dir_name

__all__ = ["JobView", "WaterfallRow", "load_job", "rows", "waterfall"]

_MIN_BAR = 10


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


def load_job(task_id: str, *, state_dir: str, spool_dir: str) -> JobView | None:
    """The job's record and spans, from the state directory or else the spool."""
    path = os.path.join(state_dir, "jobs", f"{job_dir_name(task_id)}.json")
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read())
        if isinstance(doc, dict) and isinstance(doc.get("record"), dict):
            spans = [s for s in doc.get("spans") or [] if isinstance(s, dict)]
            return JobView(doc["record"], spans, path)
    except (OSError, ValueError):
        pass
    job_dir = find_job(spool_dir, task_id)
    if job_dir is None:
        return None
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
                )
            )
            walk(str(span.get("span_id")), depth + 1)

    walk(None, 0)
    return out


def waterfall(view: JobView, *, width: int = 100) -> str:
    """The text waterfall: name by depth, start offset, duration, status, a bar. Pure."""
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
        if r.error_type:
            lines.append(
                f"{'':{name_width}}  {'':>10}  {'':>10}  {'':<7}  error.type={r.error_type}"
            )
    return "\n".join(lines)
