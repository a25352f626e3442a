"""Log mirroring (I3): each job's log.jsonl into its logsBlobUri, exactly once, in order.

Per job the mirror keeps, in the ledger (committed after every write): the
log byte offset mirrored, the last ``seq``, and the blob's logical offset.
One step, per job with unmirrored lines:

1. credentials.sealed is opened with the sidecar's key (no file: the job has
   no logsBlobUri for us, e.g. ``logs.mirrored_by == "runtime"``; a file that
   does not open: ``unseal``, stopped for good);
2. the target is opened once per process (``blob_targets.open_target``:
   create an append blob without overwriting, or continue what is there).
   With no progress of ours in the state (first sight, or a fresh start after
   state.json was deleted, corrupt or of a newer version) and a blob with
   content, the blob is the truth: the last spooled line found byte-equal in
   the blob's end is where mirroring resumes (``log_resume``), so nothing
   is appended twice;
3. whole lines are batched: a write goes out when at least ``min_batch``
   bytes are waiting, when the job is complete (its last lines), or when the
   oldest waiting line is ``flush_seconds`` old; one write is at most
   ``max_batch`` (16 MiB), and at most what the target takes (4 MiB, but
   100 MiB for append blobs on service version 2022-11-02 or later). So a
   blob gets one block per ≥ 256 KiB or per minute, far from the
   50,000-block limit, and the targets refuse to go past ``MAX_BLOCKS``
   (40,000) anyway;
4. a write that the blob refuses because it does not end where we think
   (412 append position, a changed etag, a longer page blob) is resolved from
   the bytes (observability.md §5): if the blob's extra bytes are exactly our
   next whole lines, our earlier attempt landed (a lost response, or a SIGKILL
   before the commit) and we advance; anything else is a foreign writer:
   counted as ``conflict``, logged, and we continue at the blob's end.

Failures: retryable ones (timeouts, 5xx, resets, throttling) are retried by
``call_with_retries`` and then, across steps, with a capped exponential
backoff; auth (expired or forbidden SAS), not-found, limits and other 4xx stop
the job's mirroring for good: counted in
``vmsnap_sidecar_log_mirror_abandoned_total`` (the reason in the sidecar log) and
never retried. A job whose log is still not mirrored ``give_up_seconds`` after it completed is
abandoned (``expired``): with the spool's own size cap that bounds the backlog,
which ``vmsnap_sidecar_log_mirror_backlog_bytes`` shows.

Thread: ``step()`` runs on one thread (the mirror worker); it only takes the
ledger's lock to commit. Blocking: network requests, each bounded by the
``BlobPolicy`` timeouts; ``stop`` cuts backoffs short.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from azure.storage.blob import BlobClient

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.core.redact import Redactor, redact_then_truncate, scrub, strip_sas
from snapshot_runtime.snapshot.blob_errors import SDK_ERRORS
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.snapshot.blob_requests import blob_client
from snapshot_runtime.snapshot.blob_retry import Attempt, call_with_retries
from snapshot_runtime.snapshot.blob_rules import sas_redactor
from snapshot_runtime.snapshot.failures import BlobFailure, BlobOpError
from snapshot_runtime.telemetry.spool_schema import LOG_FILE, line_seq
from snapshot_sidecar.blob_targets import (
    APPEND_BLOCK_MAX_BYTES,
    BlockLimitError,
    LogTarget,
    WriteResult,
    open_target,
)
from snapshot_sidecar.forwarders import ForwardResult, Guard
from snapshot_sidecar.keys import Keys
from snapshot_sidecar.log_resume import Resume, resume_point
from snapshot_sidecar.metrics import mirror_error_group
from snapshot_sidecar.spool_reader import RecordError, SpoolReader
from snapshot_sidecar.state import TERMINAL, JobProgress, Ledger

__all__ = ["MIRROR_BATCH_BYTES", "LogMirror", "MirrorConfig"]

# The default largest write (MirrorConfig.max_batch).
MIRROR_BATCH_BYTES = 16 * 1024 * 1024

_log = logging.getLogger("snapshot_sidecar.mirror")
T = TypeVar("T")

# Failure kinds that no retry can fix: stop this job's mirroring.
_FINAL_KINDS = frozenset({"auth", "not_found", "limit"})


@dataclass(frozen=True)
class MirrorConfig:
    """- min_batch: bytes worth one write while the job runs.
    - max_batch: largest write (≤ 100 MiB); each target caps it at what it takes
      (``LogTarget.max_write``: 4 MiB, or 100 MiB for an append blob on service
      version 2022-11-02 or later). 16 MiB: at 50 ms per request, one 4 MiB
      append per round trip mirrored ~40 MB/s per blob (benchmarks/sidecar_mirror.py).
    - flush_seconds: a waiting line is written after this long regardless.
    - give_up_seconds: after the job completed, stop retrying its mirror.
    - policy: timeouts and per-request retries.
    """

    min_batch: int = 256 * 1024
    max_batch: int = MIRROR_BATCH_BYTES
    flush_seconds: float = 60.0
    give_up_seconds: float = 24 * 3600.0
    max_backoff: float = 60.0
    policy: BlobPolicy = field(
        default_factory=lambda: BlobPolicy(
            request_timeout=30.0, connect_timeout=5.0, retries=3, backoff_seconds=0.5
        )
    )

    def __post_init__(self) -> None:
        if not 0 < self.max_batch <= APPEND_BLOCK_MAX_BYTES:
            raise ValueError(f"max_batch must be in (0, {APPEND_BLOCK_MAX_BYTES}]")
        if self.min_batch < 0 or self.flush_seconds < 0 or self.give_up_seconds <= 0:
            raise ValueError("min_batch, flush_seconds must be >= 0, give_up_seconds > 0")


@dataclass
class _Job:
    """What the mirror holds in memory for one job (never persisted: the SAS)."""

    url: str | None = None
    redact: Redactor | None = None
    client: BlobClient | None = None
    target: LogTarget | None = None
    next_try: float = 0.0
    backoff: float = 0.0
    waiting_since: float | None = None

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # closing a dead session must not stop the worker
                _log.debug("closing blob client failed", exc_info=True)
        self.client = self.target = None


def _last_seq(data: bytes) -> int | None:
    return line_seq(data.rstrip(b"\n").rsplit(b"\n", 1)[-1])


class LogMirror:
    """The log mirror: a ``Forwarder`` (forwarders.py) of log.jsonl to logsBlobUri."""

    name = "mirror"

    def __init__(
        self,
        reader: SpoolReader,
        ledger: Ledger,
        keys: Keys,
        config: MirrorConfig,
        *,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
    ) -> None:
        self.reader = reader
        self.ledger = ledger
        self.keys = keys
        self.config = config
        self.clock = clock
        self.stop = stop or threading.Event()
        self._jobs: dict[str, _Job] = {}
        self._finished: list[tuple[str, str]] = []
        self._guard = Guard(ledger)

    # -- the loop ------------------------------------------------------------------

    def step(self) -> ForwardResult:
        """One pass over every job with unmirrored lines (never raises: ``Forwarder``)."""
        return self._guard.run(self.name, self._pass)

    def _pass(self) -> None:
        """Mirror what each pending job has; updates the backlog gauges."""
        with self.ledger.locked() as state:
            names = [n for n, j in state.jobs.items() if j.log.status not in TERMINAL]
        for name in names:
            if self.stop.is_set():
                break
            job = self.ledger.state.jobs.get(name)
            if job is None:
                continue
            try:
                self._mirror(name, job)
            except Exception:
                _log.exception("log mirror of job %s failed unexpectedly", name)
                self._job(name).close()
                self._retry_later(name, None)
                with self.ledger.transaction() as state:
                    state.metrics.inc("vmsnap_sidecar_errors_total", ("mirror",))
        if self._finished:
            # Status-only changes of the pass: one commit (the writes committed each).
            with self.ledger.transaction() as state:
                for name, status in self._finished:
                    job = state.jobs.get(name)
                    if job is not None and job.log.status not in TERMINAL:
                        job.log.status = status
            self._finished.clear()
        self._forget_finished()
        self.update_backlog()

    def update_backlog(self) -> None:
        backlog_bytes = 0
        with self.ledger.locked() as state:
            pending = [
                (n, j.log.offset) for n, j in state.jobs.items() if j.log.status not in TERMINAL
            ]
        for name, offset in pending:
            waiting = self.reader.file_size(name, LOG_FILE) - offset
            if waiting > 0:
                backlog_bytes += waiting
        self.ledger.live("vmsnap_sidecar_log_mirror_backlog_bytes", backlog_bytes)

    def close(self) -> None:
        for job in self._jobs.values():
            job.close()
        self._jobs.clear()

    def _job(self, name: str) -> _Job:
        return self._jobs.setdefault(name, _Job())

    def _forget_finished(self) -> None:
        for name in list(self._jobs):
            job = self.ledger.state.jobs.get(name)
            if job is None or job.log.status in TERMINAL:
                self._jobs.pop(name).close()

    # -- one job -------------------------------------------------------------------

    def _mirror(self, name: str, job: JobProgress) -> None:
        mem = self._job(name)
        now = self.clock()
        if now < mem.next_try:
            return
        try:
            record = self.reader.read_record(name)
        except RecordError:
            record = None
        finished = job.finished or (record is not None and record.complete)
        completed_at = job.completed_at if job.completed_at is not None else job.first_seen
        if finished and now - completed_at > self.config.give_up_seconds:
            self._abandon(name, "expired", "not mirrored within the give-up time")
            return
        if mem.client is None and not self._open_credentials(name, mem, finished=finished):
            return
        if mem.target is None and not self._open_target(name, job, mem):
            return
        conflicts = 0
        while not self.stop.is_set():
            target = mem.target
            assert target is not None
            limit = min(self.config.max_batch, target.max_write)
            chunk = self.reader.read_lines(name, LOG_FILE, job.log.offset, limit)
            if not chunk:
                if finished:
                    self._finished.append((name, "done"))
                    _log.info("job %s: log mirrored (%d lines)", name, job.log.lines)
                return
            if not finished and len(chunk.data) < self.config.min_batch:
                mem.waiting_since = mem.waiting_since or now
                if now - mem.waiting_since < self.config.flush_seconds:
                    return
            offset = job.log.blob_offset
            try:
                attempt = self._write(mem, target, offset, chunk.data)
            except BlockLimitError as exc:
                self._abandon(name, "block_limit", str(exc))
                return
            if attempt.failure is not None:
                self._failed(name, mem, attempt.failure)
                return
            result = attempt.value
            assert result is not None
            if result.conflict:
                conflicts += 1
                if conflicts > 3 or not self._resolve(name, job, result.size, target):
                    self._retry_later(name, None)
                    return
                continue
            self._advance(job, chunk.data, chunk.lines, result.size)
            mem.waiting_since = None
            mem.backoff = 0.0

    def _open_credentials(self, name: str, mem: _Job, *, finished: bool) -> bool:
        try:
            sealed = self.reader.read_sealed(name)
        except (OSError, ValueError) as exc:
            self._abandon(name, "unseal", f"credentials.sealed: {exc}")
            return False
        if sealed is None:
            if finished:
                # No logsBlobUri for us: the runtime mirrored it itself, or the
                # job had none. Nothing to do, ever.
                self._finished.append((name, "none"))
            return False
        try:
            url = self.keys.open(sealed)
        except ValueError as exc:
            self._abandon(name, "unseal", f"credentials.sealed: {exc}")
            return False
        try:
            mem.client = blob_client(url, self.config.policy, code=ErrorCode.INTERNAL_ERROR)
        except BlobOpError as exc:
            self._abandon(name, "other", exc.message)
            return False
        mem.url, mem.redact = url, sas_redactor(url)
        return True

    def _open_target(self, name: str, job: JobProgress, mem: _Job) -> bool:
        client = mem.client
        assert client is not None
        known = job.log.blob_type
        attempt = self._call(
            mem,
            lambda budget: open_target(
                client,
                known_type=known,
                server_timeout=self._server_timeout(),
                timeout=budget,
            ),
        )
        if attempt.failure is not None:
            self._failed(name, mem, attempt.failure)
            return False
        opened = attempt.value
        assert opened is not None
        target = opened.target
        resume: Resume | None = None
        if job.log.blob_type is None and not opened.created and target.size > 0:
            # No progress of ours in the state (a first sight, or a fresh start:
            # state.json deleted, corrupt, of a newer version) and a blob with
            # content: the blob, not the state, says how much of our log it has.
            found = self._call(
                mem,
                lambda budget: resume_point(
                    self.reader, name, target, batch=self.config.max_batch, timeout=budget
                ),
            )
            if found.failure is not None:
                self._failed(name, mem, found.failure)
                return False
            resume = found.value
        mem.target = target
        with self.ledger.transaction():
            if job.log.blob_type is None:
                job.log.blob_type = target.blob_type
                job.log.blob_offset = target.size
                if resume is not None:
                    job.log.offset = resume.offset
                    job.log.lines = resume.lines
                    job.log.seq = resume.seq
            job.log.status = "active"
        if resume is not None:
            _log.warning(
                "job %s: no mirror progress in the state, but the blob already holds the "
                "log up to line %d (seq %d): resuming after it, nothing appended twice",
                name,
                resume.lines,
                resume.seq,
            )
        _log.info(
            "job %s: mirroring log to %s (%s, %s, at %d)",
            name,
            strip_sas(mem.url or ""),
            opened.target.blob_type,
            "created" if opened.created else "existing",
            job.log.blob_offset,
        )
        return True

    def _write(
        self, mem: _Job, target: LogTarget, offset: int, data: bytes
    ) -> Attempt[WriteResult]:
        return self._call(mem, lambda budget: target.write(offset, data, timeout=budget))

    def _server_timeout(self) -> int:
        return max(1, int(self.config.policy.request_timeout))

    def _call(self, mem: _Job, op: Callable[[float], T]) -> Attempt[T]:
        return call_with_retries(
            op,
            errors=SDK_ERRORS,
            policy=self.config.policy,
            redact=mem.redact or (lambda s: s),
            stop=self.stop,
        )

    def _advance(self, job: JobProgress, data: bytes, lines: int, size: int) -> None:
        seq = _last_seq(data)
        with self.ledger.transaction() as state:
            job.log.offset += len(data)
            job.log.lines += lines
            if seq is not None:
                job.log.seq = seq
            job.log.blob_offset = size
            state.metrics.inc("vmsnap_sidecar_log_mirror_bytes_total", (), len(data))

    def _resolve(self, name: str, job: JobProgress, size: int, target: LogTarget) -> bool:
        """The blob ends at ``size``, not at our offset: did our write land? True: go on."""
        ours = job.log.blob_offset
        extra = size - ours
        if extra > 0:
            mine = self.reader.read_raw(name, LOG_FILE, job.log.offset, extra)
            if len(mine) == extra and mine.endswith(b"\n"):
                mem = self._job(name)
                attempt = self._call(mem, lambda budget: target.read(ours, extra, timeout=budget))
                if attempt.failure is not None and attempt.failure.kind != "auth":
                    self._failed(name, mem, attempt.failure)
                    return False
                # Without read permission the length decides: only we write here.
                if attempt.value is None or attempt.value == mine:
                    _log.info(
                        "job %s: %d bytes at blob offset %d were ours already", name, extra, ours
                    )
                    self._advance(job, mine, mine.count(b"\n"), size)
                    return True
        if extra == 0:
            return True  # e.g. an etag change without new bytes: write again
        _log.warning(
            "job %s: blob ends at %d, expected %d, and the difference is not our log: "
            "continuing at the blob's end (foreign writer?)",
            name,
            size,
            ours,
        )
        with self.ledger.transaction() as state:
            job.log.blob_offset = size
            state.metrics.inc("vmsnap_sidecar_log_mirror_errors_total", ("conflict",))
        return True

    # -- failures ----------------------------------------------------------------------

    def _failed(self, name: str, mem: _Job, failure: BlobFailure) -> None:
        kind = failure.kind
        if failure.error_code == "BlockCountExceedsLimit":
            kind = "limit"
        with self.ledger.transaction() as state:
            group = mirror_error_group(kind)
            state.metrics.inc("vmsnap_sidecar_log_mirror_errors_total", (group,))
        final = kind in _FINAL_KINDS or (
            kind == "other" and failure.status_code is not None and 400 <= failure.status_code < 500
        )
        if final:
            reason = "block_limit" if failure.error_code == "BlockCountExceedsLimit" else kind
            self._abandon(name, reason, failure.message)
            return
        _log.warning("job %s: log mirror request failed, will retry: %s", name, failure.message)
        mem.close()  # a fresh connection and target state after a failure
        self._retry_later(name, failure)

    def _retry_later(self, name: str, failure: BlobFailure | None) -> None:
        mem = self._job(name)
        base = 2.0 if failure is not None and failure.kind == "throttled" else 1.0
        mem.backoff = min(self.config.max_backoff, max(base, mem.backoff * 2))
        mem.next_try = self.clock() + mem.backoff

    def _abandon(self, name: str, reason: str, message: str) -> None:
        mem = self._job(name)
        text = mem.redact(message) if mem.redact else message
        _log.error("job %s: log mirroring stopped for good (%s): %s", name, reason, text)
        with self.ledger.transaction() as state:
            job = state.jobs.get(name)
            if job is not None:
                job.log.status = "failed"
                job.log.error = redact_then_truncate(f"{reason}: {text}", 300, mem.redact or scrub)
            # The reason is in the log line above and the job's state, not a label.
            state.metrics.inc("vmsnap_sidecar_log_mirror_abandoned_total")
            if reason in ("unseal", "block_limit", "expired"):
                state.metrics.inc(
                    "vmsnap_sidecar_log_mirror_errors_total", (mirror_error_group(reason),)
                )
        mem.close()
