"""Log mirroring against a real Azurite: exactly once, in order, whatever blob and faults."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time
import uuid

import pytest
from azure.storage.blob import BlobBlock
from snapshot_sidecar.blob_targets import LENGTH_KEY
from snapshot_sidecar.state import STATE_FILE

from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from tests.sidecar.conftest import Rig, fast_mirror
from tests.support.azurite import Azurite
from tests.support.faultproxy import FaultProxy
from tests.support.waiting import wait_until

pytestmark = pytest.mark.azurite


def _blob(azurite: Azurite, container: str, name: str) -> bytes:
    return bytes(azurite.service().get_blob_client(container, name).download_blob().readall())


def _target(azurite: Azurite, *, endpoint: str | None = None, **kw: object) -> tuple[str, str, str]:
    container = azurite.container()
    name = f"logs/{uuid.uuid4().hex}.log"
    return container, name, azurite.sas_url(container, name, endpoint=endpoint, **kw)  # type: ignore[arg-type]


def test_log_mirrored_exactly_to_new_append_blob(rig: Rig, azurite: Azurite) -> None:
    container, name, url = _target(azurite)
    job = rig.gen.job("j1")
    rig.gen.seal_logs_url(job, url)
    rig.gen.log_lines(job, 2000)
    rig.gen.torn_line(job)  # a SIGKILLed writer's last line: never mirrored
    sidecar = rig.sidecar(mirror=fast_mirror(max_batch=64 * 1024))
    sidecar.run_once()
    assert _blob(azurite, container, name) == bytes(job.log_bytes)
    props = azurite.service().get_blob_client(container, name).get_blob_properties()
    assert props.blob_type == "AppendBlob"
    state = sidecar.ledger.state.jobs["j1"].log
    assert state.status == "done" and state.lines == 2000 and state.seq == 2000
    assert rig.value(sidecar, "vmsnap_sidecar_log_mirror_bytes_total") == len(job.log_bytes)
    assert rig.value(sidecar, "vmsnap_sidecar_log_mirror_backlog_bytes") == 0


def test_incremental_mirroring_while_the_job_runs(rig: Rig, azurite: Azurite) -> None:
    container, name, url = _target(azurite)
    job = rig.gen.job("j2", complete=False)
    rig.gen.seal_logs_url(job, url)
    sidecar = rig.sidecar(mirror=fast_mirror(min_batch=10_000, flush_seconds=3600))
    rig.gen.log_lines(job, 10)  # ~1.6 KB: below the batch size, job running: waits
    sidecar.run_once()
    assert _blob(azurite, container, name) == b""
    rig.gen.log_lines(job, 100)  # over the batch size: written
    sidecar.run_once()
    assert _blob(azurite, container, name) == bytes(job.log_bytes)
    rig.gen.log_lines(job, 3)
    rig.gen.complete(job)  # the job's end flushes whatever is left
    sidecar.run_once()
    assert _blob(azurite, container, name) == bytes(job.log_bytes)
    assert sidecar.ledger.state.jobs["j2"].log.status == "done"


def test_existing_append_blob_is_continued(rig: Rig, azurite: Azurite) -> None:
    container, name, url = _target(azurite)
    client = azurite.service().get_blob_client(container, name)
    client.create_append_blob()
    client.append_block(b"platform header\n")
    job = rig.gen.job("j3")
    rig.gen.seal_logs_url(job, url)
    rig.gen.log_lines(job, 50)
    sidecar = rig.sidecar()
    sidecar.run_once()
    assert _blob(azurite, container, name) == b"platform header\n" + bytes(job.log_bytes)


@pytest.mark.parametrize("with_blocks", [False, True])
def test_existing_block_blob_is_continued(rig: Rig, azurite: Azurite, with_blocks: bool) -> None:
    container, name, url = _target(azurite)
    client = azurite.service().get_blob_client(container, name)
    if with_blocks:
        client.stage_block("platformblock-0001", b"staged header\n")
        client.commit_block_list([BlobBlock(block_id="platformblock-0001")])
        before = b"staged header\n"
    else:
        client.upload_blob(b"put blob header\n", blob_type="BlockBlob")
        before = b"put blob header\n"
    job = rig.gen.job("j4")
    rig.gen.seal_logs_url(job, url)
    rig.gen.log_lines(job, 300)
    sidecar = rig.sidecar(mirror=fast_mirror(max_batch=16 * 1024))
    sidecar.run_once()
    assert _blob(azurite, container, name) == before + bytes(job.log_bytes)
    assert client.get_blob_properties().blob_type == "BlockBlob"
    assert sidecar.ledger.state.jobs["j4"].log.blob_type == "BlockBlob"


def test_existing_page_blob_is_written_as_pages(rig: Rig, azurite: Azurite) -> None:
    container, name, url = _target(azurite)
    client = azurite.service().get_blob_client(container, name)
    client.create_page_blob(512)
    job = rig.gen.job("j5")
    rig.gen.seal_logs_url(job, url)
    rig.gen.log_lines(job, 400)  # ~64 KB, not a multiple of 512
    sidecar = rig.sidecar(mirror=fast_mirror(max_batch=10_000))
    sidecar.run_once()
    props = client.get_blob_properties()
    length = int(props.metadata[LENGTH_KEY])
    assert length == len(job.log_bytes)
    data = _blob(azurite, container, name)
    assert data[:length] == bytes(job.log_bytes)
    assert set(data[length:]) <= {0}


def test_restart_after_an_unrecorded_write_does_not_duplicate(rig: Rig, azurite: Azurite) -> None:
    """SIGKILL between a landed append and the state commit: the bytes decide."""
    container, name, url = _target(azurite)
    job = rig.gen.job("j6", complete=False)
    rig.gen.seal_logs_url(job, url)
    rig.gen.log_lines(job, 100)
    first = rig.sidecar()
    first.run_once()
    stale = (rig.state / STATE_FILE).read_bytes()
    rig.gen.log_lines(job, 100)
    first.run_once()  # lands, and its commit is then "lost"
    (rig.state / STATE_FILE).write_bytes(stale)
    rig.gen.log_lines(job, 7)
    rig.gen.complete(job)
    second = rig.sidecar()
    second.run_once()
    assert _blob(azurite, container, name) == bytes(job.log_bytes)
    assert second.ledger.state.jobs[job.name].log.lines == 207
    assert rig.value(second, "vmsnap_sidecar_log_mirror_bytes_total") == len(job.log_bytes)
    assert rig.value(second, "vmsnap_sidecar_log_mirror_errors_total", error="conflict") == 0


@pytest.mark.parametrize("blob_type", ["BlockBlob", "PageBlob"])
def test_restart_after_unrecorded_write_other_blob_types(
    rig: Rig, azurite: Azurite, blob_type: str
) -> None:
    container, name, url = _target(azurite)
    client = azurite.service().get_blob_client(container, name)
    if blob_type == "BlockBlob":
        client.upload_blob(b"", blob_type="BlockBlob")
    else:
        client.create_page_blob(0)
    job = rig.gen.job("j7", complete=False)
    rig.gen.seal_logs_url(job, url)
    rig.gen.log_lines(job, 30)
    first = rig.sidecar()
    first.run_once()
    stale = (rig.state / STATE_FILE).read_bytes()
    rig.gen.log_lines(job, 30)
    first.run_once()
    (rig.state / STATE_FILE).write_bytes(stale)
    rig.gen.log_lines(job, 5)
    rig.gen.complete(job)
    second = rig.sidecar()
    second.run_once()
    data = _blob(azurite, container, name)
    if blob_type == "PageBlob":
        data = data[: int(client.get_blob_properties().metadata[LENGTH_KEY])]
    assert data == bytes(job.log_bytes)


def test_foreign_writer_is_detected_and_counted(rig: Rig, azurite: Azurite) -> None:
    container, name, url = _target(azurite)
    job = rig.gen.job("j8", complete=False)
    rig.gen.seal_logs_url(job, url)
    rig.gen.log_lines(job, 10)
    sidecar = rig.sidecar()
    sidecar.run_once()
    azurite.service().get_blob_client(container, name).append_block(b"someone else\n")
    rig.gen.log_lines(job, 10)
    rig.gen.complete(job)
    sidecar.run_once()
    assert rig.value(sidecar, "vmsnap_sidecar_log_mirror_errors_total", error="conflict") == 1
    log = bytes(job.log_bytes)
    first = log[: len(log) // 2 + 0]
    data = _blob(azurite, container, name)
    assert data.startswith(first[: first.rfind(b"\n") + 1]) and b"someone else\n" in data
    assert data.endswith(log[-100:])


def test_mirroring_through_faults_is_exact(rig: Rig, azurite: Azurite) -> None:
    """Resets, 500s, 503s and latency on the append requests while the mirror runs."""
    with FaultProxy("127.0.0.1", azurite.port) as proxy:
        container, name, url = _target(azurite, endpoint=proxy.endpoint())
        job = rig.gen.job("j9")
        rig.gen.seal_logs_url(job, url)
        rig.gen.log_lines(job, 1500)
        sidecar = rig.sidecar(mirror=fast_mirror(max_batch=8 * 1024))
        proxy.set_latency(0.01)
        done = threading.Event()

        def inject() -> None:
            faults = [
                lambda: proxy.reset_next(1, match="comp=appendblock"),
                lambda: proxy.fail_next(
                    1, status=500, error_code="InternalError", match="comp=appendblock"
                ),
                lambda: proxy.fail_next(
                    1, status=503, error_code="ServerBusy", match="appendblock"
                ),
            ]
            # One fault after every third forwarded request: faults all along
            # the stream, and progress between them.
            i, last = 0, 0
            while not done.wait(0.005):
                forwarded = proxy.stats.forwarded
                if forwarded - last >= 3:
                    last = forwarded
                    faults[i % 3]()
                    i += 1

        injector = threading.Thread(target=inject, daemon=True)
        injector.start()
        try:

            def mirrored() -> bool:
                sidecar.run_once()
                return sidecar.ledger.state.jobs["j9"].log.status == "done"

            # Each pass waits out the job's backoff (capped at 0.2 s here) itself.
            wait_until(mirrored, 30, "j9 to be mirrored", interval=0.05)
        finally:
            done.set()
            injector.join()
        stats = proxy.stats
    assert stats.resets >= 3 and stats.failures >= 3, stats
    assert _blob(azurite, container, name) == bytes(job.log_bytes)
    assert sidecar.ledger.state.jobs["j9"].log.status == "done"
    assert rig.value(sidecar, "vmsnap_sidecar_log_mirror_bytes_total") == len(job.log_bytes)


def test_append_that_lands_after_a_client_timeout_is_not_doubled(
    rig: Rig, azurite: Azurite
) -> None:
    """A lost response: the append times out at the client but lands; the retry sees 412."""
    with FaultProxy("127.0.0.1", azurite.port) as proxy:
        container, name, url = _target(azurite, endpoint=proxy.endpoint())
        job = rig.gen.job("j14")
        rig.gen.seal_logs_url(job, url)
        rig.gen.log_lines(job, 300)
        policy = BlobPolicy(request_timeout=0.3, connect_timeout=2, retries=3, backoff_seconds=0.5)
        sidecar = rig.sidecar(mirror=fast_mirror(policy=policy, max_batch=16 * 1024))
        # Only the first append is slow: it is still in flight when the client gives up.
        proxy.set_latency(0.6, match="comp=appendblock")
        first_seen = threading.Event()

        def clear_after_first() -> None:
            while not first_seen.is_set():
                if proxy.stats.requests >= 2:  # create, then the first append
                    proxy.set_latency(0.0)
                    first_seen.set()
                time.sleep(0.002)

        watcher = threading.Thread(target=clear_after_first, daemon=True)
        watcher.start()

        def mirrored() -> bool:
            sidecar.run_once()
            return sidecar.ledger.state.jobs["j14"].log.status == "done"

        wait_until(mirrored, 20, "j14 to be mirrored", interval=0.05)
        first_seen.set()
        watcher.join()
    assert _blob(azurite, container, name) == bytes(job.log_bytes)
    assert rig.value(sidecar, "vmsnap_sidecar_log_mirror_bytes_total") == len(job.log_bytes)
    timeouts = rig.value(sidecar, "vmsnap_sidecar_log_mirror_errors_total", error="retryable")
    assert rig.value(sidecar, "vmsnap_sidecar_log_mirror_errors_total", error="conflict") == 0
    assert timeouts is not None


def test_expired_sas_is_counted_and_not_retried(rig: Rig, azurite: Azurite) -> None:
    with FaultProxy("127.0.0.1", azurite.port) as proxy:
        container, name, url = _target(
            azurite, endpoint=proxy.endpoint(), expiry=dt.timedelta(minutes=-5)
        )
        job = rig.gen.job("j10")
        rig.gen.seal_logs_url(job, url)
        rig.gen.log_lines(job, 20)
        sidecar = rig.sidecar()
        sidecar.run_once()
        requests = proxy.stats.requests
        sidecar.run_once()
        sidecar.run_once()
        assert proxy.stats.requests == requests  # stopped for good: no more requests
    log = sidecar.ledger.state.jobs["j10"].log
    assert log.status == "failed" and log.error is not None and log.error.startswith("auth")
    assert "sig=" not in log.error or "sig=REDACTED" in log.error
    assert rig.value(sidecar, "vmsnap_sidecar_log_mirror_abandoned_total") == 1
    errors = rig.value(sidecar, "vmsnap_sidecar_log_mirror_errors_total", error="auth")
    assert errors is not None and errors >= 1
    assert not azurite.service().get_blob_client(container, name).exists()


def test_credentials_sealed_to_another_key_are_refused(rig: Rig, azurite: Azurite) -> None:
    from snapshot_runtime.telemetry.sealing import generate_keypair

    _, other_public = generate_keypair()
    _, _, url = _target(azurite)
    job = rig.gen.job("j11")
    rig.gen.seal_logs_url(job, url, public_key=other_public)
    rig.gen.log_lines(job, 5)
    sidecar = rig.sidecar()
    sidecar.run_once()
    assert sidecar.ledger.state.jobs["j11"].log.status == "failed"
    assert rig.value(sidecar, "vmsnap_sidecar_log_mirror_abandoned_total") == 1
    assert (sidecar.ledger.state.jobs["j11"].log.error or "").startswith("unseal")


def test_job_without_credentials_needs_no_mirroring(rig: Rig) -> None:
    job = rig.gen.job("j12")
    rig.gen.log_lines(job, 5)
    rig.gen.write_record(job, logs={"mirrored_by": "runtime"})
    sidecar = rig.sidecar(keep_jobs=False)
    sidecar.run_once()
    assert not job.path.exists()  # counted, nothing to mirror, no spans: handled


def test_state_file_never_holds_the_sas(rig: Rig, azurite: Azurite) -> None:
    _, _, url = _target(azurite)
    job = rig.gen.job("j13")
    rig.gen.seal_logs_url(job, url)
    rig.gen.log_lines(job, 5)
    sidecar = rig.sidecar()
    sidecar.run_once()
    text = (rig.state / STATE_FILE).read_text()
    assert "sig=" not in text and "http" not in text
    json.loads(text)


def test_large_appends_on_new_service_versions_4_mib_before(rig: Rig, azurite: Azurite) -> None:
    """A 9 MiB log: one append with the default batch (16 MiB) on the SDK's service
    version; 4 MiB appends (3 blocks) on 2021-12-02, which takes no larger block.
    Either way the blob equals the log, in order (I3)."""
    from snapshot_sidecar.blob_targets import BLOCK_BYTES
    from snapshot_sidecar.mirror import MIRROR_BATCH_BYTES, MirrorConfig

    from tests.sidecar.conftest import FAST_POLICY

    assert MirrorConfig().max_batch == MIRROR_BATCH_BYTES > 2 * BLOCK_BYTES
    container = azurite.container()
    blocks = {}
    for version in (None, "2021-12-02"):
        name = f"logs/{version}.log"
        job = rig.gen.job(f"big-{version}")
        rig.gen.seal_logs_url(job, azurite.sas_url(container, name))
        rig.gen.log_lines(job, 9 * 1024 * 1024 // 200, size=200)
        policy = dataclasses.replace(FAST_POLICY, api_version=version)
        sidecar = rig.sidecar(mirror=fast_mirror(max_batch=MIRROR_BATCH_BYTES, policy=policy))
        sidecar.run_once()
        assert len(job.log_bytes) > 2 * BLOCK_BYTES
        assert _blob(azurite, container, name) == bytes(job.log_bytes)
        props = azurite.service().get_blob_client(container, name).get_blob_properties()
        blocks[version] = props.append_blob_committed_block_count
        sidecar.close()
    assert blocks == {None: 1, "2021-12-02": 3}
