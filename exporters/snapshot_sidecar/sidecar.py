"""The sidecar's main loop: ingest the spool, thaw what was left frozen, forward.

Threads (``Sidecar.run``):

* main: every ``poll_seconds``, ``ingest()`` (new complete records counted
  exactly once, abandoned jobs, watchdog reports, the backstop) and
  ``cleanup()`` (job directories fully handled are removed);
* one per forwarder (``forwarders.Forwarder``; ``standard_forwarders`` is the
  list: ``mirror`` = ``LogMirror``, ``spans`` = ``SpanForwarder``), each
  running its ``step()`` in a loop;
* ``metrics-http``: the /metrics server.

A slow or failing blob endpoint or collector therefore never delays ingestion,
and nothing that fails in a loop stops the process: every exception is logged
(rate-limited per place), counted in ``vmsnap_sidecar_errors_total{component}``,
and the loop goes on (style.md §2.8). ``run_once()`` does one pass of
everything on the calling thread (``--once``, tests).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.sdk.trace.export import SpanExporter

from snapshot_runtime.core.defaults import DEFAULT_SPOOL_DIR
from snapshot_runtime.telemetry.spool_schema import RECORD_FILE
from snapshot_sidecar.backstop import Backstop, lock_free
from snapshot_sidecar.backstop_pass import BackstopPass
from snapshot_sidecar.forwarders import Forwarder, Guard
from snapshot_sidecar.ingest import apply_record, apply_watchdog_report
from snapshot_sidecar.keys import Keys
from snapshot_sidecar.mirror import LogMirror, MirrorConfig
from snapshot_sidecar.sd_notify import WatchdogPinger
from snapshot_sidecar.spans import SpanConfig, SpanForwarder
from snapshot_sidecar.spool_reader import JobRecord, RecordError, SpoolReader
from snapshot_sidecar.state import JobProgress, Ledger

__all__ = [
    "DEFAULT_SPOOL",
    "DEFAULT_STATE_DIR",
    "Sidecar",
    "SidecarConfig",
    "StateDirLocked",
    "collector_failure_counter",
    "standard_forwarders",
]

DEFAULT_SPOOL = DEFAULT_SPOOL_DIR
DEFAULT_STATE_DIR = "/var/lib/snapshot-sidecar"
_log = logging.getLogger("snapshot_sidecar")


@dataclass(frozen=True)
class SidecarConfig:
    """- poll_seconds: how often the spool is scanned (and workers idle between passes).
    - keep_jobs: never delete handled job directories (debugging).
    - max_new_jobs_per_pass: new job directories taken on per ingest pass; a
      larger spool is caught up over several passes (bounded memory, commits).
    - abandon_seconds: an incomplete job whose record names no pid is given up
      after this long without a record update.
    """

    poll_seconds: float = 1.0
    keep_jobs: bool = False
    max_new_jobs_per_pass: int = 500
    abandon_seconds: float = 24 * 3600.0
    mirror: MirrorConfig = field(default_factory=MirrorConfig)
    spans: SpanConfig = field(default_factory=SpanConfig)


class StateDirLocked(RuntimeError):
    """Another sidecar holds this state directory."""


def standard_forwarders(
    reader: SpoolReader,
    ledger: Ledger,
    keys: Keys,
    config: SidecarConfig,
    *,
    exporter: SpanExporter | None,
    stop: threading.Event | None = None,
) -> list[Forwarder]:
    """The sinks every job's output goes to: one line per ``Forwarder``."""
    return [
        LogMirror(reader, ledger, keys, config.mirror, stop=stop),
        SpanForwarder(reader, ledger, exporter, config.spans, stop=stop),
    ]


def collector_failure_counter(ledger: Ledger) -> Callable[[str], None]:
    """``build_registry``'s ``on_failure``: a collector that raised during a scrape is
    counted in ``vmsnap_sidecar_errors_total{component="collector"}`` (persisted)."""

    def count(_collector: str) -> None:
        with ledger.transaction() as state:
            state.metrics.inc("vmsnap_sidecar_errors_total", ("collector",))

    return count


def lock_state_dir(state_dir: str | os.PathLike[str]) -> int:
    """Hold ``<state-dir>/lock`` (flock) for the life of the process; the fd is returned."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirLocked(f"another snapshot-sidecar holds {directory}/lock") from None
    return fd


class Sidecar:
    def __init__(
        self,
        *,
        reader: SpoolReader,
        ledger: Ledger,
        forwarders: Sequence[Forwarder],
        backstop: Backstop | None,
        config: SidecarConfig,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
        watchdog: WatchdogPinger | None = None,
    ) -> None:
        self.reader = reader
        self.ledger = ledger
        self.forwarders = list(forwarders)
        self.backstop = backstop
        self.config = config
        self.clock = clock
        self.stop = stop or threading.Event()
        # systemd's watchdog: each loop beats after an iteration; the main loop pings.
        self.watchdog = watchdog
        self._guard = Guard(ledger)
        self._invalid_seen: set[tuple[str, str]] = set()
        # record.json (mtime, size, inode) when last read, per job directory.
        self._stats: dict[str, tuple[int, int, int]] = {}
        self.backstop_pass = (
            BackstopPass(backstop, reader, ledger, self._guard, clock=clock, stop=self.stop)
            if backstop is not None
            else None
        )
        self._wakes = {f.name: threading.Event() for f in self.forwarders}
        self._new = 0  # jobs first seen in the last pass
        self._more = False  # the last pass stopped at max_new_jobs_per_pass

    # -- passes ------------------------------------------------------------------------

    def forwarder(self, name: str) -> Forwarder:
        return next(f for f in self.forwarders if f.name == name)

    def close(self) -> None:
        """Close every forwarder (after the last step)."""
        for forwarder in self.forwarders:
            self._guard.run(forwarder.name, forwarder.close)

    def run_once(self) -> None:
        """One pass of everything, on this thread."""
        self._guarded("ingest", self.ingest)
        for forwarder in self.forwarders:
            forwarder.step()
        self._guarded("ingest", self.cleanup)

    def run(self, on_started: Callable[[], None] | None = None) -> None:
        """Until ``stop`` is set: the main loop here, each forwarder on its thread."""
        workers = [
            threading.Thread(target=self._loop, args=(forwarder,), name=forwarder.name)
            for forwarder in self.forwarders
        ]
        self._guarded("ingest", self.ingest)
        for worker in workers:
            worker.daemon = True
            worker.start()
        if on_started is not None:
            on_started()
        while not self.stop.is_set():
            self._guarded("ingest", self.cleanup)
            if self.watchdog is not None:
                self.watchdog.beat("ingest")
                self.watchdog.tick()
            # A pass cut short by the per-pass bound goes on at once (catching up).
            if self.stop.wait(0.05 if self._more else self.config.poll_seconds):
                break
            self._guarded("ingest", self.ingest)
            if self._new:
                for wake in self._wakes.values():
                    wake.set()
        for wake in self._wakes.values():
            wake.set()
        for worker in workers:
            worker.join(10.0)
        self.close()

    def _loop(self, forwarder: Forwarder) -> None:
        wake = self._wakes[forwarder.name]
        while not self.stop.is_set():
            forwarder.step()  # never raises (the Forwarder contract)
            if self.watchdog is not None:
                self.watchdog.beat_worker(forwarder.name)
            wake.wait(self.config.poll_seconds)  # new jobs wake the worker early
            wake.clear()

    def _guarded(self, component: str, step: Callable[[], None]) -> None:
        self._guard.run(component, step)

    # -- ingest ------------------------------------------------------------------------

    def ingest(self) -> None:
        """One scan of the spool; every change of the pass is one commit.

        The backstop pass comes first and on its own: I4 never waits for, or
        depends on, ingestion. Each job, and the watchdog reports, are ingested
        in isolation: whatever one of them raises is logged and counted
        (``errors_total{component="ingest"}``) and the pass goes on.
        """
        names = self.reader.job_names()
        self.ledger.live("vmsnap_sidecar_spool_jobs", len(names))
        if self.backstop_pass is not None:
            self._guarded("backstop", functools.partial(self.backstop_pass.run, names))
        self._new, self._more = 0, False
        with self.ledger.batch():
            for name in names:
                if self.stop.is_set():
                    return
                self._guarded("ingest", functools.partial(self._ingest_job, name))
            self._guarded("ingest", self._ingest_watchdog_reports)
            present = set(names)
            gone = [n for n in self.ledger.state.jobs if n not in present]
            if gone:
                # Removed by us (see cleanup) or by someone else: nothing left to do.
                with self.ledger.transaction() as state:
                    for name in gone:
                        state.jobs.pop(name, None)
                        self._stats.pop(name, None)

    def _ingest_job(self, name: str) -> None:
        now = self.clock()
        job = self.ledger.state.jobs.get(name)
        stat = self.reader.record_stat(name)
        settled = job is not None and (job.complete or job.quarantined)
        if settled and stat is not None and self._stats.get(name) == stat:
            return  # counted (or quarantined), and its record has not changed since
        if job is None and self._new >= self.config.max_new_jobs_per_pass:
            # Bounded work per pass (and so bounded state and memory while a
            # large spool is caught up): the rest waits for the next pass,
            # unread (reading it now would read a large backlog once per pass).
            self._more = True
            return
        unreadable: RecordError | None = None
        try:
            record = self.reader.read_record(name)
        except RecordError as exc:
            record, unreadable = None, exc
        if record is None and unreadable is None:
            return  # no record yet
        if job is None:
            self._new += 1
            with self.ledger.transaction() as state:
                job = state.job(name, now=now)
        if stat is not None:
            self._stats[name] = stat
        if unreadable is not None or record is None:
            self._unreadable(name, job, unreadable, now)
            return
        if job.quarantined:
            # Rewritten readable after all: from now on an ordinary job.
            with self.ledger.transaction():
                job.quarantined = False
        if record.complete:
            if job.run != record.run_id:
                self._count(name, job, record, now)
            return
        if not job.abandoned and self._abandoned(name, record, job, now):
            with self.ledger.transaction() as state:
                job.abandoned = True
                job.completed_at = now
                state.metrics.inc("vmsnap_jobs_abandoned_total")
            _log.warning("job %s: runtime gone before completing; abandoned", name)

    def _count(self, name: str, job: JobProgress, record: JobRecord, now: float) -> None:
        # Exactly once: the values and the mark are committed in one write.
        if record.raw.get("interrupted") is True:
            # Completed on behalf of a dead runtime by the next run's recovery
            # (docs/spool.md): one abandoned job, never a second outcome.
            with self.ledger.transaction() as state:
                if not job.abandoned:
                    state.metrics.inc("vmsnap_jobs_abandoned_total")
                    job.abandoned = True
                job.run = record.run_id
                job.complete = True
                job.completed_at = job.completed_at or now
            _log.warning("job %s: interrupted (completed by recovery); counted as abandoned", name)
            return
        with self.ledger.transaction() as state:
            apply_record(state.metrics, record)
            job.run = record.run_id
            job.complete = True
            job.abandoned = False
            job.completed_at = now
            if record.ended_at is not None:
                lag = max(0.0, now - record.ended_at)
                state.metrics.set("vmsnap_sidecar_ingest_lag_seconds", lag)
        _log.info(
            "job %s: %s, %s (%s)",
            name,
            record.outcome,
            record.consistency,
            record.error or "no error",
        )

    def _abandoned(self, name: str, record: JobRecord, job: JobProgress, now: float) -> bool:
        if record.pid is not None and self.backstop is not None:
            return self.backstop.runtime_dead(record, self.reader.job_path(name))
        last = record.updated_at or job.first_seen
        return now - last > self.config.abandon_seconds

    def _unreadable(
        self, name: str, job: JobProgress, error: RecordError | None, now: float
    ) -> None:
        """record.json cannot be read: count it once; quarantine it once the runtime is gone."""
        path = self.reader.job_path(name) / RECORD_FILE
        reason = error.reason if error is not None else "io"
        if (name, reason) not in self._invalid_seen:
            self._invalid_seen.add((name, reason))
            _log.warning("job %s: %s not ingestible (%s): %s", name, path, reason, error)
            with self.ledger.transaction() as state:
                # The reason is in the warning above: one series, not one per reason.
                state.metrics.inc("vmsnap_sidecar_records_invalid_total")
        if job.finished:
            return
        if lock_free(self.reader.job_path(name)) is False:
            return  # a live runtime holds the lock: its next rewrite may be readable
        with self.ledger.transaction() as state:
            job.quarantined = True
            job.completed_at = now
            state.metrics.inc("vmsnap_sidecar_jobs_quarantined_total")
        _log.error(
            "job %s: %s unreadable (%s) and its runtime is gone: quarantined (no outcome "
            "counted; its log and spans are still forwarded)",
            name,
            path,
            reason,
        )

    def _ingest_watchdog_reports(self) -> None:
        reports, invalid = self.reader.watchdog_reports()
        names = {r.name for r in reports} | {r.name for r in invalid}
        with self.ledger.locked() as state:
            new = [r for r in reports if r.name not in state.watchdog_seen]
            bad = [r for r in invalid if r.name not in state.watchdog_seen]
            stale = state.watchdog_seen - names
        if not new and not bad and not stale:
            return
        with self.ledger.transaction() as state:
            for report in new:
                apply_watchdog_report(state.metrics, report)
                state.watchdog_seen.add(report.name)
            for unreadable in bad:
                # Counted once, like a report: the name is remembered while the file exists.
                state.metrics.inc("vmsnap_sidecar_watchdog_reports_invalid_total")
                state.watchdog_seen.add(unreadable.name)
        for unreadable in bad:
            _log.warning(
                "watchdog report not readable (%s): %s", unreadable.reason, unreadable.message
            )
            # Forget names whose files are gone: the set stays as small as the directory.
            state.watchdog_seen -= stale
        for report in new:
            _log.warning(
                "watchdog thawed after runtime %s (%s)",
                report.doc.get("runtime_pid"),
                report.doc.get("reason"),
            )

    # -- cleanup -----------------------------------------------------------------------

    def cleanup(self) -> None:
        """Remove the directories of jobs that are counted, mirrored and exported."""
        if self.config.keep_jobs:
            return
        now = self.clock()
        with self.ledger.locked() as state:
            # An abandoned job's directory stays for abandon_seconds: the next
            # runtime's recovery completes its record (interrupted) from it.
            done = [
                n
                for n, j in state.jobs.items()
                if j.handled
                and (j.complete or now - (j.completed_at or now) > self.config.abandon_seconds)
            ]
        if not done:
            return
        removed = []
        for name in done:
            path = self.reader.job_path(name)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(path)
            if not path.exists():
                removed.append(name)
        with self.ledger.transaction() as state:
            for name in removed:
                state.jobs.pop(name, None)
                self._stats.pop(name, None)
