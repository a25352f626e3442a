"""A block blob's upload (the status blob, the job's own log): one prepared ``Put Blob``, no SDK.

Why not azure-storage-blob here: importing it costs ~35 MiB of RSS and ~40 ms
of CPU (``python -c 'import azure.storage.blob'``: VmHWM 44.4 MiB against
8.5 MiB for a bare interpreter; benchmarks/startup.py prints the figure each
run). The host path needs nothing else of it, and the guest path's snapshot
requests no longer do (blob_wire): the status upload made a 1-disk host job
peak at ~52 MiB, and the job log's upload (a ``logsBlobUri`` and no sidecar)
a guest job, over the 35 MiB goal (issue 15, docs/startup.md). The request
is one HTTP PUT: built here with ``http.client``, as the SDK would send it
(``x-ms-blob-type: BlockBlob``, ``x-ms-version``, ``Content-Type``, the SAS
query as the SDK keeps it, the server ``timeout``).

Same contract as ``blob_requests.upload_block_blob``, which it replaces:

* bounded retries of retryable failures only: ``blob_retry.call_with_retries``
  with ``BlobPolicy`` (retries, doubling backoff, twice that when
  throttled), connect and read timeouts per attempt;
* failures classified and worded by ``blob_rules`` (``WIRE_ERRORS``), as
  ``blob_errors.classify`` does the SDK's (kind, HTTP status, storage error
  code, retryable, the SDK's exception name), raised as
  ``BlobOpError(STATUS_UPLOAD_FAILED)`` with the same message;
* I5: no SAS signature in any message, failure or chained exception: the
  URL is only ever named through ``strip_sas``, texts are redacted with the
  URL's own ``sig`` value and the patterns, transport exceptions are not chained;
* proxies: the SDK path honours the proxy environment variables; this one
  never talks to a proxy, so when any is set the SDK path is used instead
  (``blob_policy.proxy_configured``): an upload never goes direct where it
  went through a proxy, nor the reverse.

Blocks the calling thread for at most about ``(retries + 1) * (connect +
request timeout)`` plus the backoff. Never called inside the frozen window.
"""

from __future__ import annotations

import http.client
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.core.redact import scrub, strip_sas
from snapshot_runtime.snapshot.blob_policy import (
    SDK_DEFAULT_API_VERSION,
    BlobPolicy,
    proxy_configured,
    sas_token,
)
from snapshot_runtime.snapshot.blob_retry import call_with_retries
from snapshot_runtime.snapshot.blob_rules import (
    WIRE_ERRORS,
    StorageAnswerError,
    classify_wire,
    sas_redactor,
)
from snapshot_runtime.snapshot.failures import BlobFailure, BlobOpError, status_upload_failed

__all__ = [
    "BlockPut",
    "classify_answer",
    "put_block",
    "upload_block_blob_direct",
]

_XML_CODE = re.compile(rb"<Code>(.*?)</Code>", re.DOTALL)
_XML_MESSAGE = re.compile(rb"<Message>(.*?)</Message>", re.DOTALL)
_MAX_ANSWER = 64 * 1024  # an error body is a short XML document; never read more


@dataclass(frozen=True)
class BlockPut:
    """One prepared Put Blob: where to connect, what to send. Built once, no I/O."""

    scheme: str
    host: str
    port: int | None
    target: str  # path and query (the SAS, plus the server-side timeout)
    headers: dict[str, str]

    @classmethod
    def prepare(
        cls, sas_url: str, data: bytes, *, policy: BlobPolicy, content_type: str
    ) -> BlockPut:
        """Raises ``ValueError`` (no SAS in its text) for a URL that is not http(s)."""
        parts = urlsplit(sas_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) blob URL")
        query = sas_token(parts.query)
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


def classify_answer(
    status: int, error_code: str | None, message: str, redact: Callable[[str], str] = scrub
) -> BlobFailure:
    """A storage answer's failure, as ``blob_errors.classify`` words the SDK's. Pure.

    ``kind (status code): <the SDK's exception name>: <first line of the message>``.
    """
    return classify_wire(StorageAnswerError(status, error_code, message), redact)


def _connection(put: BlockPut, policy: BlobPolicy) -> http.client.HTTPConnection:
    if put.scheme == "https":
        import certifi  # noqa: PLC0415 - the CA bundle the SDK (requests) verifies against

        context = ssl.create_default_context(cafile=certifi.where())
        return http.client.HTTPSConnection(
            put.host, put.port, timeout=policy.connect_timeout, context=context
        )
    return http.client.HTTPConnection(put.host, put.port, timeout=policy.connect_timeout)


def put_block(put: BlockPut, data: bytes, *, policy: BlobPolicy, budget: float) -> None:
    """Send one attempt. Raises ``StorageAnswerError`` for a non-2xx answer, ``OSError``
    on the socket.

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
        error_code = (
            code_match.group(1).decode("utf-8", "replace").strip()
            if code_match
            else response.getheader("x-ms-error-code")
        ) or None
        found = _XML_MESSAGE.search(body)
        # The SDK's message for the answer (blob_wire._Answer.error says how).
        if found:
            message = found.group(1).decode("utf-8", "replace")
        elif error_code:
            message = f"Operation returned an invalid status '{response.reason}'"
        else:
            message = response.reason or f"HTTP {response.status}"
        raise StorageAnswerError(response.status, error_code, message)
    except http.client.HTTPException as exc:
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
    finally:
        conn.close()


def upload_block_blob_direct(
    sas_url: str,
    data: bytes,
    *,
    policy: BlobPolicy,
    content_type: str = "application/json",
) -> None:
    """Create or overwrite a block blob, with bounded retries (the SDK's with a proxy).

    Raises ``BlobOpError(code=STATUS_UPLOAD_FAILED)``, as ``upload_block_blob``
    does; its message names the blob by ``strip_sas`` and holds no signature.
    """
    if proxy_configured():
        from snapshot_runtime.snapshot.blob_requests import upload_block_blob  # noqa: PLC0415

        upload_block_blob(sas_url, data, policy=policy, content_type=content_type)
        return
    try:
        put = BlockPut.prepare(sas_url, data, policy=policy, content_type=content_type)
    except ValueError as exc:
        failure = BlobFailure("other", None, None, False, f"other: invalid blob URL: {exc}")
        raise BlobOpError(
            ErrorCode.STATUS_UPLOAD_FAILED, f"invalid blob URL {strip_sas(sas_url)}", failure
        ) from None

    def attempt(budget: float) -> None:
        put_block(put, data, policy=policy, budget=budget)

    outcome = call_with_retries(
        attempt, errors=WIRE_ERRORS, policy=policy, redact=sas_redactor(sas_url)
    )
    if outcome.failure is not None:
        raise status_upload_failed(strip_sas(sas_url), outcome.attempts, outcome.failure)
