"""The backstop's pass over the spool (I4, third layer), independent of ingestion.

``BackstopPass.run(names)`` looks at every job directory whose job is not
known complete and not yet handled by the backstop, reads its record itself
(bounded, like every spool read) and, when ``Backstop.due`` says a dead
runtime left filesystems frozen past their deadline, thaws them and counts it
(``vmsnap_backstop_thaws_total``, ``..._thaw_attempts_total{result}``) in the
job's ``JobProgress.backstop`` mark, once. Each job is checked under its own
``Guard``: one job's unreadable record or failure never keeps another job's
filesystem frozen, and the pass does not depend on ingestion having
succeeded (it runs first, on its own).

Thread: the sidecar's main thread. Blocking: FITHAW, bounded per mount by
``Backstop.ioctl_timeout``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence

from snapshot_sidecar.backstop import Backstop
from snapshot_sidecar.forwarders import Guard
from snapshot_sidecar.spool_reader import RecordError, SpoolReader
from snapshot_sidecar.state import Ledger

__all__ = ["BackstopPass"]

_log = logging.getLogger("snapshot_sidecar.backstop")

Stat = tuple[int, int, int]


class BackstopPass:
    def __init__(
        self,
        backstop: Backstop,
        reader: SpoolReader,
        ledger: Ledger,
        guard: Guard,
        *,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
    ) -> None:
        self.backstop = backstop
        self.reader = reader
        self.ledger = ledger
        self.guard = guard
        self.clock = clock
        self.stop = stop or threading.Event()
        # record.json (mtime, size, inode) of records read complete: nothing to
        # thaw there until rewritten (a spool catching up is read once).
        self._complete: dict[str, Stat] = {}

    def run(self, names: Sequence[str] | None = None) -> None:
        """Check each job directory (``names``: as listed by the caller's pass)."""
        listed = self.reader.job_names() if names is None else names
        for name in listed:
            if self.stop.is_set():
                return
            job = self.ledger.state.jobs.get(name)
            if job is not None and (job.complete or job.backstop):
                continue
            stat = self.reader.record_stat(name)
            if stat is not None and self._complete.get(name) == stat:
                continue
            self.guard.run("backstop", functools.partial(self._check, name, stat))
        present = set(listed)
        for name in [n for n in self._complete if n not in present]:
            del self._complete[name]

    def _check(self, name: str, stat: Stat | None) -> None:
        try:
            record = self.reader.read_record(name)
        except RecordError:
            return  # counted by ingestion; without a record there is nothing to go by
        if record is not None and record.complete and stat is not None:
            self._complete[name] = stat
        if record is None or record.complete:
            return
        mountpoints = self.backstop.due(record, self.reader.job_path(name))
        if mountpoints is None:
            return
        outcomes = self.backstop.thaw(mountpoints)
        with self.ledger.transaction() as state:
            job = state.job(name, now=self.clock())
            job.backstop = True
            for outcome in outcomes:
                state.metrics.inc("vmsnap_backstop_thaw_attempts_total", (outcome.result,))
                if outcome.result == "thawed":
                    state.metrics.inc("vmsnap_backstop_thaws_total")
        for outcome in outcomes:
            if outcome.result == "thawed":
                _log.error(
                    "job %s: runtime %s died leaving %s frozen past its deadline: thawed",
                    name,
                    record.pid,
                    outcome.mountpoint,
                )
            elif outcome.result == "error":
                _log.error(
                    "job %s: backstop thaw of %s failed: %s",
                    name,
                    outcome.mountpoint,
                    outcome.error,
                )
