"""The runtime seals only in a version the sidecar here opens (docs/spool.md, credentials.sealed).

A runtime of sealing version 2 next to a sidecar of the previous version (it
publishes sidecar.pub but no sidecar.sealing, and opens only version 1) must
not hand it credentials it would fail to open, and then drop the job's log:
the runtime uploads the log to logsBlobUri itself. Next to a current sidecar
it seals version 2 and leaves the log to it. Real jobs, real Azurite; nothing
to freeze (mountinfo is empty), so no root.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from snapshot_runtime.job.run import run_job
from snapshot_runtime.telemetry.sealing import (
    FORMAT_VERSION,
    generate_keypair,
    parse_versions,
    unseal,
    versions_document,
)
from snapshot_runtime.telemetry.spool_schema import SIDECAR_SEALING_FILE
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.jobkit import Workspace
from tests.support.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.azurite


def _job(ws: Workspace, azurite: Azurite, receiver: OtlpReceiver, name: str):
    disks = jobkit.make_disks(azurite, 1)
    container, _, status_url = jobkit.status_blob_url(azurite)
    logs_blob = f"{name}.Logs.txt"
    logs_url = azurite.sas_url(container, logs_blob)
    settings = ws.settings(
        disks, task_id=f"{name}_1", status_url=status_url, logs_url=logs_url, name=f"{name}.s"
    )
    report = run_job(
        ws.options(settings, mountinfo_path=os.devnull, otlp_endpoint=receiver.endpoint)
    )
    assert report.spool_job_dir is not None
    job_dir = Path(report.spool_job_dir)
    record = json.loads((job_dir / "record.json").read_text())
    return container, logs_blob, logs_url, job_dir, record


def test_an_older_sidecar_gets_no_credentials_and_loses_no_log(
    ws: Workspace, azurite: Azurite
) -> None:
    # What a sidecar before sealing version 2 leaves in the spool: the key only.
    _, public_raw = generate_keypair()
    ws.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (ws.spool_dir / "sidecar.pub").write_bytes(public_raw)
    with OtlpReceiver() as receiver:
        container, blob, _, job_dir, record = _job(ws, azurite, receiver, "old-sidecar")
        assert receiver.requests == []  # spans are still the sidecar's to forward
    assert not (job_dir / "credentials.sealed").exists()
    assert record["logs"]["mirrored_by"] == "runtime" and record["logs"]["mirror_error"] is None
    uploaded = jobkit.blob_bytes(azurite, container, blob)
    spool_log = (job_dir / "log.jsonl").read_bytes()
    assert uploaded == spool_log  # every line, once, in order
    assert b"does not open credentials.sealed version 2" in uploaded


def test_a_current_sidecar_gets_version_2(ws: Workspace, azurite: Azurite) -> None:
    private_pem, public_raw = generate_keypair()
    ws.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (ws.spool_dir / SIDECAR_SEALING_FILE).write_bytes(versions_document())
    (ws.spool_dir / "sidecar.pub").write_bytes(public_raw)
    with OtlpReceiver() as receiver:
        container, blob, logs_url, job_dir, record = _job(ws, azurite, receiver, "new-sidecar")
        assert receiver.requests == []
    sealed = (job_dir / "credentials.sealed").read_text()
    assert json.loads(sealed)["version"] == FORMAT_VERSION
    assert json.loads(unseal(private_pem, sealed)) == {"logsBlobUri": logs_url}
    assert record["logs"]["mirrored_by"] == "sidecar"
    assert not azurite.service().get_blob_client(container, blob).exists()  # the sidecar's job


@pytest.mark.parametrize(
    ("data", "versions"),
    [
        (None, set()),
        (b"", set()),
        (b"not json", set()),
        (b"[1, 2]", set()),
        (b'{"versions": "2"}', set()),
        (b'{"versions": [1, true, "2", 2.0, 3]}', {1, 3}),
        (b'{"versions": [1, 2], "future": "field"}', {1, 2}),
    ],
)
def test_versions_documents(data: bytes | None, versions: set[int]) -> None:
    assert parse_versions(data) == versions


def test_the_sidecar_publishes_what_unseal_opens() -> None:
    assert parse_versions(versions_document()) == {1, FORMAT_VERSION}
