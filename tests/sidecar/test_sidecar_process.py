"""The real `snapshot-sidecar` process: SIGKILL mid-mirroring, restart, exact blob; CLI basics."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from snapshot_sidecar.state import STATE_FILE

from tests.sidecar.conftest import Rig
from tests.support.azurite import Azurite
from tests.support.faultproxy import FaultProxy
from tests.support.waiting import wait_until

SIDECAR = [sys.executable, "-m", "snapshot_sidecar.cli"]


def _start(rig: Rig, *extra: str, log: Path) -> subprocess.Popen[bytes]:
    args = [
        *SIDECAR,
        "--spool",
        str(rig.spool),
        "--state-dir",
        str(rig.state),
        "--listen",
        "127.0.0.1:0",
        "--poll-interval",
        "0.05",
        "--keep-jobs",
        *extra,
    ]
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()


def _log_status(rig: Rig, name: str) -> str | None:
    try:
        doc = json.loads((rig.state / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    job = doc["jobs"].get(name)
    return job["log"]["status"] if job else None


@pytest.mark.azurite
def test_sigkill_mid_mirroring_then_restart_gives_the_exact_log(
    rig: Rig, azurite: Azurite, tmp_path: Path
) -> None:
    with FaultProxy("127.0.0.1", azurite.port) as proxy:
        container = azurite.container()
        blob = f"logs/{uuid.uuid4().hex}.log"
        url = azurite.sas_url(container, blob, endpoint=proxy.endpoint())
        client = azurite.service().get_blob_client(container, blob)
        job = rig.gen.job("killed")
        rig.gen.seal_logs_url(job, url)
        rig.gen.log_lines(job, 4000)  # ~640 KB
        total = len(job.log_bytes)
        proxy.set_latency(0.03, match="comp=appendblock")

        def size() -> int:
            return int(client.get_blob_properties().size) if client.exists() else 0

        log = tmp_path / "sidecar.log"
        kills = []
        for fraction in (0.25, 0.6):
            proc = _start(rig, "--mirror-max-bytes", "8192", log=log)
            try:
                wait_until(lambda f=fraction: size() >= total * f, 30, f"{fraction:.0%} mirrored")
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            kills.append(size())
            assert _log_status(rig, "killed") != "done"
        proc = _start(rig, "--mirror-max-bytes", "8192", log=log)
        try:
            wait_until(lambda: _log_status(rig, "killed") == "done", 60, "mirroring to finish")
        finally:
            proc.terminate()
            assert proc.wait(10) == 0, log.read_text()
    data = bytes(client.download_blob().readall())
    assert "sig=" not in log.read_text()  # the sidecar's own log never holds the SAS
    assert 0 < kills[0] < kills[1] < total
    assert data == bytes(job.log_bytes), "the blob must equal the log: no line lost or doubled"
    lines = data.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, 4001))
    state = json.loads((rig.state / STATE_FILE).read_text())
    assert state["jobs"]["killed"]["log"]["seq"] == 4000
    counted = state["metrics"]["counters"]["vmsnap_sidecar_log_mirror_bytes_total"]
    assert counted == [[[], float(len(data))]]  # the metric is exactly-once too


def test_once_ingests_and_exits(rig: Rig, tmp_path: Path) -> None:
    rig.gen.job("a")
    rig.gen.job("b", outcome="failed", error="Pre-ScriptTimeout", consistency="none")
    result = subprocess.run(
        [*SIDECAR, "--spool", str(rig.spool), "--state-dir", str(rig.state), "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads((rig.state / STATE_FILE).read_text())
    assert doc["metrics"]["counters"]["vmsnap_sidecar_records_ingested_total"] == [[[], 2.0]]
    assert not (rig.spool / "jobs" / "a").exists()  # handled, removed
    assert (rig.spool / "sidecar.pub").read_bytes() == rig.keys.public


def test_serves_metrics_stops_on_sigterm_and_locks_the_state_dir(rig: Rig, tmp_path: Path) -> None:
    rig.gen.job("a")
    log = tmp_path / "sidecar.log"
    proc = _start(rig, log=log)
    try:
        wait_until(lambda: "/metrics on" in log.read_text(), 30, "the server to start")
        match = re.search(r"/metrics on (http://127\.0\.0\.1:\d+)", log.read_text())
        assert match
        url = match.group(1) + "/metrics"

        def scraped() -> bool:
            with urllib.request.urlopen(url, timeout=5) as response:
                return b"vmsnap_sidecar_records_ingested_total 1.0" in response.read()

        wait_until(scraped, 30, "the job to be ingested")
        second = subprocess.run(
            [*SIDECAR, "--spool", str(rig.spool), "--state-dir", str(rig.state), "--once"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 1 and "holds" in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
    assert oct(os.stat(rig.state / "sidecar.key").st_mode & 0o777) == "0o600"


def _lose_state(state_dir: Path, how: str) -> None:
    path = state_dir / STATE_FILE
    if how == "deleted":
        path.unlink(missing_ok=True)
    elif how == "corrupt":
        path.write_bytes(b'{"schema": "snapshot-sidecar/state", "jobs": {"a')
    else:  # a newer format: the downgrade path of docs/operations.md
        doc = json.loads(path.read_text())
        doc["schema_version"] = 99
        path.write_text(json.dumps(doc))


@pytest.mark.azurite
def test_lost_state_never_appends_a_log_twice(rig: Rig, azurite: Azurite, tmp_path: Path) -> None:
    """Issue 11 defect 3: state.json deleted, corrupt, of a newer version, between and
    during jobs (one still running): every blob == its spool log, each line once, in order."""
    container = azurite.container()
    service = azurite.service()
    blobs = {name: f"logs/{name}-{uuid.uuid4().hex}.log" for name in ("done", "running")}
    finished = rig.gen.job("done")
    rig.gen.seal_logs_url(finished, azurite.sas_url(container, blobs["done"]))
    rig.gen.log_lines(finished, 18)
    running = rig.gen.job("running", complete=False, pid=os.getpid())
    rig.gen.seal_logs_url(running, azurite.sas_url(container, blobs["running"]))
    lock_fd = os.open(running.path / "lock", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "its runtime" is alive
    rig.gen.log_lines(running, 20)
    jobs = {"done": finished, "running": running}

    def blob(name: str) -> bytes:
        client = service.get_blob_client(container, blobs[name])
        return bytes(client.download_blob().readall()) if client.exists() else b""

    def caught_up(name: str) -> bool:
        return len(blob(name)) >= len(jobs[name].log_bytes)

    def check() -> None:
        for name, job in jobs.items():
            data = blob(name)
            lines = len(data.splitlines())
            assert data == bytes(job.log_bytes), f"{name}: {lines} lines, spool {job.seq}"
            seqs = [json.loads(line)["seq"] for line in data.splitlines()]
            assert seqs == list(range(1, job.seq + 1))

    log = tmp_path / "sidecar.log"
    fast = ("--mirror-batch-bytes", "0", "--mirror-flush-seconds", "0")
    proc = _start(rig, *fast, log=log)
    try:
        wait_until(lambda: caught_up("done") and caught_up("running"), 30, "the first mirroring")
        wait_until(lambda: _log_status(rig, "done") == "done", 30, "the finished job's log done")
        check()
        # During a job: the state goes while the sidecar runs, then it is killed.
        _lose_state(rig.state, "deleted")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    _lose_state(rig.state, "deleted")  # whatever a last commit wrote meanwhile
    for how, more in (("deleted", 4), ("corrupt", 3), ("newer_version", 2)):
        rig.gen.log_lines(running, more)
        if how == "newer_version":  # the job ends while the sidecar is down
            rig.gen.complete(running)
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)
            (running.path / "lock").unlink()
        proc = _start(rig, *fast, log=log)
        try:
            wait_until(lambda: caught_up("running"), 30, f"mirroring after the state was {how}")
            wait_until(
                lambda: _log_status(rig, "done") == "done", 30, "the finished job seen again"
            )
            if how == "newer_version":
                wait_until(lambda: _log_status(rig, "running") == "done", 30, "the last lines")
            check()
        finally:
            proc.terminate()
            assert proc.wait(10) == 0, log.read_text()
        if how != "newer_version":
            _lose_state(rig.state, {"deleted": "corrupt", "corrupt": "newer_version"}[how])
    check()
    text = log.read_text()
    assert "sig=" not in text
    assert "resuming after it" in text
