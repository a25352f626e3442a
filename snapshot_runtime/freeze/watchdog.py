"""The thaw watchdog: a guard process that thaws if the runtime cannot (I4).

The reference's ``safefreeze`` thaws on its own timer, but a SIGKILL or an
OOM-kill of the freezer leaves every filesystem frozen, and nothing outside it
watches (azure-linux-extensions#951/#1868, velero#2113). Here the runtime
freezes in-process and this separate process is the backstop:

* ``FreezeSession.prepare()`` starts ``python -S -m snapshot_runtime.freeze.watchdog``
  in a new session (a signal to the runtime's process group does not reach
  it), cwd ``/``, PYTHONDONTWRITEBYTECODE=1 and PYTHONPATH set to this
  package's parent only, with stdin and stdout as pipes to the runtime. The
  module imports only the stdlib (the client half lives in ``watchdog_client``
  so the watchdog does not load subprocess/dataclasses): about 40 ms to "armed".
* It opens every mountpoint itself (O_RDONLY|O_DIRECTORY), so it needs no path
  lookup later, and answers ``armed``. The runtime freezes only after that.
* It thaws every mount, each FITHAW in its own thread (one stuck thaw cannot
  hold up the others; EINVAL means "not frozen" and is fine), when:
  stdin reaches EOF without ``disarm`` (the runtime died, SIGKILL included:
  the kernel closes the pipe's write end), the deadline passes, or it gets
  SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 (e.g. systemd stopping the
  unit's whole cgroup). Only *after* thawing does it write its JSON report
  into ``report_dir`` (meant for a never-frozen fs such as /run).
* ``disarm`` (sent after the runtime's own thaw) makes it exit 0 and touch
  nothing.

Protocol (newline-delimited, runtime -> watchdog)::

    {"mounts": [...], "deadline_monotonic": <float>, "report_dir": <str|null>}
    {"deadline_monotonic": <float>}      re-arm: new deadline, answered "armed"
    {"leave_frozen": [...]}              mounts someone else froze (EBUSY):
                                          never thaw them
    disarm

watchdog -> runtime: ``armed``, ``error <text>`` (then exit 2), and after a
thaw it performed ``thawed <json>``. CLOCK_MONOTONIC is system-wide, so the
runtime's ``time.monotonic()`` deadline is valid here.

Exit codes: 0 disarmed, 2 bad start (message or mount open), 3 thawed on EOF,
4 thawed at the deadline, 5 thawed on a signal or a garbled message.

Client side (``watchdog_client.WatchdogClient``): every call is bounded;
``leave_frozen`` is the only call made inside the frozen window and is one
non-blocking pipe write. The client's pipe end is O_CLOEXEC, so exec'd
children of the runtime do not keep it open; a fork()ed child that does not
exec would, and would delay the EOF until the deadline.

Known limits: a FIFREEZE stuck in D state holds the superblock; our FITHAW then
waits in its thread (reported "stuck") and lands when the kernel lets it. A
SIGKILL of the watchdog itself is covered only by the runtime's own timer.
If the runtime dies between an EBUSY and its ``leave_frozen`` line, the
watchdog thaws that foreign freeze too (we prefer thawing too much to too
little).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

__all__ = [
    "ARMED",
    "DISARM",
    "ERROR_PREFIX",
    "EXIT_BAD_START",
    "EXIT_DISARMED",
    "EXIT_THAWED_DEADLINE",
    "EXIT_THAWED_EOF",
    "EXIT_THAWED_SIGNAL",
    "FITHAW",
    "THAWED_PREFIX",
    "LineReader",
    "main",
]

FITHAW = 0xC0045878

# Protocol words (see the module docstring).
ARMED = "armed"
DISARM = "disarm"
ERROR_PREFIX = "error "
THAWED_PREFIX = "thawed "

EXIT_DISARMED = 0
EXIT_BAD_START = 2
EXIT_THAWED_EOF = 3
EXIT_THAWED_DEADLINE = 4
EXIT_THAWED_SIGNAL = 5

# How long the watchdog waits for the runtime's first message, and for its own
# thaw threads before it reports and exits (a stuck FITHAW stays in its thread).
FIRST_MESSAGE_TIMEOUT = 10.0
THAW_JOIN_SECONDS = 5.0
REPORT_JOIN_SECONDS = 2.0

_TRIGGER_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


# -- the watchdog process -------------------------------------------------


# Signal numbers received; the handler only records, and the wakeup fd makes
# the select() return (no exception thrown into arbitrary code).
_received: list[int] = []


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)


def _send(fd: int, line: str) -> None:
    # The runtime may be gone (EPIPE) or stopped with a full pipe (EAGAIN):
    # neither may keep the watchdog from thawing.
    with contextlib.suppress(OSError):
        os.write(fd, line.encode("utf-8", "surrogateescape") + b"\n")


class LineReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False

    def feed(self) -> list[str]:
        """Read what is there (the fd is readable); complete lines, sets ``eof``."""
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
            return []
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode("utf-8", "surrogateescape").strip() for line in lines]

    def read_lines(self, timeout: float) -> list[str]:
        """Complete lines that arrive within ``timeout``; sets ``eof``."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        return self.feed() if ready else []


def _thaw_one(mountpoint: str, fd: int, results: dict[str, dict[str, object]]) -> None:
    start = time.monotonic()
    entry: dict[str, object] = {"mountpoint": mountpoint, "result": "thawed", "error": None}
    try:
        fcntl.ioctl(fd, FITHAW, 0)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            entry["result"] = "not_frozen"
        else:
            entry["result"] = "error"
            entry["error"] = f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}"
    entry["seconds"] = round(time.monotonic() - start, 6)
    results[mountpoint] = entry


def _thaw_all(fds: dict[str, int], leave_frozen: set[str]) -> list[dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    threads = []
    for mountpoint, fd in fds.items():
        if mountpoint in leave_frozen:
            results[mountpoint] = {"mountpoint": mountpoint, "result": "left_frozen"}
            continue
        thread = threading.Thread(
            target=_thaw_one, args=(mountpoint, fd, results), name="fithaw", daemon=True
        )
        thread.start()
        threads.append(thread)
    until = time.monotonic() + THAW_JOIN_SECONDS
    for thread in threads:
        thread.join(max(0.0, until - time.monotonic()))
    return [
        results.get(
            mp,
            {
                "mountpoint": mp,
                "result": "stuck",
                "error": f"FITHAW did not return within {THAW_JOIN_SECONDS:g}s",
            },
        )
        for mp in fds
    ]


def _write_report(report_dir: str, report: dict[str, object]) -> None:
    name = f"thaw-watchdog-{report['runtime_pid']}-{int(time.time() * 1000)}.json"
    final = os.path.join(report_dir, name)
    tmp = os.path.join(report_dir, f".{name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, json.dumps(report, indent=2, sort_keys=True).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)


def _parse_first(line: str) -> tuple[list[str], float, str | None]:
    message = json.loads(line)
    if not isinstance(message, dict) or not isinstance(message.get("mounts"), list):
        raise ValueError('expected {"mounts": [...], "deadline_monotonic": ...}')
    report_dir = message.get("report_dir")
    return (
        [str(m) for m in message["mounts"]],
        float(message["deadline_monotonic"]),
        str(report_dir) if report_dir else None,
    )


def _serve(stdin_fd: int, stdout_fd: int) -> int:
    runtime_pid = os.getppid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for signum in _TRIGGER_SIGNALS:
        signal.signal(signum, _on_signal)
    reader = LineReader(stdin_fd)
    pending: list[str] = []
    until = time.monotonic() + FIRST_MESSAGE_TIMEOUT
    while not pending and not reader.eof and not _received and time.monotonic() < until:
        pending = reader.read_lines(until - time.monotonic())
    try:
        mounts, deadline, report_dir = _parse_first(pending[0])
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        _send(stdout_fd, f"{ERROR_PREFIX}bad first message: {exc!r}")
        return EXIT_BAD_START
    fds: dict[str, int] = {}
    for mountpoint in mounts:
        try:
            fds[mountpoint] = os.open(
                mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NONBLOCK
            )
        except OSError as exc:
            _send(stdout_fd, f"{ERROR_PREFIX}cannot open {mountpoint}: {exc.strerror}")
            return EXIT_BAD_START
    leave_frozen: set[str] = set()
    pending = pending[1:]
    reason = ""
    _send(stdout_fd, ARMED)
    while not reason:
        for line in pending:
            if line == DISARM:
                return EXIT_DISARMED
            if not line:
                continue
            try:
                update = json.loads(line)
                if not isinstance(update, dict):
                    raise ValueError(line)
                leave_frozen.update(str(m) for m in update.get("leave_frozen", ()))
                if "deadline_monotonic" in update:
                    deadline = float(update["deadline_monotonic"])
                    _send(stdout_fd, ARMED)
            except (ValueError, TypeError):
                # A garbled message: we can no longer trust what the runtime meant.
                reason = "protocol_error"
                break
        if reason:
            break
        pending = []
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reason = "deadline"
            break
        ready, _, _ = select.select([stdin_fd, wake_r], [], [], remaining)
        if _received:
            reason = f"signal:{signal.Signals(_received[0]).name}"
        elif stdin_fd in ready:
            pending = reader.feed()
            if reader.eof and not pending:
                reason = "eof"
    triggered_at = time.monotonic()
    with contextlib.suppress(OSError):
        os.set_blocking(stdout_fd, False)
    results = _thaw_all(fds, leave_frozen)
    thawed_at = time.monotonic()
    summary = {
        "reason": reason,
        "triggered_at_monotonic": triggered_at,
        "thawed_at_monotonic": thawed_at,
        "mounts": results,
    }
    _send(stdout_fd, THAWED_PREFIX + json.dumps(summary, sort_keys=True))
    if report_dir:
        report = dict(
            summary,
            runtime_pid=runtime_pid,
            watchdog_pid=os.getpid(),
            deadline_monotonic=deadline,
            late_seconds=round(triggered_at - deadline, 6),
            wall_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        # Bounded: report_dir could sit on a filesystem someone else still
        # holds frozen; the thaw is done, so only the report would be lost.
        writer = threading.Thread(
            target=_write_report, args=(report_dir, report), name="report", daemon=True
        )
        writer.start()
        writer.join(REPORT_JOIN_SECONDS)
    if reason == "eof":
        return EXIT_THAWED_EOF
    if reason == "deadline":
        return EXIT_THAWED_DEADLINE
    return EXIT_THAWED_SIGNAL


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m snapshot_runtime.freeze.watchdog`` (no arguments)."""
    del argv
    return _serve(sys.stdin.fileno(), sys.stdout.fileno())


if __name__ == "__main__":
    raise SystemExit(main())
