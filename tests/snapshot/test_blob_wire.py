"""blob_wire: the in-window Snapshot Blob request, against real local sockets.

``send_all`` is driven against small scripted servers (plain TCP and TLS):
answers split into single bytes, chunked, delimited by EOF, interim 1xx,
truncated, never sent; a client send buffer too small for the request
(partial writes, EAGAIN); a connection the server closed while idle. The
answer parser (``_Answer``) is also read as a table, without sockets.
Wall times are never asserted beyond telling a cut at the deadline from a
wait for the read timeout, with seconds of slack.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from snapshot_runtime.snapshot import blob_wire
from snapshot_runtime.snapshot.blob_errors import classify
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.snapshot.blob_rules import classify_wire
from snapshot_runtime.snapshot.blob_wire import (
    MalformedAnswerError,
    PreparedSnapshot,
    SendOutcome,
    SnapshotAnswerError,
    prepared_snapshot,
    send_all,
)

POLICY = BlobPolicy(request_timeout=5.0, connect_timeout=2.0)
STAMP = "2026-01-01T00:00:00.0000000Z"
CREATED = f"HTTP/1.1 201 Created\r\nx-ms-snapshot: {STAMP}\r\nContent-Length: 0\r\n\r\n".encode()
SIG = "abcdefghijklSECRET"

# What one connection of a scripted server does with its request: (socket, head) -> None.
Script = Callable[[socket.socket, bytes], None]


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


class Server:
    """A listener that runs one script per accepted connection, each on its own thread."""

    def __init__(self, scripts: list[Script], *, tls: ssl.SSLContext | None = None) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._scripts = list(scripts)
        self._tls = tls
        self.heads: list[bytes] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="server-accept", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        for script in self._scripts:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            threading.Thread(
                target=self._run, args=(conn, script), name="server-conn", daemon=True
            ).start()

    def _run(self, conn: socket.socket, script: Script) -> None:
        with conn, contextlib.suppress(OSError):
            reads_itself = script is idle_close or getattr(script, "reads_itself", False)
            head = b"" if reads_itself else _read_head(conn)
            with self._lock:
                self.heads.append(head)
            script(conn, head)
            # Hold the connection open until the test is done (no EOF as an answer).
            self._release.wait(30)

    def url(self, blob: str = "disk.vhd", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/devstoreaccount1/c/{blob}?sv=2024-08-04&sig={SIG}"

    def close(self) -> None:
        self._release.set()
        self._listener.close()


@contextlib.contextmanager
def server(scripts: list[Script], *, tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    s = Server(scripts, tls=tls)
    try:
        yield s
    finally:
        s.close()


def answer(data: bytes, *, pieces: int = 1, pause: float = 0.0) -> Script:
    """Answer ``data`` in ``pieces`` writes, ``pause`` s apart."""

    def script(conn: socket.socket, head: bytes) -> None:
        size = max(1, -(-len(data) // pieces))
        for i in range(0, len(data), size):
            conn.sendall(data[i : i + size])
            if pause:
                time.sleep(pause)

    return script


def silent(conn: socket.socket, head: bytes) -> None:
    """Read the request, answer nothing."""


def idle_close(conn: socket.socket, head: bytes) -> None:
    """Close the connection before any request: an idle keep-alive the server gave up on."""
    conn.close()


def close_after(data: bytes) -> Script:
    def script(conn: socket.socket, head: bytes) -> None:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_RDWR)

    return script


def prepare(url: str, **metadata: str) -> PreparedSnapshot:
    prepared = prepared_snapshot(
        url, api_version="2025-01-05", request_id="rid-1", metadata=metadata, policy=POLICY
    )
    assert prepared is not None
    prepared.open()
    return prepared


def run_all(
    prepared: list[PreparedSnapshot], *, deadline: float = 10.0, request_timeout: float = 5.0
) -> tuple[dict[int, SendOutcome], float]:
    t0 = time.monotonic()
    out = {
        o.position: o
        for o in send_all(prepared, deadline=t0 + deadline, request_timeout=request_timeout)
    }
    return out, time.monotonic() - t0


# -- send_all on plain TCP ---------------------------------------------------------


def test_every_answer_shape_is_read_to_its_end_from_the_calling_thread() -> None:
    chunked = (
        b"HTTP/1.1 201 Created\r\nx-ms-snapshot: " + STAMP.encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\n2\r\nef\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + CREATED
    by_eof = b"HTTP/1.1 201 Created\r\nx-ms-snapshot: " + STAMP.encode() + b"\r\n\r\nbody"
    xml = b"<?xml version='1.0'?><Error><Message>The snapshot count is exceeded.</Message></Error>"
    refused = (
        b"HTTP/1.1 409 Conflict\r\nx-ms-error-code: SnapshotCountExceeded\r\n"
        b"Content-Length: " + str(len(xml)).encode() + b"\r\n\r\n" + xml
    )
    scripts: list[Script] = [
        answer(CREATED, pieces=len(CREATED), pause=0.001),  # one byte at a time
        answer(chunked, pieces=7, pause=0.01),
        answer(interim, pieces=3, pause=0.01),
        close_after(by_eof),
        answer(refused, pieces=2, pause=0.01),
    ]
    threads_before = set(threading.enumerate())
    with server(scripts) as s:
        prepared = [prepare(s.url(f"d{i}.vhd")) for i in range(len(scripts))]
        calling_thread = threading.get_ident()
        seen_on: set[int] = set()
        out: dict[int, SendOutcome] = {}
        t0 = time.monotonic()
        for outcome in send_all(prepared, deadline=t0 + 10, request_timeout=5):
            seen_on.add(threading.get_ident())
            out[outcome.position] = outcome
        ours = {t for t in threading.enumerate() if not t.name.startswith("server-")}
        assert ours <= threads_before  # no thread started to send or to read
    assert seen_on == {calling_thread}
    assert sorted(out) == list(range(5))
    for i in range(4):
        assert (out[i].sent, out[i].value, out[i].error) == (True, {"snapshot": STAMP}, None), i
    error = out[4].error
    assert isinstance(error, SnapshotAnswerError)
    failure = classify(error)
    assert (failure.kind, failure.status_code, failure.error_code) == (
        "limit",
        409,
        "SnapshotCountExceeded",
    )
    assert "snapshot count is exceeded" in failure.message
    # The request as written: the prepared bytes, request id and metadata included.
    head = next(h for h in s.heads if b"/d0.vhd" in h).decode()
    assert head.startswith("PUT /devstoreaccount1/c/d0.vhd?comp=snapshot&timeout=5&sv=")
    assert f"Host: 127.0.0.1:{s.port}\r\n" in head and "x-ms-client-request-id: rid-1" in head
    for p in prepared:
        p.close()


def test_partial_writes_and_eagain_are_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request far larger than the client's send buffer, read slowly by the server."""
    left_after_write: list[int] = []
    real_pump_write = blob_wire._pump_write

    def recording_pump_write(flight: Any) -> None:
        real_pump_write(flight)
        left_after_write.append(len(flight.out))

    monkeypatch.setattr(blob_wire, "_pump_write", recording_pump_write)
    big = {f"k{i}": "v" * 4000 for i in range(40)}  # ~160 KB of metadata headers

    def slow_reader(conn: socket.socket, head: bytes) -> None:
        data = b""
        while not data.endswith(b"\r\n\r\n"):
            time.sleep(0.002)
            data += conn.recv(2048)
        assert data.count(b"x-ms-meta-k") == 40
        conn.sendall(CREATED)

    slow_reader.reads_itself = True  # type: ignore[attr-defined]

    with server([slow_reader, answer(CREATED)]) as s:
        prepared = [prepare(s.url("big.vhd"), **big), prepare(s.url("small.vhd"))]
        assert prepared[0].sock is not None
        prepared[0].sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        assert len(prepared[0].wire) > 150_000
        out, _ = run_all(prepared)
    assert [out[i].value for i in (0, 1)] == [{"snapshot": STAMP}] * 2
    # Not vacuous: the first write left part of the request for later ones (EAGAIN).
    assert left_after_write[0] > 0 and len(left_after_write) > 3


def test_a_request_unanswered_for_its_read_timeout_fails_alone() -> None:
    with server([silent, answer(CREATED)]) as s:
        prepared = [prepare(s.url("stuck.vhd")), prepare(s.url("ok.vhd"))]
        out, wall = run_all(prepared, deadline=10.0, request_timeout=0.5)
    assert out[1].value == {"snapshot": STAMP}
    assert isinstance(out[0].error, TimeoutError)
    assert classify(out[0].error).kind == "timeout" and classify(out[0].error).retryable
    assert 0.45 <= wall < 5.0
    assert prepared[0].sock is None  # its stream's state is unknown: closed


def test_send_all_returns_by_the_deadline() -> None:
    with server([silent, answer(CREATED)]) as s:
        prepared = [prepare(s.url("stuck.vhd")), prepare(s.url("ok.vhd"))]
        out, wall = run_all(prepared, deadline=0.5, request_timeout=10.0)
    assert list(out) == [1]  # the stuck one is left to the caller's deadline handling
    assert 0.45 <= wall < 5.0


def test_a_connection_closed_while_idle_is_not_sent_on() -> None:
    with server([idle_close, answer(CREATED)]) as s:
        prepared = [prepare(s.url("gone.vhd")), prepare(s.url("ok.vhd"))]
        time.sleep(0.2)  # the server's close reaches us
        out, _ = run_all(prepared)
    assert (out[0].sent, out[0].value, out[0].error) == (False, None, None)
    assert out[1].value == {"snapshot": STAMP}


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"HTTP/1.1 201 Created\r\nContent-Length: 10\r\n\r\nabc", "transient"),  # truncated
        (b"HTTP/1.1 201 Created\r\nx-ms-snap", "transient"),  # cut in the head
        (b"garbage\r\n\r\n", "transient"),
    ],
)
def test_a_cut_or_malformed_answer_is_a_retryable_failure(data: bytes, kind: str) -> None:
    with server([close_after(data)]) as s:
        prepared = [prepare(s.url())]
        out, _ = run_all(prepared)
    error = out[0].error
    # The SDK raises ServiceResponseError (transient) for such an answer: same kind, same name.
    assert isinstance(error, MalformedAnswerError)
    failure = classify(error)
    assert (failure.kind, failure.retryable) == (kind, True)
    assert failure.message.startswith("transient: ServiceResponseError: malformed answer")
    assert classify_wire(error) == failure
    assert SIG not in failure.message


def test_blocking_send_reconnects_a_dropped_connection() -> None:
    with server([idle_close, answer(CREATED)]) as s:
        prepared = prepare(s.url())
        time.sleep(0.2)
        assert prepared.send(5.0) == {"snapshot": STAMP}
        prepared.close()


# -- TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) from a self-signed cert for 127.0.0.1."""
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served.load_cert_chain(str(cert), str(key))
    client = ssl.create_default_context(cafile=str(Path(cert)))
    return served, client


def test_tls_connections_are_driven_non_blocking_too(
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS 1.3 (session tickets after the handshake), answers split across records,
    a chunked one, a refusal: all read from the calling thread."""
    served, client = tls_pair
    monkeypatch.setattr(blob_wire, "_tls_context", lambda: client)
    chunked = (
        b"HTTP/1.1 201 Created\r\nx-ms-snapshot: " + STAMP.encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    refused = (
        b"HTTP/1.1 403 Forbidden\r\nx-ms-error-code: AuthorizationFailure\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    scripts = [
        answer(CREATED, pieces=9, pause=0.005),
        answer(chunked, pieces=4, pause=0.005),
        answer(CREATED + b""),  # one record
        answer(refused),
    ]
    with server(scripts, tls=served) as s:
        prepared = [prepare(s.url(f"t{i}.vhd", scheme="https")) for i in range(4)]
        assert all(isinstance(p.sock, ssl.SSLSocket) and p.tls for p in prepared)
        time.sleep(0.1)  # let TLS 1.3 session tickets arrive on the idle connections
        out, _ = run_all(prepared)
    assert [out[i].value for i in range(3)] == [{"snapshot": STAMP}] * 3
    error = out[3].error
    assert isinstance(error, SnapshotAnswerError) and classify(error).kind == "auth"
    for p in prepared:
        p.close()


# -- the answer parser alone ----------------------------------------------------------


def _parse(data: bytes, *, eof: bool = False) -> blob_wire._Answer:
    parsed = blob_wire._Answer()
    for i in range(len(data)):  # byte by byte: every split point
        if parsed.feed(data[i : i + 1]):
            break
    if eof:
        parsed.feed_eof()
    return parsed


def test_answer_parser_table() -> None:
    done = _parse(CREATED)
    assert (done.done, done.status, done.will_close, done.value()) == (
        True,
        201,
        False,
        {"snapshot": STAMP},
    )
    closing = _parse(b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    assert closing.done and closing.will_close and closing.body == b"ok"
    old = _parse(b"HTTP/1.0 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert old.done and old.will_close
    by_eof = _parse(b"HTTP/1.1 500 Oops\r\n\r\n<Message>m</Message>", eof=True)
    assert by_eof.done and by_eof.body == b"<Message>m</Message>"
    with pytest.raises(SnapshotAnswerError) as refused:
        by_eof.value()
    assert refused.value.status_code == 500 and "m\nErrorCode:None" in str(refused.value.message)
    for bad in (
        b"HTTP/1.1 2x1 Created\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nno colon\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX",
        b"HTTP/1.1 101 Switching\r\n\r\n",
    ):
        with pytest.raises(MalformedAnswerError):
            _parse(bad)
    with pytest.raises(MalformedAnswerError):
        _parse(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nab", eof=True)
    with pytest.raises(MalformedAnswerError):
        _parse(b"HTTP/1.1 201 Created\r\nX: " + b"a" * (70 * 1024))


def test_a_header_that_would_break_the_request_leaves_it_to_the_sdk() -> None:
    url = "http://127.0.0.1:1/devstoreaccount1/c/d.vhd?sig=abcdefghijkl"
    kwargs: dict[str, Any] = {"api_version": "2025-01-05", "request_id": "r", "policy": POLICY}
    assert prepared_snapshot(url, metadata={"a": "b"}, **kwargs) is not None
    assert prepared_snapshot(url, metadata={"a": "b\r\nX-Evil: 1"}, **kwargs) is None
