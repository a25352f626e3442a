"""Issue 12: every plugin config the reference runs, we run, and say so.

Whole jobs on real parts (Azurite, a loop-mounted ext4 really frozen), and
``validate`` through the real console script. A tolerated config runs its
scripts and reports a warning code (status, job record, the sidecar's
warning metric); the stock template reports Pre-ScriptNotFound, as the
reference does. The parser's side is tests/inputs/test_plugin_config.py
(TOLERATED); the trust rules (sticky directories) tests/scripts/test_reference_tolerance.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from snapshot_sidecar.ingest import apply_record
from snapshot_sidecar.metrics import MetricValues
from snapshot_sidecar.spool_reader import SpoolReader

from snapshot_runtime.core.errors import ErrorCode
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs, loop_filesystem

ADJ = ErrorCode.PLUGIN_CONFIG_VALUE_ADJUSTED.value
CONV = ErrorCode.PLUGIN_CONFIG_VALUE_CONVERTED.value


@pytest.fixture
def ext4() -> Iterator[LoopFs]:
    with loop_filesystem("ext4") as fs:
        yield fs


def telemetry_of(doc: list[dict[str, Any]]) -> dict[str, str]:
    return {p["Key"]: p["Value"] for p in doc[0]["status"]["telemetryData"]}


def warning_metric(spool: Path, task_id: str) -> dict[str, float]:
    """The sidecar's vmsnap_job_warnings_total after ingesting the job's real record."""
    reader = SpoolReader(spool)
    (name,) = [n for n in reader.job_names() if n.startswith(task_id)]
    record = reader.read_record(name)
    assert record is not None and record.complete
    values = MetricValues()
    apply_record(values, record)
    return {labels[0]: n for labels, n in values.counters["vmsnap_job_warnings_total"].items()}


# -- a job runs the scripts of a tolerated config, and reports the warning ------------


@pytest.mark.root
@pytest.mark.azurite
def test_job_runs_a_tolerated_config_and_reports_its_warnings(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    disks = jobkit.make_disks(azurite, 1)
    status_container, status_blob, status_url = jobkit.status_blob_url(azurite)
    task_id = "tolerated-config_1"
    settings = ws.settings(disks, task_id=task_id, status_url=status_url)
    # What the reference runs: params as one string, a quoted timeout above
    # the cap, a quoted boolean, a poll period outside 1..5.
    config = ws.config(
        preScriptParams=str(ws.marks),
        postScriptParams=str(ws.marks),
        timeoutInSeconds="3600",
        continueBackupOnFailure="true",
        ScriptsExecutionPollTimeSeconds=0,
    )

    report = ws.run(settings, config_path=config, include_mounts=(ext4.mountpoint,))

    # The scripts ran (with the string param as their one argument), and the
    # job is as consistent as with a clean config: the warnings change nothing.
    assert ws.mark("pre.ran").exists() and ws.mark("post.ran").exists()
    cmdline = ws.mark("pre.cmdline").read_text().splitlines()
    assert cmdline[-1] == str(ws.marks)
    assert (report.consistency, report.consistency_reason) == (
        "application",
        "application_consistent",
    )
    assert report.snapshot_taken and report.status_code == 0 and report.exit_code == 0
    assert report.pre_script is not None and report.pre_script.ok
    assert report.plugin_config == "valid"
    # Converted first: the params string is read before the timeout.
    assert report.warnings == (CONV, ADJ)
    assert report.error_code == CONV
    assert report.health == 128  # yellow

    # Status (the blob, and the file that embeds it): success, code 0, yellow,
    # the warning codes in telemetryData.
    blob_doc = json.loads(jobkit.blob_bytes(azurite, status_container, status_blob))
    status = blob_doc[0]["status"]
    assert (status["status"], status["code"]) == ("success", "0")
    assert status["vmHealthInfo"] == {"vmHealthState": 128, "vmHealthStatusCode": 320}
    assert telemetry_of(blob_doc)["warnings"] == f"{CONV},{ADJ}"
    assert telemetry_of(blob_doc)["consistencyType"] == "applicationConsistent"
    file_doc = json.loads(ws.status_file(task_id).read_text())
    assert file_doc[0]["status"]["status"] == "success"
    assert json.loads(file_doc[0]["status"]["substatus"][0]["name"]) == blob_doc

    # The job record, and the sidecar's warning metric counted from it.
    assert report.spool_job_dir is not None
    record = json.loads((Path(report.spool_job_dir) / "record.json").read_text())
    assert record["warnings"] == [CONV, ADJ]
    assert record["outcome"] == "success"
    # Both codes are in the plugin_config group (the codes themselves: the record above).
    counted = warning_metric(ws.spool_dir, task_id)
    assert counted["plugin_config"] == 2
    assert sum(counted.values()) == 2

    # The log names each key, the value used and the fix.
    log = "\n".join(line["message"] for line in jobkit.read_json_lines(ws.log_path))
    assert 'timeoutInSeconds: "3600" is a string, used as the number 3600' in log
    assert "timeoutInSeconds: 3600 lowered to 1800" in log and "at most 1800" in log
    assert "preScriptParams: a string instead of a list, passed as one argument" in log
    assert "ScriptsExecutionPollTimeSeconds: 0 is outside 1..5, 3 used" in log
    assert 'continueBackupOnFailure: "true" is a string, used as true' in log


@pytest.mark.root
@pytest.mark.azurite
def test_stock_template_reports_pre_script_not_found_like_the_reference(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    # The template as shipped: both locations "" (with its ["", ""] params).
    disks = jobkit.make_disks(azurite, 1)
    status_container, status_blob, status_url = jobkit.status_blob_url(azurite)
    task_id = "stock-template_1"
    settings = ws.settings(disks, task_id=task_id, status_url=status_url)
    config = ws.config(
        pre="",
        post="",
        preScriptParams=["", ""],
        postScriptParams=["", ""],
        timeoutInSeconds=30,
        ScriptsExecutionPollTimeSeconds=5,
    )

    report = ws.run(settings, config_path=config, include_mounts=(ext4.mountpoint,))

    # Filesystem-consistent, Pre-ScriptNotFound as the health code (302),
    # as the reference reports it (no longer IncorrectJSONConfigFile).
    assert report.plugin_config == "valid"
    assert (report.consistency, report.consistency_reason) == (
        "filesystem",
        "pre_script_error_continued",
    )
    assert report.error_code == "Pre-ScriptNotFound"
    assert report.warnings == ("Pre-ScriptNotFound",)
    assert report.snapshot_taken and report.status_code == 1
    assert report.pre_script is not None and report.pre_script.attempts == ()
    assert "preScriptLocation is empty" in (report.pre_script.error_message or "")
    # Like the reference's pre_check: a pre-script that never started
    # quiesced nothing, so no post-script runs to resume it.
    assert report.post_script is None
    blob_doc = json.loads(jobkit.blob_bytes(azurite, status_container, status_blob))
    status = blob_doc[0]["status"]
    assert (status["status"], status["code"]) == ("success", "1")
    assert status["vmHealthInfo"] == {"vmHealthState": 128, "vmHealthStatusCode": 302}


# -- validate: each tolerated config exits 0 with its warning printed --------------------

# id, config overrides, the code, what the warning must say (key, value used, fix).
TOLERATED: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    ("timeout-1801", {"timeoutInSeconds": 1801}, ADJ,
     ("timeoutInSeconds: 1801 lowered to 1800", "set it to at most 1800")),
    ("poll-0", {"ScriptsExecutionPollTimeSeconds": 0}, ADJ,
     ("ScriptsExecutionPollTimeSeconds: 0 is outside 1..5, 3 used", "set it from 1 to 5")),
    ("poll-6", {"ScriptsExecutionPollTimeSeconds": 6}, ADJ,
     ("ScriptsExecutionPollTimeSeconds: 6 is outside 1..5, 3 used",)),
    ("retries-50", {"preScriptNoOfRetries": 50}, ADJ,
     ("preScriptNoOfRetries: 50 lowered to 10", "set it to at most 10")),
    ("poll-string", {"ScriptsExecutionPollTimeSeconds": "2"}, CONV,
     ('ScriptsExecutionPollTimeSeconds: "2" is a string, used as the number 2',
      "write it without quotes: 2")),
    ("timeout-string", {"timeoutInSeconds": "30"}, CONV,
     ('timeoutInSeconds: "30" is a string, used as the number 30',
      "write it without quotes: 30")),
    ("retries-string", {"preScriptNoOfRetries": "2"}, CONV,
     ('preScriptNoOfRetries: "2" is a string, used as the number 2',)),
    ("continue-string", {"continueBackupOnFailure": "false"}, CONV,
     ('continueBackupOnFailure: "false" is a string, used as false',
      "write it without quotes: false")),
    ("freeze-string", {"fsFreezeEnabled": "true"}, CONV,
     ('fsFreezeEnabled: "true" is a string, used as true',)),
    ("params-string", {"postScriptParams": "--flush"}, CONV,
     ("postScriptParams: a string instead of a list, passed as one argument",
      'such as ["-v", "db1"]')),
]  # fmt: skip


@pytest.mark.root
@pytest.mark.parametrize(
    ("overrides", "code", "says"),
    [(o, c, s) for _, o, c, s in TOLERATED],
    ids=[t[0] for t in TOLERATED],
)
def test_validate_tolerated_config_exits_0_with_its_warning(
    ws: Workspace, overrides: dict[str, Any], code: str, says: tuple[str, ...]
) -> None:
    config = ws.config(**overrides)
    text = ws.cli("validate", "--config", config)
    assert text.returncode == 0, text.output
    assert "Traceback" not in text.output
    lines = text.stdout.splitlines()
    assert lines[-1] == f"OK with warnings (yellow): {code}", text.output
    (warned,) = [line for line in lines if code in line and "WARN" in line]
    assert warned.split()[:2] == ["config", "WARN"]
    # The table may wrap a long detail; the whole text holds every fragment.
    flat = " ".join(text.stdout.split())
    for fragment in says:
        assert " ".join(fragment.split()) in flat, (fragment, text.stdout)

    as_json = ws.cli("validate", "--config", config, "--json")
    assert as_json.returncode == 0, as_json.output
    doc = as_json.json
    assert (doc["ok"], doc["errorCode"]) == (True, None)
    coded = [c for c in doc["checks"] if c["errorCode"] == code]
    assert coded and all(c["status"] == "warn" and c["name"] == "config" for c in coded)
    assert says[0] in " ".join(c["detail"] for c in coded)


@pytest.mark.root
def test_validate_run_scripts_runs_a_tolerated_config(ws: Workspace) -> None:
    # Not only accepted: its scripts run, the string param as their one argument.
    config = ws.config(preScriptParams=str(ws.marks), timeoutInSeconds="20")
    text = ws.cli("validate", "--config", config, "--run-scripts")
    assert text.returncode == 0, text.output
    assert text.stdout.splitlines()[-1] == f"OK with warnings (yellow): {CONV}"
    assert ws.mark("pre.ran").exists()
    assert ws.mark("pre.cmdline").read_text().splitlines()[-1] == str(ws.marks)


@pytest.mark.root
def test_validate_stock_template_fails_with_pre_script_not_found(ws: Workspace) -> None:
    config = ws.config(pre="", post="", preScriptParams=["", ""], postScriptParams=["", ""])
    text = ws.cli("validate", "--config", config)
    assert text.returncode == 1, text.output
    assert text.stdout.splitlines()[-1] == "FAILED: Pre-ScriptNotFound"
    flat = " ".join(text.stdout.split())
    assert "preScriptLocation is empty" in flat
    assert "set it to the full path of the pre-script" in flat
    doc = ws.cli("validate", "--config", config, "--json").json
    assert (doc["ok"], doc["errorCode"]) == (False, "Pre-ScriptNotFound")
    by_name = {c["name"]: c for c in doc["checks"]}
    assert by_name["post-script"]["errorCode"] == "Post-ScriptNotFound"


@pytest.mark.root
@pytest.mark.parametrize("timeout", [0, -5, "0"])
def test_validate_timeout_zero_or_less_stays_refused(ws: Workspace, timeout: object) -> None:
    # The reference times such a script out at once and leaves it running.
    text = ws.cli("validate", "--config", ws.config(timeoutInSeconds=timeout))
    assert text.returncode == 1, text.output
    assert text.stdout.splitlines()[-1] == "FAILED: IncorrectJSONConfigFile"
    assert "timeoutInSeconds: must be an integer from 1 to 1800" in " ".join(text.stdout.split())


@pytest.mark.root
def test_quoted_retries_with_a_failing_script_retry_and_end(ws: Workspace) -> None:
    # The reference hangs about 30 min on "preScriptNoOfRetries": "2" with a
    # failing script; here the script really runs 3 times and the run ends.
    fail = ws.script("fail.sh", '#!/bin/sh\necho "attempt $SNAPSHOT_ATTEMPT" >&2\nexit 3\n')
    config = ws.config(pre=fail, post=ws.scripts()[1], preScriptNoOfRetries="2")
    result = ws.cli("validate", "--config", config, "--run-scripts", "--json", timeout=60.0)
    assert result.returncode == 1, result.output
    doc = result.json
    assert doc["errorCode"] == "Pre-ScriptExecutionFailed"
    pre = doc["scripts"]["pre"]
    assert (pre["attempts"], pre["exitCodes"], pre["timedOut"]) == (3, [3, 3, 3], False)
    assert "attempt 3" in pre["stderr"]
    coded = [c for c in doc["checks"] if c["errorCode"] == CONV]
    assert coded and "preScriptNoOfRetries" in coded[0]["detail"]
    assert result.seconds < 30, result.seconds
