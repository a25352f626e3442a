"""systemd's notify protocol (sd_notify(3)): READY=1, WATCHDOG=1, STOPPING=1.

Written by hand over the ``NOTIFY_SOCKET`` datagram socket rather than with a
library: the protocol is a stable one-datagram-per-message text format, the
``systemd`` Python bindings need libsystemd headers to build, and the pure
Python ``sdnotify`` package has had no release since 2017. Outside systemd
(no ``NOTIFY_SOCKET``) every call does nothing, so the sidecar runs the same
under a plain shell, a container or the tests.

``WatchdogPinger`` decides *when* to ping: ``WATCHDOG_USEC`` (set by systemd
from ``WatchdogSec=``) halved, as sd_watchdog_enabled(3) recommends, and only
while every registered heartbeat is fresh: a hung worker stops the pings, so
systemd kills and restarts the sidecar.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "WatchdogPinger", "watchdog_interval"]

_log = logging.getLogger("snapshot_sidecar")


class Notifier:
    """Sends sd_notify messages to ``NOTIFY_SOCKET`` (no-op when it is unset)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is an abstract-namespace socket: a leading NUL byte on the wire.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, message: str) -> bool:
        """Send one message; False (logged once per failure) if it could not be sent."""
        if not self._address:
            return False
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._sock.sendto(message.encode("utf-8"), self._address)
            except OSError as exc:
                # systemd gone or the socket replaced: the sidecar's work goes on.
                _log.warning("sd_notify %s not sent: %s", message.split("=", 1)[0], exc)
                return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if not asked.

    ``WATCHDOG_PID``, when set, must be this process (sd_watchdog_enabled(3)):
    a child that inherited the environment must not ping for its parent.
    """
    usec_text = env.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return usec / 2_000_000


class WatchdogPinger:
    """WATCHDOG=1 at most every ``interval`` s, only while every heartbeat is fresh.

    Heartbeats are the sidecar's loops, each after a completed iteration:
    ``beat(name)`` for the main loop, whose pass is short and must come
    within ``stale_after``; ``beat_worker(name)`` for a forwarder thread,
    whose one step may mirror several jobs, each bounded by its blob timeouts
    and retries, so it gets ``worker_stale_after`` (default: ``stale_after``).
    ``tick()`` is called from the main loop and pings when the interval has
    passed and no heartbeat is stale.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval: float,
        *,
        stale_after: float,
        worker_stale_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.interval = interval
        self.stale_after = stale_after
        self.worker_stale_after = stale_after if worker_stale_after is None else worker_stale_after
        self.clock = clock
        self._beats: dict[str, tuple[float, float]] = {}  # name -> (last beat, its limit)
        self._last_ping: float | None = None
        self._reported_stuck: list[str] = []  # logged once per change, not per tick
        self._lock = threading.Lock()
        self.pings = 0
        self.ticks = 0  # tick() calls: how many main-loop passes asked

    def beat(self, name: str) -> None:
        with self._lock:
            self._beats[name] = (self.clock(), self.stale_after)

    def beat_worker(self, name: str) -> None:
        with self._lock:
            self._beats[name] = (self.clock(), self.worker_stale_after)

    def stale(self) -> list[str]:
        """The heartbeats older than their limit (sorted)."""
        now = self.clock()
        with self._lock:
            return sorted(n for n, (t, limit) in self._beats.items() if now - t > limit)

    def tick(self) -> bool:
        """Ping if due and alive; True if a ping was sent."""
        self.ticks += 1
        now = self.clock()
        if self._last_ping is not None and now - self._last_ping < self.interval:
            return False
        stuck = self.stale()
        if stuck != self._reported_stuck:
            self._reported_stuck = stuck
            if stuck:
                _log.error("watchdog: not pinging systemd, stuck: %s", ", ".join(stuck))
        if stuck:
            return False
        self._last_ping = now
        if self.notifier.notify("WATCHDOG=1"):
            self.pings += 1
            return True
        return False
