"""The status blob's prepared PUT (snapshot/block_upload.py) against real Azurite.

Each behaviour is checked against the SDK path it replaces
(``snapshot.blob_requests.upload_block_blob``) on the same Azurite, so the
two cannot drift: the blob's content and type, the content type, what a
page or append blob target becomes, and the error (kind, status, code,
message) for a forged SAS, with no signature anywhere in it.
"""

from __future__ import annotations

import dataclasses
import socket
import traceback

import pytest

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.snapshot.blob_policy import (
    SDK_DEFAULT_API_VERSION,
    BlobPolicy,
    proxy_configured,
)
from snapshot_runtime.snapshot.blob_requests import upload_block_blob
from snapshot_runtime.snapshot.block_upload import BlockPut, classify_answer
from snapshot_runtime.snapshot.block_upload import (
    upload_block_blob_direct as upload_status_blob,
)
from snapshot_runtime.snapshot.failures import BlobOpError
from tests.support.azurite import Azurite
from tests.support.faultproxy import FaultProxy
from tests.support.jobkit import sig_values

pytestmark = pytest.mark.azurite

FAST = BlobPolicy(request_timeout=2.0, connect_timeout=1.0, retries=3, backoff_seconds=0.01)


def assert_clean(text: str, *urls: str) -> None:
    for url in urls:
        for value in sig_values(url):
            assert value not in text, "SAS signature leaked"


def _blob(azurite: Azurite, container: str, name: str) -> tuple[str, str, bytes]:
    client = azurite.service().get_blob_client(container, name)
    props = client.get_blob_properties()
    return props.blob_type, props.content_settings.content_type, client.download_blob().readall()


def test_the_api_version_is_the_sdks_default() -> None:
    from azure.storage.blob._serialize import _SUPPORTED_API_VERSIONS

    assert _SUPPORTED_API_VERSIONS[-1] == SDK_DEFAULT_API_VERSION


def test_creates_and_overwrites_a_block_blob_as_the_sdk_does(azurite: Azurite) -> None:
    container = azurite.container()
    ours, sdks = azurite.sas_url(container, "ours.json"), azurite.sas_url(container, "sdk.json")
    for data in (b'{"v": 1}', b'{"v": 2, "longer": true}'):
        upload_status_blob(ours, data, policy=FAST)
        upload_block_blob(sdks, data, policy=FAST)
    assert _blob(azurite, container, "ours.json") == (
        "BlockBlob",
        "application/json",
        b'{"v": 2, "longer": true}',
    )
    assert _blob(azurite, container, "ours.json") == _blob(azurite, container, "sdk.json")


@pytest.mark.parametrize("existing", ["page", "append"])
def test_a_page_or_append_blob_target_ends_as_with_the_sdk(azurite: Azurite, existing: str) -> None:
    container = azurite.container()
    outcomes = []
    for name, upload in (("ours", upload_status_blob), ("sdk", upload_block_blob)):
        client = azurite.service().get_blob_client(container, name)
        if existing == "page":
            client.create_page_blob(size=512)
        else:
            client.create_append_blob()
        url = azurite.sas_url(container, name)
        try:
            upload(url, b'{"status": 1}', policy=FAST)
            outcomes.append(("ok", _blob(azurite, container, name)))
        except BlobOpError as exc:
            outcomes.append(("failed", (exc.failure.kind, exc.failure.status_code, None)))
    assert outcomes[0] == outcomes[1]


def test_a_forged_sas_fails_like_the_sdk_path_once_and_names_no_signature(
    azurite: Azurite, proxy: FaultProxy
) -> None:
    container = azurite.container()
    url = azurite.sas_url(container, "status.json", endpoint=proxy.endpoint())
    bad = url.replace("sig=", "sig=AAAA")
    with pytest.raises(BlobOpError) as ours:
        upload_status_blob(bad, b"{}", policy=FAST)
    assert proxy.stats.requests == 1  # an auth failure is not retried
    with pytest.raises(BlobOpError) as sdks:
        upload_block_blob(bad, b"{}", policy=FAST)
    mine, theirs = ours.value, sdks.value
    assert mine.code is theirs.code is ErrorCode.STATUS_UPLOAD_FAILED
    assert (mine.failure.kind, mine.failure.status_code, mine.failure.error_code) == (
        "auth",
        403,
        theirs.failure.error_code,
    )
    assert mine.failure.retryable is theirs.failure.retryable is False
    assert str(mine) == str(theirs)
    text = "".join(traceback.format_exception(mine)) + repr(mine.failure)
    assert_clean(text, bad)
    assert "sig=" not in str(mine)


def test_retries_through_two_500s(azurite: Azurite, proxy: FaultProxy) -> None:
    container = azurite.container()
    url = azurite.sas_url(container, "status.json", endpoint=proxy.endpoint())
    proxy.fail_next(2, status=500)
    upload_status_blob(url, b"{}", policy=FAST)
    assert (proxy.stats.failures, proxy.stats.forwarded) == (2, 1)
    assert _blob(azurite, container, "status.json")[2] == b"{}"


def test_gives_up_after_the_retries_when_throttled(azurite: Azurite, proxy: FaultProxy) -> None:
    container = azurite.container()
    url = azurite.sas_url(container, "status.json", endpoint=proxy.endpoint())
    proxy.fail_next(10, status=503, error_code="ServerBusy")
    with pytest.raises(BlobOpError) as info:
        upload_status_blob(url, b"{}", policy=dataclasses.replace(FAST, retries=2))
    err = info.value
    assert err.code is ErrorCode.STATUS_UPLOAD_FAILED
    assert (err.failure.kind, err.failure.status_code, err.failure.error_code) == (
        "throttled",
        503,
        "ServerBusy",
    )
    assert proxy.stats.failures == 3
    assert "3 attempt(s)" in str(err)
    assert_clean("".join(traceback.format_exception(err)) + repr(err.failure), url)


def test_a_dropped_connection_is_transient_and_retried(azurite: Azurite, proxy: FaultProxy) -> None:
    container = azurite.container()
    url = azurite.sas_url(container, "status.json", endpoint=proxy.endpoint())
    proxy.reset_next(1)
    upload_status_blob(url, b"{}", policy=FAST)
    assert _blob(azurite, container, "status.json")[2] == b"{}"


def test_a_refused_connection_fails_transient_after_the_retries(azurite: Azurite) -> None:
    container = azurite.container()
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = azurite.sas_url(container, "status.json").replace(f":{azurite.port}/", f":{port}/", 1)
    with pytest.raises(BlobOpError) as info:
        upload_status_blob(url, b"{}", policy=dataclasses.replace(FAST, retries=1))
    assert info.value.failure.kind == "transient"
    assert "2 attempt(s)" in str(info.value)
    assert_clean(str(info.value) + repr(info.value.failure), url)


def test_with_a_proxy_configured_the_sdk_path_uploads(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK honours the proxy variables; the prepared PUT never talks to a proxy.
    NO_PROXY lets the SDK reach Azurite directly here, as it would on the fleet."""
    container = azurite.container()
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert proxy_configured()
    upload_status_blob(azurite.sas_url(container, "status.json"), b"{}", policy=FAST)
    assert _blob(azurite, container, "status.json")[2] == b"{}"


def test_the_prepared_request_and_the_pure_classifier() -> None:
    put = BlockPut.prepare(
        "https://acct.blob.core.windows.net/c/s.json?sv=1&sig=SECRET",
        b"{}",
        policy=FAST,
        content_type="application/json",
    )
    assert (put.scheme, put.host, put.port) == ("https", "acct.blob.core.windows.net", None)
    assert put.target == "/c/s.json?sv=1&sig=SECRET&timeout=2"
    assert put.headers["x-ms-blob-type"] == "BlockBlob"
    assert put.headers["Content-Length"] == "2"
    assert classify_answer(429, None, "slow down").kind == "throttled"
    assert classify_answer(404, "BlobNotFound", "gone").kind == "not_found"
    assert classify_answer(409, "InvalidBlobType", "no").retryable is False
    assert classify_answer(500, None, "").retryable is True
    with pytest.raises(ValueError, match="not an http"):
        BlockPut.prepare("ftp://x/y?sig=S", b"", policy=FAST, content_type="x")
    assert proxy_configured({}) is False
    assert proxy_configured({"https_proxy": "http://p:3128"}) is True
