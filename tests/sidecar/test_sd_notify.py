"""systemd's notify/watchdog protocol, against a NOTIFY_SOCKET the test owns.

PID 1 here is not systemd, so the test plays its part: it binds the datagram
socket, hands its path to the sidecar as systemd would (NOTIFY_SOCKET,
WATCHDOG_USEC, WATCHDOG_PID) and reads what arrives.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from snapshot_sidecar.forwarders import ForwardResult
from snapshot_sidecar.sd_notify import Notifier, WatchdogPinger, watchdog_interval
from snapshot_sidecar.sidecar import Sidecar, SidecarConfig
from snapshot_sidecar.spool_reader import SpoolReader
from snapshot_sidecar.state import Ledger

from tests.sidecar.conftest import Rig
from tests.support.waiting import wait_until


class NotifySocket:
    """The systemd side: a bound SOCK_DGRAM socket, messages collected by a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode())

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def count(self, message: str) -> int:
        return sum(1 for m in self.seen() if message in m.split("\n"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


def test_sidecar_process_sends_ready_watchdog_and_stopping(
    rig: Rig, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    """READY=1 after start, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM."""
    log = tmp_path / "sidecar.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "snapshot_sidecar.cli",
                "--spool",
                str(rig.spool),
                "--state-dir",
                str(rig.state),
                "--listen",
                "127.0.0.1:0",
                "--poll-interval",
                "0.05",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            # WATCHDOG_PID is left out: systemd sets it only for a forking main process.
            env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"},
        )
    try:
        wait_until(lambda: notify_socket.count("READY=1"), 30, "READY=1", detail=log.read_text)
        ready = next(m for m in notify_socket.seen() if "READY=1" in m.split("\n"))
        assert f"MAINPID={proc.pid}" in ready.split("\n")
        assert notify_socket.count("STOPPING=1") == 0
        # 0.4 s watchdog: a ping every 0.2 s while the loops are alive.
        wait_until(
            lambda: notify_socket.count("WATCHDOG=1") >= 5,
            30,
            "five WATCHDOG=1 pings",
            detail=notify_socket.seen,
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_until(lambda: notify_socket.count("STOPPING=1") == 1, 5, "STOPPING=1")
    messages = notify_socket.seen()
    # The order systemd relies on: ready before any ping, stopping last.
    first_ping = next(i for i, m in enumerate(messages) if m == "WATCHDOG=1")
    ready_at = next(i for i, m in enumerate(messages) if "READY=1" in m.split("\n"))
    assert ready_at < first_ping
    assert messages[-1] == "STOPPING=1"


def test_sidecar_without_notify_socket_sends_nothing_and_runs(rig: Rig, tmp_path: Path) -> None:
    """Outside systemd (no NOTIFY_SOCKET) the notifier is off and --once still works."""
    assert not Notifier({}).enabled
    assert Notifier({}).notify("READY=1") is False
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "snapshot_sidecar.cli",
            "--spool",
            str(rig.spool),
            "--state-dir",
            str(rig.state),
            "--once",
        ],
        env={"WATCHDOG_USEC": "400000"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


class BlockingForwarder:
    """A forwarder whose step hangs until released: a worker stuck in a request."""

    name = "stuck"

    def __init__(self) -> None:
        self.hang = threading.Event()
        self.release = threading.Event()
        self.steps = 0

    def step(self) -> ForwardResult:
        self.steps += 1
        if self.hang.is_set():
            self.release.wait(60)
        return ForwardResult.SUCCESS

    def close(self) -> None:
        self.release.set()


def test_a_hung_forwarder_stops_the_pings_and_they_resume_after(
    rig: Rig, notify_socket: NotifySocket
) -> None:
    """The ping proves the loops are alive: a stuck worker stops it, so systemd restarts."""
    forwarder = BlockingForwarder()
    notifier = Notifier({"NOTIFY_SOCKET": str(notify_socket.path)})
    pinger = WatchdogPinger(notifier, 0.05, stale_after=30.0, worker_stale_after=0.5)
    sidecar = Sidecar(
        reader=SpoolReader(rig.spool),
        ledger=Ledger(rig.state),
        forwarders=[forwarder],
        backstop=None,
        config=SidecarConfig(poll_seconds=0.02),
        watchdog=pinger,
    )
    runner = threading.Thread(target=sidecar.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: notify_socket.count("WATCHDOG=1") >= 3, 30, "pings while alive")
        forwarder.hang.set()
        wait_until(lambda: pinger.stale() == ["stuck"], 30, "the stuck worker noticed")
        # A tick already past its staleness check may still send: let two ticks go by.
        start = pinger.ticks
        wait_until(lambda: pinger.ticks >= start + 2, 30, "two more main-loop ticks")
        stopped_at = pinger.pings
        # The main loop keeps passing (its own heartbeat is fresh) but must not ping:
        # ten more ticks, each well past the 0.05 s interval, and no new ping.
        start = pinger.ticks
        wait_until(lambda: pinger.ticks >= start + 10, 30, "ten more main-loop ticks")
        assert pinger.stale() == ["stuck"]
        assert pinger.pings == stopped_at
        wait_until(
            lambda: notify_socket.count("WATCHDOG=1") == stopped_at, 5, "every ping delivered"
        )
        forwarder.hang.clear()
        forwarder.release.set()
        wait_until(lambda: notify_socket.count("WATCHDOG=1") > stopped_at, 30, "pings resume")
    finally:
        forwarder.release.set()
        sidecar.stop.set()
        runner.join(30)
        notifier.close()
    assert not runner.is_alive()


def test_watchdog_interval_is_half_of_watchdog_usec_and_honours_watchdog_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    # Inherited by a child: only the named process pings.
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, pid=42) == 1.0


def test_pinger_pings_at_most_once_per_interval_and_never_when_a_beat_is_stale(
    notify_socket: NotifySocket,
) -> None:
    now = [100.0]
    notifier = Notifier({"NOTIFY_SOCKET": str(notify_socket.path)})
    pinger = WatchdogPinger(
        notifier, 10.0, stale_after=30.0, worker_stale_after=100.0, clock=lambda: now[0]
    )
    pinger.beat("ingest")
    pinger.beat_worker("mirror")
    assert pinger.tick() is True
    now[0] += 5
    assert pinger.tick() is False  # not due yet
    now[0] += 6
    pinger.beat("ingest")
    assert pinger.tick() is True
    now[0] += 40  # the main loop's last beat 40 s ago: past its 30 s
    assert pinger.stale() == ["ingest"]
    assert pinger.tick() is False
    pinger.beat("ingest")
    assert pinger.tick() is True  # the worker's 51 s are within its 100 s
    now[0] += 60  # the worker's last beat 111 s ago
    pinger.beat("ingest")
    assert pinger.stale() == ["mirror"]
    assert pinger.tick() is False
    pinger.beat_worker("mirror")
    assert pinger.tick() is True
    notifier.close()
    wait_until(lambda: notify_socket.count("WATCHDOG=1") == 4, 5, "four pings")
