"""I5 (issue 11 defect 4): a storage endpoint that echoes the request URL leaks no
fragment of a SAS signature.

A real HTTP endpoint on 127.0.0.1 stands in for the storage account of some
disks: it answers the warm-up ``HEAD`` like a page blob and every snapshot
request with a 400 whose XML ``<Message>`` echoes the request URL in one of
the forms storage errors, proxies and SDKs produce (as sent, percent-decoded,
with the key upper-cased, percent-encoded as a URL inside a URL, with ``sig``
twice, or the bare signature value with no ``sig=`` key that a pattern could
see: only the job's exact-value redactor knows it, and only whole). The echo
is padded so that the first 300-character cut falls inside the signature. A
real job (the CLI, a loop-mounted ext4 really frozen, Azurite for one good
disk, the status blob and the logs blob) runs against it; then every output
is searched for every substring of at least 8 characters of every signature,
in every encoding: a cut keeps a signature's START, a kept tail its END.

Out of scope: a signature split across a line break (each line is redacted
on its own; no pattern joins two lines).
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape

import pytest

from snapshot_runtime.snapshot.failures import MAX_MESSAGE
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs, loop_filesystem

pytestmark = [pytest.mark.root, pytest.mark.azurite]

# How the endpoint echoes the URL it was sent, per disk (by blob name).
VARIANTS = ("raw", "decoded", "upper", "nested", "twice", "bare")
MIN_FRAGMENT = 8
# Where, in the echoed first line, the cut falls: this many signature
# characters before it (blob_errors cut at MAX_MESSAGE - 3 before the fix).
INTO_SIGNATURE = 20


def _signature() -> str:
    """A 44-character base64 signature holding ``/``, ``+`` and ``=`` (so that
    its encoded forms hold %2F, %2B, %3D)."""
    while True:
        sig = base64.b64encode(os.urandom(32)).decode()
        if "/" in sig and "+" in sig:
            return sig


def _echo(variant: str, url: str) -> str:
    """The URL as the endpoint echoes it for ``variant``."""
    if variant == "raw":
        return url
    if variant == "decoded":
        return unquote(url)
    if variant == "upper":
        return url.replace("sig=", "SIG=")
    if variant == "nested":
        return quote(url, safe="")
    if variant == "twice":
        sig = next(p for p in urlsplit(url).query.split("&") if p.startswith("sig="))
        return f"{url}&{sig}"
    if variant == "bare":
        sig = next(p for p in urlsplit(url).query.split("&") if p.startswith("sig="))
        return f"{url.split('?', 1)[0]} was signed with signature {unquote(sig[4:])}"
    raise AssertionError(variant)


def _signature_start(echoed: str) -> int:
    """Where the last signature value of the echo starts."""
    lowered = echoed.lower()
    keyed = max(lowered.rfind("sig="), lowered.rfind("sig%3d"))
    if keyed >= 0:
        return keyed + (4 if lowered[keyed + 3] == "=" else 6)
    bare = lowered.rfind("signature ")
    assert bare >= 0, echoed
    return bare + len("signature ")


def _padded_message(marker: str, echoed: str) -> str:
    """``marker``, padding, ``echoed``: the cut at MAX_MESSAGE - 3 falls
    ``INTO_SIGNATURE`` characters into the last signature of the echo."""
    head = f"{marker} The request URI is invalid. "
    pad = MAX_MESSAGE - 3 - INTO_SIGNATURE - len(head) - len("URI: ") - _signature_start(echoed)
    assert pad >= 0, "the echo is too long to cut inside its signature"
    return f"{head}{'.' * pad}URI: {echoed}"


@dataclass
class EchoEndpoint:
    """An HTTP server that answers snapshot requests with the URL echoed."""

    server: ThreadingHTTPServer
    requests: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


def _handler(endpoint_requests: list[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: the test reads ``requests``

        def _variant(self) -> str:
            name = urlsplit(self.path).path.rsplit("/", 1)[-1]
            return name.removesuffix(".vhd")

        def do_HEAD(self) -> None:
            endpoint_requests.append(f"HEAD {self.path}")
            self.send_response(200)
            for key, value in (
                ("Content-Length", "512"),
                ("Content-Type", "application/octet-stream"),
                ("x-ms-blob-type", "PageBlob"),
                ("ETag", '"0x8D000000000000"'),
                ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
                ("x-ms-version", "2021-08-06"),
            ):
                self.send_header(key, value)
            self.end_headers()

        def do_PUT(self) -> None:
            endpoint_requests.append(f"PUT {self.path}")
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            variant = self._variant()
            url = f"{self.server_url()}{self.path}"
            message = _padded_message(f"ECHO-{variant}", _echo(variant, url))
            body = (
                '<?xml version="1.0" encoding="utf-8"?><Error>'
                "<Code>InvalidQueryParameterValue</Code>"
                f"<Message>{escape(message)}</Message></Error>"
            ).encode()
            self.send_response(400)
            self.send_header("x-ms-error-code", "InvalidQueryParameterValue")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def server_url(self) -> str:
            host, port = self.server.server_address[:2]
            return f"http://{host}:{port}"

    return Handler


@pytest.fixture
def echo() -> Iterator[EchoEndpoint]:
    requests: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(requests))
    thread = threading.Thread(target=server.serve_forever, name="echo-endpoint", daemon=True)
    thread.start()
    try:
        yield EchoEndpoint(server, requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def ext4() -> Iterator[LoopFs]:
    with loop_filesystem("ext4") as fs:
        yield fs


def _echo_disk(endpoint: EchoEndpoint, variant: str) -> str:
    sig = quote(_signature(), safe="")
    query = f"sv=2021-08-06&sr=b&sp=rw&se=2099-01-01T00%3A00%3A00Z&sig={sig}"
    if variant == "twice":
        query += f"&sig={quote(_signature(), safe='')}"  # a second sig in the settings URL
    return f"{endpoint.base}/devstoreaccount1/echo/{variant}.vhd?{query}"


def signature_forms(url: str) -> set[str]:
    """Every signature of ``url`` as it may appear: raw, decoded, encoded, encoded twice."""
    forms: set[str] = set()
    for pair in urlsplit(url).query.split("&"):
        key, _, raw = pair.partition("=")
        if key.lower() == "sig" and raw:
            plain = unquote(raw)
            once = quote(plain, safe="")
            forms |= {raw, plain, once, quote(once, safe="")}
    return forms


def fragments(secrets: set[str], length: int = MIN_FRAGMENT) -> set[str]:
    """Every substring of at least ``length`` characters of every secret.

    Checking every length-``length`` window is enough: a longer leaked
    substring holds one."""
    return {s[i : i + length] for s in secrets for i in range(len(s) - length + 1)}


def _tree(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            out[path] = Path(path).read_bytes().decode("utf-8", "replace")
    return out


@pytest.mark.parametrize("as_json", [True, False], ids=["json-report", "text-report"])
def test_echoed_sas_url_leaks_no_signature_fragment(
    azurite: Azurite, ws: Workspace, ext4: LoopFs, echo: EchoEndpoint, as_json: bool
) -> None:
    (good,) = jobkit.make_disks(azurite, 1)
    echoed = [_echo_disk(echo, variant) for variant in VARIANTS]
    container, status_blob, status_url = jobkit.status_blob_url(azurite)
    logs_blob = "job.Logs.txt"
    logs_url = azurite.sas_url(container, logs_blob)
    task_id = "sas-echo_1"
    settings = ws.settings(
        [good, *echoed], task_id=task_id, status_url=status_url, logs_url=logs_url
    )
    args = ws.run_args(settings, config=ws.config(), mounts=[ext4.mountpoint], as_json=as_json)
    result = ws.cli(*args)

    # The job really ran: one disk snapshotted, each echo disk got its 400.
    assert result.returncode != 0, result.output
    if as_json:
        assert result.json["consistencyReason"] == "snapshot_partially_failed", result.output
    else:
        assert "(snapshot_partially_failed)" in result.stdout, result.output
    for variant in VARIANTS:
        assert any(r.startswith("PUT ") and f"/{variant}.vhd?" in r for r in echo.requests), (
            variant,
            echo.requests,
        )

    artifacts: dict[str, str] = {
        "cli stdout": result.stdout,
        "cli stderr": result.stderr,
        "status blob": jobkit.blob_bytes(azurite, container, status_blob).decode(),
        "logs blob": jobkit.blob_bytes(azurite, container, logs_blob).decode(),
    }
    for root in (ws.log_path.parent, ws.spool_dir, ws.state_dir):
        artifacts.update(_tree(root))
    names = sorted(artifacts)
    # Every output the brief names is there: the job log, the spool's log,
    # spans and record, the state record, the status file.
    assert str(ws.log_path) in artifacts
    for suffix in ("log.jsonl", "spans.jsonl", "record.json", ".status"):
        assert any(n.endswith(suffix) for n in names), (suffix, names)
    assert any("state" in n and n.endswith(".json") for n in names), names
    # The echoed messages themselves reached the outputs (what is searched is
    # what the endpoint said), each cut where a signature was.
    for variant in VARIANTS:
        assert f"ECHO-{variant}" in artifacts[str(ws.log_path)], variant
        if as_json:  # the text report's table shows the first 60 characters only
            assert f"ECHO-{variant}" in artifacts["cli stdout"], variant

    secrets = set().union(*(signature_forms(u) for u in [good, *echoed, status_url, logs_url]))
    assert len(secrets) >= 4 * len(echoed)
    pieces = fragments(secrets)
    found = {name: sorted(p for p in pieces if p in artifacts[name]) for name in names}
    leaked = {name: hits for name, hits in found.items() if hits}
    assert leaked == {}, f"signature fragments leaked into {sorted(leaked)}: {leaked}"
    print(
        f"\n[I5 echo] {len(secrets)} signature forms, {len(pieces)} fragments of "
        f">= {MIN_FRAGMENT} chars searched in {len(names)} artifacts: 0 hits"
    )
