"""The rules a blob URL from the settings must keep, and the secrets it carries.

Pure. ``validate_blob_url`` raises ``ConfigError(INVALID_SETTINGS)`` naming
the field (``where``) and the URL only through ``strip_sas`` (never the
netloc when it has user info: that may be a credential). A valid URL:

* is ``https``; ``http`` only for ``EMULATOR_HOSTS`` (127.0.0.1, localhost,
  ::1: the local emulator, whose URLs are path-style
  ``/account/container/blob``);
* has a host and a valid port, no user info, no whitespace or control
  characters (surrounding whitespace is stripped first);
* names a container and a blob;
* carries a SAS (a non-empty ``sig=``).

``sas_secrets`` yields the credential parts of a SAS URL for a redactor: its
query string and each ``sig`` value, raw and percent-decoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, unquote, urlsplit

from snapshot_runtime.core.redact import strip_sas
from snapshot_runtime.inputs.settings_values import invalid_settings

__all__ = ["EMULATOR_HOSTS", "sas_secrets", "validate_blob_url"]

# http is allowed only here: the local blob emulator.
EMULATOR_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def validate_blob_url(value: str, where: str) -> str:
    """A blob URL with a SAS; returns it without surrounding whitespace."""
    url = value.strip()
    if not url:
        raise invalid_settings(f"{where} is empty")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise invalid_settings(
            f"{where} ({strip_sas(url)}) contains whitespace or control characters"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # parsing the port validates it
    except ValueError:
        raise invalid_settings(f"{where} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host:
        raise invalid_settings(f"{where} is not an http(s) URL with a host")
    if "@" in parts.netloc:
        # Never echo the netloc: user info may be a credential.
        raise invalid_settings(f"{where} must not contain user information (user@host)")
    shown = strip_sas(url)
    emulator = host.lower() in EMULATOR_HOSTS
    if scheme == "http" and not emulator:
        raise invalid_settings(
            f"{where} ({shown}) must use https; http is allowed only for the local "
            "emulator (127.0.0.1, localhost)"
        )
    segments = [s for s in parts.path.split("/") if s]
    needed = 3 if emulator else 2
    if len(segments) < needed:
        layout = "/account/container/blob" if emulator else "/container/blob"
        raise invalid_settings(f"{where} ({shown}) must name a container and a blob ({layout})")
    query = parse_qs(parts.query, keep_blank_values=True)
    sig = [s for s in query.get("sig", []) if s]
    if not sig:
        raise invalid_settings(f"{where} ({shown}) has no SAS signature (sig=) in its query")
    return url


def sas_secrets(url: str) -> Iterator[str]:
    """The credential parts of a SAS URL: its query and each sig value."""
    query = urlsplit(url).query
    if query:
        yield query
        yield unquote(query)
    for key, _, raw in (pair.partition("=") for pair in query.split("&")):
        if key.lower() == "sig" and raw:
            yield raw
            yield unquote(raw)
