"""Blob requests: the one edge where ``azure.*`` exceptions are translated.

Everything the product does against Azure Storage goes through this module
and the two it builds on, ``blob_errors`` (classification, pure) and
``blob_retry`` (the policy and the bounded retry loop):

* ``blob_client`` builds a ``BlobClient`` from a SAS URL with the SDK's own
  retries switched off (its default is 15/18/24 s of backoff, far longer than a
  frozen filesystem may wait) and with explicit connect/read timeouts. Our
  retries (``call_with_retries``) are bounded, short and counted.
* ``translate`` is the context manager that re-raises request failures as
  ``BlobOpError`` (``raise ... from exc``), naming the URL via ``strip_sas``.
* ``upload_block_blob`` writes the status blob.
* ``PreparedSnapshot`` is the one request that does not go through the SDK:
  the first attempt of a disk's Snapshot Blob inside the frozen window, built
  (target, headers) and connected before the freeze, sent with ``http.client``.
  Why: through the SDK a request costs 1.5-2 ms of CPU under the GIL
  (pipeline policies, serialisation, ``requests``/``urllib3``); 64 of them
  made a 64-disk window ~100 ms longer than a 1-disk one with 50 ms storage
  latency on 2 cores (benchmarks/frozen_window.py). Every other request
  (preflight, retries, the status blob) stays on azure-storage-blob.

Contracts:

* I5: no SAS signature appears in any message, result or ``repr`` this module
  produces. Messages are scrubbed by pattern, plus by the exact ``sig`` value
  of the URL in hand (``sas_redactor``); ``translate`` also scrubs the text of
  the chained upstream exceptions in place, so a logged traceback is clean too.
* Blocking: every call that touches the network blocks the calling thread for
  at most about ``connect_timeout + request_timeout`` per attempt, plus the
  backoff between attempts. Nothing here starts threads.
* Thread safety: a ``BlobClient`` must be used by one thread at a time (it
  owns one ``requests`` session). The only process-wide effect: ``blob_client``
  adds (once) a filter to the SDK's and urllib3's loggers that scrubs SAS
  signatures from their records (urllib3 logs request lines, query included,
  at DEBUG) and drops them on threads inside ``silenced_transport_logs``.
* Raises: ``BlobOpError`` (a ``BlobError``) for request failures; ``classify``
  never raises.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import logging
import re
import select
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import certifi
import requests
from azure.core import exceptions as azure_exc
from azure.storage.blob import BlobClient, ContentSettings

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.core.redact import Redactor, scrub, strip_sas
from snapshot_runtime.snapshot.blob_errors import TRANSLATED, classify
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.snapshot.blob_retry import call_with_retries
from snapshot_runtime.snapshot.failures import BlobFailure, BlobOpError

__all__ = [
    "PreparedSnapshot",
    "SnapshotAnswerError",
    "blob_client",
    "prepared_snapshot",
    "sas_redactor",
    "silenced_transport_logs",
    "translate",
    "upload_block_blob",
]


def sas_redactor(url: str) -> Redactor:
    """A redactor that knows this URL's exact ``sig`` value (raw and decoded)."""
    secrets: list[str] = []
    query = urlsplit(url).query if "?" in url else ""
    for raw in query.split("&"):
        name, _, value = raw.partition("=")
        if name.lower() == "sig" and value:
            secrets.append(value)
    secrets.extend(v for k, v in parse_qsl(query) if k.lower() == "sig" and v)
    return Redactor(secrets)


def _scrub_chain(exc: BaseException, redact: Callable[[str], str]) -> None:
    """Scrub, in place, the text of an upstream exception and all it wraps.

    Tracebacks print every chained exception's ``str()``; urllib3 and requests
    put the full request URL (with ``sig=``) into theirs. Bounded walk.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 32:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        new_args: list[Any] = []
        for arg in current.args:
            if isinstance(arg, str):
                new_args.append(redact(arg))
            else:
                if isinstance(arg, BaseException):
                    todo.append(arg)
                new_args.append(arg)
        # Some attributes are read-only properties; what can be set still is.
        with contextlib.suppress(Exception):
            current.args = tuple(new_args)
        for attr in ("message", "url", "reason"):
            value = getattr(current, attr, None)
            if isinstance(value, str):
                with contextlib.suppress(Exception):
                    setattr(current, attr, redact(value))
        for linked in (
            current.__cause__,
            current.__context__,
            getattr(current, "inner_exception", None),
        ):
            if isinstance(linked, BaseException):
                todo.append(linked)


@contextmanager
def translate(
    url: str, *, code: ErrorCode = ErrorCode.SNAPSHOT_FAILED, operation: str = "blob request"
) -> Iterator[None]:
    """Re-raise request failures as ``BlobOpError(code, ...) from exc``.

    The message names the blob by ``strip_sas(url)``; the upstream exception
    chain is scrubbed in place before it is chained.
    """
    try:
        yield
    except BlobOpError:
        raise
    except TRANSLATED as exc:
        redact = sas_redactor(url)
        failure = classify(exc, redact)
        _scrub_chain(exc, redact)
        message = f"{operation} {strip_sas(url)} failed: {failure.message}"
        raise BlobOpError(code, message, failure) from exc


_QUIET = threading.local()
_GUARD_LOCK = threading.Lock()
_TRANSPORT_LOGGERS = ("azure", "urllib3", "requests")


class _TransportLogFilter(logging.Filter):
    """Drops the SDK's and urllib3's records on a silenced thread; scrubs the rest.

    urllib3 logs every request line at DEBUG, SAS query included, from inside
    whichever thread sends it: with DEBUG on, that is a SAS in the log (I5) and
    a log write inside the freeze (I1).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_QUIET, "active", False):
            return False
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own handling
            return True
        clean = scrub(text)
        if clean != text:
            record.msg, record.args = clean, None
        return True


def _guard_transport_loggers() -> None:
    # Filters on a logger do not apply to its children's records, so every
    # existing logger of the transport stack gets one. They exist by now: they
    # are created when their modules are imported, which has happened.
    with _GUARD_LOCK:
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if not isinstance(logger, logging.Logger) or not name.startswith(_TRANSPORT_LOGGERS):
                continue
            if not any(isinstance(f, _TransportLogFilter) for f in logger.filters):
                logger.addFilter(_TransportLogFilter())


@contextmanager
def silenced_transport_logs() -> Iterator[None]:
    """On this thread, drop every log record of the SDK and urllib3 (I1)."""
    previous = getattr(_QUIET, "active", False)
    _QUIET.active = True
    try:
        yield
    finally:
        _QUIET.active = previous


@functools.cache
def _quiet_logger() -> logging.Logger:
    # Not registered with logging.getLogger: no handler, parent or config can
    # make the SDK's per-request INFO lines reach a file. We report failures
    # ourselves, and inside the freeze nothing may be logged at all (I1).
    logger = logging.Logger("snapshot_runtime.snapshot.blob_requests.sdk")
    logger.disabled = True
    return logger


def blob_client(
    sas_url: str, policy: BlobPolicy, *, code: ErrorCode = ErrorCode.SNAPSHOT_FAILED
) -> BlobClient:
    """A client for one blob; no I/O. Raises ``BlobOpError(code)``, kind other, for a bad URL.

    The SDK's retries are off (we retry, bounded and counted). Environment
    proxies are resolved here, once, and the session is told not to consult
    the environment again: requests would otherwise look for ``~/.netrc`` on
    every request, which is file I/O inside the frozen window. The transport's
    loggers get a filter that scrubs SAS signatures from their records and
    drops them on threads inside ``silenced_transport_logs``.
    """
    _guard_transport_loggers()
    proxies = requests.utils.get_environ_proxies(sas_url)
    options: dict[str, Any] = {
        "retry_total": 0,
        "connection_timeout": policy.connect_timeout,
        "read_timeout": policy.request_timeout,
        "use_env_settings": False,
        "logger": _quiet_logger(),
    }
    if proxies:
        options["proxies"] = dict(proxies)
    if policy.api_version:
        options["api_version"] = policy.api_version
    try:
        return BlobClient.from_blob_url(sas_url, **options)
    except ValueError as exc:
        failure = BlobFailure(
            "other", None, None, False, scrub(f"other: invalid blob URL: {exc}"), "ValueError"
        )
        # from None: the SDK's message quotes the URL, SAS included.
        raise BlobOpError(code, f"invalid blob URL {strip_sas(sas_url)}", failure) from None


def upload_block_blob(
    sas_url: str,
    data: bytes,
    *,
    policy: BlobPolicy,
    content_type: str = "application/json",
) -> None:
    """Create or overwrite a block blob (the status blob), with bounded retries.

    Blocks for at most about ``(retries + 1) * (connect + request timeout)`` plus
    backoff. Raises ``BlobOpError(code=STATUS_UPLOAD_FAILED)``.
    """
    client = blob_client(sas_url, policy, code=ErrorCode.STATUS_UPLOAD_FAILED)
    settings = ContentSettings(content_type=content_type)

    def put(budget: float) -> None:
        client.upload_blob(
            data,
            blob_type="BlockBlob",
            overwrite=True,
            content_settings=settings,
            read_timeout=budget,
            timeout=max(1, int(policy.request_timeout)),
        )

    try:
        outcome = call_with_retries(put, policy=policy, redact=sas_redactor(sas_url))
    finally:
        client.close()
    if outcome.failure is not None:
        raise BlobOpError(
            ErrorCode.STATUS_UPLOAD_FAILED,
            f"status upload to {strip_sas(sas_url)} failed after {outcome.attempts} "
            f"attempt(s): {outcome.failure.message}",
            outcome.failure,
        )


class SnapshotAnswerError(azure_exc.HttpResponseError):
    """A prepared Snapshot Blob request answered with something other than 201.

    Carries ``status_code`` and ``error_code`` as the SDK's errors do, so
    ``blob_errors.classify`` treats it exactly like one of theirs.
    """

    def __init__(self, status: int, error_code: str | None, message: str) -> None:
        super().__init__(message=message)
        self.status_code = status
        self.error_code = error_code


_XML_MESSAGE = re.compile(rb"<Message>(.*?)</Message>", re.DOTALL)


def _dropped(sock: Any) -> bool:
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

    ``open`` (before the freeze) connects, TLS included; ``send`` (inside it)
    writes the prepared request and reads the answer: no DNS, no file, no
    new connection unless the peer closed the idle one. ``send`` raises what
    ``classify`` reads: ``SnapshotAnswerError`` for a non-201 answer,
    ``OSError`` (timeouts, resets) from the socket, ``ServiceResponseError``
    for a malformed answer. Use from one thread at a time.

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
        query = f"&{parts.query}" if parts.query else ""
        self._target = f"{parts.path}?comp=snapshot&timeout={server_timeout}{query}"
        self._headers = {
            "x-ms-version": api_version,
            "x-ms-client-request-id": request_id,
            "Content-Length": "0",
        }
        self._headers.update({f"x-ms-meta-{k}": v for k, v in metadata.items()})
        self._connection: http.client.HTTPConnection
        if parts.scheme == "https":
            self._connection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=connect_timeout, context=_tls_context()
            )
        else:
            self._connection = http.client.HTTPConnection(
                parts.hostname, parts.port, timeout=connect_timeout
            )

    def open(self) -> None:
        """Connect (and handshake) now, before the freeze. Raises OSError."""
        self._connection.connect()

    def send(self, budget: float) -> dict[str, Any]:
        """Send the request, wait at most ``budget`` s per read; ``{"snapshot": stamp}``."""
        connection = self._connection
        try:
            if connection.sock is not None and _dropped(connection.sock):
                connection.close()
            if connection.sock is None:
                connection.connect()  # a new connection: what a retry would need too
            connection.sock.settimeout(budget)
            connection.request("PUT", self._target, headers=self._headers)
            answer = connection.getresponse()
            body = answer.read()
        except http.client.HTTPException as exc:
            connection.close()
            raise azure_exc.ServiceResponseError(
                f"malformed answer to Snapshot Blob: {type(exc).__name__}"
            ) from None
        except OSError:
            connection.close()
            raise
        if answer.will_close:
            connection.close()
        if answer.status != 201:
            found = _XML_MESSAGE.search(body)
            text = found.group(1).decode("utf-8", "replace").strip() if found else answer.reason
            code = answer.getheader("x-ms-error-code")
            raise SnapshotAnswerError(answer.status, code, f"{text}\nErrorCode:{code}")
        return {"snapshot": answer.getheader("x-ms-snapshot")}

    def close(self) -> None:
        self._connection.close()


def prepared_snapshot(
    sas_url: str,
    *,
    api_version: str,
    request_id: str,
    metadata: dict[str, str],
    policy: BlobPolicy,
) -> PreparedSnapshot | None:
    """A ``PreparedSnapshot`` for this URL, or None where only the SDK applies."""
    if requests.utils.get_environ_proxies(sas_url):
        return None  # the SDK's session knows the proxy; this path does not
    if not all((k + v).isascii() for k, v in metadata.items()):
        return None  # the SDK encodes what a raw header cannot carry
    try:
        return PreparedSnapshot(
            sas_url,
            api_version=api_version,
            request_id=request_id,
            metadata=metadata,
            server_timeout=max(1, int(policy.request_timeout)),
            connect_timeout=policy.connect_timeout,
        )
    except ValueError:
        return None
