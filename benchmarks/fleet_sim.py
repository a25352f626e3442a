"""Thousands of simulated sidecars in one asyncio process, for a real Prometheus to scrape.

``benchmarks/fleet.py`` runs one HTTP server (and its threads) per simulated
VM and renders every scrape through prometheus-client: at ~1,000 VMs the
simulator's own CPU, not Prometheus, is what breaks. Here the per-VM cost is
a dictionary lookup and a few hundred bytes:

* **A real exposition.** A real ``snapshot-sidecar`` process is started on a
  spool of real jobs (tests/support/spoolgen.py: successes, failures with
  error codes, script timeouts, disks), scraped once as Prometheus would
  (text format 0.0.4), and stopped. That body is the template: every family,
  label and value a production sidecar serves after ``--template-jobs`` jobs.
* **Per VM, only identity and time.** Each VM runs "a job" every
  ``--job-every`` seconds at its own phase. Its counters (``_total``,
  histogram ``_bucket``/``_sum``/``_count``) are the template's plus
  ``jobs run since the start × the template's per-job average`` -- monotonic,
  bucket order kept. The body for "g jobs since the start" is rendered once
  and shared by every VM at that generation; only the ``*_timestamp_seconds``
  gauges (when this VM's last job ran) are rendered per VM. Identity is the
  target's: the file_sd target list gives each VM its own
  ``__metrics_path__`` (``/<vm>/metrics``) and ``instance``/``host``/
  ``region``/``cluster`` labels, as the sidecar itself exposes no host
  identity (Prometheus attaches it).
* **gzip pre-compressed.** A gzip stream may be several members back to back
  (RFC 1952; Go's gzip reader, hence Prometheus, reads them as one): the
  shared body is compressed once per generation, the per-VM head once per
  VM and generation, and a scrape that sends ``Accept-Encoding: gzip`` gets
  the two members concatenated.
* **HTTP/1.1 keep-alive** on ``--ports`` listening sockets (VM i on port
  i mod ports), a minimal asyncio protocol: GET only, no request bodies.

Run standalone (``fleet_scale.py`` does this itself)::

    .venv/bin/python -m benchmarks.fleet_sim --vms 1000 --file-sd /tmp/targets.json

It prints one ``READY {json}`` line (ports, series per VM, template bytes)
and serves until SIGTERM/SIGINT or stdin closing (``--until-stdin-closes``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import random
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapshot_sidecar.keys import Keys

# The real sidecar process, started as the sidecar_metrics benchmark starts it.
from benchmarks.sidecar_metrics import _start as start_real_sidecar
from tests.support.spoolgen import SpoolGen

REGIONS = ("westeurope", "northeurope", "eastus")
CLUSTERS = ("sql", "web", "app", "batch")
# What Prometheus 2.42 sends when it scrapes; the sidecar answers it with
# OpenMetrics. The simulator serves the 0.0.4 text format (see TEMPLATE_ACCEPT).
TEXT_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
# The template is taken in the text format: Prometheus parses both, and the
# text format carries no exemplars (exemplar storage is off in these runs).
TEMPLATE_ACCEPT = "text/plain; version=0.0.4"
MONOTONIC_SUFFIXES = (b"_total", b"_bucket", b"_count", b"_sum")
MAX_REQUEST_HEAD = 16 * 1024


# -- the template: a real sidecar's exposition --------------------------------------------


def generate_real_jobs(spool: Path, jobs: int, *, seed: int = 7) -> None:
    """A spool of ``jobs`` completed jobs with a production-like mix of outcomes."""
    rng = random.Random(seed)
    gen = SpoolGen(spool)
    now = time.time()
    for i in range(jobs):
        started = now - (jobs - i) * 86400.0
        roll = rng.random()
        if roll < 0.05:
            gen.job(
                f"fleet-{i:05d}",
                outcome="failed",
                consistency="none",
                error="Pre-ScriptTimeout",
                pre={
                    "attempts": 2,
                    "retries": 1,
                    "timed_out": True,
                    "exit_codes": [],
                    "seconds": 30.0,
                    "error": "Pre-ScriptTimeout",
                },
                started_at=started,
            )
        elif roll < 0.08:
            gen.job(
                f"fleet-{i:05d}",
                outcome="failed",
                consistency="none",
                error="SnapshotPartiallyFailed",
                disks=[
                    {"index": 0, "ok": True, "seconds": 0.1, "attempts": 1},
                    {"index": 1, "ok": False, "seconds": 2.0, "attempts": 3, "error_kind": "auth"},
                ],
                started_at=started,
            )
        else:
            gen.job(
                f"fleet-{i:05d}",
                freeze_seconds=rng.lognormvariate(-1.9, 0.7),
                duration=rng.uniform(2.0, 40.0),
                started_at=started,
            )


def real_sidecar_exposition(jobs: int = 30) -> bytes:
    """Start a real ``snapshot-sidecar`` on a spool of ``jobs`` jobs; return its /metrics.

    Waits until the sidecar has ingested every job (its own
    ``vmsnap_sidecar_records_ingested_total``), so the body is what a VM
    serves after that many days of daily jobs.
    """
    with tempfile.TemporaryDirectory(prefix="fleet-sim-template-") as tmp:
        root = Path(tmp)
        spool, state = root / "spool", root / "state"
        Keys.load_or_create(state).publish(spool)
        generate_real_jobs(spool, jobs)
        proc, base = start_real_sidecar(spool, state, root / "sidecar.log")
        try:
            deadline = time.monotonic() + 60
            while True:
                request = urllib.request.Request(
                    f"{base}/metrics", headers={"Accept": TEMPLATE_ACCEPT}
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    body: bytes = response.read()
                if _sample_value(body, b"vmsnap_sidecar_records_ingested_total") == jobs:
                    return body
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the sidecar did not ingest {jobs} jobs within 60 s")
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(10)


def _sample_value(body: bytes, name: bytes) -> float | None:
    for line in body.splitlines():
        if line.startswith(name + b" ") or line.startswith(name + b"{"):
            return float(line.rsplit(b" ", 1)[1])
    return None


@dataclass(frozen=True)
class Family:
    """One metric family of the template: its comment lines and its samples."""

    name: str
    comments: tuple[bytes, ...]
    samples: tuple[tuple[bytes, float], ...]  # (b"name{labels}", value)

    @property
    def per_vm(self) -> bool:
        # When this VM's last job ran: the one value that differs between VMs
        # at the same generation.
        return self.name.endswith("_timestamp_seconds")


def parse_families(body: bytes) -> list[Family]:
    """The text exposition's families, in order (HELP/TYPE lines start a family)."""
    families: list[Family] = []
    name: str | None = None
    comments: list[bytes] = []
    samples: list[tuple[bytes, float]] = []

    def close() -> None:
        if name is not None:
            families.append(Family(name, tuple(comments), tuple(samples)))

    for line in body.splitlines():
        if not line:
            continue
        if line.startswith(b"#"):
            parts = line.split(b" ", 3)
            declared = parts[2].decode() if len(parts) > 2 else ""
            if declared != name or samples:
                close()
                name, comments, samples = declared, [], []
            comments.append(line)
            continue
        key, _, value = line.rpartition(b" ")
        samples.append((key, float(value)))
    close()
    return families


def _format(value: float) -> bytes:
    if value == int(value) and abs(value) < 1e15:
        return b"%d" % int(value)
    return repr(value).encode()


@dataclass
class Template:
    """A real exposition, split into the shared part and the per-VM part."""

    families: list[Family]
    jobs: int  # jobs the template's counters count (the per-job increment is value / jobs)
    _shared: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)

    @classmethod
    def from_exposition(cls, body: bytes, jobs: int) -> Template:
        return cls(parse_families(body), jobs)

    @property
    def series(self) -> int:
        return sum(len(f.samples) for f in self.families)

    def shared(self, generation: int) -> tuple[bytes, bytes]:
        """(text, gzip member) of every family but the per-VM ones, ``generation`` jobs on."""
        cached = self._shared.get(generation)
        if cached is None:
            scale = 1.0 + generation / self.jobs
            lines: list[bytes] = []
            for family in self.families:
                if family.per_vm:
                    continue
                lines.extend(family.comments)
                for key, value in family.samples:
                    monotonic = key.split(b"{", 1)[0].endswith(MONOTONIC_SUFFIXES)
                    lines.append(key + b" " + _format(value * scale if monotonic else value))
            text = b"\n".join(lines) + b"\n"
            cached = (text, gzip.compress(text, compresslevel=6, mtime=0))
            self._shared[generation] = cached
        return cached

    def per_vm(self, last_job: float) -> bytes:
        lines: list[bytes] = []
        for family in self.families:
            if family.per_vm:
                lines.extend(family.comments)
                lines.extend(key + b" " + _format(round(last_job, 3)) for key, _ in family.samples)
        return b"\n".join(lines) + b"\n" if lines else b""


# -- the simulated fleet ------------------------------------------------------------------


@dataclass
class SimulatedVM:
    name: str
    region: str
    cluster: str
    port_index: int
    phase: float  # seconds into each job period at which this VM's job runs
    _cached: tuple[int, bytes, bytes] | None = None  # (generation, head text, head gzip)


@dataclass
class Fleet:
    template: Template
    vms: dict[str, SimulatedVM]
    job_every: float
    started: float = field(default_factory=time.time)
    scrapes: int = 0

    @classmethod
    def build(
        cls, template: Template, count: int, *, ports: int, job_every: float, seed: int = 1
    ) -> Fleet:
        rng = random.Random(seed)
        vms = {}
        for i in range(count):
            name = f"vm-{i:05d}"
            vms[name] = SimulatedVM(
                name=name,
                region=REGIONS[i % len(REGIONS)],
                cluster=CLUSTERS[(i // len(REGIONS)) % len(CLUSTERS)],
                port_index=i % ports,
                phase=rng.uniform(0, job_every),
            )
        return cls(template, vms, job_every)

    def generation(self, vm: SimulatedVM, now: float) -> int:
        """Jobs ``vm`` has run since the simulation started."""
        return int((now - self.started + vm.phase) // self.job_every)

    def last_job_time(self, vm: SimulatedVM, generation: int) -> float:
        # Before the first simulated job: the template's history, a day back.
        if generation == 0:
            return self.started - 86400.0 + vm.phase
        return self.started - vm.phase + generation * self.job_every

    def body(self, name: str, *, gzipped: bool, now: float | None = None) -> bytes | None:
        vm = self.vms.get(name)
        if vm is None:
            return None
        generation = self.generation(vm, time.time() if now is None else now)
        cached = vm._cached
        if cached is None or cached[0] != generation:
            head = self.template.per_vm(self.last_job_time(vm, generation))
            cached = (generation, head, gzip.compress(head, compresslevel=6, mtime=0))
            vm._cached = cached
        shared_text, shared_gzip = self.template.shared(generation)
        self.scrapes += 1
        if gzipped:
            return cached[2] + shared_gzip
        return cached[1] + shared_text

    def file_sd(self, ports: list[int], host: str = "127.0.0.1") -> list[dict[str, Any]]:
        """Prometheus file_sd target groups: one per VM, its identity in the labels."""
        return [
            {
                "targets": [f"{host}:{ports[vm.port_index]}"],
                "labels": {
                    "__metrics_path__": f"/{vm.name}/metrics",
                    "instance": vm.name,
                    "host": vm.name,
                    "region": vm.region,
                    "cluster": vm.cluster,
                },
            }
            for vm in self.vms.values()
        ]


# -- HTTP ---------------------------------------------------------------------------------


class ScrapeProtocol(asyncio.Protocol):
    """HTTP/1.1 GET /<vm>/metrics with keep-alive; everything else is 404/405."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_REQUEST_HEAD:
                    self.transport.close()
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            self._respond(head)

    def _respond(self, head: bytes) -> None:
        assert self.transport is not None
        request_line, *header_lines = head.split(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3:
            self.transport.close()
            return
        method, target, version = parts
        headers = {}
        for line in header_lines:
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip().lower()
        keep_alive = version == b"HTTP/1.1" and headers.get(b"connection") != b"close"
        gzipped = b"gzip" in headers.get(b"accept-encoding", b"")
        path = target.split(b"?", 1)[0].decode("latin-1")
        status, extra, body = b"404 Not Found", b"", b"not found\n"
        if method != b"GET":
            status, body = b"405 Method Not Allowed", b"GET only\n"
        elif path.endswith("/metrics") and path.count("/") == 2:
            found = self.fleet.body(path.split("/")[1], gzipped=gzipped)
            if found is not None:
                status, body = b"200 OK", found
                extra = b"Content-Type: " + TEXT_CONTENT_TYPE + b"\r\n"
                if gzipped:
                    extra += b"Content-Encoding: gzip\r\n"
        self.transport.write(
            b"HTTP/1.1 "
            + status
            + b"\r\n"
            + extra
            + b"Content-Length: %d\r\n" % len(body)
            + (b"" if keep_alive else b"Connection: close\r\n")
            + b"\r\n"
            + body
        )
        if not keep_alive:
            self.transport.close()
            self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(fleet: Fleet, ports: int, host: str = "127.0.0.1") -> list[asyncio.Server]:
    loop = asyncio.get_running_loop()
    servers = []
    for _ in range(ports):
        server = await loop.create_server(
            lambda: ScrapeProtocol(fleet), host, 0, backlog=1024, reuse_address=True
        )
        servers.append(server)
    return servers


def server_ports(servers: Iterable[asyncio.Server]) -> list[int]:
    return [int(server.sockets[0].getsockname()[1]) for server in servers]


def write_file_sd(path: Path, groups: list[dict[str, Any]]) -> None:
    # Prometheus watches the file: write beside it and rename, never half a file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(groups))
    os.replace(tmp, path)


# -- main ---------------------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> None:
    exposition = (
        Path(args.template).read_bytes()
        if args.template
        else real_sidecar_exposition(args.template_jobs)
    )
    template = Template.from_exposition(exposition, args.template_jobs)
    fleet = Fleet.build(template, args.vms, ports=args.ports, job_every=args.job_every)
    servers = await serve(fleet, args.ports)
    ports = server_ports(servers)
    write_file_sd(Path(args.file_sd), fleet.file_sd(ports))
    shared_text, shared_gzip = template.shared(0)
    ready = {
        "vms": args.vms,
        "ports": ports,
        "series_per_vm": template.series,
        "body_bytes": len(shared_text),
        "body_gzip_bytes": len(shared_gzip),
        "pid": os.getpid(),
    }
    print("READY " + json.dumps(ready), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.until_stdin_closes:

        def stdin_readable() -> None:
            if not sys.stdin.read(1):  # EOF: whoever started us is done
                stop.set()

        loop.add_reader(sys.stdin.fileno(), stdin_readable)
    await stop.wait()
    for server in servers:
        server.close()
    print(f"served {fleet.scrapes} scrapes", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--ports", type=int, default=50)
    parser.add_argument("--file-sd", required=True, help="where to write the target list")
    parser.add_argument(
        "--job-every", type=float, default=300.0, help="seconds between a VM's jobs"
    )
    parser.add_argument(
        "--template-jobs", type=int, default=30, help="jobs the real sidecar ingests first"
    )
    parser.add_argument("--template", help="a saved exposition instead of a real sidecar run")
    parser.add_argument("--until-stdin-closes", action="store_true")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
