"""The fault proxy itself, proven against a real Azurite."""

from __future__ import annotations

import http.client
import socket
import time

import pytest
from azure.core.exceptions import (
    HttpResponseError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.storage.blob import BlobClient

from tests.support.azurite import Azurite
from tests.support.faultproxy import FaultProxy
from tests.support.waiting import wait_until

pytestmark = pytest.mark.azurite


def _client(azurite: Azurite, proxy: FaultProxy, *, read_timeout: float = 5.0) -> BlobClient:
    container = azurite.container()
    azurite.create_page_blob(container, "disk.vhd")
    url = azurite.sas_url(container, "disk.vhd", endpoint=proxy.endpoint())
    return BlobClient.from_blob_url(
        url, retry_total=0, connection_timeout=2, read_timeout=read_timeout
    )


def test_forwards_and_counts_requests_on_one_keepalive_connection(azurite, proxy):
    client = _client(azurite, proxy)
    for _ in range(3):
        assert client.get_blob_properties().size == 1024 * 1024
    client.create_snapshot()
    stats = proxy.stats
    assert (stats.connections, stats.requests, stats.forwarded) == (1, 4, 4)


def test_request_bodies_are_framed_per_request(azurite, proxy):
    # Content-Length bodies on a kept-alive connection: each upload is one request.
    container = azurite.container()
    url = azurite.sas_url(container, "status.json", endpoint=proxy.endpoint())
    client = BlobClient.from_blob_url(url, retry_total=0)
    for size in (10, 70_000, 3):
        client.upload_blob(b"x" * size, overwrite=True)
    assert client.download_blob().readall() == b"xxx"
    assert proxy.stats.requests == 4
    assert proxy.stats.connections == 1


def test_chunked_request_bodies_are_framed(azurite, proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    for _ in range(2):
        conn.request("PUT", "/devstoreaccount1/nosuch/blob", body=iter([b"abc", b"defg"]))
        conn.getresponse().read()  # Azurite rejects it (no auth); framing is the point
    conn.close()
    assert proxy.stats.requests == 2
    assert proxy.stats.connections == 1


def test_latency_delays_each_request(azurite, proxy):
    client = _client(azurite, proxy)
    client.get_blob_properties()
    proxy.set_latency(0.4)
    t0 = time.monotonic()
    client.get_blob_properties()
    client.get_blob_properties()
    assert time.monotonic() - t0 >= 0.8
    proxy.set_latency(0)
    t0 = time.monotonic()
    client.get_blob_properties()
    assert time.monotonic() - t0 < 0.3


def test_reset_next_aborts_with_rst_then_recovers(azurite, proxy):
    client = _client(azurite, proxy)
    client.get_blob_properties()
    proxy.reset_next(2)
    for _ in range(2):
        with pytest.raises(ServiceResponseError) as info:
            client.get_blob_properties()
        assert "reset" in str(info.value).lower() or "aborted" in str(info.value).lower()
    client.get_blob_properties()
    stats = proxy.stats
    assert stats.resets == 2
    assert stats.connections == 3  # each reset forces a new connection


def test_reset_is_a_real_rst_on_the_wire(proxy):
    proxy.reset_next(1)
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(ConnectionResetError):
        sock.recv(1024)
    sock.close()


def test_fail_next_answers_canned_status_and_keeps_the_connection(azurite, proxy):
    client = _client(azurite, proxy)
    client.get_blob_properties()
    proxy.fail_next(1, status=503, error_code="ServerBusy", message="busy")
    with pytest.raises(HttpResponseError) as info:
        client.create_snapshot()
    assert info.value.status_code == 503
    assert str(info.value.error_code) in {"ServerBusy", "StorageErrorCode.SERVER_BUSY"}
    proxy.fail_next(1, status=500)
    with pytest.raises(HttpResponseError) as info:
        client.get_blob_properties()  # HEAD: canned answer without a body
    assert info.value.status_code == 500
    assert client.create_snapshot()["snapshot"]
    stats = proxy.stats
    assert (stats.connections, stats.failures, stats.forwarded) == (1, 2, 2)


def test_match_limits_a_fault_to_matching_requests(azurite, proxy):
    client = _client(azurite, proxy)
    proxy.fail_next(1, status=500, match="comp=snapshot")
    client.get_blob_properties()  # not matched: forwarded
    with pytest.raises(HttpResponseError):
        client.create_snapshot()
    assert client.create_snapshot()["snapshot"]


def test_drop_hangs_kept_alive_and_new_connections(azurite, proxy):
    client = _client(azurite, proxy, read_timeout=0.5)
    client.get_blob_properties()
    proxy.drop()
    for _ in range(2):
        t0 = time.monotonic()
        with pytest.raises(ServiceResponseTimeoutError):
            client.get_blob_properties()
        assert 0.4 < time.monotonic() - t0 < 2.0
    assert proxy.stats.drops == 2
    assert proxy.stats.connections == 2  # the second attempt came on a fresh connection
    proxy.drop(False)
    client.get_blob_properties()


def test_close_stops_everything(azurite):
    proxy = FaultProxy(azurite.host, azurite.port)
    client = _client(azurite, proxy)
    client.get_blob_properties()
    proxy.close()
    assert proxy.closed
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
    assert not any(t.is_alive() for t in proxy._threads)


def test_max_lifetime_closes_the_proxy(azurite):
    started = time.monotonic()
    proxy = FaultProxy(azurite.host, azurite.port, max_lifetime=0.2)
    wait_until(lambda: proxy.closed, 0.5, "the proxy to close itself after its 0.2 s lifetime")
    assert proxy.closed
    assert time.monotonic() - started >= 0.2  # and not before
    proxy.close()


def test_only_loopback_targets():
    with pytest.raises(ValueError):
        FaultProxy("10.0.0.1", 80)
