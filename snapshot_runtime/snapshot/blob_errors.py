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

The answer's rules and the message's wording live in ``blob_rules`` (no SDK
import), shared with the SDK-free guest path; this module adds what only the
SDK's, requests' and urllib3's exception types can tell.
"""

from __future__ import annotations

from collections.abc import Callable

import requests
import urllib3.exceptions
from azure.core import exceptions as azure_exc

from snapshot_runtime.core.redact import scrub
from snapshot_runtime.snapshot.blob_rules import (
    Classifier,
    StorageAnswerError,
    answer_kind,
    describe,
    error_code_of,
    status_of,
    text_of,
)
from snapshot_runtime.snapshot.failures import BlobFailure, FailureKind

__all__ = [
    "AZURE_EXCEPTION_KINDS",
    "SDK_ERRORS",
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
    StorageAnswerError,  # blob_wire's answers
)


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
    auth_type = isinstance(exc, azure_exc.ClientAuthenticationError)
    decided = answer_kind(status, code, text, auth_type=auth_type)
    if decided is not None:
        return decided
    kind = _kind_by_type(exc)
    if kind == "other" and type(exc) in (azure_exc.AzureError, azure_exc.HttpResponseError):
        return _inner_kind(exc) or "other"
    return kind


def classify(exc: BaseException, redact: Callable[[str], str] = scrub) -> BlobFailure:
    """Classify any exception a blob request raised. Pure; never raises.

    ``redact`` (default: the patterns) runs on the text before it is cut;
    pass the request's ``sas_redactor`` so its exact ``sig`` value goes too.
    The rules and the wording are ``blob_rules``' (shared with the SDK-free path).
    """
    try:
        status, code, text = status_of(exc), error_code_of(exc), text_of(exc)
        kind = _kind(exc, status, code, text)
        return describe(exc, kind, status=status, code=code, text=text, redact=redact)
    except Exception:  # pragma: no cover - defensive: classify must never raise
        return BlobFailure("other", None, None, False, f"other: {type(exc).__name__}", "")


# The SDK path: everything azure-storage-blob, requests and urllib3 raise,
# and what the SDK-free path raises (a disk may mix both).
SDK_ERRORS = Classifier(classify, TRANSLATED)
