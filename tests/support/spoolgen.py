"""Generate spool directories exactly as docs/spool.md describes (schema version 1).

Names, layout and schema come from ``snapshot_runtime.telemetry.spool_schema``
(the contract's one home), as the runtime's writer and the sidecar's reader do.

Tests of the sidecar use this instead of running real snapshot jobs when they
need many jobs, exact values, or states a real job only reaches by accident
(torn last line, dead runtime pid, a freeze left behind).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapshot_runtime.telemetry.sealing import seal
from snapshot_runtime.telemetry.spool_schema import (
    JOBS_DIR,
    LOG_FILE,
    LOG_SEQ_KEY,
    RECORD_FILE,
    RECORD_KEYS,
    SCHEMA,
    SCHEMA_VERSION,
    SEALED_FILE,
    SIDECAR_PUB_FILE,
    SPANS_FILE,
    WATCHDOG_DIR,
    job_dir_name,
    watchdog_report_name,
)

__all__ = ["GenJob", "SpoolGen", "dead_pid"]


def dead_pid() -> int:
    """A pid that belonged to a process which has exited (and was reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@dataclass
class GenJob:
    name: str
    path: Path
    task_id: str
    trace_id: str
    record: dict[str, Any]
    seq: int = 0
    log_bytes: bytearray = field(default_factory=bytearray)
    spans: list[dict[str, Any]] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    @property
    def spans_path(self) -> Path:
        return self.path / SPANS_FILE


class SpoolGen:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        (self.root / JOBS_DIR).mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- records ---------------------------------------------------------------

    def job(
        self,
        task_id: str | None = None,
        *,
        complete: bool = True,
        outcome: str = "success",
        consistency: str = "application",
        error: str | None = None,
        warnings: Iterable[str] = (),
        freeze_seconds: float | None = 0.05,
        thawed_by: str = "runtime",
        timed_out: bool = False,
        pre: dict[str, Any] | None = None,
        post: dict[str, Any] | None = None,
        disks: Iterable[dict[str, Any]] | None = None,
        phases: Iterable[tuple[str, float]] | None = None,
        dropped: dict[str, int] | None = None,
        started_at: float | None = None,
        duration: float = 2.0,
        pid: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> GenJob:
        task_id = task_id or str(uuid.uuid4())
        started = started_at if started_at is not None else time.time() - duration
        trace_id = uuid.uuid4().hex
        default_script = {
            "attempts": 1,
            "retries": 0,
            "timed_out": False,
            "exit_codes": [0],
            "seconds": 0.02,
            "error": None,
        }
        if phases is None:
            phases = [
                ("settings", 0.001),
                ("plugin_config", 0.002),
                ("status_start", 0.01),
                ("pre_script", 0.02),
                ("prepare", 0.05),
                ("freeze", 0.01),
                ("snapshot", 0.03),
                ("thaw", 0.005),
                ("post_script", 0.02),
                ("status_end", 0.01),
            ]
        record: dict[str, Any] = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "task_id": task_id,
            "trace_id": trace_id,
            "root_span_id": uuid.uuid4().hex[:16],
            "complete": complete,
            "started_at": started,
            "updated_at": started + duration,
            "ended_at": started + duration if complete else None,
            "outcome": outcome if complete else None,
            "consistency": consistency if complete else None,
            "consistency_reason": None,
            "error": error,
            "warnings": list(warnings),
            "status_code": None,
            "phases": [
                {"name": n, "started_at": started, "seconds": s, "status": "ok", "error": None}
                for n, s in phases
            ],
            "freeze": (
                None
                if freeze_seconds is None
                else {
                    "window_seconds": freeze_seconds,
                    "mounts": 1,
                    "timed_out": timed_out,
                    "thawed_by": thawed_by,
                }
            ),
            "scripts": {
                "pre": default_script if pre is None else pre,
                "post": default_script if post is None else post,
            },
            "disks": (
                [{"index": 0, "ok": True, "seconds": 0.01, "attempts": 1, "error_kind": None}]
                if disks is None
                else list(disks)
            ),
            "dropped": dropped or {"log_lines": 0, "spans": 0},
            "logs": {"lines": 0, "bytes": 0},
            "spans": {"count": 0},
        }
        if pid is not None:
            record["pid"] = pid
        assert set(record) <= set(RECORD_KEYS), set(record) - set(RECORD_KEYS)
        record.update(extra or {})
        name = job_dir_name(task_id)
        path = self.root / JOBS_DIR / name
        path.mkdir(mode=0o700, exist_ok=True)
        job = GenJob(name, path, task_id, trace_id, record)
        self.write_record(job)
        return job

    def write_record(self, job: GenJob, **changes: Any) -> None:
        job.record.update(changes)
        job.record["logs"] = {"lines": job.seq, "bytes": len(job.log_bytes)}
        job.record["spans"] = {"count": len(job.spans)}
        tmp = job.path / f".{RECORD_FILE}.tmp"
        tmp.write_text(json.dumps(job.record))
        os.replace(tmp, job.path / RECORD_FILE)

    def complete(self, job: GenJob, **changes: Any) -> None:
        now = time.time()
        fields = {"complete": True, "ended_at": now, "updated_at": now}
        fields.setdefault("outcome", job.record.get("outcome") or "success")
        fields.setdefault("consistency", job.record.get("consistency") or "application")
        fields.update(changes)
        self.write_record(job, **fields)

    # -- log and spans -------------------------------------------------------------

    def log_lines(self, job: GenJob, n: int, *, size: int = 160, seed: int = 0) -> bytes:
        """Append ``n`` log lines of about ``size`` bytes (one write per line)."""
        rnd = random.Random(seed + job.seq)
        out = bytearray()
        with open(job.log_path, "ab") as fh:
            for _ in range(n):
                job.seq += 1
                base = {
                    LOG_SEQ_KEY: job.seq,
                    "ts": time.time(),
                    "level": "INFO",
                    "task_id": job.task_id,
                    "trace_id": job.trace_id,
                    "message": "",
                }
                pad = max(0, size - len(json.dumps(base)))
                base["message"] = "".join(
                    rnd.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(pad)
                )
                line = json.dumps(base).encode() + b"\n"
                fh.write(line)
                fh.flush()
                out += line
        job.log_bytes += out
        return bytes(out)

    def torn_line(self, job: GenJob, text: bytes = b'{"seq": 999999, "message": "tor') -> None:
        with open(job.log_path, "ab") as fh:
            fh.write(text)

    def span_lines(self, job: GenJob, n: int, *, error: bool = False) -> list[dict[str, Any]]:
        now = time.time_ns()
        spans = []
        with open(job.spans_path, "ab") as fh:
            for i in range(n):
                span = {
                    "trace_id": job.trace_id,
                    "span_id": uuid.uuid4().hex[:16],
                    "parent_span_id": job.record["root_span_id"] if i else None,
                    "name": f"vmsnap.phase{i}" if i else "vmsnap.job",
                    "kind": "INTERNAL",
                    "start_time_unix_nano": now - 1_000_000,
                    "end_time_unix_nano": now,
                    "attributes": {"vmsnap.task_id": job.task_id, "vmsnap.index": i},
                    "status": {
                        "code": "ERROR" if error else "UNSET",
                        "description": "boom" if error else None,
                    },
                    "events": [
                        {"name": "note", "timestamp_unix_nano": now, "attributes": {"k": "v"}}
                    ],
                    "resource": {"service.name": "snapshot-runtime", "host.name": "vm1"},
                    "scope": {"name": "snapshot_runtime", "version": "0.1.0"},
                }
                if i == 0:
                    span["span_id"] = job.record["root_span_id"]
                fh.write(json.dumps(span).encode() + b"\n")
                spans.append(span)
        job.spans.extend(spans)
        return spans

    # -- credentials and watchdog ----------------------------------------------------

    def seal_logs_url(self, job: GenJob, url: str, *, public_key: bytes | None = None) -> None:
        key = public_key if public_key is not None else (self.root / SIDECAR_PUB_FILE).read_bytes()
        sealed = seal(key, json.dumps({"logsBlobUri": url}).encode())
        (job.path / SEALED_FILE).write_text(sealed)

    def watchdog_report(
        self, *, reason: str = "eof", mounts: Iterable[str] = ("/mnt/x",), pid: int = 4242
    ) -> Path:
        directory = self.root / WATCHDOG_DIR
        directory.mkdir(mode=0o700, exist_ok=True)
        report = {
            "reason": reason,
            "mounts": [{"mountpoint": m, "result": "thawed", "error": None} for m in mounts],
            "runtime_pid": pid,
            "watchdog_pid": pid + 1,
            "deadline_monotonic": 1.0,
            "late_seconds": 0.0,
            "wall_time": "2026-01-01T00:00:00Z",
        }
        unix_ms = time.time_ns() // 1_000_000
        while (directory / watchdog_report_name(pid, unix_ms)).exists():
            unix_ms += 1  # two reports of one pid in one millisecond: keep both
        path = directory / watchdog_report_name(pid, unix_ms)
        path.write_text(json.dumps(report))
        return path
