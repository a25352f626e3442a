"""Choosing a snapshot backend (snapshot/registry.py): order, declines, broken backends.

The backends here are small real implementations of the Protocol (they answer
``decide`` and record what was asked of them); nothing is patched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from snapshot_runtime.inputs.settings import parse_handler_settings
from snapshot_runtime.snapshot.azure_blob import AzureBlobSnapshotter
from snapshot_runtime.snapshot.backend import (
    BackendDecision,
    SnapshotRequest,
    Snapshotter,
    SnapshotterFactory,
)
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.snapshot.registry import (
    BACKENDS,
    DEFAULT_BACKENDS,
    BackendDeclined,
    choose_backend,
)
from snapshot_runtime.snapshot.results import DiskSnapshot, SnapshotResult
from tests.support.jobkit import settings_doc

SIG = "c2VjcmV0c2lnbmF0dXJlMTIzNDU2Nzg5MA%3D%3D"
DISK = f"https://acct.blob.core.windows.net/c/disk0.vhd?sv=2020-08-04&sr=b&sp=rcw&sig={SIG}"


def request() -> SnapshotRequest:
    settings = parse_handler_settings(settings_doc([DISK], task_id="registry_1"))
    return SnapshotRequest(settings=settings, policy=BlobPolicy(), deadline_seconds=5.0)


@dataclass
class Journal:
    calls: list[str] = field(default_factory=list)


class Answering:
    """Accepts or declines; records decide/close."""

    def __init__(self, name: str, decision: BackendDecision, journal: Journal) -> None:
        self.name, self.decision, self.journal = name, decision, journal

    def decide(self) -> BackendDecision:
        self.journal.calls.append(f"{self.name}.decide")
        return self.decision

    def prepare(self) -> list[DiskSnapshot]:
        return []

    def snapshot_all(self) -> SnapshotResult:
        return SnapshotResult((), False, None, None, 0.0, False)

    def close(self) -> None:
        self.journal.calls.append(f"{self.name}.close")


class BrokenDecide(Answering):
    def decide(self) -> BackendDecision:
        self.journal.calls.append(f"{self.name}.decide")
        raise ConnectionError(f"presnapshot to {DISK} refused")


def test_the_default_is_the_azure_blob_backend_and_it_accepts() -> None:
    # host / host_required: the WireServer path (docs/host-snapshot.md), chosen by the
    # host mode decision, never by default for settings without host inputs.
    assert DEFAULT_BACKENDS == ("azure_blob",)
    assert set(BACKENDS) == {"azure_blob", "host", "host_required"}
    choice = choose_backend(DEFAULT_BACKENDS, request())
    try:
        assert choice.name == "azure_blob" and choice.declined == ()
        assert isinstance(choice.snapshotter, AzureBlobSnapshotter)
    finally:
        assert choice.snapshotter is not None
        choice.snapshotter.close()


def test_declines_fall_back_in_order_and_are_recorded_without_secrets() -> None:
    journal = Journal()

    def backend(
        name: str, decision: BackendDecision, kind: type[Answering] = Answering
    ) -> SnapshotterFactory:
        def factory(_: SnapshotRequest) -> Snapshotter:
            journal.calls.append(f"{name}.build")
            return kind(name, decision, journal)

        return factory

    def unbuildable(_: SnapshotRequest) -> Snapshotter:
        raise ValueError(f"no host for {DISK}")

    table = {
        "declines": backend("declines", BackendDecision.decline("no WireServer")),
        "raises": backend("raises", BackendDecision.accept(), BrokenDecide),
        "unbuildable": unbuildable,
        "accepts": backend("accepts", BackendDecision.accept()),
        "never": backend("never", BackendDecision.accept()),
    }
    names = ("declines", "missing", "raises", "unbuildable", "accepts", "never")

    choice = choose_backend(names, request(), backends=table)

    assert choice.name == "accepts"
    assert [d.name for d in choice.declined] == ["declines", "missing", "raises", "unbuildable"]
    assert choice.declined[0] == BackendDeclined("declines", "no WireServer")
    assert choice.declined[1] == BackendDeclined("missing", "unknown backend")
    assert choice.declined[2].reason.startswith("ConnectionError: presnapshot to https://")
    assert choice.declined[3].reason.startswith("ValueError: no host for https://")
    for declined in choice.declined:
        assert SIG not in declined.reason
    # Each declined backend is closed at once; the one after the choice is never built.
    assert journal.calls == [
        "declines.build",
        "declines.decide",
        "declines.close",
        "raises.build",
        "raises.decide",
        "raises.close",
        "accepts.build",
        "accepts.decide",
    ]


@pytest.mark.parametrize("names", [(), ("missing",)])
def test_no_backend_accepting_is_a_choice_of_none(names: tuple[str, ...]) -> None:
    choice = choose_backend(names, request())
    assert (choice.name, choice.snapshotter) == (None, None)
    assert choice.declined == tuple(BackendDeclined(n, "unknown backend") for n in names)
