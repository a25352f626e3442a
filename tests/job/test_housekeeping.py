"""job.housekeeping on real directories, and `snapshot-runtime run` pruning after a real job."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from snapshot_runtime.core.retention import RetentionPolicy
from snapshot_runtime.job.housekeeping import prune_handler_status, prune_state_dir
from snapshot_runtime.telemetry.spool_schema import job_dir_name
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs
from tests.support.requirements import require

HOUR = 3600.0


def _touch(path: Path, age_hours: float, now: float, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    stamp = now - age_hours * HOUR
    os.utime(path, (stamp, stamp))
    return path


def _names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_state_dir_keeps_the_newest_records_and_status_files_and_nothing_else_goes(
    tmp_path: Path,
) -> None:
    now = time.time()
    jobs, status = tmp_path / "jobs", tmp_path / "status"
    for i in range(12):  # task-11 newest ... task-0 oldest, one hour apart
        _touch(jobs / f"task-{i}.json", 12 - i, now)
        _touch(status / f"task-{i}.status", 12 - i, now)
    # Never candidates: atomic_file's temporary file, a symlink, a directory,
    # another kind of file, even when they are the oldest things there.
    _touch(jobs / ".task-99.json.abc.tmp", 500, now)
    (jobs / "link.json").symlink_to(jobs / "task-0.json")
    (jobs / "sub.json").mkdir()
    _touch(jobs / "notes.txt", 500, now)

    report = prune_state_dir(str(tmp_path), RetentionPolicy(keep=5, max_age_days=None), now=now)

    assert report.errors == []
    assert _names(jobs) == {
        *(f"task-{i}.json" for i in range(7, 12)),
        ".task-99.json.abc.tmp",
        "link.json",
        "sub.json",
        "notes.txt",
    }
    assert _names(status) == {f"task-{i}.status" for i in range(7, 12)}
    assert sorted(report.removed) == sorted(
        [str(jobs / f"task-{i}.json") for i in range(7)]
        + [str(status / f"task-{i}.status") for i in range(7)]
    )


def test_state_dir_max_age(tmp_path: Path) -> None:
    now = time.time()
    for i, age_days in enumerate([0.1, 2, 20, 40, 400]):
        _touch(tmp_path / "jobs" / f"t{i}.json", age_days * 24, now)
    prune_state_dir(str(tmp_path), RetentionPolicy(keep=None, max_age_days=30), now=now)
    assert _names(tmp_path / "jobs") == {"t0.json", "t1.json", "t2.json"}


def test_a_missing_state_dir_is_nothing_to_do(tmp_path: Path) -> None:
    report = prune_state_dir(str(tmp_path / "absent"), RetentionPolicy(), now=time.time())
    assert report.removed == [] and report.errors == []


def test_handler_status_folder_prunes_only_our_sequence_files_and_never_the_current(
    tmp_path: Path,
) -> None:
    """The status folder is the agent's: only N.status goes, and the current N stays
    even when it is the oldest file there (the agent may be reading it)."""
    now = time.time()
    folder = tmp_path / "status"
    for seq in range(10):  # 9.status newest
        _touch(folder / f"{seq}.status", 10 - seq, now)
    _touch(folder / "HeartBeat.Json", 900, now)
    _touch(folder / "3.status.bak", 900, now)
    _touch(folder / "07.status", 900, now)  # not a name the handler writes
    report = prune_handler_status(
        str(folder), RetentionPolicy(keep=3, max_age_days=None), current_seq=0, now=now
    )
    assert report.errors == []
    assert _names(folder) == {
        "0.status",  # current: protected though the oldest, beyond the 3 newest
        "7.status",
        "8.status",
        "9.status",
        "HeartBeat.Json",
        "3.status.bak",
        "07.status",
    }


def test_a_file_that_cannot_be_removed_is_reported_and_the_rest_go(tmp_path: Path) -> None:
    now = time.time()
    jobs = tmp_path / "jobs"
    for i in range(4):
        _touch(jobs / f"t{i}.json", 4 - i, now)
    # An immutable file (chattr +i): unlink fails with EPERM even for root.
    stuck = jobs / "t0.json"
    chattr = subprocess.run(["chattr", "+i", str(stuck)], capture_output=True, check=False)
    require(chattr.returncode == 0, "chattr +i (an immutable file) on the test's filesystem")
    try:
        report = prune_state_dir(str(tmp_path), RetentionPolicy(keep=1, max_age_days=None), now=now)
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    assert report.removed == [str(jobs / "t1.json"), str(jobs / "t2.json")]
    assert len(report.errors) == 1 and str(stuck) in report.errors[0]
    assert _names(jobs) == {"t0.json", "t3.json"}


@pytest.mark.azurite
@pytest.mark.root
def test_run_prunes_the_state_dir_after_a_real_job_and_keeps_its_record(
    azurite: Azurite, ws: Workspace, ext4: LoopFs
) -> None:
    """`snapshot-runtime run --keep-records 3`: after the job, 3 records stay, the
    job's own (the newest) among them, and as many status files."""
    now = time.time()
    jobs, status = Path(ws.state_dir) / "jobs", Path(ws.state_dir) / "status"
    for i in range(6):
        _touch(jobs / f"old-{i}.json", 48 - i, now)
        _touch(status / f"old-{i}.status", 48 - i, now)
    task_id = "housekeeping-task_1"
    disks = jobkit.make_disks(azurite, 1)
    result = ws.cli(
        *ws.run_args(
            ws.settings(disks, task_id=task_id),
            config=ws.config(),
            mounts=[ext4.mountpoint],
            extra=["--keep-records", "3", "--keep-days", "0"],
        ),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["taskId"] == task_id
    assert "housekeeping" not in result.stderr
    own = f"{job_dir_name(task_id)}.json"
    assert _names(jobs) == {own, "old-5.json", "old-4.json"}
    record = json.loads((jobs / own).read_text())
    assert record["record"]["task_id"] == task_id
    assert len(_names(status)) == 3
    assert f"{job_dir_name(task_id)}.status" in _names(status)
