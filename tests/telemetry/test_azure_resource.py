"""The Azure resource cache: untrusted reads, its freshness, and the job's resource (unit)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from snapshot_sidecar.resource_detection import normalise, refresh

from snapshot_runtime.telemetry.azure_resource import (
    CACHE_FILE,
    MAX_CACHE_BYTES,
    cache_document,
    parse_cache,
    read_cache,
)
from snapshot_runtime.telemetry.tracing import build_resource

NOW = 1_800_000_000.0
ATTRS = {
    "cloud.provider": "azure",
    "cloud.platform": "azure.vm",
    "cloud.region": "westeurope",
    "host.id": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
}


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_a_good_cache_is_read_and_only_known_keys_are_kept(tmp_path: Path) -> None:
    doc = json.loads(cache_document(ATTRS, NOW))
    doc["attributes"]["process.command_line"] = "--sas sig=abc"  # not a cache key
    doc["attributes"]["host.name"] = "bad\x1bname"  # not printable
    doc["attributes"]["host.type"] = ["Standard_D2s_v5"]  # not a string
    path = _write(tmp_path / CACHE_FILE, json.dumps(doc).encode())
    cache = read_cache(path, now=NOW + 60)
    assert cache.attributes == ATTRS and cache.detected_at == NOW


@pytest.mark.parametrize(
    ("why", "doc"),
    [
        ("stale", {"detected_at": NOW - 8 * 24 * 3600}),
        ("future", {"detected_at": NOW + 3600}),
        ("not azure", {"attributes": {**ATTRS, "cloud.provider": "aws"}}),
        ("schema", {"schema": "something-else"}),
        ("version", {"version": 2}),
        ("no time", {"detected_at": None}),
        ("attributes", {"attributes": ["cloud.provider"]}),
    ],
)
def test_a_cache_that_is_not_believed_is_refused(why: str, doc: dict[str, object]) -> None:
    base = json.loads(cache_document(ATTRS, NOW))
    base.update(doc)
    with pytest.raises(ValueError):
        parse_cache(json.dumps(base).encode(), now=NOW)


def test_hostile_cache_files_are_refused(tmp_path: Path) -> None:
    good = cache_document(ATTRS, NOW)
    with pytest.raises(FileNotFoundError):
        read_cache(tmp_path / "absent.json", now=NOW)
    with pytest.raises(ValueError):  # oversized (a read of at most the bound + 1)
        read_cache(_write(tmp_path / "big.json", good + b" " * MAX_CACHE_BYTES), now=NOW)
    with pytest.raises(ValueError):  # anyone may write it
        read_cache(_write(tmp_path / "open.json", good, mode=0o666), now=NOW)
    with pytest.raises(ValueError):  # not JSON
        read_cache(_write(tmp_path / "junk.json", b"\x00{"), now=NOW)
    real = _write(tmp_path / "real.json", good)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with pytest.raises(OSError):  # a symlink is not followed
        read_cache(link, now=NOW)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(ValueError):  # not a regular file (and opening it does not block)
        read_cache(fifo, now=NOW)


def test_normalise_the_detector_output() -> None:
    rid = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.Compute/virtualMachines/v"
    got = normalise(
        {
            "cloud.provider": "azure",
            "cloud.platform": "azure_vm",
            "cloud.resource_id": rid,
            "host.id": "vm-1",
            "service.instance.id": "vm-1",
            "azure.vm.scaleset.name": "",
        }
    )
    assert got == {
        "cloud.provider": "azure",
        "cloud.platform": "azure.vm",
        "cloud.resource_id": rid,
        "cloud.account.id": "sub-1",
        "azure.resource_group.name": "rg-1",
        "host.id": "vm-1",
    }


def test_refresh_asks_at_most_daily_and_keeps_the_old_copy_on_failure(tmp_path: Path) -> None:
    state, spool = tmp_path / "state", tmp_path / "spool"
    state.mkdir()
    calls: list[float] = []
    answer: dict[str, str] = dict(ATTRS)
    clock = [NOW]

    def detect() -> dict[str, str]:
        calls.append(clock[0])
        return dict(answer)

    first = refresh(state, spool, detect=detect, clock=lambda: clock[0])
    assert first.detected and first.attributes == ATTRS and first.next_seconds == 24 * 3600
    clock[0] = NOW + 23 * 3600
    second = refresh(state, spool, detect=detect, clock=lambda: clock[0])
    assert not second.detected and len(calls) == 1
    assert second.next_seconds == pytest.approx(3600)
    clock[0] = NOW + 25 * 3600
    answer.clear()  # IMDS does not answer this time
    third = refresh(state, spool, detect=detect, clock=lambda: clock[0])
    assert len(calls) == 2 and third.attributes == ATTRS and third.next_seconds == 3600
    assert read_cache(spool / CACHE_FILE, now=clock[0]).detected_at == NOW


def test_no_cache_and_no_imds_leaves_no_file(tmp_path: Path) -> None:
    result = refresh(tmp_path / "state", tmp_path / "spool", detect=dict, clock=lambda: NOW)
    assert result.attributes == {} and not result.detected
    assert not (tmp_path / "spool" / CACHE_FILE).exists()


def test_the_job_resource_precedence_and_no_detector_plugin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.resource.detector.azure.vm import AzureVMResourceDetector

    asked: list[str] = []

    def never(self: AzureVMResourceDetector) -> object:
        asked.append("imds")
        raise AssertionError("IMDS asked during a job's start-up")

    monkeypatch.setattr(AzureVMResourceDetector, "detect", never)
    monkeypatch.setenv("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "azure_vm")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "cloud.region=override")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    resource = build_resource(redact=lambda s: s, host_id="machine-id", cloud=ATTRS)
    attrs = resource.attributes
    assert asked == []
    assert attrs["host.id"] == ATTRS["host.id"]  # the VM id beats the machine id default
    assert attrs["cloud.region"] == "override"  # the environment beats the cache
    assert attrs["cloud.provider"] == "azure" and attrs["cloud.platform"] == "azure.vm"
    assert attrs["service.name"] == "snapshot-runtime"
    assert attrs["telemetry.sdk.language"] == "python"
    assert "service.instance.id" in attrs
