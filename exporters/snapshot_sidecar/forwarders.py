"""What the sidecar forwards each job's spool output with: the ``Forwarder`` interface.

A forwarder moves one kind of spool output of every job to one sink, keeping
its progress in the ledger: ``LogMirror`` (log.jsonl to logsBlobUri) and
``SpanForwarder`` (spans.jsonl over OTLP) are the two. The sidecar holds a
list of them (``sidecar.standard_forwarders``) and runs each ``step()`` in a
loop on its own thread, so a slow sink never delays another or ingestion. A
new sink is one module implementing ``Forwarder`` plus one line in that list
(and its ``name`` in ``metrics.COMPONENTS``, the bounded label set).

Contract (style.md §2.8: the sidecar never dies on an export):

* ``name``: the worker thread's name and the ``component`` label of
  ``vmsnap_sidecar_errors_total``;
* ``step()``: one pass over the jobs with something pending; returns a
  ``ForwardResult`` and never raises: an unexpected exception is logged
  (rate-limited), counted, and reported as ``FAILURE`` (``Guard``);
* ``close()``: release connections; called once, after the last step.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import Protocol

from snapshot_sidecar.state import Ledger

__all__ = ["ForwardResult", "Forwarder", "Guard"]

_log = logging.getLogger("snapshot_sidecar")


class ForwardResult(enum.Enum):
    SUCCESS = "success"  # the pass ran (whatever it found to do)
    FAILURE = "failure"  # the pass failed; what is pending waits for a later pass


class Forwarder(Protocol):
    name: str

    def step(self) -> ForwardResult: ...
    def close(self) -> None: ...


class Guard:
    """Runs a pass so that nothing escapes it: logged (once a minute per place and
    exception type, like logging's DuplicateFilter), counted in
    ``vmsnap_sidecar_errors_total{component}``, and reported as ``FAILURE``."""

    def __init__(self, ledger: Ledger, *, log_every: float = 60.0) -> None:
        self.ledger = ledger
        self.log_every = log_every
        self._last: dict[str, float] = {}

    def _allow(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -self.log_every) >= self.log_every:
            self._last[key] = now
            return True
        return False

    def run(self, component: str, body: Callable[[], object]) -> ForwardResult:
        try:
            result = body()
        except Exception as exc:
            if self._allow(f"{component}:{type(exc).__name__}"):
                _log.exception("%s pass failed (the sidecar goes on)", component)
            try:
                with self.ledger.transaction() as state:
                    state.metrics.inc("vmsnap_sidecar_errors_total", (component,))
            except OSError:
                with self.ledger.locked() as state:
                    state.metrics.inc("vmsnap_sidecar_state_write_errors_total")
            return ForwardResult.FAILURE
        return result if isinstance(result, ForwardResult) else ForwardResult.SUCCESS
