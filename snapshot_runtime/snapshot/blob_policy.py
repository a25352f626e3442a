"""The timeouts and retry budget of blob requests, as data.

Pure (no azure, no I/O): job options carry a ``BlobPolicy`` without importing
the storage SDK; ``blob_retry`` and ``blob_requests`` apply it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SDK_DEFAULT_API_VERSION", "BlobPolicy"]

# azure-storage-blob 12.27's default service version (its
# _serialize._SUPPORTED_API_VERSIONS[-1]), sent by the SDK-free requests
# (blob_wire, job/status_upload) so that both paths send the same version;
# tests/job/test_status_upload.py fails when an SDK upgrade changes it.
SDK_DEFAULT_API_VERSION = "2026-10-06"


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
