"""The real console scripts: ``snapshot-runtime validate|run|--version``, ``snapshot-sidecar``.

Everything runs through ``.venv/bin/...`` as an operator would, as a separate
process: exit codes, stdout/stderr and the files the scripts touch are what
is checked. Config and scripts live in a root-owned workspace
(tests/support/jobkit.py); only loop filesystems are ever named in --mounts.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import pytest

from snapshot_runtime import __version__
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs

pytestmark = pytest.mark.root


def validate(ws: Workspace, config: str, *extra: str) -> jobkit.CliResult:
    result = ws.cli("validate", "--config", config, *extra)
    assert "Traceback" not in result.output, result.output
    return result


def env_of(path: os.PathLike[str] | str) -> dict[str, str]:
    with open(path) as fh:
        return dict(line.rstrip("\n").split("=", 1) for line in fh if "=" in line)


# -- versions ---------------------------------------------------------------------


def test_version(ws: Workspace) -> None:
    result = ws.cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"snapshot-runtime {__version__}"


def test_sidecar_version(ws: Workspace) -> None:
    result = ws.cli("--version", program=jobkit.SIDECAR)
    assert result.returncode == 0, result.output
    assert result.stdout.strip() == f"snapshot-sidecar {__version__}"


# -- validate -------------------------------------------------------------------------


def test_validate_all_ok(ws: Workspace, ext4: LoopFs) -> None:
    config = ws.config()
    result = validate(ws, config, "--mounts", ext4.mountpoint)
    assert result.returncode == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-1] == "OK"
    checks = {line.split()[0] for line in lines[2:] if line.strip() and line != "OK"}
    assert {"config", "pre-script", "post-script", "budget", "freeze"} <= checks, checks
    assert config in result.stdout
    assert f"would freeze: {ext4.mountpoint} (ext4)" in result.stdout
    assert "FAIL" not in result.stdout
    # A preflight, not a run: no script was executed.
    assert list(ws.marks.iterdir()) == []


def test_validate_json_shape(ws: Workspace, ext4: LoopFs) -> None:
    config = ws.config(timeoutInSeconds=7, preScriptNoOfRetries=1)
    result = validate(ws, config, "--json", "--mounts", ext4.mountpoint)
    assert result.returncode == 0, result.output
    doc = result.json
    assert set(doc) == {"ok", "errorCode", "configPath", "checks", "scripts"}
    assert (doc["ok"], doc["errorCode"], doc["configPath"], doc["scripts"]) == (
        True,
        None,
        config,
        {},
    )
    for check in doc["checks"]:
        assert set(check) == {"name", "status", "detail", "errorCode"}
        assert check["status"] in {"ok", "warn", "fail", "info"}
    names = [c["name"] for c in doc["checks"]]
    assert names[:3] == ["config", "pre-script", "post-script"]
    assert "budget" in names and "freeze plan" in names
    budget = next(c for c in doc["checks"] if c["name"] == "budget")
    assert "7s per script" in budget["detail"] and "2 pre" in budget["detail"]


def _config_mode_644(ws: Workspace) -> str:
    return ws.config(mode=0o644)


def _script_owned_by_1000(ws: Workspace) -> str:
    pre, post = ws.scripts()
    os.chown(pre, 1000, 1000)
    return ws.config(pre=pre, post=post)


def _script_missing(ws: Workspace) -> str:
    _, post = ws.scripts()
    return ws.config(pre=str(ws.root / "scripts" / "absent.sh"), post=post)


def _invalid_json(ws: Workspace) -> str:
    return ws.write("VMSnapshotScriptPluginConfig.json", '{"pluginName": "ScriptRunner",', 0o600)


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (_config_mode_644, "IncorrectJSONConfigFile"),
        (_script_owned_by_1000, "InsufficientPermissionforPre-Script"),
        (_script_missing, "Pre-ScriptNotFound"),
        (_invalid_json, "IncorrectJSONConfigFile"),
    ],
    ids=["config-mode-644", "script-uid-1000", "script-missing", "invalid-json"],
)
def test_validate_failures(ws: Workspace, ext4: LoopFs, make, code: str) -> None:
    config = make(ws)
    result = validate(ws, config, "--mounts", ext4.mountpoint)
    assert result.returncode != 0
    assert result.stdout.splitlines()[-1] == f"FAILED: {code}", result.output
    as_json = validate(ws, config, "--json", "--mounts", ext4.mountpoint)
    assert as_json.returncode != 0
    assert (as_json.json["ok"], as_json.json["errorCode"]) == (False, code)


def test_validate_run_scripts_runs_pre_then_post(ws: Workspace, ext4: LoopFs) -> None:
    config = ws.config()
    result = validate(ws, config, "--run-scripts", "--mounts", ext4.mountpoint)
    assert result.returncode == 0, result.output
    pre_ran = float(ws.mark("pre.ran").read_text())
    post_ran = float(ws.mark("post.ran").read_text())
    assert pre_ran < post_ran
    pre_env, post_env = env_of(ws.mark("pre.env")), env_of(ws.mark("post.env"))
    assert (pre_env["SNAPSHOT_PHASE"], post_env["SNAPSHOT_PHASE"]) == ("pre", "post")
    assert pre_env["SNAPSHOT_DRY_RUN"] == post_env["SNAPSHOT_DRY_RUN"] == "1"
    rows = {line.split("  ")[0]: line for line in result.stdout.splitlines()}
    assert "exit 0" in rows["pre-script run"] and "exit 0" in rows["post-script run"]
    assert "pre-script phase=pre" in result.stdout  # the script's own output is shown


def test_validate_run_scripts_reports_exit_codes(ws: Workspace, ext4: LoopFs) -> None:
    pre, _ = ws.scripts()
    post = ws.script("post-fails.sh", '#!/bin/sh\ndate +%s.%N > "$1/post.ran"\nexit 3\n')
    config = ws.config(pre=pre, post=post)
    result = validate(ws, config, "--run-scripts", "--json", "--mounts", ext4.mountpoint)
    assert result.returncode != 0
    doc = result.json
    assert doc["errorCode"] == "Post-ScriptExecutionFailed"
    pre_run, post_run = doc["scripts"]["pre"], doc["scripts"]["post"]
    assert (pre_run["ok"], pre_run["exitCodes"], pre_run["attempts"]) == (True, [0], 1)
    assert (post_run["ok"], post_run["exitCodes"], post_run["errorCode"]) == (
        False,
        [3],
        "Post-ScriptExecutionFailed",
    )
    assert float(ws.mark("pre.ran").read_text()) < float(ws.mark("post.ran").read_text())


def test_validate_run_scripts_gives_the_scripts_the_job_environment(
    ws: Workspace, ext4: LoopFs
) -> None:
    """``validate --run-scripts`` "reproduces [a script failure] outside a backup"
    (docs/operations.md): a script that reads SNAPSHOT_MOUNTS, as a job gives it,
    must see the mounts a job would freeze, not fail on an unset variable."""
    pre = ws.script(
        "pre-mounts.sh", '#!/bin/sh\nset -eu\necho "$SNAPSHOT_MOUNTS" > "$1/pre.mounts"\n'
    )
    _, post = ws.scripts()
    result = validate(
        ws, ws.config(pre=pre, post=post), "--run-scripts", "--mounts", ext4.mountpoint
    )
    assert result.returncode == 0, result.output
    assert ws.mark("pre.mounts").read_text().strip() == ext4.mountpoint


def test_validate_unmounted_path_fails(ws: Workspace) -> None:
    result = validate(ws, ws.config(), "--mounts", "/not/a/mount")
    assert result.returncode != 0
    assert result.stdout.splitlines()[-1] == "FAILED: UnableToOpenMount", result.output
    assert "/not/a/mount" in result.stdout


# -- run --json -------------------------------------------------------------------------

RUN_KEYS = {
    "taskId",
    "snapshotTaken",
    "consistency",
    "consistencyReason",
    "errorCode",
    "errorMessage",
    "warnings",
    "statusCode",
    "health",
    "pluginConfig",
    "seconds",
    "freezeSeconds",
    "phases",
    "mounts",
    "freeze",
    "disks",
    "scripts",
    "statusFile",
    "statusUpload",
}
SCRIPT_KEYS = {"attempts", "retries", "timedOut", "exitCodes"}


@pytest.mark.azurite
def test_run_json_prints_one_object_with_the_documented_keys(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    disks = jobkit.make_disks(azurite, 2)
    settings = ws.settings(disks, task_id="cli-json_1")
    result = ws.cli(*ws.run_args(settings, config=ws.config(), mounts=[ext4.mountpoint]))
    assert result.returncode == 0, result.output
    assert "Traceback" not in result.output
    doc = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert isinstance(doc, dict)
    assert set(doc) >= RUN_KEYS, RUN_KEYS - set(doc)
    assert (doc["taskId"], doc["consistency"], doc["consistencyReason"], doc["errorCode"]) == (
        "cli-json_1",
        "application",
        "application_consistent",
        None,
    )
    assert doc["freezeSeconds"] > 0
    # The taskId is not a UUID: its trace id is the first 16 bytes of sha256 (docs/telemetry.md).
    assert doc["traceId"] == hashlib.sha256(b"cli-json_1").hexdigest()[:32]
    assert [p["name"] for p in doc["phases"]][:2] == ["settings", "plugin_config"]
    for p in doc["phases"]:
        assert isinstance(p["seconds"], float) and p["seconds"] >= 0
        assert p["status"] in {"ok", "error", "skipped", "warning"}
    assert [d["index"] for d in doc["disks"]] == [0, 1]
    assert all(d["ok"] and d["snapshot"] and "?" not in d["blobUrl"] for d in doc["disks"])
    for which in ("pre", "post"):
        script = doc["scripts"][which]
        assert set(script) >= SCRIPT_KEYS
        assert (script["attempts"], script["retries"], script["timedOut"]) == (1, 0, False)
        assert script["exitCodes"] == [0]
    assert doc["mounts"][0]["mountpoint"] == ext4.mountpoint
    assert doc["freeze"]["thawedBy"] == "runtime"


# -- fsFreezeEnabled=false: no talk of freezing ---------------------------------------


def test_validate_with_freeze_disabled_says_nothing_is_frozen(ws: Workspace) -> None:
    """No freeze plan ("would freeze: /, /boot"), no freeze timeout in the budget, and
    the dry-run scripts get SNAPSHOT_MOUNTS empty, as a job without a freeze gives it."""
    result = validate(ws, ws.config(fsFreezeEnabled=False), "--run-scripts")
    assert result.returncode == 0, result.output
    assert "fsFreezeEnabled=false: a job freezes no filesystem" in result.stdout
    assert "would freeze" not in result.stdout
    assert "freeze timeout" not in result.stdout
    assert "worst case scripts: 20s (pre + post)" in result.stdout
    assert env_of(ws.mark("pre.env"))["SNAPSHOT_MOUNTS"] == ""
    doc = json.loads(validate(ws, ws.config(fsFreezeEnabled=False), "--json").stdout)
    assert [c["name"] for c in doc["checks"] if "freeze" in c["name"]] == ["freeze"]


def test_validate_with_freeze_enabled_still_shows_the_plan(ws: Workspace, ext4: LoopFs) -> None:
    result = validate(ws, ws.config(), "--mounts", ext4.mountpoint)
    assert result.returncode == 0, result.output
    assert f"would freeze: {ext4.mountpoint} (ext4)" in result.stdout
    assert "freeze timeout 60s" in result.stdout


@pytest.mark.azurite
def test_run_with_freeze_disabled_says_nothing_is_frozen(azurite: Azurite, ws: Workspace) -> None:
    settings = ws.settings(jobkit.make_disks(azurite, 2))
    config = ws.config(fsFreezeEnabled=False)
    result = ws.cli(*ws.run_args(settings, config=config, as_json=False))
    assert result.returncode == 0, result.output
    # Neither the log lines (stderr) nor the summary (stdout) list mounts to freeze.
    assert "to freeze" not in result.output, result.output
    assert "ready: 2 disk(s), no freeze" in result.stderr
    assert "frozen window: none (no freeze)" in result.stdout
    assert env_of(ws.mark("pre.env"))["SNAPSHOT_MOUNTS"] == ""


# -- run: usage errors and exit codes ---------------------------------------------------


def test_run_with_a_mistyped_settings_path_is_a_usage_error(ws: Workspace) -> None:
    missing = str(ws.root / "0.setings")  # the typo
    result = ws.cli(*ws.run_args(missing, config=ws.config()))
    assert result.returncode == 64, result.output
    assert result.stdout == ""
    assert f"--settings {missing}: no such file" in result.stderr
    assert "Traceback" not in result.output
    # Not a job: no status file (unknown.status), no job record, no spool directory.
    assert not (ws.state_dir / "status").exists() or not any((ws.state_dir / "status").iterdir())
    assert not (ws.state_dir / "jobs").exists() or not any((ws.state_dir / "jobs").iterdir())
    assert not (ws.spool_dir / "jobs").exists() or not any((ws.spool_dir / "jobs").iterdir())
    # A directory is not a settings file either; a bad option is a usage error too.
    directory = ws.cli(*ws.run_args(str(ws.root), config=ws.config()))
    assert directory.returncode == 64 and "not a regular file" in directory.stderr
    bad_option = ws.cli("run", "--settings", missing, "--freeze-timeout", "soon")
    assert bad_option.returncode == 64 and "--freeze-timeout" in bad_option.stderr


def test_run_help_documents_every_exit_status(ws: Workspace) -> None:
    from snapshot_runtime.core.errors import ErrorCode, SnapshotError

    result = ws.cli("run", "--help")
    assert result.returncode == 0, result.output
    epilog = result.stdout.split("exit status:", 1)[1]
    entries: dict[int, str] = {}
    current = None
    for line in epilog.splitlines():
        head = line[:7].strip()
        if head.isdigit():
            current = int(head)
            entries[current] = line[7:]
        elif current is not None and line.startswith(" " * 7):
            entries[current] += " " + line.strip()
    assert {0, 1, 64, 130} <= set(entries)
    assert "snapshot was taken" in entries[0] and "usage error" in entries[64]
    for code in ErrorCode:
        status = SnapshotError(code, "").exit_code
        assert code.value in entries[status], (code, status)
    # 64 is no job's status: a usage error cannot be mistaken for a job's outcome.
    assert all(SnapshotError(code, "").exit_code != 64 for code in ErrorCode)


# -- trace ---------------------------------------------------------------------------------


def test_trace_of_an_unknown_job_says_not_found_on_stderr(ws: Workspace) -> None:
    for ref in ("no-such-task_1", "ab" * 16):
        result = ws.cli(
            "trace", ref, "--state-dir", str(ws.state_dir), "--spool", str(ws.spool_dir)
        )
        assert result.returncode == 1, result.output
        assert result.stdout == ""
        assert result.stderr.startswith(f"not found: no job with taskId or trace id {ref!r}")


@pytest.mark.azurite
def test_trace_finds_a_job_by_trace_id_and_shows_attributes_and_signals(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    # The pre-script is killed by SIGKILL; continueBackupOnFailure lets the job go on.
    pre = ws.script("pre-killed.sh", "#!/bin/sh\nkill -KILL $$\n")
    _, post = ws.scripts()
    settings = ws.settings(jobkit.make_disks(azurite, 2), task_id="cli-trace_1")
    run = ws.cli(
        *ws.run_args(settings, config=ws.config(pre=pre, post=post), mounts=[ext4.mountpoint])
    )
    assert run.returncode == 0, run.output
    trace_id = json.loads(run.stdout)["traceId"]
    where = ("--state-dir", str(ws.state_dir), "--spool", str(ws.spool_dir), "--width", "200")

    by_task = ws.cli("trace", "cli-trace_1", *where)
    assert by_task.returncode == 0, by_task.output
    assert "killed by SIGKILL" in by_task.stdout
    # The same job by its trace id, as a tracing backend shows it (any case, UUID dashes).
    dashed = str(uuid.UUID(trace_id)).upper()
    for ref in (trace_id, dashed):
        by_trace = ws.cli("trace", ref, *where)
        assert by_trace.returncode == 0, by_trace.output
        assert by_trace.stdout == by_task.stdout
    # --attrs: every span's attributes, e.g. which disk each disk span snapshotted.
    assert "vmsnap.disk.index=" not in by_task.stdout
    attrs = ws.cli("trace", trace_id, "--attrs", *where)
    assert attrs.returncode == 0, attrs.output
    assert attrs.stdout.count("vmsnap.disk.index=") == 2
    assert "vmsnap.disk.index=0" in attrs.stdout and "vmsnap.disk.index=1" in attrs.stdout
    assert "vmsnap.script.signal=9" in attrs.stdout
    assert "sig=" not in attrs.stdout  # the SAS stays out (I5)
