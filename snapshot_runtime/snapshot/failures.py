"""A failed blob request as data: its kind, status, code and scrubbed message.

Pure data (no azure, no I/O), so results and records can name a failure
without importing the SDK; ``blob_errors.classify`` builds these at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from snapshot_runtime.core.errors import BlobError, ErrorCode

__all__ = [
    "MAX_MESSAGE",
    "RETRYABLE_KINDS",
    "BlobFailure",
    "BlobOpError",
    "FailureKind",
    "status_upload_failed",
]

FailureKind = Literal["auth", "not_found", "throttled", "limit", "transient", "timeout", "other"]

RETRYABLE_KINDS: frozenset[str] = frozenset({"throttled", "transient", "timeout"})
# Longest message detail we keep; storage errors echo the whole XML body otherwise.
# Cut only with ``core.redact.redact_then_truncate`` (redact first, I5).
MAX_MESSAGE = 300


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


def status_upload_failed(target: str, attempts: int, failure: BlobFailure) -> BlobOpError:
    """The one wording of a failed status upload, for the direct and the SDK path.

    ``target`` is the blob URL without its SAS (``core.redact.strip_sas``).
    """
    return BlobOpError(
        ErrorCode.STATUS_UPLOAD_FAILED,
        f"status upload to {target} failed after {attempts} attempt(s): {failure.message}",
        failure,
    )
