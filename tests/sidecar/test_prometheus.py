"""A real Prometheus scrapes the sidecar after real snapshot jobs and holds the expected series."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from snapshot_sidecar.backstop import Backstop
from snapshot_sidecar.collectors import build_registry, default_collectors
from snapshot_sidecar.keys import Keys
from snapshot_sidecar.metrics import ERROR_GROUP_LABELS
from snapshot_sidecar.mirror import LogMirror
from snapshot_sidecar.server import BasicAuth, MetricsServer, hash_password
from snapshot_sidecar.sidecar import Sidecar, SidecarConfig
from snapshot_sidecar.spans import SpanConfig, SpanForwarder
from snapshot_sidecar.spool_reader import SpoolReader
from snapshot_sidecar.state import Ledger

from snapshot_runtime import __version__
from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.freeze.ioctl import KernelFreezeIoctl
from tests.sidecar.conftest import fast_mirror
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.jobkit import Workspace
from tests.support.loopfs import loop_filesystem
from tests.support.prometheus import run_prometheus

SLOW_PRE = """\
#!/bin/sh
echo "pre-script will not finish in time"
sleep 30
"""


@pytest.fixture
def ws() -> Iterator[Workspace]:
    with jobkit.workspace() as w:
        yield w


@pytest.mark.root
@pytest.mark.azurite
def test_prometheus_scrapes_the_sidecar_after_real_jobs(
    ws: Workspace, azurite: Azurite, tmp_path: Path
) -> None:
    state_dir = tmp_path / "sidecar"
    keys = Keys.load_or_create(state_dir)
    keys.publish(ws.spool_dir)
    container = azurite.container()
    logs_blob = f"logs/{uuid.uuid4().hex}.log"
    logs_url = azurite.sas_url(container, logs_blob)

    with loop_filesystem("ext4") as fs:
        mounts = (fs.mountpoint,)
        ok = ws.run(
            ws.settings(jobkit.make_disks(azurite, 2), logs_url=logs_url, name="ok.settings"),
            config_path=ws.config(),
            include_mounts=mounts,
        )
        assert ok.consistency == "application", ok.error_message
        again = ws.run(
            ws.settings(jobkit.make_disks(azurite, 1), name="again.settings"),
            config_path=ws.config(name="again.json"),
            include_mounts=mounts,
        )
        assert again.consistency == "application", again.error_message
        slow = ws.run(
            ws.settings(jobkit.make_disks(azurite, 1), name="slow.settings"),
            config_path=ws.config(
                pre=ws.script("slow.sh", SLOW_PRE),
                post=ws.script("post2.sh", jobkit.POST_SCRIPT),
                name="slow.json",
                timeoutInSeconds=1,
                continueBackupOnFailure=False,
            ),
            include_mounts=mounts,
        )
        assert slow.error_code == ErrorCode.PRE_SCRIPT_TIMEOUT.value

    reader = SpoolReader(ws.spool_dir)
    ledger = Ledger(state_dir)
    sidecar = Sidecar(
        reader=reader,
        ledger=ledger,
        forwarders=[
            LogMirror(reader, ledger, keys, fast_mirror()),
            SpanForwarder(reader, ledger, None, SpanConfig()),
        ],
        backstop=Backstop(KernelFreezeIoctl()),
        config=SidecarConfig(keep_jobs=True),
    )
    sidecar.run_once()
    sidecar.close()

    # The real job's log, mirrored exactly (the spool's log.jsonl of that job).
    ok_dir = next(
        p for p in (ws.spool_dir / "jobs").iterdir() if p.name.startswith(ok.task_id[:20])
    )
    mirrored = bytes(
        azurite.service().get_blob_client(container, logs_blob).download_blob().readall()
    )
    assert mirrored == (ok_dir / "log.jsonl").read_bytes()
    assert json.loads(mirrored.splitlines()[0])["seq"] == 1

    auth_file = tmp_path / "users"
    auth_file.write_text(f"prom:{hash_password('scrape-pass')}\n")
    registry = build_registry(default_collectors(lambda: ledger.published, __version__))
    server = MetricsServer(registry, "127.0.0.1:0", auth=BasicAuth.from_file(auth_file))
    server.start()
    try:
        host, port = server.address
        with run_prometheus([f"{host}:{port}"], basic_auth=("prom", "scrape-pass")) as prom:
            prom.wait_for("up", lambda r: bool(r) and r[0]["value"][1] == "1")
            q = prom.value
            assert q('vmsnap_jobs_total{outcome="success",consistency="application"}') == 2
            assert q('vmsnap_jobs_total{outcome="failed",consistency="none"}') == 1
            assert q('vmsnap_job_errors_total{group="pre_script"}') == 1
            assert q('vmsnap_job_errors_total{group="post_script"}') == 0
            assert q("count(vmsnap_job_errors_total)") == len(ERROR_GROUP_LABELS)
            assert q("count(vmsnap_last_job_info)") == 1
            assert q('vmsnap_script_timeouts_total{script="pre"}') == 1
            assert q('vmsnap_script_timeouts_total{script="post"}') == 0
            assert q('vmsnap_script_runs_total{script="pre"}') == 3
            assert q("vmsnap_freeze_duration_seconds_count") == 2
            assert q('vmsnap_freeze_duration_seconds_bucket{le="10.0"}') == 2
            assert q("vmsnap_disk_snapshot_duration_seconds_count") == 3
            assert q("vmsnap_disk_snapshot_failures_total") is not None
            assert q("sum(vmsnap_disk_snapshot_failures_total)") == 0
            assert (q('vmsnap_phase_seconds_total{phase="snapshot"}') or 0) > 0
            assert q("vmsnap_sidecar_records_ingested_total") == 3
            assert q("vmsnap_sidecar_log_mirror_bytes_total") == len(mirrored)
            assert q(f'vmsnap_build_info{{version="{__version__}"}}') == 1
            last = q("vmsnap_last_success_timestamp_seconds")
            assert last is not None and time.time() - 600 < last <= time.time()
            # Prometheus negotiated OpenMetrics and stored the trace_id exemplars.
            now = time.time()
            exemplars = prom.api(
                "query_exemplars",
                query="vmsnap_freeze_duration_seconds_bucket",
                start=str(now - 600),
                end=str(now + 60),
            )
            trace_ids = {
                e["labels"]["trace_id"] for series in exemplars for e in series["exemplars"]
            }
            assert trace_ids and all(len(t) == 32 for t in trace_ids)
    finally:
        server.close()
