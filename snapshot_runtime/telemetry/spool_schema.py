"""The spool contract in one place (docs/spool.md, schema version 1).

The runtime's writer (``spool``), its recovery (``spool_recovery``), the
sidecar's reader (``snapshot_sidecar.spool_reader``) and the tests' generator
(``tests/support/spoolgen.py``) all take the spool's names, layout, record
schema and line rules from here, so the two sides of the hand-off cannot drift.

Pure: no I/O, no azure or opentelemetry. ``loads_bounded`` is the one way a
reader turns spool bytes into JSON: every spool file is untrusted input to the
sidecar, so a parse is bounded in size and nesting and fails only with
``SpoolFormatError`` (a ``ValueError``), never ``RecursionError`` or
``MemoryError`` from a hostile file.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "JOBS_DIR",
    "LOCK_FILE",
    "LOG_FILE",
    "LOG_SEQ_KEY",
    "MAX_JSON_DEPTH",
    "MAX_LINE_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_SEALED_BYTES",
    "MAX_WATCHDOG_REPORT_BYTES",
    "RECORD_FILE",
    "RECORD_KEYS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SEALED_FILE",
    "SIDECAR_PUB_FILE",
    "SIDECAR_SEALING_FILE",
    "SPANS_FILE",
    "WATCHDOG_DIR",
    "WATCHDOG_REPORT_PREFIX",
    "WATCHDOG_REPORT_SUFFIX",
    "SpoolFormatError",
    "check_record",
    "complete_lines",
    "job_dir_name",
    "line_seq",
    "loads_bounded",
    "parse_record",
    "watchdog_report_name",
]

SCHEMA = "snapshot-runtime/job-record"
SCHEMA_VERSION = 1

# <spool>/jobs/<job-dir>/... and <spool>/watchdog/...
JOBS_DIR = "jobs"
WATCHDOG_DIR = "watchdog"
SIDECAR_PUB_FILE = "sidecar.pub"  # the sidecar's X25519 public key (raw 32 bytes)
# The sealed-credential versions the sidecar opens ({"versions": [1, 2]}), docs/spool.md.
SIDECAR_SEALING_FILE = "sidecar.sealing"
RECORD_FILE = "record.json"
LOG_FILE = "log.jsonl"
SPANS_FILE = "spans.jsonl"
SEALED_FILE = "credentials.sealed"
LOCK_FILE = "lock"
# watchdog/thaw-watchdog-<runtime_pid>-<unix_ms>.json (the freeze family writes
# it; it sits below telemetry in the layers, so it spells the name itself and
# tests/telemetry/test_spool_schema.py checks it against watchdog_report_name).
WATCHDOG_REPORT_PREFIX = "thaw-watchdog-"
WATCHDOG_REPORT_SUFFIX = ".json"

# The top-level keys of a record the runtime writes (docs/spool.md "record.json");
# readers accept unknown ones, and "recovered" is added by a recovery rewrite.
RECORD_KEYS: tuple[str, ...] = (
    "schema",
    "schema_version",
    "task_id",
    "trace_id",
    "root_span_id",
    "complete",
    "started_at",
    "updated_at",
    "ended_at",
    "outcome",
    "consistency",
    "consistency_reason",
    "error",
    "warnings",
    "status_code",
    "phases",
    "freeze",
    "scripts",
    "workload",
    "disks",
    "snapshot",
    "dropped",
    "logs",
    "spans",
    "pid",
    "log_file",
    "spool",
    "interrupted",
    "telemetry_errors",
)
LOG_SEQ_KEY = "seq"  # 1, 2, 3... per job: the mirror's position in a log

# Bounds for reading what another process wrote. A real record is a few KB and
# nests 4 deep; a log or span line nests 3 deep.
MAX_RECORD_BYTES = 1024 * 1024
MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_SEALED_BYTES = 64 * 1024
MAX_WATCHDOG_REPORT_BYTES = 256 * 1024
MAX_JSON_DEPTH = 32

_MAX_DIR_NAME = 128


class SpoolFormatError(ValueError):
    """Spool bytes that are not what the contract says; ``reason`` is a bounded label:
    ``size`` (over the bound), ``depth`` (nested too deep), ``json`` or ``schema``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def job_dir_name(task_id: str) -> str:
    """The taskId made filename-safe ([A-Za-z0-9._-], others "_", at most 128, no leading dot)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)[:_MAX_DIR_NAME]
    return safe.lstrip(".") or "unknown"


def watchdog_report_name(runtime_pid: object, unix_ms: int) -> str:
    return f"{WATCHDOG_REPORT_PREFIX}{runtime_pid}-{unix_ms}{WATCHDOG_REPORT_SUFFIX}"


def complete_lines(data: bytes) -> list[bytes]:
    """Whole lines only: a final line without ``\\n`` (torn by a kill) is ignored."""
    if not data:
        return []
    lines = data.split(b"\n")
    return [line for line in lines[:-1] if line]


def _deeper_than(doc: object, max_depth: int) -> bool:
    # Level by level, containers only (no recursion: json.loads already refused
    # anything deeper than the interpreter's recursion limit; this bounds the rest).
    level: list[Any] = [doc] if isinstance(doc, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            return True
        below: list[Any] = []
        for node in level:
            children = node.values() if isinstance(node, dict) else node
            below.extend(c for c in children if isinstance(c, dict | list))
        level = below
    return False


def loads_bounded(
    data: bytes, *, max_bytes: int = MAX_LINE_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """``json.loads`` for untrusted spool bytes. Raises only ``SpoolFormatError``."""
    if len(data) > max_bytes:
        raise SpoolFormatError("size", f"{len(data)} bytes, over the {max_bytes} bound")
    try:
        doc = json.loads(data)
    except RecursionError:  # the C decoder's own guard: far deeper than any bound
        raise SpoolFormatError("depth", f"nested deeper than {max_depth}") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise SpoolFormatError("json", f"not JSON: {exc}"[:200]) from None
    if _deeper_than(doc, max_depth):
        raise SpoolFormatError("depth", f"nested deeper than {max_depth}")
    return doc


def check_record(doc: object) -> dict[str, Any]:
    """``doc`` as a record of the schema this code knows; raises ``SpoolFormatError``."""
    if not isinstance(doc, dict):
        raise SpoolFormatError("schema", "record is not a JSON object")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SpoolFormatError("schema", f"unknown schema_version {version!r}"[:200])
    if doc.get("schema", SCHEMA) != SCHEMA:
        raise SpoolFormatError("schema", f"unknown schema {doc.get('schema')!r}"[:200])
    return doc


def parse_record(data: bytes) -> dict[str, Any]:
    """The bytes of a record.json, checked; raises ``SpoolFormatError``."""
    return check_record(loads_bounded(data, max_bytes=MAX_RECORD_BYTES))


def line_seq(line: bytes) -> int | None:
    """The ``seq`` of one log line, or None (not a log line we can read)."""
    try:
        doc = loads_bounded(line)
    except SpoolFormatError:
        return None
    seq = doc.get(LOG_SEQ_KEY) if isinstance(doc, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None
