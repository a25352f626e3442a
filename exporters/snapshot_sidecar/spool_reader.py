"""Reading the runtime's spool (docs/spool.md, schema version 1). Read only.

The names, the schema and the parsing rules come from
``snapshot_runtime.telemetry.spool_schema``, the one home of the contract.
Every file here is untrusted input: each read is bounded in size, and JSON
in nesting (``loads_bounded``), so one hostile file fails only its own read.

* ``SpoolReader.job_names()`` lists ``<spool>/jobs/*`` directories.
* ``read_record`` parses ``record.json`` into a ``JobRecord``; unknown fields
  are accepted, an unknown ``schema_version``, broken JSON, a record over
  ``MAX_RECORD_BYTES`` or nested too deep raises ``RecordError`` (the caller
  counts it and retries later: the runtime rewrites the record atomically,
  so a broken one stays broken until the next rewrite).
* ``read_lines`` reads whole lines of ``log.jsonl``/``spans.jsonl`` from a byte
  offset: a final line without ``\\n`` (torn by a SIGKILL, or still being
  written) is never returned.
* ``watchdog_reports`` lists the watchdog's thaw reports, and the names of
  those that cannot be read (``InvalidReport``: counted by the caller).

Blocking: plain file reads of a tmpfs; nothing here waits. Thread-safe (no
shared mutable state).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapshot_runtime.telemetry.spool_schema import (
    JOBS_DIR,
    MAX_LINE_BYTES,
    MAX_RECORD_BYTES,
    MAX_SEALED_BYTES,
    MAX_WATCHDOG_REPORT_BYTES,
    RECORD_FILE,
    SEALED_FILE,
    WATCHDOG_DIR,
    WATCHDOG_REPORT_SUFFIX,
    SpoolFormatError,
    check_record,
    loads_bounded,
)

__all__ = [
    "InvalidReport",
    "JobRecord",
    "LineChunk",
    "RecordError",
    "SpoolReader",
    "WatchdogReport",
]


class RecordError(ValueError):
    """A record.json that cannot be ingested; ``reason`` is json | schema | size | depth | io."""

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
    def parse(cls, raw: object) -> JobRecord:
        try:
            doc = check_record(raw)
        except SpoolFormatError as exc:
            raise RecordError(exc.reason, str(exc)) from None
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
    def workload(self) -> dict[str, Any] | None:
        workload = self.raw.get("workload")
        return workload if isinstance(workload, dict) else None

    @property
    def disks(self) -> list[dict[str, Any]]:
        return [d for d in _list(self.raw.get("disks")) if isinstance(d, dict)]

    @property
    def warnings(self) -> list[str]:
        return [n for n in (error_name(w) for w in _list(self.raw.get("warnings"))) if n]

    @property
    def snapshot(self) -> dict[str, Any]:
        """``snapshot``: path, fallback, seconds (docs/spool.md); {} in older records."""
        return _dict(self.raw.get("snapshot"))

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


@dataclass(frozen=True)
class InvalidReport:
    """A watchdog directory file that is not a report (``reason``: as ``RecordError``'s)."""

    name: str
    reason: str
    message: str


class SpoolReader:
    """Read-only view of one spool directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.jobs_dir = self.root / JOBS_DIR
        self.watchdog_dir = self.root / WATCHDOG_DIR

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
            data = _read_bounded(path, MAX_RECORD_BYTES)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RecordError("io", f"{path}: {exc.strerror}") from exc
        try:
            doc = loads_bounded(data, max_bytes=MAX_RECORD_BYTES)
        except SpoolFormatError as exc:
            raise RecordError(exc.reason, f"{path}: {exc}") from None
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
        """The sealed credentials text; raises ValueError when it cannot be one."""
        try:
            data = _read_bounded(self.job_path(name) / SEALED_FILE, MAX_SEALED_BYTES)
        except FileNotFoundError:
            return None
        if len(data) > MAX_SEALED_BYTES:
            raise ValueError(f"credentials.sealed is over {MAX_SEALED_BYTES} bytes")
        return data.decode("utf-8")

    def watchdog_reports(self) -> tuple[list[WatchdogReport], list[InvalidReport]]:
        """Complete reports (``*.json``; the watchdog writes them tmp + rename), and the
        files among them that are not reports."""
        try:
            names = sorted(os.listdir(self.watchdog_dir))
        except FileNotFoundError:
            return [], []
        reports: list[WatchdogReport] = []
        invalid: list[InvalidReport] = []
        for name in names:
            if name.startswith(".") or not name.endswith(WATCHDOG_REPORT_SUFFIX):
                continue
            path = self.watchdog_dir / name
            try:
                doc = loads_bounded(
                    _read_bounded(path, MAX_WATCHDOG_REPORT_BYTES),
                    max_bytes=MAX_WATCHDOG_REPORT_BYTES,
                )
            except FileNotFoundError:
                continue  # removed since the listing
            except OSError as exc:
                invalid.append(InvalidReport(name, "io", f"{path}: {exc.strerror}"))
                continue
            except SpoolFormatError as exc:
                invalid.append(InvalidReport(name, exc.reason, f"{path}: {exc}"))
                continue
            if isinstance(doc, dict):
                reports.append(WatchdogReport(name, doc))
            else:
                invalid.append(InvalidReport(name, "schema", f"{path}: not a JSON object"))
        return reports, invalid


def _read_bounded(path: Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes: one more than allowed says "too large", unread."""
    with open(path, "rb") as fh:
        return fh.read(limit + 1)
