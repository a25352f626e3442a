"""Issue 15: start-up imports only what the command needs, and never imports while frozen.

Not timed (benchmarks/startup.py measures the time and the RSS): each test
runs a fresh interpreter and reads its ``sys.modules``, so that moving an
Azure SDK import back to module level in the job's start-up path fails here
instead of silently costing every snapshot ~40 ms and ~35 MiB. The real-job
tests (root, a loop filesystem really frozen, Azurite, the host-service
emulator) also read ``sys.modules`` at the first FIFREEZE and at the last
FITHAW: what start-up leaves out must be loaded by the first, and nothing may
be imported between the two (an import is file I/O, I1). docs/startup.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from snapshot_runtime.snapshot.host import VMBACKUP_CONF_ENV
from snapshot_runtime.snapshot.wireserver import WIRESERVER_ENV
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.host_service import BlobDisk, HostService, host_settings
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs

# Top-level packages the start-up path must not import. The Azure SDK and
# requests are needed only by the guest backend and by blob uploads;
# OpenTelemetry and the sealing crypto only once the taskId is known (the
# tracer, credentials.sealed: inside the settings phase, before any freeze).
SDK_PACKAGES = ("azure", "requests")
HEAVY = (*SDK_PACKAGES, "opentelemetry", "cryptography", "nacl")
# Loaded by a job only after its first phase (run.py, state.py, status_report.py)
# and, when the job needs them, before its first FIFREEZE.
DEFERRED = (
    "snapshot_runtime.job.frozen_window",
    "snapshot_runtime.freeze.session",
    "snapshot_runtime.scripts.runner",
    "snapshot_runtime.snapshot.host",
    "snapshot_runtime.job.status_report",
    "snapshot_runtime.snapshot.block_upload",
    "snapshot_runtime.inputs.plugin_config",
    "snapshot_runtime.snapshot.registry",
    "snapshot_runtime.core.consistency",
)
# Never loaded by a job that has no workload.conf, nor by --help.
WORKLOAD_ONLY = ("snapshot_runtime.job.workload", "snapshot_runtime.quiesce")

_PROBE = """
import json, sys
out, argv = sys.argv[1], sys.argv[2:]
code = None
at_first_phase = None
at_freeze = None  # at the first FIFREEZE
at_thaw = None  # at the last FITHAW, before it
if "--mounts" in argv:  # a job that freezes: spy on its ioctls (imports the freeze package)
    from snapshot_runtime.freeze import ioctl
    freeze, thaw = ioctl.KernelFreezeIoctl.freeze, ioctl.KernelFreezeIoctl.thaw
    def spy_freeze(self, fd):
        global at_freeze
        if at_freeze is None:
            at_freeze = sorted(sys.modules)
        return freeze(self, fd)
    def spy_thaw(self, fd):
        global at_thaw
        at_thaw = sorted(sys.modules)
        return thaw(self, fd)
    ioctl.KernelFreezeIoctl.freeze, ioctl.KernelFreezeIoctl.thaw = spy_freeze, spy_thaw
if argv == ["--import-job-run"]:
    import snapshot_runtime.job.run
    argv = None
elif argv[0] == "run" and "--help" not in argv:
    # What is loaded when the first phase (settings) reads the settings file.
    import snapshot_runtime.job.run as job_run
    original = job_run.load_settings_file
    def load_settings_file(path):
        global at_first_phase
        if at_first_phase is None:
            at_first_phase = sorted(sys.modules)
        return original(path)
    job_run.load_settings_file = load_settings_file
if argv is not None:
    from snapshot_runtime.cli import main
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
with open(out, "w") as f:
    doc = {"code": code, "modules": sorted(sys.modules), "first": at_first_phase}
    json.dump({**doc, "freeze": at_freeze, "thaw": at_thaw}, f)
"""


def _run_probe(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> dict[str, object]:
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), *argv],
        check=False,  # the assertion below shows stderr
        capture_output=True,
        text=True,
        cwd="/",  # not the checkout: the installed package, as in production
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, object] = json.loads(out.read_text())
    return doc


def _probe(tmp_path: Path, *argv: str) -> tuple[object, list[str], list[str] | None]:
    """(exit code, sys.modules after it, sys.modules at the first phase) of a fresh interpreter."""
    doc = _run_probe(tmp_path, *argv)
    first = doc["first"]
    assert isinstance(doc["modules"], list)
    assert first is None or isinstance(first, list)
    return doc["code"], list(doc["modules"]), first


def _loaded(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in packages]


def test_run_help_imports_no_sdk_and_no_opentelemetry(tmp_path: Path) -> None:
    code, modules, _ = _probe(tmp_path, "run", "--help")
    assert code == 0
    assert "snapshot_runtime.cli" in modules  # the probe really ran the CLI
    assert _loaded(modules, HEAVY) == []


def test_help_imports_no_job_module_no_loguru_and_no_redactor(tmp_path: Path) -> None:
    code, modules, _ = _probe(tmp_path, "--help")
    assert code == 0
    assert "snapshot_runtime.cli" in modules
    assert [m for m in modules if m.startswith("snapshot_runtime.job")] == []
    # (json: the probe itself imports it)
    for name in ("asyncio", "loguru", "typing", "snapshot_runtime.core.redact"):
        assert name not in modules, name


def test_job_run_module_imports_no_azure_sdk_and_no_opentelemetry(tmp_path: Path) -> None:
    """What the first phase (settings) needs is importable without either."""
    _, modules, _ = _probe(tmp_path, "--import-job-run")
    assert "snapshot_runtime.job.run" in modules
    assert "snapshot_runtime.inputs.settings" in modules
    assert "snapshot_runtime.telemetry.job_telemetry" in modules
    assert _loaded(modules, HEAVY) == []
    # The guest backend stays behind the lazy registry until a job builds it.
    assert "snapshot_runtime.snapshot.azure_blob" not in modules
    assert "snapshot_runtime.snapshot.blob_requests" not in modules


def test_job_with_rejected_settings_never_imports_the_sdk(tmp_path: Path) -> None:
    """A job that fails its first phase uploads nothing, so it never pays for the SDK;
    and its first phase starts with neither the SDK nor OpenTelemetry loaded, although
    the job set up its log, status writer and telemetry (spool on) before it."""
    settings = tmp_path / "0.settings"
    settings.write_text("{ not json")
    settings.chmod(0o600)
    code, modules, first = _probe(
        tmp_path,
        "run",
        "--settings",
        str(settings),
        "--log-file",
        str(tmp_path / "log" / "extension.log"),
        "--state-dir",
        str(tmp_path / "state"),
        "--spool",
        str(tmp_path / "spool"),
        "--run-dir",
        str(tmp_path / "run"),
        "--json",
    )
    assert code not in (0, None)  # the settings were rejected: a failed job
    assert "snapshot_runtime.job.run" in modules  # the job really ran
    assert _loaded(modules, SDK_PACKAGES) == []
    assert "snapshot_runtime.snapshot.azure_blob" not in modules
    assert first is not None  # the settings phase really read the settings file
    assert "snapshot_runtime.telemetry.job_telemetry" in first
    assert _loaded(first, HEAVY) == []


def _job_env(host: HostService, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        WIRESERVER_ENV: host.address,
        VMBACKUP_CONF_ENV: str(tmp_path / "no-vmbackup.conf"),
    }


def _assert_window_imports_nothing(doc: dict[str, object]) -> tuple[list[str], list[str]]:
    freeze, thaw = doc["freeze"], doc["thaw"]
    assert isinstance(freeze, list) and isinstance(thaw, list), "the job never froze or thawed"
    assert sorted(set(thaw) - set(freeze)) == []  # nothing imported while frozen (I1)
    return freeze, thaw


@pytest.mark.root
@pytest.mark.azurite
def test_host_job_loads_the_deferred_modules_before_its_first_fifreeze_and_none_while_frozen(
    ws: Workspace, ext4: LoopFs, azurite: Azurite, tmp_path: Path
) -> None:
    """The default mode: one dosnapshot inside the window, a status blob uploaded
    around it. Start-up leaves the freezer, the scripts, the host path and the
    status upload for later; the first FIFREEZE finds them loaded; the SDK is
    never loaded; nothing is imported between FIFREEZE and FITHAW."""
    container = azurite.container()
    azurite.create_page_blob(container, "disk0.vhd")
    settings, _ = host_settings(ws, luns=[0], status_url=azurite.sas_url(container, "status.json"))
    with HostService(
        {0: BlobDisk(container, "disk0.vhd")},
        blob_connection_string=azurite.connection_string,
        blob_endpoint=azurite.endpoint,
    ) as host:
        args = ws.run_args(settings, config=ws.config(), mounts=[ext4.mountpoint])
        doc = _run_probe(tmp_path, *args, env=_job_env(host, tmp_path))
        assert len(host.calls_of("dosnapshot")) == 1
    assert doc["code"] == 0
    first, modules = doc["first"], doc["modules"]
    assert isinstance(first, list) and isinstance(modules, list)
    freeze, _ = _assert_window_imports_nothing(doc)
    for name in DEFERRED:
        assert name not in first, f"{name} imported before the first phase"
        assert name in freeze, f"{name} not imported before the first FIFREEZE"
    assert _loaded(first, (*HEAVY, "asyncio")) == []
    # The status blob went up without the SDK (snapshot/block_upload.py).
    assert _loaded(modules, SDK_PACKAGES) == []
    assert [m for m in modules if m.startswith(WORKLOAD_ONLY)] == []
    blob = azurite.service().get_blob_client(container, "status.json")
    assert json.loads(blob.download_blob().readall())[0]["status"]["status"] == "success"


@pytest.mark.root
@pytest.mark.azurite
def test_guest_job_never_loads_the_sdk_without_a_proxy_and_nothing_while_frozen(
    ws: Workspace, ext4: LoopFs, azurite: Azurite, tmp_path: Path
) -> None:
    """The guest path without a proxy sends its snapshot requests (preflight,
    retries) without azure-storage-blob (snapshot/blob_wire.py), and its status
    blob and its own log (no sidecar here) too (snapshot/block_upload.py):
    neither the SDK nor requests is ever loaded; the backend is loaded after
    the first phase, before the first FIFREEZE; the window imports nothing."""
    disks = jobkit.make_disks(azurite, 1)
    container, _, status_url = jobkit.status_blob_url(azurite)
    logs_url = azurite.sas_url(container, "job.log")
    settings = ws.settings(disks, status_url=status_url, logs_url=logs_url)
    args = ws.run_args(settings, config=ws.config(), mounts=[ext4.mountpoint])
    doc = _run_probe(tmp_path, *args, env=_without_proxies())
    assert doc["code"] == 0
    first, modules = doc["first"], doc["modules"]
    assert isinstance(first, list) and isinstance(modules, list)
    freeze, _ = _assert_window_imports_nothing(doc)
    assert _loaded(first, (*HEAVY, "asyncio")) == []
    assert "snapshot_runtime.snapshot.azure_blob" in freeze
    assert "snapshot_runtime.snapshot.blob_wire" in freeze
    assert "snapshot_runtime.job.frozen_window" in freeze
    assert _loaded(modules, (*SDK_PACKAGES, "urllib3")) == []
    _assert_snapshotted(azurite, disks)
    status = json.loads(jobkit.blob_bytes(azurite, container, "job.Status.txt"))
    assert status[0]["status"]["status"] == "success"
    assert jobkit.blob_bytes(azurite, container, "job.log")  # the log went up, no SDK


@pytest.mark.root
@pytest.mark.azurite
def test_guest_job_with_a_proxy_loads_the_sdk_before_its_first_fifreeze_and_nothing_while_frozen(
    ws: Workspace, ext4: LoopFs, azurite: Azurite, tmp_path: Path
) -> None:
    """A proxy variable set: the SDK (which honours proxies) sends the snapshot
    requests, loaded before the first FIFREEZE; the window imports nothing.
    NO_PROXY keeps Azurite direct for the SDK, as an operator's exclusions would."""
    disks = jobkit.make_disks(azurite, 1)
    settings = ws.settings(disks)
    args = ws.run_args(settings, config=ws.config(), mounts=[ext4.mountpoint])
    env = {**_without_proxies(), "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"}
    doc = _run_probe(tmp_path, *args, env=env)
    assert doc["code"] == 0
    first = doc["first"]
    assert isinstance(first, list)
    freeze, _ = _assert_window_imports_nothing(doc)
    assert _loaded(first, (*HEAVY, "asyncio")) == []
    assert "azure.storage.blob" in freeze
    _assert_snapshotted(azurite, disks)


def _without_proxies() -> dict[str, str]:
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    return {k: v for k, v in os.environ.items() if k.lower() not in proxies}


def _assert_snapshotted(azurite: Azurite, disk_urls: list[str]) -> None:
    """Each disk blob has one snapshot in Azurite: the job really took it."""
    for url in disk_urls:
        container, name = urlsplit(url).path.rsplit("/", 2)[-2:]
        listing = azurite.service().get_container_client(container)
        blobs = listing.list_blobs(name_starts_with=name, include=["snapshots"])
        assert len([b for b in blobs if b.snapshot]) == 1


_LOGURU_PROBE = """
import os, sys
from snapshot_runtime.telemetry.loguru_logger import root_logger
logger = root_logger()
print("asyncio" in sys.modules, "LOGURU_AUTOINIT" in os.environ)
logger.info("no default handler: this line goes nowhere")
import asyncio
got = []
async def sink(message):
    got.append(str(message).strip())
async def main():
    logger.remove()
    logger.add(sink, format="{message}")
    logger.info("through a coroutine sink")
    await logger.complete()
asyncio.run(main())
print(got)
"""


def test_loguru_loads_without_asyncio_and_a_coroutine_sink_still_works() -> None:
    """Nor with its default stderr handler (unguarded by the freeze gate), and the
    environment variable that turns it off is not left for the scripts."""
    proc = subprocess.run(
        [sys.executable, "-c", _LOGURU_PROBE],
        check=False,
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["False False", "['through a coroutine sink']"]
    assert proc.stderr == ""


def test_job_options_default_backends_are_the_registrys() -> None:
    """JobOptions takes its default from core/defaults (no registry import at start-up)."""
    from snapshot_runtime.job.records import JobOptions
    from snapshot_runtime.snapshot.registry import DEFAULT_BACKENDS

    assert JobOptions(settings_path="-").snapshot_backends == DEFAULT_BACKENDS
