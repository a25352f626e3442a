"""The guest path's Snapshot Blob requests without the SDK: prepared before the freeze, sent in it.

``PreparedSnapshot`` is one disk's snapshot request: its request bytes
(target, headers, request id) built and its connection opened (TLS
included) before the freeze. ``probe`` is its preflight (Get Blob
Properties, a HEAD, on that same connection: it warms it too). ``send_all``
writes every prepared request and reads every answer from the calling
thread alone, with ``poll``: one wave, no thread hand-off per disk.
``PreparedSnapshot.send`` is the same request, blocking, for one disk on a
worker thread: a retry, or a first attempt whose connection was dropped
while idle (both connect again).

Why not azure-storage-blob at all on this path (when no proxy is
configured, ``blob_policy.proxy_configured``): importing it (azure-core, requests,
urllib3) is ~35 MiB of the guest job's peak RSS, 52 MiB against a 35 MiB
goal (docs/startup.md, benchmarks/startup.py). Its retries are
``blob_retry.call_with_retries`` with ``blob_rules.WIRE_ERRORS``: the same
policy, the same classification and message text as the SDK's requests.
With a proxy, or for a disk this path cannot express (non-ASCII metadata),
the SDK sends every request (``blob_requests``).

Why not the SDK in the window: through it a request costs 1.5-2 ms of CPU
under the GIL (pipeline policies, serialisation, ``requests``/``urllib3``).
Why not one thread per disk either: 64 threads each waking for one answer
cost the runtime 20-28 ms of CPU in a 64-disk window on 2 cores, against
8-9 ms from one thread (benchmarks/frozen_window.py, 50 ms storage latency).

Contracts:

* I1: ``send_all`` opens nothing, resolves nothing, starts no thread and logs
  nothing: it writes prepared bytes on connections opened before the freeze
  and reads the answers. A connection the peer closed while idle is not
  reopened there (``SendOutcome.sent`` False): the caller sends that one on a
  worker, which connects again as a retry would.
* Bounded: ``send_all`` returns by ``deadline``; each request waits at most
  ``request_timeout`` (then ``TimeoutError``, which ``classify`` calls a
  retryable timeout).
* The answer is read to its end (``Content-Length``, chunked, or to EOF when
  it has neither), across partial reads and partial writes; TLS connections
  are driven non-blocking too (``SSLWantRead``/``SSLWantWrite`` wait for the
  socket, decrypted bytes still buffered in the TLS layer are drained).
* Errors are what ``blob_rules.classify_wire`` (and ``blob_errors.classify``)
  read, as from the SDK: ``SnapshotAnswerError`` for an error answer (its
  status, its error code, the SDK's message and exception name for it),
  ``OSError`` from the socket, ``MalformedAnswerError`` (a
  ``ConnectionError``, named as the SDK's ``ServiceResponseError``) for a
  malformed or truncated answer.
* I5: no SAS in any message this module makes: they name no URL.
"""

from __future__ import annotations

import contextlib
import functools
import re
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import certifi

from snapshot_runtime.snapshot.blob_policy import (
    SDK_DEFAULT_API_VERSION,
    BlobPolicy,
    proxy_configured,
    sas_token,
)
from snapshot_runtime.snapshot.blob_rules import StorageAnswerError

__all__ = [
    "MalformedAnswerError",
    "PreparedSnapshot",
    "SendOutcome",
    "SnapshotAnswerError",
    "prepared_snapshot",
    "send_all",
]

# Bounds on one answer: Snapshot Blob answers a few hundred bytes of head and
# an empty body (an error: a short XML document).
_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024
_READ_SIZE = 65536
_XML_MESSAGE = re.compile(rb"<Message>(.*?)</Message>", re.DOTALL)
_XML_CODE = re.compile(rb"<Code>(.*?)</Code>", re.DOTALL)


class SnapshotAnswerError(StorageAnswerError):
    """A prepared request (Snapshot Blob, or its preflight) answered with an error.

    Carries ``status_code``, ``error_code``, the SDK's message and the SDK's
    exception name for the same answer, so both classifiers treat it exactly
    like the SDK's exception.
    """


class MalformedAnswerError(ConnectionError):
    """A malformed or truncated answer: the SDK raises ``ServiceResponseError`` (transient)."""

    sdk_name = "ServiceResponseError"


def _malformed(why: str) -> MalformedAnswerError:
    return MalformedAnswerError(f"malformed answer to Snapshot Blob: {why}")


class _Answer:
    """One HTTP/1.1 answer, parsed incrementally from the bytes fed to it. Pure.

    ``feed`` returns True once the answer is complete; ``feed_eof`` says the
    peer closed. Interim 1xx answers are skipped. Raises ``MalformedAnswerError``
    for a malformed, oversized or truncated answer. ``head_only``: the answer
    to a HEAD (its head is all of it, whatever Content-Length says).
    """

    def __init__(self, *, head_only: bool = False) -> None:
        self._head_only = head_only
        self._buf = bytearray()
        self._mode = "head"  # head -> length | chunked | eof -> done
        self._left = 0  # length mode: body bytes still to come
        self._body = bytearray()
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.will_close = False
        self.done = False

    @property
    def body(self) -> bytes:
        return bytes(self._body)

    def feed(self, data: bytes) -> bool:
        self._buf += data
        while not self.done:
            progressed = self._step()
            if not progressed:
                break
        return self.done

    def feed_eof(self) -> None:
        if self.done:
            return
        if self._mode == "eof":
            self._body += self._buf
            self._buf.clear()
            self.done = True
            return
        raise _malformed("the connection closed before the answer was complete")

    def _step(self) -> bool:
        if self._mode == "head":
            return self._head()
        if self._mode == "length":
            take = min(self._left, len(self._buf))
            self._body += self._buf[:take]
            del self._buf[:take]
            self._left -= take
            self.done = self._left == 0
            return self.done
        if self._mode == "chunked":
            return self._chunk()
        # eof: everything until the peer closes
        self._body += self._buf
        self._buf.clear()
        if len(self._body) > _MAX_BODY:
            raise _malformed("body too large")
        return False

    def _head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > _MAX_HEAD:
                raise _malformed("head too large")
            return False
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise _malformed("bad status line")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _malformed("bad header line")
            headers[name.lower()] = value.strip()
        status = int(code)
        if 100 <= status < 200:
            if status == 101:
                raise _malformed("unexpected 101")
            return True  # an interim answer: the real one follows
        self.status, self.reason, self.headers = status, reason.strip(), headers
        connection = headers.get("connection", "").lower()
        self.will_close = "close" in connection or (
            version == "HTTP/1.0" and "keep-alive" not in connection
        )
        if status in (204, 304) or self._head_only:
            self.done = True
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._mode = "chunked"
        elif "content-length" in headers:
            value = headers["content-length"]
            if not value.isdigit() or int(value) > _MAX_BODY:
                raise _malformed("bad Content-Length")
            self._mode, self._left = "length", int(value)
            self.done = self._left == 0
        else:
            self._mode, self.will_close = "eof", True
        return True

    def _chunk(self) -> bool:
        line_end = self._buf.find(b"\r\n")
        if line_end < 0:
            if len(self._buf) > _MAX_HEAD:
                raise _malformed("bad chunk")
            return False
        size_text = bytes(self._buf[:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _malformed("bad chunk size") from None
        if size == 0:
            # The last chunk, then trailer lines, then an empty line.
            rest = self._buf[line_end + 2 :]
            if rest.startswith(b"\r\n") or rest.find(b"\r\n\r\n") >= 0:
                self._buf.clear()
                self.done = True
            return self.done
        if len(self._body) + size > _MAX_BODY:
            raise _malformed("body too large")
        start = line_end + 2
        if len(self._buf) < start + size + 2:
            return False
        if self._buf[start + size : start + size + 2] != b"\r\n":
            raise _malformed("bad chunk")
        self._body += self._buf[start : start + size]
        del self._buf[: start + size + 2]
        return True

    def error(self) -> SnapshotAnswerError:
        """The error the SDK raises for this answer, as ``SnapshotAnswerError``.

        The SDK's message (process_storage_error): the XML ``<Message>`` and
        ``<Code>`` when the answer has a body, else azure-core's
        ``Operation returned an invalid status '<reason>'`` and the
        ``x-ms-error-code`` header (the bare reason without a code); then
        ``ErrorCode:<code>``.
        """
        found = _XML_MESSAGE.search(self._body)
        code_found = _XML_CODE.search(self._body)
        code = (
            code_found.group(1).decode("utf-8", "replace").strip()
            if code_found
            else self.headers.get("x-ms-error-code")
        ) or None
        if found:
            text = found.group(1).decode("utf-8", "replace").strip()
        elif code:
            text = f"Operation returned an invalid status '{self.reason}'"
        else:  # no code anywhere: the SDK takes the reason phrase as the message
            text = self.reason
        return SnapshotAnswerError(self.status, code, f"{text}\nErrorCode:{code}")

    def value(self) -> dict[str, Any]:
        """``{"snapshot": stamp}`` for a 201; raises ``SnapshotAnswerError`` otherwise."""
        if self.status != 201:
            raise self.error()
        return {"snapshot": self.headers.get("x-ms-snapshot")}


def _dropped(sock: socket.socket) -> bool:
    """The idle connection was closed by the peer (or holds stray bytes): not reusable.

    One poll, no I/O when the socket is quiet. Readable can also mean a TLS
    1.3 session ticket arrived after the handshake: a non-blocking read
    consumes it and finds no application data (``SSLWantReadError``).
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(1)
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)
    return True  # EOF, or bytes nobody asked for


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # The SDK's CA bundle (requests uses certifi's), loaded once per process
    # (~10 ms of CPU each time), before the freeze.
    return ssl.create_default_context(cafile=certifi.where())


class PreparedSnapshot:
    """One disk's Snapshot Blob request, prepared before the freeze, sent in it.

    ``open`` (before the freeze) connects, TLS included. ``send_all`` (the
    window's way) or ``send`` (blocking, one disk on a worker) writes the
    prepared bytes and reads the answer. Use from one thread at a time.

    ``probe`` (before the freeze) is the disk's preflight on the same
    connection: Get Blob Properties, as the SDK's ``get_blob_properties``.

    ``prepared_snapshot`` returns None where this path does not apply (a
    proxy, non-ASCII metadata): the SDK then sends every attempt.
    """

    def __init__(
        self,
        sas_url: str,
        *,
        api_version: str,
        request_id: str,
        metadata: dict[str, str],
        server_timeout: int,
        connect_timeout: float,
    ) -> None:
        parts = urlsplit(sas_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) blob URL")
        # A container and a blob name, as the SDK's from_blob_url requires; a
        # URL refused here goes to the SDK, which words the failure.
        segments = parts.path.strip("/").split("/")
        if len(segments) < 2 or not segments[-1] or not segments[-2]:
            raise ValueError("no container and blob name in the URL")
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        default_port = 443 if self._tls else 80
        self._port = parts.port or default_port
        self._connect_timeout = connect_timeout
        token = sas_token(parts.query)
        query = f"&{token}" if token else ""
        target = f"{parts.path}?comp=snapshot&timeout={server_timeout}{query}"
        # The Host header as http.client writes it: the port only when not the default.
        host = f"[{self._host}]" if ":" in self._host else self._host
        authority = host if self._port == default_port else f"{host}:{self._port}"
        headers = {
            "Host": authority,
            "Accept-Encoding": "identity",
            "x-ms-version": api_version,
            "x-ms-client-request-id": request_id,
            "Content-Length": "0",
        }
        headers.update({f"x-ms-meta-{k}": v for k, v in metadata.items()})
        if any(c in k + v for k, v in headers.items() for c in "\r\n\0") or " " in target:
            raise ValueError("a header or the target would break the request")
        head = f"PUT {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.wire = (head + "\r\n").encode("ascii")
        # The preflight's HEAD: the SDK's get_blob_properties, same version and query.
        self._probe_target = f"{parts.path}?timeout={server_timeout}{query}"
        self._probe_headers = {k: headers[k] for k in ("Host", "Accept-Encoding", "x-ms-version")}
        self.sock: socket.socket | None = None

    @property
    def tls(self) -> bool:
        return self._tls

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self._host, self._port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls:
                sock = _tls_context().wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise
        return sock

    def open(self) -> None:
        """Connect (and handshake) now, before the freeze. Raises OSError."""
        self.close()
        self.sock = self._connect(self._connect_timeout)

    def usable(self) -> bool:
        """The connection opened before the freeze is still there (one poll, no I/O)."""
        if self.sock is not None and _dropped(self.sock):
            self.close()
        return self.sock is not None

    def send(self, budget: float) -> dict[str, Any]:
        """Send the request blocking, wait at most ``budget`` s per read; ``{"snapshot": stamp}``.

        Opens a new connection when the prepared one is gone (what a retry
        would need too).
        """
        return self._exchange(self.wire, budget, head_only=False).value()

    def probe(self, budget: float, request_id: str) -> None:
        """Get Blob Properties (HEAD) on this connection, blocking; before the freeze.

        Returns for a 200; raises ``SnapshotAnswerError`` (the SDK's message
        and exception name for the answer), ``OSError`` or ``MalformedAnswerError``.
        """
        headers = {**self._probe_headers, "x-ms-client-request-id": request_id}
        if any(c in request_id for c in "\r\n\0"):
            raise ValueError("a header would break the request")
        head = f"HEAD {self._probe_target} HTTP/1.1\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        answer = self._exchange((head + "\r\n").encode("ascii"), budget, head_only=True)
        if answer.status != 200:
            raise answer.error()

    def _exchange(self, wire: bytes, budget: float, *, head_only: bool) -> _Answer:
        try:
            if not self.usable():
                self.sock = self._connect(min(self._connect_timeout, budget))
            sock = self.sock
            assert sock is not None
            sock.settimeout(budget)
            sock.sendall(wire)
            answer = _Answer(head_only=head_only)
            while True:
                data = sock.recv(_READ_SIZE)
                if not data:
                    answer.feed_eof()
                    break
                if answer.feed(data):
                    break
        except (OSError, MalformedAnswerError):
            self.close()
            raise
        if answer.will_close:
            self.close()
        return answer

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


def prepared_snapshot(
    sas_url: str,
    *,
    request_id: str,
    metadata: dict[str, str],
    policy: BlobPolicy,
    api_version: str | None = None,
) -> PreparedSnapshot | None:
    """A ``PreparedSnapshot`` for this URL, or None where only the SDK applies.

    ``api_version``: None sends the policy's, else the SDK's default.
    """
    if proxy_configured():
        return None  # the SDK's session knows the proxy; this path does not
    if not all((k + v).isascii() for k, v in metadata.items()):
        return None  # the SDK encodes what a raw header cannot carry
    try:
        return PreparedSnapshot(
            sas_url,
            api_version=api_version or policy.api_version or SDK_DEFAULT_API_VERSION,
            request_id=request_id,
            metadata=metadata,
            server_timeout=max(1, int(policy.request_timeout)),
            connect_timeout=policy.connect_timeout,
        )
    except ValueError:
        return None


@dataclass(frozen=True)
class SendOutcome:
    """One prepared request's outcome in ``send_all``.

    - ``position``: its index in the sequence given to ``send_all``.
    - ``sent``: False when its connection was gone before anything was
      written (nothing sent; send it on a worker, which connects again).
    - ``value``: ``{"snapshot": stamp}`` for a 201; else None.
    - ``error``: what ``PreparedSnapshot.send`` would have raised; else None.
    - ``ended_at``: the ``clock()`` reading when it was settled.
    """

    position: int
    sent: bool
    value: dict[str, Any] | None
    error: BaseException | None
    ended_at: float


@dataclass
class _InFlight:
    position: int
    prepared: PreparedSnapshot
    sock: socket.socket
    out: memoryview
    ends_at: float
    answer: _Answer
    # A TLS write that must be retried, with the same bytes, once readable.
    write_wants_read: bool = False


_IN = select.POLLIN | select.POLLPRI
_OUT = select.POLLOUT
_BROKEN = select.POLLERR | select.POLLHUP | select.POLLNVAL


def _pump_write(flight: _InFlight) -> None:
    """Write what the socket takes now. Raises OSError (not BlockingIOError)."""
    flight.write_wants_read = False
    while flight.out:
        try:
            n = flight.sock.send(flight.out)
        except ssl.SSLWantReadError:
            flight.write_wants_read = True
            return
        except (ssl.SSLWantWriteError, BlockingIOError):
            return
        flight.out = flight.out[n:]


def _pump_read(flight: _InFlight) -> bool:
    """Read what is there (and what TLS holds decrypted); True when the answer is complete."""
    while True:
        try:
            data = flight.sock.recv(_READ_SIZE)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        if not data:
            flight.answer.feed_eof()
            return True
        if flight.answer.feed(data):
            return True
        # Plain sockets: poll says when more is there. TLS: bytes already
        # decrypted sit in the TLS layer, where poll cannot see them.
        if not isinstance(flight.sock, ssl.SSLSocket) or not flight.sock.pending():
            return False


def send_all(
    prepared: Sequence[PreparedSnapshot],
    *,
    deadline: float,
    request_timeout: float,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[SendOutcome]:
    """Send every prepared request at once; yield each outcome as it settles.

    From the calling thread alone, with ``poll``: all requests are written
    (partial writes, EAGAIN and TLS's want-read/want-write handled), then
    every answer is read to its end. Returns by ``deadline`` (a ``clock()``
    value); requests still unanswered then are not yielded (the caller's
    deadline handling reports them). A request unanswered after
    ``request_timeout`` is yielded with a ``TimeoutError``. Nothing is
    retried here; a failed connection is closed.
    """
    started = clock()
    ends_at = min(deadline, started + request_timeout)
    flights: dict[int, _InFlight] = {}
    poller = select.poll()

    def settle(flight: _InFlight, error: BaseException | None) -> SendOutcome:
        poller.unregister(flight.sock)
        del flights[flight.sock.fileno()]
        value = None
        if error is None:
            try:
                value = flight.answer.value()
            except SnapshotAnswerError as exc:
                error = exc
            if flight.answer.will_close:
                flight.prepared.close()
        if isinstance(error, OSError | MalformedAnswerError):
            flight.prepared.close()  # the stream's state is unknown
        elif flight.prepared.sock is not None:
            flight.prepared.sock.settimeout(None)
        return SendOutcome(flight.position, True, value, error, clock())

    for position, request in enumerate(prepared):
        if not request.usable():
            yield SendOutcome(position, False, None, None, clock())
            continue
        sock = request.sock
        assert sock is not None
        sock.setblocking(False)
        flight = _InFlight(position, request, sock, memoryview(request.wire), ends_at, _Answer())
        flights[sock.fileno()] = flight
        poller.register(sock, _IN)
        try:
            _pump_write(flight)
        except OSError as exc:
            yield settle(flight, exc)
            continue
        if flight.out and not flight.write_wants_read:
            poller.modify(sock, _IN | _OUT)

    while flights:
        now = clock()
        if now >= deadline:
            return
        soonest = min(f.ends_at for f in flights.values())
        if now >= soonest:
            for flight in [f for f in flights.values() if f.ends_at <= now]:
                yield settle(flight, TimeoutError("timed out waiting for the answer"))
            continue
        ready = poller.poll(max(1, int((soonest - now) * 1000) + 1))
        for fd, events in ready:
            found = flights.get(fd)
            if found is None:
                continue
            flight = found
            try:
                if flight.out and (events & _OUT or (flight.write_wants_read and events & _IN)):
                    _pump_write(flight)
                    if not flight.out:
                        poller.modify(flight.sock, _IN)
                    if flight.write_wants_read:
                        continue
                if events & (_IN | _BROKEN) and _pump_read(flight):
                    yield settle(flight, None)
                elif events & select.POLLNVAL:
                    yield settle(flight, OSError("the connection was closed"))
            except (OSError, MalformedAnswerError) as exc:
                yield settle(flight, exc)
