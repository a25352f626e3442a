"""Blob requests: the one edge where ``azure.*`` exceptions are translated.

Everything the product does against Azure Storage goes through this module:

* ``blob_client`` builds a ``BlobClient`` from a SAS URL with the SDK's own
  retries switched off (its default is 15/18/24 s of backoff, far longer than a
  frozen filesystem may wait) and with explicit connect/read timeouts. Our
  retries (``call_with_retries``) are bounded, short and counted.
* ``classify`` (pure) turns any exception a request can raise into a
  ``BlobFailure``: a kind, the HTTP status, the storage error code, whether a
  retry can help, and a scrubbed message.
* ``translate`` is the context manager that re-raises those exceptions as
  ``BlobOpError`` (``raise ... from exc``), naming the URL via ``strip_sas``.
* ``upload_block_blob`` writes the status blob.

Contracts:

* I5: no SAS signature appears in any message, result or ``repr`` this module
  produces. Messages are scrubbed by pattern, plus by the exact ``sig`` value
  of the URL in hand; ``translate`` also scrubs the text of the chained
  upstream exceptions in place, so a logged traceback is clean too.
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

Classification (first match wins)::

    throttled  "rate of snapshot blob calls is exceeded", SnapshotOperationRateExceeded,
               ServerBusy, 429, 503                            retryable
    limit      SnapshotCountExceeded, "snapshot count ... exceeded"
    auth       401, 403 (AuthenticationFailed, AuthorizationFailure,
               AuthorizationPermissionMismatch, expired SAS), ClientAuthenticationError
    not_found  404, ResourceNotFoundError
    timeout    408, OperationTimedOut, connect/read timeouts      retryable
    transient  other 5xx, connection reset/refused/aborted, incomplete read   retryable
    other      everything else (4xx, decode, serialization, misuse)
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

import requests
import urllib3.exceptions
from azure.core import exceptions as azure_exc
from azure.storage.blob import BlobClient, ContentSettings

from snapshot_runtime.errors import BlobError, ErrorCode
from snapshot_runtime.redact import Redactor, scrub, strip_sas

__all__ = [
    "AZURE_EXCEPTION_KINDS",
    "Attempt",
    "BlobFailure",
    "BlobOpError",
    "BlobPolicy",
    "FailureKind",
    "backoff_delay",
    "blob_client",
    "call_with_retries",
    "classify",
    "sas_redactor",
    "silenced_transport_logs",
    "translate",
    "upload_block_blob",
]

T = TypeVar("T")

FailureKind = Literal["auth", "not_found", "throttled", "limit", "transient", "timeout", "other"]

_RETRYABLE_KINDS: frozenset[str] = frozenset({"throttled", "transient", "timeout"})
# Longest message we keep; storage errors echo the whole XML body otherwise.
_MAX_MESSAGE = 300


@dataclass(frozen=True)
class BlobPolicy:
    """Timeouts and retry budget for blob requests.

    - request_timeout: client read timeout per attempt, seconds (the reference uses 10 s).
    - connect_timeout: TCP connect timeout per attempt, seconds.
    - retries: retries after the first attempt, for retryable failures only.
    - backoff_seconds: first backoff; doubles per retry (twice that when throttled).
    - api_version: storage service version to send; ``None`` is the SDK default.
    """

    request_timeout: float = 10.0
    connect_timeout: float = 5.0
    retries: int = 3
    backoff_seconds: float = 0.5
    api_version: str | None = None

    def __post_init__(self) -> None:
        if self.request_timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.retries < 0 or self.backoff_seconds < 0:
            raise ValueError("retries and backoff_seconds must not be negative")


@dataclass(frozen=True)
class BlobFailure:
    """One failed blob request, classified. ``message`` is already scrubbed."""

    kind: FailureKind
    status_code: int | None
    error_code: str | None
    retryable: bool
    message: str
    exc_type: str = ""


class BlobOpError(BlobError):
    """A blob request failed; ``.failure`` says how. The message holds no SAS."""

    def __init__(self, code: ErrorCode, message: str, failure: BlobFailure) -> None:
        super().__init__(code, message)
        self.failure = failure


# Every public exception class of azure.core.exceptions, mapped explicitly so
# that tests/test_blobs.py fails when an SDK upgrade adds one we never saw.
# For HttpResponseError and its subclasses the status/error code decide first;
# this kind is the fallback when no response is attached.
AZURE_EXCEPTION_KINDS: dict[type[BaseException], FailureKind] = {
    azure_exc.AzureError: "other",
    azure_exc.ServiceRequestError: "transient",  # connect refused, DNS, no route
    azure_exc.ServiceRequestTimeoutError: "timeout",  # connect timeout
    azure_exc.ServiceResponseError: "transient",  # reset/aborted after sending
    azure_exc.ServiceResponseTimeoutError: "timeout",  # read timeout
    azure_exc.HttpResponseError: "other",
    azure_exc.ClientAuthenticationError: "auth",
    azure_exc.ResourceNotFoundError: "not_found",
    azure_exc.ResourceExistsError: "other",
    azure_exc.ResourceModifiedError: "other",
    azure_exc.ResourceNotModifiedError: "other",
    azure_exc.TooManyRedirectsError: "other",
    azure_exc.ODataV4Error: "other",
    azure_exc.DecodeError: "other",
    azure_exc.IncompleteReadError: "transient",  # body cut short by the peer
    azure_exc.StreamConsumedError: "other",
    azure_exc.StreamClosedError: "other",
    azure_exc.ResponseNotReadError: "other",
    azure_exc.SerializationError: "other",
    azure_exc.DeserializationError: "other",
}

# Exceptions a request can raise that translate() converts. Programming errors
# (TypeError, AttributeError, ...) pass through untouched: they are bugs.
_TRANSLATED: tuple[type[BaseException], ...] = (
    azure_exc.AzureError,
    azure_exc.SerializationError,
    azure_exc.DeserializationError,
    OSError,  # socket errors, requests.RequestException
    urllib3.exceptions.HTTPError,
)

_THROTTLE_CODES = frozenset({"serverbusy", "snapshotoperationrateexceeded", "toomanyrequests"})
_LIMIT_CODES = frozenset({"snapshotcountexceeded", "snapshotsexceeded"})
_TIMEOUT_CODES = frozenset({"operationtimedout"})
_AUTH_CODES = frozenset({"authenticationfailed", "invalidauthenticationinfo"})
_RATE_TEXT = re.compile(r"(?i)rate of snapshot blob calls is exceeded")
_LIMIT_TEXT = re.compile(r"(?i)snapshot count\b.*\bexceeded")


def _text(exc: BaseException) -> str:
    try:
        message = getattr(exc, "message", None)
        text = message if isinstance(message, str) and message else str(exc)
    except Exception:  # a half-built exception whose __str__ fails
        text = ""
    return text


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _error_code(exc: BaseException) -> str | None:
    code: object = getattr(exc, "error_code", None)
    if code is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        try:
            code = headers.get("x-ms-error-code") if headers is not None else None
        except Exception:
            code = None
    if isinstance(code, enum.Enum):
        code = code.value
    return str(code) if code else None


def _kind_by_type(exc: BaseException) -> FailureKind:
    for cls in type(exc).__mro__:
        if cls in AZURE_EXCEPTION_KINDS:
            return AZURE_EXCEPTION_KINDS[cls]
    # Below azure-core: requests, urllib3 and the socket layer.
    # NewConnectionError derives from ConnectTimeoutError in urllib3, but a
    # refused connection is not a timeout.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return "transient"
    if isinstance(
        exc, TimeoutError | requests.exceptions.Timeout | urllib3.exceptions.TimeoutError
    ):
        return "timeout"
    if isinstance(
        exc,
        ConnectionError
        | requests.exceptions.ConnectionError
        | requests.exceptions.ChunkedEncodingError
        | urllib3.exceptions.ProtocolError,
    ):
        return "transient"
    if isinstance(exc, requests.exceptions.RequestException | urllib3.exceptions.HTTPError):
        return "other"
    if isinstance(exc, OSError):
        return "transient"  # e.g. socket.gaierror, EHOSTUNREACH
    return "other"


def _inner_kind(exc: BaseException) -> FailureKind | None:
    """The kind of a wrapped transport error, for bare AzureError wrappers."""
    inner = getattr(exc, "inner_exception", None) or exc.__cause__
    if isinstance(inner, BaseException) and inner is not exc:
        kind = _kind_by_type(inner)
        return kind if kind != "other" else None
    return None


def _kind(exc: BaseException, status: int | None, code: str | None, text: str) -> FailureKind:
    lowered = (code or "").lower()
    if lowered in _THROTTLE_CODES or _RATE_TEXT.search(text) or status in (429, 503):
        return "throttled"
    if lowered in _LIMIT_CODES or _LIMIT_TEXT.search(text):
        return "limit"
    if (
        status in (401, 403)
        or lowered in _AUTH_CODES
        or isinstance(exc, azure_exc.ClientAuthenticationError)
    ):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 408 or lowered in _TIMEOUT_CODES:
        return "timeout"
    if status is not None and status >= 500:
        return "transient"
    if status is not None and status >= 300:
        # A real response with an unlisted code (400, 409 ...): retrying the
        # same request cannot help (the reference's #494 called 409 "network").
        return "other"
    kind = _kind_by_type(exc)
    if kind == "other" and type(exc) in (azure_exc.AzureError, azure_exc.HttpResponseError):
        return _inner_kind(exc) or "other"
    return kind


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 3] + "..."


def classify(exc: BaseException) -> BlobFailure:
    """Classify any exception a blob request raised. Pure; never raises."""
    try:
        status = _status(exc)
        code = _error_code(exc)
        text = _text(exc)
        kind = _kind(exc, status, code, text)
        detail = _first_line(text) or type(exc).__name__
        parts = [str(p) for p in (status, code) if p is not None]
        head = f"{kind} ({' '.join(parts)})" if parts else kind
        message = scrub(f"{head}: {type(exc).__name__}: {detail}")
        return BlobFailure(
            kind=kind,
            status_code=status,
            error_code=code,
            retryable=kind in _RETRYABLE_KINDS,
            message=message,
            exc_type=type(exc).__name__,
        )
    except Exception:  # pragma: no cover - defensive: classify must never raise
        return BlobFailure("other", None, None, False, f"other: {type(exc).__name__}", "")


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
    except _TRANSLATED as exc:
        redact = sas_redactor(url)
        failure = classify(exc)
        failure = replace(failure, message=redact(failure.message))
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
    logger = logging.Logger("snapshot_runtime.blobs.sdk")
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


@dataclass(frozen=True)
class Attempt(Generic[T]):
    """The outcome of ``call_with_retries``: a value, or the last failure."""

    value: T | None
    attempts: int
    failure: BlobFailure | None

    @property
    def ok(self) -> bool:
        return self.failure is None


def backoff_delay(policy: BlobPolicy, attempt: int, failure: BlobFailure) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based). Pure."""
    base = policy.backoff_seconds * (2.0 if failure.kind == "throttled" else 1.0)
    return float(base * 2 ** max(0, attempt - 1))


def call_with_retries(
    op: Callable[[float], T],
    *,
    policy: BlobPolicy,
    redact: Callable[[str], str] = scrub,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    stop: threading.Event | None = None,
) -> Attempt[T]:
    """Run ``op(budget)`` until it succeeds, fails for good, or time runs out.

    ``budget`` is the read timeout to use for this attempt: the policy's, cut
    to what is left before ``deadline`` (a ``clock()`` value). Retries only
    retryable failures, at most ``policy.retries`` times, and never starts a
    backoff that would end past the deadline. ``stop`` cuts a backoff short.
    Does no I/O besides ``op``, and never raises for translated exceptions.
    """
    attempts = 0
    failure: BlobFailure | None = None
    while True:
        budget = policy.request_timeout
        if deadline is not None:
            budget = min(budget, deadline - clock())
        if budget <= 0 or (stop is not None and stop.is_set()):
            if failure is None:
                failure = BlobFailure("timeout", None, None, True, "timeout: deadline reached")
            break
        attempts += 1
        try:
            return Attempt(op(budget), attempts, None)
        except _TRANSLATED as exc:
            failure = classify(exc)
            failure = replace(failure, message=redact(failure.message))
        if not failure.retryable or attempts > policy.retries:
            break
        delay = backoff_delay(policy, attempts, failure)
        if deadline is not None and clock() + delay >= deadline:
            break
        if stop is not None:
            if stop.wait(delay):
                break
        else:
            time.sleep(delay)
    return Attempt(None, attempts, failure)


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
