"""The classification rules of blob failures, without the Azure SDK.

Pure (no azure, requests or urllib3 import, no I/O): ``blob_errors.classify``
(the SDK's exceptions) and ``classify_wire`` (the SDK-free guest path's,
``blob_wire``) both decide a failure's kind with ``answer_kind`` and word it
with ``describe``, so the two paths cannot drift apart: the same answer is
the same ``BlobFailure``, message included. Why a second path exists at all:
importing azure.storage.blob (and the azure-core, requests and urllib3 it
pulls in) costs ~35 MiB of peak RSS (docs/startup.md).

``StorageAnswerError`` is a storage answer read without the SDK; it carries
``sdk_name``, the name of the exception class azure-storage-blob raises for
that answer (``sdk_error_name``), which is the name the failure message shows.
``Classifier`` bundles a classify function with the exception types it
translates, for ``blob_retry.call_with_retries``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from snapshot_runtime.core.redact import Redactor, redact_then_truncate, scrub
from snapshot_runtime.snapshot.failures import (
    MAX_MESSAGE,
    RETRYABLE_KINDS,
    BlobFailure,
    FailureKind,
)

__all__ = [
    "WIRE_ERRORS",
    "Classifier",
    "StorageAnswerError",
    "answer_kind",
    "classify_wire",
    "describe",
    "error_code_of",
    "sas_redactor",
    "sdk_error_name",
    "status_of",
    "stdlib_kind",
    "text_of",
]

_THROTTLE_CODES = frozenset({"serverbusy", "snapshotoperationrateexceeded", "toomanyrequests"})
_LIMIT_CODES = frozenset({"snapshotcountexceeded", "snapshotsexceeded"})
_TIMEOUT_CODES = frozenset({"operationtimedout"})
_AUTH_CODES = frozenset({"authenticationfailed", "invalidauthenticationinfo"})
_RATE_TEXT = re.compile(r"(?i)rate of snapshot blob calls is exceeded")
_LIMIT_TEXT = re.compile(r"(?i)snapshot count\b.*\bexceeded")

# The exception class azure-storage-blob raises for an error answer
# (_shared/response_handlers.process_storage_error, 12.27): the generated
# layer's error map by status first (401, 404, 409, 304), else by the storage
# error code, else HttpResponseError. tests/snapshot/test_blob_wire_sdk.py
# compares both paths on Azurite.
_SDK_BY_STATUS = {
    401: "ClientAuthenticationError",
    404: "ResourceNotFoundError",
    409: "ResourceExistsError",
    304: "ResourceNotModifiedError",
}
_SDK_BY_CODE = {
    **dict.fromkeys(("ConditionNotMet", "BlobOverwritten"), "ResourceModifiedError"),
    **dict.fromkeys(
        ("InvalidAuthenticationInfo", "AuthenticationFailed"), "ClientAuthenticationError"
    ),
    **dict.fromkeys(
        (
            "ResourceNotFound",
            "CannotVerifyCopySource",
            "BlobNotFound",
            "QueueNotFound",
            "ContainerNotFound",
            "ParentNotFound",
            "ShareNotFound",
        ),
        "ResourceNotFoundError",
    ),
    **dict.fromkeys(
        (
            "AccountAlreadyExists",
            "AccountBeingCreated",
            "ResourceAlreadyExists",
            "ResourceTypeMismatch",
            "BlobAlreadyExists",
            "QueueAlreadyExists",
            "ContainerAlreadyExists",
            "ContainerBeingDeleted",
            "QueueBeingDeleted",
            "ShareAlreadyExists",
            "ShareBeingDeleted",
        ),
        "ResourceExistsError",
    ),
}


def sdk_error_name(status: int, error_code: str | None) -> str:
    """The name of the exception azure-storage-blob raises for this answer. Pure."""
    return _SDK_BY_STATUS.get(status) or _SDK_BY_CODE.get(error_code or "", "HttpResponseError")


class StorageAnswerError(Exception):
    """A storage error answer read without the SDK: what ``classify`` reads from the SDK's.

    ``message`` is the SDK's message for the same answer (the service's
    ``<Message>``, or ``Operation returned an invalid status '<reason>'`` when
    the answer has no body, then ``ErrorCode:<code>``); ``sdk_name`` the class
    the SDK would raise. Never holds a URL.
    """

    def __init__(self, status: int, error_code: str | None, message: str) -> None:
        super().__init__(message)
        self.status_code = status
        self.error_code = error_code
        self.message = message
        self.sdk_name = sdk_error_name(status, error_code)


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


def text_of(exc: BaseException) -> str:
    try:
        message = getattr(exc, "message", None)
        text = message if isinstance(message, str) and message else str(exc)
    except Exception:  # a half-built exception whose __str__ fails
        text = ""
    return text


def status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def error_code_of(exc: BaseException) -> str | None:
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


def answer_kind(
    status: int | None, code: str | None, text: str, *, auth_type: bool = False
) -> FailureKind | None:
    """The kind the answer itself decides (first match wins), or None: the type decides.

    ``auth_type``: the exception's class says authentication (the SDK's
    ``ClientAuthenticationError``). Order (blob_errors' table)::

        throttled, limit, auth, not_found, timeout, transient (5xx), other (3xx/4xx)
    """
    lowered = (code or "").lower()
    if lowered in _THROTTLE_CODES or _RATE_TEXT.search(text) or status in (429, 503):
        return "throttled"
    if lowered in _LIMIT_CODES or _LIMIT_TEXT.search(text):
        return "limit"
    if status in (401, 403) or lowered in _AUTH_CODES or auth_type:
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
    return None


def stdlib_kind(exc: BaseException) -> FailureKind:
    """The kind of a socket-level failure (no answer): timeout, transient, else other."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        return "transient"  # reset, refused, aborted, gaierror, EHOSTUNREACH
    return "other"


def _first_line(text: str, redact: Callable[[str], str]) -> str:
    """The first line, redacted, then cut to ``MAX_MESSAGE`` (never cut first:
    an echoed URL's signature cut in half is no longer recognised)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return redact_then_truncate(line, MAX_MESSAGE, redact)


def describe(
    exc: BaseException,
    kind: FailureKind,
    *,
    status: int | None,
    code: str | None,
    text: str,
    redact: Callable[[str], str],
) -> BlobFailure:
    """The ``BlobFailure``: ``kind (status code): ExcName: first line``, redacted.

    ExcName is the SDK's class name for a ``StorageAnswerError`` (``sdk_name``).
    """
    name = getattr(exc, "sdk_name", None) or type(exc).__name__
    detail = _first_line(text, redact) or name
    parts = [str(p) for p in (status, code) if p is not None]
    head = f"{kind} ({' '.join(parts)})" if parts else kind
    return BlobFailure(
        kind=kind,
        status_code=status,
        error_code=code,
        retryable=kind in RETRYABLE_KINDS,
        message=redact(f"{head}: {name}: {detail}"),
        exc_type=name,
    )


def classify_wire(exc: BaseException, redact: Callable[[str], str] = scrub) -> BlobFailure:
    """``blob_errors.classify`` for what the SDK-free path raises. Pure; never raises.

    A ``StorageAnswerError`` is classified as the SDK's exception for the same
    answer; a socket error as the SDK's transport errors (timeout, else transient).
    """
    try:
        status, code, text = status_of(exc), error_code_of(exc), text_of(exc)
        auth_type = getattr(exc, "sdk_name", None) == "ClientAuthenticationError"
        kind = answer_kind(status, code, text, auth_type=auth_type) or stdlib_kind(exc)
        return describe(exc, kind, status=status, code=code, text=text, redact=redact)
    except Exception:  # pragma: no cover - defensive: classify must never raise
        return BlobFailure("other", None, None, False, f"other: {type(exc).__name__}", "")


@dataclass(frozen=True)
class Classifier:
    """How ``call_with_retries`` turns what a request raises into a ``BlobFailure``.

    ``translated``: the exception types ``classify`` handles; anything else
    is a bug and passes through.
    """

    classify: Callable[[BaseException, Callable[[str], str]], BlobFailure]
    translated: tuple[type[BaseException], ...]


# The SDK-free path (blob_wire): socket errors and storage answers.
WIRE_ERRORS = Classifier(classify_wire, (OSError, StorageAnswerError))
