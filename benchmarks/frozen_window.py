"""Frozen window for 1, 4, 16 and 64 disks, against the floor measured in the same run.

What the frozen window costs is what matters to a VM: every write to the
filesystem blocks for its length. On a real loop ext4 filesystem, real page
blobs in Azurite, and the snapshotter as the runtime builds it (its own
default worker count), each round measures:

* ``window``: first FIFREEZE start to last FITHAW end around
  ``snapshot_all`` for N disks;
* ``cpu``: CPU time this process (runtime, not Azurite or the proxy) used
  from just before the syncs and FIFREEZE to the end of the thaw;
* ``storage side alone``: the same N requests sent at once on raw sockets by
  one thread, no freeze and next to no client CPU, just before each window
  with latency: what Azurite behind the proxy needs on this machine,
  whatever the client does; ``window - (FIFREEZE + that + FITHAW)``, paired
  round by round, is the runtime's share of an N-disk window;
* ``floor``: that round's own FIFREEZE time + its FITHAW time + the snapshot
  request of a 1-disk run measured alone (no freeze) through the same path in
  the same round. Nothing can do better than that with one disk.

Both with no injected latency and with ``--latency`` (50 ms) added to every
storage request, in a child process: by default a single-threaded relay
(``_delay_relay``), whose own CPU barely competes with the runtime for the 2
cores; ``--latency-by faultproxy`` uses tests/support/faultproxy.py's threaded
proxy instead (two threads per connection: with 64 disks its CPU distorts
the figures).

Goals (issue 15), each ending in a ``VERDICT`` line:

1. one disk, 50 ms latency: median(window - floor) <= 10 ms;
2. flat: median window(64 disks) - median window(1 disk) <= 20 ms, 50 ms latency.

Run: ``.venv/bin/python -m benchmarks.frozen_window [--rounds N] [--latency S]
[--latency-by relay|faultproxy]``.
"""

from __future__ import annotations

import argparse
import resource
import selectors
import socket
import statistics
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from azure.storage.blob import BlobClient

from benchmarks._delay_proxy import delay_proxy
from benchmarks._delay_relay import delay_relay
from benchmarks._verdict import spread, verdict
from snapshot_runtime.freeze.mounts import parse_mountinfo, plan_freeze, read_mountinfo
from snapshot_runtime.freeze.session import FreezeSession
from snapshot_runtime.snapshot.azure_blob import AzureBlobSnapshotter
from tests.support.azurite import run_azurite
from tests.support.loopfs import loop_filesystem

DISK_COUNTS = (1, 4, 16, 64)


@dataclass
class Samples:
    """One disk count's rounds, in milliseconds."""

    window: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    fifreeze: list[float] = field(default_factory=list)
    fithaw: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # this process's CPU in the window
    # The same N requests at once on raw sockets from one thread, no freeze, measured
    # just before this round's window: what the storage side needs for N.
    raw: list[float] = field(default_factory=list)

    def over_floor(self) -> list[float]:
        return [w - f for w, f in zip(self.window, self.floor, strict=True)]

    def over_raw(self) -> list[float]:
        """window - (FIFREEZE + the N raw requests + FITHAW), per round: the runtime's share."""
        return [
            w - (fz + r + th)
            for w, fz, r, th in zip(self.window, self.fifreeze, self.raw, self.fithaw, strict=True)
        ]


def _alone_ms(url: str) -> float:
    """One snapshot request of a prepared 1-disk snapshotter, no freeze: its duration."""
    with AzureBlobSnapshotter([url]) as snapshotter:
        snapshotter.prepare()
        result = snapshotter.snapshot_all()
        if not result.ok:
            raise RuntimeError(result.error_message or "snapshot failed")
        return result.disks[0].duration_seconds * 1000


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _window_ms(mountpoint: str, urls: list[str]) -> tuple[float, float, float, float]:
    """(window, FIFREEZE, FITHAW, CPU of this process) in ms around snapshot_all."""
    plan = plan_freeze(parse_mountinfo(read_mountinfo()), include=(mountpoint,))
    snapshotter = AzureBlobSnapshotter(urls)  # the runtime's own defaults (worker count)
    snapshotter.prepare()
    session = FreezeSession(plan, timeout_seconds=30.0)
    session.prepare()
    try:
        cpu_before = _cpu_seconds()
        if not session.freeze():
            raise RuntimeError("freeze failed")
        result = snapshotter.snapshot_all()
        thaw_called = time.monotonic()
        frozen = session.thaw()
        cpu = _cpu_seconds() - cpu_before
        if not result.ok:
            raise RuntimeError(result.error_message or "snapshot failed")
        assert frozen.last_thaw_at is not None
        fithaw = frozen.last_thaw_at - thaw_called
        fifreeze = sum(m.freeze_seconds for m in frozen.mounts)
        return frozen.window_seconds * 1000, fifreeze * 1000, fithaw * 1000, cpu * 1000
    finally:
        session.thaw()
        snapshotter.close()


def _raw_parallel_ms(urls: list[str], api_version: str) -> float:
    """The storage side alone: one snapshot request per URL, all at once, no runtime.

    Connections opened first; then one thread writes every request on raw
    sockets and waits (selectors) for every response head: from the first
    write to the last head. What the same Azurite behind the same proxy needs
    for N parallel snapshots, with next to no client CPU.
    """
    socks: list[socket.socket] = []
    try:
        for url in urls:
            parts = urlsplit(url)
            assert parts.hostname is not None and parts.port is not None
            sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
            socks.append(sock)
        wires = []
        for url in urls:
            parts = urlsplit(url)
            wires.append(
                f"PUT {parts.path}?comp=snapshot&{parts.query} HTTP/1.1\r\n"
                f"Host: {parts.netloc}\r\nx-ms-version: {api_version}\r\n"
                f"x-ms-client-request-id: {uuid.uuid4()}\r\nContent-Length: 0\r\n\r\n".encode()
            )
        with selectors.DefaultSelector() as sel:
            started = time.monotonic()
            for sock, wire in zip(socks, wires, strict=True):
                sock.sendall(wire)
                sel.register(sock, selectors.EVENT_READ, bytearray())
            waiting = len(socks)
            while waiting:
                for key, _ in sel.select(30):
                    key.data.extend(key.fileobj.recv(65536))  # type: ignore[union-attr]
                    if b"\r\n\r\n" in key.data:
                        if not key.data.startswith(b"HTTP/1.1 201"):
                            raise RuntimeError(bytes(key.data[:80]).decode("latin-1"))
                        sel.unregister(key.fileobj)
                        waiting -= 1
            return (time.monotonic() - started) * 1000
    finally:
        for sock in socks:
            sock.close()


def report_storage(samples: dict[int, Samples]) -> None:
    print(
        "  storage side alone (raw sockets, one thread, no freeze, just before each window): "
        "N requests at once"
    )
    one = statistics.median(samples[min(samples)].raw)
    for disks, s in samples.items():
        extra = statistics.median(s.raw) - one
        print(f"  {disks:>5}  {spread(s.raw):<44} vs 1 disk: {extra:+.1f} ms")
    print(
        "  the runtime's share, round by round: window - (FIFREEZE + the N raw requests + FITHAW)"
    )
    for disks, s in samples.items():
        print(f"  {disks:>5}  {spread(s.over_raw())}")


def measure(
    mountpoint: str, urls_for: dict[int, list[str]], rounds: int, *, raw: bool = False
) -> dict[int, Samples]:
    api_version = str(BlobClient.from_blob_url(urls_for[1][0]).api_version)
    out = {n: Samples() for n in urls_for}
    for _ in range(rounds):
        for disks, urls in urls_for.items():
            alone = _alone_ms(urls[0])
            if raw:
                out[disks].raw.append(_raw_parallel_ms(urls, api_version))
            window, fifreeze, fithaw, cpu = _window_ms(mountpoint, urls)
            s = out[disks]
            s.window.append(window)
            s.fifreeze.append(fifreeze)
            s.fithaw.append(fithaw)
            s.cpu.append(cpu)
            s.floor.append(fifreeze + alone + fithaw)
    return out


def report(title: str, samples: dict[int, Samples]) -> None:
    print(f"\n{title}")
    print(
        f"{'disks':>5}  {'window (min/median/max)':<44} {'floor med':>9} {'over floor':>10} "
        f"{'cpu med':>8}"
    )
    for disks, s in samples.items():
        over, floor = statistics.median(s.over_floor()), statistics.median(s.floor)
        cpu = statistics.median(s.cpu)
        print(f"{disks:>5}  {spread(s.window):<44} {floor:>9.1f} {over:>10.1f} {cpu:>8.1f}")
    one = statistics.median(samples[min(samples)].window)
    for disks, s in samples.items():
        print(f"  window({disks}) - window(1) = {statistics.median(s.window) - one:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument(
        "--latency-by",
        choices=("relay", "faultproxy"),
        default="relay",
        help="the latency injector: the one-thread relay, or the threaded FaultProxy",
    )
    args = parser.parse_args()
    injector = delay_relay if args.latency_by == "relay" else delay_proxy
    most = max(DISK_COUNTS)
    print(
        f"frozen window, {args.rounds} rounds, ext4 loop fs, Azurite; "
        f"default worker count of AzureBlobSnapshotter"
    )
    with run_azurite() as azurite, loop_filesystem("ext4") as fs:
        container = azurite.container()
        blobs = [f"d{i}.vhd" for i in range(most)]
        for name in blobs:
            azurite.create_page_blob(container, name)
        direct = {n: [azurite.sas_url(container, b) for b in blobs[:n]] for n in DISK_COUNTS}
        plain = measure(fs.mountpoint, direct, args.rounds)
        report("no injected latency (Azurite on loopback)", plain)
        with injector(azurite.port, args.latency) as port:
            endpoint = f"http://127.0.0.1:{port}/devstoreaccount1"
            proxied = {
                n: [azurite.sas_url(container, b, endpoint=endpoint) for b in blobs[:n]]
                for n in DISK_COUNTS
            }
            slow = measure(fs.mountpoint, proxied, args.rounds, raw=True)
        report(
            f"{args.latency * 1000:g} ms injected per storage request (by {args.latency_by})",
            slow,
        )
        report_storage(slow)
    latency_ms = args.latency * 1000
    print(f"\ngoal 1: window <= floor + 10 ms, 1 disk, {latency_ms:g} ms latency")
    verdict("1 disk, median(window - floor)", statistics.median(slow[1].over_floor()), 10.0)
    print(f"goal 2: window({most}) - window(1) <= 20 ms, {latency_ms:g} ms latency")
    flat = statistics.median(slow[most].window) - statistics.median(slow[1].window)
    verdict(f"window({most}) - window(1), medians", flat, 20.0)
    storage = statistics.median(slow[most].raw) - statistics.median(slow[1].raw)
    print(
        f"  of which the storage side alone (Azurite and the proxy on this machine's "
        f"cores) takes {storage:.1f} ms more for {most} requests than for 1"
    )
    share = statistics.median(slow[most].over_raw())
    print(
        f"  the runtime's share of a {most}-disk window, paired per round: median {share:.1f} ms "
        f"over FIFREEZE + the {most} raw requests + FITHAW "
        f"(its CPU in the window: median {statistics.median(slow[most].cpu):.1f} ms)"
    )


if __name__ == "__main__":
    main()
