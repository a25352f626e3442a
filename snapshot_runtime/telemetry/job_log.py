"""Freeze-safe job logging (I1): JSON lines that never touch a frozen filesystem.

Every sink of the job's logger sits behind one ``FreezeGate``. While the gate
is closed (from just before the first FIFREEZE to just after the last FITHAW)
a sink keeps formatted lines in memory, in order; ``FreezeGate.open()`` writes
them out, then the sink writes directly again. This applies to the console
too: stderr may be redirected to a file on a filesystem we are freezing.

loguru runs sinks in the calling thread here (``enqueue=False`` on purpose:
its queue is a pipe drained by a thread that would block on the frozen file,
and then the pipe fills and blocks the caller; see docs/telemetry.md).

Each line: ``{"time", "level", "message", "task_id", "trace_id", "span_id",
"phase", "seq", ...extra}``; the message and every string field pass the job's
redactor first (I5). ``seq`` numbers the job's records 1, 2, 3... in emission
order (assigned in the patcher, so every sink sees the same number).

Line sinks (``JobLog.add_line_sink``) receive the finished JSON line, e.g. the
spool's ``log.jsonl`` writer. A line sink is either gated like the file (held
while frozen) or ungated (written at once, even inside the frozen window: only
for a destination that is never frozen, such as a tmpfs spool); ``gated`` can
be switched while the job runs, once it knows the freeze plan.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from snapshot_runtime.core import defaults
from snapshot_runtime.telemetry.loguru_logger import root_logger

if TYPE_CHECKING:
    from loguru import Logger, Message, Record

_root_logger = root_logger()

__all__ = ["DEFAULT_LOG_PATH", "FreezeGate", "GatedSink", "JobLog", "LineSink"]

DEFAULT_LOG_PATH = defaults.DEFAULT_LOG_PATH

_RESERVED = {"task_id", "trace_id", "span_id", "phase", "seq", "json", "job_log"}


class _Releasable:
    def release(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class FreezeGate:
    """Closed while filesystems are frozen; sinks hold their lines meanwhile.

    ``on_open`` callbacks run after every ``open()`` (once the held lines are
    out): deferred work such as the spool's record write. An exception from a
    callback is swallowed and counted in ``callback_errors``: reopening the
    gate must never fail.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = False
        self._sinks: list[_Releasable] = []
        self._callbacks: list[Callable[[], None]] = []
        self.callback_errors: list[str] = []

    @property
    def closed(self) -> bool:
        return self._closed

    def register(self, sink: _Releasable) -> None:
        with self._lock:
            self._sinks.append(sink)

    def on_open(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def close(self) -> None:
        with self._lock:
            self._closed = True

    # -- core.window.WindowObserver: closed for the whole frozen window ------

    def before_freeze(self) -> None:
        self.close()

    def frozen(self) -> None:
        """Nothing to do: the gate is already closed."""

    def after_thaw(self) -> None:
        self.open()

    def open(self) -> None:
        """Reopen and write out, in order, what every sink held; then run callbacks."""
        with self._lock:
            self._closed = False
            for sink in self._sinks:
                sink.release()
            for callback in self._callbacks:
                try:
                    callback()
                except Exception as exc:  # a broken observer must not break the job
                    self.callback_errors.append(f"{type(exc).__name__}: {exc}")


class GatedSink(_Releasable):
    """A loguru sink writing to ``stream`` unless the gate is closed."""

    def __init__(
        self, gate: FreezeGate, opener: Callable[[], TextIO], *, owned: bool = True
    ) -> None:
        self._gate = gate
        self._opener = opener
        self._owned = owned  # False: the caller's stream (a console), never closed here
        self._stream: TextIO | None = None
        self._held: list[str] = []
        self._lock = threading.Lock()
        self.written = 0
        gate.register(self)

    def _out(self) -> TextIO:
        if self._stream is None:
            self._stream = self._opener()
        return self._stream

    def write(self, message: Message) -> None:
        with self._lock:
            if self._gate.closed:
                self._held.append(str(message))
                return
            self._emit([str(message)])

    def _emit(self, lines: list[str]) -> None:
        out = self._out()
        for line in lines:
            out.write(line)
        out.flush()
        self.written += len(lines)

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held, []
            if held:
                self._emit(held)

    @property
    def held(self) -> int:
        return len(self._held)

    def stop(self) -> None:
        self.release()
        if self._stream is not None and self._owned:
            self._stream.close()
        self._stream = None


class LineSink(_Releasable):
    """A loguru sink handing each finished line to ``write``; held while gated and closed.

    ``write`` must not raise (the spool writer counts its own failures); if it
    does, the error is counted in ``errors`` and the line is lost for that
    destination only.
    """

    def __init__(self, gate: FreezeGate, write: Callable[[str], None], *, gated: bool) -> None:
        self._gate = gate
        self._write = write
        self.gated = gated
        self._held: list[str] = []
        self._lock = threading.Lock()
        self.errors = 0
        gate.register(self)

    def write(self, message: Message) -> None:
        with self._lock:
            if self.gated and self._gate.closed:
                self._held.append(str(message))
                return
            self._emit(str(message))

    def _emit(self, line: str) -> None:
        try:
            self._write(line)
        except Exception:
            self.errors += 1

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held, []
            for line in held:
                self._emit(line)

    @property
    def held(self) -> int:
        return len(self._held)


def _json_line(record: Record) -> str:
    extra = record["extra"]
    doc: dict[str, Any] = {
        "time": record["time"].astimezone(dt.timezone.utc).isoformat(timespec="microseconds"),
        "level": record["level"].name,
        "message": record["message"],
        "task_id": extra.get("task_id", ""),
        "trace_id": extra.get("trace_id", ""),
        "span_id": extra.get("span_id", ""),
        "phase": extra.get("phase", ""),
        "seq": extra.get("seq", 0),
    }
    for key, value in extra.items():
        if key not in _RESERVED:
            doc[key] = value
    extra["json"] = json.dumps(doc, default=str, ensure_ascii=False)
    return "{extra[json]}\n"


def _console_line(record: Record) -> str:
    record["extra"].setdefault("phase", "")
    return "{time:HH:mm:ss.SSS} {level: <7} [{extra[phase]}] {message}\n"


class JobLog:
    """The job's logger: a JSON-lines file sink plus an optional console sink."""

    def __init__(
        self,
        *,
        path: str | None,
        task_id: str,
        redactor: Callable[[str], str],
        gate: FreezeGate | None = None,
        console: TextIO | None = None,
        console_level: str = "INFO",
    ) -> None:
        self.gate = gate or FreezeGate()
        self.path = path
        self._redactor = redactor
        self._handler_ids: list[int] = []
        self.sinks: list[GatedSink] = []
        self.line_sinks: list[LineSink] = []
        self._trace_ids: Callable[[], tuple[str, str]] | None = None
        self._seq_lock = threading.Lock()
        self.seq = 0
        # One loguru handler formats each JSON line once and fans it out to the
        # file and the line sinks (a loguru handler costs ~10 ms to add).
        self._json_handler: int | None = None
        self._file_sink: GatedSink | None = None
        if path:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, mode=0o755, exist_ok=True)
            # Created before the freeze, so the first write after thaw only appends.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
            os.close(fd)
            file_sink = GatedSink(self.gate, lambda: open(path, "a", encoding="utf-8"))  # noqa: SIM115
            self.sinks.append(file_sink)
            self._file_sink = file_sink
            self._ensure_json_handler()
        if console is not None:
            stream = console
            console_sink = GatedSink(self.gate, lambda: stream, owned=False)
            self.sinks.append(console_sink)
            self._handler_ids.append(
                _root_logger.add(
                    console_sink.write,
                    format=_console_line,
                    level=console_level,
                    colorize=False,
                    backtrace=False,
                    diagnose=False,
                    catch=True,
                    filter=lambda r: r["extra"].get("job_log") is self,
                )
            )
        self.logger: Logger = _root_logger.patch(self._patch).bind(
            job_log=self, task_id=task_id, phase=""
        )

    def _ensure_json_handler(self) -> None:
        if self._json_handler is not None:
            return
        self._json_handler = _root_logger.add(
            self._fan_out,
            format=_json_line,
            level="DEBUG",
            colorize=False,
            backtrace=False,
            diagnose=False,
            catch=True,
            filter=lambda r: r["extra"].get("job_log") is self,
        )
        self._handler_ids.append(self._json_handler)

    def _fan_out(self, message: Message) -> None:
        # Line sinks first (they never raise; the spool's append is what a
        # SIGKILL must not lose), then the local file.
        for sink in self.line_sinks:
            sink.write(message)
        if self._file_sink is not None:
            self._file_sink.write(message)

    def add_line_sink(self, write: Callable[[str], None], *, gated: bool) -> LineSink:
        """Send every JSON line (DEBUG and up) to ``write`` too; see ``LineSink``."""
        sink = LineSink(self.gate, write, gated=gated)
        self.line_sinks.append(sink)
        self._ensure_json_handler()
        return sink

    def set_trace_source(self, source: Callable[[], tuple[str, str]]) -> None:
        """``source() -> (trace_id, span_id)`` of the current span, for correlation."""
        self._trace_ids = source

    def _patch(self, record: Record) -> None:
        with self._seq_lock:
            self.seq += 1
            record["extra"]["seq"] = self.seq
        record["message"] = self._redactor(record["message"])
        extra = record["extra"]
        for key, value in list(extra.items()):
            if isinstance(value, str):
                extra[key] = self._redactor(value)
        if self._trace_ids is not None:
            trace_id, span_id = self._trace_ids()
            extra.setdefault("trace_id", trace_id)
            extra.setdefault("span_id", span_id)

    def phase(self, name: str) -> Logger:
        return self.logger.bind(phase=name)

    def close(self) -> None:
        self.gate.open()
        for handler_id in self._handler_ids:
            _root_logger.remove(handler_id)
        self._handler_ids.clear()
        for sink in self.sinks:
            sink.stop()
        for line_sink in self.line_sinks:
            line_sink.release()
