"""``snapshot-runtime trace``'s lookup and rendering (telemetry/trace_view.py), pure.

Jobs are written as the runtime leaves them: ``<state-dir>/jobs/<taskId>.json``
(record + spans) and the spool's job directory (record.json + spans.jsonl).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from snapshot_runtime.telemetry.spool_schema import RECORD_FILE as RECORD
from snapshot_runtime.telemetry.spool_schema import SCHEMA_VERSION
from snapshot_runtime.telemetry.spool_schema import SPANS_FILE as SPANS
from snapshot_runtime.telemetry.trace_view import JobView, load_job, rows, signal_name, waterfall

TRACE_A = "0af7651916cd43dd8448eb211c80319c"
TRACE_B = "4bf92f3577b34da6a3ce929d0e0e4736"


def span(name: str, sid: str, parent: str | None, start: int, end: int, **attrs: Any) -> dict:
    return {
        "name": name,
        "span_id": sid,
        "parent_span_id": parent,
        "start_time_unix_nano": start,
        "end_time_unix_nano": end,
        "status": {"code": "UNSET"},
        "attributes": attrs,
    }


def state_job(state: Path, task_id: str, trace_id: str) -> None:
    jobs = state / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    doc = {
        "record": {"task_id": task_id, "trace_id": trace_id, "outcome": "success"},
        "spans": [span("vmsnap.job", "a", None, 0, 10)],
    }
    (jobs / f"{task_id}.json").write_text(json.dumps(doc))


def spool_job(spool: Path, task_id: str, trace_id: str) -> None:
    job = spool / "jobs" / task_id
    job.mkdir(parents=True)
    record = {
        "schema_version": SCHEMA_VERSION,
        "task_id": task_id,
        "trace_id": trace_id,
        "started_at": 1.0,
    }
    (job / RECORD).write_text(json.dumps(record))
    (job / SPANS).write_text(json.dumps(span("vmsnap.job", "s", None, 0, 5)) + "\n")


def test_a_job_is_found_by_task_id_or_by_trace_id(tmp_path: Path) -> None:
    state, spool = tmp_path / "state", tmp_path / "spool"
    state_job(state, "task-a_1", TRACE_A)
    spool_job(spool, "task-b_1", TRACE_B)  # a job still (or only) in the spool

    def found(ref: str) -> str | None:
        view = load_job(ref, state_dir=str(state), spool_dir=str(spool))
        return None if view is None else str(view.record["task_id"])

    assert found("task-a_1") == "task-a_1"
    assert found("task-b_1") == "task-b_1"
    assert found(TRACE_A) == "task-a_1"
    assert found(TRACE_B) == "task-b_1"
    # As a UUID or in capitals, the way some backends print a trace id.
    dashed = f"{TRACE_A[:8]}-{TRACE_A[8:12]}-{TRACE_A[12:16]}-{TRACE_A[16:20]}-{TRACE_A[20:]}"
    assert found(dashed.upper()) == "task-a_1"
    # Unknown ids, and strings that are not trace ids, find nothing.
    assert found("f" * 32) is None
    assert found("task-c_1") is None
    assert found(TRACE_A[:31]) is None


def test_trace_id_lookup_tolerates_unreadable_entries(tmp_path: Path) -> None:
    state, spool = tmp_path / "state", tmp_path / "spool"
    state_job(state, "task-a_1", TRACE_A)
    (state / "jobs" / "broken.json").write_text("{not json")
    (spool / "jobs" / "empty").mkdir(parents=True)
    view = load_job(TRACE_A, state_dir=str(state), spool_dir=str(spool))
    assert view is not None and view.record["task_id"] == "task-a_1"
    missing = load_job(TRACE_A, state_dir=str(tmp_path / "no"), spool_dir=str(tmp_path / "no"))
    assert missing is None


def test_signal_names() -> None:
    assert signal_name(9) == "SIGKILL"
    assert signal_name(-15) == "SIGTERM"  # the script phase's exit_codes use -signal
    assert signal_name(int(signal.SIGHUP)) == "SIGHUP"
    assert signal_name(None) is None and signal_name(True) is None and signal_name("9") is None
    assert signal_name(200) == "signal 200"


def test_waterfall_names_the_signal_and_shows_attributes_on_request() -> None:
    spans = [
        span("vmsnap.job", "a", None, 0, 100_000_000),
        span(
            "vmsnap.pre_script.attempt",
            "b",
            "a",
            1_000_000,
            5_000_000,
            **{"vmsnap.script.signal": 9, "vmsnap.script.attempt": 1},
        ),
        span(
            "vmsnap.snapshot.disk",
            "c",
            "a",
            10_000_000,
            60_000_000,
            **{
                "vmsnap.disk.index": 1,
                "vmsnap.disk.blob_url": "https://acct.blob.core.windows.net/vhds/" + "d" * 300,
                "vmsnap.mounts": ["/", "/data"],
                "vmsnap.disk.ok": True,
            },
        ),
    ]
    assert [r.signal for r in rows(spans)] == [None, "SIGKILL", None]
    record = {"task_id": "t_1", "trace_id": TRACE_A, "outcome": "success"}
    view = JobView(record, spans, "x")
    plain = waterfall(view, width=100)
    assert "killed by SIGKILL" in plain
    assert "vmsnap.disk.index" not in plain
    detailed = waterfall(view, width=100, attributes=True).splitlines()
    assert "    vmsnap.disk.index=1" in detailed  # indented under its span (depth 1)
    assert "    vmsnap.mounts=[/, /data]" in detailed
    assert "    vmsnap.disk.ok=true" in detailed
    assert "    vmsnap.script.signal=9" in detailed
    long_line = next(line for line in detailed if "blob_url" in line)
    assert len(long_line) == 100 and long_line.endswith("...")
    assert all(len(line) <= 100 for line in detailed)
    # Attributes follow their own span: the disk's come after the disk's row.
    disk_row = next(i for i, line in enumerate(detailed) if "vmsnap.snapshot.disk" in line)
    assert detailed.index("    vmsnap.disk.index=1") > disk_row
