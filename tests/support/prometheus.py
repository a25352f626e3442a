"""A real Prometheus server (Debian's ``prometheus`` package) on 127.0.0.1.

``run_prometheus(targets)`` writes a scrape config and a data directory into a
temporary directory, starts ``prometheus`` on a free loopback port with
exemplar storage on, waits for ``/-/ready`` and stops it afterwards.
``run_prometheus_config(config, files=...)`` does the same with a whole
configuration of the caller's (rule files and other files written next to it,
relative paths in the config resolve there). ``Prometheus.query``/
``query_range``/``wait_for`` use the HTTP API.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.processes import stop_process
from tests.support.requirements import require
from tests.support.waiting import wait_until

__all__ = ["Prometheus", "free_port", "run_prometheus", "run_prometheus_config"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    workdir: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            doc = json.loads(r.read())
        if doc.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {doc}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector results: [{"metric": {...}, "value": [ts, "v"]}, ...]."""
        return list(self.api("query", query=expr)["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Range matrix results: [{"metric": {...}, "values": [[ts, "v"], ...]}, ...]."""
        data = self.api("query_range", query=expr, start=str(start), end=str(end), step=str(step))
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(
        self, expr: str, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = []

        def holds() -> bool:
            nonlocal result
            result = self.query(expr)
            return predicate(result)

        wait_until(
            holds, timeout, expr, interval=0.2, detail=lambda: f"still {result}; log: {self.log()}"
        )
        return result

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def run_prometheus(
    targets: Sequence[str],
    *,
    scheme: str = "http",
    basic_auth: tuple[str, str] | None = None,
    ca_file: str | None = None,
    scrape_interval: str = "1s",
) -> Iterator[Prometheus]:
    job: dict[str, Any] = {
        "job_name": "snapshot-sidecar",
        "scheme": scheme,
        "static_configs": [{"targets": list(targets)}],
    }
    if basic_auth:
        job["basic_auth"] = {"username": basic_auth[0], "password": basic_auth[1]}
    if ca_file:
        job["tls_config"] = {"ca_file": ca_file}
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [job],
    }
    with run_prometheus_config(config) as instance:
        yield instance


@contextlib.contextmanager
def run_prometheus_config(
    config: Mapping[str, Any], *, files: Mapping[str, str] | None = None
) -> Iterator[Prometheus]:
    """Prometheus with ``config`` (written as JSON, which is YAML) and ``files``.

    ``files`` maps relative names to contents, written into the working
    directory beside the config (so ``rule_files: ["rules/x.yml"]`` finds them).
    Exemplar storage is on; the server listens on a free 127.0.0.1 port.
    """
    binary = shutil.which("prometheus")
    require(binary is not None, "needs prometheus (scripts/install-system-deps.sh)")
    assert binary is not None
    workdir = Path(tempfile.mkdtemp(prefix="prometheus-"))
    try:
        for name, text in (files or {}).items():
            path = workdir / name
            assert workdir.resolve() in path.resolve().parents, name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        port = free_port()
        log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    instance = Prometheus(f"http://127.0.0.1:{port}", proc, workdir)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {instance.log()}")
            try:
                with urllib.request.urlopen(f"{instance.url}/-/ready", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(ready, 30, "prometheus to be ready", interval=0.1, detail=instance.log)
        yield instance
    finally:
        stop_process(proc)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
