"""Azure resource detection: the sidecar asks IMDS (at most daily), the runtime reads the cache.

IMDS is a stand-in on 169.254.169.254 that exists only inside a network
namespace each test creates (tests/support/imds.py); the sidecar (the real
``snapshot-sidecar --once``) runs inside that namespace. Nothing here sends a
packet outside this machine. Needs root (``ip netns``): fails under CI=true.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from snapshot_runtime.job.run import run_job
from snapshot_runtime.telemetry.azure_resource import CACHE_FILE, read_cache
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.imds import COMPUTE, PROXY_PORT, SUBSCRIPTION, ImdsNamespace
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs
from tests.support.processes import stop_process
from tests.support.requirements import require
from tests.support.waiting import wait_until

EXPECTED = {
    "cloud.provider": "azure",
    "cloud.platform": "azure.vm",  # the semantic convention (the detector says azure_vm)
    "cloud.region": COMPUTE["location"],
    "cloud.resource_id": COMPUTE["resourceId"],
    "cloud.account.id": SUBSCRIPTION,
    "azure.resource_group.name": "rg-vmsnap",
    "azure.vm.sku": COMPUTE["sku"],
    "host.id": COMPUTE["vmId"],
    "host.name": COMPUTE["name"],
    "host.type": COMPUTE["vmSize"],
    "os.type": COMPUTE["osType"],
    "os.version": COMPUTE["version"],
}
DEAD_PROXY = f"http://127.0.0.1:{PROXY_PORT}"


def _require_netns() -> None:
    require(os.geteuid() == 0, "needs root (ip netns)")


@pytest.fixture
def imds(tmp_path: Path) -> Iterator[ImdsNamespace]:
    _require_netns()
    with ImdsNamespace(tmp_path) as ns:
        yield ns


@pytest.fixture
def no_imds(tmp_path: Path) -> Iterator[ImdsNamespace]:
    _require_netns()
    with ImdsNamespace(tmp_path, with_imds=False) as ns:
        yield ns


def _proxied_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        HTTP_PROXY=DEAD_PROXY,
        http_proxy=DEAD_PROXY,
        HTTPS_PROXY=DEAD_PROXY,
        https_proxy=DEAD_PROXY,
    )
    return env


def _sidecar_once(ns: ImdsNamespace, spool: Path, state: Path) -> None:
    argv = [sys.executable, "-m", "snapshot_sidecar.cli", "--once", "--no-backstop"]
    argv += ["--spool", str(spool), "--state-dir", str(state)]
    done = ns.run(argv, env=_proxied_env())
    assert done.returncode == 0, done.stderr


def test_the_sidecar_caches_the_vm_resource_from_imds_never_through_the_proxy(
    imds: ImdsNamespace, tmp_path: Path
) -> None:
    # The proxy is real: plain urllib in the same environment goes through it.
    probe = imds.run(
        [
            sys.executable,
            "-c",
            "import urllib.request as u\n"
            "try: u.urlopen('http://169.254.169.254/metadata/instance/compute', timeout=2)\n"
            "except Exception as e: print(type(e).__name__)",
        ],
        env=_proxied_env(),
    )
    assert probe.returncode == 0, probe.stderr
    assert len(imds.events("proxy")) == 1 and imds.events("imds") == []

    spool, state = tmp_path / "spool", tmp_path / "state"
    _sidecar_once(imds, spool, state)
    (request,) = imds.events("imds")
    assert request["path"].startswith("/metadata/instance/compute?api-version=")
    assert request["headers"]["metadata"] == "True"
    assert "x-forwarded-for" not in request["headers"]
    assert len(imds.events("proxy")) == 1  # only the probe's: the sidecar went direct
    now = time.time()
    published = read_cache(spool / CACHE_FILE, now=now)
    assert published.attributes == EXPECTED
    assert read_cache(state / CACHE_FILE, now=now) == published
    assert (spool / CACHE_FILE).stat().st_mode & 0o777 == 0o644
    # At most daily: a restart (and a reboot that emptied the spool) republishes
    # the state copy without asking IMDS again.
    (spool / CACHE_FILE).unlink()
    _sidecar_once(imds, spool, state)
    assert len(imds.events("imds")) == 1
    assert read_cache(spool / CACHE_FILE, now=time.time()) == published


def test_the_running_sidecar_detects_off_its_start_up_path(
    imds: ImdsNamespace, tmp_path: Path
) -> None:
    spool, state = tmp_path / "spool", tmp_path / "state"
    argv = [sys.executable, "-m", "snapshot_sidecar.cli", "--no-backstop", "--listen"]
    argv += ["127.0.0.1:0", "--spool", str(spool), "--state-dir", str(state)]
    log = tmp_path / "sidecar.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*imds.prefix, *argv], env=_proxied_env(), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until(
            (spool / CACHE_FILE).exists,
            30,
            "the running sidecar to publish the resource cache",
            detail=log.read_text,
        )
        assert read_cache(spool / CACHE_FILE, now=time.time()).attributes == EXPECTED
        assert proc.poll() is None
    finally:
        code = stop_process(proc)
    assert code == 0, log.read_text()
    assert len(imds.events("imds")) == 1 and imds.events("proxy") == []


def test_without_imds_detection_fails_fast_and_nothing_is_cached(
    no_imds: ImdsNamespace, tmp_path: Path
) -> None:
    timing = no_imds.run(
        [
            sys.executable,
            "-c",
            "import json, time\n"
            "import opentelemetry.resource.detector.azure.vm\n"  # time the request, not imports
            "from snapshot_sidecar.resource_detection import detect_azure_vm\n"
            "t = time.monotonic(); attrs = detect_azure_vm()\n"
            "print(json.dumps({'attrs': attrs, 'seconds': time.monotonic() - t}))",
        ],
        env=_proxied_env(),
    )
    assert timing.returncode == 0, timing.stderr
    doc = json.loads(timing.stdout.strip().splitlines()[-1])
    assert doc["attrs"] == {}
    assert doc["seconds"] < 1.0, doc  # no route: refused at once (0.2 s timeout at worst)
    spool, state = tmp_path / "spool", tmp_path / "state"
    _sidecar_once(no_imds, spool, state)  # the sidecar still runs (exit 0)
    assert (spool / "sidecar.pub").exists()
    assert not (spool / CACHE_FILE).exists() and not (state / CACHE_FILE).exists()


@pytest.mark.root
@pytest.mark.azurite
def test_a_job_carries_the_cached_resource_and_never_asks_imds(
    imds: ImdsNamespace, azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    _sidecar_once(imds, ws.spool_dir, ws.root / "sidecar-state")
    asked = len(imds.events("imds"))
    exporter = InMemorySpanExporter()
    disks = jobkit.make_disks(azurite, 1)
    report = run_job(
        ws.options(
            ws.settings(disks, task_id=str(uuid.uuid4())),
            config_path=ws.config(),
            include_mounts=(ext4.mountpoint,),
        ),
        span_exporter=exporter,
    )
    assert report.consistency == "application", report.error_message
    spans = exporter.get_finished_spans()
    assert spans
    for span in spans:
        resource = dict(span.resource.attributes)
        for key, value in EXPECTED.items():
            assert resource[key] == value, key
        assert resource["service.name"] == "snapshot-runtime"
    assert len(imds.events("imds")) == asked  # the job read the cache, asked nobody


@pytest.mark.root
@pytest.mark.azurite
def test_a_job_without_a_cache_still_works_without_cloud_attributes(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    assert not (Path(ws.spool_dir) / CACHE_FILE).exists()
    exporter = InMemorySpanExporter()
    disks = jobkit.make_disks(azurite, 1)
    report = run_job(
        ws.options(
            ws.settings(disks, task_id=str(uuid.uuid4())),
            config_path=ws.config(),
            include_mounts=(ext4.mountpoint,),
        ),
        span_exporter=exporter,
    )
    assert report.consistency == "application", report.error_message
    resource = dict(exporter.get_finished_spans()[0].resource.attributes)
    assert not any(key.startswith("cloud.") for key in resource)
    assert report.spool_job_dir is not None
    with open(os.path.join(report.spool_job_dir, "record.json"), encoding="utf-8") as fh:
        record = json.load(fh)
    assert not any("resource_cache" in e for e in record.get("telemetry_errors") or [])
