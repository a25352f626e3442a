"""The Azure resource cache: what the sidecar learned from IMDS, for the job's resource.

The sidecar asks the Azure Instance Metadata Service (IMDS) at most daily
(``snapshot_sidecar.resource_detection``) and writes what it learned to
``<spool>/azure-resource.json`` (and its own copy in its state directory).
A job reads that file once, when its telemetry starts (before any freeze),
and adds the attributes to its spans' resource; it never asks IMDS itself,
so a job's start-up costs no network round trip and the frozen window none.
No file (a VM without IMDS, no sidecar): no cloud attributes, nothing else
changes (docs/telemetry.md, "Resource").

The file is untrusted input: read through an fd opened without following a
link, only a regular file owned by root or by us and writable by nobody
else, at most ``MAX_CACHE_BYTES``, parsed with bounds, only the known keys
kept (``ALLOWED_KEYS``), each a short printable string; anything else is
ignored, never an error for the job.

    {"schema": "snapshot-runtime/azure-resource", "version": 1,
     "detected_at": 1733300000.0,
     "attributes": {"cloud.provider": "azure", "cloud.platform": "azure.vm", ...}}
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from snapshot_runtime.core.untrusted_file import read_at_most
from snapshot_runtime.telemetry.spool_schema import SpoolFormatError, loads_bounded

__all__ = [
    "ALLOWED_KEYS",
    "CACHE_FILE",
    "CACHE_SCHEMA",
    "CACHE_VERSION",
    "MAX_CACHE_AGE_SECONDS",
    "MAX_CACHE_BYTES",
    "MAX_VALUE_CHARS",
    "ResourceCache",
    "cache_document",
    "clean_attributes",
    "parse_cache",
    "read_cache",
]

CACHE_FILE = "azure-resource.json"
CACHE_SCHEMA = "snapshot-runtime/azure-resource"
CACHE_VERSION = 1
MAX_CACHE_BYTES = 8 * 1024
MAX_VALUE_CHARS = 512
# The sidecar refreshes daily; a cache it stopped refreshing a week ago is not
# believed any more (the VM may have been moved, resized or re-created).
MAX_CACHE_AGE_SECONDS = 7 * 24 * 3600.0
# Resource attributes a cache may set (semantic conventions: cloud, host, os,
# and the Azure VM ones the detector reports). Nothing else is taken from it.
ALLOWED_KEYS = frozenset(
    {
        "cloud.provider",
        "cloud.platform",
        "cloud.region",
        "cloud.resource_id",
        "cloud.account.id",
        "azure.resource_group.name",
        "azure.vm.scaleset.name",
        "azure.vm.sku",
        "host.id",
        "host.name",
        "host.type",
        "os.type",
        "os.version",
    }
)


@dataclass(frozen=True)
class ResourceCache:
    """A cache file's content: ``attributes`` (only allowed keys), ``detected_at`` (epoch s)."""

    attributes: dict[str, str]
    detected_at: float


def clean_attributes(raw: Mapping[str, object]) -> dict[str, str]:
    """The allowed keys of ``raw`` whose values are non-empty printable strings. Pure."""
    clean: dict[str, str] = {}
    for key, value in raw.items():
        if key not in ALLOWED_KEYS or not isinstance(value, str):
            continue
        text = value.strip()
        if not text or len(text) > MAX_VALUE_CHARS or not text.isprintable():
            continue
        clean[key] = text
    return clean


def cache_document(attributes: Mapping[str, str], detected_at: float) -> bytes:
    """The cache file's bytes for ``attributes`` detected at ``detected_at``. Pure."""
    doc = {
        "schema": CACHE_SCHEMA,
        "version": CACHE_VERSION,
        "detected_at": detected_at,
        "attributes": clean_attributes(attributes),
    }
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def parse_cache(
    data: bytes, *, now: float, max_age: float = MAX_CACHE_AGE_SECONDS
) -> ResourceCache:
    """The cache in ``data``; raises ``ValueError`` saying why it is not believed. Pure."""
    try:
        doc = loads_bounded(data, max_bytes=MAX_CACHE_BYTES, max_depth=4)
    except SpoolFormatError as exc:
        raise ValueError(f"not a resource cache: {exc.reason}") from None
    if not isinstance(doc, dict) or doc.get("schema") != CACHE_SCHEMA:
        raise ValueError("not a resource cache")
    if doc.get("version") != CACHE_VERSION:
        raise ValueError(f"resource cache version {doc.get('version')!r} unknown")
    detected_at = doc.get("detected_at")
    if isinstance(detected_at, bool) or not isinstance(detected_at, int | float):
        raise ValueError("resource cache without detected_at")
    age = now - float(detected_at)
    if age > max_age:
        raise ValueError(f"resource cache is {age:.0f} s old")
    if age < -300.0:  # from the future (beyond clock slew): not believed
        raise ValueError("resource cache detected in the future")
    raw = doc.get("attributes")
    if not isinstance(raw, dict):
        raise ValueError("resource cache without attributes")
    attributes = clean_attributes(raw)
    if attributes.get("cloud.provider") != "azure":
        raise ValueError("resource cache is not from Azure")
    return ResourceCache(attributes, float(detected_at))


def read_cache(
    path: str | os.PathLike[str], *, now: float, max_age: float = MAX_CACHE_AGE_SECONDS
) -> ResourceCache:
    """The cache at ``path``. Raises ``FileNotFoundError`` (none), ``OSError`` or ``ValueError``.

    Small file read: one open, one fstat, one read of at most
    ``MAX_CACHE_BYTES + 1``. Call it before any freeze, never inside the window.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("resource cache is not a regular file")
        if st.st_uid not in (0, os.geteuid()):
            raise ValueError("resource cache owned by another user")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ValueError("resource cache writable by others")
        data = read_at_most(fd, MAX_CACHE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CACHE_BYTES:
        raise ValueError(f"resource cache over {MAX_CACHE_BYTES} bytes")
    return parse_cache(data, now=now, max_age=max_age)
