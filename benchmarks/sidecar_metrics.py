"""The sidecar under a full spool: /metrics latency, RSS, ingest rate and ingest lag.

Runs the real ``snapshot-sidecar`` process twice:

* ``baseline``: on an empty spool (every series zero-initialised, nothing ingested);
* ``loaded``: on a spool of N generated jobs (default 10,000; docs/spool.md
  records with log lines and spans), once it has ingested them all (and,
  as in production, removed their handled directories).

For each it measures the latency of ``GET /metrics`` (sequential requests
from this process, a new connection each, in three formats: Prometheus text,
OpenMetrics, and OpenMetrics with ``Accept-Encoding: gzip``, which is what a
Prometheus server asks for) in ``--rounds`` rounds of ``--requests`` per
format, each round lasting ``--round-seconds`` (1.5) at least, and the
sidecar's RSS (/proc/<pid>/status VmRSS). A figure is the p99
of every sample of every round (pooled), beside the spread of the per-round
p99s (min/median/max) and the load average, so one noisy round neither hides
nor fakes a result. Then, on the loaded sidecar, the ingest lag: one job at a
time is completed (record.json renamed into place) and timed until a scrape
shows it counted. Then ``ingesting``: the same rounds while a child process
completes ``--ingest-rate`` (100) new jobs per second into the spool; each
round lasts more than the 1 s poll interval, so every round meets an ingest
pass (reads, commits, cleanup). Goals: p99 ≤ 10 ms after 10,000 jobs and
while ingesting 100 jobs/s (issue 15), RSS ≤ 80 MB (issue 5).

Prints figures, ratios and ``VERDICT`` lines; no assertions.
Run: ``.venv/bin/python -m benchmarks.sidecar_metrics [--jobs N] [--requests N] [--rounds N]
[--round-seconds S]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from snapshot_sidecar.keys import Keys

from benchmarks._verdict import spread, verdict
from tests.support.spoolgen import SpoolGen

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def _start(spool: Path, state: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    out = open(log, "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snapshot_sidecar.cli",
            "--spool",
            str(spool),
            "--state-dir",
            str(state),
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "WARNING",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    # The URL is logged at INFO; with WARNING we find the port from /proc instead.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        port = _listening_port(proc.pid)
        if port:
            return proc, f"http://127.0.0.1:{port}"
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.05)
    raise RuntimeError("sidecar did not start listening")


def _listening_port(pid: int) -> int | None:
    try:
        inodes = {
            Path(f"/proc/{pid}/fd/{fd}").readlink().name[8:-1]
            for fd in (p.name for p in Path(f"/proc/{pid}/fd").iterdir())
            if Path(f"/proc/{pid}/fd/{fd}").readlink().name.startswith("socket:")
        }
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                return int(fields[1].split(":")[1], 16)
    except OSError:
        return None
    return None


def _rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else float("nan")


def _get(url: str, accept: str | None = None, *, gzip_ok: bool = False) -> bytes:
    request = urllib.request.Request(url)
    if accept:
        request.add_header("Accept", accept)
    if gzip_ok:
        request.add_header("Accept-Encoding", "gzip")
    with urllib.request.urlopen(request, timeout=10) as response:
        return bytes(response.read())


def _ingested(base: str) -> float:
    text = _get(base + "/metrics").decode()
    match = re.search(r"^vmsnap_sidecar_records_ingested_total ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else -1.0


def _gauge(base: str, name: str) -> float:
    text = _get(base + "/metrics").decode()
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else float("nan")


@dataclass(frozen=True)
class Format:
    name: str
    accept: str | None
    gzip: bool


FORMATS = (
    Format("text", None, False),
    Format("openmetrics", OPENMETRICS, False),
    Format("om+gzip", OPENMETRICS, True),  # what a Prometheus server sends
)


def _latencies_ms(
    base: str, n: int, fmt: Format, min_seconds: float = 0.0
) -> tuple[list[float], int]:
    """At least ``n`` scrapes, and for at least ``min_seconds``."""
    samples: list[float] = []
    size = 0
    until = time.perf_counter() + min_seconds
    while len(samples) < n or time.perf_counter() < until:
        start = time.perf_counter()
        size = len(_get(base + "/metrics", fmt.accept, gzip_ok=fmt.gzip))
        samples.append((time.perf_counter() - start) * 1000)
    return samples, size


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _measure(
    label: str, base: str, pid: int, requests: int, rounds: int, round_seconds: float
) -> dict[str, float]:
    """``rounds`` rounds of ``requests`` per format (a round lasting ``round_seconds``
    at least); pooled p99 and the per-round spread."""
    for fmt in FORMATS:
        _latencies_ms(base, 10, fmt)  # warm up
    pooled: dict[str, list[float]] = {f.name: [] for f in FORMATS}
    per_round: dict[str, list[float]] = {f.name: [] for f in FORMATS}
    sizes: dict[str, int] = {}
    load_before = _load()
    for _ in range(rounds):
        for fmt in FORMATS:
            samples, sizes[fmt.name] = _latencies_ms(
                base, requests, fmt, round_seconds / len(FORMATS)
            )
            pooled[fmt.name] += samples
            per_round[fmt.name].append(_p99(samples))
    rss = _rss_mb(pid)
    count = sum(len(samples) for samples in pooled.values())
    print(
        f"  {label}: {rounds} rounds of >= {requests} scrapes per format and >= "
        f"{round_seconds:g} s, {count} in all ({load_before}; {_load()})"
    )
    for fmt in FORMATS:
        samples = pooled[fmt.name]
        print(
            f"    {fmt.name:12s} p50 {statistics.median(samples):6.2f} ms  "
            f"p99 {_p99(samples):6.2f} ms  per-round p99 {spread(per_round[fmt.name])}  "
            f"({sizes[fmt.name]} B)"
        )
    print(f"    RSS {rss:6.1f} MB")
    return {"p99": max(_p99(s) for s in pooled.values()), "rss": rss}


# A child process completing jobs at a steady rate until its stdin closes.
_INGEST_MAIN = """
import sys, threading, time
from pathlib import Path
from tests.support.spoolgen import SpoolGen
spool, rate = Path(sys.argv[1]), float(sys.argv[2])
gen = SpoolGen(spool)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
print("started", flush=True)
i, start = 0, time.monotonic()
while not stop.is_set():
    job = gen.job(f"ingest-{i:07d}", freeze_seconds=0.01 + (i % 50) / 100)
    gen.log_lines(job, 5)
    gen.span_lines(job, 3)
    i += 1
    stop.wait(max(0.0, start + i / rate - time.monotonic()))
print(i, flush=True)
"""


@contextlib.contextmanager
def _ingesting(spool: Path, rate: float) -> Iterator[Callable[[], int]]:
    """Completes ``rate`` jobs/s into ``spool`` in a child process; yields 'how many so far'."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _INGEST_MAIN, str(spool), str(rate)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    if proc.stdout.readline().strip() != "started":
        raise RuntimeError("the ingest generator did not start")
    made = [0]
    try:
        yield lambda: made[0]
    finally:
        proc.stdin.close()
        made[0] = int(proc.stdout.readline() or 0)
        proc.wait(10)


def _generate(spool: Path, jobs: int) -> float:
    gen = SpoolGen(spool)
    start = time.perf_counter()
    for i in range(jobs):
        job = gen.job(f"bench-{i:06d}", freeze_seconds=0.01 + (i % 50) / 100)
        gen.log_lines(job, 5)
        gen.span_lines(job, 3)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300, help="per format and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--round-seconds",
        type=float,
        default=1.5,
        help="a round's least duration (> the 1 s poll interval: each meets an ingest pass)",
    )
    parser.add_argument("--lag-samples", type=int, default=10)
    parser.add_argument("--ingest-rate", type=float, default=100.0, help="jobs/s while scraping")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    scrapes = (args.requests, args.rounds, args.round_seconds)
    try:
        print(
            f"sidecar /metrics and memory, {args.rounds} rounds of {args.requests} "
            "sequential scrapes per format"
        )
        empty_spool, empty_state = root / "empty-spool", root / "empty-state"
        Keys.load_or_create(empty_state).publish(empty_spool)
        proc, base = _start(empty_spool, empty_state, root / "empty.log")
        try:
            baseline = _measure("baseline", base, proc.pid, *scrapes)
        finally:
            proc.terminate()
            proc.wait(10)

        spool, state = root / "spool", root / "state"
        Keys.load_or_create(state).publish(spool)
        took = _generate(spool, args.jobs)
        print(f"  generated {args.jobs} jobs in {took:.1f} s")
        start = time.perf_counter()
        proc, base = _start(spool, state, root / "loaded.log")
        try:
            while _ingested(base) < args.jobs:
                if time.perf_counter() - start > 900:
                    raise RuntimeError("ingest did not finish in 15 min")
                time.sleep(0.2)
            ingest = time.perf_counter() - start
            print(
                f"  ingested {args.jobs} jobs in {ingest:.1f} s ({args.jobs / ingest:.0f} jobs/s)"
            )
            while _gauge(base, "vmsnap_sidecar_spool_jobs") > 0:  # handled and removed
                time.sleep(0.2)
            handled = time.perf_counter() - start
            print(f"  all {args.jobs} job directories handled and removed after {handled:.1f} s")
            time.sleep(2.0)  # steady state: what a scrape meets between jobs
            loaded = _measure("loaded", base, proc.pid, *scrapes)

            gen = SpoolGen(spool)
            lags: list[float] = []
            own: list[float] = []
            for i in range(args.lag_samples):
                job = gen.job(f"lag-{i}", complete=False)
                target = _ingested(base) + 1
                time.sleep(random.uniform(0.0, 1.0))  # do not run in step with the poll cycle
                gen.complete(job)
                t0 = time.perf_counter()
                while _ingested(base) < target:
                    time.sleep(0.02)
                lags.append(time.perf_counter() - t0)
                own.append(_gauge(base, "vmsnap_sidecar_ingest_lag_seconds"))
            print(
                f"  ingest lag after a job ends (poll interval 1 s): median "
                f"{statistics.median(lags) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms "
                f"over {len(lags)} jobs (the sidecar's own vmsnap_sidecar_ingest_lag_seconds: "
                f"median {statistics.median(own) * 1000:.0f} ms)"
            )
            before = _ingested(base)
            started = time.perf_counter()
            with _ingesting(spool, args.ingest_rate) as made:
                time.sleep(2.0)  # the sidecar at its steady ingest rate
                busy = _measure("ingesting", base, proc.pid, *scrapes)
                counted = _ingested(base) - before
            seconds = time.perf_counter() - started
            print(
                f"  while ingesting: {made()} jobs completed in {seconds:.1f} s "
                f"({made() / seconds:.0f} jobs/s asked {args.ingest_rate:g}), "
                f"{counted:.0f} counted by the last scrape"
            )
        finally:
            proc.terminate()
            proc.wait(10)
        print(
            f"  ratios to the empty-spool baseline: loaded p99 x"
            f"{loaded['p99'] / baseline['p99']:.2f}, ingesting p99 x"
            f"{busy['p99'] / baseline['p99']:.2f}, RSS x{loaded['rss'] / baseline['rss']:.2f}"
        )
        verdict(f"/metrics p99 (pooled) after {args.jobs} jobs", loaded["p99"], 10.0)
        busy_goal = f"/metrics p99 (pooled) while ingesting {args.ingest_rate:g} jobs/s"
        verdict(busy_goal, busy["p99"], 10.0)
        verdict("sidecar RSS", max(loaded["rss"], busy["rss"]), 80.0, "MB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
