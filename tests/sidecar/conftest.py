from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry
from snapshot_sidecar.backstop import Backstop
from snapshot_sidecar.collectors import build_registry, default_collectors
from snapshot_sidecar.keys import Keys
from snapshot_sidecar.mirror import MirrorConfig
from snapshot_sidecar.sidecar import Sidecar, SidecarConfig, standard_forwarders
from snapshot_sidecar.spans import SpanConfig
from snapshot_sidecar.spool_reader import SpoolReader
from snapshot_sidecar.state import Ledger

from snapshot_runtime import __version__
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from tests.support.spoolgen import SpoolGen

FAST_POLICY = BlobPolicy(request_timeout=5.0, connect_timeout=2.0, retries=3, backoff_seconds=0.05)


def fast_mirror(**changes: object) -> MirrorConfig:
    options: dict[str, object] = {
        "min_batch": 0,
        "flush_seconds": 0.0,
        "policy": FAST_POLICY,
        "max_backoff": 0.2,
    }
    options.update(changes)
    return MirrorConfig(**options)  # type: ignore[arg-type]


@dataclass
class Rig:
    """A spool, a state dir, and a way to (re)start an in-process sidecar on them."""

    spool: Path
    state: Path
    gen: SpoolGen
    keys: Keys
    sidecars: list[Sidecar] = field(default_factory=list)

    def sidecar(
        self,
        *,
        exporter: SpanExporter | None = None,
        mirror: MirrorConfig | None = None,
        spans: SpanConfig | None = None,
        backstop: Backstop | None = None,
        keep_jobs: bool = True,
    ) -> Sidecar:
        reader = SpoolReader(self.spool)
        ledger = Ledger(self.state)
        mirror_config = mirror or fast_mirror()
        span_config = spans or SpanConfig(max_backoff=0.0)
        config = SidecarConfig(
            poll_seconds=0.05, keep_jobs=keep_jobs, mirror=mirror_config, spans=span_config
        )
        sidecar = Sidecar(
            reader=reader,
            ledger=ledger,
            forwarders=standard_forwarders(reader, ledger, self.keys, config, exporter=exporter),
            backstop=backstop,
            config=config,
        )
        self.sidecars.append(sidecar)
        return sidecar

    @staticmethod
    def registry(sidecar: Sidecar) -> CollectorRegistry:
        ledger = sidecar.ledger
        return build_registry(default_collectors(lambda: ledger.published, __version__))

    def value(self, sidecar: Sidecar, name: str, **labels: str) -> float | None:
        return self.registry(sidecar).get_sample_value(name, labels)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    spool, state = tmp_path / "spool", tmp_path / "state"
    keys = Keys.load_or_create(state)
    keys.publish(spool)
    rig = Rig(spool, state, SpoolGen(spool), keys)
    yield rig
    for sidecar in rig.sidecars:
        sidecar.close()
