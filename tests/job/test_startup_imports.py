"""Issue 15: start-up imports only what the command needs.

Not timed (benchmarks/startup.py measures the time and the RSS): each test
runs a fresh interpreter and reads its ``sys.modules``, so that moving an
Azure SDK import back to module level in the job's start-up path fails here
instead of silently costing every snapshot ~40 ms and ~10 MiB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Top-level packages the start-up path must not import. The Azure SDK and
# requests are needed only by the guest backend and by blob uploads;
# OpenTelemetry and the sealing crypto only once the taskId is known (the
# tracer, credentials.sealed: inside the settings phase, before any freeze).
SDK_PACKAGES = ("azure", "requests")
HEAVY = (*SDK_PACKAGES, "opentelemetry", "cryptography", "nacl")

_PROBE = """
import json, sys
out, argv = sys.argv[1], sys.argv[2:]
code = None
at_first_phase = None
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
    json.dump({"code": code, "modules": sorted(sys.modules), "first": at_first_phase}, f)
"""


def _probe(tmp_path: Path, *argv: str) -> tuple[object, list[str], list[str] | None]:
    """(exit code, sys.modules after it, sys.modules at the first phase) of a fresh interpreter."""
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), *argv],
        check=False,  # the assertion below shows stderr
        capture_output=True,
        text=True,
        cwd="/",  # not the checkout: the installed package, as in production
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    return doc["code"], list(doc["modules"]), doc["first"]


def _loaded(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in packages]


def test_run_help_imports_no_sdk_and_no_opentelemetry(tmp_path: Path) -> None:
    code, modules, _ = _probe(tmp_path, "run", "--help")
    assert code == 0
    assert "snapshot_runtime.cli" in modules  # the probe really ran the CLI
    assert _loaded(modules, HEAVY) == []


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
