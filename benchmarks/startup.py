"""Start-up of the console script: --help, exec to the job's first phase, peak RSS.

Every job is a fresh ``snapshot-runtime run`` process, so its imports are paid
on every snapshot. Each round, as subprocesses of this one:

* ``snapshot-runtime --help`` (wall time, exec to exit);
* a real 1-disk job (root-owned pre/post scripts, a loop ext4 filesystem
  really frozen, Azurite, telemetry and spool on as in production): from
  just before exec to the first phase's ``started_at`` in the job's record,
  and the runtime process's own peak RSS (its VmHWM, sampled while it runs);
* the baseline, in the same run: a bare interpreter (``python -c pass``).

Goals (issue 15), each ending in a ``VERDICT`` line: --help <= 50 ms, exec to
the first phase <= 100 ms, peak RSS of a 1-disk job <= 35 MiB.

Run: ``.venv/bin/python -m benchmarks.startup [--rounds N]`` (root, loop
devices, Azurite: ``make system-deps``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchmarks._verdict import spread, verdict
from benchmarks.telemetry_overhead import _spool_root, _workdir, _write
from tests.support.azurite import Azurite, run_azurite
from tests.support.jobkit import POST_SCRIPT, PRE_SCRIPT, plugin_config, settings_doc
from tests.support.loopfs import loop_filesystem

CLI = str(Path(sys.executable).with_name("snapshot-runtime"))
_ENV: dict[str, str] | None = None  # --source: PYTHONPATH for the code under test


def _hwm_kib(pid: int) -> int:
    """VmHWM of a running process (0 once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int, float]:
    """(start wall clock, seconds to exit, peak RSS KiB, CPU seconds) of one process.

    The peak is the process's own VmHWM, read from /proc while it runs: wait4's
    ru_maxrss would include this (large) parent's high-water mark, which a
    forked child carries across exec.
    """
    started_wall, started = time.time(), time.monotonic()
    # cwd "/": with -m, the current directory would come first on sys.path.
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd="/"
    )
    peak = 0
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        peak = max(peak, _hwm_kib(proc.pid))
        time.sleep(0.002)  # sampling a monotonic high-water mark, not synchronisation
    elapsed = time.monotonic() - started
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} exited {proc.returncode}")
    return started_wall, elapsed, peak, usage.ru_utime + usage.ru_stime


def _first_phase_at(spool: str, task_id: str) -> float:
    """The earliest phase ``started_at`` in the job's record (spool or state)."""
    for path in glob.glob(os.path.join(spool, "**", "*.json"), recursive=True):
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("task_id") == task_id and doc.get("phases"):
            return float(min(p["started_at"] for p in doc["phases"]))
    raise RuntimeError(f"no record with phases for {task_id} under {spool}")


def _job(azurite: Azurite, work: Path, mountpoint: str, cli: list[str]) -> tuple[float, int]:
    """(exec to first phase seconds, peak RSS KiB) of one 1-disk CLI job."""
    container = azurite.container()
    azurite.create_page_blob(container, "disk0.vhd")
    task_id = f"{uuid.uuid4()}_1"
    settings = _write(
        work / f"{task_id}.settings",
        json.dumps(
            settings_doc(
                [azurite.sas_url(container, "disk0.vhd")],
                task_id=task_id,
                status_url=azurite.sas_url(container, "s.txt"),
            )
        ),
        0o600,
    )
    spool = os.path.join(_spool_root(), "spool")
    state = str(work / "state")
    started_wall, _, rss, _ = _timed(
        [
            *cli,
            "run",
            "--settings",
            settings,
            "--config",
            str(work / "config.json"),
            "--mounts",
            mountpoint,
            "--log-file",
            str(work / "log" / "extension.log"),
            "--state-dir",
            state,
            "--run-dir",
            str(work / "run"),
            "--spool",
            spool,
            "--quiet",
        ],
        env=_ENV,
    )
    try:
        first = _first_phase_at(spool, task_id)
    except RuntimeError:
        first = _first_phase_at(state, task_id)
    return first - started_wall, rss


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--source",
        help="run `python -m snapshot_runtime.cli` from this checkout (PYTHONPATH) instead of "
        "the console script: to measure another commit with this benchmark",
    )
    args = parser.parse_args()
    global _ENV
    cli = [CLI]
    if args.source:
        cli = [sys.executable, "-m", "snapshot_runtime.cli"]
        _ENV = {**os.environ, "PYTHONPATH": str(Path(args.source).resolve())}
    bare, helps, help_cpu, firsts, rss = [], [], [], [], []
    with _workdir() as work, run_azurite() as azurite, loop_filesystem("ext4") as fs:
        marks = work / "marks"
        marks.mkdir(mode=0o700)
        pre = _write(work / "pre.sh", PRE_SCRIPT, 0o700)
        post = _write(work / "post.sh", POST_SCRIPT, 0o700)
        _write(work / "config.json", json.dumps(plugin_config(pre, post, str(marks))), 0o600)
        _job(azurite, work, fs.mountpoint, cli)  # warm-up: page cache, Azurite's first requests
        for _ in range(args.rounds):
            bare.append(_timed([sys.executable, "-c", "pass"])[1] * 1000)
            _, wall, _, cpu = _timed([*cli, "--help"], env=_ENV)
            helps.append(wall * 1000)
            help_cpu.append(cpu * 1000)
            first, peak = _job(azurite, work, fs.mountpoint, cli)
            firsts.append(first * 1000)
            rss.append(peak / 1024)
    print(f"start-up, {args.rounds} rounds (subprocesses of this one)")
    print(f"  baseline python -c pass:        {spread(bare)}")
    print(f"  snapshot-runtime --help:        {spread(helps)}")
    print(f"  --help, CPU time (user+sys):    {spread(help_cpu)}")
    print(f"  run: exec to first phase:       {spread(firsts)}")
    print(
        f"  run: peak RSS (1 disk):         min {min(rss):.1f} / median "
        f"{statistics.median(rss):.1f} / max {max(rss):.1f} MiB"
    )
    base = statistics.median(bare)
    print(
        f"  ratios to the bare interpreter: --help {statistics.median(helps) / base:.1f}x, ", end=""
    )
    print(f"first phase {statistics.median(firsts) / base:.1f}x")
    verdict("--help, median", statistics.median(helps), 50.0)
    verdict("exec to the first phase, median", statistics.median(firsts), 100.0)
    verdict("peak RSS of a 1-disk job, median", statistics.median(rss), 35.0, "MiB")


if __name__ == "__main__":
    main()
