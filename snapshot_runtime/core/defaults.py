"""The runtime's default locations (a leaf module: no imports, cheap for every command)."""

from __future__ import annotations

__all__ = [
    "DEFAULT_FREEZE_TIMEOUT",
    "DEFAULT_RUN_DIR",
    "DEFAULT_SPOOL_DIR",
    "DEFAULT_STATE_DIR",
]

DEFAULT_STATE_DIR = "/var/lib/snapshot-runtime"
# tmpfs: never frozen, so the watchdog and the spool can be written right up to
# (and, for the spool, inside) the frozen window.
DEFAULT_RUN_DIR = "/run/snapshot-runtime"
DEFAULT_SPOOL_DIR = DEFAULT_RUN_DIR + "/spool"
# Seconds a filesystem may stay frozen before the runtime (and its watchdog) thaws it.
DEFAULT_FREEZE_TIMEOUT = 60.0
