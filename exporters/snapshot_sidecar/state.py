"""The sidecar's persistent state: one JSON file, written atomically.

``<state-dir>/state.json`` holds

* the persisted metric values (every counter and histogram, the "last ..."
  timestamp gauges), and
* per job directory: whether its complete record was counted (and which run),
  how far its log was mirrored (log byte offset, last ``seq``, blob offset and
  type) and how far its spans were exported,
* the watchdog reports already counted.

Exactly-once ingestion: a record is counted by changing the metric values *and*
setting its ``counted`` mark in memory, then committing both in one atomic write
(tmp file, fsync, rename, fsync of the directory). A crash before the rename
loses both, so the record is counted again on restart; after it, neither.
The same holds for mirror and export progress.

``Ledger`` is the only way to change state: ``with ledger.transaction() as st:``
mutates under one lock and commits on exit; scrapes read ``ledger.published``,
the values of the last commit, so a scrape never shows a count a crash could
still take back.

Thread-safe: one re-entrant lock. Blocking: a commit is one small file write
plus two fsyncs. Raises ``OSError`` from a commit that could not be written
(the caller counts it; the in-memory state stays ahead and the next commit
retries).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from snapshot_runtime.core.atomic_file import write_atomic
from snapshot_sidecar.metrics import MetricValues, migrate_legacy_metrics

__all__ = ["STATE_FILE", "JobProgress", "Ledger", "LogProgress", "SidecarState", "SpanProgress"]

STATE_FILE = "state.json"
STATE_SCHEMA = "snapshot-sidecar/state"
# 2: the series-budget catalogue (issue 16). A version-1 file (an older sidecar)
# is migrated on load: its counts carried over to the new label sets.
STATE_VERSION = 2
LEGACY_STATE_VERSIONS = frozenset({1})

# Terminal statuses: nothing more will be done for that part of the job.
TERMINAL = frozenset({"done", "failed", "none"})


@dataclass
class LogProgress:
    """How far a job's log.jsonl was mirrored to its logsBlobUri."""

    status: str = "pending"  # pending | active | done | failed | none
    offset: int = 0  # bytes of log.jsonl mirrored
    lines: int = 0
    seq: int = 0  # last mirrored seq
    blob_type: str | None = None  # AppendBlob | BlockBlob | PageBlob once known
    blob_offset: int = 0  # logical bytes in the blob after our last write
    error: str | None = None


@dataclass
class SpanProgress:
    status: str = "pending"  # pending | done | failed | none
    offset: int = 0  # bytes of spans.jsonl handled (exported or dropped)
    error: str | None = None


@dataclass
class JobProgress:
    """The sidecar's progress on one job directory (not the runtime's job.state.JobState)."""

    run: str | None = None  # run id of the last counted complete record
    complete: bool = False
    abandoned: bool = False  # runtime died before completing; counted as abandoned
    backstop: bool = False  # the backstop already acted on this job
    # record.json unreadable and the runtime gone: no outcome is counted, but
    # the job is finished, so its readable log and spans are still forwarded.
    quarantined: bool = False
    first_seen: float = 0.0
    completed_at: float | None = None
    log: LogProgress = field(default_factory=LogProgress)
    spans: SpanProgress = field(default_factory=SpanProgress)

    @property
    def finished(self) -> bool:
        """Nothing more will be written to the job directory (as far as we can tell)."""
        return self.complete or self.abandoned or self.quarantined

    @property
    def handled(self) -> bool:
        return self.finished and self.log.status in TERMINAL and self.spans.status in TERMINAL

    def to_json(self) -> dict[str, Any]:
        # Every field is a scalar, so shallow copies of the instance dicts are
        # the whole document. dataclasses.asdict deep-copies field by field:
        # 19 us per job against 0.8 here, and a commit writes every job the
        # sidecar still tracks (28 ms of GIL per commit at 1,000 jobs).
        doc = dict(vars(self))
        doc["log"] = dict(vars(self.log))
        doc["spans"] = dict(vars(self.spans))
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> JobProgress:
        log = LogProgress(**_known(LogProgress, doc.get("log")))
        spans = SpanProgress(**_known(SpanProgress, doc.get("spans")))
        plain = _known(cls, doc)
        plain.pop("log", None)
        plain.pop("spans", None)
        return cls(**plain, log=log, spans=spans)


def _known(cls: Any, doc: object) -> dict[str, Any]:
    if not isinstance(doc, dict):
        return {}
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in doc.items() if k in names}


@dataclass
class SidecarState:
    metrics: MetricValues = field(default_factory=MetricValues)
    jobs: dict[str, JobProgress] = field(default_factory=dict)
    watchdog_seen: set[str] = field(default_factory=set)

    def job(self, name: str, *, now: float) -> JobProgress:
        job = self.jobs.get(name)
        if job is None:
            job = self.jobs[name] = JobProgress(first_seen=now)
        return job

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": STATE_SCHEMA,
            "schema_version": STATE_VERSION,
            "metrics": self.metrics.to_json(),
            "jobs": {name: job.to_json() for name, job in sorted(self.jobs.items())},
            "watchdog_seen": sorted(self.watchdog_seen),
        }

    @classmethod
    def from_json(cls, doc: object) -> SidecarState:
        if not isinstance(doc, dict) or doc.get("schema") != STATE_SCHEMA:
            raise ValueError("not a snapshot-sidecar state file")
        version = doc.get("schema_version")
        if version != STATE_VERSION and version not in LEGACY_STATE_VERSIONS:
            raise ValueError(f"unknown state schema_version {version!r}")
        persisted = doc.get("metrics") or {}
        if version in LEGACY_STATE_VERSIONS and isinstance(persisted, dict):
            persisted = migrate_legacy_metrics(persisted)
        metrics = MetricValues.from_json(persisted)
        jobs = {
            str(name): JobProgress.from_json(job)
            for name, job in (doc.get("jobs") or {}).items()
            if isinstance(job, dict)
        }
        seen = {str(n) for n in doc.get("watchdog_seen") or [] if isinstance(n, str)}
        return cls(metrics=metrics, jobs=jobs, watchdog_seen=seen)


class Ledger:
    """The state, its lock, its file, and the metric values of the last commit."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / STATE_FILE
        self._lock = threading.RLock()
        self._depth = 0
        self._dirty = False
        self.reset_reason: str | None = None
        self.state = self._load()
        self.published: MetricValues = self.state.metrics.copy()
        # Changes whenever what a scrape shows may change (commit, live gauge):
        # the exposition caches its rendering per version, and its renderer
        # thread waits on ``changed`` to render the new one at once.
        self.version = 0
        self.changed = threading.Event()

    def _load(self) -> SidecarState:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return SidecarState()
        try:
            return SidecarState.from_json(json.loads(text))
        except ValueError as exc:
            # Never start from a state we do not understand silently: keep it
            # aside for the operator and start empty (counters restart at 0,
            # which rate() handles; jobs still in the spool are counted again).
            aside = self.path.with_suffix(".json.corrupt")
            os.replace(self.path, aside)
            self.reset_reason = f"state file unreadable ({exc}); moved to {aside}"
            return SidecarState()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SidecarState]:
        """Mutate the state; the outermost transaction commits when it ends."""
        with self._lock:
            self._depth += 1
            try:
                yield self.state
                self._dirty = True
            finally:
                self._depth -= 1
            if self._depth == 0 and self._dirty:
                self._commit()

    @contextlib.contextmanager
    def batch(self) -> Iterator[SidecarState]:
        """Group transactions: one commit at the end, and none if nothing changed."""
        with self._lock:
            self._depth += 1
            try:
                yield self.state
            finally:
                self._depth -= 1
            if self._depth == 0 and self._dirty:
                self._commit()

    @contextlib.contextmanager
    def locked(self) -> Iterator[SidecarState]:
        """Read the state consistently (no commit): e.g. to list jobs."""
        with self._lock:
            yield self.state

    def live(self, name: str, value: float) -> None:
        """Set a live (not persisted) gauge; visible at the next scrape."""
        with self._lock:
            if self.published.gauges[name].get((), None) == value:
                return
            self.state.metrics.set(name, value)
            self.published.set(name, value)
            self.version += 1
            self.changed.set()

    def _commit(self) -> None:
        doc = self.state.to_json()
        data = json.dumps(doc, separators=(",", ":")).encode()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, data, mode=0o600)
        self._dirty = False
        self.published = self.state.metrics.copy()
        self.version += 1
        self.changed.set()
