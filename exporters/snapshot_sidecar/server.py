"""The HTTP endpoint: ``/metrics`` (Prometheus text or OpenMetrics) and ``/healthz``.

* Default listen address ``127.0.0.1:9756``: loopback only, because a metrics
  port open on every interface of a VM is an exposure nobody asked for. A
  Prometheus scraping over the network needs an explicit ``--listen``
  (and then TLS and basic auth are the sensible companions).
* Format negotiation is prometheus-client's (``choose_encoder``, in
  ``exposition``): a scraper that accepts ``application/openmetrics-text``
  (Prometheus does) gets OpenMetrics, the only format that carries the
  ``trace_id`` exemplars. ``Accept-Encoding: gzip`` is honoured.
* TLS: an ``ssl.SSLContext`` (TLS 1.2+) from ``--tls-cert``/``--tls-key``.
* Basic auth: ``--basic-auth-file`` holds ``user:scrypt$...`` lines
  (``snapshot-sidecar --hash-password`` makes one); verified with scrypt, a
  successful header cached by its SHA-256 so scrapes stay fast. ``/healthz``
  needs no auth and says nothing but "ok".
* What is served is the registry's metrics: label values are bounded enums,
  no task id, VM, URL or SAS ever appears (the catalogue has no such label).

Threads: a plain-HTTP GET whose request head has fully arrived by the time
it is accepted (every scraper's, in practice) is answered on the accept
thread itself, with ``Connection: close``: the body is cached bytes (see
``exposition``), so this is four system calls, and no thread is started and
waited for. Everything else (TLS, basic auth, a request still arriving,
another method, a kept-alive connection's next request) gets a thread per
connection (``ThreadingHTTPServer``, daemon threads), as does the rest of a
response a slow reader has not taken.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import hashlib
import hmac
import logging
import os
import secrets
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import gzip_accepted

from snapshot_sidecar.exposition import Exposition, RegistryExposition

__all__ = [
    "DEFAULT_LISTEN",
    "BasicAuth",
    "MetricsServer",
    "hash_password",
    "parse_listen",
    "tls_context",
]

DEFAULT_LISTEN = "127.0.0.1:9756"
_PLAIN = "text/plain; charset=utf-8"
_REALM = 'Basic realm="snapshot-sidecar"'
# The largest request head answered on the accept thread (a scrape's is ~200 B).
_INLINE_MAX_HEAD = 8192
_log = logging.getLogger("snapshot_sidecar.server")
# scrypt cost: ~50 ms per verification on a small VM; cached after a success.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``; raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen wants HOST:PORT, got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def _verify(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, expected)


class BasicAuth:
    """Users and scrypt hashes from a file of ``user:scrypt$N$r$p$salt$hash`` lines."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = dict(users)
        self._ok: set[bytes] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> BasicAuth:
        users = {}
        for raw in Path(path).read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, stored = line.partition(":")
            if not sep or not stored.startswith("scrypt$"):
                raise ValueError(f"{path}: lines must be user:scrypt$... (see --hash-password)")
            users[user] = stored
        if not users:
            raise ValueError(f"{path}: no users")
        return cls(users)

    def check(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        key = hashlib.sha256(header.encode()).digest()
        with self._lock:
            if key in self._ok:
                return True
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        stored = self._users.get(user)
        if stored is None or not _verify(password, stored):
            return False
        with self._lock:
            if len(self._ok) > 64:
                self._ok.clear()
            self._ok.add(key)
        return True


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30.0  # per-connection socket timeout (idle keep-alive, slow clients)
    # Buffered: the status line, headers and body leave in one send when the
    # handler flushes (unbuffered, the body was a second small write that
    # Nagle's algorithm may hold until the client's delayed ACK on a kept-alive
    # connection, tens of ms).
    wbufsize = 256 * 1024

    def do_GET(self) -> None:
        self._send(*_response(self.server, self.path, self.headers.get))

    def _send(
        self, code: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        _log.debug("%s " + format, self.address_string(), *args)


def _response(
    server: _Server, target: str, header: Callable[[str], str | None]
) -> tuple[int, bytes, str, Mapping[str, str] | None]:
    """(status, body, content type, extra headers) for a GET of ``target``."""
    path = target.split("?", 1)[0]
    if path == "/healthz":
        return 200, b"ok\n", _PLAIN, None
    if path != "/metrics":
        return 404, b"not found\n", _PLAIN, None
    auth = server.auth
    if auth is not None and not auth.check(header("Authorization")):
        return (
            401,
            b"unauthorized\n",
            _PLAIN,
            {"WWW-Authenticate": 'Basic realm="snapshot-sidecar"'},
        )
    compress = gzip_accepted(header("Accept-Encoding") or "")
    try:
        body, content_type = server.exposition.render(header("Accept") or "", gzip=compress)
    except Exception:
        _log.exception("rendering /metrics failed")
        return 500, b"error\n", _PLAIN, None
    return 200, body, content_type, {"Content-Encoding": "gzip"} if compress else None


def parse_simple_get(head: bytes) -> tuple[str, dict[str, str]] | None:
    """(target, headers by lower-case name, first of each) of a plain GET request head.

    ``head`` is everything before the blank line. None for anything else (another
    method, HTTP/0.9, a body, folded or malformed header lines): http.server's
    handler, on a thread, answers those exactly as before.
    """
    lines = head.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "GET" or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            return None
        headers.setdefault(name.lower(), value.strip())
    if "content-length" in headers or "transfer-encoding" in headers:
        return None
    return parts[1], headers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    exposition: Exposition
    auth: BasicAuth | None
    tls: ssl.SSLContext | None = None

    def server_bind(self) -> None:
        super().server_bind()
        # The kernel hands a connection to accept() once its first bytes have
        # arrived (HTTP and TLS clients speak first), so the request head is
        # there when the accept thread looks for it (the fast path below);
        # a connection silent for a second is accepted anyway. Linux only.
        with contextlib.suppress(AttributeError, OSError):
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        # Fast path: a plain-HTTP GET already received in full is answered here,
        # on the accept thread: no thread to start and wait for, no email
        # parser, four system calls. Each system call lets a busy ingest thread
        # take the GIL, and starting a thread per connection was one more wait
        # for it and for a CPU: most of a scrape's p99 while ingesting once the
        # body is cached (issue 15). Only without TLS (handshake) and basic
        # auth (scrypt on a miss), whose costs must stay off the accept thread.
        inline = self.tls is None and self.auth is None and isinstance(request, socket.socket)
        if inline and self._answer_inline(request, client_address):  # type: ignore[arg-type]
            return
        super().process_request(request, client_address)

    def _answer_inline(self, sock: socket.socket, client_address: Any) -> bool:
        """Answer one waiting GET and close (True); False: not all here, or not simple."""
        try:
            head = sock.recv(_INLINE_MAX_HEAD, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return False
        end = head.find(b"\r\n\r\n")
        parsed = parse_simple_get(head[:end]) if end >= 0 else None
        if parsed is None:
            return False  # a thread waits for the rest (or answers what this is)
        target, headers = parsed
        try:
            sock.recv(end + 4, socket.MSG_DONTWAIT)  # consume what was peeked
        except OSError:
            self.shutdown_request(sock)
            return True
        code, body, content_type, extra = _response(self, target, lambda n: headers.get(n.lower()))
        _log.debug('%s "GET %s" %d %d (inline)', client_address[0], target, code, len(body))
        lines = [
            f"HTTP/1.1 {code} {_Handler.responses[code][0]}",
            f"Server: {_Handler.server_version} {_Handler.sys_version}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in (extra or {}).items()),
            "Connection: close",  # the next request comes on a new connection
            "",
            "",
        ]
        response = "\r\n".join(lines).encode("latin-1") + body
        try:
            sent = sock.send(response, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.shutdown_request(sock)
            return True
        if sent == len(response):
            self.shutdown_request(sock)
        else:
            # The socket buffer is full (a slow reader): never block the accept
            # thread on it; the rest goes on a thread, bounded by the timeout.
            threading.Thread(
                target=self._send_rest, args=(sock, response[sent:]), daemon=True
            ).start()
        return True

    def _send_rest(self, sock: socket.socket, rest: bytes) -> None:
        try:
            sock.settimeout(_Handler.timeout)
            sock.sendall(rest)
        except OSError as exc:
            _log.debug("sending /metrics failed: %s", exc)
        finally:
            self.shutdown_request(sock)

    def finish_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        # TLS handshakes happen here, on the connection's own thread, bounded
        # by the handler timeout: a client that stalls cannot hold up accept().
        if self.tls is not None and isinstance(request, socket.socket):
            request.settimeout(_Handler.timeout)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                _log.debug("TLS handshake with %s failed: %s", client_address, exc)
                return
        super().finish_request(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves an exposition (or a plain registry); ``start()`` runs it on a daemon thread."""

    def __init__(
        self,
        exposition: Exposition | CollectorRegistry,
        listen: str = DEFAULT_LISTEN,
        *,
        tls: ssl.SSLContext | None = None,
        auth: BasicAuth | None = None,
    ) -> None:
        host, port = parse_listen(listen)
        cls = _Server6 if ":" in host else _Server
        self._server = cls((host, port), _Handler, bind_and_activate=True)
        if isinstance(exposition, CollectorRegistry):
            exposition = RegistryExposition(exposition)
        self._server.exposition = exposition
        self._server.auth = auth
        self._server.tls = tls
        self.tls = tls is not None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
