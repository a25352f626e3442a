"""The spool contract's one home: the writers agree with it, and its parser is bounded."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from snapshot_runtime.freeze.watchdog import _write_report
from snapshot_runtime.telemetry.record import RecordFacts, build_record
from snapshot_runtime.telemetry.spool_schema import (
    MAX_JSON_DEPTH,
    MAX_RECORD_BYTES,
    RECORD_KEYS,
    WATCHDOG_REPORT_PREFIX,
    WATCHDOG_REPORT_SUFFIX,
    SpoolFormatError,
    job_dir_name,
    line_seq,
    loads_bounded,
    parse_record,
    watchdog_report_name,
)


def test_the_runtime_writes_exactly_the_record_keys_of_the_contract() -> None:
    record = build_record(RecordFacts(task_id="t", started_at=1.0, updated_at=2.0, pid=7))
    assert tuple(record) == RECORD_KEYS
    assert parse_record(json.dumps(record).encode()) == record


def test_the_watchdog_names_its_reports_as_the_contract_says(tmp_path: Path) -> None:
    _write_report(str(tmp_path), {"runtime_pid": 4242, "reason": "eof"})
    (report,) = [p.name for p in tmp_path.iterdir()]
    match = re.fullmatch(
        re.escape(WATCHDOG_REPORT_PREFIX) + r"4242-(\d+)" + re.escape(WATCHDOG_REPORT_SUFFIX),
        report,
    )
    assert match is not None, report
    assert watchdog_report_name(4242, int(match.group(1))) == report


def test_job_dir_names_are_filename_safe() -> None:
    assert job_dir_name("a/b c") == "a_b_c"
    assert job_dir_name("..hidden") == "hidden"
    assert job_dir_name("") == "unknown"
    assert len(job_dir_name("x" * 500)) == 128


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"[" * 200_000, "depth"),  # issue 11 defect 2: RecursionError before
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "depth"),
        (b'{"a":' * 100 + b"1" + b"}" * 100, "depth"),
        (b"{" + b" " * MAX_RECORD_BYTES + b"}", "size"),
        (b"\xff\xfe", "json"),
        (b'{"seq": 1', "json"),
        (b"[1, 2]", "schema"),
        (b'{"schema_version": 2}', "schema"),
        (b'{"schema": "other", "schema_version": 1}', "schema"),
    ],
)
def test_a_hostile_record_fails_with_a_bounded_reason(data: bytes, reason: str) -> None:
    with pytest.raises(SpoolFormatError) as caught:
        parse_record(data)
    assert caught.value.reason == reason


def test_the_bound_accepts_what_the_runtime_writes() -> None:
    deep_enough = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert loads_bounded(deep_enough) is not None
    assert line_seq(b'{"seq": 7, "message": "[[[["}') == 7
    assert line_seq(b"[" * 200_000) is None
    assert line_seq(b'{"seq": true}') is None
