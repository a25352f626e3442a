"""The extension handler end to end: the agent's files in, status files out.

Each test lays out a handler directory as the guest agent does, with settings
encrypted to a real transport certificate as the platform encrypts them, and
runs the handler commands. The jobs run for real (Azurite, a loop ext4
filesystem, pre/post-scripts); ``handler.conf`` limits the freeze to the
loop filesystem, so no test ever freezes the host's own filesystems.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from snapshot_runtime import __version__
from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.handler.commands import handler_main
from snapshot_runtime.handler.guards import ProcessedTasks
from snapshot_runtime.job.lock import JobLock
from tests.support.azurite import Azurite
from tests.support.handlerkit import (
    SNAPSHOT_KEYS,
    STATUS_KEYS,
    TOP_KEYS,
    HandlerDir,
    TransportCert,
    agent_status_problems,
    disk_object_str,
    encrypt_protected,
    encrypt_protected_cms,
    make_handler_dir,
    make_transport_cert,
    now_ticks,
    public_settings,
    write_handler_config,
)
from tests.support.jobkit import sig_values
from tests.support.loopfs import loop_filesystem
from tests.support.processes import pid_alive
from tests.support.requirements import require
from tests.support.waiting import wait_until

SCRIPTS_BASE = "/var/lib/snapshot-runtime-tests"
FAKE_DISK = "https://acct.blob.core.windows.net/vhds/os.vhd?sv=2024-08-04&sr=b&sp=rw&sig=Zm9vYmFyU0VDUkVUc2lnbmF0dXJl%3D"


def _no_host_files(tmp_path: Path) -> dict[str, str]:
    """handler.conf paths for the host files a handler reads (vmbackup.conf,
    the VM identity), absent until a test writes them."""
    return {
        "vmbackup_conf": str(tmp_path / "etc-azure" / "vmbackup.conf"),
        "product_uuid_file": str(tmp_path / "dmi" / "product_uuid"),
        "hosting_environment_config": str(tmp_path / "waagent-xml" / "HEC.xml"),
    }


@pytest.fixture(scope="module")
def cert() -> TransportCert:
    return make_transport_cert()


@pytest.fixture
def handler(tmp_path: Path, cert: TransportCert) -> HandlerDir:
    cert.install(tmp_path / "waagent")
    conf = write_handler_config(
        tmp_path / "handler.conf",
        state_dir=str(tmp_path / "state"),
        run_dir=str(tmp_path / "run"),
        include_mounts=str(tmp_path / "never-mounted"),  # belt and braces: no host freeze
        # The same behaviour on any host: no VM identity, no vmbackup.conf.
        **_no_host_files(tmp_path),
    )
    return make_handler_dir(tmp_path, tmp_path / "waagent", handler_config=conf)


def _enable(h: HandlerDir, seq: str | None, monkeypatch, capsys) -> tuple[int, str, str]:
    if seq is None:
        monkeypatch.delenv("ConfigSequenceNumber", raising=False)
    else:
        monkeypatch.setenv("ConfigSequenceNumber", seq)
    rc = handler_main(h.args("enable"))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _no_leak(h: HandlerDir, secrets: list[str], *texts: str) -> None:
    """No secret and no traceback in any output or file the handler wrote."""
    blobs = list(texts)
    for folder in (h.root, h.log, h.root.parent / "state", h.root.parent / "run"):
        if folder.exists():
            blobs += [p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file()]
    for text in blobs:
        assert "Traceback" not in text
        for secret in secrets:
            assert secret not in text


def _settings(h: HandlerDir, cert: TransportCert, seq: int = 0, **public) -> None:
    protected = encrypt_protected({"objectStr": disk_object_str([FAKE_DISK])}, cert)
    h.write_settings(
        seq, public_settings("task-e", **public), protected, thumbprint=cert.thumbprint
    )


def _assert_error(h: HandlerDir, seq: int, code: ErrorCode, needle: str) -> dict:
    status = h.read_status(seq)
    assert status["status"]["code"] == str(code.code)
    assert status["message"].startswith(f"{code.value}: ")
    assert needle in status["message"]
    return status


# --- failures before any job ---------------------------------------------------------------


def test_too_late(handler: HandlerDir, cert, monkeypatch, capsys) -> None:
    import datetime as dt

    _settings(handler, cert, commandStartTimeUTCTicks=now_ticks(-dt.timedelta(minutes=141)))
    rc, out, err = _enable(handler, "0", monkeypatch, capsys)
    assert rc == 0
    status = _assert_error(handler, 0, ErrorCode.COMMAND_TOO_LATE, "more than the 140 minutes")
    assert status["blob"]["status"]["status"] == "error"
    assert status["status"]["status"] == "success"  # the reference's forced ARM file status
    assert "CommandTooLate" in err
    assert '"protectedSettings"' not in handler.settings_path(0).read_text()
    _no_leak(handler, sig_values(FAKE_DISK), out, err)


def test_missing_handler_environment(handler: HandlerDir, cert, monkeypatch, capsys) -> None:
    _settings(handler, cert)
    (handler.root / "HandlerEnvironment.json").unlink()
    rc, out, err = _enable(handler, None, monkeypatch, capsys)
    assert rc == 0  # reported in <handler dir>/status/0.status, the agent's layout
    _assert_error(handler, 0, ErrorCode.HANDLER_ENVIRONMENT_INVALID, "does not exist")
    shutil.rmtree(handler.status)
    rc, out, err = _enable(handler, "0", monkeypatch, capsys)
    assert rc == 1 and err.count("\n") == 1 and "HandlerEnvironmentInvalid" in err
    _no_leak(handler, sig_values(FAKE_DISK), out, err)


def test_bad_handler_environment_json(handler: HandlerDir, cert, monkeypatch, capsys) -> None:
    _settings(handler, cert)
    (handler.root / "HandlerEnvironment.json").write_text('[{"handlerEnvironment": ')
    rc, _, _ = _enable(handler, "0", monkeypatch, capsys)
    assert rc == 0
    _assert_error(handler, 0, ErrorCode.HANDLER_ENVIRONMENT_INVALID, "not valid JSON")


def test_bad_settings_json(handler: HandlerDir, cert, monkeypatch, capsys) -> None:
    handler.settings_path(0).write_text('{"runtimeSettings": [')
    rc, _, _ = _enable(handler, "0", monkeypatch, capsys)
    assert rc == 0
    _assert_error(handler, 0, ErrorCode.INVALID_SETTINGS, "not valid JSON")


def test_wrong_sequence_number(handler: HandlerDir, cert, monkeypatch, capsys) -> None:
    _settings(handler, cert)
    rc, out, err = _enable(handler, "7", monkeypatch, capsys)
    assert rc == 0
    _assert_error(handler, 7, ErrorCode.HANDLER_ENVIRONMENT_INVALID, "no settings file")
    assert "HandlerEnvironmentInvalid" in err and out == ""
    assert '"protectedSettings"' in handler.settings_path(0).read_text()  # 0 was not touched
    rc, _, err = _enable(handler, "seven", monkeypatch, capsys)
    assert rc == 1 and "ConfigSequenceNumber must be a whole number" in err
    assert sorted(p.name for p in handler.status.iterdir()) == ["7.status"]


def test_newest_settings_file_without_sequence(handler, cert, monkeypatch, capsys) -> None:
    _settings(handler, cert, seq=3, commandStartTimeUTCTicks="637134336000000000")
    _settings(handler, cert, seq=4)
    os.utime(handler.settings_path(4), (1_000_000_000, 1_000_000_000))  # older than 3
    rc, _, _ = _enable(handler, None, monkeypatch, capsys)
    assert rc == 0
    _assert_error(handler, 3, ErrorCode.COMMAND_TOO_LATE, "140 minutes")
    assert not handler.status_path(4).exists()


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("no_cert_file", ErrorCode.CERTIFICATE_NOT_FOUND, "does not exist"),
        ("bad_thumbprint", ErrorCode.CERTIFICATE_NOT_FOUND, "not a certificate thumbprint"),
        ("other_cert", ErrorCode.CERTIFICATE_NOT_FOUND, "not encrypted to certificate"),
        ("renamed_cert", ErrorCode.CERTIFICATE_NOT_FOUND, "holds the certificate with"),
        ("missing_key", ErrorCode.CERTIFICATE_NOT_FOUND, "private key of certificate"),
        ("tampered", ErrorCode.PROTECTED_SETTINGS_INVALID, "damaged or was altered"),
        ("not_base64", ErrorCode.PROTECTED_SETTINGS_INVALID, "not valid base64"),
        ("no_disks", ErrorCode.INVALID_DISK_LIST, "blobSASUri"),
        ("no_task", ErrorCode.INVALID_SETTINGS, "taskId"),
    ],
)
def test_decryption_and_settings_failures(
    handler: HandlerDir,
    cert: TransportCert,
    case: str,
    code: ErrorCode,
    needle: str,
    monkeypatch,
    capsys,
) -> None:
    other = make_transport_cert("someone else") if case in ("other_cert", "renamed_cert") else None
    protected = encrypt_protected({"objectStr": disk_object_str([FAKE_DISK])}, other or cert)
    thumb = cert.thumbprint
    public = public_settings("task-f")
    if case == "no_cert_file":
        thumb = "0" * 40
    elif case == "bad_thumbprint":
        thumb = "../../../etc/passwd"
    elif case == "renamed_cert":
        assert other is not None
        for suffix in (".crt", ".prv"):
            (handler.cert_dir / f"{thumb}{suffix}").write_bytes(
                other.cert_pem() if suffix == ".crt" else other.key_pem()
            )
    elif case == "missing_key":
        (handler.cert_dir / f"{thumb}.prv").unlink()
    elif case == "tampered":
        import base64

        der = bytearray(base64.b64decode(protected))
        der[-3] ^= 0x40
        protected = base64.b64encode(bytes(der)).decode()
    elif case == "not_base64":
        protected = "%%% not base64 %%%"
    elif case == "no_disks":
        protected = encrypt_protected({"logsBlobUri": FAKE_DISK}, cert)
    elif case == "no_task":
        del public["taskId"]
    handler.write_settings(0, public, protected, thumbprint=thumb)
    try:
        rc, out, err = _enable(handler, "0", monkeypatch, capsys)
    finally:
        if case in ("renamed_cert", "missing_key"):
            cert.install(handler.cert_dir)
    assert rc == 0
    _assert_error(handler, 0, code, needle)
    assert code.value in err
    assert '"protectedSettings"' not in handler.settings_path(0).read_text()
    assert not (handler.root.parent / "state").exists()  # no job ever started
    _no_leak(handler, sig_values(FAKE_DISK), out, err)


def test_already_processed_task(handler: HandlerDir, cert, monkeypatch, capsys) -> None:
    ProcessedTasks(str(handler.root.parent / "state" / "handler" / "processed-tasks.json")).add(
        "task-e"
    )
    _settings(handler, cert, seq=5)
    rc, _, _ = _enable(handler, "5", monkeypatch, capsys)
    assert rc == 0
    status = _assert_error(handler, 5, ErrorCode.ALREADY_PROCESSED, "already processed")
    assert status["blob"]["status"]["status"] == "success"
    assert status["status"]["code"] == "3"


def test_job_already_running(handler: HandlerDir, cert, monkeypatch, capsys) -> None:
    lock = JobLock(str(handler.root.parent / "run" / "handler.lock"))
    assert lock.try_acquire()
    lock.set_holder(pid=4242, task_id="task-running", seq=1)
    try:
        _settings(handler, cert, seq=2)
        rc, _, _ = _enable(handler, "2", monkeypatch, capsys)
    finally:
        lock.release()
    assert rc == 0
    _assert_error(handler, 2, ErrorCode.JOB_ALREADY_RUNNING, "a job for task task-running")
    # Nothing was started: a later enable of the same sequence changes nothing.
    before = handler.status_path(2).read_bytes()
    rc, out, _ = _enable(handler, "2", monkeypatch, capsys)
    assert rc == 0 and "already handled" in out
    assert handler.status_path(2).read_bytes() == before


def test_handler_config_problems_are_reported(handler, cert, monkeypatch, capsys) -> None:
    assert handler.handler_config is not None
    handler.handler_config.chmod(0o666)
    _settings(handler, cert)
    rc, _, _ = _enable(handler, "0", monkeypatch, capsys)
    assert rc == 0
    _assert_error(handler, 0, ErrorCode.HANDLER_ENVIRONMENT_INVALID, "writable by group")


@pytest.mark.parametrize("command", ["install", "disable", "update", "uninstall"])
def test_lifecycle_commands(handler: HandlerDir, command: str, capsys) -> None:
    (handler.root / "mrseq").write_text("3\n")
    assert handler_main(handler.args(command)) == 0
    assert list(handler.status.iterdir()) == []  # never overwrite enable's status
    lines = (handler.log / "extension.log").read_text().splitlines()
    assert json.loads(lines[-1])["command"] == command
    if command == "install":
        assert (handler.root.parent / "state" / "handler").is_dir()
    if command == "uninstall":
        assert not (handler.root / "mrseq").exists()
    assert capsys.readouterr().err == ""


def test_packaged_handle_sh(handler: HandlerDir, cert, tmp_path: Path) -> None:
    """The manifest's commands, run as the agent runs them: cwd = package directory."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo / "deploy" / "extension", handler.root, dirs_exist_ok=True)
    venv = handler.root / "venv" / "bin"
    venv.mkdir(parents=True)
    # A wrapper, not a symlink: a symlinked interpreter would not find the
    # virtualenv's site-packages (pyvenv.cfg sits beside the real one).
    (venv / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (venv / "python").chmod(0o755)
    manifest = json.loads((handler.root / "HandlerManifest.json").read_text())[0]
    _settings(handler, cert, commandStartTimeUTCTicks="637134336000000000")  # 2020: too late
    env = {**os.environ, "ConfigSequenceNumber": "0", "PYTHONPATH": str(repo)}
    extra = ["--cert-dir", str(handler.cert_dir), "--handler-config", str(handler.handler_config)]
    for verb in ("install", "enable", "disable", "update"):
        script, arg = manifest["handlerManifest"][f"{verb}Command"].split()
        proc = subprocess.run(
            [str(handler.root / script), arg, *extra],
            cwd=handler.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    _assert_error(handler, 0, ErrorCode.COMMAND_TOO_LATE, "140 minutes")
    (handler.root / "venv" / "bin" / "python").unlink()
    if not os.path.exists("/opt/snapshot-runtime/.venv/bin/python"):
        proc = subprocess.run(
            [str(handler.root / "bin" / "handle.sh"), "enable"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 3 and "no Python" in proc.stderr


def test_daemon_with_a_broken_hand_off_reports_it(handler: HandlerDir) -> None:
    import subprocess
    import sys

    lock = JobLock(str(handler.root.parent / "run" / "handler.lock"))
    assert lock.try_acquire()
    argv = ["daemon", *handler.args("")[1:], "--seq", "3", "--lock-fd", str(lock.fd)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "snapshot_runtime.handler", *argv],
        stdin=subprocess.PIPE,
        pass_fds=(lock.fd,),
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    lock.release()
    assert proc.stdin is not None
    proc.stdin.write(b'{"runtimeSettings": [{"handlerSettings": ')  # enable died mid-write
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    _assert_error(handler, 3, ErrorCode.INTERNAL_ERROR, "did not receive its settings")
    assert JobLock(lock.path).try_acquire()  # gone with the daemon


def test_usage_errors() -> None:
    assert handler_main(["explode"]) == 2
    assert handler_main(["daemon"]) == 2


# --- real jobs ------------------------------------------------------------------------------


@dataclass
class Rig:
    handler: HandlerDir
    scripts: Path
    disk_url: str
    container: str
    blob: str

    def snapshots(self, azurite: Azurite) -> list[str]:
        client = azurite.service().get_container_client(self.container)
        return [
            b.snapshot
            for b in client.list_blobs(include=["snapshots"])
            if b.snapshot and b.name == self.blob
        ]

    def pre_runs(self) -> list[str]:
        path = self.scripts / "pre.log"
        return path.read_text().split() if path.exists() else []


_PRE = """#!/bin/sh
echo "$SNAPSHOT_TASK_ID" >> "$1/pre.log"
while [ ! -e "$1/go" ]; do sleep 0.05; done
"""
_POST = """#!/bin/sh
echo "$SNAPSHOT_TASK_ID" >> "$1/post.log"
"""


@pytest.fixture
def rig(tmp_path: Path, cert: TransportCert, azurite: Azurite) -> Iterator[Rig]:
    require(os.geteuid() == 0, "needs root: freezes a loop filesystem, scripts must be root-owned")
    os.makedirs(SCRIPTS_BASE, mode=0o755, exist_ok=True)
    scripts = Path(tempfile.mkdtemp(dir=SCRIPTS_BASE))
    try:
        with loop_filesystem("ext4") as fs:
            for name, body in (("pre.sh", _PRE), ("post.sh", _POST)):
                (scripts / name).write_text(body)
                (scripts / name).chmod(0o700)
            plugin = scripts / "VMSnapshotScriptPluginConfig.json"
            plugin.write_text(
                json.dumps(
                    {
                        "pluginName": "ScriptRunner",
                        "preScriptLocation": str(scripts / "pre.sh"),
                        "postScriptLocation": str(scripts / "post.sh"),
                        "preScriptParams": [str(scripts)],
                        "postScriptParams": [str(scripts)],
                        "preScriptNoOfRetries": 0,
                        "postScriptNoOfRetries": 0,
                        "timeoutInSeconds": 30,
                        "continueBackupOnFailure": False,
                        "fsFreezeEnabled": True,
                    }
                )
            )
            plugin.chmod(0o600)
            cert.install(tmp_path / "waagent")
            conf = write_handler_config(
                tmp_path / "handler.conf",
                include_mounts=fs.mountpoint,
                plugin_config=str(plugin),
                freeze_timeout_seconds="30",
                state_dir=str(tmp_path / "state"),
                run_dir=str(tmp_path / "run"),
                **_no_host_files(tmp_path),  # tests write them as they need
            )
            h = make_handler_dir(tmp_path, tmp_path / "waagent", handler_config=conf)
            container = azurite.container()
            url = azurite.create_page_blob(container, "osdisk.vhd")
            yield Rig(h, scripts, url, container, "osdisk.vhd")
            (scripts / "go").touch()  # release any pre-script a test left waiting
    finally:
        shutil.rmtree(scripts, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(SCRIPTS_BASE)  # only if no other test uses it


def _write(rig: Rig, cert: TransportCert, seq: int, task: str, *, legacy: bool = False) -> None:
    settings = {"objectStr": disk_object_str([rig.disk_url])}
    protected = (
        encrypt_protected_cms(settings, cert, cipher="des-ede3-cbc")  # the older platform form
        if legacy
        else encrypt_protected(settings, cert)  # AES-256-CBC, as PKCS7EnvelopeBuilder does
    )
    rig.handler.write_settings(seq, public_settings(task), protected, thumbprint=cert.thumbprint)


def _lock_free(rig: Rig) -> bool:
    lock = JobLock(str(rig.handler.root.parent / "run" / "handler.lock"))
    if lock.try_acquire():
        lock.release()
        return True
    return False


@pytest.mark.azurite
@pytest.mark.root
def test_enable_runs_a_real_job(rig: Rig, cert: TransportCert, azurite: Azurite) -> None:
    h = rig.handler
    _write(rig, cert, 0, "task-a")
    rc, out, err, seconds = h.run("enable", 0)
    assert rc == 0, err
    assert seconds < 5, f"enable took {seconds:.2f}s"  # python start-up included
    print(f"enable returned in {seconds:.3f}s")
    assert "job started (daemon pid" in out and err == ""

    # While the pre-script holds the job: the reference's interim report
    # ("success", code 4), settings already sanitised.
    wait_until(lambda: rig.pre_runs() == ["task-a"], 30, "the pre-script")
    status = h.read_status(0)
    assert status["status"]["status"] == "success" and status["status"]["code"] == "4"
    settings = json.loads(h.settings_path(0).read_text())
    handler_settings = settings["runtimeSettings"][0]["handlerSettings"]
    assert "protectedSettings" not in handler_settings
    assert handler_settings["protectedSettingsCertThumbprint"] == cert.thumbprint
    assert handler_settings["publicSettings"]["taskId"] == "task-a"

    (rig.scripts / "go").touch()
    final = h.wait_status(0, {"success", "error"})
    assert final["blob"]["status"]["status"] == "success", final["message"]
    assert final["message"] == "Enable Succeeded with App Consistent Snapshot"
    info = final["blob"]["status"]["snapshotInfo"]
    assert len(info) == 1 and info[0]["isSuccessful"] is True
    assert len(rig.snapshots(azurite)) == 1
    assert (rig.scripts / "post.log").read_text().split() == ["task-a"]
    wait_until(lambda: _lock_free(rig), 30, "the daemon to exit")
    assert "task-a" in ProcessedTasks(str(h.root.parent / "state/handler/processed-tasks.json"))

    # The service sends the same task again under a new sequence number.
    _write(rig, cert, 1, "task-a")
    rc, out, err, _ = h.run("enable", 1)
    assert rc == 0
    again = h.read_status(1)
    assert again["status"]["code"] == str(ErrorCode.ALREADY_PROCESSED.code)
    assert again["blob"]["status"]["status"] == "success"

    # The agent restarts and runs enable for sequence 0 again: nothing changes.
    before = h.status_path(0).read_bytes()
    rc, out, err, _ = h.run("enable", 0)
    assert rc == 0 and "already consumed" in out and "nothing to do" in out
    assert h.status_path(0).read_bytes() == before
    assert len(rig.snapshots(azurite)) == 1 and rig.pre_runs() == ["task-a"]
    _no_leak(h, sig_values(rig.disk_url), out, err)


@pytest.mark.azurite
@pytest.mark.root
def test_one_job_at_a_time_and_a_killed_daemon_frees_the_lock(
    rig: Rig, cert: TransportCert, azurite: Azurite
) -> None:
    h = rig.handler
    _write(rig, cert, 0, "task-a")
    assert h.run("enable", 0)[0] == 0
    wait_until(lambda: rig.pre_runs() == ["task-a"], 30, "the first job's pre-script")

    # A second enable while the first job runs: refused, nothing started.
    _write(rig, cert, 1, "task-b")
    rc, out, err, _ = h.run("enable", 1)
    assert rc == 0
    refused = h.read_status(1)
    assert refused["status"]["code"] == str(ErrorCode.JOB_ALREADY_RUNNING.code)
    assert "a job for task task-a" in refused["message"]

    # kill -9 the daemon: the lock goes with it.
    holder = JobLock(str(h.root.parent / "run" / "handler.lock")).holder()
    assert holder is not None and holder.task_id == "task-a" and holder.pid
    os.kill(holder.pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(holder.pid), 30, "the daemon to die")
    wait_until(lambda: _lock_free(rig), 30, "the lock to be released")
    (rig.scripts / "go").touch()  # the orphaned pre-script may finish now

    _write(rig, cert, 2, "task-c", legacy=True)
    rc, out, err, _ = h.run("enable", 2)
    assert rc == 0, err
    final = h.wait_status(2, {"success", "error"})
    assert final["blob"]["status"]["status"] == "success", final["message"]
    assert rig.pre_runs() == ["task-a", "task-c"]  # task-b never ran
    assert len(rig.snapshots(azurite)) == 1  # only task-c froze and snapshotted
    processed = ProcessedTasks(str(h.root.parent / "state/handler/processed-tasks.json"))
    wait_until(lambda: "task-c" in processed, 30, "task-c to be recorded")
    assert "task-a" not in processed and "task-b" not in processed
    with contextlib.suppress(FileNotFoundError):
        killed = h.read_status(0)["status"]  # killed mid-job: still the interim report
        assert (killed["status"], killed["code"]) == ("success", "4")
    _no_leak(h, sig_values(rig.disk_url), out, err)


# --- the reference's status words (issue 12) -------------------------------------------------

_TIMEDELTA = re.compile(r"[0-9]+:[0-5][0-9]:[0-5][0-9](\.[0-9]{6})?")


def _reference_shape(h: HandlerDir, seq: int) -> tuple[dict, dict]:
    """The status file and its embedded blob document, checked key by key
    against the reference's shape and the guest agent's parser rules."""
    doc = json.loads(h.status_path(seq).read_text())
    assert agent_status_problems(doc) == []
    (top,) = doc
    assert list(top) == TOP_KEYS
    assert list(top["status"]) == STATUS_KEYS
    (sub,) = top["status"]["substatus"]
    assert (sub["code"], sub["status"], sub["formattedMessage"]) == ("0", "success", None)
    blob_doc = json.loads(sub["name"])
    assert agent_status_problems(blob_doc) == []
    (blob,) = blob_doc
    assert list(blob) == TOP_KEYS and list(blob["status"]) == STATUS_KEYS
    for entry in (top, blob):
        # HandlerEnvironment.json as the agent laid it out: its name, and its
        # version 1.0 (a JSON number) as "1.0"; not the project's (0.1.0).
        assert entry["status"]["name"] == "Microsoft.Azure.RecoveryServices.VMSnapshotLinux"
        assert entry["version"] == "1.0"
        assert entry["status"]["operation"] == "Enable"
    assert re.fullmatch(r"/Date\([0-9]+\)/", blob["timestampUTC"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", top["timestampUTC"])
    return top, blob


def _telemetry(blob: dict) -> dict[str, str]:
    pairs = blob["status"]["telemetryData"]
    assert all(list(p) == ["Key", "Value"] for p in pairs)
    return {p["Key"]: p["Value"] for p in pairs}


@pytest.mark.azurite
@pytest.mark.root
def test_real_job_status_speaks_the_reference_words(
    rig: Rig, cert: TransportCert, azurite: Azurite
) -> None:
    h = rig.handler
    _write(rig, cert, 0, "task-words")
    rc, out, err, _ = h.run("enable", 0)
    assert rc == 0, err

    # The interim report, as enable and then the daemon write it: "success"
    # with code 4 and the reference's message, never "transitioning".
    wait_until(lambda: rig.pre_runs() == ["task-words"], 30, "the pre-script")
    top, blob = _reference_shape(h, 0)
    for entry in (top["status"], blob["status"]):
        assert (entry["status"], entry["code"]) == ("success", "4")
        message = json.loads(entry["formattedMessage"]["message"])
        assert message["messageStr"] == "Transitioning state in extension"
        assert message["snapshotConsistency"] == 0
    assert blob["status"]["snapshotInfo"] is None
    # The reference's vmHealthInfo carries its extension error code: none yet.
    assert blob["status"]["vmHealthInfo"] == {"vmHealthState": 0, "vmHealthStatusCode": 0}

    (rig.scripts / "go").touch()
    h.wait_status(0, {"success", "error"})
    top, blob = _reference_shape(h, 0)
    status = blob["status"]
    assert (status["status"], status["code"]) == ("success", "0")
    assert (top["status"]["status"], top["status"]["code"]) == ("success", "0")
    (info,) = status["snapshotInfo"]
    assert list(info) == SNAPSHOT_KEYS
    assert info["isSuccessful"] is True
    assert info["directDriveSnapshotIdentifier"] is None  # a disk without one: null
    assert info["errorMessage"] in (None, "")
    data = _telemetry(blob)
    assert data["consistencyType"] == "applicationConsistent"
    assert data["consistencyReason"]  # ours, in its own key
    assert data["extErrorCode"] == "success"
    assert data["prePostEnabled"] == "True"
    for key in ("FreezeTime", "ThawTime", "snapshotTimeTaken"):
        assert _TIMEDELTA.fullmatch(data[key]), (key, data[key])
    # The frozen window is short here: seconds, never minutes.
    assert data["FreezeTime"].startswith("0:00:") and data["snapshotTimeTaken"].startswith("0:00:")
    assert data["extensionVersion"] == __version__  # the project's version stays in telemetry
    assert __version__ != "1.0"
    assert json.loads(status["formattedMessage"]["message"])["snapshotConsistency"] == 2
    _no_leak(h, sig_values(rig.disk_url), out, err)


def test_refusals_carry_the_handler_environment_name_and_version(
    handler: HandlerDir, cert, monkeypatch, capsys
) -> None:
    import datetime as dt

    env = json.loads((handler.root / "HandlerEnvironment.json").read_text())
    env[0]["version"] = "1.0.9225.0"  # the agent may write a string too
    (handler.root / "HandlerEnvironment.json").write_text(json.dumps(env))
    _settings(handler, cert, commandStartTimeUTCTicks=now_ticks(-dt.timedelta(minutes=141)))
    rc, _, _ = _enable(handler, "0", monkeypatch, capsys)
    assert rc == 0
    status = _assert_error(handler, 0, ErrorCode.COMMAND_TOO_LATE, "140 minutes")
    assert agent_status_problems([status]) == []
    for entry in (status, status["blob"]):
        assert entry["version"] == "1.0.9225.0"
        assert entry["status"]["name"] == "Microsoft.Azure.RecoveryServices.VMSnapshotLinux"
    data = _telemetry(status["blob"])
    assert data["extErrorCode"] == "CommandTooLate"
    assert data["extensionVersion"] == __version__


def test_without_handler_environment_the_published_name_and_our_version(
    handler: HandlerDir, cert, monkeypatch, capsys
) -> None:
    _settings(handler, cert)
    (handler.root / "HandlerEnvironment.json").unlink()
    rc, _, _ = _enable(handler, None, monkeypatch, capsys)
    assert rc == 0
    status = _assert_error(handler, 0, ErrorCode.HANDLER_ENVIRONMENT_INVALID, "does not exist")
    for entry in (status, status["blob"]):
        assert entry["version"] == __version__
        assert entry["status"]["name"] == "Microsoft.Azure.RecoveryServices.VMSnapshotLinux"


# --- restore / clone: the guards follow the VM identity ----------------------------------------

_HOSTING_XML = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<HostingEnvironmentConfig version="1.0.0.0" goalStateIncarnation="1">'
    '<Deployment name="d" guid="{11111111-2222-3333-4444-555555555555}" incarnation="0"/>'
    '<Role guid="{ROLE}" name="vm-1" settleTimeSeconds="10"/>'
    "</HostingEnvironmentConfig>\n"
)


def _set_identity(h: HandlerDir, product_uuid: str, role_guid: str) -> None:
    """Fixture identity files at the paths handler.conf names (_no_host_files)."""
    base = h.root.parent
    (base / "dmi").mkdir(exist_ok=True)
    (base / "dmi" / "product_uuid").write_text(product_uuid + "\n")
    (base / "waagent-xml").mkdir(exist_ok=True)
    (base / "waagent-xml" / "HEC.xml").write_text(_HOSTING_XML.replace("ROLE", role_guid))


@pytest.mark.azurite
@pytest.mark.root
def test_a_restored_or_cloned_vm_runs_its_first_job(
    rig: Rig, cert: TransportCert, azurite: Azurite
) -> None:
    h = rig.handler
    _set_identity(h, "8F1A2B3C-0000-4D5E-9F00-112233445566", "D0D0D0D0-1234-5678-9ABC-DEF012345678")
    (rig.scripts / "go").touch()  # the pre-script does not hold these jobs
    _write(rig, cert, 0, "task-a")
    assert h.run("enable", 0)[0] == 0
    assert h.wait_status(0, {"success", "error"})["blob"]["status"]["status"] == "success"
    wait_until(lambda: _lock_free(rig), 30, "the first daemon to exit")
    identity_file = h.root.parent / "state" / "handler" / "vm-identity"
    assert identity_file.read_text() == (
        "product_uuid=8f1a2b3c-0000-4d5e-9f00-112233445566;"
        "role_guid=d0d0d0d0-1234-5678-9abc-def012345678\n"
    )

    # Same VM (unchanged identity): the repeated task is refused.
    _write(rig, cert, 1, "task-a")
    assert h.run("enable", 1)[0] == 0
    assert h.read_status(1)["status"]["code"] == str(ErrorCode.ALREADY_PROCESSED.code)
    assert (h.root / "mrseq").read_text().strip() == "1"

    # Restored as a new VM: the agent's Role GUID changed (the product UUID did
    # too, but the Role GUID alone must be enough), and the restored disk
    # carries the source's mrseq and processed task ids. Its agent hands it the
    # task under the sequence number the source had reached.
    _set_identity(h, "8F1A2B3C-0000-4D5E-9F00-112233445566", "E1E1E1E1-1234-5678-9ABC-DEF012345678")
    _write(rig, cert, 1, "task-a")
    rc, out, err, _ = h.run("enable", 1)
    assert rc == 0, err
    assert "job started" in out  # neither "already handled" (mrseq) nor already processed
    final = h.wait_status(1, {"success", "error"})
    assert final["blob"]["status"]["status"] == "success", final["message"]
    assert len(rig.snapshots(azurite)) == 2
    wait_until(lambda: _lock_free(rig), 30, "the second daemon to exit")
    log = (h.log / "extension.log").read_text()
    assert "VM identity changed" in log and "guards were reset" in log

    # A clone (new product UUID, same everything else): the same holds.
    _set_identity(h, "9E2B3C4D-0000-4D5E-9F00-112233445566", "E1E1E1E1-1234-5678-9ABC-DEF012345678")
    _write(rig, cert, 2, "task-a")
    assert h.run("enable", 2)[0] == 0
    assert h.wait_status(2, {"success", "error"})["blob"]["status"]["status"] == "success"
    assert len(rig.snapshots(azurite)) == 3
    wait_until(lambda: _lock_free(rig), 30, "the third daemon to exit")

    # And on that VM, a repeat is refused again.
    _write(rig, cert, 3, "task-a")
    assert h.run("enable", 3)[0] == 0
    assert h.read_status(3)["status"]["code"] == str(ErrorCode.ALREADY_PROCESSED.code)
    assert len(rig.snapshots(azurite)) == 3


# --- vmbackup.conf reaches a real job --------------------------------------------------------

_PRE_MOUNTS = """#!/bin/sh
printf '%s' "$SNAPSHOT_MOUNTS" > "$1/mounts"
"""


@pytest.mark.azurite
@pytest.mark.root
def test_a_mount_in_vmbackup_conf_is_not_frozen(
    tmp_path: Path, cert: TransportCert, azurite: Azurite
) -> None:
    require(os.geteuid() == 0, "needs root: freezes loop filesystems, scripts must be root-owned")
    os.makedirs(SCRIPTS_BASE, mode=0o755, exist_ok=True)
    scripts = Path(tempfile.mkdtemp(dir=SCRIPTS_BASE))
    try:
        with loop_filesystem("ext4") as kept, loop_filesystem("ext4") as skipped:
            for name, body in (("pre.sh", _PRE_MOUNTS), ("post.sh", _POST)):
                (scripts / name).write_text(body)
                (scripts / name).chmod(0o700)
            plugin = scripts / "VMSnapshotScriptPluginConfig.json"
            plugin.write_text(
                json.dumps(
                    {
                        "pluginName": "ScriptRunner",
                        "preScriptLocation": str(scripts / "pre.sh"),
                        "postScriptLocation": str(scripts / "post.sh"),
                        "preScriptParams": [str(scripts)],
                        "postScriptParams": [str(scripts)],
                        "timeoutInSeconds": 30,
                        "continueBackupOnFailure": False,
                        "fsFreezeEnabled": True,
                    }
                )
            )
            plugin.chmod(0o600)
            cert.install(tmp_path / "waagent")
            files = _no_host_files(tmp_path)
            conf = write_handler_config(
                tmp_path / "handler.conf",
                include_mounts=f"{kept.mountpoint},{skipped.mountpoint}",  # both eligible
                plugin_config=str(plugin),
                freeze_timeout_seconds="30",
                state_dir=str(tmp_path / "state"),
                run_dir=str(tmp_path / "run"),
                **files,
            )
            # The reference's file, as an operator of the reference wrote it.
            vmbackup = Path(files["vmbackup_conf"])
            vmbackup.parent.mkdir()
            vmbackup.write_text(
                "[SnapshotThread]\nfsfreeze: True\n"
                f"MountsToSkip = {skipped.mountpoint}\nWriteLog = False\nfutureKey = 1\n"
            )
            vmbackup.chmod(0o644)
            h = make_handler_dir(tmp_path, tmp_path / "waagent", handler_config=conf)
            url = azurite.create_page_blob(azurite.container(), "osdisk.vhd")
            protected = encrypt_protected({"objectStr": disk_object_str([url])}, cert)
            h.write_settings(0, public_settings("task-skip"), protected, thumbprint=cert.thumbprint)
            rc, _, err, _ = h.run("enable", 0)
            assert rc == 0, err
            final = h.wait_status(0, {"success", "error"})
            assert final["blob"]["status"]["status"] == "success", final["message"]
            assert final["message"] == "Enable Succeeded with App Consistent Snapshot"

            # The scripts saw the freeze plan: only the mount vmbackup.conf kept.
            assert (scripts / "mounts").read_text().split() == [kept.mountpoint]
            lines = [json.loads(x) for x in (h.log / "extension.log").read_text().splitlines()]
            config_line = next(x["message"] for x in lines if "job config:" in x["message"])
            assert f"exclude_mounts=['{skipped.mountpoint}'] (vmbackup.conf)" in config_line
            assert any("ignored unknown keys ['futurekey']" in x["message"] for x in lines)
            # WriteLog = False: the job wrote no line of its own to the local log
            # (the handler's own lines stay).
            assert {x["phase"] for x in lines} == {"handler"}
            # ... while the spool (for the sidecar and logsBlobUri) has them all.
            spooled = [
                json.loads(x)
                for p in (tmp_path / "run" / "spool").rglob("log.jsonl")
                for x in p.read_text().splitlines()
            ]
            assert {"freeze", "thaw", "prepare"} <= {x.get("phase") for x in spooled}
    finally:
        shutil.rmtree(scripts, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(SCRIPTS_BASE)


@pytest.mark.azurite
@pytest.mark.root
def test_after_a_job_the_daemon_prunes_old_records_and_its_old_status_files(
    rig: Rig, cert: TransportCert, azurite: Azurite, tmp_path: Path
) -> None:
    """handler.conf retention_keep = 4: after the job, 4 job records stay (its own
    among them) and 4 of our N.status files (the current N among them); the
    agent's other files in its status folder are never touched."""
    with (tmp_path / "handler.conf").open("a") as conf:
        conf.write("retention_keep = 4\nretention_days = 0\n")
    h = rig.handler
    folder = h.status_path(0).parent
    folder.mkdir(parents=True, exist_ok=True)
    jobs = tmp_path / "state" / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    old = time.time() - 10 * 86400
    for seq in range(8):  # yesterday's sequence numbers, oldest first
        for path in (folder / f"{seq}.status", jobs / f"old-task-{seq}.json"):
            path.write_text("[]" if path.suffix == ".status" else "{}")
            os.utime(path, (old + seq, old + seq))
    (folder / "agent-file.json").write_text("{}")
    os.utime(folder / "agent-file.json", (old, old))

    _write(rig, cert, 8, "task-housekeeping")
    rc, _, err, _ = h.run("enable", 8)
    assert rc == 0, err
    wait_until(lambda: rig.pre_runs() == ["task-housekeeping"], 30, "the pre-script")
    (rig.scripts / "go").touch()
    final = h.wait_status(8, {"success", "error"})
    assert final["blob"]["status"]["status"] == "success", final["message"]

    expected_status = {"5.status", "6.status", "7.status", "8.status", "agent-file.json"}
    wait_until(
        lambda: {p.name for p in folder.iterdir()} == expected_status,
        30,
        "the daemon's housekeeping of the status folder",
        detail=lambda: sorted(p.name for p in folder.iterdir()),
    )
    assert {p.name for p in jobs.iterdir()} == {
        "old-task-5.json",
        "old-task-6.json",
        "old-task-7.json",
        "task-housekeeping.json",
    }
    log = h.log / "extension.log"
    wait_until(
        lambda: "housekeeping: 10 old file(s) removed" in log.read_text(),
        30,
        "the housekeeping line in the extension log",
    )
