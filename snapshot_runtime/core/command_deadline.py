"""The reference's 140-minute limit on ``commandStartTimeUTCTicks`` (pure).

``handler.enable`` applies it with the local clock before a job starts; the
host path applies it again with the host's clock (``presnapshot``'s
``responseTime``, reference host-snapshot §6), before any freeze. One rule,
so both sit here, below every family that uses it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = ["COMMAND_DEADLINE", "command_too_late"]

COMMAND_DEADLINE = timedelta(minutes=140)


def command_too_late(start: datetime | None, now: datetime) -> bool:
    """True when more than 140 minutes passed since ``start``. Pure.

    No start time means no limit (the field is optional). A start in the
    future (clock skew) is not late.
    """
    if start is None:
        return False
    return now - start > COMMAND_DEADLINE
