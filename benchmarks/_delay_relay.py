"""A 50 ms storage on one thread: a TCP relay that holds every client byte for ``latency``.

The benchmarks' default latency injector (``--latency-by relay``). Why not
tests/support/faultproxy.py's threaded proxy (``_delay_proxy``, still
selectable as ``--latency-by faultproxy``): it runs a thread per connection
and a pump thread per upstream, so 64 parallel requests wake 128 threads in
its process, whose CPU competes with the runtime being measured on a 2-core
machine. This relay is one thread and one ``selectors`` loop in a child
process: bytes from a client are forwarded upstream ``latency`` seconds after
they arrived (a request sent in one piece is delayed by exactly that, as
FaultProxy delays each request); answers go back at once. It knows nothing of
HTTP. Each accepted connection gets its own upstream connection.

Run as ``python -m benchmarks._delay_relay TARGET_PORT LATENCY``: prints its
port, runs until its stdin closes.
"""

from __future__ import annotations

import collections
import contextlib
import selectors
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from benchmarks._delay_proxy import latency_child

__all__ = ["delay_relay"]


@dataclass(eq=False)
class _Side:
    sock: socket.socket
    peer: _Side | None = None
    # Bytes to write to this side's socket, in order.
    outgoing: bytearray = field(default_factory=bytearray)
    # Client bytes not yet due upstream: (due time, bytes). Only on upstream sides.
    held: collections.deque[tuple[float, bytes]] = field(default_factory=collections.deque)
    eof: bool = False  # this side's socket has closed its end


class _Relay:
    def __init__(self, target_port: int, latency: float) -> None:
        self._target = ("127.0.0.1", target_port)
        self._latency = latency
        self._sel = selectors.DefaultSelector()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._upstreams: set[_Side] = set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except BlockingIOError:
                return
            upstream = socket.create_connection(self._target, timeout=5.0)
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            near, far = _Side(client), _Side(upstream)
            near.peer, far.peer = far, near
            self._sel.register(client, selectors.EVENT_READ, near)
            self._sel.register(upstream, selectors.EVENT_READ, far)
            self._upstreams.add(far)

    def _close(self, side: _Side) -> None:
        for s in (side, side.peer):
            if s is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(s.sock)
            s.sock.close()
            self._upstreams.discard(s)

    def _flush(self, side: _Side) -> None:
        if side.outgoing:
            try:
                sent = side.sock.send(side.outgoing)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._close(side)
                return
            del side.outgoing[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if side.outgoing else 0)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.modify(side.sock, events, side)

    def _read(self, side: _Side, now: float) -> None:
        try:
            data = side.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        peer = side.peer
        assert peer is not None
        if not data:
            # Either end closed: deliver nothing more (a benchmark's connection
            # ends only after its last answer).
            self._close(side)
            return
        if side in self._upstreams:
            peer.outgoing += data  # an answer: back at once
            self._flush(peer)
        else:
            peer.held.append((now + self._latency, data))

    def _release_due(self, now: float) -> float | None:
        """Move due client bytes to their upstream; the seconds until the next is due."""
        soonest: float | None = None
        for up in list(self._upstreams):
            moved = False
            while up.held and up.held[0][0] <= now:
                up.outgoing += up.held.popleft()[1]
                moved = True
            if moved:
                self._flush(up)
            if up.held:
                wait = up.held[0][0] - now
                soonest = wait if soonest is None else min(soonest, wait)
        return soonest

    def run(self, stop_fd: int) -> None:
        self._sel.register(stop_fd, selectors.EVENT_READ, "stop")
        timeout: float | None = None
        while True:
            for key, mask in self._sel.select(timeout):
                if key.data == "stop":
                    return
                if key.data is None:
                    self._accept()
                    continue
                side: _Side = key.data
                if mask & selectors.EVENT_WRITE:
                    self._flush(side)
                if mask & selectors.EVENT_READ and side.sock.fileno() >= 0:
                    self._read(side, time.monotonic())
            timeout = self._release_due(time.monotonic())


@contextlib.contextmanager
def delay_relay(target_port: int, latency: float) -> Iterator[int]:
    """The relay with ``latency`` per request, in its own process; yields its port."""
    argv = [sys.executable, "-m", "benchmarks._delay_relay", str(target_port), str(latency)]
    with latency_child(argv, "delay relay") as port:
        yield port


def main() -> None:
    relay = _Relay(int(sys.argv[1]), float(sys.argv[2]))
    print(relay.port, flush=True)
    relay.run(sys.stdin.fileno())


if __name__ == "__main__":
    main()
