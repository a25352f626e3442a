""".NET ticks: 100 ns intervals since 0001-01-01T00:00:00 UTC, as the platform sends times.

Pure. ``ticks_to_datetime`` truncates to microseconds (Python's resolution)
and raises ``ValueError`` outside 0001-01-01 .. 9999-12-31T23:59:59.9999999
(``MAX_TICKS``, .NET's ``DateTime.MaxValue.Ticks``) or for a non-int (a bool
included). ``datetime_to_ticks`` refuses a naive datetime and converts any
aware one exactly, in integer arithmetic (float seconds lose ticks at this
magnitude).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

__all__ = [
    "MAX_TICKS",
    "TICKS_AT_UNIX_EPOCH",
    "TICKS_PER_SECOND",
    "datetime_to_ticks",
    "ticks_to_datetime",
]

TICKS_PER_SECOND = 10_000_000
TICKS_AT_UNIX_EPOCH = 621355968000000000
# DateTime.MaxValue.Ticks: 9999-12-31T23:59:59.9999999.
MAX_TICKS = 3155378975999999999
_TICKS_PER_MICROSECOND = 10
_TICKS_ZERO = datetime(1, 1, 1, tzinfo=timezone.utc)


def ticks_to_datetime(ticks: int) -> datetime:
    """.NET ticks -> UTC-aware datetime (truncated to microseconds).

    Raises ValueError outside 0001-01-01 .. 9999-12-31T23:59:59.9999999.
    """
    if isinstance(ticks, bool) or not isinstance(ticks, int):
        raise ValueError("ticks must be an int")
    if not 0 <= ticks <= MAX_TICKS:
        raise ValueError(f"ticks {ticks} out of range 0..{MAX_TICKS}")
    return _TICKS_ZERO + timedelta(microseconds=ticks // _TICKS_PER_MICROSECOND)


def datetime_to_ticks(dt: datetime) -> int:
    """UTC-aware (or any aware) datetime -> .NET ticks. Naive is refused."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    # Integer arithmetic only: float seconds lose ticks at this magnitude.
    delta = dt.astimezone(timezone.utc) - _TICKS_ZERO
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros * _TICKS_PER_MICROSECOND
