"""Helpers for the freeze and watchdog tests.

Imported: writer probes that show whether a filesystem is frozen. Run as
``python -m tests.freeze_support <mode> ...``: a stand-in runtime that freezes
real mounts through ``FreezeSession`` and then misbehaves (``drive``), or that
audits its own frozen window (``audit``). Each prints JSON lines on stdout, a
pipe to the test, never a file.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from snapshot_runtime.freeze.mounts import parse_mountinfo, plan_freeze, read_mountinfo
from snapshot_runtime.freeze.session import FreezeSession
from snapshot_runtime.freeze.state import FreezeResult
from tests.support.waiting import wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WRITER = r"""
import os, sys
path = sys.argv[1]
print("ready", flush=True)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, b"x" * 4096)
os.fsync(fd)
os.close(fd)
os.unlink(path)
print("done", flush=True)
"""


def start_writer(directory: str) -> subprocess.Popen[str]:
    """A separate process that creates, writes and fsyncs a file in ``directory``.

    Returns once the child is about to write, so "still running 0.3 s later"
    means "blocked by the freeze", not "still starting".
    """
    path = os.path.join(directory, f"writer-{os.getpid()}-{time.monotonic_ns()}")
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", _WRITER, path], stdout=subprocess.PIPE, text=True, cwd="/"
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


class TimedWrite:
    """A write+fsync in a daemon thread of this process; ``done_at`` when it finished."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, f"probe-{os.getpid()}-{time.monotonic_ns()}")
        self.done_at: float | None = None
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"y" * 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(self.path)
        except OSError as exc:
            self.error = exc
        self.done_at = time.monotonic()

    def wait(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return self.done_at is not None


def wait_frozen(directory: str, proc: subprocess.Popen[str], *, within: float = 20.0) -> TimedWrite:
    """Poll with write+fsync probes until one blocks (the job froze ``directory``)."""

    def blocked_probe() -> TimedWrite | None:
        assert proc.poll() is None, f"the job ended before freezing: {proc.communicate()}"
        probe = TimedWrite(directory)
        if not probe.wait(0.3):
            return probe
        assert probe.error is None, probe.error
        return None

    return wait_until(blocked_probe, within, f"{directory} to freeze")


def writable_within(directory: str, timeout: float) -> bool:
    write = TimedWrite(directory)
    return write.wait(timeout) and write.error is None


def fsfreeze(flag: str, mountpoint: str) -> int:
    return subprocess.run(
        ["fsfreeze", flag, mountpoint], capture_output=True, timeout=10, check=False
    ).returncode


def result_json(result: FreezeResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    data["error"] = result.error.value if result.error else None
    return data


def start_driver(
    mode: str, *args: str, cwd: str = "/"
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start ``python -m tests.freeze_support <mode>``; returns it and its first line."""
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.freeze_support", mode, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"driver exited early with {proc.wait()}"
    return proc, json.loads(line)


def read_json_line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"driver exited with {proc.wait()} without a result"
    return dict(json.loads(line))


# -- driver modes -----------------------------------------------------------


def _emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def _session(args: argparse.Namespace) -> FreezeSession:
    plan = plan_freeze(parse_mountinfo(read_mountinfo()), include=args.mount)
    if len(plan.mounts) != len(args.mount):
        raise SystemExit(f"not all mounts are freezable: {plan.skipped}")
    return FreezeSession(
        plan, timeout_seconds=args.timeout, watchdog_report_dir=args.report_dir or None
    )


def _drive(args: argparse.Namespace) -> None:
    session = _session(args)
    session.prepare()
    frozen = session.freeze()
    _emit(
        {
            "frozen": frozen,
            "pid": os.getpid(),
            "watchdog_pid": session.watchdog_pid,
            "arm_seconds": session.watchdog_arm_seconds,
            "frozen_at": time.monotonic(),
        }
    )
    if args.then == "sleep":
        time.sleep(3600)  # sits frozen until the test kills it: the scenario, not a wait
    else:
        os.kill(os.getpid(), signal.SIGSTOP)
    _emit(result_json(session.thaw()))


_FORBIDDEN_PREFIXES = ("open", "import", "os.", "shutil.", "subprocess.", "socket.", "glob.")


def _audit(args: argparse.Namespace) -> None:
    """I1: cwd and a live log file on the frozen fs; record every effect while frozen."""
    log_dir = os.path.join(args.mount[0], "logs")
    os.makedirs(log_dir, exist_ok=True)
    os.chdir(args.mount[0])
    logging.basicConfig(
        filename=os.path.join(log_dir, "runtime.log"), level=logging.DEBUG, force=True
    )
    logging.getLogger("driver").info("before the freeze")
    events: list[tuple[float, str, str]] = []
    recording = False

    def hook(event: str, hook_args: tuple[object, ...]) -> None:
        if recording and event.startswith(_FORBIDDEN_PREFIXES):
            events.append((time.monotonic(), event, repr(hook_args)[:200]))

    sys.addaudithook(hook)
    original_start: Callable[[threading.Thread], None] = threading.Thread.start

    def recording_start(thread: threading.Thread) -> None:
        if recording:
            events.append((time.monotonic(), "thread.start", thread.name))
        original_start(thread)

    threading.Thread.start = recording_start  # type: ignore[method-assign]
    session = _session(args)
    session.prepare()
    recording = True
    frozen = session.freeze()
    gc_enabled_in_window = gc.isenabled()
    time.sleep(args.hold)  # holding the window open is the scenario, not a wait
    result = session.thaw()
    recording = False
    logging.getLogger("driver").info("after the thaw")
    assert result.first_freeze_at is not None and result.last_thaw_at is not None
    window = [e for e in events if result.first_freeze_at <= e[0] <= result.last_thaw_at]
    _emit(
        {
            "frozen": frozen,
            "result": result_json(result),
            "window_events": window,
            "events_outside_window": len(events) - len(window),
            "gc_enabled_in_window": gc_enabled_in_window,
            "gc_enabled_after": gc.isenabled(),
        }
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.freeze_support")
    parser.add_argument("mode", choices=("drive", "audit"))
    parser.add_argument("--mount", action="append", required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--report-dir", default="")
    parser.add_argument("--then", choices=("sleep", "stop"), default="sleep")
    parser.add_argument("--hold", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.mode == "drive":
        _drive(args)
    else:
        _audit(args)


if __name__ == "__main__":
    main()
