"""The Forwarder seam: the sidecar runs a list of sinks; one failing never stops another."""

from __future__ import annotations

from snapshot_sidecar.forwarders import Forwarder, ForwardResult, Guard
from snapshot_sidecar.mirror import LogMirror
from snapshot_sidecar.spans import SpanForwarder
from snapshot_sidecar.state import Ledger

from tests.sidecar.conftest import Rig


class _Broken:
    """A sink whose every pass raises: its Guard keeps the exception in."""

    name = "spans"

    def __init__(self, ledger: Ledger) -> None:
        self._guard = Guard(ledger)
        self.closed = False

    def step(self) -> ForwardResult:
        return self._guard.run(self.name, self._pass)

    def _pass(self) -> None:
        raise RuntimeError("the collector exploded")

    def close(self) -> None:
        self.closed = True


class _Counting:
    name = "mirror"

    def __init__(self) -> None:
        self.steps = 0

    def step(self) -> ForwardResult:
        self.steps += 1
        return ForwardResult.SUCCESS

    def close(self) -> None:
        pass


def test_the_standard_forwarders_are_the_mirror_and_the_span_forwarder(rig: Rig) -> None:
    sidecar = rig.sidecar()
    kinds = [type(f) for f in sidecar.forwarders]
    assert kinds == [LogMirror, SpanForwarder]
    assert [f.name for f in sidecar.forwarders] == ["mirror", "spans"]
    assert sidecar.forwarder("spans") is sidecar.forwarders[1]


def test_a_failing_forwarder_is_counted_and_the_others_go_on(rig: Rig) -> None:
    rig.gen.job("a")
    sidecar = rig.sidecar()
    broken, counting = _Broken(sidecar.ledger), _Counting()
    forwarders: list[Forwarder] = [broken, counting]
    sidecar.forwarders = forwarders
    sidecar.run_once()
    sidecar.run_once()
    assert counting.steps == 2
    assert broken.step() is ForwardResult.FAILURE
    assert rig.value(sidecar, "vmsnap_sidecar_errors_total", component="spans") == 3
    assert rig.value(sidecar, "vmsnap_sidecar_records_ingested_total") == 1  # ingest unaffected
    sidecar.close()
    assert broken.closed
