"""Telemetry overhead: whole jobs with telemetry on vs off, measured in the same run.

Each round runs two real jobs back to back (the order alternates between
rounds, so drift and caches do not favour one side), in this process
(``run_job``): a root-owned pre- and post-script, a loop ext4 filesystem
really frozen, 2 page blobs in Azurite snapshotted, a status blob uploaded.

* on: ``JobOptions(telemetry=True)``: spans per phase, the spool on a tmpfs
  (a private one mounted for the run, as /run is in production: some
  containers give /run a disk filesystem), the record after every phase, the
  final record and the state file.
  No ``logsBlobUri`` and no OTLP endpoint: those add a network call after the
  job by design (and only without a sidecar), which is not telemetry overhead
  in the job's own path.
* off: ``JobOptions(telemetry=False)``: no spans, no spool (the local log
  file stays on, as in production).

Prints the medians of the job's wall time and of its frozen window, and the
on/off ratios (goal: wall <= 1.05x, a ``VERDICT`` line; and no added time
inside the window).
The frozen window of a real job varies by milliseconds with Storage latency,
so the telemetry work done inside it is also timed directly: the window's
phase events (freeze end, snapshot start/end, thaw start/end) and its one log
line, with and without telemetry, with the gate closed as in a real window.
No assertions: figures for the closing note, not a test.

Run: ``.venv/bin/python -m benchmarks.telemetry_overhead [--rounds N] [--disks N]``
(needs root, loop devices and Azurite: ``make system-deps``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from loguru import logger

from benchmarks._verdict import verdict
from snapshot_runtime.core.phases import PhaseRecorder
from snapshot_runtime.core.redact import Redactor
from snapshot_runtime.core.window import WindowObserver
from snapshot_runtime.job.records import JobOptions, JobReport
from snapshot_runtime.job.run import run_job
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.telemetry.job_log import JobLog
from snapshot_runtime.telemetry.job_telemetry import JobTelemetry, TelemetryOptions
from snapshot_runtime.telemetry.record import RecordFacts
from tests.support.azurite import Azurite, run_azurite
from tests.support.jobkit import POST_SCRIPT, PRE_SCRIPT, plugin_config, settings_doc
from tests.support.loopfs import loop_filesystem

BASE = "/var/lib/snapshot-runtime-bench"


def _spool_root() -> str:
    return f"/run/snapshot-runtime-bench-{os.getpid()}"


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    if os.geteuid() != 0:
        raise SystemExit("needs root: scripts must be root-owned; the job freezes a loop fs")
    os.makedirs(BASE, mode=0o755, exist_ok=True)
    os.chmod(BASE, 0o755)
    path = Path(tempfile.mkdtemp(dir=BASE))  # 0700, root
    spool = _spool_root()
    os.makedirs(spool, mode=0o700, exist_ok=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", spool],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if mounted:
            subprocess.run(["umount", spool], capture_output=True, check=False)
        shutil.rmtree(spool, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(BASE)


def _write(path: Path, text: str, mode: int) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def _job(
    azurite: Azurite, work: Path, mountpoint: str, disks: int, *, telemetry: bool
) -> JobReport:
    container = azurite.container()
    urls = []
    for i in range(disks):
        azurite.create_page_blob(container, f"disk{i}.vhd")
        urls.append(azurite.sas_url(container, f"disk{i}.vhd"))
    task_id = f"{uuid.uuid4()}_1"
    settings = _write(
        work / f"{task_id}.settings",
        json.dumps(
            settings_doc(urls, task_id=task_id, status_url=azurite.sas_url(container, "s.txt"))
        ),
        0o600,
    )
    return run_job(
        JobOptions(
            settings_path=settings,
            config_path=str(work / "config.json"),
            include_mounts=(mountpoint,),
            log_path=str(work / "log" / "extension.log"),
            state_dir=str(work / "state"),
            run_dir=str(work / "run"),
            spool_dir=os.path.join(_spool_root(), "spool"),
            blob_policy=BlobPolicy(api_version="2025-11-05"),
            telemetry=telemetry,
        )
    )


def _window_work(spool: str, *, telemetry: bool, rounds: int = 2000) -> float:
    """Median seconds of the telemetry-relevant work a frozen window does."""
    redactor = Redactor()
    # The local log file is on in both cases, as in production (held while frozen).
    log = JobLog(path=os.path.join(spool, f"{uuid.uuid4()}.log"), task_id="t", redactor=redactor)
    phases = PhaseRecorder()
    tel = None
    if telemetry:
        tel = JobTelemetry(
            TelemetryOptions(
                spool_dir=spool,
                max_bytes=64 * 1024 * 1024,
                state_dir=spool,
                log_path=None,
                blob_policy=BlobPolicy(),
            ),
            log=log,
            phases=phases,
            redactor=redactor,
            facts=lambda: RecordFacts(task_id="t", started_at=time.time(), updated_at=0, pid=0),
            started_at=time.time(),
            started_monotonic=time.monotonic(),
        )
        tel.begin(f"{uuid.uuid4()}_1")
    freeze_log = log.phase("freeze")
    samples = []
    # The job's window observers, in the job's order (job/run.py).
    observers: list[WindowObserver] = [tel, log.gate] if tel is not None else [log.gate]

    def enter_window() -> None:
        for observer in observers:
            observer.before_freeze()

    def leave_window() -> None:
        for observer in reversed(observers):
            observer.after_thaw()

    enter_window()
    for _ in range(rounds):
        with phases.phase("freeze"):
            t0 = time.perf_counter()
        freeze_log.info("filesystems frozen: snapshot of {} disk(s) started", 2)
        with phases.phase("snapshot"):
            pass
        with phases.phase("thaw"):
            pass
        samples.append(time.perf_counter() - t0)
        if len(samples) % 200 == 0:  # keep the held lines bounded, outside the timing
            leave_window()
            enter_window()
    leave_window()
    if tel is not None:
        tel.close(task_id="t", logs_blob_uri=None)
    log.close()
    return statistics.median(samples)


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.telemetry_overhead")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--disks", type=int, default=2)
    args = parser.parse_args()
    logger.remove()  # as the CLI does: only the job's own sinks
    samples: dict[bool, dict[str, list[float]]] = {
        flag: {"wall": [], "window": [], "freeze": [], "snapshot": [], "thaw": []}
        for flag in (True, False)
    }
    with _workdir() as work, run_azurite() as azurite, loop_filesystem("ext4") as fs:
        marks = work / "marks"
        marks.mkdir(mode=0o700)
        pre = _write(work / "pre.sh", PRE_SCRIPT, 0o700)
        post = _write(work / "post.sh", POST_SCRIPT, 0o700)
        _write(work / "config.json", json.dumps(plugin_config(pre, post, str(marks))), 0o600)
        for flag in (True, False):  # warm-up: imports, first connections
            _job(azurite, work, fs.mountpoint, args.disks, telemetry=flag)
        for n in range(args.rounds):
            order = (True, False) if n % 2 == 0 else (False, True)
            for flag in order:
                started = time.monotonic()
                report = _job(azurite, work, fs.mountpoint, args.disks, telemetry=flag)
                wall = time.monotonic() - started
                if report.consistency != "application":
                    raise SystemExit(f"job failed: {report.error_code}: {report.error_message}")
                samples[flag]["wall"].append(wall)
                samples[flag]["window"].append(report.freeze_seconds)
                for phase in report.phases:
                    if phase.name in ("freeze", "snapshot", "thaw"):
                        samples[flag][phase.name].append(phase.seconds)
        spool_fs = subprocess.run(
            ["stat", "-f", "-c", "%T", _spool_root()], capture_output=True, text=True, check=False
        ).stdout.strip()
        micro = os.path.join(_spool_root(), "micro")
        work_off = _window_work(micro, telemetry=False)
        work_on = _window_work(micro, telemetry=True)
    on, off = samples[True], samples[False]
    print(
        f"telemetry overhead: {args.rounds} rounds x 2 jobs, {args.disks} disk(s), "
        f"real freeze (loop ext4), Azurite, spool on {spool_fs}; medians"
    )
    print(
        f"{'':>16} {'job wall ms':>12} {'frozen window ms':>17}"
        f" {'(freeze':>8} {'snapshot':>9} {'thaw ms)':>9}"
    )
    for name, s in (("telemetry off", off), ("telemetry on", on)):
        print(
            f"{name:>16} {_median_ms(s['wall']):>12.1f} {_median_ms(s['window']):>17.2f}"
            f" {_median_ms(s['freeze']):>8.2f} {_median_ms(s['snapshot']):>9.2f}"
            f" {_median_ms(s['thaw']):>9.2f}"
        )
    wall_ratio = statistics.median(on["wall"]) / statistics.median(off["wall"])
    window_ratio = statistics.median(on["window"]) / statistics.median(off["window"])
    added = _median_ms(on["window"]) - _median_ms(off["window"])
    print(f"{'ratio on/off':>16} {wall_ratio:>11.3f}x {window_ratio:>16.3f}x")
    verdict("job wall time, telemetry on/off", wall_ratio, 1.05, "x")
    print(f"frozen window added by telemetry (median difference): {added:+.2f} ms")
    print(
        "in-window work (phase events + the window's log line), timed directly: "
        f"off {work_off * 1e6:.0f} us, on {work_on * 1e6:.0f} us, "
        f"added {(work_on - work_off) * 1e6:+.0f} us per job"
    )


if __name__ == "__main__":
    main()
