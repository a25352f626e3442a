"""Issue 11, defect 2: a hostile spool file fails only itself (real Azurite, OTLP, frozen fs).

A record.json of 200,000 ``[`` used to raise RecursionError out of the record
reader and abort every ingest pass: no job counted any more and, worse, the
backstop never again thawed a dead runtime's frozen filesystem (I4).
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from snapshot_sidecar.backstop import Backstop
from snapshot_sidecar.spans import SpanConfig

from snapshot_runtime.freeze.ioctl import KernelFreezeIoctl
from snapshot_runtime.telemetry.sealing import seal
from tests.sidecar.conftest import Rig, fast_mirror
from tests.support.azurite import Azurite
from tests.support.loopfs import loop_filesystem
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.spoolgen import GenJob, dead_pid

POISON = b"[" * 200_000
FROZEN_PHASES = [("settings", 0.0), ("pre_script", 0.1), ("prepare", 0.1)]


def _writable(path: Path, timeout: float) -> bool:
    """A write + fsync in a thread: False when it blocks (a frozen filesystem)."""
    done = threading.Event()

    def write() -> None:
        with open(path / "probe", "wb") as fh:
            fh.write(b"x")
            fh.flush()
            os.fsync(fh.fileno())
        done.set()

    threading.Thread(target=write, daemon=True).start()
    return done.wait(timeout)


def _blob(azurite: Azurite, container: str, name: str) -> bytes:
    client = azurite.service().get_blob_client(container, name)
    return bytes(client.download_blob().readall()) if client.exists() else b""


@pytest.mark.root
@pytest.mark.azurite
def test_a_poisoned_record_stops_neither_ingestion_nor_forwarding_nor_the_backstop(
    rig: Rig, azurite: Azurite, caplog: pytest.LogCaptureFixture
) -> None:
    container = azurite.container()
    receiver = OtlpReceiver()
    try:
        exporter = OTLPSpanExporter(endpoint=receiver.endpoint, timeout=2.0)
        with loop_filesystem("ext4") as fs:
            mnt = Path(fs.mountpoint)
            subprocess.run(["fsfreeze", "-f", fs.mountpoint], check=True, timeout=30)
            try:
                assert not _writable(mnt, 0.3), "the filesystem should be frozen"
                _run_scenario(rig, azurite, container, exporter, receiver, mnt, caplog)
            finally:
                subprocess.run(
                    ["fsfreeze", "-u", fs.mountpoint], capture_output=True, timeout=30, check=False
                )
    finally:
        receiver.close()


def _run_scenario(
    rig: Rig,
    azurite: Azurite,
    container: str,
    exporter: OTLPSpanExporter,
    receiver: OtlpReceiver,
    mnt: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    urls: dict[str, str] = {}

    def mirrored(name: str, **kw: object) -> GenJob:
        job = rig.gen.job(name, **kw)  # type: ignore[arg-type]
        blob = f"logs/{name}-{uuid.uuid4().hex}.log"
        urls[name] = blob
        rig.gen.seal_logs_url(job, azurite.sas_url(container, blob))
        return job

    # "a-poison" sorts first: before the fix its RecursionError ended every pass there.
    # Its runtime is gone (no lock file): the record is quarantined, its log still mirrored.
    poisoned = mirrored("a-poison", complete=False)
    rig.gen.log_lines(poisoned, 12)
    (poisoned.path / "record.json").write_bytes(POISON)
    # A healthy job with one poisoned span line among good ones.
    good = mirrored("b-good")
    rig.gen.log_lines(good, 18)
    rig.gen.span_lines(good, 3)
    with open(good.spans_path, "ab") as fh:
        fh.write(POISON + b"\n")
    # A dead runtime that left a really frozen filesystem behind, past its deadline.
    rig.gen.job(
        "c-left-frozen",
        complete=False,
        pid=dead_pid(),
        phases=FROZEN_PHASES,
        extra={"freeze": {"deadline_at": time.time() - 1, "mountpoints": [str(mnt)]}},
    )
    # A running job (its runtime holds the lock) whose record is unreadable right now.
    running = mirrored("d-running", complete=False, pid=os.getpid())
    lock_fd = os.open(running.path / "lock", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    rig.gen.log_lines(running, 7)
    (running.path / "record.json").write_bytes(POISON)
    # Credentials sealed (anyone can seal to the public key) around a poisoned text.
    sealed_poison = rig.gen.job("e-sealed-poison")
    rig.gen.log_lines(sealed_poison, 3)
    (sealed_poison.path / "credentials.sealed").write_text(seal(rig.keys.public, POISON[:20_000]))
    # A poisoned watchdog report next to a real one.
    (rig.spool / "watchdog").mkdir(mode=0o700, exist_ok=True)
    (rig.spool / "watchdog" / "thaw-watchdog-1-1.json").write_bytes(POISON)
    rig.gen.watchdog_report(reason="eof", mounts=["/x"])

    caplog.set_level(logging.WARNING, logger="snapshot_sidecar")
    sidecar = rig.sidecar(
        exporter=exporter,
        mirror=fast_mirror(),
        spans=SpanConfig(max_backoff=0.0),
        backstop=Backstop(KernelFreezeIoctl()),
    )
    sidecar.run_once()
    sidecar.run_once()

    # I4: the backstop thawed the real frozen filesystem despite the poisoned record.
    assert _writable(mnt, 5.0), "the backstop should have thawed it"
    assert rig.value(sidecar, "vmsnap_backstop_thaws_total") == 1
    # Ingestion went on: the good job counted, the valid watchdog report counted.
    assert rig.value(sidecar, "vmsnap_sidecar_records_ingested_total") == 2
    assert rig.value(sidecar, "vmsnap_jobs_total", outcome="success", consistency="application")
    assert rig.value(sidecar, "vmsnap_watchdog_thaws_total", reason="eof") == 1
    # Each poisoned file counted once, with a bounded reason, and named in a log line.
    assert rig.value(sidecar, "vmsnap_sidecar_records_invalid_total") == 2
    assert rig.value(sidecar, "vmsnap_sidecar_watchdog_reports_invalid_total") == 1
    assert rig.value(sidecar, "vmsnap_sidecar_spans_dropped_total", reason="invalid") == 1
    logged = caplog.text
    assert str(poisoned.path / "record.json") in logged
    assert str(running.path / "record.json") in logged
    assert "thaw-watchdog-1-1.json" in logged
    # Only the dead job's record is quarantined; the running one is not.
    assert rig.value(sidecar, "vmsnap_sidecar_jobs_quarantined_total") == 1
    # Forwarding went on: the good job's spans, every job's readable log lines once.
    assert len(receiver.spans) == 3
    assert _blob(azurite, container, urls["b-good"]) == bytes(good.log_bytes)
    assert _blob(azurite, container, urls["a-poison"]) == bytes(poisoned.log_bytes)
    assert sidecar.ledger.state.jobs["a-poison"].log.status == "done"
    assert _blob(azurite, container, urls["d-running"]) == bytes(running.log_bytes)
    assert sidecar.ledger.state.jobs["d-running"].log.status != "done"
    # The poisoned credentials stop that job's mirroring for good, and only that.
    assert sidecar.ledger.state.jobs["e-sealed-poison"].log.status == "failed"
    assert rig.value(sidecar, "vmsnap_sidecar_log_mirror_abandoned_total") == 1

    # The running job goes on, rewrites its record (readable now), completes, lets go.
    rig.gen.log_lines(running, 5)
    rig.gen.complete(running)
    fcntl.flock(lock_fd, fcntl.LOCK_UN)
    os.close(lock_fd)
    (running.path / "lock").unlink()
    sidecar.run_once()
    sidecar.run_once()
    assert rig.value(sidecar, "vmsnap_sidecar_records_ingested_total") == 3
    assert rig.value(sidecar, "vmsnap_sidecar_jobs_quarantined_total") == 1
    assert _blob(azurite, container, urls["d-running"]) == bytes(running.log_bytes)
    assert sidecar.ledger.state.jobs["d-running"].log.status == "done"
    # Nothing more happens on later passes: no line mirrored twice, nothing re-counted.
    sidecar.run_once()
    for job in (poisoned, good, running):
        assert _blob(azurite, container, urls[job.name]) == bytes(job.log_bytes)
    assert rig.value(sidecar, "vmsnap_sidecar_records_invalid_total") == 2
    mirrored = sum(len(job.log_bytes) for job in (poisoned, good, running))
    assert rig.value(sidecar, "vmsnap_sidecar_log_mirror_bytes_total") == mirrored
    for component in ("ingest", "mirror", "spans", "backstop", "collector"):
        assert rig.value(sidecar, "vmsnap_sidecar_errors_total", component=component) == 0
