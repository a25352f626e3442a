"""``wait_until``: the one way a test waits for something to happen.

A test never sleeps a guessed time and hopes: it polls the real condition
with a deadline, and when the deadline passes it fails saying what it waited
for and what it saw last, so a slow machine shows up as a readable failure
rather than a flake.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")

# Short enough that a test does not wait long after the condition became true;
# long enough not to spin a core the other engineers' tests need.
DEFAULT_INTERVAL = 0.02


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = DEFAULT_INTERVAL,
    detail: Callable[[], object] | None = None,
) -> T:
    """Poll ``predicate`` until it returns a truthy value, and return that value.

    Raises ``AssertionError`` after ``timeout`` seconds naming ``what`` was
    awaited, the predicate's last value and, if given, ``detail()`` (e.g. a log
    tail). The predicate is always tried once more at the deadline, so a
    condition that became true while the poller slept is not reported as a timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
    message = f"timed out after {timeout:g}s waiting for {what}; last value: {value!r}"
    if detail is not None:
        message += f"\n{detail()}"
    raise AssertionError(message)
