"""Start-up of the console script: --help, exec to the job's first phase, peak RSS.

Every job is a fresh ``snapshot-runtime run`` process, so its imports are paid
on every snapshot. Each round, as subprocesses of this one:

* ``snapshot-runtime --help`` (wall time, exec to exit);
* real 1-disk jobs (root-owned pre/post scripts, a loop ext4 filesystem
  really frozen, Azurite, a status blob uploaded, telemetry and spool on as
  in production), on both snapshot paths: the host path (the reference's
  default mode: one WireServer ``dosnapshot``, answered by the host-service
  emulator of tests/support/host_service.py snapshotting an Azurite page
  blob) and the guest path (the disk's SAS URL, snapshotted without the Azure
  SDK when no proxy is set: snapshot/blob_wire.py); and the guest path with a
  ``logsBlobUri`` and no sidecar (the runtime uploads its own log after the
  thaw: RSS only). For each: from just before exec to the first phase's ``started_at``
  in the job's record, to the freeze phase's (what start-up defers is paid
  before it: the honest total), and the runtime process's own peak RSS (its
  VmHWM, sampled while it runs);
* the baselines, in the same run: a bare interpreter (``python -c pass``),
  and the peak RSS of an interpreter that only imports azure.storage.blob
  (what the SDK alone costs: snapshot/block_upload.py's and blob_wire.py's reason to avoid it).

Goals (issue 15), each ending in a ``VERDICT`` line: --help <= 50 ms, exec to
the first phase <= 100 ms, peak RSS of a 1-disk job <= 35 MiB, on the host
path (the default) and on the guest path.

Run: ``.venv/bin/python -m benchmarks.startup [--rounds N] [--cli PATH] [--compare PATH]``
(root, loop devices, Azurite: ``make system-deps``). ``--cli`` measures
another installation's console script, e.g. a non-editable venv of another
commit (docs/startup.md: an editable install adds its import finder to
every start); ``--compare`` measures a second one in the same rounds,
alternating, and prints the ratios (before/after under the same load).
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
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._verdict import spread, verdict
from benchmarks.telemetry_overhead import _spool_root, _workdir, _write
from snapshot_runtime.snapshot.host import VMBACKUP_CONF_ENV
from snapshot_runtime.snapshot.wireserver import WIRESERVER_ENV
from tests.support.azurite import Azurite, run_azurite
from tests.support.host_service import BlobDisk, HostService
from tests.support.jobkit import (
    POST_SCRIPT,
    PRE_SCRIPT,
    encode_object_str,
    plugin_config,
    settings_doc,
    ticks_now,
)
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


def _phases_at(spool: str, task_id: str) -> tuple[float, float]:
    """(earliest phase, freeze phase) ``started_at`` in the job's record (spool or state)."""
    for path in glob.glob(os.path.join(spool, "**", "*.json"), recursive=True):
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("task_id") == task_id and doc.get("phases"):
            phases = doc["phases"]
            freeze = [p["started_at"] for p in phases if p["name"] == "freeze"]
            if not freeze:
                raise RuntimeError(f"job {task_id} never froze")
            return float(min(p["started_at"] for p in phases)), float(freeze[0])
    raise RuntimeError(f"no record with phases for {task_id} under {spool}")


def _host_settings(task_id: str, status_url: str) -> dict[str, object]:
    """Host-path settings: LUN 0 by includedDisks, a task token, no guest disk URL."""
    obj = {
        "snapshotTaskToken": f"bench-token-{uuid.uuid4().hex}",
        "includedDisks": {"dataDiskLunList": [0]},
    }
    return {
        "runtimeSettings": [
            {
                "handlerSettings": {
                    "publicSettings": {
                        "taskId": task_id,
                        "commandToExecute": "snapshot",
                        "commandStartTimeUTCTicks": str(ticks_now()),
                        "vmType": "microsoft.compute/virtualmachines",
                        "locale": "en-us",
                        "objectStr": encode_object_str(obj),
                    },
                    "protectedSettings": {"statusBlobUri": status_url},
                }
            }
        ]
    }


def _job(
    azurite: Azurite,
    work: Path,
    mountpoint: str,
    cli: list[str],
    host: HostService | None = None,
    *,
    logs: bool = False,
) -> tuple[float, float, int]:
    """(exec to first phase, exec to the freeze phase, both seconds; peak RSS KiB) of one
    1-disk CLI job. The second is the honest companion of the first: what start-up
    leaves out is imported later, before the freeze (docs/startup.md).

    ``host``: the host path through this emulator (its LUN 0 is a fresh page
    blob each job); otherwise the guest path. ``logs``: a ``logsBlobUri`` too
    (guest path; no sidecar here, so the runtime uploads its log itself).
    """
    container = azurite.container()
    azurite.create_page_blob(container, "disk0.vhd")
    task_id = f"{uuid.uuid4()}_1"
    status_url = azurite.sas_url(container, "s.txt")
    env = dict(_ENV or os.environ)
    if host is not None:
        host.luns[0] = BlobDisk(container, "disk0.vhd")
        doc = _host_settings(task_id, status_url)
        env[WIRESERVER_ENV] = host.address
        env[VMBACKUP_CONF_ENV] = str(work / "no-vmbackup.conf")
    else:
        doc = settings_doc(
            [azurite.sas_url(container, "disk0.vhd")],
            task_id=task_id,
            status_url=status_url,
            logs_url=azurite.sas_url(container, "log.ndjson") if logs else None,
        )
    settings = _write(work / f"{task_id}.settings", json.dumps(doc), 0o600)
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
        env=env,
    )
    try:
        first, freeze = _phases_at(spool, task_id)
    except RuntimeError:
        first, freeze = _phases_at(state, task_id)
    return first - started_wall, freeze - started_wall, rss


def _rss_line(label: str, values: list[float]) -> str:
    return (
        f"  {label:<34} min {min(values):.1f} / median {statistics.median(values):.1f} / "
        f"max {max(values):.1f} MiB"
    )


@dataclass
class _Samples:
    """One console script's figures over the rounds."""

    cli: list[str]
    helps: list[float] = field(default_factory=list)  # ms
    help_cpu: list[float] = field(default_factory=list)  # ms
    firsts: dict[str, list[float]] = field(default_factory=lambda: {"host": [], "guest": []})
    freezes: dict[str, list[float]] = field(default_factory=lambda: {"host": [], "guest": []})
    rss: dict[str, list[float]] = field(default_factory=lambda: {"host": [], "guest": []})
    rss_guest_log: list[float] = field(default_factory=list)  # MiB: + its own log upload

    def report(self, bare_ms: float) -> None:
        print(f"  {' '.join(self.cli)}")
        print(f"    --help:                         {spread(self.helps)}")
        print(f"    --help, CPU time (user+sys):    {spread(self.help_cpu)}")
        for path in ("host", "guest"):
            print(f"    run, {path:<5} exec to first phase: {spread(self.firsts[path])}")
            print(f"    run, {path:<5} exec to freeze:      {spread(self.freezes[path])}")
            print("  " + _rss_line(f"run, {path:<5} peak RSS (1 disk):", self.rss[path]))
        print("  " + _rss_line("run, guest + log upload, peak RSS:", self.rss_guest_log))
        print(
            f"    ratios to the bare interpreter: --help "
            f"{statistics.median(self.helps) / bare_ms:.1f}x, host first phase "
            f"{statistics.median(self.firsts['host']) / bare_ms:.1f}x, guest first phase "
            f"{statistics.median(self.firsts['guest']) / bare_ms:.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--cli",
        default=CLI,
        help="the snapshot-runtime console script to measure (default: this venv's); "
        "another venv's, to measure another commit or a non-editable install",
    )
    parser.add_argument(
        "--compare",
        metavar="CLI",
        help="another console script (e.g. a venv of the base commit), measured in the same "
        "rounds, alternating with --cli: before/after under the same load",
    )
    parser.add_argument(
        "--source",
        help="run `python -m snapshot_runtime.cli` from this checkout (PYTHONPATH) instead of "
        "the console script: to measure another commit with this benchmark",
    )
    args = parser.parse_args()
    global _ENV
    cli = [args.cli]
    if args.source:
        cli = [sys.executable, "-m", "snapshot_runtime.cli"]
        _ENV = {**os.environ, "PYTHONPATH": str(Path(args.source).resolve())}
    interpreter = str(Path(args.cli).with_name("python")) if not args.source else sys.executable
    measured = [_Samples(cli)]
    if args.compare:
        measured.append(_Samples([args.compare]))
    bare, bare_rss, sdk_rss = [], [], []
    with (
        _workdir() as work,
        run_azurite() as azurite,
        loop_filesystem("ext4") as fs,
        HostService(
            {}, blob_connection_string=azurite.connection_string, blob_endpoint=azurite.endpoint
        ) as host,
    ):
        marks = work / "marks"
        marks.mkdir(mode=0o700)
        pre = _write(work / "pre.sh", PRE_SCRIPT, 0o700)
        post = _write(work / "post.sh", POST_SCRIPT, 0o700)
        _write(work / "config.json", json.dumps(plugin_config(pre, post, str(marks))), 0o600)
        for one in measured:
            # Warm-up: page cache, Azurite's and the emulator's first requests.
            _job(azurite, work, fs.mountpoint, one.cli, host)
            _job(azurite, work, fs.mountpoint, one.cli)
        for _ in range(args.rounds):
            _, wall, peak, _ = _timed([interpreter, "-c", "pass"])
            bare.append(wall * 1000)
            bare_rss.append(peak / 1024)
            sdk_rss.append(_timed([interpreter, "-c", "import azure.storage.blob"])[2] / 1024)
            for one in measured:
                _, wall, _, cpu = _timed([*one.cli, "--help"], env=_ENV)
                one.helps.append(wall * 1000)
                one.help_cpu.append(cpu * 1000)
                for path in ("host", "guest"):
                    first, freeze, peak = _job(
                        azurite, work, fs.mountpoint, one.cli, host if path == "host" else None
                    )
                    one.firsts[path].append(first * 1000)
                    one.freezes[path].append(freeze * 1000)
                    one.rss[path].append(peak / 1024)
                one.rss_guest_log.append(
                    _job(azurite, work, fs.mountpoint, one.cli, logs=True)[2] / 1024
                )
    print(f"start-up, {args.rounds} rounds (subprocesses of this one)")
    print(f"  baseline python -c pass:        {spread(bare)}")
    print(_rss_line("baseline python -c pass, RSS:", bare_rss))
    print(_rss_line("SDK import RSS (azure.storage.blob)", sdk_rss))
    base = statistics.median(bare)
    for one in measured:
        one.report(base)
    med = statistics.median
    if args.compare:
        new, old = measured
        print("  --cli against --compare, medians (same rounds):")
        print(
            f"    --help {med(new.helps) / med(old.helps):.2f}x, host first phase "
            f"{med(new.firsts['host']) / med(old.firsts['host']):.2f}x, host freeze "
            f"{med(new.freezes['host']) / med(old.freezes['host']):.2f}x, host peak RSS "
            f"{med(new.rss['host']) / med(old.rss['host']):.2f}x, guest freeze "
            f"{med(new.freezes['guest']) / med(old.freezes['guest']):.2f}x, guest peak RSS "
            f"{med(new.rss['guest']) / med(old.rss['guest']):.2f}x"
        )
    first = measured[0]
    verdict("--help, median", med(first.helps), 50.0)
    verdict("exec to the first phase (host path), median", med(first.firsts["host"]), 100.0)
    verdict("peak RSS of a 1-disk job (host path), median", med(first.rss["host"]), 35.0, "MiB")
    verdict("peak RSS of a 1-disk job (guest path), median", med(first.rss["guest"]), 35.0, "MiB")


if __name__ == "__main__":
    main()
