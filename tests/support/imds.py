"""An Azure IMDS stand-in on 169.254.169.254, only inside a network namespace a test makes.

IMDS cannot run here, and 169.254.169.254 must never be reached outside this
machine: ``ImdsNamespace`` creates a fresh network namespace (``ip netns
add``), brings its ``lo`` up and, when ``with_imds``, adds 169.254.169.254/32
to that ``lo`` and runs this module inside it (``ip netns exec``) as a tiny
HTTP server answering like IMDS. Without ``with_imds`` the namespace has no
route to 169.254.169.254 at all: a VM without IMDS. ``run`` runs a command
inside the namespace (the sidecar, a detection step). ``close`` (or leaving
the ``with``) stops the server and deletes the namespace, always.

The stand-in answers ``GET /metadata/instance?api-version=...`` (the whole
document) and ``GET /metadata/instance/compute?api-version=...`` (what the
detector asks for) with ``COMPUTE``, a realistic compute document, only with
the ``Metadata: true`` header (else 400, like IMDS) and never to a proxied
request (``X-Forwarded-For``: 403, like IMDS). It also listens as a "dead
proxy" on 127.0.0.1:``PROXY_PORT`` inside the namespace: it accepts, records
and closes, so a client configured with ``HTTP_PROXY`` there gets nothing.
Every request and every proxy connection is one JSON line in ``events``
(a file the test reads: the namespace shares the filesystem).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_until

__all__ = ["COMPUTE", "IMDS_ADDRESS", "PROXY_PORT", "ImdsNamespace"]

IMDS_ADDRESS = "169.254.169.254"
PROXY_PORT = 3128
REPO = Path(__file__).resolve().parents[2]

SUBSCRIPTION = "8d3a5e2c-1f4b-4c6d-9e7f-0a1b2c3d4e5f"
COMPUTE: dict[str, Any] = {
    "azEnvironment": "AzurePublicCloud",
    "location": "westeurope",
    "name": "vmsnap-test-vm",
    "offer": "debian-12",
    "osType": "Linux",
    "publisher": "Debian",
    "resourceGroupName": "rg-vmsnap",
    "resourceId": (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-vmsnap"
        "/providers/Microsoft.Compute/virtualMachines/vmsnap-test-vm"
    ),
    "sku": "12-gen2",
    "subscriptionId": SUBSCRIPTION,
    "tags": "env:test",
    "version": "0.20241118.1917",
    "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
    "vmScaleSetName": "",
    "vmSize": "Standard_D2s_v5",
    "zone": "1",
}


def _serve(events: Path) -> None:
    """The stand-in itself (run inside the namespace as ``python -m tests.support.imds``)."""
    lock = threading.Lock()

    def note(doc: dict[str, Any]) -> None:
        with lock, open(events, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(doc) + "\n")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            note({"kind": "imds", "path": self.path, "headers": headers})
            if "x-forwarded-for" in headers:
                self._reply(403, {"error": "Forbidden", "error_description": "proxied"})
            elif headers.get("metadata", "").lower() != "true":
                self._reply(400, {"error": "Bad request. Required metadata header not specified"})
            elif self.path.startswith("/metadata/instance/compute?api-version="):
                self._reply(200, COMPUTE)
            elif self.path.startswith("/metadata/instance?api-version="):
                self._reply(200, {"compute": COMPUTE, "network": {"interface": []}})
            else:
                self._reply(404, {"error": "Not found"})

        def _reply(self, status: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = HTTPServer((IMDS_ADDRESS, 80), Handler)
    proxy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    proxy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    proxy.bind(("127.0.0.1", PROXY_PORT))
    proxy.listen(8)

    def dead_proxy() -> None:
        while True:
            conn, _ = proxy.accept()
            note({"kind": "proxy"})
            conn.close()

    threading.Thread(target=dead_proxy, daemon=True).start()
    note({"kind": "ready"})
    server.serve_forever()


class ImdsNamespace:
    """A network namespace, with (``with_imds``) or without an IMDS stand-in."""

    def __init__(self, workdir: Path, *, with_imds: bool = True) -> None:
        self.name = f"vmsnap-imds-{os.getpid()}-{secrets.token_hex(3)}"
        self.events_path = workdir / "imds-events.jsonl"
        self.events_path.write_text("")
        self.server: subprocess.Popen[bytes] | None = None
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            self._ip("link", "set", "lo", "up")
            if with_imds:
                self._ip("addr", "add", f"{IMDS_ADDRESS}/32", "dev", "lo")
                serve = [sys.executable, "-m", "tests.support.imds", str(self.events_path)]
                self.server = subprocess.Popen(
                    [*self.prefix, *serve],
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                wait_until(
                    lambda: any(e["kind"] == "ready" for e in self.events()),
                    30.0,
                    "the IMDS stand-in to listen",
                    detail=self._server_stderr,
                )
        except BaseException:
            self.close()
            raise

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def _server_stderr(self) -> str:
        if self.server is None or self.server.poll() is None:
            return "(server running)"
        assert self.server.stderr is not None
        return self.server.stderr.read().decode(errors="replace")

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        lines = self.events_path.read_text().splitlines()
        docs = [json.loads(line) for line in lines if line.strip()]
        return [d for d in docs if kind is None or d["kind"] == kind]

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the namespace, from the repository root; output captured."""
        return subprocess.run(
            [*self.prefix, *argv],
            cwd=REPO,
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait(timeout=30)
        if self.server is not None and self.server.stderr is not None:
            self.server.stderr.close()
        subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)

    def __enter__(self) -> ImdsNamespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
