"""Span forwarding to a real OTLP receiver (HTTP, and gRPC): content, outages, the bound."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from snapshot_sidecar.cli import span_exporter_from_env
from snapshot_sidecar.spans import SpanConfig, SpanForwarder, span_from_json

from tests.sidecar.conftest import Rig
from tests.support.otlp_grpc_receiver import OtlpGrpcReceiver
from tests.support.otlp_receiver import OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


def _exporter(receiver: OtlpReceiver) -> OTLPSpanExporter:
    # Short timeout: the exporter's own retries (1 s, 2 s ...) stop within it.
    return OTLPSpanExporter(endpoint=receiver.endpoint, timeout=0.5)


def test_spans_are_exported_with_their_content(rig: Rig, receiver: OtlpReceiver) -> None:
    job = rig.gen.job("s1")
    written = rig.gen.span_lines(job, 5, error=True)
    sidecar = rig.sidecar(exporter=_exporter(receiver))
    sidecar.run_once()
    sidecar.run_once()
    assert len(receiver.spans) == 5
    by_id = {s.span_id: s for s in receiver.spans}
    for doc in written:
        got = by_id[doc["span_id"]]
        assert got.trace_id == doc["trace_id"] == job.trace_id
        assert got.parent_span_id == (doc["parent_span_id"] or "")
        assert got.name == doc["name"]
        assert got.attributes["vmsnap.task_id"] == "s1"
        assert got.status_code == 2 and got.status_message == "boom"  # STATUS_CODE_ERROR
        assert got.events == ["note"]
        assert got.resource["service.name"] == "snapshot-runtime"
        assert got.scope == ("snapshot_runtime", "0.1.0")
    assert rig.value(sidecar, "vmsnap_sidecar_spans_exported_total") == 5
    assert sidecar.ledger.state.jobs["s1"].spans.status == "done"


def test_collector_down_then_up_loses_nothing_and_sends_nothing_twice(
    rig: Rig, receiver: OtlpReceiver
) -> None:
    receiver.up = False
    first = rig.gen.job("s2", complete=False)
    rig.gen.span_lines(first, 3)
    sidecar = rig.sidecar(exporter=_exporter(receiver))
    sidecar.run_once()
    assert receiver.refused >= 1 and receiver.spans == []
    errors = rig.value(sidecar, "vmsnap_sidecar_span_export_errors_total")
    assert errors is not None and errors >= 1
    backlog = rig.value(sidecar, "vmsnap_sidecar_span_backlog_bytes")
    assert backlog is not None and backlog > 0
    rig.gen.span_lines(first, 2)
    rig.gen.complete(first)
    second = rig.gen.job("s3")
    rig.gen.span_lines(second, 4)
    sidecar.run_once()
    # A restart while the collector is still down: progress is persisted, nothing lost.
    restarted = rig.sidecar(exporter=_exporter(receiver))
    receiver.up = True
    restarted.run_once()
    restarted.run_once()
    assert sorted(s.span_id for s in receiver.spans) == sorted(
        d["span_id"] for d in first.spans + second.spans
    )
    assert rig.value(restarted, "vmsnap_sidecar_span_backlog_bytes") == 0
    assert rig.value(restarted, "vmsnap_sidecar_spans_dropped_total", reason="backlog") == 0
    again = rig.sidecar(exporter=_exporter(receiver))
    again.run_once()
    assert len(receiver.spans) == 9


def test_backlog_beyond_the_bound_is_dropped_and_counted(rig: Rig, receiver: OtlpReceiver) -> None:
    receiver.up = False
    old = rig.gen.job("s4")
    rig.gen.span_lines(old, 10)
    new = rig.gen.job("s5")
    rig.gen.span_lines(new, 2)
    bound = new.spans_path.stat().st_size + 10  # room for the newest job only
    sidecar = rig.sidecar(exporter=_exporter(receiver), spans=SpanConfig(backlog_bytes=bound))
    sidecar.run_once()
    assert rig.value(sidecar, "vmsnap_sidecar_spans_dropped_total", reason="backlog") == 10
    receiver.up = True
    forwarder = sidecar.forwarder("spans")
    assert isinstance(forwarder, SpanForwarder)
    forwarder.next_try = 0.0  # retry now, not after the backoff
    sidecar.run_once()
    assert sorted(s.span_id for s in receiver.spans) == sorted(d["span_id"] for d in new.spans)


def test_invalid_span_lines_are_dropped_and_counted(rig: Rig, receiver: OtlpReceiver) -> None:
    job = rig.gen.job("s6")
    rig.gen.span_lines(job, 2)
    with open(job.spans_path, "ab") as fh:
        fh.write(b'{"trace_id": "zz", "name": "bad"}\n')
    sidecar = rig.sidecar(exporter=_exporter(receiver))
    sidecar.run_once()
    assert len(receiver.spans) == 2
    assert rig.value(sidecar, "vmsnap_sidecar_spans_dropped_total", reason="invalid") == 1


def test_no_exporter_configured_marks_spans_handled(rig: Rig) -> None:
    job = rig.gen.job("s7")
    rig.gen.span_lines(job, 2)
    sidecar = rig.sidecar(exporter=None, keep_jobs=False)
    sidecar.run_once()
    assert not job.path.exists()


def test_exporter_choice_follows_the_standard_variables() -> None:
    assert span_exporter_from_env({}) is None
    assert span_exporter_from_env({"OTEL_SDK_DISABLED": "true"}) is None
    assert (
        span_exporter_from_env(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_EXPORTER": "none"}
        )
        is None
    )
    exporter = span_exporter_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    assert isinstance(exporter, OTLPSpanExporter)
    exporter.shutdown()


def test_spans_are_forwarded_over_grpc_when_the_protocol_says_so(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcSpanExporter,
    )

    with OtlpGrpcReceiver(up=False) as receiver:
        # The exporter reads the standard variables itself, as in production.
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-vmsnap-test=grpc",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        exporter = span_exporter_from_env(env)
        assert isinstance(exporter, GrpcSpanExporter)
        job = rig.gen.job("g1")
        written = rig.gen.span_lines(job, 4, error=True)
        sidecar = rig.sidecar(exporter=exporter)
        sidecar.run_once()  # collector down: UNAVAILABLE, counted, nothing lost
        assert receiver.refused >= 1 and receiver.spans == []
        assert (rig.value(sidecar, "vmsnap_sidecar_span_export_errors_total") or 0) >= 1
        receiver.up = True
        forwarder = sidecar.forwarder("spans")
        assert isinstance(forwarder, SpanForwarder)
        forwarder.next_try = 0.0  # retry now, not after the backoff
        sidecar.run_once()
        sidecar.run_once()
        exporter.shutdown()
    assert sorted(s.span_id for s in receiver.spans) == sorted(d["span_id"] for d in written)
    got = {s.span_id: s for s in receiver.spans}
    for doc in written:
        span = got[doc["span_id"]]
        assert span.trace_id == job.trace_id and span.name == doc["name"]
        assert span.status_code == 2 and span.status_message == "boom"
        assert span.resource["service.name"] == "snapshot-runtime"
    assert receiver.metadata[-1].get("x-vmsnap-test") == "grpc"
    assert rig.value(sidecar, "vmsnap_sidecar_spans_exported_total") == 4
    assert sidecar.ledger.state.jobs["g1"].spans.status == "done"


def test_span_from_json_rejects_garbage() -> None:
    with pytest.raises((ValueError, KeyError)):
        span_from_json({"trace_id": "0" * 32, "span_id": "1" * 16, "name": "x"})
    span = span_from_json(
        {
            "trace_id": "a" * 32,
            "span_id": "b" * 16,
            "name": "vmsnap.job",
            "start_time_unix_nano": 1,
            "end_time_unix_nano": 2,
        }
    )
    assert span.parent is None and span.name == "vmsnap.job"
    assert SpanExportResult.SUCCESS  # the enum the forwarder relies on


def test_a_sidecar_asked_for_grpc_without_the_extra_still_starts(tmp_path: Path) -> None:
    # The thaw backstop and /metrics matter more than spans: log, start, forward nothing.
    code = (
        "import sys\n"
        "sys.modules['opentelemetry.exporter.otlp.proto.grpc.trace_exporter'] = None\n"
        "from snapshot_sidecar.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    args = ["--once", "--no-backstop", "--no-resource-detection"]
    args += ["--spool", str(tmp_path / "spool"), "--state-dir", str(tmp_path / "state")]
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "spans not forwarded" in done.stderr and "snapshot-runtime[grpc]" in done.stderr
