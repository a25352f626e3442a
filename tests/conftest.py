from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from snapshot_runtime.inputs.workload_conf import WORKLOAD_CONF_ENV
from tests.support import jobkit
from tests.support.azurite import Azurite, run_azurite
from tests.support.faultproxy import FaultProxy
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs, loop_filesystem


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
    # Nor the machine's /etc/azure/workload.conf: a workload test names its own.
    monkeypatch.setenv(WORKLOAD_CONF_ENV, "/nonexistent/snapshot-runtime-tests/workload.conf")


@pytest.fixture
def ws() -> Iterator[Workspace]:
    """A per-test job workspace (settings, config, scripts, state under a root-owned dir)."""
    with jobkit.workspace() as w:
        yield w


# -- real filesystems: one per test (a loop device is ~20 ms), so no test sees another's
# files, freezes or leftovers. Tests that need two, or a type per case, use
# loop_filesystem() directly or parametrise ``loop_fs``.


@pytest.fixture
def ext4() -> Iterator[LoopFs]:
    """A loop-mounted ext4 filesystem, really freezable; thawed and unmounted after."""
    with loop_filesystem("ext4") as fs:
        yield fs


@pytest.fixture
def xfs() -> Iterator[LoopFs]:
    """A loop-mounted xfs filesystem, really freezable; thawed and unmounted after."""
    with loop_filesystem("xfs") as fs:
        yield fs


@pytest.fixture
def loop_fs(request: pytest.FixtureRequest) -> Iterator[LoopFs]:
    """A loop filesystem of the type given by indirect parametrisation (ext4 if none):

    ``@pytest.mark.parametrize("loop_fs", ["ext4", "xfs"], indirect=True)``
    """
    with loop_filesystem(getattr(request, "param", "ext4")) as fs:
        yield fs


# -- the fault proxy in front of Azurite ------------------------------------------------


@pytest.fixture
def proxy(azurite: Azurite) -> Iterator[FaultProxy]:
    """A fresh FaultProxy in front of the session's Azurite, closed after the test.

    ``max_lifetime`` only bounds a proxy a broken test forgot; it is far above any
    test's own duration so that a slow, loaded machine never closes it mid-test.
    """
    with FaultProxy(azurite.host, azurite.port, max_lifetime=300) as p:
        yield p
