"""`make demo`: two real snapshot jobs on real local parts, then clean up.

1. Azurite on 127.0.0.1; three page blobs stand in for the VM's disks, plus
   status and logs blobs, all reached through real SAS URLs. The WireServer
   emulator (tests/support/host_service.py) serves the host path for the same
   three disks as LUNs 0-2.
2. A loop-mounted ext4 filesystem holding a live SQLite application
   (scripts/demo_app.py) and an unquiesced "ticker" that appends a timestamp
   every 5 ms, so the frozen window shows up as a gap in its writes.
3. A root-owned plugin config (600) and pre/post scripts (700): the pre-script
   asks the application to quiesce and waits for its last committed
   transaction; the post-script resumes it.
4. The sidecar, then `snapshot-runtime run` for real, twice, freezing only the
   demo filesystem (--mounts), with its job log on that same filesystem (I1: it
   must not deadlock):
   a. a managed-disk VM, the default on Azure: the host path, one
      `presnapshot` before the freeze and one `dosnapshot` for all disks
      inside it, no SAS URL (docs/host-snapshot.md);
   b. the guest path: one blob snapshot per disk through its SAS URL.
   Then: the summary, what was quiesced, the held writes,
   the application resumed, the snapshots and the status blob in Azurite, the
   sidecar's metrics and mirrored log, and `snapshot-runtime trace`.

Re-running works: everything lives in a fresh directory and is removed.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from snapshot_runtime.snapshot.host import VMBACKUP_CONF_ENV  # noqa: E402
from snapshot_runtime.snapshot.wireserver import WIRESERVER_ENV  # noqa: E402
from tests.support.azurite import run_azurite  # noqa: E402
from tests.support.host_service import TOKEN, BlobDisk, HostService  # noqa: E402
from tests.support.loopfs import loop_filesystem  # noqa: E402

DEMO_ROOT = "/var/lib/snapshot-runtime-demo"  # root-owned parents: /tmp would be refused

PRE_SCRIPT = """\
#!/bin/sh
# Quiesce the demo application: ask, then wait for its acknowledgement.
set -eu
app="$1"
rm -f "$app/quiesced" "$app/resumed"
touch "$app/quiesce.request"
i=0
while [ ! -f "$app/quiesced" ]; do
    i=$((i + 1)); [ "$i" -gt 500 ] && { echo "application did not quiesce" >&2; exit 1; }
    sleep 0.01
done
echo "application quiesced at transaction $(cat "$app/quiesced") (phase $SNAPSHOT_PHASE, attempt $SNAPSHOT_ATTEMPT, mounts $SNAPSHOT_MOUNTS)"
"""

POST_SCRIPT = """\
#!/bin/sh
# Resume the demo application and wait until it says so.
set -eu
app="$1"
rm -f "$app/quiesce.request"
i=0
while [ ! -f "$app/resumed" ]; do
    i=$((i + 1)); [ "$i" -gt 500 ] && { echo "application did not resume" >&2; exit 1; }
    sleep 0.01
done
echo "application resumed after transaction $(cat "$app/resumed")"
"""

TICKER = """\
import os, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
while not os.path.exists(sys.argv[2]):
    os.write(fd, f"{time.time():.6f}\\n".encode())
    time.sleep(0.005)
"""


def _write(path: str, text: str, mode: int) -> None:
    with open(path, "w") as fh:
        fh.write(text)
    os.chown(path, 0, 0)
    os.chmod(path, mode)


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _largest_gap(path: str) -> float:
    stamps = [float(x) for x in Path(path).read_text().split()]
    return max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        with contextlib.suppress(Exception):
            if condition():
                return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def _run_cmd(settings: str, config: str, mountpoint: str, log_file: str, work: str) -> list[str]:
    return [
        str(REPO / ".venv" / "bin" / "snapshot-runtime"),
        "run",
        "--settings",
        settings,
        "--config",
        config,
        "--mounts",
        mountpoint,
        "--log-file",
        log_file,
        "--state-dir",
        os.path.join(work, "state"),
    ]


def _blob_lines(client: Any) -> int:
    return len(client.download_blob().readall().splitlines())


def _settings_doc(
    task_id: str, public_obj: dict[str, Any] | None, protected: dict[str, Any]
) -> str:
    public: dict[str, Any] = {
        "taskId": task_id,
        "commandToExecute": "snapshot",
        "commandStartTimeUTCTicks": str(int(time.time() * 10_000_000) + 621355968000000000),
        "vmType": "microsoft.compute/virtualmachines",
        "locale": "en-us",
    }
    if public_obj is not None:
        public["objectStr"] = base64.b64encode(json.dumps(public_obj).encode()).decode()
    doc = {
        "runtimeSettings": [
            {"handlerSettings": {"publicSettings": public, "protectedSettings": protected}}
        ]
    }
    return json.dumps(doc)


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (it mounts and freezes a loop filesystem)", file=sys.stderr)
        return 1
    os.makedirs(DEMO_ROOT, mode=0o755, exist_ok=True)
    os.chmod(DEMO_ROOT, 0o755)
    work = tempfile.mkdtemp(prefix="run-", dir=DEMO_ROOT)
    os.chmod(work, 0o755)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with run_azurite() as azurite, loop_filesystem("ext4", size_mb=128) as fs:
            _say(f"Azurite on {azurite.endpoint}; demo filesystem {fs.fstype} at {fs.mountpoint}")
            container = azurite.container("vhds")
            disks = [azurite.create_page_blob(container, f"demo-disk{i}.vhd") for i in range(3)]
            logs_container = azurite.container("bcdrextensionlogs")
            status_url = azurite.sas_url(logs_container, "demo.Status.txt")
            logs_url = azurite.sas_url(logs_container, "demo.Logs.txt")

            app_dir = os.path.join(fs.mountpoint, "app")
            os.makedirs(app_dir)
            stop = os.path.join(work, "stop-ticker")
            app = subprocess.Popen([sys.executable, str(REPO / "scripts" / "demo_app.py"), app_dir])
            ticker = subprocess.Popen(
                [sys.executable, "-c", TICKER, os.path.join(fs.mountpoint, "ticks"), stop]
            )
            processes += [app, ticker]
            time.sleep(0.5)

            scripts_dir = os.path.join(work, "scripts")
            os.mkdir(scripts_dir, 0o700)
            pre, post = os.path.join(scripts_dir, "pre.sh"), os.path.join(scripts_dir, "post.sh")
            _write(pre, PRE_SCRIPT, 0o700)
            _write(post, POST_SCRIPT, 0o700)
            config = os.path.join(work, "VMSnapshotScriptPluginConfig.json")
            plugin = {
                "pluginName": "ScriptRunner",
                "preScriptLocation": pre,
                "postScriptLocation": post,
                "preScriptParams": [app_dir],
                "postScriptParams": [app_dir],
                "preScriptNoOfRetries": 1,
                "postScriptNoOfRetries": 1,
                "timeoutInSeconds": 30,
                "continueBackupOnFailure": True,
                "fsFreezeEnabled": True,
                "ScriptsExecutionPollTimeSeconds": 1,
            }
            _write(config, json.dumps(plugin, indent=2), 0o600)
            # (a) a managed-disk VM: public objectStr with the service's token and
            # the LUNs, no blobSASUri at all (the host path needs none).
            host_task = f"{uuid.uuid4()}_1"
            host_settings_path = os.path.join(work, "0.settings")
            host_obj = {
                "snapshotTaskToken": TOKEN,
                "includedDisks": {"dataDiskLunList": [0, 1, 2]},
                "backupMetadata": [{"Key": "BackupJob", "Value": "demo"}],
            }
            host_protected = {
                "logsBlobUri": azurite.sas_url(logs_container, "demo-host.Logs.txt"),
                "statusBlobUri": azurite.sas_url(logs_container, "demo-host.Status.txt"),
            }
            _write(host_settings_path, _settings_doc(host_task, host_obj, host_protected), 0o600)
            # (b) the guest path: the disks' SAS URLs in the protected objectStr.
            object_str = base64.b64encode(json.dumps({"blobSASUri": disks}).encode()).decode()
            task_id = f"{uuid.uuid4()}_1"
            guest_protected = {
                "objectStr": object_str,
                "logsBlobUri": logs_url,
                "statusBlobUri": status_url,
            }
            settings_path = os.path.join(work, "1.settings")
            _write(settings_path, _settings_doc(task_id, None, guest_protected), 0o600)

            # The sidecar runs first, as on a VM: it publishes its key in the
            # spool, so the job can hand it the logsBlobUri sealed.
            spool = os.path.join(work, "spool")
            port = _free_port()
            sidecar = subprocess.Popen(
                [
                    str(REPO / ".venv" / "bin" / "snapshot-sidecar"),
                    "--spool",
                    spool,
                    "--state-dir",
                    os.path.join(work, "sidecar"),
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--poll-interval",
                    "0.2",
                    "--log-level",
                    "WARNING",
                ]
            )
            processes.append(sidecar)
            _wait_for(lambda: os.path.exists(os.path.join(spool, "sidecar.pub")), "sidecar key")

            log_file = os.path.join(fs.mountpoint, "log", "extension.log")
            host_log = os.path.join(fs.mountpoint, "log", "extension-host.log")
            host_service = HostService(
                {lun: BlobDisk(container, f"demo-disk{lun}.vhd") for lun in range(3)},
                blob_connection_string=azurite.connection_string,
                blob_endpoint=azurite.endpoint,
            )
            with host_service:
                _say(
                    "(a) a managed-disk VM: snapshot-runtime run on the host path "
                    f"(WireServer emulator at {host_service.address})"
                )
                host_env = {
                    **os.environ,
                    WIRESERVER_ENV: host_service.address,
                    VMBACKUP_CONF_ENV: os.path.join(work, "no-vmbackup.conf"),
                }
                host_job = subprocess.run(
                    [
                        *_run_cmd(host_settings_path, config, fs.mountpoint, host_log, work),
                        "--spool",
                        spool,
                        "--quiet",
                    ],
                    check=False,
                    timeout=300,
                    env=host_env,
                )
                for call in host_service.calls:
                    print(
                        f"host got {call.kind} (answered {call.answered_status}) in "
                        f"{(call.answered_monotonic - call.received_monotonic) * 1000:.1f} ms"
                    )
                for taken in host_service.snapshots:
                    print(f"host snapshot of LUN {taken.lun}: {taken.snapshot_uri}")
            host_status = json.loads(
                azurite.service()
                .get_blob_client(logs_container, "demo-host.Status.txt")
                .download_blob()
                .readall()
            )
            host_inner = json.loads(host_status[0]["status"]["formattedMessage"]["message"])
            # telemetryData is in the local status file's substatus document.
            local = json.loads(Path(work, "state", "status", f"{host_task}.status").read_text())
            substatus = json.loads(local[0]["status"]["substatus"][0]["name"])
            creator = {e["Key"]: e["Value"] for e in substatus[0]["status"]["telemetryData"]}
            print(
                f"host job exit {host_job.returncode}: status={host_status[0]['status']['status']} "
                f"snapshotConsistency={host_inner.get('snapshotConsistency')} "
                f"snapshotCreator={creator.get('snapshotCreator')}"
            )

            _say(
                "(b) snapshot-runtime run on the guest path (log file on the filesystem being frozen)"
            )
            cmd = [
                str(REPO / ".venv" / "bin" / "snapshot-runtime"),
                "run",
                "--settings",
                settings_path,
                "--config",
                config,
                "--mounts",
                fs.mountpoint,
                "--log-file",
                log_file,
                "--state-dir",
                os.path.join(work, "state"),
                "--spool",
                spool,
            ]
            print("$ " + " ".join(cmd[1:]).replace(REPO.as_posix() + "/", ""), flush=True)
            job = subprocess.run([*cmd, "--quiet"], check=False, timeout=300)

            time.sleep(0.3)
            _say("what the pre-script quiesced, and what came after")
            quiesced = Path(app_dir, "quiesced").read_text().strip()
            resumed = (
                Path(app_dir, "resumed").read_text().strip()
                if Path(app_dir, "resumed").exists()
                else "?"
            )
            count = (
                sqlite3.connect(os.path.join(app_dir, "app.db"))
                .execute("SELECT max(id) FROM txn")
                .fetchone()[0]
            )
            print(f"last committed transaction at quiesce: {quiesced}")
            print(
                f"application resumed after transaction {resumed}; now at {count} (still writing)"
            )
            Path(stop).touch()
            ticker.wait(timeout=10)
            print(
                f"longest pause in the unquiesced ticker's writes: {_largest_gap(os.path.join(fs.mountpoint, 'ticks')) * 1000:.1f} ms"
                " (writes held by the freeze, released by the thaw)"
            )

            _say("in Azurite")
            service = azurite.service()
            for blob in service.get_container_client(container).list_blobs(include=["snapshots"]):
                if blob.snapshot:
                    print(f"{container}/{blob.name} snapshot {blob.snapshot}")
            status = json.loads(
                service.get_blob_client(logs_container, "demo.Status.txt").download_blob().readall()
            )
            inner = json.loads(status[0]["status"]["formattedMessage"]["message"])
            print(
                f"status blob: status={status[0]['status']['status']} code={status[0]['status']['code']} "
                f"snapshotConsistency={inner.get('snapshotConsistency')}"
            )
            lines = Path(log_file).read_text().splitlines()
            print(f"job log on the frozen filesystem: {len(lines)} JSON lines, e.g.")
            for line in lines[-3:]:
                print("  " + textwrap.shorten(line, 160))

            _say("the sidecar: metrics for Prometheus, the log mirrored to logsBlobUri")
            metrics_url = f"http://127.0.0.1:{port}/metrics"
            _wait_for(
                lambda: (
                    'vmsnap_jobs_total{consistency="application",outcome="success"} 2.0'
                    in _get(metrics_url)
                ),
                "the sidecar to ingest both jobs",
            )
            wanted = (
                "vmsnap_jobs_total{",
                "vmsnap_snapshot_jobs_total{",
                "vmsnap_snapshot_seconds_total{",
                "vmsnap_freeze_duration_seconds_count",
                "vmsnap_freeze_duration_seconds_sum",
                "vmsnap_script_runs_total{",
                "vmsnap_last_success_timestamp_seconds",
            )
            for line in _get(metrics_url).splitlines():
                if line.startswith(wanted) and not line.endswith(" 0.0"):
                    print("  " + line)
            mirrored = service.get_blob_client(logs_container, "demo.Logs.txt")
            _wait_for(lambda: _blob_lines(mirrored) >= len(lines), "the log mirror")
            print(
                f"logsBlobUri holds {_blob_lines(mirrored)} lines "
                f"({mirrored.get_blob_properties().blob_type}), mirrored exactly once"
            )

            _say(f"snapshot-runtime trace {task_id}")
            subprocess.run(
                [
                    str(REPO / ".venv" / "bin" / "snapshot-runtime"),
                    "trace",
                    task_id,
                    "--state-dir",
                    os.path.join(work, "state"),
                    "--spool",
                    spool,
                    "--width",
                    "100",
                ],
                check=False,
                timeout=60,
            )
            Path(app_dir, "stop").touch()
            app.wait(timeout=10)
            return job.returncode or host_job.returncode
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
