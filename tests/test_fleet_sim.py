"""benchmarks/fleet_sim.py: one asyncio process serving many real sidecar expositions.

The simulator's template is a real ``snapshot-sidecar`` process's /metrics
after real spool jobs; these tests check that what it serves per VM is still
that exposition (same families and series, parseable), that each VM is its
own target (path and labels), that counters only move forward, that the
pre-compressed gzip bodies decode to the plain ones, that the Prometheus
configs fleet_scale.py runs pass ``promtool check config``, and that a real
Prometheus scrapes 20 simulated targets successfully.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import fleet_scale
from benchmarks.fleet_sim import (
    MONOTONIC_SUFFIXES,
    Fleet,
    Template,
    real_sidecar_exposition,
    serve,
    server_ports,
    write_file_sd,
)
from tests.support.prometheus import run_prometheus_config
from tests.support.requirements import require

TEMPLATE_JOBS = 12
VMS = 20
JOB_EVERY = 300.0


@dataclass
class Served:
    fleet: Fleet
    ports: list[int]
    real: bytes

    def get(
        self, path: str, port: int | None = None, *, gzip_ok: bool = False
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Accept-Encoding": "gzip"} if gzip_ok else {}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port or self.ports[0]}{path}", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def target(self, vm: str) -> tuple[int, str]:
        group = next(g for g in self.fleet.file_sd(self.ports) if g["labels"]["instance"] == vm)
        port = int(group["targets"][0].rsplit(":", 1)[1])
        return port, group["labels"]["__metrics_path__"]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    real = real_sidecar_exposition(TEMPLATE_JOBS)
    fleet = Fleet.build(
        Template.from_exposition(real, TEMPLATE_JOBS), VMS, ports=3, job_every=JOB_EVERY
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers = asyncio.run_coroutine_threadsafe(serve(fleet, 3), loop).result(10)
    try:
        yield Served(fleet, server_ports(servers), real)
    finally:
        for server in servers:
            loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_every_target_serves_the_real_sidecars_series_under_its_own_identity(
    served: Served,
) -> None:
    real = _samples(served.real)
    groups = served.fleet.file_sd(served.ports)
    assert len(groups) == VMS
    instances = {g["labels"]["instance"] for g in groups}
    paths = {g["labels"]["__metrics_path__"] for g in groups}
    assert len(instances) == len(paths) == VMS
    assert {g["targets"][0] for g in groups} == {f"127.0.0.1:{p}" for p in served.ports}
    last_jobs = set()
    for group in groups:
        port = int(group["targets"][0].rsplit(":", 1)[1])
        status, headers, body = served.get(group["labels"]["__metrics_path__"], port)
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        samples = _samples(body)
        # The same series as the real sidecar: nothing added, nothing lost.
        assert samples.keys() == real.keys()
        last_jobs.add(samples[("vmsnap_last_job_timestamp_seconds", ())])
    # Each VM runs its jobs at its own moment.
    assert len(last_jobs) == VMS
    assert served.get("/vm-99999/metrics")[0] == 404
    assert served.get("/metrics")[0] == 404


def test_counters_advance_with_each_job_and_gauges_stay(served: Served) -> None:
    fleet = served.fleet
    vm = fleet.vms["vm-00003"]
    now = fleet.started
    before = _samples(fleet.body(vm.name, gzipped=False, now=now) or b"")
    after = _samples(fleet.body(vm.name, gzipped=False, now=now + 2 * JOB_EVERY) or b"")
    assert fleet.generation(vm, now + 2 * JOB_EVERY) == fleet.generation(vm, now) + 2
    grew = 0
    for key, value in before.items():
        name = key[0]
        if name.endswith("_timestamp_seconds"):
            assert after[key] > value
        elif name.encode().endswith(MONOTONIC_SUFFIXES):
            assert after[key] >= value, key
            grew += after[key] > value
        else:
            assert after[key] == value, key
    assert (
        before[("vmsnap_jobs_total", (("consistency", "application"), ("outcome", "success")))] > 0
    )
    assert grew > 20


def test_gzip_bodies_decode_to_the_plain_body(served: Served) -> None:
    port, path = served.target("vm-00007")
    status, headers, compressed = served.get(path, port, gzip_ok=True)
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    _, plain_headers, plain = served.get(path, port)
    assert "Content-Encoding" not in plain_headers
    assert gzip.decompress(compressed) == plain
    assert len(compressed) < len(plain) / 3


def test_keep_alive_serves_several_requests_on_one_connection(served: Served) -> None:
    import http.client

    port, path = served.target("vm-00001")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for _ in range(3):
            connection.request("GET", path)
            response = connection.getresponse()
            assert response.status == 200
            assert b"vmsnap_build_info" in response.read()
    finally:
        connection.close()


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    require(promtool is not None, "needs promtool (apt-get install prometheus)")
    assert promtool is not None
    return subprocess.run(
        [promtool, "check", "config", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_prometheus_configs_pass_promtool(tmp_path: Path) -> None:
    file_sd = tmp_path / "targets.json"
    file_sd.write_text("[]")
    configs = {
        "single.yml": fleet_scale.single_config(file_sd, "60s"),
        "agent.yml": fleet_scale.agent_config(file_sd, "http://127.0.0.1:9/api/v1/write", "60s"),
        "central.yml": fleet_scale.central_config(),
    }
    for name, text in configs.items():
        (tmp_path / name).write_text(text)
    for path, agent in (
        (tmp_path / "single.yml", False),
        (tmp_path / "agent.yml", True),
        (tmp_path / "central.yml", False),
        (fleet_scale.AGENT_CENTRAL / "agent.yml", True),
        (fleet_scale.AGENT_CENTRAL / "central.yml", False),
    ):
        result = _promtool(*(["--agent"] if agent else []), str(path))
        assert result.returncode == 0, f"{path}: {result.stdout}{result.stderr}"
    single = _promtool(str(tmp_path / "single.yml"))
    assert "2 rule files found" in single.stdout
    central = _promtool(str(tmp_path / "central.yml"))
    assert "2 rule files found" in central.stdout


def test_a_real_prometheus_scrapes_every_simulated_target(served: Served, tmp_path: Path) -> None:
    require(shutil.which("prometheus") is not None, "needs prometheus (apt-get install prometheus)")
    file_sd = tmp_path / "targets.json"
    write_file_sd(file_sd, served.fleet.file_sd(served.ports))
    config = json.loads(fleet_scale.single_config(file_sd, "1s"))
    config["global"]["scrape_timeout"] = "1s"
    config.pop("rule_files")
    with run_prometheus_config(config) as prometheus:
        up = prometheus.wait_for(
            'up{job="vmsnap-sidecar"} == 1', lambda result: len(result) == VMS, timeout=8
        )
        assert {r["metric"]["instance"] for r in up} == set(served.fleet.vms)
        # What was scraped is the sidecar's exposition, under each VM's labels.
        info = prometheus.query('count by (instance) (vmsnap_build_info{job="vmsnap-sidecar"})')
        assert len(info) == VMS
        regions = prometheus.query('count by (region) (up{job="vmsnap-sidecar"})')
        assert {r["metric"]["region"] for r in regions} == {"westeurope", "northeurope", "eastus"}
