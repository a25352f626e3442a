"""The runtime's side of the thaw watchdog: start it, arm it, stand it down.

The watchdog process itself (``snapshot_runtime.freeze.watchdog``) imports only the
stdlib, so that it is armed fast; this client half lives apart so the
watchdog never loads subprocess and dataclasses (about half its start time).
The line protocol is described in ``watchdog``.

Contracts (``WatchdogClient``, not thread-safe):

* Every method is bounded by its ``timeout``. ``start`` and ``rearm`` raise
  ``FreezeError(FS_FREEZE_FAILED)``; the others never raise.
* ``start`` runs ``python -S .../freeze/watchdog.py`` (by path) in a new session,
  cwd ``/``, ``PYTHONDONTWRITEBYTECODE=1`` and ``PYTHONPATH`` set to this
  package's parent only, and returns once it answered ``armed``.
* Only ``send_disarm`` and ``leave_frozen`` may be called from another
  thread or inside the frozen window: each is a single non-blocking write of
  less than PIPE_BUF bytes, which the kernel keeps whole.
* ``disarm`` makes it exit without thawing (killing it if it does not);
  ``release`` closes the pipe without disarming, so it thaws everything now,
  and leaves it running if its FITHAW waits behind a stuck FIFREEZE.
* The pipe to the watchdog is O_CLOEXEC: exec'd children of the runtime do
  not keep it open (a fork()ed child that does not exec would, and would
  delay the EOF until the deadline).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from snapshot_runtime.core.errors import ErrorCode, FreezeError
from snapshot_runtime.core.redact import redact_then_keep_tail
from snapshot_runtime.freeze import watchdog as watchdog_module
from snapshot_runtime.freeze.watchdog import ARMED, DISARM, ERROR_PREFIX, THAWED_PREFIX, LineReader

__all__ = ["WatchdogClient", "WatchdogOutcome"]


@dataclass(frozen=True)
class WatchdogOutcome:
    """How the watchdog ended. ``exit_code`` None: still running (released)."""

    exit_code: int | None
    thawed: bool
    reason: str | None = None
    thawed_at: float | None = None
    mounts: tuple[dict[str, object], ...] = ()
    stderr: str = ""


@dataclass
class _Proc:
    popen: subprocess.Popen[bytes]
    reader: LineReader
    lines: list[str] = field(default_factory=list)


def _watchdog_error(message: str) -> FreezeError:
    return FreezeError(ErrorCode.FS_FREEZE_FAILED, message)


class WatchdogClient:
    """Start, arm and stop one watchdog process. Not thread-safe.

    Every method is bounded by its ``timeout``; ``start`` and ``rearm`` raise
    FreezeError (FsFreezeFailed), the others never raise. Only ``send_disarm``
    and ``leave_frozen`` may be called from another thread: each is a single
    non-blocking write of less than PIPE_BUF bytes, which the kernel keeps whole.
    """

    def __init__(self, mounts: Sequence[str], *, report_dir: str | None = None) -> None:
        self.mounts = tuple(mounts)
        self.report_dir = report_dir
        self._proc: _Proc | None = None
        self.arm_seconds: float | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.popen.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.popen.poll() is None

    def start(self, deadline_monotonic: float, *, timeout: float = 5.0) -> float:
        """Start the process and wait until it is armed; returns the seconds it took."""
        started = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env.update(PYTHONDONTWRITEBYTECODE="1")
        try:
            # -I -S: no site, no script dir on sys.path; run by path, the watchdog imports
            # no package face (it needs the stdlib only) and starts fastest.
            popen = subprocess.Popen(
                [sys.executable, "-I", "-S", watchdog_module.__file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                cwd="/",
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise _watchdog_error(f"cannot start the thaw watchdog: {exc}") from exc
        assert popen.stdin is not None and popen.stdout is not None
        # Our writes must never block the runtime (we write once in the frozen window).
        os.set_blocking(popen.stdin.fileno(), False)
        self._proc = _Proc(popen=popen, reader=LineReader(popen.stdout.fileno()))
        first = {
            "mounts": list(self.mounts),
            "deadline_monotonic": deadline_monotonic,
            "report_dir": self.report_dir,
        }
        try:
            self._write(json.dumps(first))
            self._await_armed(timeout)
        except FreezeError:
            self.kill()
            raise
        self.arm_seconds = time.monotonic() - started
        return self.arm_seconds

    def rearm(self, deadline_monotonic: float, *, timeout: float = 2.0) -> None:
        """Move the deadline and wait for the acknowledgement."""
        self._write(json.dumps({"deadline_monotonic": deadline_monotonic}))
        self._await_armed(timeout)

    def leave_frozen(self, mountpoints: Sequence[str]) -> None:
        """Tell the watchdog never to thaw these (frozen by someone else)."""
        with contextlib.suppress(FreezeError):
            self._write(json.dumps({"leave_frozen": list(mountpoints)}))

    def send_disarm(self) -> None:
        """Write ``disarm`` without waiting (from the deadline timer thread)."""
        with contextlib.suppress(FreezeError):
            self._write(DISARM)

    def disarm(self, *, timeout: float = 2.0) -> WatchdogOutcome:
        """Ask the watchdog to exit without thawing; kill it if it does not."""
        with contextlib.suppress(FreezeError):
            self._write(DISARM)
        return self._finish(timeout, kill=True)

    def release(self, *, timeout: float = 1.0) -> WatchdogOutcome:
        """Close the pipe without disarming: the watchdog thaws everything now.

        Used when one of our own ioctls is stuck. The process is left running
        if it has not finished within ``timeout`` (its FITHAW may be waiting
        behind the stuck FIFREEZE, which is exactly where it should be).
        """
        return self._finish(timeout, kill=False)

    def kill(self) -> None:
        if self._proc is not None and self._proc.popen.poll() is None:
            self._proc.popen.kill()
            # A process in D state may outlive SIGKILL for a while; never raise here.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.popen.wait(2.0)

    def _write(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.popen.stdin is None or proc.popen.stdin.closed:
            raise _watchdog_error("thaw watchdog is not running")
        try:
            os.write(proc.popen.stdin.fileno(), line.encode("utf-8", "surrogateescape") + b"\n")
        except OSError as exc:
            raise _watchdog_error(f"thaw watchdog pipe: {exc}") from exc

    def _await_armed(self, timeout: float) -> None:
        proc = self._proc
        assert proc is not None
        until = time.monotonic() + timeout
        while time.monotonic() < until and not proc.reader.eof:
            for line in proc.reader.read_lines(until - time.monotonic()):
                proc.lines.append(line)
                if line == ARMED:
                    return
                if line.startswith(ERROR_PREFIX):
                    raise _watchdog_error(f"thaw watchdog: {line[len(ERROR_PREFIX) :]}")
        if proc.reader.eof:
            try:
                code: int | None = proc.popen.wait(1.0)
            except subprocess.TimeoutExpired:  # closed its stdout but lingers
                code = None
            raise _watchdog_error(f"thaw watchdog exited ({code}) before it was armed")
        raise _watchdog_error(f"thaw watchdog not armed within {timeout:g}s")

    def _finish(self, timeout: float, *, kill: bool) -> WatchdogOutcome:
        proc = self._proc
        if proc is None:
            return WatchdogOutcome(exit_code=None, thawed=False)
        assert proc.popen.stdin is not None
        with contextlib.suppress(OSError):
            proc.popen.stdin.close()
        try:
            code: int | None = proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
            if kill:
                self.kill()
                code = proc.popen.returncode
        stderr = ""
        if code is not None:
            # It has exited: what is left in the pipes is all there will be.
            until = time.monotonic() + 1.0
            while not proc.reader.eof and time.monotonic() < until:
                proc.lines.extend(proc.reader.read_lines(until - time.monotonic()))
            assert proc.popen.stderr is not None
            with contextlib.suppress(OSError):
                stderr = redact_then_keep_tail(
                    proc.popen.stderr.read().decode("utf-8", "replace"), 2000
                )
                proc.popen.stderr.close()
            if proc.popen.stdout is not None:
                proc.popen.stdout.close()
        else:
            proc.lines.extend(proc.reader.read_lines(0.0))
        for line in proc.lines:
            if line.startswith(THAWED_PREFIX):
                return _thawed_outcome(line[len(THAWED_PREFIX) :], code, stderr)
        return WatchdogOutcome(exit_code=code, thawed=False, stderr=stderr)


def _thawed_outcome(payload: str, code: int | None, stderr: str) -> WatchdogOutcome:
    """The watchdog said it thawed; a garbled report must not make thaw() raise."""
    try:
        data = json.loads(payload)
        return WatchdogOutcome(
            exit_code=code,
            thawed=True,
            reason=str(data.get("reason")),
            thawed_at=float(data["thawed_at_monotonic"]),
            mounts=tuple(m for m in data.get("mounts", ()) if isinstance(m, dict)),
            stderr=stderr,
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return WatchdogOutcome(
            exit_code=code, thawed=True, reason="unreadable report", stderr=stderr
        )
