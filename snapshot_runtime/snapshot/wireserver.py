"""The WireServer host-snapshot client: ``presnapshot`` and ``dosnapshot`` over plain HTTP.

Reference: /work/shared/reference/host-snapshot.md §4, §5, §8. Differences on purpose:

* **Address** configurable: ``SNAPSHOT_RUNTIME_WIRESERVER`` (``host[:port]``),
  else ``/var/lib/waagent/WireServerEndpoint`` (the agent's cached IP), else
  ``168.63.129.16:80``.
* **No proxy, ever**: raw sockets, so ``HTTP(S)_PROXY`` and the agent's proxy
  settings cannot apply (the reference also bypasses its proxy for host calls).
* **Bounded**: every exchange has one overall deadline (connect, send, every
  read), not a per-operation socket timeout a dribbling server can stretch.
* **Prepared before the freeze**: ``PreparedCall`` holds the complete request
  bytes and an open connection; inside the window it only sends and reads
  (no DNS, no imports, no threads, no file I/O). If the host closed the idle
  connection before the request was sent, it reconnects once: nothing was
  sent, so that is not a retry. A request that was sent is never re-sent.

Outcome codes are the reference's telemetry values (``HostAnswer.code``):
the HTTP status, or 555 (no answer: refused, reset, timeout), 557 (200/201
with an empty body), 556 (``dosnapshot`` 500 whose body does not start with
``{ "error"``), 558 (a body that cannot be used).

Nothing here logs. No token, encryption detail or body appears in an
exception text or ``HostAnswer.error`` (I5): errors name the exception type
and the step.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import io
import json
import os
import re
import select
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "API_QUERY",
    "DEFAULT_WIRESERVER",
    "DOSNAPSHOT_PATH",
    "PRESNAPSHOT_PATH",
    "WIRESERVER_ENDPOINT_FILE",
    "WIRESERVER_ENV",
    "DdIdentifier",
    "HostAnswer",
    "HostDiskInfo",
    "PreparedCall",
    "PresnapshotInfo",
    "build_dosnapshot_body",
    "build_presnapshot_body",
    "parse_creation_time",
    "parse_dosnapshot",
    "parse_presnapshot",
    "wireserver_address",
]

DEFAULT_WIRESERVER = ("168.63.129.16", 80)
WIRESERVER_ENV = "SNAPSHOT_RUNTIME_WIRESERVER"
WIRESERVER_ENDPOINT_FILE = "/var/lib/waagent/WireServerEndpoint"
PRESNAPSHOT_PATH = "/metadata/recsvc/snapshot/presnapshot"
DOSNAPSHOT_PATH = "/metadata/recsvc/snapshot/dosnapshot"
API_QUERY = "api-version=2017-12-01"

NO_RESPONSE = 555
DOSNAPSHOT_BHS_DOWN = 556
EMPTY_BODY = 557
BAD_BODY = 558

_MAX_BODY = 4 * 1024 * 1024
_IPV4 = re.compile(r"(?:\d{1,3}\.){3}\d{1,3}")
# .NET writes up to 7 fractional digits; Python's %f takes at most 6 (reference
# defect 7), so the fraction is parsed by hand.
_CREATION = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,7}))?Z")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def wireserver_address(
    env: Mapping[str, str] = os.environ, endpoint_file: str = WIRESERVER_ENDPOINT_FILE
) -> tuple[str, int]:
    """(host, port) of the WireServer: the env override, the agent's file, the default."""
    override = env.get(WIRESERVER_ENV, "").strip()
    if override:
        host, sep, port = override.rpartition(":")
        if sep and port.isdigit() and host:
            return host.strip("[]"), int(port)
        return override, 80
    try:
        with open(endpoint_file, encoding="ascii") as fh:
            cached = fh.read(64).strip()
    except (OSError, UnicodeDecodeError):
        cached = ""
    if _IPV4.fullmatch(cached):
        return cached, 80
    return DEFAULT_WIRESERVER


# -- request bodies (json.dumps with the reference's separators and key order) ----


def build_presnapshot_body(task_id: str, token: str, *, ade_enabled: bool | None) -> bytes:
    """presnapshot's body; ``preSnapshotSettings`` only when ``ade_enabled`` is not None."""
    body: dict[str, Any] = {"taskId": task_id, "snapshotTaskToken": token}
    if ade_enabled is not None:
        body["preSnapshotSettings"] = [{"Key": "isVMADEEnabled", "Value": ade_enabled}]
    return json.dumps(body).encode("ascii")


def build_dosnapshot_body(
    *,
    task_id: str,
    disk_ids: Sequence[int],
    settings: Sequence[tuple[str, object]],
    token: str,
    metadata: Sequence[tuple[str, str]],
    instant_access_minutes: int | None,
) -> bytes:
    """dosnapshot's body, in the reference's key order (§5.1)."""
    body: dict[str, Any] = {
        "taskId": task_id,
        "diskIds": list(disk_ids),
        "settings": [{"Key": k, "Value": v} for k, v in settings],
        "snapshotTaskToken": token,
        "snapshotMetadata": [{"Key": k, "Value": v} for k, v in metadata],
    }
    if instant_access_minutes is not None:
        body["instantAccessDurationMinutes"] = instant_access_minutes
    return json.dumps(body).encode("ascii")


# -- one exchange -------------------------------------------------------------


@dataclass(frozen=True)
class HostAnswer:
    """One host call's outcome. ``code`` is the reference's telemetry value."""

    code: int
    http_status: int | None
    body: bytes = field(repr=False)
    sent: bool  # the request bytes left this machine (a dosnapshot may have run)
    elapsed_seconds: float
    error: str | None  # "connect: ConnectionRefusedError" etc.; never a value


class _DeadlineReader(io.RawIOBase):
    """Socket reads bounded by one absolute deadline (monotonic)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline reached")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _DeadlineSocket:
    """What ``http.client.HTTPResponse`` needs of a socket: ``makefile``."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str, *args: object, **kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


def _request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    authority = host if port == 80 else f"{host}:{port}"
    head = (
        f"POST {path}?{API_QUERY} HTTP/1.1\r\n"
        f"Host: {authority}\r\n"
        "Accept-Encoding: identity\r\n"
        "Backup: true\r\n"
        "Content-type: application/json\r\n"
        "UserAgent: VMSnapshot\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _peer_closed(sock: socket.socket) -> bool:
    """True when the idle connection was closed (or reset) by the peer."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class PreparedCall:
    """One host request, built and connected before the freeze; ``send()`` once."""

    def __init__(self, host: str, port: int, path: str, body: bytes) -> None:
        self.host = host
        self.port = port
        self.path = path
        self._request = _request_bytes(host, port, path, body)
        self._sock: socket.socket | None = None
        self._used = False
        self.connect_error: str | None = None

    def connect(self, timeout: float) -> bool:
        """Open the connection now (before the freeze). False: failed, see ``connect_error``."""
        self.close()
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connect_error = None
            return True
        except OSError as exc:
            self._sock = None
            self.connect_error = f"connect: {type(exc).__name__}"
            return False

    def send(self, deadline_seconds: float, *, dosnapshot: bool = False) -> HostAnswer:
        """Send the request and read the answer, all within ``deadline_seconds``. Never raises.

        Sends at most once: a second call answers 555 without sending.
        """
        started = time.monotonic()
        deadline = started + max(0.0, deadline_seconds)

        def failed(step: str, exc: BaseException | None, sent: bool) -> HostAnswer:
            what = f"{step}: {type(exc).__name__}" if exc is not None else step
            return HostAnswer(NO_RESPONSE, None, b"", sent, time.monotonic() - started, what)

        if self._used:
            return failed("already sent", None, False)
        self._used = True
        sock = self._sock
        if sock is None or _peer_closed(sock):
            # Nothing was sent on it: opening the request's own connection again
            # is not a retry.
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.connect(remaining):
                return failed(self.connect_error or "connect: deadline", None, False)
            sock = self._sock
            assert sock is not None
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.sendall(self._request)
        except OSError as exc:
            return failed("send", exc, True)
        try:
            resp = http.client.HTTPResponse(_DeadlineSocket(sock, deadline), method="POST")  # type: ignore[arg-type]
            resp.begin()
            body = resp.read(_MAX_BODY + 1)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return failed("answer", exc, True)
        finally:
            self.close()
        elapsed = time.monotonic() - started
        status = resp.status
        if len(body) > _MAX_BODY:
            return HostAnswer(BAD_BODY, status, b"", True, elapsed, "answer: body too large")
        if status in (200, 201):
            code = status if body.strip() else EMPTY_BODY
        elif dosnapshot and status == 500 and not body.startswith(b'{ "error"'):
            # Reference §5.3: "BHS is not running".
            code = DOSNAPSHOT_BHS_DOWN
        else:
            code = status
        return HostAnswer(code, status, body, True, elapsed, None)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


# -- answers ------------------------------------------------------------------


@dataclass(frozen=True)
class PresnapshotInfo:
    """What a presnapshot answer says; ``encryption_settings`` is secret (never logged)."""

    code: int
    accepted: bool
    host_time: dt.datetime | None
    bhs_version: str | None
    ade_os_encrypted: bool | None = None
    ade_data_encrypted: bool | None = None
    encryption_settings: object = field(default=None, repr=False)


def _host_time(value: object) -> dt.datetime | None:
    if not isinstance(value, Mapping):
        return None
    try:
        parts = [value[k] for k in ("year", "month", "day", "hour", "minute", "second")]
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
            return None
        year, month, day, hour, minute, second = parts
        return dt.datetime(year, month, day, hour, minute, second, tzinfo=_EPOCH.tzinfo)
    except (KeyError, ValueError, OverflowError):
        return None


def parse_presnapshot(answer: HostAnswer, *, want_ade: bool) -> PresnapshotInfo:
    """The presnapshot outcome (reference §4.3). Accepted only on 200/201 with a body."""
    if answer.code not in (200, 201):
        return PresnapshotInfo(answer.code, False, None, None)
    try:
        doc = json.loads(answer.body.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        doc = None
    if not isinstance(doc, Mapping):
        if want_ade:  # the ADE details are needed and unreadable
            return PresnapshotInfo(BAD_BODY, False, None, None)
        return PresnapshotInfo(answer.code, True, None, None)
    version = doc.get("bhsVersion")
    info = PresnapshotInfo(
        answer.code,
        True,
        _host_time(doc.get("responseTime")),
        version if isinstance(version, str) else None,
    )
    if want_ade:
        os_enc = doc.get("isOsDiskADEEncrypted")
        data_enc = doc.get("areDataDisksADEEncrypted")
        info = PresnapshotInfo(
            info.code,
            True,
            info.host_time,
            info.bhs_version,
            os_enc if isinstance(os_enc, bool) else None,
            data_enc if isinstance(data_enc, bool) else None,
            doc.get("DiskEncryptionSettings"),
        )
    return info


@dataclass(frozen=True)
class DdIdentifier:
    """A DirectDrive snapshot identifier. ``token`` is for the status report only."""

    creation_unix_ms: int
    id: str
    token: str = field(repr=False)
    instant_access_minutes: object


@dataclass(frozen=True)
class HostDiskInfo:
    """One ``snapshotInfo`` entry as the host sent it (``is_successful`` verbatim)."""

    is_successful: object
    ok: bool  # exactly the string "true" (reference §5.2)
    snapshot_uri: str | None
    error_message: str | None
    status_code: object
    dd: DdIdentifier | None


def parse_creation_time(value: object) -> int | None:
    """``YYYY-MM-DDTHH:MM:SS[.f{1,7}]Z`` -> Unix milliseconds (the reference's "ticks")."""
    if not isinstance(value, str):
        return None
    m = _CREATION.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction = (m.group(7) or "").ljust(7, "0")
    try:
        when = dt.datetime(year, month, day, hour, minute, second, tzinfo=_EPOCH.tzinfo)
    except ValueError:
        return None
    seconds = int((when - _EPOCH).total_seconds())
    return seconds * 1000 + int(fraction) // 10_000


def _entry(item: object) -> HostDiskInfo | None:
    if not isinstance(item, Mapping):
        return None
    if not all(k in item for k in ("isSuccessful", "snapshotUri", "errorMessage", "statusCode")):
        return None
    uri = item["snapshotUri"]
    error = item["errorMessage"]
    if (uri is not None and not isinstance(uri, str)) or (
        error is not None and not isinstance(error, str)
    ):
        return None
    dd: DdIdentifier | None = None
    raw_dd = item.get("ddSnapshotIdentifier")
    if raw_dd is not None:
        if not isinstance(raw_dd, Mapping):
            return None
        created = parse_creation_time(raw_dd.get("creationTime"))
        dd_id, token = raw_dd.get("id"), raw_dd.get("token")
        if created is None or not isinstance(dd_id, str) or not isinstance(token, str):
            return None
        dd = DdIdentifier(created, dd_id, token, raw_dd.get("instantAccessDurationMinutes"))
    success = item["isSuccessful"]
    return HostDiskInfo(success, success == "true", uri, error, item["statusCode"], dd)


def parse_dosnapshot(answer: HostAnswer) -> tuple[list[HostDiskInfo | None], int]:
    """The ``snapshotInfo`` entries (None for an unusable entry) and the outcome code.

    Unlike the reference, a bad entry does not drop every later one: it is None
    (that disk failed) and parsing goes on. A body that is not
    ``{"snapshotInfo": [...]}`` is 558.
    """
    if answer.code not in (200, 201):
        return [], answer.code
    try:
        doc = json.loads(answer.body.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return [], BAD_BODY
    if not isinstance(doc, Mapping) or not isinstance(doc.get("snapshotInfo"), list):
        return [], BAD_BODY
    return [_entry(item) for item in doc["snapshotInfo"]], answer.code
