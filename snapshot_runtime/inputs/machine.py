"""Facts about this machine and its clock that status documents carry.

The status shape needs a ``uniqueMachineId`` and UTC timestamps; both the job
and the extension handler write status, so both read them here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket

__all__ = ["machine_id", "utcnow"]


def machine_id() -> str:
    """systemd's /etc/machine-id, else the host name (containers may lack the file)."""
    with contextlib.suppress(OSError), open("/etc/machine-id", encoding="ascii") as fh:
        value = fh.read().strip()
        if value:
            return value
    return socket.gethostname()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
