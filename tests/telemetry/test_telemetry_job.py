"""Telemetry of real CLI jobs: SIGKILL while frozen loses no log line (I2), no secret
anywhere (I5), and ``snapshot-runtime trace``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from snapshot_runtime import cli
from snapshot_runtime.job.run import run_job
from snapshot_runtime.telemetry.sealing import (
    generate_keypair,
    unseal,
    versions_document,
)
from snapshot_runtime.telemetry.spool_schema import SIDECAR_SEALING_FILE, complete_lines
from tests.freeze_support import wait_frozen, writable_within
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.faultproxy import FaultProxy
from tests.support.jobkit import CLI, Workspace
from tests.support.loopfs import LoopFs
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.waiting import wait_until

SNAPSHOT_REQUEST = "comp=snapshot"


@pytest.fixture
def spool() -> Iterator[str]:
    path = f"/run/snapshot-runtime-test-{uuid.uuid4().hex[:12]}"  # a tmpfs, as in production
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _lines(path: str | Path) -> list[bytes]:
    try:
        return complete_lines(Path(path).read_bytes())
    except FileNotFoundError:
        return []


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console script, in its own process."""
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=120, cwd="/", env=env, check=False
    )


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``snapshot-runtime`` in this process (for the read-only commands: fast)."""
    capsys.readouterr()
    code = cli.main(list(args))
    return code, capsys.readouterr().out


@pytest.mark.root
@pytest.mark.azurite
def test_sigkill_while_frozen_loses_no_log_line(
    azurite: Azurite,
    ws: Workspace,
    ext4: LoopFs,
    proxy: FaultProxy,
    spool: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    task_id = f"{uuid.uuid4()}_1"
    proxy.set_latency(30.0, match=SNAPSHOT_REQUEST)  # the job sits frozen in the snapshot
    disks = jobkit.make_disks(azurite, 1, endpoints={0: proxy.endpoint()})
    args = ws.run_args(
        ws.settings(disks, task_id=task_id),
        config=ws.config(),
        mounts=[ext4.mountpoint],
        extra=["--freeze-timeout", "20", "--quiet", "--spool", spool],
    )
    proc = ws.start_cli(*args)
    blocked = wait_frozen(ext4.mountpoint, proc)
    for pid in jobkit.child_pids(proc.pid):
        ws.adopt_pid(pid)
    job_dir = Path(spool, "jobs", task_id)
    before_kill = _lines(job_dir / "log.jsonl")  # everything emitted so far
    # Written just before the first FIFREEZE: what is frozen, and until when,
    # for the sidecar's backstop should the watchdog die with the runtime.
    frozen_record = json.loads((job_dir / "record.json").read_text())
    assert frozen_record["freeze"]["in_progress"] is True
    assert frozen_record["freeze"]["mountpoints"] == [ext4.mountpoint]
    deadline = frozen_record["freeze"]["deadline_at"]
    assert time.time() < deadline <= time.time() + 20.0
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    assert blocked.wait(5.0), "still frozen 5 s after the SIGKILL"
    assert writable_within(ext4.mountpoint, 1.0)

    spooled = _lines(job_dir / "log.jsonl")
    docs = [json.loads(x) for x in spooled]
    messages = [d["message"] for d in docs]
    # Every line emitted before the kill is in the spool, seq without gaps,
    # including the one logged inside the frozen window.
    assert spooled[: len(before_kill)] == before_kill
    assert [d["seq"] for d in docs] == list(range(1, len(docs) + 1))
    in_window = [i for i, m in enumerate(messages) if m.startswith("filesystems frozen")]
    assert in_window, messages
    # The local log stopped at the freeze: the window's lines were held in memory.
    local = _lines(ws.log_path)
    assert local == spooled[: len(local)] and len(local) <= in_window[0]
    missing = len(spooled) - len(local)
    assert missing >= 1
    # The record says the job never completed; the watchdog report is in the spool.
    record = json.loads((job_dir / "record.json").read_text())
    assert record["complete"] is False and record["pid"] == proc.pid
    (report_file,) = wait_until(
        lambda: list(Path(spool, "watchdog").glob("*.json")), 3.0, "the watchdog's report"
    )
    assert json.loads(report_file.read_text())["reason"] == "eof"

    # `snapshot-runtime trace` shows the dead job's spans from the spool.
    code, traced = _main(capsys, "trace", task_id, "--spool", spool, "--state-dir", "/nonexistent")
    assert code == 0 and "vmsnap.prepare" in traced and "outcome running" in traced

    # Recovery (also done at the start of the next `run`) restores them into the local log.
    code, recovered = _main(capsys, "recover", "--spool", spool, "--json")
    assert code == 0
    (found,) = json.loads(recovered)["recovered"]
    assert (found["task_id"], found["lines_replayed"]) == (task_id, missing)
    assert _lines(ws.log_path) == spooled
    record = json.loads((job_dir / "record.json").read_text())
    assert record["complete"] and record["interrupted"] and record["outcome"] == "failed"
    assert json.loads(_main(capsys, "recover", "--spool", spool, "--json")[1]) == {"recovered": []}
    print(
        f"\n[I2 SIGKILL while frozen] {len(before_kill)} lines emitted before the kill, "
        f"{len(spooled)} in the spool (seq 1..{len(spooled)}), {missing} held in memory and "
        f"replayed into the local log by `recover`"
    )


PROC_DUMP = """\
#!/bin/sh
set -eu
marks="$1"
{
  echo "== environ"; env
  echo "== cmdline"; tr '\\0' '\\n' < /proc/$$/cmdline
  echo "== runtime cmdline"; tr '\\0' '\\n' < /proc/$PPID/cmdline
  echo "== runtime environ"; tr '\\0' '\\n' < /proc/$PPID/environ
} > "$marks/$SNAPSHOT_PHASE.proc"
echo "output of $SNAPSHOT_PHASE"
"""


def _tree(root: str | Path) -> dict[str, bytes]:
    out = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as fh:
                out[path] = fh.read()
    return out


@pytest.mark.root
@pytest.mark.azurite
def test_no_secret_in_any_telemetry_artifact(
    azurite: Azurite, ws: Workspace, ext4: LoopFs, spool: str, capsys: pytest.CaptureFixture[str]
) -> None:
    disks = jobkit.make_disks(azurite, 2)
    container, status_blob, status_url = jobkit.status_blob_url(azurite)
    logs_blob = "job.Logs.txt"
    logs_url = azurite.sas_url(container, logs_blob)
    config = ws.config(pre=ws.script("pre.sh", PROC_DUMP), post=ws.script("post.sh", PROC_DUMP))
    private_pem, public_raw = generate_keypair()
    artifacts: dict[str, bytes | str] = {}
    with OtlpReceiver() as receiver:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEPARENT"))},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
            "TRACEPARENT": f"00-{uuid.uuid4().hex}-00f067aa0ba902b7-01",
        }
        # Run 0 without a sidecar (the runtime exports OTLP and uploads the log
        # itself); run 1 with one (credentials.sealed, nothing sent directly).
        for n in range(2):
            if n == 1:
                Path(spool, SIDECAR_SEALING_FILE).write_bytes(versions_document())
                Path(spool, "sidecar.pub").write_bytes(public_raw)
            task_id = f"secrets-{n}_1"
            settings = ws.settings(
                disks, task_id=task_id, status_url=status_url, logs_url=logs_url, name=f"{n}.s"
            )
            args = ws.run_args(settings, config=config, mounts=[ext4.mountpoint], as_json=n == 0)
            result = _cli(*args, "--spool", spool, env=env)
            assert result.returncode == 0, result.stdout + result.stderr
            artifacts[f"run {n} stdout"] = result.stdout
            artifacts[f"run {n} stderr"] = result.stderr
            artifacts[f"run {n} status blob"] = jobkit.blob_bytes(azurite, container, status_blob)
            for phase in ("pre", "post"):
                artifacts[f"run {n} {phase} /proc"] = ws.mark(f"{phase}.proc").read_text()
            artifacts[f"run {n} trace --json"] = _main(
                capsys, "trace", task_id, "--state-dir", str(ws.state_dir), "--json"
            )[1]
            if n == 0:
                mirrored = jobkit.blob_bytes(azurite, container, logs_blob)
                artifacts["logs blob (runtime mirror)"] = mirrored
                assert b'"job done: consistency=application' in mirrored
        assert len(receiver.requests) == 1  # run 0 only: run 1 has a sidecar
        artifacts["OTLP wire"] = b"".join(receiver.raw)
        artifacts["OTLP decoded"] = json.dumps([asdict(s) for s in receiver.spans])
    for root in (spool, ws.root / "log", ws.state_dir):
        artifacts.update(_tree(root))

    # The sealed credentials open with the sidecar's key, and only with it.
    sealed = Path(spool, "jobs", "secrets-1_1", "credentials.sealed").read_text()
    assert json.loads(unseal(private_pem, sealed)) == {"logsBlobUri": logs_url}
    assert not Path(spool, "jobs", "secrets-0_1", "credentials.sealed").exists()
    record0 = json.loads(Path(spool, "jobs", "secrets-0_1", "record.json").read_text())
    record1 = json.loads(Path(spool, "jobs", "secrets-1_1", "record.json").read_text())
    assert record0["logs"]["mirrored_by"] == "runtime" and record0["spans"]["otlp"]["exported"]
    assert record1["logs"]["mirrored_by"] == "sidecar" and record1["spans"]["otlp"] is None
    # Scripts got a TRACEPARENT (from the incoming one) and no secret.
    assert f"TRACEPARENT=00-{env['TRACEPARENT'][3:35]}-" in str(artifacts["run 0 pre /proc"])

    secrets = [
        *jobkit.secrets_of([*disks, status_url, logs_url]),
        *(jobkit.protected_values(ws.root / f"{n}.s") for n in range(2)),
    ]
    settings_text = (ws.root / "0.s").read_text()
    assert all(jobkit.raw_sig(u) in settings_text for u in (status_url, logs_url))
    names = sorted(artifacts)
    assert any(name.endswith("log.jsonl") for name in names)
    assert any(name.endswith("spans.jsonl") for name in names)
    assert any(name.endswith("credentials.sealed") for name in names)
    assert any(name.endswith(".status") for name in names)
    found = {name: jobkit.leaks(artifacts[name], secrets) for name in names}
    assert found == {name: [] for name in names}
    print(f"\n[I5] {len(secrets)} secret values searched in {len(names)} artifacts: 0 hits")


def _trace_rows(stdout: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(stdout)["waterfall"]
    return rows


@pytest.mark.root
@pytest.mark.azurite
def test_trace_command_waterfall(
    azurite: Azurite, ws: Workspace, ext4: LoopFs, capsys: pytest.CaptureFixture[str]
) -> None:
    task_id = f"{uuid.uuid4()}_1"
    report = run_job(
        ws.options(
            ws.settings(jobkit.make_disks(azurite, 2), task_id=task_id),
            config_path=ws.config(),
            include_mounts=(ext4.mountpoint,),
        )
    )
    assert report.snapshot_taken, report.error_message
    state = str(ws.state_dir)
    code, text = _main(capsys, "trace", task_id, "--state-dir", state, "--width", "120")
    assert code == 0
    assert f"task {task_id}  trace {uuid.UUID(task_id[:-2]).hex}" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("span "))
    body = lines[header + 1 :]
    assert body[0].startswith("vmsnap.job ")
    assert any(line.startswith("  vmsnap.freeze ") for line in body)
    assert sum(line.startswith("    vmsnap.snapshot.disk ") for line in body) == 2
    assert all(len(line) <= 120 for line in lines)
    rows = _trace_rows(_main(capsys, "trace", task_id, "--state-dir", state, "--json")[1])
    assert rows[0]["name"] == "vmsnap.job" and rows[0]["start_ms"] == 0.0
    assert next(r["name"] for r in rows if r["depth"] == 1) == "vmsnap.settings"
    assert all(r["start_ms"] >= 0 and r["duration_ms"] >= 0 for r in rows)
    capsys.readouterr()
    code = cli.main(["trace", "no-such-task", "--state-dir", state, "--spool", "/nope"])
    out, err = capsys.readouterr()
    # Not found: nothing on stdout, the reason on stderr.
    assert code == 1 and out == ""
    assert "not found: no job with taskId or trace id 'no-such-task'" in err
