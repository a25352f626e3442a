"""OTEL_EXPORTER_OTLP_PROTOCOL: grpc as well as http/protobuf (docs/telemetry.md).

The job test runs a real job (Azurite page blob, a loop ext4 really frozen)
whose spans go over OTLP/gRPC to a real grpcio server implementing the
collector's TraceService (tests/support/otlp_grpc_receiver.py). The import
test runs fresh interpreters: gRPC must cost nothing unless selected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from snapshot_runtime.cli import otlp_traces_endpoint, otlp_traces_protocol
from snapshot_runtime.job.run import run_job
from snapshot_runtime.telemetry.otlp_settings import OTLP_GRPC, OTLP_HTTP_PROTOBUF, otlp_protocol
from snapshot_runtime.telemetry.tracing import export_otlp
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs
from tests.support.otlp_grpc_receiver import OtlpGrpcReceiver

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_protocol_values() -> None:
    assert otlp_protocol(None) == otlp_protocol("") == OTLP_HTTP_PROTOBUF
    assert otlp_protocol(" GRPC ") == OTLP_GRPC
    assert otlp_protocol("http/protobuf") == OTLP_HTTP_PROTOBUF
    # No Python exporter speaks http/json; a typo must not lose the spans either.
    assert otlp_protocol("http/json") == OTLP_HTTP_PROTOBUF
    assert otlp_protocol("grcp") == OTLP_HTTP_PROTOBUF


def test_protocol_and_endpoint_from_the_environment() -> None:
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317/"}
    assert otlp_traces_protocol({}) == OTLP_HTTP_PROTOBUF
    grpc = {**base, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert otlp_traces_protocol(grpc) == OTLP_GRPC
    # gRPC has no URL path: the base endpoint is used as it is.
    assert otlp_traces_endpoint(grpc) == "http://c:4317/"
    assert otlp_traces_endpoint(base) == "http://c:4317/v1/traces"
    # The per-signal variable beats the general one, both ways.
    mixed = {**grpc, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    assert otlp_traces_protocol(mixed) == OTLP_HTTP_PROTOBUF
    assert otlp_traces_endpoint(mixed) == "http://c:4317/v1/traces"
    only_traces = {**base, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}
    assert otlp_traces_protocol(only_traces) == OTLP_GRPC
    assert otlp_traces_endpoint({**grpc, "OTEL_SDK_DISABLED": "true"}) is None


def test_export_otlp_over_grpc_to_a_real_receiver_and_to_a_dead_one() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from snapshot_runtime.telemetry.tracing import JobTracer, build_resource

    tracer = JobTracer(resource=build_resource(redact=lambda s: s))
    memory = InMemorySpanExporter()
    tracer.provider.add_span_processor(SimpleSpanProcessor(memory))
    root = tracer.start_root("vmsnap.job", task_id=str(uuid.uuid4()), start_ns=1_000)
    tracer.end(root, end_ns=2_000)
    spans = memory.get_finished_spans()
    with OtlpGrpcReceiver() as receiver:
        error = export_otlp(
            spans, endpoint=receiver.endpoint, timeout_seconds=5.0, protocol=OTLP_GRPC
        )
        assert error is None
        assert [s.name for s in receiver.spans] == ["vmsnap.job"]
        assert receiver.spans[0].trace_id == tracer.trace_id
        receiver.up = False  # UNAVAILABLE: retried within the deadline, then an error text
        error = export_otlp(
            spans, endpoint=receiver.endpoint, timeout_seconds=1.0, protocol=OTLP_GRPC
        )
        assert error is not None and "grpc" in error
        assert receiver.refused >= 1


@pytest.mark.root
@pytest.mark.azurite
def test_a_job_exports_its_spans_over_grpc(azurite: Azurite, ws: Workspace, ext4: LoopFs) -> None:
    task_id = f"{uuid.uuid4()}_1"
    disks = jobkit.make_disks(azurite, 1)
    container, _, status_url = jobkit.status_blob_url(azurite)
    logs_url = azurite.sas_url(container, "job.Logs.txt")
    urls = [*disks, status_url, logs_url]
    settings = ws.settings(disks, task_id=task_id, status_url=status_url, logs_url=logs_url)
    with OtlpGrpcReceiver() as receiver:
        report = run_job(
            ws.options(
                settings,
                config_path=ws.config(),
                include_mounts=(ext4.mountpoint,),
                otlp_endpoint=otlp_traces_endpoint(
                    {
                        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                    }
                ),
                otlp_protocol=OTLP_GRPC,
            )
        )
    assert report.consistency == "application", report.error_message
    assert len(receiver.requests) == 1  # one call, after the job
    spans = receiver.spans
    names = [s.name for s in spans]
    assert names.count("vmsnap.job") == 1 and "vmsnap.freeze" in names
    assert {s.trace_id for s in spans} == {report.trace_id}
    disk = next(s for s in spans if s.name == "vmsnap.snapshot.disk")
    assert disk.kind == 3  # SPAN_KIND_CLIENT
    assert disk.attributes["url.full"] == jobkit.strip(disks[0])
    wire = b"".join(receiver.raw)
    for secret in jobkit.secrets_of(urls):
        assert secret.encode() not in wire
    assert report.spool_job_dir is not None
    with open(os.path.join(report.spool_job_dir, "record.json"), encoding="utf-8") as fh:
        otlp = json.load(fh)["spans"]["otlp"]
    assert otlp["protocol"] == "grpc" and otlp["exported"] == len(spans)
    assert otlp["error"] is None


_IMPORTS = """
import json, os, sys
import snapshot_runtime.cli, snapshot_sidecar.cli
from snapshot_runtime.telemetry.tracing import otlp_span_exporter
from snapshot_sidecar.cli import span_exporter_from_env
env = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
    "OTEL_EXPORTER_OTLP_PROTOCOL": sys.argv[1],
}
exporter = span_exporter_from_env(env)
kind = type(exporter).__module__
runtime = type(otlp_span_exporter(sys.argv[1], endpoint="http://127.0.0.1:9")).__module__
grpc = sorted(m for m in sys.modules if m == "grpc" or m.startswith("grpc."))
print(json.dumps({"sidecar": kind, "runtime": runtime, "grpc_modules": len(grpc)}))
"""


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_grpc_is_imported_only_when_selected(protocol: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS, protocol],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    if protocol == "grpc":
        assert doc["sidecar"].endswith("proto.grpc.trace_exporter"), doc
        assert doc["runtime"].endswith("proto.grpc.trace_exporter"), doc
        assert doc["grpc_modules"] > 0
    else:
        assert doc["sidecar"].endswith("proto.http.trace_exporter"), doc
        assert doc["runtime"].endswith("proto.http.trace_exporter"), doc
        assert doc["grpc_modules"] == 0, doc


def test_grpc_without_the_extra_is_a_clear_error_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from snapshot_sidecar.cli import span_exporter_from_env

    from snapshot_runtime.telemetry.tracing import OtlpProtocolUnavailable, otlp_span_exporter

    # As if the grpc extra were not installed: importing the exporter fails.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(OtlpProtocolUnavailable, match=r"snapshot-runtime\[grpc\]"):
        otlp_span_exporter(OTLP_GRPC, endpoint="http://127.0.0.1:9")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    with pytest.raises(OtlpProtocolUnavailable):
        span_exporter_from_env(env)
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.get_tracer("t").start_span("s").end()
    error = export_otlp(
        memory.get_finished_spans(),
        endpoint="http://127.0.0.1:9",
        timeout_seconds=1.0,
        protocol=OTLP_GRPC,
    )
    assert error is not None and "grpc extra" in error
    provider.shutdown()
