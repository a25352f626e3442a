"""A real TCP proxy on 127.0.0.1 that injects faults into HTTP/1.1 traffic.

Azurite answers correctly and promptly; the faults a storage front end really
produces (slow requests, connection resets, 500/503 answers, black holes) have
to be made on demand. ``FaultProxy`` forwards to a loopback target and parses
the client's request stream (request line, headers, Content-Length or chunked
body) so that, on a keep-alive connection carrying several requests, every
request is counted and can be faulted on its own.

Fault modes, switchable at run time (``match`` limits a fault to requests
whose request line contains that text, e.g. ``"comp=snapshot"``):

* ``set_latency(s)``   wait ``s`` seconds before forwarding each request.
* ``reset_next(n)``    abort the connection with an RST (SO_LINGER 0) instead of
                       answering the next ``n`` requests.
* ``fail_next(n, status=500, error_code=...)``  answer the next ``n`` requests with
                       a canned response without forwarding them (keep-alive kept).
* ``drop(True)``       swallow every request (new or kept-alive connection) and never
                       answer; the connection hangs until the client gives up.

Bounded: daemon threads only, loopback only, ``close()`` stops everything and
the proxy closes itself after ``max_lifetime`` seconds in any case.
Responses are relayed byte for byte; clients never pipeline (requests and the
Azure SDK wait for each response), so a canned answer never interleaves.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FaultProxy", "FaultStats"]

_REASONS = {
    408: "Request Timeout",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_MAX_HEAD = 64 * 1024
_POLL = 0.1


@dataclass(frozen=True)
class FaultStats:
    connections: int
    requests: int
    forwarded: int
    resets: int
    failures: int
    drops: int


@dataclass
class _Counted:
    remaining: int = 0
    match: str | None = None


@dataclass
class _Canned(_Counted):
    status: int = 500
    error_code: str | None = None
    message: str | None = None


class _Closed(Exception):
    """The client went away or the proxy is stopping."""


class FaultProxy:
    """Threaded TCP proxy on 127.0.0.1:0 in front of a loopback ``target``."""

    def __init__(self, target_host: str, target_port: int, *, max_lifetime: float = 120.0) -> None:
        if not (target_host == "localhost" or ipaddress.ip_address(target_host).is_loopback):
            raise ValueError("FaultProxy only forwards to loopback targets")
        self._target = (target_host, target_port)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._latency = 0.0
        self._latency_match: str | None = None
        self._resets = _Counted()
        self._fails = _Canned()
        self._drop = False
        self._drop_match: str | None = None
        self._stats = {k: 0 for k in FaultStats.__dataclass_fields__}
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL)
        self.port: int = self._listener.getsockname()[1]
        self._spawn(self._accept_loop, "faultproxy-accept")
        self._timer = threading.Timer(max_lifetime, self.close)
        self._timer.daemon = True
        self._timer.start()

    # -- control -------------------------------------------------------------

    def endpoint(self, account: str = "devstoreaccount1") -> str:
        return f"http://127.0.0.1:{self.port}/{account}"

    def set_latency(self, seconds: float, *, match: str | None = None) -> None:
        with self._lock:
            self._latency, self._latency_match = seconds, match

    def reset_next(self, n: int = 1, *, match: str | None = None) -> None:
        with self._lock:
            self._resets = _Counted(n, match)

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        error_code: str | None = None,
        message: str | None = None,
        match: str | None = None,
    ) -> None:
        with self._lock:
            self._fails = _Canned(n, match, status, error_code, message)

    def drop(self, enabled: bool = True, *, match: str | None = None) -> None:
        with self._lock:
            self._drop, self._drop_match = enabled, match

    def clear(self) -> None:
        with self._lock:
            self._latency, self._latency_match = 0.0, None
            self._resets, self._fails = _Counted(), _Canned()
            self._drop, self._drop_match = False, None

    @property
    def stats(self) -> FaultStats:
        with self._lock:
            return FaultStats(**self._stats)

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Stop accepting, abort every connection, join the threads (bounded)."""
        self._stop.set()
        self._timer.cancel()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        deadline = time.monotonic() + 5.0
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _count(self, key: str) -> None:
        with self._lock:
            self._stats[key] += 1

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(_POLL)
            self._track(client)
            self._count("connections")
            self._spawn(self._serve, f"faultproxy-conn-{self.port}", client)

    def _decide(self, request_line: str) -> tuple[float, str, _Canned | None]:
        """Latency to add and the action for one request: drop/reset/fail/forward."""
        with self._lock:
            self._stats["requests"] += 1
            latency = self._latency if _matches(self._latency_match, request_line) else 0.0
            if self._drop and _matches(self._drop_match, request_line):
                self._stats["drops"] += 1
                return latency, "drop", None
            if self._resets.remaining > 0 and _matches(self._resets.match, request_line):
                self._resets.remaining -= 1
                self._stats["resets"] += 1
                return latency, "reset", None
            if self._fails.remaining > 0 and _matches(self._fails.match, request_line):
                self._fails.remaining -= 1
                self._stats["failures"] += 1
                return latency, "fail", _Canned(**vars(self._fails))
            self._stats["forwarded"] += 1
            return latency, "forward", None

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        reader = _Reader(client, self._stop)
        try:
            while not self._stop.is_set():
                head = reader.read_head()
                if head is None:
                    return
                request = head + reader.read_body(head)
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                latency, action, canned = self._decide(request_line)
                if latency and self._stop.wait(latency):
                    return
                if action == "drop":
                    reader.hang()
                    return
                if action == "reset":
                    _abort(client)
                    return
                if action == "fail" and canned is not None:
                    head_only = request_line.startswith("HEAD ")
                    client.sendall(_canned_response(canned, head_only=head_only))
                    continue
                if upstream is None:
                    upstream = socket.create_connection(self._target, timeout=5.0)
                    upstream.settimeout(None)
                    self._track(upstream)
                    self._spawn(self._pump, f"faultproxy-pump-{self.port}", upstream, client)
                upstream.sendall(request)
        except (_Closed, OSError):
            return
        finally:
            _close(client)
            if upstream is not None:
                _close(upstream)

    def _pump(self, upstream: socket.socket, client: socket.socket) -> None:
        # Upstream -> client, byte for byte; when either side ends, end both.
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)


class _Reader:
    """Reads whole HTTP requests from a client socket, watching the stop flag."""

    def __init__(self, sock: socket.socket, stop: threading.Event) -> None:
        self._sock = sock
        self._stop = stop
        # A bytearray: appending each recv to bytes copies the whole buffer every
        # time, quadratic in a request's size (a 16 MiB append cost the proxy ~0.3 s).
        self._buf = bytearray()

    def _recv(self) -> bytes:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise _Closed
            return data
        raise _Closed

    def read_head(self) -> bytes | None:
        """The request line and headers, CRLFCRLF included; None at a clean EOF."""
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > _MAX_HEAD:
                raise _Closed
            try:
                self._buf += self._recv()
            except _Closed:
                if self._buf:
                    raise
                return None
        end = self._buf.index(b"\r\n\r\n") + 4
        head = bytes(self._buf[:end])
        del self._buf[:end]
        return head

    def _exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += self._recv()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            self._buf += self._recv()
        end = self._buf.index(b"\r\n") + 2
        line = bytes(self._buf[:end])
        del self._buf[:end]
        return line

    def read_body(self, head: bytes) -> bytes:
        headers = _headers(head)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size_line = self._line()
                body += size_line
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, then the empty line that ends the message.
                    while True:
                        trailer = self._line()
                        body += trailer
                        if trailer == b"\r\n":
                            return body
                body += self._exact(size + 2)
        return self._exact(int(headers.get("content-length", "0") or 0))

    def hang(self) -> None:
        """Swallow whatever arrives until the client closes or the proxy stops."""
        while not self._stop.is_set():
            readable, _, _ = select.select([self._sock], [], [], _POLL)
            if readable:
                try:
                    if not self._sock.recv(65536):
                        return
                except OSError:
                    return


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    out: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def _matches(match: str | None, request_line: str) -> bool:
    return match is None or match in request_line


def _canned_response(canned: _Canned, *, head_only: bool) -> bytes:
    body = b""
    extra = ""
    if canned.error_code:
        message = canned.message or canned.error_code
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f"<Error><Code>{canned.error_code}</Code><Message>{message}</Message></Error>"
        ).encode()
        extra = f"x-ms-error-code: {canned.error_code}\r\nContent-Type: application/xml\r\n"
    head = (
        f"HTTP/1.1 {canned.status} {_REASONS.get(canned.status, 'Fault')}\r\n"
        f"{extra}Content-Length: {len(body)}\r\n"
        "x-ms-request-id: faultproxy\r\nConnection: keep-alive\r\n\r\n"
    ).encode()
    return head if head_only else head + body


def _abort(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN (SO_LINGER on, timeout 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # No shutdown() here: it would send a FIN before the RST.
    with contextlib.suppress(OSError):
        sock.close()


def _close(sock: socket.socket) -> None:
    # shutdown() first: it wakes a thread blocked in recv() on this socket,
    # which close() alone does not do on Linux.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
