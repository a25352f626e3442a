"""A 50 ms storage: tests/support/faultproxy.py's ``FaultProxy`` with latency, in a child process.

In its own process so that its threads (one per connection, each waiting out
the latency) do not compete with the code being measured for the GIL.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["delay_proxy", "latency_child"]

ROOT = Path(__file__).resolve().parent.parent

# The proxy in a child process: prints its port, runs until stdin closes.
_PROXY_MAIN = """
import sys
from tests.support.faultproxy import FaultProxy
proxy = FaultProxy("127.0.0.1", int(sys.argv[1]), max_lifetime=3600.0)
proxy.set_latency(float(sys.argv[2]))
print(proxy.port, flush=True)
sys.stdin.read()
proxy.close()
"""


@contextlib.contextmanager
def latency_child(argv: list[str], what: str) -> Iterator[int]:
    """Run ``argv`` (a child that prints its port, then serves until stdin
    closes); yields the port. The relay and the proxy both start this way."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"the {what} did not start")
        yield int(line)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def delay_proxy(target_port: int, latency: float) -> Iterator[int]:
    """A FaultProxy with ``latency`` per request, in its own process; yields its port."""
    with latency_child(
        [sys.executable, "-c", _PROXY_MAIN, str(target_port), str(latency)], "delay proxy"
    ) as port:
        yield port
