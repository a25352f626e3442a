from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.azurite import Azurite
from tests.support.loopfs import LoopFs, loop_filesystem
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.processes import pid_alive, stop_process
from tests.support.waiting import wait_until


def test_azurite_serves_page_blobs_through_sas(azurite: Azurite) -> None:
    from azure.storage.blob import BlobClient

    container = azurite.container()
    url = azurite.create_page_blob(container, "disk0.vhd")
    props = BlobClient.from_blob_url(url).get_blob_properties()
    assert props.blob_type == "PageBlob"
    assert props.size == 1024 * 1024


def test_loop_filesystem_is_really_mounted() -> None:
    for fstype in ("ext4", "xfs"):
        with loop_filesystem(fstype) as fs:
            probe = os.path.join(fs.mountpoint, "probe")
            with open(probe, "w") as fh:
                fh.write("ok")
            with open("/proc/self/mountinfo") as fh:
                assert any(f" {fs.mountpoint} " in line and f" - {fstype} " in line for line in fh)


# -- the shared helpers themselves --------------------------------------------------------


def test_wait_until_returns_the_first_truthy_value() -> None:
    calls = iter([None, [], 0, ["report.json"], ["never reached"]])
    assert wait_until(lambda: next(calls), 5, "a report") == ["report.json"]


def test_wait_until_fails_at_the_deadline_saying_what_and_what_it_saw() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError) as info:
        wait_until(lambda: [], 0.2, "the watchdog's report", detail=lambda: "log tail: boom")
    took = time.monotonic() - started
    message = str(info.value)
    assert "the watchdog's report" in message and "0.2s" in message
    assert "last value: []" in message and "log tail: boom" in message
    assert 0.2 <= took < 5  # waited the whole timeout, bounded


def test_stop_process_escalates_to_sigkill_and_reaps() -> None:
    # A child that ignores SIGTERM: the grace ends, SIGKILL ends it, wait() reaps it.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    started = time.monotonic()
    assert stop_process(child, grace=0.3) == -signal.SIGKILL
    assert time.monotonic() - started < 10
    assert not pid_alive(child.pid)  # reaped: no zombie left behind
    child.stdout.close()


def test_stop_process_on_an_exited_process_only_reaps() -> None:
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    # Exited but not reaped: a zombie, which pid_alive counts as gone.
    wait_until(lambda: not pid_alive(child.pid), 10, "the child to exit")
    assert stop_process(child) == 3


@pytest.mark.parametrize("loop_fs", ["ext4", "xfs"], indirect=True)
def test_loop_fs_fixture_mounts_the_requested_type(loop_fs: LoopFs) -> None:
    with open("/proc/self/mountinfo") as fh:
        mounted = [line for line in fh if f" {loop_fs.mountpoint} " in line]
    assert len(mounted) == 1 and f" - {loop_fs.fstype} " in mounted[0]


def test_ext4_and_xfs_fixtures_are_distinct_real_mounts(ext4: LoopFs, xfs: LoopFs) -> None:
    assert (ext4.fstype, xfs.fstype) == ("ext4", "xfs")
    assert ext4.mountpoint != xfs.mountpoint
    assert os.path.ismount(ext4.mountpoint) and os.path.ismount(xfs.mountpoint)


def _export_one(receiver: OtlpReceiver, name: str) -> SpanExportResult:
    provider = TracerProvider(resource=Resource.create({"service.name": "smoke"}))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("smoke-scope", "1.2.3").start_as_current_span(name) as span:
        span.set_attribute("tags", ["a", "b"])
    otlp = OTLPSpanExporter(endpoint=receiver.endpoint, timeout=0.5)
    try:
        return otlp.export(exporter.get_finished_spans())
    finally:
        otlp.shutdown()
        provider.shutdown()


def test_otlp_receiver_decodes_refuses_and_rejects() -> None:
    with OtlpReceiver() as receiver:
        assert _export_one(receiver, "accepted") is SpanExportResult.SUCCESS
        (span,) = receiver.spans
        assert (span.name, span.parent_span_id, span.scope) == (
            "accepted",
            "",
            ("smoke-scope", "1.2.3"),
        )
        assert span.attributes["tags"] == ["a", "b"]  # arrays decoded, not dropped
        assert span.resource["service.name"] == "smoke"
        assert receiver.paths == ["/v1/traces"] and len(receiver.requests) == len(receiver.raw) == 1
        receiver.up = False  # an outage: 503, nothing kept
        assert _export_one(receiver, "refused") is SpanExportResult.FAILURE
        assert receiver.refused >= 1 and [s.name for s in receiver.spans] == ["accepted"]
    with OtlpReceiver(status=400) as rejecting:  # a collector that rejects, after reading
        assert _export_one(rejecting, "rejected") is SpanExportResult.FAILURE
        assert [s.name for s in rejecting.spans] == ["rejected"] and rejecting.refused == 0
