"""How long the thaw watchdog takes to arm, against a bare interpreter start.

``WatchdogClient.start`` returns once the watchdog process has opened its
mounts and answered ``armed``; ``FreezeSession.prepare`` waits for it, so it
adds to every job (not to the frozen window). Baseline, in the same run: the
same interpreter with the same flags (``python -S -c pass``) started and
waited for through ``subprocess.run``.

Prints median and p95; no assertions. No root needed (nothing is frozen).

Run: ``.venv/bin/python -m benchmarks.watchdog_arm [--rounds N]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

from snapshot_runtime.freeze.watchdog_client import WatchdogClient


def _p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20, method="inclusive")[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    arm, bare = [], []
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(args.rounds):
            client = WatchdogClient([directory])
            arm.append(client.start(time.monotonic() + 60))
            client.disarm()
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-S", "-c", "pass"], check=True)
            bare.append(time.monotonic() - t0)
    print(f"watchdog start to armed, {args.rounds} rounds")
    print(f"{'':>24} {'median ms':>10} {'p95 ms':>8}")
    for name, samples in (("WatchdogClient.start", arm), ("python -S -c pass", bare)):
        median, p95 = statistics.median(samples) * 1000, _p95(samples) * 1000
        print(f"{name:>24} {median:>10.1f} {p95:>8.1f}")


if __name__ == "__main__":
    main()
