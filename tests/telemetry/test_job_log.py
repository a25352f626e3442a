"""Freeze-safe logs: seq, line sinks, the gate (unit); a log on the frozen filesystem (real)."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from snapshot_runtime.core.redact import Redactor
from snapshot_runtime.job.run import run_job
from snapshot_runtime.telemetry.job_log import FreezeGate, JobLog
from snapshot_runtime.telemetry.spool_schema import complete_lines
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs

# -- unit ---------------------------------------------------------------------------


def _log(tmp_path: Path, **kw: object) -> JobLog:
    return JobLog(path=str(tmp_path / "x.log"), task_id="t", redactor=Redactor(), **kw)


def test_every_line_has_seq_trace_and_span_ids(tmp_path: Path) -> None:
    log = _log(tmp_path)
    spool_lines: list[str] = []
    log.add_line_sink(spool_lines.append, gated=False)
    ids = iter([("a" * 32, "b" * 16), ("c" * 32, "d" * 16), ("e" * 32, "f" * 16)])
    log.set_trace_source(lambda: next(ids))
    log.phase("settings").info("one")
    log.phase("freeze").debug("two")
    log.logger.warning("three sig=SECRETSIGNATURE")
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "x.log").read_text().splitlines()]
    assert [x["seq"] for x in lines] == [1, 2, 3]
    assert [x["phase"] for x in lines] == ["settings", "freeze", ""]
    assert [(x["trace_id"], x["span_id"]) for x in lines] == [
        ("a" * 32, "b" * 16),
        ("c" * 32, "d" * 16),
        ("e" * 32, "f" * 16),
    ]
    assert set(lines[0]) >= {"time", "level", "message", "task_id", "trace_id", "span_id", "phase"}
    assert "SECRETSIGNATURE" not in (tmp_path / "x.log").read_text()
    # The line sink saw byte-identical lines (one formatting, fanned out).
    assert "".join(spool_lines) == (tmp_path / "x.log").read_text()


def test_gate_holds_the_file_not_an_ungated_line_sink(tmp_path: Path) -> None:
    console = io.StringIO()
    log = _log(tmp_path, console=console)
    direct: list[str] = []
    held: list[str] = []
    log.add_line_sink(direct.append, gated=False)
    gated = log.add_line_sink(held.append, gated=True)
    opened: list[int] = []
    log.gate.on_open(lambda: opened.append(len(direct)))
    log.gate.on_open(lambda: 1 / 0)  # a broken observer must not break the gate
    log.logger.info("before")
    log.gate.close()
    log.logger.info("inside one")
    log.logger.info("inside two")
    assert (tmp_path / "x.log").read_text().count("\n") == 1  # held in memory
    assert "inside" not in console.getvalue()
    assert [json.loads(x)["message"] for x in direct] == ["before", "inside one", "inside two"]
    assert len(held) == 1 and gated.held == 2
    log.gate.open()
    assert opened == [3] and log.gate.callback_errors == ["ZeroDivisionError: division by zero"]
    messages = [json.loads(x)["message"] for x in (tmp_path / "x.log").read_text().splitlines()]
    assert messages == ["before", "inside one", "inside two"]
    assert [json.loads(x)["message"] for x in held] == messages
    gated.gated = False  # switchable while the job runs
    log.gate.close()
    log.logger.info("after switch")
    assert json.loads(held[-1])["message"] == "after switch"
    log.close()


def test_a_broken_line_sink_loses_only_its_own_lines(tmp_path: Path) -> None:
    log = _log(tmp_path)

    def broken(line: str) -> None:
        raise OSError("ENOSPC")

    sink = log.add_line_sink(broken, gated=False)
    log.logger.info("still in the file")
    log.close()
    assert sink.errors == 1
    assert "still in the file" in (tmp_path / "x.log").read_text()


def test_gate_is_reusable() -> None:
    gate = FreezeGate()
    assert not gate.closed
    gate.close()
    assert gate.closed
    gate.open()
    assert not gate.closed


# -- real: the log directory on the filesystem being frozen ---------------------------


def _jsonl(path: str | Path) -> list[bytes]:
    return complete_lines(Path(path).read_bytes())


@pytest.mark.root
@pytest.mark.azurite
@pytest.mark.parametrize("spool_on_frozen_fs", [False, True], ids=["spool-tmpfs", "spool-frozen"])
def test_log_on_the_frozen_filesystem(
    azurite: Azurite, ws: Workspace, ext4: LoopFs, spool_on_frozen_fs: bool
) -> None:
    tag = uuid.uuid4().hex[:8]
    log_path = os.path.join(ext4.mountpoint, f"log-{tag}", "extension.log")
    spool_dir = (
        os.path.join(ext4.mountpoint, f"spool-{tag}") if spool_on_frozen_fs else f"/run/srt-{tag}"
    )
    try:
        started = time.monotonic()
        report = run_job(
            ws.options(
                ws.settings(jobkit.make_disks(azurite, 2)),
                config_path=ws.config(),
                include_mounts=(ext4.mountpoint,),
                log_path=log_path,
                state_dir=os.path.join(ext4.mountpoint, f"state-{tag}"),
                spool_dir=spool_dir,
                freeze_timeout_seconds=20,
            )
        )
        elapsed = time.monotonic() - started
        assert report.consistency == "application", report.error_message  # no deadlock
        assert report.freeze is not None and report.freeze.thawed_by == "runtime"
        assert elapsed < 10.0

        local = _jsonl(log_path)
        docs = [json.loads(x) for x in local]
        # Every line, in order, seq without gaps.
        assert [d["seq"] for d in docs] == list(range(1, len(docs) + 1))
        times = [d["time"] for d in docs]
        assert times == sorted(times)
        messages = [d["message"] for d in docs]
        order = ["ready: ", "filesystems frozen: snapshot", "frozen window ", "job done"]
        positions = [next(i for i, m in enumerate(messages) if m.startswith(p)) for p in order]
        assert positions == sorted(positions)
        # The spool holds the very same lines.
        assert report.spool_job_dir is not None
        assert _jsonl(os.path.join(report.spool_job_dir, "log.jsonl")) == local
        record = json.loads(Path(report.spool_job_dir, "record.json").read_text())
        assert record["spool"]["gated"] is spool_on_frozen_fs
        assert record["complete"] and record["logs"]["lines"] == len(local)
        print(
            f"\n[log on frozen fs, {'spool frozen' if spool_on_frozen_fs else 'spool tmpfs'}] "
            f"{len(local)} lines, seq 1..{len(local)}, window "
            f"{report.freeze_seconds * 1000:.1f} ms, job {elapsed:.2f} s"
        )
    finally:
        if not spool_on_frozen_fs:
            shutil.rmtree(spool_dir, ignore_errors=True)
