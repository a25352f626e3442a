"""The timeouts and retry budget of blob requests, as data; what the SDK would send.

Pure (no azure, no I/O): job options carry a ``BlobPolicy`` without importing
the storage SDK; ``blob_retry`` and ``blob_requests`` apply it. The SDK-free
requests (blob_wire, block_upload) take from here what azure-storage-blob
would send (its default service version, the SAS query it keeps) and
whether a proxy is configured (then the SDK sends instead).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

__all__ = [
    "SDK_DEFAULT_API_VERSION",
    "SDK_SAS_PARAMETERS",
    "BlobPolicy",
    "proxy_configured",
    "sas_token",
]

# azure-storage-blob 12.27's default service version (its
# _serialize._SUPPORTED_API_VERSIONS[-1]), sent by the SDK-free requests
# (blob_wire, block_upload) so that both paths send the same version;
# tests/job/test_status_upload.py fails when an SDK upgrade changes it.
SDK_DEFAULT_API_VERSION = "2026-10-06"
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
# The query parameters azure-storage-blob keeps from a SAS URL (12.27,
# _shared/shared_access_signature.QueryStringConstants.to_list()); it drops
# every other one and keeps the first of a repeated one.
# tests/snapshot/test_blob_wire_sdk.py fails when an SDK upgrade changes it.
SDK_SAS_PARAMETERS = frozenset(
    [
        "sig",
        "sp",
        "st",
        "se",
        "sr",
        "si",
        "sip",
        "spr",
        "sv",
        "rscc",
        "rscd",
        "rsce",
        "rscl",
        "rsct",
        "spk",
        "srk",
        "epk",
        "erk",
        "srt",
        "ss",
        "skoid",
        "sktid",
        "skt",
        "ske",
        "sks",
        "skv",
        "ses",
        "srh",
        "srq",
        "skdutid",
        "sduoid",
        "saoid",
        "suoid",
        "scid",
        "sdd",
    ]
)


def sas_token(query: str) -> str:
    """The SAS query as the SDK sends it (base_client.parse_query). Pure.

    Known SAS parameters only, the first value of each, in their order,
    re-quoted (``quote(value, safe="")``): what the storage service sees is
    the same on both paths, a repeated ``sig`` included.
    """
    first: dict[str, str] = {}
    for name, value in parse_qsl(query):
        first.setdefault(name, value)
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in first.items() if k in SDK_SAS_PARAMETERS)


def proxy_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether any proxy variable is set (any case): then the SDK sends. Pure.

    The SDK honours proxies; blob_wire and block_upload never talk to one, so a request
    never goes direct where it would have gone through a proxy.
    """
    env = os.environ if environ is None else environ
    return any(env.get(name) or env.get(name.upper()) for name in _PROXY_VARIABLES)


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
