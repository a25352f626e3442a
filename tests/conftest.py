from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import jobkit
from tests.support.azurite import Azurite, run_azurite
from tests.support.jobkit import Workspace


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    with run_azurite() as instance:
        yield instance


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests never inherit the operator's telemetry or runtime settings.
    for name in list(os.environ):
        if name.startswith(("OTEL_", "SNAPSHOT_RUNTIME_", "TRACEPARENT")):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ws() -> Iterator[Workspace]:
    """A per-test job workspace (settings, config, scripts, state under a root-owned dir)."""
    with jobkit.workspace() as w:
        yield w
