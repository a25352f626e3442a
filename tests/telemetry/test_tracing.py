"""Spans: ids, resource and JSON form (unit), and their shape for real jobs (docs/telemetry.md).

The job tests run real jobs: Azurite page blobs, a loop ext4 filesystem that
is really frozen, real pre/post scripts; spans are read through the
``span_exporter`` seam (an ``InMemorySpanExporter``) and, for OTLP, through a
real local receiver decoding the protobuf the standard exporter sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from snapshot_runtime.core.redact import scrub
from snapshot_runtime.job.run import run_job
from snapshot_runtime.telemetry.sealing import generate_keypair, versions_document
from snapshot_runtime.telemetry.spool_schema import SIDECAR_SEALING_FILE, complete_lines
from snapshot_runtime.telemetry.tracing import (
    JobTracer,
    build_resource,
    span_to_json,
    split_task_id,
    trace_id_for_task,
)
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs
from tests.support.otlp_receiver import OtlpReceiver

PHASE_SPANS = [
    "vmsnap.settings",
    "vmsnap.plugin_config",
    "vmsnap.status_start",
    "vmsnap.pre_script",
    "vmsnap.prepare",
    "vmsnap.freeze",
    "vmsnap.snapshot",
    "vmsnap.thaw",
    "vmsnap.post_script",
    "vmsnap.status_end",
]

# -- unit: ids, resource, JSON -------------------------------------------------------


def test_task_id_attempt_suffix() -> None:
    u = str(uuid.uuid4())
    assert split_task_id(f"{u}_3") == (u, 3)
    assert split_task_id(u) == (u, None)
    assert split_task_id("nightly_2") == ("nightly_2", None)  # not a UUID: kept whole
    assert split_task_id("_1") == ("_1", None)


def test_trace_id_is_derived_from_the_task_id() -> None:
    u = uuid.uuid4()
    assert trace_id_for_task(f"{u}_1") == (u.int, True)
    assert trace_id_for_task(f"{u}_2")[0] == u.int  # retries share the trace
    assert format(trace_id_for_task(str(u))[0], "032x") == u.hex
    digest = hashlib.sha256(b"nightly_2").digest()[:16]
    assert trace_id_for_task("nightly_2") == (int.from_bytes(digest, "big"), True)
    assert trace_id_for_task("00000000-0000-0000-0000-000000000000")[0] != 0
    assert trace_id_for_task("a") == trace_id_for_task("a")


def test_resource_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    res = build_resource(redact=scrub, host_name="vm1", host_id="mid")
    attrs = dict(res.attributes)
    assert attrs["service.name"] == "snapshot-runtime"
    assert attrs["host.name"] == "vm1" and attrs["host.id"] == "mid"
    assert "process.command_line" not in attrs and "process.command_args" not in attrs
    monkeypatch.setenv("OTEL_SERVICE_NAME", "backup-agent")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "host.name=vm2,note=x?sig=SECRETSIG")
    attrs = dict(build_resource(redact=scrub, host_name="vm1").attributes)
    assert attrs["service.name"] == "backup-agent"
    assert attrs["host.name"] == "vm2"  # the environment beats our defaults
    assert "SECRETSIG" not in json.dumps(attrs)


def test_tracer_root_children_and_json() -> None:
    tracer = JobTracer(resource=build_resource(redact=scrub))
    u = uuid.uuid4()
    root = tracer.start_root("vmsnap.job", task_id=f"{u}_1", start_ns=1_000)
    child = tracer.start_child("vmsnap.freeze", start_ns=2_000)
    assert tracer.current_ids() == (u.hex, format(child.get_span_context().span_id, "016x"))
    tracer.record("vmsnap.snapshot.disk", parent=child, start_ns=2_100, end_ns=2_900)
    tracer.end(child, end_ns=3_000, error_type="FsFreezeFailed", description="boom")
    tracer.end(root, end_ns=4_000)
    docs = {d["name"]: d for d in (span_to_json(s) for s in tracer.finished())}
    assert set(docs) == {"vmsnap.job", "vmsnap.freeze", "vmsnap.snapshot.disk"}
    assert docs["vmsnap.job"]["trace_id"] == u.hex and docs["vmsnap.job"]["parent_span_id"] is None
    assert docs["vmsnap.freeze"]["status"] == {"code": "ERROR", "description": "boom"}
    assert docs["vmsnap.freeze"]["attributes"]["error.type"] == "FsFreezeFailed"
    assert docs["vmsnap.snapshot.disk"]["parent_span_id"] == docs["vmsnap.freeze"]["span_id"]
    assert docs["vmsnap.snapshot.disk"]["start_time_unix_nano"] == 2_100
    assert docs["vmsnap.job"]["resource"]["service.name"] == "snapshot-runtime"
    assert docs["vmsnap.job"]["scope"]["name"] == "snapshot_runtime"
    json.dumps(docs)  # plain JSON


def test_incoming_traceparent_decides_the_trace() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    tracer = JobTracer(resource=build_resource(redact=scrub), traceparent=parent)
    root = tracer.start_root("vmsnap.job", task_id=f"{uuid.uuid4()}_1", start_ns=1)
    ctx = root.get_span_context()
    assert format(ctx.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    tracer.end(root)
    (span,) = tracer.finished()
    assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"
    assert span.context is not None and span.context.trace_flags.sampled  # recorded anyway
    tp = tracer.traceparent(root)
    assert tp is not None and tp.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    bad = JobTracer(resource=build_resource(redact=scrub), traceparent="garbage")
    assert not bad.incoming_traceparent


# -- real jobs ------------------------------------------------------------------------


def _by_name(spans: list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _env(path: os.PathLike[str] | str) -> dict[str, str]:
    with open(path) as fh:
        return dict(line.rstrip("\n").split("=", 1) for line in fh if "=" in line)


def _all_attribute_text(spans: list[ReadableSpan]) -> str:
    return json.dumps([span_to_json(s) for s in spans])


@pytest.mark.root
@pytest.mark.azurite
def test_span_shape_of_a_real_job(azurite: Azurite, ws: Workspace, ext4: LoopFs) -> None:
    disks = jobkit.make_disks(azurite, 2)
    u = uuid.uuid4()
    task_id = f"{u}_1"
    exporter = InMemorySpanExporter()
    report = run_job(
        ws.options(
            ws.settings(disks, task_id=task_id),
            config_path=ws.config(),
            include_mounts=(ext4.mountpoint,),
        ),
        span_exporter=exporter,
    )
    assert report.consistency == "application", report.error_message
    spans = list(exporter.get_finished_spans())
    named = _by_name(spans)
    (root,) = named["vmsnap.job"]
    assert root.parent is None
    assert report.trace_id == u.hex == _hex(root.context.trace_id, 32)
    assert all(s.context.trace_id == u.int for s in spans)

    # One child of the root per phase, in job order.
    children = sorted(
        (s for s in spans if s.parent and s.parent.span_id == root.context.span_id),
        key=lambda s: s.start_time or 0,
    )
    assert [s.name for s in children] == PHASE_SPANS
    phase = {s.name: s for s in children}
    for s in spans:
        assert s.status.status_code is StatusCode.UNSET, s.name
        assert s.start_time is not None and s.end_time is not None and s.end_time >= s.start_time
        assert root.start_time <= s.start_time and s.end_time <= root.end_time
    # Attempts under the script phases, disks under the snapshot.
    for which in ("pre_script", "post_script"):
        (attempt,) = named[f"vmsnap.{which}.attempt"]
        assert attempt.parent.span_id == phase[f"vmsnap.{which}"].context.span_id
        assert attempt.attributes["process.exit.code"] == 0
        assert attempt.attributes["vmsnap.script.attempt"] == 1
        attrs = phase[f"vmsnap.{which}"].attributes
        assert attrs["vmsnap.script.attempts"] == 1 and attrs["vmsnap.script.retries"] == 0
        assert list(attrs["vmsnap.script.exit_codes"]) == [0]
    disk_spans = sorted(
        named["vmsnap.snapshot.disk"], key=lambda s: s.attributes["vmsnap.disk.index"]
    )
    assert len(disk_spans) == 2
    for i, s in enumerate(disk_spans):
        assert s.parent.span_id == phase["vmsnap.snapshot"].context.span_id
        # Semantic conventions for the outgoing Snapshot Blob request (a CLIENT span).
        assert s.kind is SpanKind.CLIENT
        assert s.attributes["url.full"] == jobkit.strip(disks[i])
        host, port = urlsplit(disks[i]).hostname, urlsplit(disks[i]).port
        assert s.attributes["server.address"] == host and s.attributes["server.port"] == port
        assert s.attributes["http.request.method"] == "PUT"
        assert "http.request.resend_count" not in s.attributes  # sent once
        assert s.attributes["http.response.status_code"] == 201
        assert s.attributes["vmsnap.disk.snapshot"] == report.disks[i].snapshot
    # Root attributes: task id, consistency, frozen window, mounts, disk count.
    ra = root.attributes
    assert ra["vmsnap.task_id"] == task_id and ra["vmsnap.attempt"] == 1
    assert ra["vmsnap.consistency"] == "application"
    assert ra["vmsnap.frozen_window_seconds"] == pytest.approx(report.freeze_seconds, abs=1e-5)
    assert list(ra["vmsnap.mounts"]) == [ext4.mountpoint]
    assert ra["vmsnap.disk_count"] == 2 and ra["vmsnap.disks_ok"] == 2
    assert phase["vmsnap.thaw"].attributes["vmsnap.frozen_window_seconds"] > 0
    assert list(phase["vmsnap.freeze"].attributes["vmsnap.mounts"]) == [ext4.mountpoint]
    # The frozen window lies between freeze start and thaw end.
    assert phase["vmsnap.freeze"].start_time <= disk_spans[0].start_time
    assert disk_spans[-1].end_time <= phase["vmsnap.thaw"].end_time

    # The pre-script got TRACEPARENT pointing at its phase span.
    env = _env(ws.mark("pre.env"))
    pre = phase["vmsnap.pre_script"].context
    # flags: sampled, plus W3C level 2 "random" (the UUIDv4's low bits are random)
    assert env["TRACEPARENT"] == f"00-{u.hex}-{_hex(pre.span_id, 16)}-03"
    # No SAS anywhere in the spans.
    text = _all_attribute_text(spans)
    for secret in jobkit.secrets_of(disks):
        assert secret not in text
    # Log lines carry their phase span's id, also the one logged inside the
    # frozen window (whose span is only made after the thaw, with a reserved id).
    assert report.spool_job_dir is not None
    with open(os.path.join(report.spool_job_dir, "log.jsonl"), "rb") as fh:
        lines = [json.loads(line) for line in complete_lines(fh.read())]
    span_ids = {_hex(s.context.span_id, 16): s.name for s in spans}
    frozen = next(x for x in lines if x["message"].startswith("filesystems frozen"))
    assert span_ids[frozen["span_id"]] == "vmsnap.freeze"
    assert {x["trace_id"] for x in lines} == {u.hex}
    for x in lines:
        assert x["span_id"] in span_ids, x
        if x["phase"] in ("settings", "pre_script", "prepare", "post_script"):
            assert span_ids[x["span_id"]] == f"vmsnap.{x['phase']}", x
    # The same spans are in the spool, one JSON object per line.
    assert report.spool_job_dir is not None
    with open(os.path.join(report.spool_job_dir, "spans.jsonl"), "rb") as fh:
        spooled = [json.loads(line) for line in complete_lines(fh.read())]
    assert sorted(d["span_id"] for d in spooled) == sorted(
        _hex(s.context.span_id, 16) for s in spans
    )


@pytest.mark.root
@pytest.mark.azurite
def test_failing_pre_script_and_incoming_traceparent(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    incoming_trace = uuid.uuid4().hex
    traceparent = f"00-{incoming_trace}-00f067aa0ba902b7-01"
    fail = '#!/bin/sh\nenv > "$1/pre.env"\necho "failing on purpose" >&2\nexit 3\n'
    config = ws.config(
        pre=ws.script("fail.sh", fail),
        post=ws.scripts()[1],
        preScriptNoOfRetries=1,
        continueBackupOnFailure=False,
    )
    exporter = InMemorySpanExporter()
    report = run_job(
        ws.options(
            ws.settings(jobkit.make_disks(azurite, 1)),
            config_path=config,
            include_mounts=(ext4.mountpoint,),
            traceparent=traceparent,
        ),
        span_exporter=exporter,
    )
    assert not report.snapshot_taken and report.error_code == "Pre-ScriptExecutionFailed"
    spans = list(exporter.get_finished_spans())
    named = _by_name(spans)
    (root,) = named["vmsnap.job"]
    # The incoming context wins: same trace, root parented to the caller's span.
    assert report.trace_id == incoming_trace
    assert root.parent is not None and _hex(root.parent.span_id, 16) == "00f067aa0ba902b7"
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes["error.type"] == "Pre-ScriptExecutionFailed"
    (pre,) = named["vmsnap.pre_script"]
    assert pre.status.status_code is StatusCode.ERROR
    assert pre.attributes["error.type"] == "Pre-ScriptExecutionFailed"
    assert list(pre.attributes["vmsnap.script.exit_codes"]) == [3, 3]
    assert pre.attributes["vmsnap.script.retries"] == 1
    attempts = sorted(named["vmsnap.pre_script.attempt"], key=lambda s: s.start_time or 0)
    assert [a.attributes["vmsnap.script.attempt"] for a in attempts] == [1, 2]
    assert all(a.status.status_code is StatusCode.ERROR for a in attempts)
    assert all(a.attributes["process.exit.code"] == 3 for a in attempts)
    assert not pre.events and not root.events  # record_exception=False: no events
    assert "vmsnap.freeze" not in named and "vmsnap.snapshot" not in named  # cancelled
    # The script saw the job's trace, pointing at its phase span.
    env = _env(ws.mark("pre.env"))
    assert env["TRACEPARENT"].startswith(f"00-{incoming_trace}-{_hex(pre.context.span_id, 16)}-")


def _otlp_settings(ws: Workspace, azurite: Azurite, task_id: str) -> tuple[str, list[str]]:
    disks = jobkit.make_disks(azurite, 1)
    container, _, status_url = jobkit.status_blob_url(azurite)
    logs_url = azurite.sas_url(container, "job.Logs.txt")
    settings = ws.settings(disks, task_id=task_id, status_url=status_url, logs_url=logs_url)
    return settings, [*disks, status_url, logs_url]


@pytest.mark.root
@pytest.mark.azurite
def test_otlp_http_export_to_a_local_receiver(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    task_id = f"{uuid.uuid4()}_1"
    settings, urls = _otlp_settings(ws, azurite, task_id)
    with OtlpReceiver() as receiver:
        report = run_job(
            ws.options(
                settings,
                config_path=ws.config(),
                include_mounts=(ext4.mountpoint,),
                otlp_endpoint=receiver.endpoint,
            )
        )
    assert report.consistency == "application", report.error_message
    assert receiver.paths == ["/v1/traces"]  # one request, after the job
    spans = receiver.spans
    names = sorted(s.name for s in spans)
    assert names.count("vmsnap.job") == 1 and set(PHASE_SPANS) <= set(names)
    assert {s.trace_id for s in spans} == {report.trace_id}
    root = next(s for s in spans if s.name == "vmsnap.job")
    assert root.attributes["vmsnap.task_id"] == task_id
    assert root.resource["service.name"] == "snapshot-runtime"
    assert root.scope[0] == "snapshot_runtime"
    disk = next(s for s in spans if s.name == "vmsnap.snapshot.disk")
    assert disk.attributes["url.full"] == jobkit.strip(urls[0])
    assert disk.kind == 3  # SPAN_KIND_CLIENT on the wire
    # No SAS in what went over the wire (attributes, resource, anything).
    wire = b"".join(receiver.raw)
    for secret in jobkit.secrets_of(urls):
        assert secret.encode() not in wire
    record = _record(report.spool_job_dir)
    assert (
        record["spans"]["otlp"]["exported"] == len(spans)
        and record["spans"]["otlp"]["error"] is None
    )


@pytest.mark.root
@pytest.mark.azurite
def test_no_direct_otlp_export_when_a_sidecar_is_installed(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    spool = ws.root / "sidecar-spool"
    spool.mkdir(parents=True, mode=0o700)
    (spool / SIDECAR_SEALING_FILE).write_bytes(versions_document())  # a current sidecar
    (spool / "sidecar.pub").write_bytes(generate_keypair()[1])
    settings, _ = _otlp_settings(ws, azurite, f"{uuid.uuid4()}_1")
    with OtlpReceiver() as receiver:
        report = run_job(
            ws.options(
                settings,
                include_mounts=(ext4.mountpoint,),
                otlp_endpoint=receiver.endpoint,
                spool_dir=str(spool),
            )
        )
    assert report.snapshot_taken
    assert receiver.requests == []  # the sidecar forwards them from the spool
    record = _record(report.spool_job_dir)
    assert record["spans"]["otlp"] is None and record["logs"]["mirrored_by"] == "sidecar"


@pytest.mark.azurite
def test_otlp_failure_is_recorded_not_fatal(azurite: Azurite, ws: Workspace) -> None:
    with OtlpReceiver(status=400) as receiver:
        report = run_job(
            ws.options(
                ws.settings(jobkit.make_disks(azurite, 1)),
                mountinfo_path=os.devnull,  # nothing to freeze: no root needed
                otlp_endpoint=receiver.endpoint,
                otlp_timeout_seconds=2.0,
            )
        )
    assert report.snapshot_taken
    record = _record(report.spool_job_dir)
    assert record["spans"]["otlp"]["exported"] == 0 and record["spans"]["otlp"]["error"]
    lines = jobkit.read_json_lines(ws.log_path)
    assert any("OTLP span export failed" in line["message"] for line in lines)


def _record(job_dir: str | None) -> dict[str, Any]:
    assert job_dir is not None
    with open(os.path.join(job_dir, "record.json")) as fh:
        doc: dict[str, Any] = json.load(fh)
    return doc


# -- unit: the CLI's environment, and the waterfall ---------------------------------


def test_otlp_endpoint_from_the_environment() -> None:
    from snapshot_runtime.cli import otlp_traces_endpoint

    assert otlp_traces_endpoint({}) is None
    assert otlp_traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == (
        "http://c:4318/v1/traces"
    )
    both = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/custom",
    }
    assert otlp_traces_endpoint(both) == "http://t:1/custom"  # verbatim
    assert otlp_traces_endpoint({**both, "OTEL_SDK_DISABLED": "true"}) is None
    assert otlp_traces_endpoint({**both, "OTEL_TRACES_EXPORTER": "none"}) is None


def test_waterfall_rendering() -> None:
    from snapshot_runtime.telemetry.trace_view import JobView, rows, waterfall

    def span(name: str, sid: str, parent: str | None, start: int, end: int, **kw: Any) -> dict:
        return {
            "name": name,
            "span_id": sid,
            "parent_span_id": parent,
            "start_time_unix_nano": start,
            "end_time_unix_nano": end,
            "status": {"code": kw.get("code", "UNSET")},
            "attributes": kw.get("attrs", {}),
        }

    spans = [
        span("vmsnap.thaw", "c", "a", 70_000_000, 80_000_000),
        span("vmsnap.job", "a", "remote-parent", 0, 100_000_000, code="ERROR"),
        span(
            "vmsnap.freeze",
            "b",
            "a",
            10_000_000,
            60_000_000,
            code="ERROR",
            attrs={"error.type": "FsFreezeFailed"},
        ),
    ]
    table = rows(spans)
    assert [(r.name, r.depth) for r in table] == [
        ("vmsnap.job", 0),
        ("vmsnap.freeze", 1),
        ("vmsnap.thaw", 1),
    ]
    assert (table[1].start_ms, table[1].duration_ms, table[1].error_type) == (
        10.0,
        50.0,
        "FsFreezeFailed",
    )
    record = {"task_id": "t_1", "trace_id": "ab" * 16, "outcome": "failed", "error": "X"}
    text = waterfall(JobView(record, spans, "x"), width=80)
    assert "task t_1  trace " + "ab" * 16 in text and "error.type=FsFreezeFailed" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    freeze_line = next(line for line in text.splitlines() if "vmsnap.freeze" in line)
    assert "!" in freeze_line and "ERROR" in freeze_line
    assert "no spans recorded" in waterfall(JobView(record, [], "x"))
