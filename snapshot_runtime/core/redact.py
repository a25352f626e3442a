"""Secret scrubbing (I5): SAS signatures, account keys, protected settings.

Pure module: no I/O. Every text that leaves the process (log line, script
output, exception text, span attribute, record, status) passes ``scrub``.
A ``Redactor`` additionally knows the exact secret values of one job (the
protected settings' strings), so that a secret is removed even where no
pattern would recognise it (for example inside base64).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

__all__ = ["REDACTED", "Redactor", "scrub", "strip_sas"]

REDACTED = "REDACTED"

# sig= in a SAS query, raw or percent-encoded (sig%3D), in URLs, JSON and prose.
_SIG = re.compile(r"(?i)(\bsig(?:=|%3D))[^&\s\"'<>\\]+")
# Connection-string secrets: AccountKey=...; SharedAccessSignature=...;
_CONN = re.compile(r"(?i)\b(AccountKey|SharedAccessSignature|SharedAccessKey)=[^;\s\"']+")
# Authorization headers (SharedKey account:signature, Bearer tokens).
_AUTH = re.compile(r"(?i)\b(SharedKey(?:Lite)?\s+[^:\s]+:|Bearer\s+)[A-Za-z0-9+/=._-]+")


def scrub(text: str) -> str:
    """Remove every secret a pattern can recognise."""
    if not text:
        return text
    text = _SIG.sub(lambda m: m.group(1) + REDACTED, text)
    text = _CONN.sub(lambda m: m.group(1) + "=" + REDACTED, text)
    return _AUTH.sub(lambda m: m.group(1) + REDACTED, text)


def strip_sas(url: str) -> str:
    """A blob URL without its query (the SAS is the credential)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url.split("?", 1)[0])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class Redactor:
    """Scrubs patterns plus the exact secret values registered for one job.

    Thread-safe: values may be added while other threads scrub.
    """

    # Secrets shorter than this would blank out ordinary words.
    MIN_SECRET_LENGTH = 8

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        new = {s for s in secrets if isinstance(s, str) and len(s) >= self.MIN_SECRET_LENGTH}
        with self._lock:
            merged = set(self._values) | new
            # Longest first, so a secret containing another is removed whole.
            self._values = tuple(sorted(merged, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        return self.scrub(text)

    def scrub(self, text: str) -> str:
        if not text:
            return text
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        return scrub(text)
