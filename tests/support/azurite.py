"""A real Azurite blob service on 127.0.0.1, and SAS URLs minted against it."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import stop_process
from tests.support.requirements import require
from tests.support.waiting import wait_until

ACCOUNT = "devstoreaccount1"
# Azurite's published well-known development key (not a secret).
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
REPO_ROOT = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO_ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"


@dataclass
class Azurite:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: str
    containers: set[str] = field(default_factory=set)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    def service(self):  # -> BlobServiceClient
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def container(self, name: str | None = None) -> str:
        name = name or f"c{uuid.uuid4().hex[:12]}"
        if name not in self.containers:
            with contextlib.suppress(Exception):
                self.service().create_container(name)
            self.containers.add(name)
        return name

    def sas_url(
        self,
        container: str,
        blob: str,
        *,
        permission: str = "racwd",
        expiry: dt.timedelta = dt.timedelta(hours=2),
        endpoint: str | None = None,
    ) -> str:
        """A blob SAS URL; ``endpoint`` lets a fault proxy sit in front."""
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        token = generate_blob_sas(
            account_name=ACCOUNT,
            container_name=container,
            blob_name=blob,
            account_key=ACCOUNT_KEY,
            permission=BlobSasPermissions.from_string(permission),
            expiry=dt.datetime.now(dt.timezone.utc) + expiry,
        )
        return f"{endpoint or self.endpoint}/{container}/{blob}?{token}"

    def create_page_blob(self, container: str, blob: str, size: int = 1024 * 1024) -> str:
        """A page blob standing in for a VM disk; returns its SAS URL."""
        client = self.service().get_blob_client(container, blob)
        client.create_page_blob(size)
        client.upload_page(b"\x5a" * 512, offset=0, length=512)
        return self.sas_url(container, blob)


def _wait_listening(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> int:
    def listening_port() -> int | None:
        text = log.read_text(errors="replace") if log.exists() else ""
        m = re.search(r"successfully listen(?:s on|ing at) http://127\.0\.0\.1:(\d+)", text)
        if m:
            return int(m.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"azurite exited early: {text[-2000:]}")
        return None

    return wait_until(
        listening_port,
        timeout,
        "azurite to listen",
        interval=0.05,
        detail=lambda: log.read_text(errors="replace"),
    )


@contextlib.contextmanager
def run_azurite() -> Iterator[Azurite]:
    """Start Azurite on a free loopback port; stop it afterwards."""
    require(AZURITE_BIN.exists(), "needs Azurite (run scripts/install-system-deps.sh)")
    require(shutil.which("node") is not None, "needs node")
    workdir = tempfile.mkdtemp(prefix="azurite-")
    log = Path(workdir) / "azurite.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(AZURITE_BIN),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "0",
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
                "--extentMemoryLimit",
                "512",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, "AZURITE_ACCEPT_EULA": "true"},
        )
    try:
        port = _wait_listening(proc, log, timeout=30)
        yield Azurite(host="127.0.0.1", port=port, process=proc, workdir=workdir)
    finally:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)
