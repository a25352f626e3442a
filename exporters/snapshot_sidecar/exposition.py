"""Rendering /metrics: the stable part rendered when the state changes, never per scrape.

Everything the sidecar's own state produces (the catalogue's families, build
info) changes only when the ledger commits or a live gauge moves;
``Ledger.version`` says when. ``CachedExposition`` renders that *stable*
registry once per version and format, and appends a fresh rendering of the
small *volatile* registry (process CPU/RSS/fds) to every response.

With ``start_renderer(changed, stop)`` the stable part is rendered on a
thread of its own as soon as the ledger signals a change, so a scrape only
copies bytes: it is served the last finished rendering, never waits for one
(a scrape that arrives within the few milliseconds a rendering takes sees the
previous commit, which is exactly what it would have seen arriving that much
earlier). Rendering on the scrape's thread cost 1–2 ms (text) and 2–4 ms
(OpenMetrics) of CPU under the GIL, ×3–5 while the ingest threads compete for
it: the p99 while ingesting was the scrapes that met a fresh commit. Without
the renderer (tests, ``RegistryExposition`` users) a scrape renders a stale
version itself, as before.

With the renderer, the volatile part is refreshed by it too, every
``VOLATILE_REFRESH_SECONDS``; a scrape renders it itself only when the last
refresh is older than ``VOLATILE_MAX_AGE_SECONDS``. Reading
/proc for it is a dozen system calls, and every one lets a busy ingest thread
take the GIL for a whole switch interval before the scrape gets it back:
that was most of a cached scrape's p99 while ingesting. Process CPU, RSS and
fds at most a second old mean nothing different to a scraper that looks
every 15–60 s.

Gzip: the stable part's compressed stream is cached too (a ``zlib``
compressor after the stable bytes, copied per scrape), so a gzip scrape
compresses only the volatile tail. The body is one ordinary gzip member whose
decompressed bytes are exactly the uncompressed body.

Bytes: the stable rendering plus the volatile rendering is byte for byte what
prometheus-client's ``generate_latest`` (text) or OpenMetrics
``generate_latest`` produce for one registry holding both (in OpenMetrics the
stable part's ``# EOF`` is cut so the body ends with exactly one). Format
negotiation is prometheus-client's ``choose_encoder`` (OpenMetrics for
scrapers that accept it, which is what carries the exemplars).

Thread-safe (scrapes run on one thread per connection; one renderer thread).
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["CachedExposition", "Exposition", "RegistryExposition"]

_EOF = b"# EOF\n"
# Content types choose_encoder can answer (the renderer renders both).
_ACCEPT_TEXT = ""
_ACCEPT_OPENMETRICS = "application/openmetrics-text; version=1.0.0"
# The level the server always used (gzip.compress(..., compresslevel=5)).
GZIP_LEVEL = 5
# How long the renderer waits for a change signal before checking the version
# anyway (a change signalled without the event, e.g. by a test, is not missed).
_RENDERER_IDLE_SECONDS = 1.0
# The volatile part (process metrics): refreshed this often by the renderer,
# served to scrapes while younger than the max age (module docstring).
VOLATILE_REFRESH_SECONDS = 0.5
VOLATILE_MAX_AGE_SECONDS = 1.0

_log = logging.getLogger("snapshot_sidecar.exposition")


class Exposition(Protocol):
    def render(self, accept: str, *, gzip: bool = False) -> tuple[bytes, str]:
        """(body, content type) for a request's Accept header; gzip-compressed when ``gzip``."""
        ...


class RegistryExposition:
    """One registry, rendered on every request (no cache)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def render(self, accept: str, *, gzip: bool = False) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        return (_gzip(body) if gzip else body), content_type


def _gzip(body: bytes) -> bytes:
    # mtime 0, as the cached stream's header has: the same body, the same bytes.
    return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)


def _gzip_compressor() -> zlib._Compress:
    # wbits 16+15: a gzip member (header, deflate, CRC-32 and size trailer).
    return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)


@dataclass(frozen=True)
class _Rendering:
    """The stable part of one format at one ledger version."""

    version: int
    body: bytes  # what the stable registry rendered (``# EOF`` kept)
    head: bytes  # ``body`` without ``# EOF``: what the volatile part is appended to
    gzip_head: bytes  # the gzip stream the compressor has produced for ``head``
    gzip_state: zlib._Compress  # the compressor after ``head`` (copied, never fed)


class CachedExposition:
    def __init__(
        self,
        stable: CollectorRegistry,
        volatile: CollectorRegistry | None,
        version: Callable[[], int],
    ) -> None:
        self._stable = stable
        self._volatile = volatile
        self._version = version
        self._lock = threading.Lock()
        self._cache: dict[str, _Rendering] = {}
        self._volatile_cache: dict[str, tuple[float, bytes]] = {}  # (monotonic, bytes)
        # An Accept header per content type served: the renderer keeps every
        # format a scraper asked for current (escaping variants are their own).
        self._accepts: dict[str, str] = {
            choose_encoder(a)[1]: a for a in (_ACCEPT_OPENMETRICS, _ACCEPT_TEXT)
        }
        self._renderer: threading.Thread | None = None
        self.hits = 0
        self.misses = 0
        self.renders = 0  # stable renderings, on any thread

    # -- the renderer thread -----------------------------------------------------------

    def start_renderer(self, changed: threading.Event, stop: threading.Event) -> threading.Thread:
        """Render each new version as soon as ``changed`` is set, until ``stop`` is set."""
        thread = threading.Thread(
            target=self._render_changes, args=(changed, stop), name="metrics-render", daemon=True
        )
        self._renderer = thread
        thread.start()
        return thread

    def _render_changes(self, changed: threading.Event, stop: threading.Event) -> None:
        while not stop.is_set():
            # Cleared before the version is read: a change after the read sets
            # it again, so no version is left unrendered.
            changed.clear()
            with self._lock:
                accepts = list(self._accepts.values())
            try:
                for accept in accepts:
                    self._refresh(accept)
                    if self._volatile is not None:
                        self._refresh_volatile(accept)
            except Exception:  # a broken collector must not end the thread
                _log.exception("rendering /metrics failed")
            changed.wait(min(_RENDERER_IDLE_SECONDS, VOLATILE_REFRESH_SECONDS))
        self._renderer = None

    def _refresh(self, accept: str) -> _Rendering:
        """The current version's rendering of ``accept``'s format, rendered if missing."""
        encoder, content_type = choose_encoder(accept)
        version = self._version()  # read first: a change during rendering re-renders next time
        with self._lock:
            cached = self._cache.get(content_type)
        if cached is not None and cached.version == version:
            return cached
        body = encoder(self._stable)
        head = body[: -len(_EOF)] if body.endswith(_EOF) else body
        compressor = _gzip_compressor()
        gzip_head = compressor.compress(head)
        rendering = _Rendering(version, body, head, gzip_head, compressor)
        with self._lock:
            self._accepts.setdefault(content_type, accept)
            current = self._cache.get(content_type)
            if current is None or current.version <= version:
                self._cache[content_type] = rendering
            self.renders += 1
        return rendering

    def _refresh_volatile(self, accept: str) -> bytes:
        encoder, content_type = choose_encoder(accept)
        assert self._volatile is not None
        body = encoder(self._volatile)
        with self._lock:
            self._volatile_cache[content_type] = (time.monotonic(), body)
        return body

    def _volatile_part(self, accept: str, content_type: str) -> bytes:
        with self._lock:
            cached = self._volatile_cache.get(content_type)
        fresh = cached is not None and time.monotonic() - cached[0] <= VOLATILE_MAX_AGE_SECONDS
        if cached is not None and fresh and self._renderer is not None:
            return cached[1]
        return self._refresh_volatile(accept)

    def rendered(self, version: int) -> bool:
        """Every format served so far is rendered at ``version`` or later."""
        with self._lock:
            wanted = set(self._accepts)
            formats = {t: r for t, r in self._cache.items() if r.version >= version}
        return wanted <= set(formats)

    # -- a scrape ----------------------------------------------------------------------

    def render(self, accept: str, *, gzip: bool = False) -> tuple[bytes, str]:
        _, content_type = choose_encoder(accept)
        with self._lock:
            cached = self._cache.get(content_type)
        if cached is not None and (self._renderer is not None or cached.version == self._version()):
            # The renderer is on it (or it is current): never render on a scrape.
            rendering = cached
            self.hits += 1
        else:
            rendering = self._refresh(accept)
            self.misses += 1
        if self._volatile is None:
            return (_gzip(rendering.body) if gzip else rendering.body), content_type
        volatile = self._volatile_part(accept, content_type)
        if not gzip:
            return rendering.head + volatile, content_type
        compressor = rendering.gzip_state.copy()
        tail = compressor.compress(volatile) + compressor.flush()
        return rendering.gzip_head + tail, content_type
