"""The sidecar exporter: ingests the runtime's spool and serves it."""

from __future__ import annotations

__all__: list[str] = []
