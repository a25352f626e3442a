"""The spool (docs/spool.md): file mechanics, recovery, and the record of real jobs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from snapshot_runtime.job.run import run_job
from snapshot_runtime.telemetry.spool import JobSpool, Spool, find_job, read_record
from snapshot_runtime.telemetry.spool_recovery import recover_interrupted
from snapshot_runtime.telemetry.spool_schema import complete_lines
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs
from tests.support.processes import stop_process
from tests.support.waiting import wait_until


def _line(seq: int, message: str = "m") -> str:
    return json.dumps({"seq": seq, "message": message, "task_id": "t"}) + "\n"


def _incomplete_record(task_id: str, log_file: str | None) -> dict[str, Any]:
    return {
        "schema": "snapshot-runtime/job-record",
        "schema_version": 1,
        "task_id": task_id,
        "complete": False,
        "started_at": 1.0,
        "log_file": log_file,
        "logs": {"lines": 1},
        "error": None,
    }


# -- unit ---------------------------------------------------------------------------


def test_layout_modes_and_appends(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"), max_bytes=1 << 20)
    job = spool.open_job("task/1")
    assert os.path.basename(job.path) == "task_1"
    for directory in (spool.root, spool.jobs_dir, spool.watchdog_dir, job.path):
        assert os.stat(directory).st_mode & 0o777 == 0o700
    assert job.append_log(_line(1)) and job.append_log(_line(2))
    job.append_spans([{"name": "vmsnap.job"}])
    assert job.write_record({"schema_version": 1, "task_id": "task/1", "complete": False})
    for name in ("log.jsonl", "spans.jsonl", "record.json", "lock"):
        assert os.stat(os.path.join(job.path, name)).st_mode & 0o777 == 0o600
    assert (job.log_lines, job.spans) == (2, 1)
    assert read_record(job.path) == {"schema_version": 1, "task_id": "task/1", "complete": False}
    assert find_job(spool.root, "task/1") == job.path
    # Same taskId again: a new directory, never mixed into the first.
    again = spool.open_job("task/1")
    assert os.path.basename(again.path) == "task_1~2"
    job.close()
    again.close()


def test_cap_drops_and_counts(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"), max_bytes=300)
    job = spool.open_job("t")
    kept = sum(job.append_log(_line(i, "x" * 40)) for i in range(1, 20))
    job.append_spans([{"name": "s" * 50} for _ in range(5)])
    assert kept < 19 and job.dropped_log_lines == 19 - kept
    assert job.dropped_spans == 5  # the log lines used the whole budget
    assert spool.usage() <= 300
    assert job.write_record({"schema_version": 1, "complete": True})  # always written
    job.close()


def test_torn_last_line_is_not_a_line() -> None:
    assert complete_lines(b'{"a":1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert complete_lines(b"") == []


def test_recovery_replays_missing_lines_in_order(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"))
    log_file = tmp_path / "extension.log"
    lines = [_line(i) for i in range(1, 6)]
    log_file.write_text("".join(lines[:2]) + '{"torn')  # the local log stopped at the freeze
    job_dir = Path(spool.jobs_dir, "t1")
    job_dir.mkdir()
    (job_dir / "lock").touch()  # left by a runtime that died (nobody holds it)
    (job_dir / "record.json").write_text(json.dumps(_incomplete_record("t1", str(log_file))))
    (job_dir / "log.jsonl").write_text("".join(lines) + '{"seq": 6, "torn')
    (found,) = recover_interrupted(spool.root)
    assert (found.task_id, found.lines_in_spool, found.lines_replayed) == ("t1", 5, 3)
    text = log_file.read_text().splitlines()
    assert text[:2] == [x.rstrip("\n") for x in lines[:2]]
    assert text[-3:] == [x.rstrip("\n") for x in lines[2:]]
    record = read_record(str(job_dir))
    assert record is not None
    assert record["complete"] and record["interrupted"] and record["outcome"] == "failed"
    assert record["error"] == "InternalError" and record["recovered"]["lines_replayed"] == 3
    assert not (job_dir / "lock").exists()
    assert recover_interrupted(spool.root) == []  # complete now: nothing more to do


def test_recovery_leaves_a_live_job_alone(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"))
    job = spool.open_job("live")
    job.write_record(_incomplete_record("live", None))
    assert recover_interrupted(spool.root) == []  # its lock is held (by us)
    # Another process holding the lock counts as alive too; once it dies, it is recovered.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
            os.path.join(job.path, "lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lock_path = os.path.join(job.path, "lock")
        # The holder has opened the file and waits for our lock (its flock blocks).
        wait_until(lambda: _has_open(holder.pid, lock_path), 10, "the holder to open the lock")
        os.close(job._lock_fd)  # this runtime "dies": the lock is released, the file stays
        job._lock_fd = -1
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert recover_interrupted(spool.root) == []
    finally:
        stop_process(holder, sig=signal.SIGKILL)
        job.close()
    (found,) = recover_interrupted(spool.root)
    assert found.task_id == "live" and found.note is None and found.log_file is None


def test_a_finished_job_leaves_no_lock(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"))
    job = spool.open_job("done")
    job.write_record({**_incomplete_record("done", None), "complete": True})
    job.close()
    assert not os.path.exists(os.path.join(job.path, "lock"))
    assert recover_interrupted(spool.root) == []


def test_recovery_when_the_log_directory_is_gone(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"))
    job_dir = Path(spool.jobs_dir, "t2")
    job_dir.mkdir()
    (job_dir / "lock").touch()
    (job_dir / "record.json").write_text(
        json.dumps(_incomplete_record("t2", str(tmp_path / "gone" / "x.log")))
    )
    (job_dir / "log.jsonl").write_text(_line(1))
    (found,) = recover_interrupted(spool.root)
    assert found.lines_replayed == 0 and found.note == "log file directory is gone"


def _has_open(pid: int, path: str) -> bool:
    """Whether process ``pid`` has ``path`` open (one of its /proc/<pid>/fd links)."""
    fd_dir = f"/proc/{pid}/fd"
    with contextlib.suppress(OSError):
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                if os.readlink(os.path.join(fd_dir, fd)) == path:
                    return True
    return False


# -- real jobs ------------------------------------------------------------------------


COPY_SPOOL = """\
#!/bin/sh
# Copy the job's spool directory as it is while the pre-script runs.
set -eu
cp -r "$2/jobs/$SNAPSHOT_TASK_ID" "$1/spool-during-pre"
"""


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in complete_lines(path.read_bytes())]


@pytest.mark.root
@pytest.mark.azurite
def test_record_is_incremental_then_complete(azurite: Azurite, ws: Workspace, ext4: LoopFs) -> None:
    spool_dir = ws.root / "spool"
    disks = jobkit.make_disks(azurite, 2)
    task_id = f"{uuid.uuid4()}_1"
    config = ws.config(
        pre=ws.script("copy.sh", COPY_SPOOL),
        post=ws.scripts()[1],
        preScriptParams=[str(ws.marks), str(spool_dir)],
    )
    report = run_job(
        ws.options(
            ws.settings(disks, task_id=task_id),
            config_path=config,
            include_mounts=(ext4.mountpoint,),
            spool_dir=str(spool_dir),
        )
    )
    assert report.consistency == "application", report.error_message

    # While the job ran (pre-script): a readable, incomplete record.
    during = ws.mark("spool-during-pre")
    early = json.loads((during / "record.json").read_text())
    assert early["complete"] is False and early["outcome"] is None
    assert early["task_id"] == task_id and early["trace_id"] == report.trace_id
    assert [p["name"] for p in early["phases"]] == ["settings", "plugin_config", "status_start"]
    # (the log grows between record writes: the script's start line came after it)
    assert 0 < early["logs"]["lines"] <= len(_jsonl(during / "log.jsonl"))
    assert early["spans"]["count"] == len(_jsonl(during / "spans.jsonl")) == 3

    # At the end: complete, with everything the contract lists.
    job_dir = spool_dir / "jobs" / task_id
    assert report.spool_job_dir == str(job_dir)
    record = json.loads((job_dir / "record.json").read_text())
    assert record["schema"] == "snapshot-runtime/job-record" and record["schema_version"] == 1
    assert record["complete"] is True and record["outcome"] == "success"
    assert record["consistency"] == "application" and record["error"] is None
    assert record["trace_id"] == report.trace_id and len(record["root_span_id"]) == 16
    assert [p["name"] for p in record["phases"]] == [p.name for p in report.phases]
    assert all(p["status"] == "ok" for p in record["phases"])
    assert record["freeze"]["window_seconds"] == pytest.approx(report.freeze_seconds, abs=1e-5)
    assert record["freeze"]["mounts"] == 1 and record["freeze"]["thawed_by"] == "runtime"
    for which in ("pre", "post"):
        script = record["scripts"][which]
        assert (script["attempts"], script["retries"], script["timed_out"]) == (1, 0, False)
        assert script["exit_codes"] == [0]
    assert [(d["index"], d["ok"], d["attempts"]) for d in record["disks"]] == [
        (0, True, 1),
        (1, True, 1),
    ]
    assert all(d["seconds"] > 0 for d in record["disks"])
    logs = _jsonl(job_dir / "log.jsonl")
    assert record["logs"]["lines"] == len(logs) and record["dropped"] == {
        "log_lines": 0,
        "spans": 0,
    }
    assert [line["seq"] for line in logs] == list(range(1, len(logs) + 1))
    assert record["spans"]["count"] == len(_jsonl(job_dir / "spans.jsonl")) == 15
    assert record["pid"] == os.getpid() and record["spool"] == {"gated": False}
    text = json.dumps(record)
    assert "http" not in text  # no URL at all in the record
    # The same final record (and the spans) for `snapshot-runtime trace`.
    state = json.loads((ws.state_dir / "jobs" / f"{task_id}.json").read_text())
    assert state["record"] == record and len(state["spans"]) == 15
    # The lock was released: a recovery pass leaves this complete job alone.
    assert recover_interrupted(str(spool_dir)) == []


@pytest.mark.azurite
def test_spool_cap_counts_what_it_dropped(azurite: Azurite, ws: Workspace) -> None:
    spool_dir = ws.root / "spool"
    report = run_job(
        ws.options(
            ws.settings(jobkit.make_disks(azurite, 1)),
            mountinfo_path=os.devnull,  # no freeze needed for the cap
            spool_dir=str(spool_dir),
            spool_max_bytes=1500,
        )
    )
    assert report.snapshot_taken  # a full spool never fails a job
    job_dir = Path(report.spool_job_dir or "")
    record = json.loads((job_dir / "record.json").read_text())
    assert record["complete"] is True
    assert record["dropped"]["log_lines"] > 0 and record["dropped"]["spans"] > 0
    kept = _jsonl(job_dir / "log.jsonl")
    assert record["logs"]["lines"] == len(kept)
    assert (job_dir / "log.jsonl").stat().st_size + (job_dir / "spans.jsonl").stat().st_size <= 1500
    # The local log still has every line.
    local = jobkit.read_json_lines(ws.log_path)
    assert len(local) == len(kept) + record["dropped"]["log_lines"]
    assert [line["seq"] for line in local] == list(range(1, len(local) + 1))


def test_job_spool_is_a_dataclass_with_counters(tmp_path: Path) -> None:
    # The counters the record reports start at zero and survive close().
    spool = Spool(str(tmp_path / "s"))
    job = spool.open_job("x")
    assert isinstance(job, JobSpool)
    job.close()
    job.close()  # idempotent
    assert not job.append_log(_line(1)) and job.dropped_log_lines == 1


def test_build_record_is_pure_and_scrubbed() -> None:
    from snapshot_runtime.core.consistency import settings_rejected
    from snapshot_runtime.core.errors import ErrorCode
    from snapshot_runtime.core.phases import PhaseRecord
    from snapshot_runtime.telemetry.record import RecordFacts, build_record

    phase = PhaseRecord(
        name="settings",
        started_at=100.5,
        seconds=0.01,
        status="error",
        error="InvalidSettings",
        detail="bad url https://a/b?sv=1&sig=TOPSECRETSIG",
    )
    facts = RecordFacts(
        task_id="t_1",
        started_at=100.0,
        updated_at=101.0,
        pid=7,
        complete=True,
        ended_at=101.0,
        verdict=settings_rejected(ErrorCode.INVALID_SETTINGS),
        phases=[phase],
    )
    doc = build_record(facts)
    assert build_record(facts) == doc
    assert (doc["complete"], doc["outcome"], doc["error"]) == (True, "failed", "InvalidSettings")
    assert doc["consistency"] == "none" and doc["status_code"] == ErrorCode.INVALID_SETTINGS.code
    assert doc["phases"][0]["offset_seconds"] == 0.5
    assert "TOPSECRETSIG" not in json.dumps(doc)
    running = build_record(RecordFacts(task_id="t_1", started_at=1.0, updated_at=2.0, pid=7))
    assert (running["complete"], running["outcome"], running["ended_at"]) == (False, None, None)
