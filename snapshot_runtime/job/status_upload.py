"""The status blob's upload: one prepared ``Put Blob``, without the Azure SDK.

Why not azure-storage-blob here: importing it costs ~35 MiB of RSS and ~40 ms
of CPU (``python -c 'import azure.storage.blob'``: VmHWM 45 MiB against 11 MiB
for a bare interpreter; benchmarks/startup.py prints the figure each run). On
the host path (the default mode) nothing else in the job needs the SDK, so the
status upload alone made a 1-disk job peak at ~52 MiB, over the 35 MiB goal
(issue 15, docs/startup.md). The request is one HTTP PUT of a few KiB: built
here with ``http.client``, as the SDK would send it (``x-ms-blob-type:
BlockBlob``, ``x-ms-version``, ``Content-Type``, the SAS query, the server
``timeout``). The guest path's snapshots keep the SDK (snapshot/).

Same contract as ``snapshot.blob_requests.upload_block_blob``, which it
replaces for the status blob:

* bounded retries of retryable failures only (``BlobPolicy``: retries,
  doubling backoff, twice that when throttled), connect and read timeouts
  per attempt;
* failures classified as ``blob_errors.classify`` classifies the SDK's
  (kind, HTTP status, storage error code, retryable), raised as
  ``BlobOpError(STATUS_UPLOAD_FAILED)`` with the same message shape;
* I5: no SAS signature in any message, failure or chained exception: the
  URL is only ever named through ``strip_sas``, texts are redacted with the
  URL's own ``sig`` value and the patterns, transport exceptions are not chained;
* proxies: the SDK path honours the proxy environment variables; this one
  never talks to a proxy, so when any is set the SDK path is used instead
  (``uses_sdk``): a status upload never goes direct where it went through a
  proxy, nor the reverse.

Blocks the calling thread for at most about ``(retries + 1) * (connect +
request timeout)`` plus the backoff. Never called inside the frozen window.
"""

from __future__ import annotations

import http.client
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.core.redact import Redactor, redact_then_truncate, scrub, strip_sas
from snapshot_runtime.snapshot.blob_policy import SDK_DEFAULT_API_VERSION, BlobPolicy
from snapshot_runtime.snapshot.blob_wire import proxy_configured
from snapshot_runtime.snapshot.failures import (
    MAX_MESSAGE,
    RETRYABLE_KINDS,
    BlobFailure,
    BlobOpError,
    FailureKind,
)

__all__ = [
    "SDK_DEFAULT_API_VERSION",
    "StatusPut",
    "classify_answer",
    "classify_transport",
    "proxy_configured",
    "put_status_blob",
    "upload_status_blob",
]

_XML_CODE = re.compile(rb"<Code>(.*?)</Code>", re.DOTALL)
_XML_MESSAGE = re.compile(rb"<Message>(.*?)</Message>", re.DOTALL)
_THROTTLE_CODES = frozenset({"serverbusy", "snapshotoperationrateexceeded", "toomanyrequests"})
_AUTH_CODES = frozenset({"authenticationfailed", "invalidauthenticationinfo"})
_TIMEOUT_CODES = frozenset({"operationtimedout"})
_MAX_ANSWER = 64 * 1024  # an error body is a short XML document; never read more


def _sas_redactor(url: str) -> Redactor:
    """A redactor that knows this URL's exact ``sig`` value (raw and decoded)."""
    query = urlsplit(url).query
    secrets = [
        value
        for name, _, value in (part.partition("=") for part in query.split("&"))
        if name.lower() == "sig" and value
    ]
    secrets.extend(v for k, v in parse_qsl(query) if k.lower() == "sig" and v)
    return Redactor(secrets)


@dataclass(frozen=True)
class StatusPut:
    """One prepared Put Blob: where to connect, what to send. Built once, no I/O."""

    scheme: str
    host: str
    port: int | None
    target: str  # path and query (the SAS, plus the server-side timeout)
    headers: dict[str, str]

    @classmethod
    def prepare(
        cls, sas_url: str, data: bytes, *, policy: BlobPolicy, content_type: str
    ) -> StatusPut:
        """Raises ``ValueError`` (no SAS in its text) for a URL that is not http(s)."""
        parts = urlsplit(sas_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) blob URL")
        query = parts.query
        # The SDK sends the server-side timeout, in whole seconds, on every request.
        server_timeout = f"timeout={max(1, int(policy.request_timeout))}"
        query = f"{query}&{server_timeout}" if query else server_timeout
        headers = {
            "x-ms-blob-type": "BlockBlob",
            "x-ms-version": policy.api_version or SDK_DEFAULT_API_VERSION,
            "Content-Type": content_type,
            "Content-Length": str(len(data)),
            "Accept": "application/xml",
            "User-Agent": "snapshot-runtime status",
        }
        return cls(parts.scheme, parts.hostname, parts.port, f"{parts.path}?{query}", headers)


class _Answer(Exception):
    """A non-2xx answer: status, storage error code, and the service's message."""

    def __init__(self, status: int, error_code: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def classify_answer(
    status: int, error_code: str | None, message: str, redact: Callable[[str], str] = scrub
) -> BlobFailure:
    """A storage answer's failure, by the rules of ``blob_errors.classify``. Pure.

    The message reads as the SDK path's does for the same answer:
    ``kind (status code): HttpResponseError: <first line of the service's message>``.
    """
    lowered = (error_code or "").lower()
    kind: FailureKind
    if lowered in _THROTTLE_CODES or status in (429, 503):
        kind = "throttled"
    elif status in (401, 403) or lowered in _AUTH_CODES:
        kind = "auth"
    elif status == 404:
        kind = "not_found"
    elif status == 408 or lowered in _TIMEOUT_CODES:
        kind = "timeout"
    elif status >= 500:
        kind = "transient"
    else:
        kind = "other"
    # The class azure-core's error map gives the SDK path's exception (its name is
    # in the message): 401 and 404 have their own, a 403 is an HttpResponseError.
    exc_type = {401: "ClientAuthenticationError", 404: "ResourceNotFoundError"}.get(
        status, "HttpResponseError"
    )
    line = message.strip().splitlines()[0] if message.strip() else exc_type
    detail = redact_then_truncate(line, MAX_MESSAGE, redact)
    head = " ".join(str(p) for p in (status, error_code) if p is not None)
    return BlobFailure(
        kind=kind,
        status_code=status,
        error_code=error_code,
        retryable=kind in RETRYABLE_KINDS,
        message=redact(f"{kind} ({head}): {exc_type}: {detail}"),
        exc_type=exc_type,
    )


def classify_transport(exc: OSError, redact: Callable[[str], str] = scrub) -> BlobFailure:
    """A socket-level failure (no answer): timeout, else transient. Pure."""
    kind: FailureKind = "timeout" if isinstance(exc, TimeoutError) else "transient"
    detail = redact_then_truncate(str(exc) or type(exc).__name__, MAX_MESSAGE, redact)
    return BlobFailure(
        kind=kind,
        status_code=None,
        error_code=None,
        retryable=True,
        message=redact(f"{kind}: {type(exc).__name__}: {detail}"),
        exc_type=type(exc).__name__,
    )


def _connection(put: StatusPut, policy: BlobPolicy) -> http.client.HTTPConnection:
    if put.scheme == "https":
        import certifi  # noqa: PLC0415 - the CA bundle the SDK (requests) verifies against

        context = ssl.create_default_context(cafile=certifi.where())
        return http.client.HTTPSConnection(
            put.host, put.port, timeout=policy.connect_timeout, context=context
        )
    return http.client.HTTPConnection(put.host, put.port, timeout=policy.connect_timeout)


def put_status_blob(put: StatusPut, data: bytes, *, policy: BlobPolicy, budget: float) -> None:
    """Send one attempt. Raises ``_Answer`` for a non-2xx answer, ``OSError`` on the socket.

    http.client's exceptions (a reset, a malformed answer) are ``OSError`` or
    ``http.client.HTTPException``; the latter is re-raised as ``ConnectionError``.
    """
    conn = _connection(put, policy)
    try:
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(budget)  # connected: from here on, the read budget
        conn.request("PUT", put.target, body=data, headers=put.headers)
        response = conn.getresponse()
        body = response.read(_MAX_ANSWER)
        if 200 <= response.status < 300:
            return
        code_match = _XML_CODE.search(body)
        error_code = response.getheader("x-ms-error-code") or (
            code_match.group(1).decode("utf-8", "replace").strip() if code_match else None
        )
        found = _XML_MESSAGE.search(body)
        message = (
            found.group(1).decode("utf-8", "replace")
            if found
            else (response.reason or f"HTTP {response.status}")
        )
        raise _Answer(response.status, error_code or None, message)
    except http.client.HTTPException as exc:
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
    finally:
        conn.close()


def _backoff_delay(policy: BlobPolicy, attempt: int, failure: BlobFailure) -> float:
    """``blob_retry.backoff_delay``: doubling from backoff_seconds, twice that when throttled."""
    base = policy.backoff_seconds * (2.0 if failure.kind == "throttled" else 1.0)
    return float(base * 2 ** max(0, attempt - 1))


def upload_status_blob(
    sas_url: str,
    data: bytes,
    *,
    policy: BlobPolicy,
    content_type: str = "application/json",
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Create or overwrite the status block blob, with bounded retries.

    Raises ``BlobOpError(code=STATUS_UPLOAD_FAILED)``; its message names the
    blob by ``strip_sas`` and holds no signature.
    """
    if proxy_configured():
        from snapshot_runtime.snapshot.blob_requests import upload_block_blob  # noqa: PLC0415

        upload_block_blob(sas_url, data, policy=policy, content_type=content_type)
        return
    redact = _sas_redactor(sas_url)
    try:
        put = StatusPut.prepare(sas_url, data, policy=policy, content_type=content_type)
    except ValueError as exc:
        failure = BlobFailure("other", None, None, False, f"other: invalid blob URL: {exc}")
        raise BlobOpError(
            ErrorCode.STATUS_UPLOAD_FAILED, f"invalid blob URL {strip_sas(sas_url)}", failure
        ) from None
    attempts = 0
    while True:
        attempts += 1
        try:
            put_status_blob(put, data, policy=policy, budget=policy.request_timeout)
            return
        except _Answer as answer:
            failure = classify_answer(answer.status, answer.error_code, answer.message, redact)
        except OSError as exc:
            failure = classify_transport(exc, redact)
        if not failure.retryable or attempts > policy.retries:
            break
        sleep(_backoff_delay(policy, attempts, failure))
    raise BlobOpError(
        ErrorCode.STATUS_UPLOAD_FAILED,
        f"status upload to {strip_sas(sas_url)} failed after {attempts} "
        f"attempt(s): {failure.message}",
        failure,
    )
