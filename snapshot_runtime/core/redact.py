"""Secret scrubbing (I5): SAS signatures, account keys, protected settings.

Pure module: no I/O. Every text that leaves the process (log line, script
output, exception text, span attribute, record, status) passes ``scrub``.
A ``Redactor`` additionally knows the exact secret values of one job (the
protected settings' strings, also URL-decoded/encoded), so that a secret is
removed even where no pattern would recognise it (for example inside base64).

Redact, then truncate (I5): a secret cut in half is recognised by no pattern
and no exact value, so text is never shortened before it is redacted.
``redact_then_truncate`` and ``redact_then_keep_tail`` are the one home of
that rule; where a cut goes through a secret-like run (base64, percent
escapes) the run is dropped (``drop_partial_run``), not printed. Out of
scope: a signature split across a line break. docs/telemetry.md, Redaction.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = [
    "ELLIPSIS",
    "MAX_SECRET_RUN",
    "REDACTED",
    "Redactor",
    "drop_partial_run",
    "redact_then_keep_tail",
    "redact_then_truncate",
    "scrub",
    "strip_sas",
]

REDACTED = "REDACTED"
ELLIPSIS = "..."
# The longest secret value a cut can go through: a 44-character SAS
# signature percent-encoded twice is under 200; protected values are longer
# but are also removed by exact value before any cut.
MAX_SECRET_RUN = 1024

# The key of a secret starts where no letter precedes it: ``&sig=``, ``?SIG=``,
# ``%26sig%3D`` (a URL inside a URL: ``6`` then ``s`` is no ``\b`` boundary),
# ``%3Fsig%3D`` and ``%3BAccountKey`` (after a percent escape, whatever its
# last character), ``sas_sig=``. A letter before it (``xsig=``) is another word.
_KEY_START = r"(?:(?<![A-Za-z])|(?<=%[0-9A-Fa-f]{2}))"
# ``=`` raw, percent-encoded once or more (``%3D``, ``%253D``), as an HTML
# entity, a JSON/C escape, or a JSON/prose key (``"sig": "...``, ``sig: ``).
_SEPARATOR = (
    r"(?:=|%(?:25)*3D|&\#0*61;|&\#x0*3d;|\\u003d|\\x3d"
    r"|[\"']?[ \t]*:[ \t]*[\"']?)"
)
# The value runs to a delimiter: ``&`` raw or percent-encoded (``%26``,
# ``%2526``), whitespace, quotes, angle brackets, a backslash (but ``\/``,
# JSON's escaped slash, is part of a base64 value).
_VALUE = r"(?:\\/|(?!%(?:25)*26)[^&\s\"'<>\\])+"
# sig= in a SAS query, in every form above, in URLs, JSON and prose.
_SIG = re.compile(r"(?i)(" + _KEY_START + r"sig" + _SEPARATOR + r")" + _VALUE)
# Connection-string secrets: AccountKey=...; SharedAccessSignature=...;
_CONN = re.compile(
    r"(?i)" + _KEY_START + r"(AccountKey|SharedAccessSignature|SharedAccessKey)"
    r"(" + _SEPARATOR + r")(?:(?!%(?:25)*3B)[^;\s\"'<>])+"
)
# Authorization headers (SharedKey account:signature, Bearer tokens).
_AUTH = re.compile(r"(?i)\b(SharedKey(?:Lite)?\s+[^:\s]+:|Bearer\s+)[A-Za-z0-9+/=._-]+")
# What a secret value is made of (base64, URL-safe base64, percent escapes, a
# JSON-escaped slash): a cut through such a run may leave part of a secret.
_SECRETISH_TAIL = re.compile(r"(?:\\/|[A-Za-z0-9+/=%_.~-])+\Z")
_SECRETISH_HEAD = re.compile(r"\A(?:\\/|[A-Za-z0-9+/=%_.~-])+")
_SECRETISH_CHAR = re.compile(r"[A-Za-z0-9+/=%_.~\\-]")


def scrub(text: str) -> str:
    """Remove every secret a pattern can recognise."""
    if not text:
        return text
    # Literal pre-checks: most text holds no key at all, and the patterns'
    # look-behinds cost a try at every position.
    lowered = text.casefold()
    if "sig" in lowered:
        text = _SIG.sub(lambda m: m.group(1) + REDACTED, text)
    if "accountkey" in lowered or "sharedaccess" in lowered:
        text = _CONN.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return _AUTH.sub(lambda m: m.group(1) + REDACTED, text)


def drop_partial_run(kept: str, *, at_end: bool, longest: int = MAX_SECRET_RUN) -> str:
    """``kept`` without the secret-like run a cut went through.

    ``at_end``: ``kept`` is a head whose end was cut (drop its last run);
    else a tail whose start was cut (drop its first run). A cut signature is
    no longer recognisable by any pattern or exact value, so the run the cut
    went through is dropped rather than printed: all of it, or its
    ``longest`` characters next to the cut when it is longer (a secret cut
    there has at most that many characters on this side; a 100 MB line of
    one letter keeps its start).
    """
    found = (_SECRETISH_TAIL if at_end else _SECRETISH_HEAD).search(kept)
    if found is None:
        return kept
    if at_end:
        return kept[: max(found.start(), len(kept) - longest)]
    return kept[min(found.end(), longest) :]


def redact_then_truncate(
    text: str,
    limit: int,
    redact: Callable[[str], str] = scrub,
    *,
    ellipsis: str = ELLIPSIS,
) -> str:
    """``text`` redacted, then cut to at most ``limit`` characters.

    The one home of the rule "redact before you truncate" (I5): a secret cut
    first is no longer recognised. When the redacted text is too long, it is
    cut to ``limit - len(ellipsis)`` characters; if the cut falls inside a
    secret-like run (base64, percent escapes), that run is dropped too, then
    ``ellipsis`` is appended.
    """
    clean = redact(text)
    if len(clean) <= limit:
        return clean
    room = max(0, limit - len(ellipsis))
    head = clean[:room]
    if room < len(clean) and _SECRETISH_CHAR.match(clean[room]):
        head = drop_partial_run(head, at_end=True)
    return (head + ellipsis)[:limit] if limit > 0 else ""


def redact_then_keep_tail(
    text: str,
    limit: int,
    redact: Callable[[str], str] = scrub,
    *,
    ellipsis: str = ELLIPSIS,
) -> str:
    """``text`` redacted, then only its last ``limit`` characters kept.

    The tail's twin of ``redact_then_truncate``: a kept tail may start with
    the END of a secret, which no pattern recognises, so the secret-like run
    at the cut is dropped and ``ellipsis`` marks the cut.
    """
    clean = redact(text)
    if len(clean) <= limit:
        return clean
    room = max(0, limit - len(ellipsis))
    tail = clean[len(clean) - room :] if room else ""
    if tail and _SECRETISH_CHAR.match(clean[len(clean) - room - 1]):
        tail = drop_partial_run(tail, at_end=False)
    return (ellipsis + tail)[-limit:] if limit > 0 else ""


def strip_sas(url: str) -> str:
    """A blob URL without its query (the SAS is the credential)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url.split("?", 1)[0])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _forms(secret: str) -> set[str]:
    """The ways a secret value shows up in text: as given, URL-decoded,
    URL-encoded once and twice (a URL inside a URL), and JSON's escaped slash."""
    plain = unquote(secret)
    once = quote(plain, safe="")
    forms = {secret, plain, once, quote(once, safe=""), secret.replace("/", "\\/")}
    return {f for f in forms if len(f) >= Redactor.MIN_SECRET_LENGTH}


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
        new = {
            form
            for s in secrets
            if isinstance(s, str) and len(s) >= self.MIN_SECRET_LENGTH
            for form in _forms(s)
        }
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
