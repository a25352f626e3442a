"""Whole snapshot jobs on real parts: Azurite, loop filesystems, real freezes.

Every job freezes only a test filesystem (``include_mounts`` / ``--mounts``),
never the host's. Jobs run in-process (``run_job``) when the test needs the
report object (monotonic timestamps, per-disk start times), and through the
real console script when the process itself matters (SIGKILL, exit codes,
what reaches stdout/stderr). Run with ``-s`` to see the measured figures.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from snapshot_runtime.core.phases import PHASES
from snapshot_runtime.inputs.plugin_config_file import find_config_path
from snapshot_runtime.job import run as job_module
from snapshot_runtime.job.records import JobReport
from snapshot_runtime.job.summary import report_json, report_text
from snapshot_runtime.snapshot.azure_blob import AzureBlobSnapshotter
from tests.freeze_support import wait_frozen, writable_within
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.faultproxy import FaultProxy
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs, loop_filesystem
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.azurite]

SNAPSHOT_REQUEST = "comp=snapshot"


def mounts(fs: LoopFs) -> tuple[str, ...]:
    return (fs.mountpoint,)


def phase(report: JobReport, name: str) -> Any:
    found = [p for p in report.phases if p.name == name]
    assert len(found) == 1, f"phase {name}: {[p.name for p in report.phases]}"
    return found[0]


def assert_snapshots_exist(azurite: Azurite, report: JobReport, indexes: list[int]) -> None:
    for i in indexes:
        disk = report.disks[i]
        assert disk.ok, disk.error
        assert jobkit.snapshot_exists(azurite, disk.blob_url, disk.snapshot), disk


# -- 1. the application-consistent job -----------------------------------------------


def test_application_consistent_job_three_disks(azurite: Azurite, ws: Workspace, ext4) -> None:
    disks = jobkit.make_disks(azurite, 3)
    status_container, status_blob, status_url = jobkit.status_blob_url(azurite)
    task_id = "app-consistent_1"
    settings = ws.settings(disks, task_id=task_id, status_url=status_url)

    report = ws.run(settings, config_path=ws.config(), include_mounts=mounts(ext4))

    assert (report.consistency, report.consistency_reason) == (
        "application",
        "application_consistent",
    )
    assert (report.error_code, report.warnings, report.status_code) == (None, (), 0)
    assert report.snapshot_taken and report.exit_code == 0
    assert report.plugin_config == "valid"
    assert [d.index for d in report.disks] == [0, 1, 2]
    assert_snapshots_exist(azurite, report, [0, 1, 2])

    # Phases in the documented order, each exactly once.
    assert [p.name for p in report.phases] == list(PHASES)
    assert all(p.status == "ok" for p in report.phases), report.phases

    # A real freeze of the planned mount, proven writable after the thaw.
    assert report.freeze is not None and report.freeze.ok
    assert report.freeze_seconds > 0
    assert report.freeze_seconds == report.freeze.window_seconds
    (mount,) = report.freeze.mounts
    assert (mount.mountpoint, mount.frozen, mount.thawed, mount.probe_ok) == (
        ext4.mountpoint,
        True,
        True,
        True,
    )
    assert (report.freeze.timed_out, report.freeze.thawed_by) == (False, "runtime")

    # The pre-script saw the contract environment, ran before the freeze; the
    # post-script ran after the thaw.
    env = dict(
        line.split("=", 1) for line in ws.mark("pre.env").read_text().splitlines() if "=" in line
    )
    assert env["SNAPSHOT_PHASE"] == "pre"
    assert env["SNAPSHOT_MOUNTS"] == ext4.mountpoint
    assert env["SNAPSHOT_TASK_ID"] == task_id
    freeze = phase(report, "freeze")
    thaw = phase(report, "thaw")
    assert float(ws.mark("pre.ran").read_text()) < freeze.started_at
    assert float(ws.mark("post.ran").read_text()) > thaw.started_at + thaw.seconds
    assert report.pre_script is not None and report.pre_script.ok
    assert report.post_script is not None and report.post_script.ok

    # The status file and the status blob: terminal, application consistent (2).
    file_doc = json.loads(ws.status_file(task_id).read_text())
    assert report.status_file == str(ws.status_file(task_id))
    assert file_doc[0]["status"]["status"] == "success"
    assert file_doc[0]["status"]["code"] == "0"
    assert jobkit.status_inner(file_doc)["snapshotConsistency"] == 2
    assert report.status_upload == "ok"
    blob_doc = json.loads(jobkit.blob_bytes(azurite, status_container, status_blob))
    status = blob_doc[0]["status"]
    assert (status["status"], status["code"], status["taskId"]) == ("success", "0", task_id)
    assert jobkit.status_inner(blob_doc)["snapshotConsistency"] == 2
    assert [s["isSuccessful"] for s in status["snapshotInfo"]] == [True, True, True]
    assert [
        (jobkit.strip(s["snapshotUri"]), parse_qs(urlsplit(s["snapshotUri"]).query)["snapshot"])
        for s in status["snapshotInfo"]
    ] == [(d.blob_url, [d.snapshot]) for d in report.disks]


# -- 2. I1: log file and state dir on the frozen filesystem --------------------------


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_log_state_and_spool_on_the_frozen_filesystem(
    azurite: Azurite, ws: Workspace, fstype: str
) -> None:
    with loop_filesystem(fstype) as fs:
        disks = jobkit.make_disks(azurite, 2)
        task_id = f"i1-{fstype}_1"
        settings = ws.settings(disks, task_id=task_id)
        log_path = os.path.join(fs.mountpoint, "log", "extension.log")
        state_dir = os.path.join(fs.mountpoint, "state")
        spool_dir = os.path.join(fs.mountpoint, "spool")  # held in memory while frozen
        console = jobkit.Capture()
        ticker = jobkit.Ticker(ws, fs.mountpoint)
        try:
            started = time.monotonic()
            report = ws.run(
                settings,
                config_path=ws.config(),
                include_mounts=mounts(fs),
                freeze_timeout_seconds=20,
                log_path=log_path,
                state_dir=state_dir,
                spool_dir=spool_dir,
                console=console,
            )
            elapsed = time.monotonic() - started
        finally:
            ticker.stop()

        assert report.consistency == "application", report.error_message
        freeze = report.freeze
        assert freeze is not None and freeze.ok
        assert (freeze.timed_out, freeze.thawed_by) == (False, "runtime")
        assert 0 < report.freeze_seconds < 5.0
        assert elapsed < 10.0
        assert freeze.first_freeze_at is not None and freeze.last_thaw_at is not None

        # The freeze was real: the separate writer (a stamp every ~2 ms, each stamp
        # taken before its write) wrote before and after the window, and between
        # FIFREEZE's return (writers may pass while the kernel is still freezing)
        # and the thaw at most the one stamp whose write the freeze held.
        (mount,) = freeze.mounts
        frozen_at = freeze.first_freeze_at + mount.freeze_seconds
        stamps = ticker.stamps()
        inside = [t for t in stamps if frozen_at < t < freeze.last_thaw_at]
        assert len(inside) <= 1, ([t - frozen_at for t in inside], freeze.last_thaw_at - frozen_at)
        assert any(t < freeze.first_freeze_at for t in stamps)
        assert any(t > freeze.last_thaw_at for t in stamps)
        gap, _ = ticker.largest_gap()
        print(
            f"\n[I1 {fstype}] frozen window {freeze.window_seconds * 1000:.1f} ms with the log, "
            f"state and spool on the frozen fs; longest writer gap {gap * 1000:.1f} ms; "
            f"job {elapsed:.2f} s"
        )

        # The status file is on the frozen fs, complete and terminal.
        status_file = Path(state_dir, "status", f"{task_id}.status")
        assert report.status_file == str(status_file)
        assert jobkit.status_inner(json.loads(status_file.read_text()))["snapshotConsistency"] == 2

        # Every log line is there, in order, and the console saw the same INFO+ lines.
        lines = jobkit.read_json_lines(log_path)
        times = [line["time"] for line in lines]
        assert times == sorted(times)
        messages = [line["message"] for line in lines]
        expected_order = [
            "task i1-",
            "plugin config ",
            "pre-script ok",
            "ready: 1 mount(s) to freeze",
            "filesystems frozen",
            "frozen window ",
            "accepts writes again",
            "disk ",
            "post-script ok",
            "job done: consistency=application",
        ]
        positions = [
            next((i for i, m in enumerate(messages) if p in m), -1) for p in expected_order
        ]
        assert -1 not in positions and positions == sorted(positions), list(
            zip(expected_order, positions, strict=True)
        )
        assert messages[-1].startswith("job done")
        info_messages = [
            m for line, m in zip(lines, messages, strict=True) if line["level"] != "DEBUG"
        ]
        console_lines = console.getvalue().splitlines()
        assert len(console_lines) == len(info_messages)
        for console_line, message in zip(console_lines, info_messages, strict=True):
            assert console_line.endswith(message.splitlines()[0]) or message in console_line
        assert all(line["task_id"] == task_id for line in lines)


# -- 3. I4: SIGKILL of the runtime while frozen ----------------------------------------


def test_sigkill_while_frozen_thaws_within_a_second(
    azurite: Azurite, ws: Workspace, ext4, proxy: FaultProxy
) -> None:
    proxy.set_latency(30.0, match=SNAPSHOT_REQUEST)  # the job sits frozen in the snapshot
    disks = jobkit.make_disks(azurite, 1, endpoints={0: proxy.endpoint()})
    settings = ws.settings(disks, task_id="sigkill_1")
    args = ws.run_args(
        settings,
        config=ws.config(),
        mounts=mounts(ext4),
        extra=["--freeze-timeout", "20", "--quiet"],
    )
    proc = ws.start_cli(*args)

    blocked = wait_frozen(ext4.mountpoint, proc)
    watchdogs = jobkit.child_pids(proc.pid)
    for pid in watchdogs:
        ws.adopt_pid(pid)
    assert not blocked.wait(0.2), "the probe should still be held by the freeze"
    killed_at = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    assert blocked.wait(5.0), "still frozen 5 s after the runtime was SIGKILLed"
    assert blocked.done_at is not None and blocked.error is None
    thawed_after = blocked.done_at - killed_at
    proc.wait(timeout=5)
    print(f"\n[I4] SIGKILL of the runtime -> held write+fsync done in {thawed_after * 1000:.1f} ms")
    assert thawed_after < 1.0
    assert writable_within(ext4.mountpoint, 1.0)

    # The watchdog thawed on EOF of the dead runtime's pipe and said so.
    reports = wait_until(lambda: ws.watchdog_reports(proc.pid), 3.0, "the watchdog's report")
    assert reports, "no watchdog report in the spool"
    report = json.loads(Path(reports[-1]).read_text())
    assert report["reason"] == "eof"
    assert [m["mountpoint"] for m in report["mounts"]] == [ext4.mountpoint]


# -- 4. a slow disk does not serialise the others ----------------------------------------


def test_slow_disk_does_not_serialise_the_others(
    azurite: Azurite, ws: Workspace, ext4, proxy: FaultProxy
) -> None:
    latency = 1.5
    proxy.set_latency(latency, match=SNAPSHOT_REQUEST)
    # The slow disk first: a sequential implementation would start the others after it.
    disks = jobkit.make_disks(azurite, 4, endpoints={0: proxy.endpoint()})
    report = ws.run(ws.settings(disks), config_path=ws.config(), include_mounts=mounts(ext4))

    assert report.consistency == "application", report.error_message
    assert_snapshots_exist(azurite, report, [0, 1, 2, 3])
    slow, fast = report.disks[0], report.disks[1:]
    starts = [d.started_at for d in report.disks]
    snapshot_phase = phase(report, "snapshot").seconds
    print(
        f"\n[slow disk] slow {slow.duration_seconds:.3f} s; others "
        f"{', '.join(f'{d.duration_seconds:.3f}' for d in fast)} s; start spread "
        f"{(max(starts) - min(starts)) * 1000:.1f} ms; snapshot phase {snapshot_phase:.3f} s; "
        f"frozen window {report.freeze_seconds:.3f} s"
    )
    assert slow.duration_seconds >= latency
    assert all(d.duration_seconds < 0.5 for d in fast)
    assert max(starts) - min(starts) < 0.25
    slow_end = slow.started_at + slow.duration_seconds
    assert all(d.started_at + d.duration_seconds < slow_end - 1.0 for d in fast)
    assert slow.duration_seconds <= snapshot_phase < slow.duration_seconds + 0.5
    assert report.freeze_seconds < slow.duration_seconds + 1.0


# -- 5. one disk with a wrong SAS fails alone ----------------------------------------------


def test_wrong_sas_fails_one_disk_and_leaks_nothing(azurite: Azurite, ws: Workspace, ext4) -> None:
    good = jobkit.make_disks(azurite, 3)
    disks = [good[0], jobkit.wrong_signature(good[1]), good[2]]
    status_container, status_blob, status_url = jobkit.status_blob_url(azurite)
    task_id = "wrong-sas_1"
    console = jobkit.Capture()
    report = ws.run(
        ws.settings(disks, task_id=task_id, status_url=status_url),
        config_path=ws.config(),
        include_mounts=mounts(ext4),
        console=console,
    )

    assert report.exit_code != 0
    assert (report.consistency, report.consistency_reason) == ("none", "snapshot_partially_failed")
    assert report.error_code == "SnapshotPartiallyFailed"
    assert not report.snapshot_taken
    assert [d.ok for d in report.disks] == [True, False, True]
    assert_snapshots_exist(azurite, report, [0, 2])
    assert jobkit.snapshots_of(azurite, report.disks[1].blob_url) == []
    assert report.disks[1].error

    blob = jobkit.blob_bytes(azurite, status_container, status_blob)
    blob_doc = json.loads(blob)
    assert (blob_doc[0]["status"]["status"], blob_doc[0]["status"]["code"]) == ("error", "761")
    assert jobkit.status_inner(blob_doc)["snapshotConsistency"] == 0

    secrets = jobkit.secrets_of([*good, *disks, status_url])
    artifacts = {
        "report text": report_text(report),
        "report json": json.dumps(report_json(report)),
        "report repr": repr(report),
        "console": console.getvalue(),
        "log file": ws.log_path.read_text(),
        "status file": ws.status_file(task_id).read_text(),
        "status blob": blob.decode(),
    }
    assert "SnapshotPartiallyFailed" in artifacts["report text"]
    found = {name: jobkit.leaks(text, secrets) for name, text in artifacts.items()}
    assert found == {name: [] for name in artifacts}


# -- 6. the freeze deadline thaws under a snapshot still in flight ------------------------


def test_freeze_timeout_thaws_by_the_deadline(
    azurite: Azurite, ws: Workspace, ext4, proxy: FaultProxy
) -> None:
    proxy.set_latency(3.0, match=SNAPSHOT_REQUEST)
    disks = jobkit.make_disks(azurite, 1, endpoints={0: proxy.endpoint()})
    args = ws.run_args(
        ws.settings(disks, task_id="freeze-timeout_1"),
        config=ws.config(),
        mounts=mounts(ext4),
        # The snapshot request outlives the 1 s freeze: only the deadline can thaw.
        extra=["--freeze-timeout", "1", "--snapshot-deadline", "8"],
    )
    proc = ws.start_cli(*args)
    blocked = wait_frozen(ext4.mountpoint, proc)
    detected_at = time.monotonic()
    assert blocked.wait(3.0), "not thawed by the 1 s deadline"
    assert blocked.done_at is not None
    held = blocked.done_at - detected_at
    assert proc.poll() is None, "the thaw must come from the deadline, not the job's end"
    assert writable_within(ext4.mountpoint, 1.0)
    stdout, stderr = proc.communicate(timeout=30)
    print(f"\n[freeze timeout] probe released {held * 1000:.0f} ms after the freeze was seen")
    assert held < 1.5

    data = json.loads(stdout)
    assert data["freeze"]["timedOut"] is True
    assert data["freeze"]["thawedBy"] == "deadline"
    assert data["errorCode"] == "FsFreezeTimeout"
    assert "FsFreezeTimeout" in data["warnings"]
    assert (data["consistency"], data["consistencyReason"]) == ("crash", "freeze_timeout")
    assert 0.9 <= data["freezeSeconds"] < 1.6
    assert data["mounts"][0]["writableAfterThaw"] is True
    (disk,) = data["disks"]
    assert disk["ok"] and jobkit.snapshot_exists(azurite, disk["blobUrl"], disk["snapshot"])
    assert proc.returncode == 0, stderr
    assert writable_within(ext4.mountpoint, 1.0)


# -- 7. outcome rules at job level -------------------------------------------------------


FAILING_PRE = "#!/bin/sh\ndate +%s.%N > \"$1/pre.ran\"\necho 'quiesce failed' >&2\nexit 1\n"
SLEEPING_PRE = '#!/bin/sh\ndate +%s.%N > "$1/pre.ran"\nexec sleep 30\n'


def test_pre_script_failure_continued_is_filesystem(azurite: Azurite, ws: Workspace, ext4) -> None:
    pre, post = ws.scripts(pre_body=FAILING_PRE)
    report = ws.run(
        ws.settings(jobkit.make_disks(azurite, 2)),
        config_path=ws.config(pre=pre, post=post, continueBackupOnFailure=True),
        include_mounts=mounts(ext4),
    )
    assert (report.consistency, report.consistency_reason) == (
        "filesystem",
        "pre_script_error_continued",
    )
    assert report.warnings == ("Pre-ScriptExecutionFailed",)
    assert report.error_code == "Pre-ScriptExecutionFailed"
    assert report.snapshot_taken and report.exit_code == 0 and report.status_code == 1
    assert report.freeze is not None and report.freeze.ok
    assert_snapshots_exist(azurite, report, [0, 1])
    assert report.pre_script is not None and report.pre_script.exit_codes == (1,)
    assert "quiesce failed" in report.pre_script.stderr
    assert ws.mark("post.ran").exists()


def test_pre_script_failure_cancelled_takes_no_snapshot(
    azurite: Azurite, ws: Workspace, ext4
) -> None:
    pre, post = ws.scripts(pre_body=FAILING_PRE)
    disks = jobkit.make_disks(azurite, 2)
    report = ws.run(
        ws.settings(disks),
        config_path=ws.config(pre=pre, post=post, continueBackupOnFailure=False),
        include_mounts=mounts(ext4),
    )
    assert (report.consistency, report.consistency_reason) == (
        "none",
        "pre_script_error_cancelled",
    )
    assert report.error_code == "Pre-ScriptExecutionFailed"
    assert not report.snapshot_taken and report.exit_code != 0
    assert report.freeze is None and report.disks == ()
    assert all(jobkit.snapshots_of(azurite, jobkit.strip(url)) == [] for url in disks)
    assert ws.mark("post.ran").exists(), "the post-script runs even after a cancel"


def test_pre_script_timeout(azurite: Azurite, ws: Workspace, ext4) -> None:
    pre, post = ws.scripts(pre_body=SLEEPING_PRE)
    report = ws.run(
        ws.settings(jobkit.make_disks(azurite, 1)),
        config_path=ws.config(pre=pre, post=post, timeoutInSeconds=1),
        include_mounts=mounts(ext4),
    )
    assert report.error_code == "Pre-ScriptTimeout"
    assert report.warnings == ("Pre-ScriptTimeout",)
    assert (report.consistency, report.consistency_reason) == (
        "filesystem",
        "pre_script_error_continued",
    )
    assert report.pre_script is not None and report.pre_script.timed_out
    assert report.pre_script.duration_seconds < 4.0  # killed, not waited for
    assert_snapshots_exist(azurite, report, [0])
    assert ws.mark("post.ran").exists()


def test_no_plugin_config_is_filesystem(
    azurite: Azurite, ws: Workspace, ext4, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real lookup, pointed at paths that do not exist: the "absent" case
    # whatever this host has in /etc/azure.
    missing = str(ws.root / "etc-azure" / "missing.json")
    monkeypatch.setattr(
        job_module,
        "find_config_path",
        partial(find_config_path, default_path=missing, legacy_path=missing),
    )
    report = ws.run(ws.settings(jobkit.make_disks(azurite, 2)), include_mounts=mounts(ext4))
    assert report.plugin_config == "absent"
    assert (report.consistency, report.consistency_reason) == ("filesystem", "no_plugin_config")
    assert (report.error_code, report.warnings, report.status_code) == (None, (), 1)
    assert report.pre_script is None and report.post_script is None
    assert report.freeze is not None and report.freeze.ok
    assert_snapshots_exist(azurite, report, [0, 1])


def test_explicit_missing_config_is_invalid(azurite: Azurite, ws: Workspace, ext4) -> None:
    report = ws.run(
        ws.settings(jobkit.make_disks(azurite, 1)),
        config_path=str(ws.root / "no-such-config.json"),
        include_mounts=mounts(ext4),
    )
    assert report.plugin_config == "invalid"
    assert (report.consistency, report.consistency_reason) == (
        "filesystem",
        "plugin_config_invalid",
    )
    assert report.error_code == "IncorrectJSONConfigFile"
    assert report.warnings == ("IncorrectJSONConfigFile",)
    assert report.snapshot_taken


def test_freeze_disabled_is_filesystem_and_freezes_nothing(
    azurite: Azurite, ws: Workspace, ext4
) -> None:
    report = ws.run(
        ws.settings(jobkit.make_disks(azurite, 2)),
        config_path=ws.config(fsFreezeEnabled=False),
        include_mounts=mounts(ext4),
    )
    assert (report.consistency, report.consistency_reason) == ("filesystem", "freeze_disabled")
    assert (report.error_code, report.warnings, report.status_code) == (None, (), 1)
    assert report.freeze is None and report.freeze_seconds == 0
    names = [p.name for p in report.phases]
    assert "freeze" not in names and "thaw" not in names and "snapshot" in names
    assert_snapshots_exist(azurite, report, [0, 1])
    assert ws.mark("pre.ran").exists() and ws.mark("post.ran").exists()


def test_unmounted_path_single_disk_falls_back_to_crash(
    azurite: Azurite, ws: Workspace, ext4
) -> None:
    not_a_mount = os.path.join(ext4.mountpoint, "not-a-mount")
    os.mkdir(not_a_mount)
    report = ws.run(
        ws.settings(jobkit.make_disks(azurite, 1)),
        config_path=ws.config(),
        include_mounts=(not_a_mount,),
    )
    assert (report.consistency, report.consistency_reason) == (
        "crash",
        "freeze_failed_crash_fallback",
    )
    assert report.error_code == "UnableToOpenMount"
    assert report.snapshot_taken and report.exit_code == 0 and report.status_code == 1
    assert_snapshots_exist(azurite, report, [0])
    assert report.freeze is None or not any(m.frozen for m in report.freeze.mounts)


def test_unmounted_path_two_disks_takes_no_snapshot(azurite: Azurite, ws: Workspace, ext4) -> None:
    disks = jobkit.make_disks(azurite, 2)
    report = ws.run(
        ws.settings(disks),
        config_path=ws.config(),
        include_mounts=("/not/a/mount",),
    )
    assert (report.consistency, report.consistency_reason) == ("none", "freeze_failed")
    assert report.error_code == "UnableToOpenMount"
    assert not report.snapshot_taken and report.exit_code != 0
    assert all(jobkit.snapshots_of(azurite, jobkit.strip(url)) == [] for url in disks)
    assert ws.mark("post.ran").exists()


def test_exception_inside_the_frozen_window_thaws_before_logging(
    azurite: Azurite, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """I1 on the error path: an unexpected exception while frozen (a bug in the
    snapshot code, a telemetry listener) must thaw at once, not flush the held
    log lines into the frozen filesystem first and wait for the deadline."""

    def explode(self: AzureBlobSnapshotter) -> None:
        raise RuntimeError("unexpected failure inside the frozen window")

    monkeypatch.setattr(AzureBlobSnapshotter, "snapshot_all", explode)
    with loop_filesystem("ext4") as fs:
        started = time.monotonic()
        with pytest.raises(RuntimeError):  # or a report: either way, thawed at once
            ws.run(
                ws.settings(jobkit.make_disks(azurite, 1)),
                config_path=ws.config(),
                include_mounts=mounts(fs),
                freeze_timeout_seconds=10,
                log_path=os.path.join(fs.mountpoint, "extension.log"),
            )
        elapsed = time.monotonic() - started
        assert writable_within(fs.mountpoint, 1.0)
    print(f"\n[I1 error path] job ended {elapsed:.2f} s after start (freeze timeout 10 s)")
    assert elapsed < 5.0, "the held log lines were written into the frozen fs before the thaw"


# -- 8. settings errors through the real CLI ---------------------------------------------


def _settings_cases(good: str) -> dict[str, tuple[str | None, str]]:
    """case -> (settings file text, or None for a missing file; expected code)."""
    no_sig = good.split("?", 1)[0] + "?sv=2021-08-06&sr=b&sp=r"
    raw_obj = json.dumps({"blobSASUri": [good]})
    return {
        "bad_base64": (
            json.dumps(jobkit.settings_doc([], task_id="t_1", object_str=raw_obj)),
            "InvalidSettings",
        ),
        "url_without_sig": (
            json.dumps(jobkit.settings_doc([good, no_sig], task_id="t_1")),
            "InvalidSettings",
        ),
        "empty_disk_list": (json.dumps(jobkit.settings_doc([], task_id="t_1")), "InvalidDiskList"),
        "not_json": ('{"runtimeSettings": [{"objectStr": "' + good + '" ', "InvalidSettings"),
        "missing_file": (None, "InvalidSettings"),
    }


@pytest.mark.parametrize(
    "case", ["bad_base64", "url_without_sig", "empty_disk_list", "not_json", "missing_file"]
)
def test_settings_errors_through_the_cli(azurite: Azurite, ws: Workspace, case: str) -> None:
    (good,) = jobkit.make_disks(azurite, 1)
    text, code = _settings_cases(good)[case]
    path = str(ws.root / "missing.settings") if text is None else ws.settings([], raw=text)
    result = ws.cli(*ws.run_args(path, mounts=["/not/a/mount"], as_json=False))

    if text is None:
        # A --settings path that does not exist is the operator's typo, refused by the
        # CLI before any job starts (issue 16; tests/test_cli.py): a usage error, no
        # unknown.status. run_job itself (the handler's path) still reports
        # InvalidSettings for it: test_caller_console_stream_is_left_open.
        assert result.returncode == 64 and "no such file" in result.stderr, result.output
        assert not (ws.state_dir / "status" / "unknown.status").exists()
        return
    assert result.returncode != 0
    assert f"error: {code}" in result.stdout, result.output
    assert "Traceback" not in result.output
    assert "InternalError" not in result.output
    secrets = jobkit.secrets_of([good])
    assert jobkit.leaks(result.output, secrets) == []
    assert jobkit.leaks(ws.log_path.read_text(), secrets) == []
    status = ws.state_dir / "status" / "unknown.status"
    assert json.loads(status.read_text())[0]["status"]["code"] == str(
        {"InvalidSettings": 11, "InvalidDiskList": 17}[code]
    )


# -- 9. I5: no secret anywhere ------------------------------------------------------------

PROC_DUMP = """\
#!/bin/sh
set -eu
marks="$1"
{
  echo "== own cmdline"; tr '\\0' '\\n' < /proc/$$/cmdline
  echo "== own environ"; tr '\\0' '\\n' < /proc/$$/environ
  echo "== runtime cmdline"; tr '\\0' '\\n' < /proc/$PPID/cmdline
  echo "== argv"; printf '%s\\n' "$0" "$@"
} > "$marks/$SNAPSHOT_PHASE.proc"
touch "$marks/$SNAPSHOT_PHASE.ran"
"""


def test_no_secret_in_any_artifact(azurite: Azurite, ws: Workspace, ext4) -> None:
    disks = jobkit.make_disks(azurite, 2)
    status_container, status_blob, status_url = jobkit.status_blob_url(azurite)
    logs_url = azurite.sas_url(status_container, "job.Logs.txt")
    pre = ws.script("pre.sh", PROC_DUMP)
    post = ws.script("post.sh", PROC_DUMP)
    config = ws.config(pre=pre, post=post)
    # A full job (JSON report), then one with a rejected SAS (error paths, text report).
    bad = jobkit.wrong_signature(jobkit.make_disks(azurite, 1)[0])
    runs = []
    artifacts: dict[str, str] = {}
    for n, (job_disks, as_json) in enumerate([(disks, True), ([*disks, bad], False)]):
        task_id = f"secrets-{n}_1"
        settings = ws.settings(
            job_disks,
            task_id=task_id,
            status_url=status_url,
            logs_url=logs_url,
            name=f"{n}.settings",
        )
        result = ws.cli(*ws.run_args(settings, config=config, mounts=mounts(ext4), as_json=as_json))
        runs.append(result)
        artifacts[f"run {n} stdout"] = result.stdout
        artifacts[f"run {n} stderr"] = result.stderr
        artifacts[f"run {n} status file"] = ws.status_file(task_id).read_text()
        artifacts[f"run {n} status blob"] = jobkit.blob_bytes(
            azurite, status_container, status_blob
        ).decode()
        for phase_name in ("pre", "post"):
            artifacts[f"run {n} {phase_name}-script /proc"] = ws.mark(
                f"{phase_name}.proc"
            ).read_text()
    artifacts["log file"] = ws.log_path.read_text()

    first, second = runs
    assert first.returncode == 0, first.output
    assert first.json["consistency"] == "application"
    assert second.returncode != 0 and "SnapshotPartiallyFailed" in second.stdout
    # The scripts really dumped what the kernel shows for them and their parent.
    assert "SNAPSHOT_PHASE=pre" in artifacts["run 0 pre-script /proc"]
    assert "snapshot-runtime" in artifacts["run 0 pre-script /proc"]

    # Every SAS signature, the account key, and each run's protected objectStr
    # (base64 of the disk list: leaking it leaks every disk's SAS).
    secrets = [
        *jobkit.secrets_of([*disks, bad, status_url, logs_url]),
        *(jobkit.protected_values(ws.root / f"{n}.settings") for n in range(2)),
    ]
    assert len(secrets) >= 7
    # Sanity: these are the strings the settings really carry.
    settings_text = (ws.root / "1.settings").read_text()
    assert jobkit.raw_sig(status_url) in settings_text and jobkit.raw_sig(logs_url) in settings_text
    found = {name: jobkit.leaks(text, secrets) for name, text in artifacts.items()}
    assert found == {name: [] for name in artifacts}


# -- interrupted and misconfigured jobs still resume the application ----------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_while_frozen_thaws_and_still_runs_the_post_script(
    azurite: Azurite, ws: Workspace, ext4, proxy: FaultProxy, signum: signal.Signals
) -> None:
    """Ctrl-C, or systemd stopping the unit, while frozen: thaw at once, and like
    any cancel after the pre-script, run the post-script (the application is
    quiesced) and leave a terminal status, not "transitioning" forever."""
    proxy.set_latency(30.0, match=SNAPSHOT_REQUEST)
    disks = jobkit.make_disks(azurite, 1, endpoints={0: proxy.endpoint()})
    task_id = f"interrupted-{signum.name}_1"
    args = ws.run_args(
        ws.settings(disks, task_id=task_id),
        config=ws.config(),
        mounts=mounts(ext4),
        extra=["--freeze-timeout", "20", "--quiet"],
    )
    proc = ws.start_cli(*args)
    blocked = wait_frozen(ext4.mountpoint, proc)
    for pid in jobkit.child_pids(proc.pid):
        ws.adopt_pid(pid)
    sent_at = time.monotonic()
    os.kill(proc.pid, signum)
    assert blocked.wait(5.0), f"still frozen 5 s after {signum.name}"
    assert blocked.done_at is not None
    thawed_after = blocked.done_at - sent_at
    proc.communicate(timeout=20)
    print(f"\n[{signum.name}] held write+fsync done {thawed_after * 1000:.1f} ms after the signal")
    assert thawed_after < 1.0
    if signum == signal.SIGINT:
        assert proc.returncode == 130
    assert proc.returncode != 0
    assert ws.mark("pre.ran").exists()
    assert ws.mark("post.ran").exists(), "the application was left quiesced"
    status = json.loads(ws.status_file(task_id).read_text())[0]["status"]
    assert status["status"] != "transitioning" and status["code"] != "4", status["code"]


@pytest.mark.parametrize("value", ["0", "nan"])
def test_invalid_freeze_timeout_is_refused_before_any_script_runs(
    azurite: Azurite, ws: Workspace, ext4, value: str
) -> None:
    disks = jobkit.make_disks(azurite, 1)
    result = ws.cli(
        *ws.run_args(
            ws.settings(disks, task_id="bad-timeout_1"),
            config=ws.config(),
            mounts=mounts(ext4),
            as_json=False,
            extra=["--freeze-timeout", value],
        )
    )
    assert result.returncode != 0, result.output
    assert "Traceback" not in result.output
    assert "freeze-timeout" in result.stderr, result.output
    # Refused up front: nothing quiesced (and left quiesced), nothing snapshotted.
    assert not ws.mark("pre.ran").exists()
    assert jobkit.snapshots_of(azurite, jobkit.strip(disks[0])) == []


def test_default_snapshot_deadline_ends_before_the_freeze_deadline() -> None:
    """JobOptions: "Snapshot requests must finish before the freeze deadline thaws
    underneath them" holds for every valid freeze timeout, short ones included."""
    for freeze_timeout in (0.5, 1.0, 2.0, 5.0, 11.0, 60.0):
        options = job_module.JobOptions(settings_path="-", freeze_timeout_seconds=freeze_timeout)
        assert 0 < options.snapshot_deadline() < freeze_timeout, freeze_timeout


def test_caller_console_stream_is_left_open(ws: Workspace) -> None:
    """``JobOptions.console`` belongs to the caller: the job writes to it, never closes it."""
    console = io.StringIO()
    report = ws.run(str(ws.root / "missing.settings"), console=console)
    assert report.error_code == "InvalidSettings"
    assert not console.closed
    assert "settings rejected" in console.getvalue()
