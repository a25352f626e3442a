"""How many VMs one Prometheus holds: 1k/5k/10k simulated sidecars, 60 s scrapes, ≥ 10 min each.

For each size in ``--vms`` this starts ``benchmarks/fleet_sim.py`` (one asyncio
process serving that many real sidecar expositions, see its docstring) and
Debian's ``prometheus`` with the project's recording rules and alerts
(deploy/prometheus/rules/), scrapes for ``--duration`` seconds, and reports:

* head series, Prometheus RSS (max of the 5 s samples, and at the end), CPU
  cores used (utime+stime over the run / wall time), and the simulator's CPU;
* scrape duration p50/p99 (every ``scrape_duration_seconds`` sample of the
  run) and scrape success (``sum(up)`` over the samples, missing scrapes
  counted as failures);
* every rule group's evaluation time (the largest
  ``prometheus_rule_group_last_duration_seconds`` seen) against its interval,
  and missed iterations;
* ``HOLDS`` when ≥ 99.9 % of scrapes succeed and every rule group evaluates
  within its interval with no missed iteration, else ``DOES NOT HOLD``;
* per VM: MiB of RSS, millicores, and disk/day (the head written to a block
  by a TSDB snapshot: chunk bytes per sample × samples per day, plus one
  index, since compaction leaves about one block per day);
* the load average (1 min) of the machine during the run, since other work
  shares its cores.

``--mode agent`` runs Prometheus in agent mode
(deploy/prometheus/agent-central/agent.yml) remote-writing to a central
Prometheus with ``--web.enable-remote-write-receiver`` (central.yml), where
the rules run; both processes are reported, plus the remote-write lag
(newest sample appended − newest sample sent, sampled every 5 s).

Not part of ``python -m benchmarks`` (each size takes minutes). Run::

    .venv/bin/python -m benchmarks.fleet_scale --vms 1000,5000,10000 \\
        --duration 600 --scrape-interval 60s [--mode agent]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.fleet_sim import TEMPLATE_ACCEPT, real_sidecar_exposition

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
AGENT_CENTRAL = ROOT / "deploy" / "prometheus" / "agent-central"
JOB = "vmsnap-sidecar"
SAMPLE_EVERY = 5.0
TEMPLATE_JOBS = 30
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# agent.yml's placeholders, replaced by this run's values (each must occur).
AGENT_TARGETS = "/etc/prometheus/vmsnap-targets/*.json"
AGENT_CENTRAL_URL = "http://prometheus-central:9090/api/v1/write"


# -- configs --------------------------------------------------------------------------------


def single_config(file_sd: Path, scrape_interval: str, rules_dir: Path = RULES_DIR) -> str:
    """One Prometheus: scrapes the fleet and runs the rules (JSON is YAML)."""
    return json.dumps(
        {
            "global": {
                "scrape_interval": scrape_interval,
                # Prometheus refuses a timeout longer than the interval.
                "scrape_timeout": f"{min(10.0, parse_interval(scrape_interval)):g}s",
                "evaluation_interval": "1m",
            },
            "rule_files": [str(p) for p in sorted(rules_dir.glob("*.yml"))],
            "scrape_configs": [{"job_name": JOB, "file_sd_configs": [{"files": [str(file_sd)]}]}],
        },
        indent=1,
    )


def _replace_once(text: str, old: str, new: str, what: str) -> str:
    if text.count(old) != 1:
        raise SystemExit(f"{what}: expected {old!r} exactly once; the file changed")
    return text.replace(old, new)


def agent_config(file_sd: Path, central_url: str, scrape_interval: str) -> str:
    """deploy/prometheus/agent-central/agent.yml with this run's targets and central URL."""
    text = (AGENT_CENTRAL / "agent.yml").read_text()
    text = _replace_once(text, AGENT_TARGETS, str(file_sd), "agent.yml")
    text = _replace_once(text, AGENT_CENTRAL_URL, central_url, "agent.yml")
    return _replace_once(
        text, "scrape_interval: 60s", f"scrape_interval: {scrape_interval}", "agent.yml"
    )


def central_config(rules_dir: Path = RULES_DIR) -> str:
    """deploy/prometheus/agent-central/central.yml with the rule paths made absolute."""
    text = (AGENT_CENTRAL / "central.yml").read_text()
    if text.count("../rules/") != 2:
        raise SystemExit("central.yml: expected two rule files under ../rules/")
    return text.replace("../rules/", f"{rules_dir}/")


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Prometheus:
    name: str
    proc: subprocess.Popen[bytes]
    base: str
    data: Path
    log: Path


@contextlib.contextmanager
def prometheus(
    name: str, config: str, workdir: Path, extra: list[str], *, agent: bool = False
) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("prometheus not found: apt-get install prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{name}.yml"
    config_path.write_text(config)
    data = workdir / f"{name}-data"
    port = free_port()
    log = workdir / f"{name}.log"
    storage = f"--storage.agent.path={data}" if agent else f"--storage.tsdb.path={data}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                storage,
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/-/ready", timeout=2):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} not ready within 120 s")
            time.sleep(0.3)
        yield Prometheus(name, proc, base, data, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def simulator(
    vms: int, file_sd: Path, template: Path, job_every: float, log: Path
) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.fleet_sim",
                "--vms",
                str(vms),
                "--file-sd",
                str(file_sd),
                "--template",
                str(template),
                "--template-jobs",
                str(TEMPLATE_JOBS),
                "--job-every",
                str(job_every),
                "--until-stdin-closes",
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise SystemExit(f"fleet_sim did not start: {line!r} {log.read_text()[-2000:]}")
        yield proc, json.loads(line[len("READY ") :])
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


# -- sampling -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def metrics(base: str) -> dict[str, list[tuple[str, float]]]:
    """A Prometheus's own /metrics: name -> [(labels, value)]."""
    request = urllib.request.Request(f"{base}/metrics", headers={"Accept": TEMPLATE_ACCEPT})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name, _, labels = key.partition("{")
        with contextlib.suppress(ValueError):
            out.setdefault(name, []).append((labels.rstrip("}"), float(value)))
    return out


def label(labels: str, name: str) -> str:
    for part in labels.split('",'):
        key, _, value = part.partition('="')
        if key.strip(", ") == name:
            return value.rstrip('"')
    return ""


@dataclass
class RuleGroup:
    interval: float = 0.0
    max_duration: float = 0.0
    missed: float = 0.0
    iterations: float = 0.0
    # When the slowest evaluation ran (Unix time): a long window holds only the data
    # scraped until then, so this says how many samples per series it read.
    max_at: float = 0.0


@dataclass
class Watch:
    """Samples of one Prometheus process (and its own metrics) every SAMPLE_EVERY s."""

    server: Prometheus
    rss: list[int] = field(default_factory=list)
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    groups: dict[str, RuleGroup] = field(default_factory=dict)
    head_series: float = 0.0
    remote_lag: list[float] = field(default_factory=list)
    samples_appended: float = 0.0
    errors: list[str] = field(default_factory=list)

    def sample(self) -> None:
        pid = self.server.proc.pid
        self.rss.append(rss_bytes(pid))
        self.cpu_end = cpu_seconds(pid)
        try:
            own = metrics(self.server.base)
        except OSError as exc:
            self.errors.append(f"{self.server.name} /metrics: {exc}")
            return
        evaluated = {
            label(labels, "rule_group"): value
            for labels, value in own.get(
                "prometheus_rule_group_last_evaluation_timestamp_seconds", []
            )
        }
        for labels, value in own.get("prometheus_rule_group_last_duration_seconds", []):
            name = label(labels, "rule_group")
            group = self.groups.setdefault(name, RuleGroup())
            if value > group.max_duration:
                group.max_duration = value
                group.max_at = evaluated.get(name, 0.0)
        for labels, value in own.get("prometheus_rule_group_interval_seconds", []):
            self.groups.setdefault(label(labels, "rule_group"), RuleGroup()).interval = value
        for labels, value in own.get("prometheus_rule_group_iterations_missed_total", []):
            self.groups.setdefault(label(labels, "rule_group"), RuleGroup()).missed = value
        for labels, value in own.get("prometheus_rule_group_iterations_total", []):
            self.groups.setdefault(label(labels, "rule_group"), RuleGroup()).iterations = value
        for name in ("prometheus_tsdb_head_series", "prometheus_agent_active_series"):
            for _, value in own.get(name, []):
                self.head_series = value
        self.samples_appended = sum(
            value
            for name in (
                "prometheus_tsdb_head_samples_appended_total",
                "prometheus_agent_samples_appended_total",
            )
            for _, value in own.get(name, [])
        )
        newest = own.get("prometheus_remote_storage_highest_timestamp_in_seconds", [])
        sent = own.get("prometheus_remote_storage_queue_highest_sent_timestamp_seconds", [])
        if newest and sent:
            self.remote_lag.append(max(0.0, newest[0][1] - min(v for _, v in sent)))


def sampler(
    watches: list[Watch], extra_pids: dict[str, int], stop: threading.Event
) -> tuple[threading.Thread, dict[str, list[float]]]:
    series: dict[str, list[float]] = {"load1": []}
    for name in extra_pids:
        series[f"{name}_cpu"] = []
        series[f"{name}_rss"] = []

    def run() -> None:
        while not stop.wait(SAMPLE_EVERY):
            series["load1"].append(os.getloadavg()[0])
            for watch in watches:
                watch.sample()
            for name, pid in extra_pids.items():
                with contextlib.suppress(OSError):
                    series[f"{name}_cpu"].append(cpu_seconds(pid))
                    series[f"{name}_rss"].append(rss_bytes(pid))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, series


# -- queries --------------------------------------------------------------------------------


def query(base: str, expr: str, at: float) -> list[dict[str, Any]]:
    data = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"}).encode()
    with urllib.request.urlopen(f"{base}/api/v1/query", data=data, timeout=300) as response:
        doc = json.load(response)
    if doc.get("status") != "success":
        raise RuntimeError(f"{expr}: {doc}")
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def scalar(base: str, expr: str, at: float) -> float:
    result = query(base, expr, at)
    return float(result[0]["value"][1]) if result else 0.0


def quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def snapshot_disk(base: str, data: Path) -> tuple[int, int]:
    """Write the head to a block (admin API); return (chunk bytes, index bytes)."""
    request = urllib.request.Request(f"{base}/api/v1/admin/tsdb/snapshot", method="POST")
    with urllib.request.urlopen(request, timeout=600) as response:
        name = json.load(response)["data"]["name"]
    chunks = index = 0
    for block in (data / "snapshots" / name).iterdir():
        if not block.is_dir():
            continue
        chunks += sum(p.stat().st_size for p in (block / "chunks").iterdir())
        index += (block / "index").stat().st_size
    shutil.rmtree(data / "snapshots" / name, ignore_errors=True)
    return chunks, index


def parse_interval(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]]


# -- one size -------------------------------------------------------------------------------


@dataclass
class Result:
    vms: int
    mode: str
    series_per_vm: int
    lines: list[str]
    holds: bool
    figures: dict[str, Any]


def _data_seconds(group: RuleGroup, began: float) -> float:
    """Seconds of scraped data when the group's slowest evaluation ran (0: unknown)."""
    return max(0.0, group.max_at - began) if group.max_at else 0.0


def measure(
    vms: int,
    mode: str,
    duration: float,
    scrape_interval: str,
    template: Path,
    job_every: float,
    workdir: Path,
    rules_dir: Path = RULES_DIR,
) -> Result:
    interval_s = parse_interval(scrape_interval)
    workdir.mkdir(parents=True, exist_ok=True)
    file_sd = workdir / "targets.json"
    with contextlib.ExitStack() as stack:
        sim, ready = stack.enter_context(
            simulator(vms, file_sd, template, job_every, workdir / "sim.log")
        )
        if mode == "agent":
            central = stack.enter_context(
                prometheus(
                    "central",
                    central_config(rules_dir),
                    workdir,
                    ["--web.enable-remote-write-receiver", "--web.enable-admin-api"],
                )
            )
            agent = stack.enter_context(
                prometheus(
                    "agent",
                    agent_config(file_sd, f"{central.base}/api/v1/write", scrape_interval),
                    workdir,
                    ["--enable-feature=agent"],
                    agent=True,
                )
            )
            watches = [Watch(agent), Watch(central)]
            query_server = central
        else:
            single = stack.enter_context(
                prometheus(
                    "prometheus",
                    single_config(file_sd, scrape_interval, rules_dir),
                    workdir,
                    ["--web.enable-admin-api"],
                )
            )
            watches = [Watch(single)]
            query_server = single
        began = time.time()
        for watch in watches:
            watch.cpu_start = cpu_seconds(watch.server.proc.pid)
        sim_cpu_start = cpu_seconds(sim.pid)
        stop = threading.Event()
        thread, series = sampler(watches, {"sim": sim.pid}, stop)
        time.sleep(duration)
        stop.set()
        thread.join(timeout=120)
        ended = time.time()
        for watch in watches:
            watch.sample()
        sim_cpu = cpu_seconds(sim.pid) - sim_cpu_start
        wall = ended - began
        if mode == "agent":
            # Samples up to `ended` may still be in the agent's queue: let them
            # land, so both scrape counts below read the same data.
            time.sleep(15)
        # Every target has been scraped at least floor(window/interval) times
        # in a window that starts one interval in (scrapes are spread over it).
        window = int(wall - interval_s)
        expected = vms * int(window // interval_s)
        selector = f'{{job="{JOB}"}}'
        base = query_server.base
        recorded = scalar(base, f"sum(count_over_time(up{selector}[{window}s]))", ended)
        succeeded = scalar(base, f"sum(sum_over_time(up{selector}[{window}s]))", ended)
        missing = max(0.0, expected - recorded)
        success = succeeded / max(recorded + missing, 1.0)
        durations = [
            float(v[1])
            for r in query(base, f"scrape_duration_seconds{selector}[{window}s]", ended)
            for v in r["values"]
        ]
        chunks, index = snapshot_disk(query_server.base, query_server.data)
        target_health = len(query(base, f"up{selector} == 1", ended))

    central_watch = watches[-1]
    head_samples = max(central_watch.samples_appended, 1.0)
    series_per_vm = int(ready["series_per_vm"])
    samples_per_day_per_vm = series_per_vm * 86400 / interval_s
    disk_day_per_vm = (chunks / head_samples) * samples_per_day_per_vm + index / vms
    # A group that never evaluated (a run shorter than its interval) has not held.
    groups_ok = all(
        g.interval > 0 and g.iterations >= 1 and g.max_duration < g.interval and g.missed == 0
        for g in central_watch.groups.values()
    )
    holds = success >= 0.999 and groups_ok and bool(central_watch.groups)
    load = series["load1"]
    lines = [
        f"== {vms} VMs, mode {mode}: {wall:.0f} s, scrape interval {scrape_interval}, "
        f"{series_per_vm} series/VM; load average (1 min) mean {sum(load) / max(len(load), 1):.2f} "
        f"max {max(load, default=0):.2f} on {os.cpu_count()} cores",
        f"  simulator: {ready['body_bytes']} B/scrape ({ready['body_gzip_bytes']} B gzip), "
        f"CPU {sim_cpu / wall * 1000:.0f} millicores, "
        f"RSS {max(series['sim_rss'], default=0) / 2**20:.0f} MiB",
    ]
    for watch in watches:
        cores = (watch.cpu_end - watch.cpu_start) / wall
        rss_max, rss_end = max(watch.rss, default=0), (watch.rss or [0])[-1]
        lines.append(
            f"  {watch.server.name}: head series {watch.head_series:,.0f}; RSS max "
            f"{rss_max / 2**20:,.0f} MiB, end {rss_end / 2**20:,.0f} MiB; CPU {cores:.2f} cores; "
            f"per VM {rss_end / 2**20 / vms * 1024:.1f} KiB RSS, "
            f"{cores * 1000 / vms:.3f} millicores; "
            f"per series {rss_end / max(watch.head_series, 1) / 1024:.2f} KiB"
        )
        if watch.remote_lag:
            lines.append(
                f"  remote-write lag: p50 {quantile(watch.remote_lag, 0.5):.1f} s, "
                f"max {max(watch.remote_lag):.1f} s (newest appended - newest sent)"
            )
        for error in watch.errors[:5]:
            lines.append(f"  sampling error: {error}")
    lines.append(
        f"  scrapes: {succeeded:,.0f} up of {recorded:,.0f} recorded + {missing:,.0f} missing "
        f"(expected ≥ {expected:,}) = {success * 100:.3f} % success; targets up at the end "
        f"{target_health}/{vms}"
    )
    lines.append(
        f"  scrape duration: p50 {quantile(durations, 0.5) * 1000:.1f} ms, "
        f"p99 {quantile(durations, 0.99) * 1000:.1f} ms, "
        f"max {max(durations, default=0) * 1000:.1f} ms "
        f"({len(durations):,} scrapes)"
    )
    for name, g in sorted(central_watch.groups.items()):
        verdict = (
            "ok"
            if g.iterations >= 1 and g.max_duration < g.interval and g.missed == 0
            else "NOT EVALUATED"
            if g.iterations < 1
            else "OVER"
        )
        lines.append(
            f"  rule group {name.rsplit(';', 1)[-1]}: max {g.max_duration * 1000:,.0f} ms of "
            f"{g.interval:.0f} s interval (at {_data_seconds(g, began):.0f} s of data, "
            f"~{_data_seconds(g, began) / interval_s:.0f} samples/series), "
            f"{g.iterations:.0f} iterations, {g.missed:.0f} missed [{verdict}]"
        )
    lines.append(
        f"  disk: head snapshot {chunks / 2**20:.1f} MiB chunks + {index / 2**20:.1f} MiB index "
        f"for {head_samples:,.0f} samples = {chunks / head_samples:.2f} B/sample; per VM "
        f"~{disk_day_per_vm / 2**20:.2f} MiB/day"
    )
    lines.append(f"  {vms} VMs ({mode}): {'HOLDS' if holds else 'DOES NOT HOLD'}")
    figures = {
        "vms": vms,
        "mode": mode,
        "series_per_vm": series_per_vm,
        "wall_s": round(wall),
        "load1_mean": round(sum(load) / max(len(load), 1), 2),
        "load1_max": round(max(load, default=0), 2),
        "success_pct": round(success * 100, 4),
        "scrape_p50_ms": round(quantile(durations, 0.5) * 1000, 2),
        "scrape_p99_ms": round(quantile(durations, 0.99) * 1000, 2),
        "sim_millicores": round(sim_cpu / wall * 1000),
        "disk_mib_day_per_vm": round(disk_day_per_vm / 2**20, 3),
        "bytes_per_sample": round(chunks / head_samples, 3),
        "holds": holds,
        "servers": {
            w.server.name: {
                "head_series": w.head_series,
                "rss_max_mib": round(max(w.rss, default=0) / 2**20),
                "rss_end_mib": round((w.rss or [0])[-1] / 2**20),
                "cores": round((w.cpu_end - w.cpu_start) / wall, 3),
                "remote_lag_max_s": round(max(w.remote_lag), 1) if w.remote_lag else None,
                "rule_groups": {
                    k.rsplit(";", 1)[-1]: [
                        round(g.max_duration, 3),
                        g.interval,
                        g.missed,
                        round(_data_seconds(g, began)),
                    ]
                    for k, g in w.groups.items()
                },
            }
            for w in watches
        },
    }
    return Result(vms, mode, series_per_vm, lines, holds, figures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", default="1000,5000,10000", help="sizes, comma-separated")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds per size")
    parser.add_argument("--scrape-interval", default="60s")
    parser.add_argument("--mode", choices=("single", "agent"), default="single")
    parser.add_argument(
        "--job-every", type=float, default=300.0, help="seconds between a VM's simulated jobs"
    )
    # Another rules directory (e.g. main's rules, copied) prices old against new rules
    # on the same simulated fleet.
    parser.add_argument(
        "--rules-dir",
        type=Path,
        default=RULES_DIR,
        help="the *.yml rule files to load (default: deploy/prometheus/rules/)",
    )
    args = parser.parse_args(argv)
    if not sorted(args.rules_dir.glob("*.yml")):
        parser.error(f"--rules-dir {args.rules_dir}: no *.yml rule files")
    sizes = [int(v) for v in args.vms.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="vmsnap-fleet-scale-") as tmp:
        root = Path(tmp)
        template = root / "template.txt"
        template.write_bytes(real_sidecar_exposition(TEMPLATE_JOBS))
        print(
            f"fleet_scale: mode {args.mode}, sizes {sizes}, {args.duration:.0f} s each, "
            f"scrape interval {args.scrape_interval}; rules {args.rules_dir}; template from a "
            f"real snapshot-sidecar after {TEMPLATE_JOBS} jobs",
            flush=True,
        )
        for vms in sizes:
            result = measure(
                vms,
                args.mode,
                args.duration,
                args.scrape_interval,
                template,
                args.job_every,
                root / f"{args.mode}-{vms}",
                args.rules_dir.resolve(),
            )
            results.append(result)
            print("\n".join(result.lines), flush=True)
            print("JSON " + json.dumps(result.figures), flush=True)
            shutil.rmtree(root / f"{args.mode}-{vms}", ignore_errors=True)
    if len(results) > 1:
        # The marginal cost: what each added VM costs, the fixed start-up cost removed.
        first, last = results[0].figures, results[-1].figures
        added = last["vms"] - first["vms"]
        for name in last["servers"]:
            a, b = first["servers"][name], last["servers"][name]
            rss = (b["rss_end_mib"] - a["rss_end_mib"]) / added
            cores = (b["cores"] - a["cores"]) / added
            series = (b["head_series"] - a["head_series"]) / added
            print(
                f"marginal per VM ({name}, {first['vms']} -> {last['vms']} VMs): "
                f"{rss * 1024:.0f} KiB RSS, {cores * 1000:.3f} millicores, {series:.0f} series; "
                f"per series {rss * 2**20 / max(series, 1):,.0f} B RSS"
            )
    holding = [r.vms for r in results if r.holds]
    print(f"largest size that holds ({args.mode}): {max(holding) if holding else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
