"""Rendering /metrics, cached between state changes.

Everything the sidecar's own state produces (the catalogue's families, build
info, the collector meta-metrics) changes only when the ledger commits or a
live gauge moves; ``Ledger.version`` says when. ``CachedExposition`` renders
that *stable* registry once per version and format, and appends a fresh
rendering of the small *volatile* registry (process CPU/RSS/fds) to every
response. A scrape between two state changes therefore costs a dictionary
lookup plus a dozen samples, which is what keeps the p99 low on a busy VM.

Format negotiation is prometheus-client's ``choose_encoder`` (OpenMetrics for
scrapers that accept it, which is what carries the exemplars). In OpenMetrics
the stable part's ``# EOF`` is cut so the body ends with exactly one.

Thread-safe (scrapes run on one thread per connection).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["CachedExposition", "Exposition", "RegistryExposition"]

_EOF = b"# EOF\n"


class Exposition(Protocol):
    def render(self, accept: str) -> tuple[bytes, str]:
        """(body, content type) for a request's Accept header."""
        ...


class RegistryExposition:
    """One registry, rendered on every request (no cache)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def render(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


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
        self._cache: dict[str, tuple[int, bytes]] = {}
        self.hits = 0
        self.misses = 0

    def render(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        version = self._version()  # read first: a change during rendering re-renders next time
        with self._lock:
            cached = self._cache.get(content_type)
        if cached is not None and cached[0] == version:
            stable = cached[1]
            self.hits += 1
        else:
            stable = encoder(self._stable)
            with self._lock:
                self._cache[content_type] = (version, stable)
            self.misses += 1
        if self._volatile is None:
            return stable, content_type
        volatile = encoder(self._volatile)
        if stable.endswith(_EOF):
            stable = stable[: -len(_EOF)]
        return stable + volatile, content_type
