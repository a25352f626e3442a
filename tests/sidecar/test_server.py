"""/metrics over HTTP: negotiation, basic auth, TLS, and nothing secret on it."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import ipaddress
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from snapshot_sidecar.collectors import build_registry, stable_collectors, volatile_registry
from snapshot_sidecar.exposition import CachedExposition
from snapshot_sidecar.server import (
    BasicAuth,
    MetricsServer,
    hash_password,
    parse_listen,
    tls_context,
)
from snapshot_sidecar.sidecar import Sidecar
from snapshot_sidecar.state import Ledger

from snapshot_runtime import __version__
from tests.sidecar.conftest import Rig

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
SAS_SIG = "sig=Zm9vYmFyc2VjcmV0c2lnbmF0dXJlMTIzNDU2Nzg5MA%3D%3D"


def _get(
    url: str,
    *,
    accept: str | None = None,
    auth: tuple[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    gzip_ok: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if accept:
        request.add_header("Accept", accept)
    if gzip_ok:
        request.add_header("Accept-Encoding", "gzip")
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def served(rig: Rig) -> Iterator[tuple[Rig, MetricsServer]]:
    job = rig.gen.job("secret-task-id-1234", error="Pre-ScriptTimeout", outcome="failed")
    rig.gen.seal_logs_url(job, f"http://127.0.0.1:1/acct/c/b?sv=2025&{SAS_SIG}")
    sidecar = rig.sidecar()
    sidecar.ingest()
    server = MetricsServer(rig.registry(sidecar), "127.0.0.1:0")
    server.start()
    yield rig, server
    server.close()


def test_text_and_openmetrics_negotiation(served: tuple[Rig, MetricsServer]) -> None:
    _, server = served
    status, headers, body = _get(server.url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"vmsnap_jobs_total{" in body and b"# {trace_id=" not in body
    status, headers, body = _get(
        server.url + "/metrics", accept="application/openmetrics-text; version=1.0.0"
    )
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert b'# {trace_id="' in body and body.endswith(b"# EOF\n")
    status, headers, body = _get(server.url + "/metrics", gzip_ok=True)
    assert headers.get("Content-Encoding") == "gzip" and b"vmsnap_" in gzip.decompress(body)
    assert _get(server.url + "/healthz")[0:3:2] == (200, b"ok\n")
    assert _get(server.url + "/other")[0] == 404


def test_nothing_secret_on_metrics(served: tuple[Rig, MetricsServer]) -> None:
    rig, server = served
    for accept in (None, "application/openmetrics-text; version=1.0.0"):
        _, _, body = _get(server.url + "/metrics", accept=accept)
        text = body.decode()
        assert "sig=" not in text and "Zm9vYmFy" not in text
        assert "secret-task-id" not in text  # no task id label (trace ids only as exemplars)
        assert "http://" not in text and "127.0.0.1:1" not in text
        assert str(rig.spool) not in text and str(rig.state) not in text


def test_basic_auth(rig: Rig, tmp_path: Path) -> None:
    auth_file = tmp_path / "users"
    auth_file.write_text(f"# scrapers\nprom:{hash_password('s3cret-pass')}\n")
    server = MetricsServer(
        rig.registry(rig.sidecar()), "127.0.0.1:0", auth=BasicAuth.from_file(auth_file)
    )
    server.start()
    try:
        status, headers, _ = _get(server.url + "/metrics")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert _get(server.url + "/metrics", auth=("prom", "wrong"))[0] == 401
        assert _get(server.url + "/metrics", auth=("other", "s3cret-pass"))[0] == 401
        status, _, body = _get(server.url + "/metrics", auth=("prom", "s3cret-pass"))
        assert status == 200 and b"vmsnap_jobs_total" in body
        assert _get(server.url + "/metrics", auth=("prom", "s3cret-pass"))[0] == 200  # cached
        assert _get(server.url + "/healthz")[0] == 200
    finally:
        server.close()
    with pytest.raises(ValueError):
        (tmp_path / "bad").write_text("prom:plaintext\n")
        BasicAuth.from_file(tmp_path / "bad")


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls(rig: Rig, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server = MetricsServer(
        rig.registry(rig.sidecar()), "127.0.0.1:0", tls=tls_context(str(cert), str(key))
    )
    server.start()
    try:
        assert server.url.startswith("https://")
        client = ssl.create_default_context(cafile=str(cert))
        status, _, body = _get(server.url + "/metrics", context=client)
        assert status == 200 and b"vmsnap_build_info" in body
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            _get(server.url.replace("https://", "http://") + "/metrics")
        # A second request works: a failed plain-HTTP client did not wedge the server.
        assert _get(server.url + "/metrics", context=client)[0] == 200
    finally:
        server.close()


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9756") == ("127.0.0.1", 9756)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen(":9756") == ("127.0.0.1", 9756)
    with pytest.raises(ValueError):
        parse_listen("localhost")


def test_cached_exposition_renders_once_per_state_version(rig: Rig) -> None:
    from snapshot_sidecar.collectors import build_registry, stable_collectors, volatile_registry
    from snapshot_sidecar.exposition import CachedExposition

    from snapshot_runtime import __version__

    sidecar = rig.sidecar()
    ledger = sidecar.ledger
    exposition = CachedExposition(
        build_registry(stable_collectors(lambda: ledger.published, __version__)),
        volatile_registry(),
        lambda: ledger.version,
    )
    om = "application/openmetrics-text; version=1.0.0"
    first, content_type = exposition.render(om)
    second, _ = exposition.render(om)
    assert content_type.startswith("application/openmetrics-text")
    assert exposition.misses == 1 and exposition.hits == 1
    assert first.count(b"# EOF\n") == 1 and first.endswith(b"# EOF\n")
    assert b"process_resident_memory_bytes" in second
    assert b"vmsnap_sidecar_records_ingested_total 0.0" in first
    rig.gen.job("new")
    sidecar.ingest()
    third, _ = exposition.render(om)
    assert exposition.misses == 2 and b"vmsnap_sidecar_records_ingested_total 1.0" in third
    text, text_type = exposition.render("")
    assert text_type.startswith("text/plain") and b"# EOF" not in text


class _Fixed:
    """A volatile part whose value does not change (the process collector's does)."""

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("process_open_fds", "Number of open file descriptors.")
        gauge.add_metric([], 7.0)
        yield gauge


def _stable_collectors(sidecar: Sidecar) -> list[Any]:
    from snapshot_sidecar.collectors import BuildInfoCollector, ValuesCollector

    ledger = sidecar.ledger
    return [ValuesCollector(lambda: ledger.published), BuildInfoCollector(__version__)]


def _registry(*collectors: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


def _assert_bodies_match_generate_latest(
    exposition: CachedExposition, everything: CollectorRegistry
) -> None:
    for accept, reference in (
        ("", generate_latest(everything)),
        (OPENMETRICS, openmetrics_latest(everything)),  # type: ignore[no-untyped-call]
    ):
        body, _ = exposition.render(accept)
        assert body == reference
        compressed, _ = exposition.render(accept, gzip=True)
        assert compressed[:2] == b"\x1f\x8b" and gzip.decompress(compressed) == reference


def test_cached_body_is_byte_identical_to_prometheus_client(rig: Rig) -> None:
    job = rig.gen.job("with-exemplars", error="Pre-ScriptTimeout", outcome="failed")
    rig.gen.log_lines(job, 3)
    sidecar = rig.sidecar()
    sidecar.ingest()
    stable = _stable_collectors(sidecar)
    everything = _registry(*stable, _Fixed())
    ledger = sidecar.ledger
    exposition = CachedExposition(_registry(*stable), _registry(_Fixed()), lambda: ledger.version)
    _assert_bodies_match_generate_latest(exposition, everything)  # rendered on the scrape
    _assert_bodies_match_generate_latest(exposition, everything)  # from the cache
    assert exposition.renders == 2  # one per format, gzip from the same rendering
    # With the renderer thread, after a commit (and alone: no volatile part).
    stop = threading.Event()
    alone = CachedExposition(_registry(*stable), None, lambda: ledger.version)
    alone.start_renderer(ledger.changed, stop)
    try:
        rig.gen.job("second")
        sidecar.ingest()
        _wait_rendered(alone, ledger)
        _assert_bodies_match_generate_latest(alone, _registry(*stable))
        assert alone.misses == 0
    finally:
        stop.set()
        ledger.changed.set()


def _wait_rendered(exposition: CachedExposition, ledger: Ledger) -> None:
    deadline = time.monotonic() + 10
    while not exposition.rendered(ledger.version):
        assert time.monotonic() < deadline, "the renderer did not render the last commit"
        time.sleep(0.01)


def test_renderer_thread_renders_commits_so_scrapes_never_render(rig: Rig) -> None:
    sidecar = rig.sidecar()
    ledger = sidecar.ledger
    exposition = CachedExposition(
        build_registry(stable_collectors(lambda: ledger.published, __version__)),
        volatile_registry(),
        lambda: ledger.version,
    )
    stop = threading.Event()
    thread = exposition.start_renderer(ledger.changed, stop)
    try:
        _wait_rendered(exposition, ledger)
        first, _ = exposition.render(OPENMETRICS)
        assert b"vmsnap_sidecar_records_ingested_total 0.0" in first
        for n in (1, 2, 3):
            rig.gen.job(f"job-{n}")
            sidecar.ingest()  # one commit: the renderer renders it, not the scrape
            _wait_rendered(exposition, ledger)
            for accept in ("", OPENMETRICS):
                body, _ = exposition.render(accept)
                assert f"vmsnap_sidecar_records_ingested_total {n}.0".encode() in body
                assert b"process_resident_memory_bytes" in body  # volatile, per scrape
                zipped, _ = exposition.render(accept, gzip=True)
                assert gzip.decompress(zipped).startswith(body[:200])
        assert exposition.misses == 0 and exposition.hits == 13
        # A format variant first asked for by a scrape is kept current too.
        utf8 = "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8"
        assert b"records_ingested_total 3.0" in exposition.render(utf8)[0]
        rig.gen.job("job-4")
        sidecar.ingest()
        _wait_rendered(exposition, ledger)
        body, content_type = exposition.render(utf8)
        assert "escaping=allow-utf-8" in content_type and b"records_ingested_total 4.0" in body
        assert exposition.misses == 1  # the variant's first scrape only
        assert first.count(b"# EOF\n") == 1 and first.endswith(b"# EOF\n")
    finally:
        stop.set()
        ledger.changed.set()
    thread.join(5)
    assert not thread.is_alive()


class _Recording:
    """A volatile part that records the thread each collection ran on."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def collect(self) -> Iterator[Metric]:
        self.threads.append(threading.current_thread().name)
        yield from _Fixed().collect()


def test_renderer_refreshes_the_volatile_part_so_scrapes_read_no_proc(rig: Rig) -> None:
    sidecar = rig.sidecar()
    ledger = sidecar.ledger
    recording = _Recording()
    exposition = CachedExposition(
        _registry(*_stable_collectors(sidecar)), _registry(recording), lambda: ledger.version
    )
    stop = threading.Event()
    thread = exposition.start_renderer(ledger.changed, stop)
    try:
        _wait_rendered(exposition, ledger)
        for _ in range(20):
            for accept in ("", OPENMETRICS):
                body, _ = exposition.render(accept, gzip=False)
                assert body.endswith(b"process_open_fds 7.0\n" if not accept else b"# EOF\n")
        assert set(recording.threads) == {"metrics-render"}
        # Refreshed by the renderer every VOLATILE_REFRESH_SECONDS, not once.
        seen = len(recording.threads)
        deadline = time.monotonic() + 10
        while len(recording.threads) == seen:
            assert time.monotonic() < deadline, "the volatile part was never refreshed"
            time.sleep(0.05)
    finally:
        stop.set()
        ledger.changed.set()
    thread.join(5)
    # Without the renderer a scrape renders the volatile part itself, every time.
    before = len(recording.threads)
    exposition.render("")
    exposition.render("")
    assert len(recording.threads) == before + 2
    assert recording.threads[-1] == threading.current_thread().name


def _raw(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _exchange(server: MetricsServer, request: bytes, *, pause_after: int | None = None) -> bytes:
    """Send ``request`` (in two parts with a pause when asked) and read until close."""
    with socket.create_connection(server.address, timeout=10) as sock:
        if pause_after is None:
            sock.sendall(request)
        else:
            sock.sendall(request[:pause_after])
            time.sleep(0.3)  # the accept thread has seen an incomplete head by now
            sock.sendall(request[pause_after:])
        return _raw(sock)


def _split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


def _get_request(path: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: x", "Connection: close", *extra, "", ""]
    return "\r\n".join(lines).encode()


def test_scrapes_answered_on_the_accept_thread_match_the_threaded_answers() -> None:
    server = MetricsServer(_registry(_Fixed()), "127.0.0.1:0")
    server.start()
    try:
        for path, extra in (
            ("/metrics", ()),
            ("/metrics", (f"Accept: {OPENMETRICS}", "Accept-Encoding: gzip")),
            ("/metrics?x=1", ("accept-encoding: identity",)),
            ("/healthz", ()),
            ("/nope", ()),
        ):
            request = _get_request(path, *extra)
            inline = _split(_exchange(server, request))
            threaded = _split(_exchange(server, request, pause_after=5))
            assert inline[1]["connection"] == "close" and "connection" not in threaded[1]
            assert inline[0] == threaded[0]
            for name in ("content-type", "content-length", "content-encoding", "server"):
                assert inline[1].get(name) == threaded[1].get(name), name
            assert inline[2] == threaded[2] and len(inline[2]) == int(inline[1]["content-length"])
            if inline[1].get("content-encoding") == "gzip":
                assert gzip.decompress(inline[2]) == openmetrics_latest(_registry(_Fixed()))  # type: ignore[no-untyped-call]
        status, _, body = _split(_exchange(server, _get_request("/metrics")))
        assert status == "HTTP/1.1 200 OK" and body == generate_latest(_registry(_Fixed()))
        # Not a simple GET: the threaded handler answers, as before.
        post = (
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        assert _exchange(server, post).startswith(b"HTTP/1.1 501 ")
    finally:
        server.close()


class _Large:
    """An exposition of a few MB: more than a socket buffer holds."""

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("big", "A large family.", labels=["n"])
        for n in range(40_000):
            gauge.add_metric([f"{n:060d}"], float(n))
        yield gauge


def test_a_slow_client_holds_up_no_other_scrape() -> None:
    server = MetricsServer(_registry(_Large()), "127.0.0.1:0")
    server.start()
    try:
        # One client sends half a request, one sends a whole one and reads nothing.
        half = socket.create_connection(server.address, timeout=30)
        half.sendall(b"GET /metr")
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.settimeout(30)
        stalled.connect(server.address)
        stalled.sendall(_get_request("/metrics"))
        time.sleep(0.3)
        # Others are still answered in full, inline.
        for _ in range(2):
            status, headers, body = _split(_exchange(server, _get_request("/healthz")))
            assert status == "HTTP/1.1 200 OK" and body == b"ok\n"
        # The stalled reader gets the whole body once it reads.
        status, headers, body = _split(_raw(stalled))
        assert status == "HTTP/1.1 200 OK" and len(body) == int(headers["content-length"]) > 2**21
        half.sendall(b"ics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _, body = _split(_raw(half))
        assert status == "HTTP/1.1 200 OK" and body.startswith(b"# HELP big")
        half.close()
        stalled.close()
    finally:
        server.close()
