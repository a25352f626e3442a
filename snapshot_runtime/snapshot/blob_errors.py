"""Blob request failures, classified: what went wrong, and whether a retry can help.

Pure: no I/O, no logging. ``classify`` turns any exception a blob request can
raise into a ``BlobFailure`` (a kind, the HTTP status, the storage error
code, whether a retry can help, and a message scrubbed of SAS signatures
before it is cut to ``MAX_MESSAGE``) and never raises. ``BlobOpError`` is the
``BlobError`` this package raises for a failed request; it carries the ``BlobFailure``.
``TRANSLATED`` lists the exception types a request raises that are
translated (anything else is a bug and passes through).

``AZURE_EXCEPTION_KINDS`` maps every public class of
``azure.core.exceptions`` explicitly, so that tests/test_blobs.py fails when
an SDK upgrade adds one we never saw.

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

import enum
import re
from collections.abc import Callable

import requests
import urllib3.exceptions
from azure.core import exceptions as azure_exc

from snapshot_runtime.core.redact import redact_then_truncate, scrub
from snapshot_runtime.snapshot.failures import (
    MAX_MESSAGE,
    RETRYABLE_KINDS,
    BlobFailure,
    FailureKind,
)

__all__ = [
    "AZURE_EXCEPTION_KINDS",
    "TRANSLATED",
    "classify",
]

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
TRANSLATED: tuple[type[BaseException], ...] = (
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


def _first_line(text: str, redact: Callable[[str], str]) -> str:
    """The first line, redacted, then cut to ``MAX_MESSAGE`` (never cut first:
    an echoed URL's signature cut in half is no longer recognised)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return redact_then_truncate(line, MAX_MESSAGE, redact)


def classify(exc: BaseException, redact: Callable[[str], str] = scrub) -> BlobFailure:
    """Classify any exception a blob request raised. Pure; never raises.

    ``redact`` (default: the patterns) runs on the text before it is cut;
    pass the request's ``sas_redactor`` so its exact ``sig`` value goes too.
    """
    try:
        status = _status(exc)
        code = _error_code(exc)
        text = _text(exc)
        kind = _kind(exc, status, code, text)
        detail = _first_line(text, redact) or type(exc).__name__
        parts = [str(p) for p in (status, code) if p is not None]
        head = f"{kind} ({' '.join(parts)})" if parts else kind
        message = redact(f"{head}: {type(exc).__name__}: {detail}")
        return BlobFailure(
            kind=kind,
            status_code=status,
            error_code=code,
            retryable=kind in RETRYABLE_KINDS,
            message=message,
            exc_type=type(exc).__name__,
        )
    except Exception:  # pragma: no cover - defensive: classify must never raise
        return BlobFailure("other", None, None, False, f"other: {type(exc).__name__}", "")
