"""Reading an untrusted file without trusting its size.

The plugin config, the settings file and HandlerEnvironment.json are read
through an fd their caller already checked; ``st_size`` can lie (a file that
grows after fstat, procfs), so the cap is enforced on what is actually read.
"""

from __future__ import annotations

import os

__all__ = ["read_at_most"]

_CHUNK = 65536


def read_at_most(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``: pass ``cap + 1`` to detect an oversized file."""
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, min(remaining, _CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
