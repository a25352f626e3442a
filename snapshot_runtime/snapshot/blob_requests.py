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
* The guest path's Snapshot Blob requests (and their preflight) do not go
  through the SDK when no proxy is configured: ``blob_wire`` (prepared before
  the freeze, all disks sent from one thread), for ~35 MiB of RSS
  (docs/startup.md); nor do the status blob and the job's own log
  (``block_upload``). With a proxy, and for the sidecar's mirror, requests
  stay on azure-storage-blob.

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
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests
from azure.storage.blob import BlobClient, ContentSettings

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.core.redact import scrub, strip_sas
from snapshot_runtime.snapshot.blob_errors import SDK_ERRORS, TRANSLATED, classify
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.snapshot.blob_retry import call_with_retries
from snapshot_runtime.snapshot.blob_rules import sas_redactor
from snapshot_runtime.snapshot.failures import BlobFailure, BlobOpError, status_upload_failed

__all__ = [
    "blob_client",
    "silenced_transport_logs",
    "translate",
    "upload_block_blob",
]


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
        outcome = call_with_retries(
            put, errors=SDK_ERRORS, policy=policy, redact=sas_redactor(sas_url)
        )
    finally:
        client.close()
    if outcome.failure is not None:
        raise status_upload_failed(strip_sas(sas_url), outcome.attempts, outcome.failure)
