"""The environment contract of a pre- or post-script: exactly what it sees.

Pure: no I/O. ``build_script_env`` raises ``ValueError`` only when ``extra``
names one of the four ``SNAPSHOT_`` contract variables.

Nothing of the runtime's own environment is passed (it may hold secrets).
A script sees exactly::

    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    LANG=C.UTF-8
    HOME=/root
    SNAPSHOT_PHASE=pre|post
    SNAPSHOT_TASK_ID=<task id, "" outside a job>
    SNAPSHOT_ATTEMPT=<1-based attempt number>
    SNAPSHOT_SCRIPT_PATH=<the configured path of the script>

plus the caller's ``extra`` (the job adds ``TRACEPARENT`` and
``SNAPSHOT_MOUNTS``; ``validate`` adds ``SNAPSHOT_DRY_RUN=1``). ``extra`` may
override PATH, LANG and HOME but not the four ``SNAPSHOT_`` contract names.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Literal

__all__ = [
    "CONTRACT_KEYS",
    "SAFE_PATH",
    "SCRIPT_PATH_ENV",
    "Phase",
    "build_script_env",
]

Phase = Literal["pre", "post"]

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SCRIPT_PATH_ENV = "SNAPSHOT_SCRIPT_PATH"
CONTRACT_KEYS = frozenset(
    {"SNAPSHOT_PHASE", "SNAPSHOT_TASK_ID", "SNAPSHOT_ATTEMPT", SCRIPT_PATH_ENV}
)
_NO_EXTRA: Mapping[str, str] = types.MappingProxyType({})


def build_script_env(
    *,
    phase: Phase,
    task_id: str,
    attempt: int,
    script_path: str,
    extra: Mapping[str, str] = _NO_EXTRA,
) -> dict[str, str]:
    """The complete environment of a script (see the module docstring)."""
    clash = CONTRACT_KEYS.intersection(extra)
    if clash:
        raise ValueError(f"extra_env may not set contract variables: {sorted(clash)}")
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
    env.update(extra)
    env.update(
        {
            "SNAPSHOT_PHASE": phase,
            "SNAPSHOT_TASK_ID": task_id,
            "SNAPSHOT_ATTEMPT": str(attempt),
            SCRIPT_PATH_ENV: script_path,
        }
    )
    return env
