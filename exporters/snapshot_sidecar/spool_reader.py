"""Reading the runtime's spool (docs/spool.md, schema version 1). Read only.

* ``SpoolReader.job_names()`` lists ``<spool>/jobs/*`` directories.
* ``read_record`` parses ``record.json`` into a ``JobRecord``; unknown fields
  are accepted, an unknown ``schema_version`` or broken JSON raises
  ``RecordError`` (the caller counts it and retries later: the runtime
  rewrites the record atomically, so a broken one stays broken).
* ``read_lines`` reads whole lines of ``log.jsonl``/``spans.jsonl`` from a byte
  offset: a final line without ``\\n`` (torn by a SIGKILL, or still being
  written) is never returned.
* ``watchdog_reports`` lists the watchdog's thaw reports.

Blocking: plain file reads of a tmpfs; nothing here waits. Thread-safe (no
shared mutable state).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LOG_FILE",
    "RECORD_FILE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SEALED_FILE",
    "SPANS_FILE",
    "JobRecord",
    "LineChunk",
    "RecordError",
    "SpoolReader",
    "WatchdogReport",
]

SCHEMA = "snapshot-runtime/job-record"
SCHEMA_VERSION = 1
RECORD_FILE = "record.json"
LOG_FILE = "log.jsonl"
SPANS_FILE = "spans.jsonl"
SEALED_FILE = "credentials.sealed"
# Hard bound on one line: a line longer than this is returned cut, so a runaway
# writer cannot make the reader buffer without limit.
MAX_LINE_BYTES = 16 * 1024 * 1024


class RecordError(ValueError):
    """A record.json that cannot be ingested; ``reason`` is json | schema | io."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def error_name(value: object) -> str | None:
    """An error code name from a record field: "Name", or {"code"|"name": "Name"}."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        for key in ("code", "name", "error"):
            if isinstance(value.get(key), str) and value[key]:
                return str(value[key])
    return None


@dataclass(frozen=True)
class JobRecord:
    """The fields of record.json the sidecar uses; ``raw`` keeps the rest."""

    task_id: str
    trace_id: str | None
    complete: bool
    started_at: float | None
    updated_at: float | None
    ended_at: float | None
    outcome: str | None
    consistency: str | None
    error: str | None
    pid: int | None
    raw: dict[str, Any]

    @classmethod
    def parse(cls, doc: object) -> JobRecord:
        if not isinstance(doc, dict):
            raise RecordError("schema", "record is not a JSON object")
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RecordError("schema", f"unknown schema_version {version!r}")
        if doc.get("schema", SCHEMA) != SCHEMA:
            raise RecordError("schema", f"unknown schema {doc.get('schema')!r}")
        return cls(
            task_id=str(doc.get("task_id") or ""),
            trace_id=_str(doc.get("trace_id")),
            complete=doc.get("complete") is True,
            started_at=_float(doc.get("started_at")),
            updated_at=_float(doc.get("updated_at")),
            ended_at=_float(doc.get("ended_at")),
            outcome=_str(doc.get("outcome")),
            consistency=_str(doc.get("consistency")),
            error=error_name(doc.get("error")),
            pid=_int(doc.get("pid")),
            raw=doc,
        )

    @property
    def run_id(self) -> str:
        """Identifies one run of a job directory (a rerun rewrites started_at)."""
        return f"{self.task_id}@{self.started_at!r}"

    @property
    def phases(self) -> list[dict[str, Any]]:
        return [p for p in _list(self.raw.get("phases")) if isinstance(p, dict)]

    @property
    def freeze(self) -> dict[str, Any] | None:
        freeze = self.raw.get("freeze")
        return freeze if isinstance(freeze, dict) else None

    def script(self, which: str) -> dict[str, Any] | None:
        script = _dict(self.raw.get("scripts")).get(which)
        return script if isinstance(script, dict) else None

    @property
    def disks(self) -> list[dict[str, Any]]:
        return [d for d in _list(self.raw.get("disks")) if isinstance(d, dict)]

    @property
    def warnings(self) -> list[str]:
        return [n for n in (error_name(w) for w in _list(self.raw.get("warnings"))) if n]

    @property
    def dropped(self) -> dict[str, Any]:
        return _dict(self.raw.get("dropped"))

    @property
    def logs(self) -> dict[str, Any]:
        return _dict(self.raw.get("logs"))


@dataclass(frozen=True)
class LineChunk:
    """Whole lines read from ``offset``; ``end`` is the offset after the last one."""

    data: bytes
    offset: int
    lines: int

    @property
    def end(self) -> int:
        return self.offset + len(self.data)

    def __bool__(self) -> bool:
        return bool(self.data)


@dataclass(frozen=True)
class WatchdogReport:
    name: str
    doc: dict[str, Any]


class SpoolReader:
    """Read-only view of one spool directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.jobs_dir = self.root / "jobs"
        self.watchdog_dir = self.root / "watchdog"

    def job_path(self, name: str) -> Path:
        return self.jobs_dir / name

    def job_names(self) -> list[str]:
        try:
            entries = list(os.scandir(self.jobs_dir))
        except FileNotFoundError:
            return []
        return sorted(
            e.name
            for e in entries
            if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
        )

    def read_record(self, name: str) -> JobRecord | None:
        """The job's record; None while it has none yet. Raises RecordError."""
        path = self.job_path(name) / RECORD_FILE
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RecordError("io", f"{path}: {exc.strerror}") from exc
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise RecordError("json", f"{path}: not JSON: {exc}") from None
        return JobRecord.parse(doc)

    def record_stat(self, name: str) -> tuple[int, int, int] | None:
        """(mtime_ns, size, inode) of record.json: changes with every rewrite."""
        try:
            st = (self.job_path(name) / RECORD_FILE).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def file_size(self, name: str, filename: str) -> int:
        try:
            return (self.job_path(name) / filename).stat().st_size
        except OSError:
            return 0

    def read_lines(self, name: str, filename: str, offset: int, max_bytes: int) -> LineChunk:
        """Whole lines from ``offset``, at most ``max_bytes`` unless one line is longer."""
        path = self.job_path(name) / filename
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(max_bytes)
                cut = data.rfind(b"\n")
                while cut < 0 and len(data) < MAX_LINE_BYTES:
                    more = fh.read(min(max_bytes, MAX_LINE_BYTES - len(data)))
                    if not more:
                        break
                    data += more
                    cut = data.rfind(b"\n")
        except FileNotFoundError:
            return LineChunk(b"", offset, 0)
        if cut < 0:
            if len(data) >= MAX_LINE_BYTES:  # a runaway line: hand it over cut
                return LineChunk(data, offset, 1)
            return LineChunk(b"", offset, 0)  # torn or unfinished last line
        data = data[: cut + 1]
        return LineChunk(data, offset, data.count(b"\n"))

    def read_raw(self, name: str, filename: str, offset: int, length: int) -> bytes:
        """Exactly the bytes [offset, offset + length) as far as the file has them."""
        try:
            with open(self.job_path(name) / filename, "rb") as fh:
                fh.seek(offset)
                return fh.read(length)
        except FileNotFoundError:
            return b""

    def read_sealed(self, name: str) -> str | None:
        try:
            return (self.job_path(name) / SEALED_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def watchdog_reports(self) -> list[WatchdogReport]:
        """Complete reports (``*.json``; the watchdog writes them tmp + rename)."""
        try:
            names = sorted(os.listdir(self.watchdog_dir))
        except FileNotFoundError:
            return []
        reports = []
        for name in names:
            if name.startswith(".") or not name.endswith(".json"):
                continue
            try:
                doc = json.loads((self.watchdog_dir / name).read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict):
                reports.append(WatchdogReport(name, doc))
        return reports
