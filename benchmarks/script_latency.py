"""Script runner costs, against plain ``subprocess.run`` measured in the same run.

* Detection overhead: how long after a 50 ms script exits ``run_script``
  returns (wall time minus the 50 ms), min/median/p95/max, with
  ``poll_seconds=3`` (the config's default: completion must not wait for it),
  idle and with a CPU-bound busy loop running on each core (one process per
  CPU, started by this benchmark). Baseline: ``subprocess.run(["/bin/sh",
  path])`` on the same file, under the same load (it blocks in waitpid:
  the floor of any runner). Goal (issue 15): p95 <= 10 ms under the busy
  loops. ``--repeats`` times idle then busy; the p95 is of every sample of
  every repeat (pooled), beside each repeat's own p95 and load average.
  Two ``VERDICT`` lines: completion detection proper (the script's last
  command writes the wall clock to a file; from then to ``run_script``'s
  return) and the whole call minus the sleep (spawn, trust checks and
  detection: what the issue's figures measured). Beside the whole call, the
  caller's voluntary context switches per call (``getrusage``): each is a
  blocking wait, and under the busy loops each wake-up from one waits for a
  scheduler slice. ``subprocess.run`` blocks twice (the vfork until the
  child's exec, then ``waitpid``); the runner should not block more.
* Memory for 100 MB of output: peak RSS (VmHWM) growth of a fresh Python
  process running the script once, after a warm-up run of a script that
  prints one line (so imports are not counted). Baseline: the same
  script through ``subprocess.run(..., capture_output=True)``, which keeps it
  all.

Needs root (scripts must be root-owned in a root-only directory; they are
written under /var/lib/snapshot-runtime-bench/). Prints figures; no
assertions.

Run: ``.venv/bin/python -m benchmarks.script_latency [--rounds N] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmarks._verdict import spread, verdict
from snapshot_runtime.scripts.runner import run_script

BASE = "/var/lib/snapshot-runtime-bench"
REPO = Path(__file__).resolve().parent.parent
SCRIPT_SECONDS = 0.05
OUTPUT_BYTES = 100 * 1024 * 1024
ROWS = ("run_script, idle", "subprocess.run, idle", "run_script, busy", "subprocess.run, busy")

_RSS_PROBE = """
import json, subprocess, sys
from snapshot_runtime.scripts.runner import run_script

def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024

path, warm, how = sys.argv[1], sys.argv[2], sys.argv[3]
def once(script):
    if how == 'run_script':
        r = run_script(script, [], phase='pre', retries=0, budget_seconds=120)
        return r.output_bytes
    p = subprocess.run(['/bin/sh', script], capture_output=True, timeout=120, check=False)
    return len(p.stdout) + len(p.stderr)
once(warm)  # imports and first-call paths, with little output
before = hwm()
seen = once(path)
print(json.dumps({'before': before, 'growth': hwm() - before, 'bytes': seen}))
"""


@contextlib.contextmanager
def _script_dir() -> Iterator[Path]:
    if os.geteuid() != 0:
        raise SystemExit("needs root: scripts must be root-owned in a root-only directory")
    os.makedirs(BASE, mode=0o755, exist_ok=True)
    os.chmod(BASE, 0o755)
    path = Path(tempfile.mkdtemp(dir=BASE))  # 0700, root
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(BASE)


def _script(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text(body)
    os.chmod(path, 0o700)
    return str(path)


def _overheads(call: Callable[[], object], rounds: int) -> tuple[list[float], list[int]]:
    """Wall minus the sleep, and the caller's voluntary context switches, per call."""
    call()  # warm the page cache
    samples, switches = [], []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        t0 = time.monotonic()
        call()
        samples.append(time.monotonic() - t0 - SCRIPT_SECONDS)
        switches.append(resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before)
    return samples, switches


def _detections(call: Callable[[], object], stamp: Path, rounds: int) -> list[float]:
    """Seconds from the script's last command (it writes the wall clock) to the return."""
    call()
    samples = []
    for _ in range(rounds):
        stamp.unlink(missing_ok=True)
        call()
        returned = time.time()
        samples.append(returned - int(stamp.read_text()) / 1e9)
    return samples


def _p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20, method="inclusive")[-1]


@contextlib.contextmanager
def busy_loops() -> Iterator[int]:
    """One CPU-bound busy loop process per core, for the duration; yields how many."""
    count = os.cpu_count() or 1
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield count
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=10)


def _rss(path: str, warm: str, how: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, path, warm, how],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        timeout=600,
    )
    return dict(json.loads(out.stdout))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30, help="calls per repeat and row")
    parser.add_argument(
        "--repeats", type=int, default=3, help="idle then busy, this many times (pooled)"
    )
    args = parser.parse_args()
    with _script_dir() as directory:
        quick = _script(directory, "quick.sh", f"sleep {SCRIPT_SECONDS}\n")

        def ours() -> object:
            return run_script(quick, [], phase="pre", retries=0, budget_seconds=10)

        def plain() -> object:
            return subprocess.run(["/bin/sh", quick], check=True)

        stamp = directory / "exited-at"
        stamped = _script(
            directory, "stamped.sh", f"sleep {SCRIPT_SECONDS}\ndate +%s%N > {stamp}\n"
        )

        def ours_stamped() -> object:
            return run_script(stamped, [], phase="pre", retries=0, budget_seconds=10)

        def plain_stamped() -> object:
            return subprocess.run(["/bin/sh", stamped], check=True)

        rows: dict[str, list[float]] = {name: [] for name in ROWS}
        blocks: dict[str, list[int]] = {name: [] for name in ROWS}
        detect: dict[str, list[float]] = {name: [] for name in ROWS}
        detect_p95: dict[str, list[float]] = {name: [] for name in ROWS}
        calls = {
            "run_script": (ours, ours_stamped),
            "subprocess.run": (plain, plain_stamped),
        }
        loads = []
        loops = 0  # busy loops running (one per CPU)
        for _ in range(args.repeats):
            loads.append(os.getloadavg()[0])
            for load in ("idle", "busy"):
                with busy_loops() if load == "busy" else contextlib.nullcontext(0) as count:
                    loops = max(loops, count)
                    for how, (call, stamped_call) in calls.items():
                        name = f"{how}, {load}"
                        overheads, switches = _overheads(call, args.rounds)
                        rows[name] += overheads
                        blocks[name] += switches
                        samples = _detections(stamped_call, stamp, args.rounds)
                        detect[name] += samples
                        detect_p95[name].append(_p95(samples) * 1000)
        print(
            f"completion detection: the script's last command (date, to a file) to the "
            f"return, {args.repeats} repeats x {args.rounds} rounds pooled, poll 3 s; "
            f"busy: {loops} CPU-bound busy loops; 1-min load average at each repeat's "
            f"start: {' '.join(f'{x:.2f}' for x in loads)}"
        )
        print(
            f"{'':>22} {'min ms':>8} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}   "
            "p95 of each repeat"
        )
        for name, samples in detect.items():
            ms = [x * 1000 for x in samples]
            print(
                f"{name:>22} {min(ms):>8.1f} {statistics.median(ms):>10.1f} "
                f"{_p95(ms):>8.1f} {max(ms):>8.1f}   {spread(detect_p95[name])}"
            )
        print(
            f"\nwhole-call overhead (wall minus the {SCRIPT_SECONDS * 1000:.0f} ms sleep, "
            "spawn included)"
        )
        print(
            f"{'':>22} {'min ms':>8} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}   "
            "blocking waits per call (mean)"
        )
        for name, samples in rows.items():
            ms = [x * 1000 for x in samples]
            print(
                f"{name:>22} {min(ms):>8.1f} {statistics.median(ms):>10.1f} "
                f"{_p95(ms):>8.1f} {max(ms):>8.1f}   {statistics.mean(blocks[name]):.2f}"
            )
        busy = detect["run_script, busy"]
        ratio = _p95(busy) / max(_p95(detect["subprocess.run, busy"]), 1e-9)
        whole_ratio = _p95(rows["run_script, busy"]) / max(_p95(rows["subprocess.run, busy"]), 1e-9)
        print(
            "p95 ratio run_script / subprocess.run under the busy loops (subprocess.run "
            "waits in waitpid: the floor of any runner under the same load): "
            f"completion detection {ratio:.2f}, whole call {whole_ratio:.2f}"
        )
        verdict("script completion detection p95 (pooled), busy loops", _p95(busy) * 1000, 10.0)
        # The "today" figures (p95 43 ms) were this whole-call overhead, spawn
        # included; subprocess.run's p95 under the same load is its floor here.
        whole = rows["run_script, busy"]
        verdict("whole-call overhead p95 (spawn included), busy loops", _p95(whole) * 1000, 10.0)

        chatty = _script(directory, "chatty.sh", f"head -c {OUTPUT_BYTES} /dev/zero | tr '\\0' a\n")
        warm = _script(directory, "warm.sh", "echo warm\n")
        print(f"\npeak RSS growth for {OUTPUT_BYTES // 2**20} MiB of output (after a warm-up run)")
        print(f"{'':>22} {'growth MiB':>11} {'baseline VmHWM MiB':>19} {'bytes seen':>11}")
        for name, how in (("run_script", "run_script"), ("subprocess.run", "subprocess")):
            m = _rss(chatty, warm, how)
            print(
                f"{name:>22} {m['growth'] / 2**20:>11.2f} {m['before'] / 2**20:>19.1f} "
                f"{m['bytes']:>11}"
            )


if __name__ == "__main__":
    main()
