"""How every benchmark states its goal: min/median/max over rounds, and MET / NOT MET.

Benchmarks assert nothing (figures, not timed tests); each ends with one
``verdict`` line per goal, so a run's output is the before/after table.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["VERDICTS", "spread", "verdict"]

# Every verdict line printed in this process, for ``python -m benchmarks``'s summary.
VERDICTS: list[str] = []


def spread(samples_ms: Sequence[float]) -> str:
    """``min/median/max`` of samples already in milliseconds."""
    if not samples_ms:
        return "no samples"
    return (
        f"min {min(samples_ms):.1f} / median {statistics.median(samples_ms):.1f} / "
        f"max {max(samples_ms):.1f} ms"
    )


def verdict(
    goal: str, measured: float, limit: float, unit: str = "ms", *, at_least: bool = False
) -> bool:
    """Print the goal's verdict line and return whether it is met.

    Met when ``measured <= limit`` (a latency), or ``>= limit`` with ``at_least`` (a rate).
    """
    met = measured >= limit if at_least else measured <= limit
    state = "MET" if met else "NOT MET"
    bound = ">=" if at_least else "<="
    shown = f"{measured:.2f}" if abs(measured) < 10 else f"{measured:.1f}"
    line = f"VERDICT {state}: {goal}: {shown} {unit} (goal {bound} {limit:g} {unit})"
    VERDICTS.append(line)
    print(line, flush=True)
    return met
