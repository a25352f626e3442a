"""deploy/systemd/snapshot-sidecar.service: hardened, and the hardening fits the sidecar.

PID 1 here is not systemd, so the unit is judged without running it:
``systemd-analyze security --offline=true`` scores it; the syscalls a real
sidecar makes (traced with strace) must all be in the unit's SystemCallFilter;
and ProtectProc=invisible / no ProcSubset=pid are checked on a real procfs
mounted with those options, against the backstop's liveness test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from functools import cache
from pathlib import Path

import pytest
from snapshot_sidecar.backstop import pid_alive

from tests.support.handlerkit import REPO
from tests.support.requirements import require, require_root
from tests.support.waiting import wait_until

UNIT = REPO / "deploy" / "systemd" / "snapshot-sidecar.service"
# Measured on the unit before this hardening (Type=simple, no syscall filter,
# no ProtectProc): 4.2. A change that loosens the unit fails here.
MAX_EXPOSURE = 2.5


def _analyze() -> str:
    path = shutil.which("systemd-analyze")
    require(path is not None, "needs systemd-analyze (scripts/install-system-deps.sh)")
    assert path is not None
    return path


def _settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[", " ")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_the_unit_scores_at_most_2_5_offline_and_keeps_its_notify_watchdog() -> None:
    proc = subprocess.run(
        [_analyze(), "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, proc.stdout
    settings = _settings()
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert int(settings["WatchdogSec"][0]) >= 60  # above a forwarder step's bounded length
    assert settings["Restart"] == ["always"]
    assert settings["SystemCallFilter"][0] == "@system-service"
    assert settings["SystemCallErrorNumber"] == ["EPERM"]
    assert settings["ProtectProc"] == ["invisible"]
    assert "ProcSubset" not in settings  # see test_proc_subset_pid_would_blind_the_backstop
    # --log-file's directory (the logrotate rule's) is writable under ProtectSystem=strict.
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["LogsDirectory"] == ["snapshot-sidecar"]


@cache
def _expand(group: str) -> frozenset[str]:
    """The syscall names in a systemd syscall group, sub-groups expanded."""
    out = subprocess.run(
        [_analyze(), "syscall-filter", group], capture_output=True, text=True, check=True
    ).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        names |= _expand(item) if item.startswith("@") else {item}
    return frozenset(names)


def _allowed() -> frozenset[str]:
    """What the unit's SystemCallFilter= lines let through (allow list, then ~deny)."""
    allowed: set[str] = set()
    for value in _settings()["SystemCallFilter"]:
        deny = value.startswith("~")
        for item in value.lstrip("~").split():
            names = _expand(item) if item.startswith("@") else {item}
            if deny:
                allowed -= names
            else:
                allowed |= names
    return frozenset(allowed)


def _traced_syscalls(trace: Path) -> set[str]:
    names: set[str] = set()
    for path in trace.parent.glob(trace.name + "*"):
        for line in path.read_text(errors="replace").splitlines():
            match = re.match(r"^(?:\d+\s+)?([a-z_0-9]+)\(", line)
            if match:
                names.add(match.group(1))
    return names


@pytest.mark.root
def test_every_syscall_a_real_sidecar_makes_is_in_the_unit_s_filter(tmp_path: Path) -> None:
    """Start, READY, scrape, watchdog pings, SIGTERM: nothing the filter would refuse."""
    strace = shutil.which("strace")
    require(strace is not None, "needs strace (scripts/install-system-deps.sh)")
    assert strace is not None
    allowed = _allowed()
    assert "ioctl" in allowed  # FIFREEZE/FITHAW: the backstop's reason to exist
    port_file = tmp_path / "sidecar.log"
    trace = tmp_path / "trace"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(60)
    with port_file.open("ab") as out:
        proc = subprocess.Popen(
            [
                strace,
                "-f",
                "-qq",
                "-o",
                str(trace),
                sys.executable,
                "-m",
                "snapshot_sidecar.cli",
                "--spool",
                str(tmp_path / "spool"),
                "--state-dir",
                str(tmp_path / "state"),
                "--listen",
                "127.0.0.1:0",
                "--poll-interval",
                "0.05",
                "--log-level",
                "INFO",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                "WATCHDOG_USEC": "200000",
            },
        )
    try:
        url = wait_until(
            lambda: re.search(r"/metrics on (http://\S+?),", port_file.read_text()),
            60,
            "the sidecar serving",
            detail=port_file.read_text,
        ).group(1)
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as resp:
            assert resp.status == 200
        # READY=1, then watchdog pings: the loops ran for several periods.
        messages = [notify.recv(4096).decode() for _ in range(6)]
        assert "READY=1" in messages[0].split("\n")
        assert messages[1:] == ["WATCHDOG=1"] * 5
        # The sidecar itself (strace's child), as systemd would: its MAINPID.
        main_pid = next(
            int(m.split("=", 1)[1]) for m in messages[0].split("\n") if m.startswith("MAINPID=")
        )
        assert main_pid != proc.pid
        os.kill(main_pid, signal.SIGTERM)
        assert proc.wait(60) == 0, port_file.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    used = _traced_syscalls(trace)
    assert {"ioctl", "sendto", "accept4"} & used  # the trace is real
    assert used - allowed == set(), sorted(used - allowed)


@pytest.mark.root
def test_protect_proc_invisible_keeps_the_backstop_s_liveness_test(tmp_path: Path) -> None:
    """hidepid=invisible (ProtectProc=invisible): root's processes stay visible, so the
    backstop still tells a live runtime (root) from a reused pid."""
    require_root()
    mnt = tmp_path / "proc"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "proc", "-o", "hidepid=invisible", "proc", str(mnt)], check=True)
    child = subprocess.Popen(["sleep", "60"])
    try:
        started = time.time()
        assert pid_alive(child.pid, started, proc=str(mnt))
        # A job that began an hour before this pid's process started: a reused pid.
        assert not pid_alive(child.pid, started - 3600, proc=str(mnt))
    finally:
        child.kill()
        child.wait()
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.root
def test_proc_subset_pid_would_blind_the_backstop(tmp_path: Path) -> None:
    """subset=pid (ProcSubset=pid) hides /proc/stat: without btime a reused pid looks
    alive and the backstop would not thaw. Why the unit leaves ProcSubset unset."""
    require_root()
    mnt = tmp_path / "proc"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "proc", "-o", "hidepid=invisible,subset=pid", "proc", str(mnt)],
        check=True,
    )
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert not (mnt / "stat").exists()
        assert pid_alive(child.pid, time.time() - 3600, proc=str(mnt))  # fooled
    finally:
        child.kill()
        child.wait()
        subprocess.run(["umount", str(mnt)], check=True)
