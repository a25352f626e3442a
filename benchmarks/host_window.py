"""Frozen window on the host path (one WireServer ``dosnapshot``), against its floor.

Issue 15, goal 3: on the host path the window is FIFREEZE, ONE ``dosnapshot``
round trip for every disk, FITHAW; nothing else should add to it. Each round,
on a real loop ext4 filesystem (really frozen) and the host-service emulator
(tests/support/host_service.py: a real HTTP server that reflink-clones each
LUN's disk image, on an XFS loop filesystem) behind the one-thread delay
relay (``_delay_relay``, ``--latency`` per request), with the backend as the
runtime builds it (``HostSnapshotter``: presnapshot in ``decide``, the
request built and connected in ``prepare``), measures:

* ``window``: first FIFREEZE start to last FITHAW end around ``snapshot_all``;
* ``floor``: that round's own FIFREEZE time + its FITHAW time + one
  ``dosnapshot`` of the same LUNs measured alone (prepared the same way, no
  freeze) through the same relay in the same round.

For 1 LUN and for 64 LUNs (the emulator clones 64 images per call: the
round trip is longer, and both sides of the comparison pay it). The emulator
runs in this process, on its own threads; the runtime waits in ``poll``/``recv``
meanwhile, without the GIL.

Goal 3: median(window - floor) <= 10 ms, each LUN count, 50 ms latency.

Run: ``.venv/bin/python -m benchmarks.host_window [--rounds N] [--latency S]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field

from benchmarks._delay_relay import delay_relay
from benchmarks._verdict import spread, verdict
from snapshot_runtime.freeze.mounts import parse_mountinfo, plan_freeze, read_mountinfo
from snapshot_runtime.freeze.session import FreezeSession
from snapshot_runtime.inputs.settings import parse_handler_settings
from snapshot_runtime.snapshot.backend import SnapshotRequest
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.snapshot.host import HostSnapshotter
from tests.support.host_service import HostService, ImageDisk
from tests.support.jobkit import encode_object_str
from tests.support.loopfs import loop_filesystem

LUN_COUNTS = (1, 64)


@dataclass
class Samples:
    """One LUN count's rounds, in milliseconds."""

    window: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    alone: list[float] = field(default_factory=list)

    def over_floor(self) -> list[float]:
        return [w - f for w, f in zip(self.window, self.floor, strict=True)]


def _request(luns: int) -> SnapshotRequest:
    obj = {
        "snapshotTaskToken": "bench-token",
        "includedDisks": {"dataDiskLunList": list(range(luns))},
    }
    settings = parse_handler_settings(
        {
            "publicSettings": {
                "taskId": f"bench-host-{luns}",
                "commandToExecute": "snapshot",
                "objectStr": encode_object_str(obj),
            },
            "protectedSettings": {},
        }
    )
    return SnapshotRequest(settings=settings, policy=BlobPolicy(), deadline_seconds=30.0)


def _prepared(request: SnapshotRequest, port: int) -> HostSnapshotter:
    snapper = HostSnapshotter(request, address=("127.0.0.1", port))
    if not snapper.decide().use:
        raise RuntimeError(f"presnapshot declined: {snapper.presnapshot_error}")
    snapper.prepare()
    return snapper


def _alone_ms(request: SnapshotRequest, port: int) -> float:
    """One prepared dosnapshot, no freeze: its round trip."""
    snapper = _prepared(request, port)
    try:
        result = snapper.snapshot_all()
    finally:
        snapper.close()
    if not result.ok:
        raise RuntimeError(result.error_message or "dosnapshot failed")
    return result.duration_seconds * 1000


def _window_ms(mountpoint: str, request: SnapshotRequest, port: int) -> tuple[float, float]:
    """(window, FIFREEZE + FITHAW) in ms around the host backend's snapshot_all."""
    plan = plan_freeze(parse_mountinfo(read_mountinfo()), include=(mountpoint,))
    snapper = _prepared(request, port)
    session = FreezeSession(plan, timeout_seconds=30.0)
    session.prepare()
    try:
        if not session.freeze():
            raise RuntimeError("freeze failed")
        result = snapper.snapshot_all()
        thaw_called = time.monotonic()
        frozen = session.thaw()
        if not result.ok:
            raise RuntimeError(result.error_message or "dosnapshot failed")
        assert frozen.last_thaw_at is not None
        fithaw = frozen.last_thaw_at - thaw_called
        fifreeze = sum(m.freeze_seconds for m in frozen.mounts)
        return frozen.window_seconds * 1000, (fifreeze + fithaw) * 1000
    finally:
        session.thaw()
        snapper.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    args = parser.parse_args()
    latency_ms = args.latency * 1000
    print(
        f"host path window, {args.rounds} rounds, ext4 loop fs, host-service emulator "
        f"(reflink clones) behind the one-thread relay, {latency_ms:g} ms per request"
    )
    samples = {n: Samples() for n in LUN_COUNTS}
    with loop_filesystem("ext4") as fs, loop_filesystem("xfs") as store:
        luns = {}
        for lun in range(max(LUN_COUNTS)):
            image = os.path.join(store.mountpoint, f"lun{lun}.img")
            with open(image, "wb") as fh:
                fh.write(os.urandom(65536))
            luns[lun] = ImageDisk(image, store.mountpoint)
        requests = {n: _request(n) for n in LUN_COUNTS}
        with HostService(luns) as host, delay_relay(host.port, args.latency) as port:
            for _ in range(args.rounds):
                for n, request in requests.items():
                    alone = _alone_ms(request, port)
                    window, freeze_thaw = _window_ms(fs.mountpoint, request, port)
                    s = samples[n]
                    s.alone.append(alone)
                    s.window.append(window)
                    s.floor.append(freeze_thaw + alone)
    print(f"{'LUNs':>5}  {'window (min/median/max)':<44} {'floor med':>9} {'over floor':>10}")
    for n, s in samples.items():
        over = statistics.median(s.over_floor())
        print(f"{n:>5}  {spread(s.window):<44} {statistics.median(s.floor):>9.1f} {over:>10.1f}")
        print(f"       over floor: {spread(s.over_floor())}")
    print(f"\ngoal 3: host path window <= floor + 10 ms, {latency_ms:g} ms latency")
    for n, s in samples.items():
        verdict(
            f"host path, {n} LUN(s), median(window - floor)",
            statistics.median(s.over_floor()),
            10.0,
        )


if __name__ == "__main__":
    main()
