"""The thaw watchdog (I4): a separate process thaws when the runtime cannot.

Runtime stand-ins are child processes (``python -m tests.freeze_support drive``)
freezing real loop filesystems; the test kills or stops them and checks which
path thawed the filesystem (EOF, deadline) and that it accepts a write+fsync
again. How fast the watchdog arms is measured in benchmarks/watchdog_arm.py;
time bounds here only tell one path from another, with seconds of slack.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from snapshot_runtime.core.errors import ErrorCode, FreezeError
from snapshot_runtime.freeze import watchdog as watchdog_module
from snapshot_runtime.freeze.mounts import parse_mountinfo, plan_freeze, read_mountinfo
from snapshot_runtime.freeze.session import FreezeSession
from snapshot_runtime.freeze.watchdog import (
    EXIT_BAD_START,
    EXIT_DISARMED,
    EXIT_THAWED_DEADLINE,
    EXIT_THAWED_EOF,
    EXIT_THAWED_SIGNAL,
)
from snapshot_runtime.freeze.watchdog_client import WatchdogClient
from tests.freeze_support import (
    REPO,
    TimedWrite,
    fsfreeze,
    read_json_line,
    start_driver,
    writable_within,
)
from tests.support.loopfs import loop_filesystem
from tests.support.processes import pid_alive, stop_process
from tests.support.waiting import wait_until


def _gone(pid: int, timeout: float = 3.0) -> bool:
    """Exited (missing, or a zombie waiting for whoever reaps orphans) within ``timeout``."""
    wait_until(lambda: not pid_alive(pid), timeout, f"pid {pid} to exit")
    return True


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def _reports(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("thaw-watchdog-*.json"))]


def _kill(proc: subprocess.Popen[str]) -> None:
    stop_process(proc, sig=signal.SIGKILL, grace=5)


# -- the protocol, no freezing --------------------------------------------------


def test_watchdog_arms_and_disarms(tmp_path) -> None:
    for _ in range(3):
        client = WatchdogClient([str(tmp_path)], report_dir=str(tmp_path))
        arm_seconds = client.start(time.monotonic() + 60)
        assert arm_seconds > 0 and client.alive()  # start() returned because it is armed
        pid = client.pid
        outcome = client.disarm()
        assert outcome.exit_code == EXIT_DISARMED and not outcome.thawed
        assert pid is not None and _gone(pid)
    assert _reports(tmp_path) == []  # disarmed: no report


def test_eof_without_disarm_thaws_and_reports(tmp_path) -> None:
    client = WatchdogClient([str(tmp_path)], report_dir=str(tmp_path))
    client.start(time.monotonic() + 60)
    outcome = client.release(timeout=3)
    assert outcome.exit_code == EXIT_THAWED_EOF and outcome.thawed and outcome.reason == "eof"
    # Nothing was frozen: EINVAL as root ("not_frozen"), EPERM otherwise.
    assert outcome.mounts[0]["result"] in {"not_frozen", "error"}
    (report,) = _reports(tmp_path)
    assert report["reason"] == "eof" and report["runtime_pid"] == os.getpid()
    assert report["late_seconds"] < 0  # EOF came long before the deadline


def test_deadline_fires_without_the_runtime(tmp_path) -> None:
    client = WatchdogClient([str(tmp_path)])
    client.start(time.monotonic() + 0.3)
    wait_until(lambda: not client.alive(), 10, "the watchdog to act")  # without being told
    outcome = client.disarm()  # too late: it has already acted
    assert outcome.exit_code == EXIT_THAWED_DEADLINE and outcome.reason == "deadline"


def test_rearm_moves_the_deadline(tmp_path) -> None:
    client = WatchdogClient([str(tmp_path)])
    first_deadline = time.monotonic() + 1.0
    client.start(first_deadline)
    client.rearm(time.monotonic() + 60)
    # This sleep is the test, not a wait: let the first deadline pass to prove
    # that nothing happens at it.
    time.sleep(max(0.0, first_deadline + 0.5 - time.monotonic()))
    assert client.alive()  # the first deadline has passed and it did not fire
    assert client.disarm().exit_code == EXIT_DISARMED


def test_bad_start_is_reported(tmp_path) -> None:
    with pytest.raises(FreezeError) as info:
        WatchdogClient([str(tmp_path / "missing")]).start(time.monotonic() + 60)
    assert info.value.code is ErrorCode.FS_FREEZE_FAILED and "cannot open" in info.value.message
    proc = subprocess.run(
        [sys.executable, "-I", "-S", watchdog_module.__file__],
        input="not json\n",
        capture_output=True,
        text=True,
        timeout=10,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == EXIT_BAD_START and proc.stdout.startswith("error ")


# -- guarding real freezes --------------------------------------------------------


@pytest.mark.root
def test_sigkill_of_the_runtime_thaws_on_eof(tmp_path) -> None:
    with loop_filesystem("ext4") as fs:
        proc, info = start_driver(
            "drive", "--mount", fs.mountpoint, "--timeout", "30", "--report-dir", str(tmp_path)
        )
        try:
            assert info["frozen"]
            write = TimedWrite(fs.mountpoint)
            assert not write.wait(0.3), "the driver's freeze did not block a write"
            killed_at = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
            assert write.wait(5) and write.error is None
            assert write.done_at is not None
            latency = write.done_at - killed_at
        finally:
            _kill(proc)
        assert _gone(info["watchdog_pid"])
    assert latency < 15  # on EOF, not at the 30 s deadline
    (report,) = _reports(tmp_path)
    assert report["reason"] == "eof" and report["runtime_pid"] == info["pid"]
    assert report["watchdog_pid"] == info["watchdog_pid"]
    assert report["mounts"] == [
        {
            "mountpoint": fs.mountpoint,
            "result": "thawed",
            "error": None,
            "seconds": pytest.approx(0, abs=1),
        }
    ]
    assert report["thawed_at_monotonic"] >= report["triggered_at_monotonic"] >= killed_at


@pytest.mark.root
def test_watchdog_deadline_when_the_runtime_is_stopped(tmp_path) -> None:
    with loop_filesystem("xfs") as fs:
        proc, info = start_driver(
            "drive",
            "--mount",
            fs.mountpoint,
            "--timeout",
            "1",
            "--then",
            "stop",
            "--report-dir",
            str(tmp_path),
        )
        try:
            assert info["frozen"]
            write = TimedWrite(fs.mountpoint)
            assert write.wait(15) and write.done_at is not None
            assert _state(proc.pid) == "T"  # still stopped: the watchdog did it
            continued_at = time.monotonic()
            os.kill(proc.pid, signal.SIGCONT)
            result = read_json_line(proc)
            assert proc.wait(5) == 0
        finally:
            _kill(proc)
    assert result["thawed_by"] == "watchdog" and result["timed_out"]
    assert result["error"] == ErrorCode.FS_FREEZE_TIMEOUT.value and not result["ok"]
    assert result["window_seconds"] >= 1.0  # not before the deadline
    assert result["mounts"][0]["probe_ok"] is True
    (report,) = _reports(tmp_path)
    assert report["reason"] == "deadline" and report["late_seconds"] >= 0
    # The window ends at the watchdog's thaw, not at the runtime's after SIGCONT:
    # exactly the watchdog's own timestamp, and the watchdog acted (before its
    # FITHAW, which our write waited for) while the runtime was still stopped.
    # (Its thawed_at is read after the ioctl returns, so a loaded machine can
    # schedule it after our write completes: compare the trigger, not that.)
    assert result["last_thaw_at"] == report["thawed_at_monotonic"]
    assert report["triggered_at_monotonic"] < write.done_at < continued_at
    assert report["mounts"][0]["result"] == "thawed"


@pytest.mark.root
def test_normal_thaw_disarms_without_a_report(tmp_path) -> None:
    with loop_filesystem("ext4") as fs:
        plan = plan_freeze(parse_mountinfo(read_mountinfo()), include=[fs.mountpoint])
        with FreezeSession(plan, watchdog_report_dir=str(tmp_path)) as session:
            session.prepare()
            pid = session.watchdog_pid
            assert pid is not None and _state(pid) in {"S", "R"}
            assert session.freeze()
            result = session.thaw()
    assert result.ok and result.thawed_by == "runtime"
    outcome = session.watchdog_outcome
    assert outcome is not None and outcome.exit_code == EXIT_DISARMED and not outcome.thawed
    assert _gone(pid) and _reports(tmp_path) == []


@pytest.mark.root
def test_watchdog_leaves_a_foreign_freeze_alone(tmp_path) -> None:
    with loop_filesystem("ext4") as theirs, loop_filesystem("xfs") as ours:
        assert fsfreeze("-f", theirs.mountpoint) == 0
        try:
            proc, info = start_driver(
                "drive",
                "--mount",
                theirs.mountpoint,
                "--mount",
                ours.mountpoint,
                "--report-dir",
                str(tmp_path),
            )
            try:
                assert info["frozen"]
                os.kill(proc.pid, signal.SIGKILL)
                assert writable_within(ours.mountpoint, 1.0)
            finally:
                _kill(proc)
            assert _gone(info["watchdog_pid"])
            assert not writable_within(theirs.mountpoint, 0.3)
        finally:
            was_frozen = fsfreeze("-u", theirs.mountpoint) == 0
    assert was_frozen, "the watchdog thawed a freeze that was not the runtime's"
    (report,) = _reports(tmp_path)
    results = {m["mountpoint"]: m["result"] for m in report["mounts"]}
    assert results == {theirs.mountpoint: "left_frozen", ours.mountpoint: "thawed"}


@pytest.mark.root
def test_sigterm_to_the_watchdog_thaws_and_the_runtime_notices() -> None:
    with loop_filesystem("ext4") as fs:
        plan = plan_freeze(parse_mountinfo(read_mountinfo()), include=[fs.mountpoint])
        with FreezeSession(plan, timeout_seconds=30) as session:
            session.prepare()
            assert session.freeze()
            assert session.watchdog_pid is not None
            os.kill(session.watchdog_pid, signal.SIGTERM)
            assert writable_within(fs.mountpoint, 1.0)
            result = session.thaw()
    outcome = session.watchdog_outcome
    assert outcome is not None and outcome.exit_code == EXIT_THAWED_SIGNAL
    assert outcome.reason == "signal:SIGTERM"
    assert result.thawed_by == "watchdog" and not result.timed_out and not result.ok
    assert result.error is ErrorCode.FS_FREEZE_FAILED  # the window was cut short
    assert "before the runtime's thaw" in (result.error_message or "")


@pytest.mark.root
def test_no_freeze_without_an_armed_watchdog() -> None:
    with loop_filesystem("ext4") as fs:
        plan = plan_freeze(parse_mountinfo(read_mountinfo()), include=[fs.mountpoint])
        with FreezeSession(plan) as session:
            session.prepare()
            assert session.watchdog_pid is not None
            os.kill(session.watchdog_pid, signal.SIGKILL)
            assert _gone(session.watchdog_pid)
            assert not session.freeze()
            assert not session.frozen and writable_within(fs.mountpoint, 1.0)
            result = session.thaw()
    assert result.error is ErrorCode.FS_FREEZE_FAILED
    assert "not freezing unguarded" in (result.error_message or "")
    assert not result.mounts[0].frozen and result.window_seconds == 0


def test_a_garbled_thaw_report_never_makes_thaw_raise() -> None:
    from snapshot_runtime.freeze.watchdog_client import _thawed_outcome

    for payload in ("{not json", "[]", '{"reason": "eof"}', '{"thawed_at_monotonic": "x"}'):
        outcome = _thawed_outcome(payload, 3, "")
        assert outcome.thawed and outcome.exit_code == 3
    good = _thawed_outcome('{"reason": "eof", "thawed_at_monotonic": 1.5, "mounts": [{}]}', 3, "")
    assert (good.reason, good.thawed_at, good.mounts) == ("eof", 1.5, ({},))
