"""Frozen window for 1, 4 and 16 disks, against baselines measured in the same run.

What the frozen window costs is what matters to a VM: every write to the
filesystem blocks for its length. For each disk count this measures, on a
real loop ext4 filesystem and real page blobs in Azurite:

* ``empty``: freeze then thaw with nothing in between (the floor: FIFREEZE,
  FITHAW, the watchdog hand-off);
* ``parallel``: freeze, snapshot every disk in parallel (as the runtime does),
  thaw;
* ``sequential``: the same with one disk at a time (what the reference does
  for up to 4 disks).

Prints medians and the ratios parallel/empty and sequential/parallel. No
assertions: figures for the closing note, not a test.

Run: ``.venv/bin/python -m benchmarks.frozen_window [--rounds N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from snapshot_runtime.freeze.mounts import parse_mountinfo, plan_freeze, read_mountinfo
from snapshot_runtime.freeze.session import FreezeSession
from snapshot_runtime.snapshot.azure_blob import AzureBlobSnapshotter
from tests.support.azurite import run_azurite
from tests.support.loopfs import loop_filesystem


def _window(mountpoint: str, urls: list[str] | None, workers: int) -> float:
    plan = plan_freeze(parse_mountinfo(read_mountinfo()), include=(mountpoint,))
    snapshotter = AzureBlobSnapshotter(urls, max_workers=workers) if urls else None
    if snapshotter is not None:
        snapshotter.prepare()
    session = FreezeSession(plan, timeout_seconds=30.0)
    session.prepare()
    try:
        if not session.freeze():
            raise RuntimeError("freeze failed")
        if snapshotter is not None:
            result = snapshotter.snapshot_all()
            if not result.ok:
                raise RuntimeError(result.error_message or "snapshot failed")
        return session.thaw().window_seconds
    finally:
        session.thaw()
        if snapshotter is not None:
            snapshotter.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with run_azurite() as azurite, loop_filesystem("ext4") as fs:
        container = azurite.container()
        print(f"frozen window, median of {args.rounds} rounds (ext4 loop fs, Azurite on loopback)")
        print(
            f"{'disks':>5} {'empty ms':>9} {'parallel ms':>12} {'sequential ms':>14} "
            f"{'par/empty':>10} {'seq/par':>8}"
        )
        for disks in (1, 4, 16):
            urls = [azurite.create_page_blob(container, f"b{disks}-{i}.vhd") for i in range(disks)]
            empty, parallel, sequential = [], [], []
            for _ in range(args.rounds):
                empty.append(_window(fs.mountpoint, None, 1))
                parallel.append(_window(fs.mountpoint, urls, disks))
                sequential.append(_window(fs.mountpoint, urls, 1))
                time.sleep(0.05)
            e, p, s = (statistics.median(x) * 1000 for x in (empty, parallel, sequential))
            print(f"{disks:>5} {e:>9.1f} {p:>12.1f} {s:>14.1f} {p / e:>10.2f} {s / p:>8.2f}")


if __name__ == "__main__":
    main()
