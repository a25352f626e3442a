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
