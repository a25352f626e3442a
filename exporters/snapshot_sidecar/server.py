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

Threads: one per connection (``ThreadingHTTPServer``, daemon threads).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import socket
import ssl
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
            return
        if path != "/metrics":
            self._send(404, b"not found\n", "text/plain; charset=utf-8")
            return
        auth = self.server.auth
        if auth is not None and not auth.check(self.headers.get("Authorization")):
            self._send(
                401,
                b"unauthorized\n",
                "text/plain; charset=utf-8",
                {"WWW-Authenticate": 'Basic realm="snapshot-sidecar"'},
            )
            return
        compress = gzip_accepted(self.headers.get("Accept-Encoding", ""))
        try:
            body, content_type = self.server.exposition.render(
                self.headers.get("Accept", ""), gzip=compress
            )
        except Exception:
            _log.exception("rendering /metrics failed")
            self._send(500, b"error\n", "text/plain; charset=utf-8")
            return
        self._send(200, body, content_type, {"Content-Encoding": "gzip"} if compress else None)

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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    exposition: Exposition
    auth: BasicAuth | None
    tls: ssl.SSLContext | None = None

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
