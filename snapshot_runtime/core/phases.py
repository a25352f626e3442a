"""Phase bookkeeping: when each phase of a job ran, how long, and how it ended.

The job calls ``PhaseRecorder.phase(name)`` around each phase; observers
(telemetry, the job record) subscribe to phase start/end events. Recording is
memory-only, so it is safe inside the frozen window. Listeners run in the
job's thread, in subscription order; an exception from one is swallowed and
kept in ``listener_errors`` (an observer must never break a phase, least of
all inside the frozen window, where nothing may be logged).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from snapshot_runtime.core.errors import ErrorCode

__all__ = ["PHASES", "PhaseHandle", "PhaseRecord", "PhaseRecorder"]

# The documented phase names, in job order (docs/telemetry.md).
PHASES = (
    "settings",
    "plugin_config",
    "status_start",
    "pre_script",
    "prepare",
    "freeze",
    "snapshot",
    "thaw",
    "post_script",
    "status_end",
)


@dataclass(frozen=True)
class PhaseRecord:
    name: str
    started_at: float  # epoch seconds
    seconds: float
    status: str  # "ok" | "error" | "skipped" | "warning"
    error: str | None = None
    detail: str | None = None


@dataclass
class PhaseHandle:
    """What a phase body may set about its own outcome."""

    name: str
    status: str = "ok"
    error: ErrorCode | None = None
    detail: str | None = None
    attributes: dict[str, object] = field(default_factory=dict)

    def fail(self, error: ErrorCode | None, detail: str | None = None) -> None:
        self.status, self.error, self.detail = "error", error, detail

    def warn(self, error: ErrorCode | None, detail: str | None = None) -> None:
        self.status, self.error, self.detail = "warning", error, detail

    def skip(self, detail: str) -> None:
        self.status, self.detail = "skipped", detail


PhaseListener = Callable[[str, PhaseHandle, "PhaseRecord | None"], None]


class PhaseRecorder:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self.records: list[PhaseRecord] = []
        self._listeners: list[PhaseListener] = []
        self.listener_errors: list[str] = []

    def subscribe(self, listener: PhaseListener) -> None:
        """``listener(event, handle, record)``; event is "start" or "end"."""
        self._listeners.append(listener)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[PhaseHandle]:
        handle = PhaseHandle(name)
        wall, start = self._wall(), self._clock()
        self._notify("start", handle, None)
        try:
            yield handle
        except BaseException:
            if handle.status == "ok":
                handle.fail(ErrorCode.INTERNAL_ERROR, "unexpected exception")
            raise
        finally:
            record = PhaseRecord(
                name=name,
                started_at=wall,
                seconds=self._clock() - start,
                status=handle.status,
                error=handle.error.value if handle.error else None,
                detail=handle.detail,
            )
            self.records.append(record)
            self._notify("end", handle, record)

    def _notify(self, event: str, handle: PhaseHandle, record: PhaseRecord | None) -> None:
        for listener in self._listeners:
            try:
                listener(event, handle, record)
            except Exception as exc:
                if len(self.listener_errors) < 20:
                    self.listener_errors.append(f"{event} {handle.name}: {type(exc).__name__}")

    def seconds(self, name: str) -> float:
        return sum(r.seconds for r in self.records if r.name == name)
