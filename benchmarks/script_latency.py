"""Script runner costs, against plain ``subprocess.run`` measured in the same run.

* Detection overhead: how long after a 50 ms script exits ``run_script``
  returns (wall time minus the 50 ms), median and p95, with
  ``poll_seconds=3`` (the config's default: completion must not wait for it).
  Baseline: ``subprocess.run(["/bin/sh", path])`` on the same file.
* Memory for 100 MB of output: peak RSS (VmHWM) growth of a fresh Python
  process running the script once, after a warm-up run of a script that
  prints one line (so imports are not counted). Baseline: the same
  script through ``subprocess.run(..., capture_output=True)``, which keeps it
  all.

Needs root (scripts must be root-owned in a root-only directory; they are
written under /var/lib/snapshot-runtime-bench/). Prints figures; no
assertions.

Run: ``.venv/bin/python -m benchmarks.script_latency [--rounds N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from snapshot_runtime.scripts.runner import run_script

BASE = "/var/lib/snapshot-runtime-bench"
REPO = Path(__file__).resolve().parent.parent
SCRIPT_SECONDS = 0.05
OUTPUT_BYTES = 100 * 1024 * 1024

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


def _overheads(call: Callable[[], object], rounds: int) -> list[float]:
    call()  # warm the page cache
    samples = []
    for _ in range(rounds):
        t0 = time.monotonic()
        call()
        samples.append(time.monotonic() - t0 - SCRIPT_SECONDS)
    return samples


def _p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20, method="inclusive")[-1]


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
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with _script_dir() as directory:
        quick = _script(directory, "quick.sh", f"sleep {SCRIPT_SECONDS}\n")
        rows = {
            "run_script (poll 3 s)": _overheads(
                lambda: run_script(quick, [], phase="pre", retries=0, budget_seconds=10),
                args.rounds,
            ),
            "subprocess.run": _overheads(
                lambda: subprocess.run(["/bin/sh", quick], check=True), args.rounds
            ),
        }
        print(f"detection overhead, {SCRIPT_SECONDS * 1000:.0f} ms script, {args.rounds} rounds")
        print(f"{'':>22} {'median ms':>10} {'p95 ms':>8}")
        for name, samples in rows.items():
            median, p95 = statistics.median(samples) * 1000, _p95(samples) * 1000
            print(f"{name:>22} {median:>10.1f} {p95:>8.1f}")

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
