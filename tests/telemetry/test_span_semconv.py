"""Disk spans follow the HTTP client semantic conventions; URLs are only ever redacted (unit)."""

from __future__ import annotations

from snapshot_runtime.core.redact import scrub
from snapshot_runtime.snapshot.results import DiskSnapshot
from snapshot_runtime.telemetry.span_attributes import disk_outcome, request_attributes

SIG = "sig=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA%3D%3D"
URL = f"https://acct.blob.core.windows.net/vhds/disk0.vhd?sv=2024-08-04&sr=b&sp=rw&{SIG}"


def _disk(**kw: object) -> DiskSnapshot:
    fields: dict[str, object] = {
        "index": 0,
        "blob_url": URL,
        "ok": True,
        "snapshot": "2026-12-04T17:00:00.0000000Z",
        "snapshot_url": None,
        "attempts": 1,
        "started_at": 0.0,
        "duration_seconds": 0.01,
        "status_code": 201,
        "error": None,
        "failure_kind": None,
    }
    fields.update(kw)
    return DiskSnapshot(**fields)  # type: ignore[arg-type]


def test_a_disk_span_has_the_http_client_attributes_and_no_sas() -> None:
    outcome = disk_outcome(_disk(), scrub)
    attrs = outcome.attributes
    assert attrs["url.full"] == "https://acct.blob.core.windows.net/vhds/disk0.vhd"
    assert attrs["server.address"] == "acct.blob.core.windows.net"
    assert attrs["server.port"] == 443 and attrs["url.scheme"] == "https"
    assert attrs["http.request.method"] == "PUT"
    assert attrs["http.response.status_code"] == 201
    assert "http.request.resend_count" not in attrs
    assert outcome.error_type is None
    assert "sig=" not in repr(attrs) and "Zm9vYmFy" not in repr(attrs)


def test_a_retried_failed_disk_counts_its_resends_and_names_its_error() -> None:
    outcome = disk_outcome(
        _disk(
            ok=False,
            snapshot=None,
            attempts=3,
            status_code=503,
            error=f"503 on {URL}",
            failure_kind="throttled",
        ),
        scrub,
    )
    attrs = outcome.attributes
    assert attrs["http.request.resend_count"] == 2 and attrs["vmsnap.disk.attempts"] == 3
    assert outcome.error_type == "SnapshotRateExceeded"
    assert outcome.description is not None and "Zm9vYmFy" not in outcome.description


def test_a_non_http_backend_url_has_no_server_attributes() -> None:
    attrs = request_attributes("file:///var/lib/images/disk0.img", scrub)
    assert attrs == {"url.full": "file:///var/lib/images/disk0.img"}
    attrs = request_attributes("http://127.0.0.1:10000/devstoreaccount1/c/d.vhd?sig=x", scrub)
    assert attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == 10000
    assert attrs["url.full"] == "http://127.0.0.1:10000/devstoreaccount1/c/d.vhd"
