"""A fleet on one machine: N fake sidecars, one real Prometheus, every dashboard query timed.

What it does, all on 127.0.0.1 and bounded in time:

1. starts N (default 200) fake sidecars in this process, one tiny HTTP server
   per port, each serving the sidecar's real exposition (snapshot_sidecar.collectors
   over snapshot_sidecar.metrics.MetricValues, OpenMetrics with trace_id exemplars
   when asked) of a synthetic VM: a job history at start, then a new job every
   ``--job-every`` seconds or so (freeze windows log-normal, a few slow VMs,
   rare script timeouts and failures);
2. starts Debian's ``prometheus`` with a temporary config and data directory,
   scraping all of them with region/cluster/instance labels, loading
   deploy/prometheus/rules/*.yml, exemplar storage on;
3. after ``--duration`` seconds of scraping, runs every panel query of every
   dashboard in dashboards/json/ (range or instant, as the panel does), every
   variable's label_values lookup and every exemplar query through the HTTP
   API, ``--rounds`` times;
4. prints query latency (p50/p99, slowest queries), Prometheus RSS and head
   series, rule-group evaluation times and rule health, then stops everything.

No assertions: figures for the operations docs. Grafana's variables are
replaced as Grafana would (``$__range`` = the run, ``$__interval`` = the
panel's minimum interval); the data covers minutes, not the 7 days a
dashboard shows, so the figures are per-series costs at fleet width.

Run: ``.venv/bin/python -m benchmarks.fleet [--vms 200] [--duration 330]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.exposition import choose_encoder
from snapshot_sidecar.collectors import build_registry
from snapshot_sidecar.collectors.build_info import BuildInfoCollector
from snapshot_sidecar.collectors.values import ValuesCollector
from snapshot_sidecar.metrics import MetricValues

from snapshot_runtime.core.errors import error_group
from snapshot_runtime.core.phases import PHASES

ROOT = Path(__file__).resolve().parent.parent
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "dashboards" / "json").glob("*.json"))
REGIONS = ("westeurope", "northeurope", "eastus")
CLUSTERS = ("sql", "web", "app", "batch")
HARD_LIMIT_SECONDS = 900  # whatever the arguments, everything stops by then


# -- fake sidecars ---------------------------------------------------------------------


class FakeVM:
    """One VM's sidecar values and its synthetic job history."""

    def __init__(self, index: int, rng: random.Random, *, slow: bool) -> None:
        self.name = f"vm-{index:04d}"
        self.region = REGIONS[index % len(REGIONS)]
        self.cluster = CLUSTERS[(index // len(REGIONS)) % len(CLUSTERS)]
        self.slow = slow
        self.rng = rng
        self.disks = rng.randint(1, 4)
        self.lock = threading.Lock()
        self.values = MetricValues()
        self.registry = build_registry(
            [ValuesCollector(self.snapshot), BuildInfoCollector("0.1.0-fleet")]
        )

    def snapshot(self) -> MetricValues:
        with self.lock:
            return self.values.copy()

    def job(self, now: float) -> None:
        rng = self.rng
        trace = (f"{rng.getrandbits(128):032x}", now)
        with self.lock:
            values = self.values
            outcome, consistency, error = "success", "application", None
            # pre-script: attempts, retries, the odd timeout
            attempts = 2 if rng.random() < 0.03 else 1
            values.inc("vmsnap_script_runs_total", ["pre"], attempts)
            values.inc("vmsnap_script_retries_total", ["pre"], attempts - 1)
            pre_seconds = rng.lognormvariate(math.log(0.4), 0.6) * attempts
            if rng.random() < 0.01:
                values.inc("vmsnap_script_timeouts_total", ["pre"])
                values.inc("vmsnap_script_failures_total", ["pre"])
                pre_seconds = 30.0
                outcome, consistency, error = "failed", "none", "Pre-ScriptTimeout"
            values.observe("vmsnap_script_duration_seconds", pre_seconds)
            values.inc("vmsnap_phase_seconds_total", ["pre_script"], pre_seconds)
            for phase in PHASES:
                if phase not in {"pre_script", "freeze", "snapshot", "thaw", "post_script"}:
                    values.inc("vmsnap_phase_seconds_total", [phase], rng.uniform(0.001, 0.05))
            if outcome == "success":
                window = rng.lognormvariate(math.log(0.15), 0.7) * (25 if self.slow else 1)
                window = min(window, 60.0)
                values.observe("vmsnap_freeze_duration_seconds", window, exemplar=trace)
                values.inc("vmsnap_freezes_total", ["runtime"])
                values.inc("vmsnap_phase_seconds_total", ["freeze"], window * 0.1)
                values.inc("vmsnap_phase_seconds_total", ["snapshot"], window * 0.85)
                values.inc("vmsnap_phase_seconds_total", ["thaw"], window * 0.05)
                for _ in range(self.disks):
                    values.inc("vmsnap_disk_snapshot_attempts_total")
                    values.observe(
                        "vmsnap_disk_snapshot_duration_seconds",
                        rng.lognormvariate(math.log(0.08), 0.5),
                        exemplar=trace,
                    )
                    if rng.random() < 0.005:
                        values.inc("vmsnap_disk_snapshot_failures_total", ["retryable"])
                        outcome, consistency, error = "failed", "none", "SnapshotPartiallyFailed"
                post_seconds = rng.lognormvariate(math.log(0.3), 0.6)
                values.inc("vmsnap_script_runs_total", ["post"])
                if rng.random() < 0.002:
                    values.inc("vmsnap_script_timeouts_total", ["post"])
                    post_seconds = 30.0
                    if error is None:
                        consistency, error = "filesystem", None
                        values.inc("vmsnap_job_warnings_total", [error_group("Post-ScriptTimeout")])
                values.observe("vmsnap_script_duration_seconds", post_seconds)
                values.inc("vmsnap_phase_seconds_total", ["post_script"], post_seconds)
            values.inc("vmsnap_jobs_total", [outcome, consistency])
            if error is not None:
                values.inc("vmsnap_job_errors_total", [error_group(error)])
            values.replace("vmsnap_last_job_info", [outcome, consistency, error or "none"])
            values.observe("vmsnap_job_duration_seconds", rng.uniform(2, 40))
            values.set_max("vmsnap_last_job_timestamp_seconds", now)
            if outcome == "success":
                values.set_max("vmsnap_last_success_timestamp_seconds", now)
            values.inc("vmsnap_sidecar_records_ingested_total")
            values.inc("vmsnap_sidecar_log_mirror_bytes_total", (), rng.randint(2_000, 20_000))
            values.set("vmsnap_sidecar_log_mirror_backlog_bytes", rng.choice((0, 0, 0, 4096)))


def _handler(vm: FakeVM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            body = encoder(vm.registry)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


class Fleet:
    """N fake sidecars on loopback ports, and the thread that runs their jobs."""

    def __init__(self, n: int, *, seed: int, job_every: float, history: int) -> None:
        rng = random.Random(seed)
        self.vms = [
            FakeVM(i, random.Random(rng.random()), slow=rng.random() < 0.03) for i in range(n)
        ]
        self.servers: list[ThreadingHTTPServer] = []
        self.job_every = job_every
        self._stop = threading.Event()
        self._rng = rng
        now = time.time()
        for vm in self.vms:
            for k in range(history):
                vm.job(now - (history - k) * 86400 / 2)

    def start(self) -> list[tuple[FakeVM, int]]:
        out = []
        for vm in self.vms:
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(vm))
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.servers.append(server)
            out.append((vm, server.server_address[1]))
        threading.Thread(target=self._jobs, daemon=True).start()
        return out

    def _jobs(self) -> None:
        # Each VM runs a job at a random moment in each job_every period.
        next_at = {vm.name: time.time() + self._rng.uniform(0, self.job_every) for vm in self.vms}
        while not self._stop.wait(0.2):
            now = time.time()
            for vm in self.vms:
                if next_at[vm.name] <= now:
                    vm.job(now)
                    next_at[vm.name] = now + self._rng.uniform(0.5, 1.5) * self.job_every

    def stop(self) -> None:
        self._stop.set()
        # shutdown() waits for serve_forever's next poll (0.5 s): all at once, not in turn.
        stoppers = [threading.Thread(target=server.shutdown) for server in self.servers]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(timeout=10)
        for server in self.servers:
            server.server_close()


# -- Prometheus ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_config(targets: list[tuple[FakeVM, int]], scrape_interval: str) -> dict[str, Any]:
    groups = [
        {
            "targets": [f"127.0.0.1:{port}"],
            "labels": {"instance": vm.name, "region": vm.region, "cluster": vm.cluster},
        }
        for vm, port in targets
    ]
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": "1m"},
        "storage": {"exemplars": {"max_exemplars": 500000}},
        "rule_files": [str(p) for p in RULES],
        "scrape_configs": [{"job_name": "vmsnap-sidecar", "static_configs": groups}],
    }


@contextlib.contextmanager
def prometheus(
    config: dict[str, Any], workdir: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    binary = shutil.which("prometheus")
    if binary is None:
        sys.exit(
            "prometheus not found: apt-get install prometheus (scripts/install-system-deps.sh)"
        )
    path = workdir / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    port = _free_port()
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                sys.exit(f"prometheus exited: {(workdir / 'prometheus.log').read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{base}/-/ready", timeout=2) as r,
            ):
                if r.status == 200:
                    break
            if time.monotonic() > deadline:
                sys.exit("prometheus not ready within 60 s")
            time.sleep(0.5)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def api(
    base: str,
    path: str,
    params: dict[str, str] | list[tuple[str, str]],
    *,
    post: bool = True,
) -> tuple[float, Any]:
    """POST the parameters (as Grafana does for queries), or GET them as a query string."""
    encoded = urllib.parse.urlencode(params)
    url = f"{base}{path}" if post or not encoded else f"{base}{path}?{encoded}"
    data = encoded.encode() if post and encoded else None
    start = time.perf_counter()
    with urllib.request.urlopen(url, data=data, timeout=60) as r:
        doc = json.load(r)
    return time.perf_counter() - start, doc


def rss_bytes(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            fields[key] = int(value.split()[0]) * 1024
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


# -- dashboard queries -----------------------------------------------------------------


def dashboard_queries(run_seconds: int) -> list[dict[str, Any]]:
    """Every panel target and variable lookup, with Grafana's variables filled in."""
    out: list[dict[str, Any]] = []
    for path in DASHBOARDS:
        doc = json.loads(path.read_text())
        uid = doc["uid"]
        for var in doc["templating"]["list"]:
            if var["type"] == "query":
                m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["query"])
                assert m, var["query"]
                out.append(
                    {
                        "name": f"{uid} ${var['name']}",
                        "kind": "label",
                        "label": m.group(2),
                        "match": fill(m.group(1), "1h", "1h", run_seconds),
                    }
                )
        for panel in _panels(doc):
            interval = panel.get("interval") or "1m"
            for target in panel.get("targets", []):
                window_values = ("1h", "6h", "1d") if "$window" in target["expr"] else ("6h",)
                for window in window_values:
                    expr = fill(target["expr"], interval, window, run_seconds)
                    name = f"{uid} / {panel['title']} / {target['refId']}"
                    if len(window_values) > 1:
                        name += f" ({window})"
                    kind = "instant" if target.get("instant") else "range"
                    out.append({"name": name, "kind": kind, "expr": expr})
                    if target.get("exemplar"):
                        out.append({"name": name + " exemplars", "kind": "exemplars", "expr": expr})
    return out


def _panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def fill(expr: str, interval: str, window: str, run_seconds: int) -> str:
    expr = expr.replace('=~"$instance"', '=~".*"').replace('="$instance"', '="vm-0001"')
    for name, value in {
        "$__range": f"{run_seconds}s",
        "$__interval": interval,
        "$__rate_interval": "1m",
        "$window": window,
        "$job": ".*",
        "$region": ".*",
        "$cluster": ".*",
    }.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def run_queries(
    base: str, queries: list[dict[str, Any]], start: float, end: float, rounds: int
) -> tuple[dict[str, list[float]], dict[str, int], list[str]]:
    timings: dict[str, list[float]] = {q["name"]: [] for q in queries}
    results: dict[str, int] = {}
    errors: list[str] = []
    step = str(max(15, int((end - start) / 200)))
    for _ in range(rounds):
        for q in queries:
            try:
                if q["kind"] == "label":
                    took, doc = api(
                        base,
                        f"/api/v1/label/{q['label']}/values",
                        [("match[]", q["match"]), ("start", str(start)), ("end", str(end))],
                        post=False,
                    )
                elif q["kind"] == "instant":
                    took, doc = api(base, "/api/v1/query", {"query": q["expr"], "time": str(end)})
                elif q["kind"] == "range":
                    took, doc = api(
                        base,
                        "/api/v1/query_range",
                        {"query": q["expr"], "start": str(start), "end": str(end), "step": step},
                    )
                else:
                    took, doc = api(
                        base,
                        "/api/v1/query_exemplars",
                        {"query": q["expr"], "start": str(start), "end": str(end)},
                    )
            except urllib.error.HTTPError as exc:
                errors.append(f"{q['name']}: HTTP {exc.code} {exc.read()[:300]!r}")
                continue
            timings[q["name"]].append(took)
            data = doc.get("data")
            if q["kind"] == "exemplars":
                results[q["name"]] = sum(len(s.get("exemplars", [])) for s in data or [])
            elif isinstance(data, dict):
                results[q["name"]] = len(data.get("result", []))
            else:
                results[q["name"]] = len(data or [])
    return timings, results, errors


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument(
        "--duration",
        type=int,
        default=330,
        help="seconds of scraping (330: every 5-minute rule group has evaluated)",
    )
    parser.add_argument("--scrape-interval", default="5s")
    parser.add_argument("--job-every", type=float, default=20.0, help="seconds between a VM's jobs")
    parser.add_argument("--history", type=int, default=20, help="jobs per VM before the start")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.vms < 1 or args.duration < 10 or args.duration > 600:
        parser.error("--vms >= 1 and 10 <= --duration <= 600")

    # Hard stop: whatever happens below, this process ends by HARD_LIMIT_SECONDS.
    killer = threading.Timer(HARD_LIMIT_SECONDS, lambda: os._exit(3))
    killer.daemon = True
    killer.start()

    t0 = time.monotonic()
    fleet = Fleet(args.vms, seed=args.seed, job_every=args.job_every, history=args.history)
    targets = fleet.start()
    print(f"fleet: {len(targets)} fake sidecars on 127.0.0.1 ({time.monotonic() - t0:.1f}s)")
    body = targets[0][0].registry
    sample_lines = sum(
        1
        for line in choose_encoder("")[0](body).decode().splitlines()
        if line and not line.startswith("#")
    )
    print(f"series per VM: {sample_lines}; fleet: {sample_lines * len(targets)}")
    try:
        with tempfile.TemporaryDirectory(prefix="vmsnap-fleet-") as tmp:
            config = prometheus_config(targets, args.scrape_interval)
            with prometheus(config, Path(tmp)) as (base, proc):
                start = time.time()
                print(f"prometheus: {base} pid {proc.pid}; scraping for {args.duration}s")
                time.sleep(args.duration)
                end = time.time()
                _, doc = api(base, "/api/v1/targets", {})
                up = sum(t["health"] == "up" for t in doc["data"]["activeTargets"])
                _, tsdb = api(base, "/api/v1/status/tsdb", {})
                head = tsdb["data"]["headStats"]
                rss, hwm = rss_bytes(proc.pid)
                print(
                    f"targets up: {up}/{len(targets)}; head series {head['numSeries']}; "
                    f"RSS {rss / 2**20:.0f} MiB (peak {hwm / 2**20:.0f} MiB) after scraping"
                )

                queries = dashboard_queries(int(end - start))
                timings, results, errors = run_queries(base, queries, start, end, args.rounds)
                rss_q, hwm_q = rss_bytes(proc.pid)
                every = [t for ts in timings.values() for t in ts]
                print(
                    f"queries: {len(queries)} x {args.rounds} rounds = {len(every)}; "
                    f"latency p50 {_quantile(every, 0.5) * 1000:.1f} ms, "
                    f"p99 {_quantile(every, 0.99) * 1000:.1f} ms, "
                    f"max {max(every) * 1000:.1f} ms"
                )
                print(f"RSS after queries {rss_q / 2**20:.0f} MiB (peak {hwm_q / 2**20:.0f} MiB)")
                slowest = sorted(timings.items(), key=lambda kv: -statistics.median(kv[1] or [0]))
                print("slowest queries (median):")
                for name, ts in slowest[:5]:
                    print(f"  {statistics.median(ts) * 1000:7.1f} ms  {name}")
                empty = [n for n, count in results.items() if count == 0]
                print(f"queries with an empty result: {len(empty)}")
                for name in empty:
                    print(f"  {name}")
                exemplars = {n: c for n, c in results.items() if n.endswith("exemplars")}
                print(f"exemplars returned: {exemplars}")
                for error in errors:
                    print(f"ERROR {error}")

                _, rules = api(base, "/api/v1/rules", {})
                bad = []
                print("rule groups (last evaluation):")
                for group in rules["data"]["groups"]:
                    print(
                        f"  {group['name']:<20} {group['evaluationTime'] * 1000:8.1f} ms "
                        f"({len(group['rules'])} rules)"
                    )
                    bad += [r["name"] for r in group["rules"] if r.get("health") == "err"]
                firing: dict[str, int] = {}
                for group in rules["data"]["groups"]:
                    for r in group["rules"]:
                        if r["type"] == "alerting":
                            firing[r["name"]] = sum(a["state"] == "firing" for a in r["alerts"])
                print(f"rules with errors: {bad or 'none'}")
                print(f"alerts firing: { {k: v for k, v in firing.items() if v} or 'none' }")
    finally:
        fleet.stop()
    print(f"done in {time.monotonic() - t0:.0f}s")
    return 1 if errors or bad else 0


if __name__ == "__main__":
    sys.exit(main())
