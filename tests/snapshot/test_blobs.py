"""blobs.py against a real Azurite, with a fault proxy for what Azurite can't do."""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import logging
import socket
import traceback
from typing import get_args

import pytest
import requests
import urllib3.exceptions
from azure.core import exceptions as azure_exc
from azure.storage.blob import BlobClient

from snapshot_runtime.core.errors import BlobError, ErrorCode
from snapshot_runtime.snapshot.blob_errors import AZURE_EXCEPTION_KINDS, classify
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.snapshot.blob_requests import blob_client, translate, upload_block_blob
from snapshot_runtime.snapshot.blob_retry import backoff_delay
from snapshot_runtime.snapshot.failures import BlobFailure, BlobOpError, FailureKind
from tests.support.azurite import Azurite
from tests.support.faultproxy import FaultProxy
from tests.support.jobkit import sig_values

pytestmark = pytest.mark.azurite

FAST = BlobPolicy(request_timeout=2.0, connect_timeout=1.0, retries=3, backoff_seconds=0.01)


def assert_clean(text: str, *urls: str) -> None:
    for url in urls:
        for value in sig_values(url):
            assert value not in text, "SAS signature leaked"


@pytest.fixture
def disk(azurite: Azurite) -> tuple[str, str]:
    container = azurite.container()
    return container, azurite.create_page_blob(container, "disk0.vhd")


def failure_of(call) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    return info.value


def raw(url: str, read_timeout: float = 2.0) -> BlobClient:
    return BlobClient.from_blob_url(
        url, retry_total=0, connection_timeout=1, read_timeout=read_timeout
    )


# -- classify() over real Azurite errors -----------------------------------------


def test_classify_real_azurite_errors(azurite: Azurite, disk) -> None:
    container, url = disk
    wrong_sig = url.replace("sig=", "sig=AAAA")
    read_only = azurite.sas_url(container, "disk0.vhd", permission="r")
    expired = azurite.sas_url(container, "disk0.vhd", expiry=dt.timedelta(minutes=-5))
    missing = azurite.sas_url(container, "nosuch.vhd")
    table = [
        (wrong_sig, "create_snapshot", "auth", 403),
        (wrong_sig, "get_blob_properties", "auth", 403),
        (read_only, "create_snapshot", "auth", 403),
        (expired, "create_snapshot", "auth", 403),
        (missing, "create_snapshot", "not_found", 404),
        (missing, "get_blob_properties", "not_found", 404),
    ]
    for sas, op, kind, status in table:
        exc = failure_of(getattr(raw(sas), op))
        failure = classify(exc)
        assert (failure.kind, failure.status_code, failure.retryable) == (kind, status, False), (
            op,
            failure,
        )
        assert failure.error_code
        assert_clean(repr(failure), sas)
    assert classify(failure_of(raw(read_only).create_snapshot)).error_code == (
        "AuthorizationPermissionMismatch"
    )


def test_classify_proxy_induced_faults(azurite: Azurite, disk, proxy: FaultProxy) -> None:
    container, _ = disk
    url = azurite.sas_url(container, "disk0.vhd", endpoint=proxy.endpoint())
    client = raw(url, read_timeout=0.3)
    client.get_blob_properties()
    cases: list[tuple[dict, str, int | None, str | None]] = [
        (dict(status=500), "transient", 500, None),
        (dict(status=502), "transient", 502, None),
        (dict(status=504), "transient", 504, None),
        (dict(status=500, error_code="OperationTimedOut"), "timeout", 500, "OperationTimedOut"),
        (dict(status=503, error_code="ServerBusy"), "throttled", 503, "ServerBusy"),
        (dict(status=429), "throttled", 429, None),
        (
            dict(
                status=409,
                error_code="SnapshotOperationRateExceeded",
                message="The rate of snapshot blob calls is exceeded.",
            ),
            "throttled",
            409,
            "SnapshotOperationRateExceeded",
        ),
        (
            dict(
                status=409,
                error_code="SnapshotCountExceeded",
                message="The snapshot count against this blob has been exceeded.",
            ),
            "limit",
            409,
            "SnapshotCountExceeded",
        ),
        # The reference's #494: a 409 is not a network error; not retryable.
        (dict(status=409, error_code="LeaseIdMissing"), "other", 409, "LeaseIdMissing"),
    ]
    for canned, kind, status, code in cases:
        proxy.fail_next(1, **canned)
        failure = classify(failure_of(client.create_snapshot))
        assert (failure.kind, failure.status_code, failure.error_code) == (kind, status, code)
        assert failure.retryable == (kind in {"transient", "timeout", "throttled"})

    proxy.reset_next(1)
    reset = classify(failure_of(client.create_snapshot))
    assert (reset.kind, reset.retryable, reset.exc_type) == (
        "transient",
        True,
        "ServiceResponseError",
    )

    proxy.set_latency(1.0)
    slow = classify(failure_of(client.create_snapshot))
    assert (slow.kind, slow.retryable, slow.exc_type) == (
        "timeout",
        True,
        "ServiceResponseTimeoutError",
    )
    proxy.set_latency(0)

    proxy.close()  # nothing listens on its port any more
    refused = classify(failure_of(raw(url).create_snapshot))
    assert (refused.kind, refused.retryable, refused.exc_type) == (
        "transient",
        True,
        "ServiceRequestError",
    )


def test_classify_below_azure_core() -> None:
    table: list[tuple[BaseException, FailureKind]] = [
        (ConnectionResetError(104, "Connection reset by peer"), "transient"),
        (ConnectionRefusedError(111, "refused"), "transient"),
        (BrokenPipeError(), "transient"),
        (TimeoutError("timed out"), "timeout"),
        (socket.gaierror(-2, "Name or service not known"), "transient"),
        (requests.exceptions.ReadTimeout("read timed out"), "timeout"),
        (requests.exceptions.ConnectTimeout("connect timed out"), "timeout"),
        (requests.exceptions.ConnectionError("aborted"), "transient"),
        (urllib3.exceptions.ProtocolError("Connection aborted."), "transient"),
        (urllib3.exceptions.ReadTimeoutError(None, "/x", "read timed out"), "timeout"),
        (urllib3.exceptions.NewConnectionError(None, "refused"), "transient"),  # type: ignore[arg-type]
        (ValueError("bad"), "other"),
        (KeyboardInterrupt(), "other"),
        (azure_exc.AzureError("wrapped", error=ConnectionResetError()), "transient"),
    ]
    for exc, kind in table:
        assert classify(exc).kind == kind, exc


def test_classify_scrubs_messages() -> None:
    exc = azure_exc.ServiceRequestError(
        "HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: "
        "/c/b?sv=2025&sig=SECRETSIGNATUREVALUE%2B%3D&sp=r (Caused by reset)"
    )
    failure = classify(exc)
    assert "SECRETSIGNATUREVALUE" not in failure.message
    assert failure.kind == "transient"


# -- every azure.core exception is mapped (like httpx tests/test_exceptions.py) ---


def _public_azure_exceptions() -> list[type[BaseException]]:
    return [
        cls
        for name, cls in inspect.getmembers(azure_exc, inspect.isclass)
        if issubclass(cls, BaseException)
        and cls.__module__ == azure_exc.__name__
        and not name.startswith("_")
    ]


def _instances(cls: type[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for args in (("boom",), (None,), ([],)):
        try:
            out.append(cls(*args))
            break
        except Exception:
            continue
    half_built = cls.__new__(cls)  # never __init__-ed: no attributes at all
    out.append(half_built)
    return out


def test_every_azure_core_exception_is_mapped() -> None:
    classes = _public_azure_exceptions()
    assert len(classes) >= 18
    unmapped = [cls.__name__ for cls in classes if cls not in AZURE_EXCEPTION_KINDS]
    assert not unmapped, f"map these in blob_errors.AZURE_EXCEPTION_KINDS: {unmapped}"
    kinds = set(get_args(FailureKind))
    for cls in classes:
        for exc in _instances(cls):
            failure = classify(exc)
            assert isinstance(failure, BlobFailure)
            assert failure.kind in kinds
            url = "http://127.0.0.1:1/acct/c/b?sv=1&sig=SIGSIGSIGSIG"
            with pytest.raises(BlobOpError) as info, translate(url):
                raise exc
            assert info.value.__cause__ is exc
            assert "SIGSIGSIGSIG" not in str(info.value)


def test_translate_names_the_url_and_scrubs_the_chain() -> None:
    url = "http://127.0.0.1:1/acct/c/disk.vhd?sv=2025&sig=TOPSECRET%2Babc%3D&sp=rw"
    inner = urllib3.exceptions.ProtocolError(f"aborted on {url}")
    code = ErrorCode.STATUS_UPLOAD_FAILED
    with pytest.raises(BlobOpError) as info, translate(url, code=code, operation="upload to"):
        try:
            raise inner
        except urllib3.exceptions.ProtocolError as exc:
            raise azure_exc.ServiceResponseError(f"reset while sending {url}", error=exc) from exc
    err = info.value
    assert isinstance(err, BlobError)
    assert err.code is ErrorCode.STATUS_UPLOAD_FAILED
    assert "http://127.0.0.1:1/acct/c/disk.vhd" in str(err)
    assert err.failure.kind == "transient"
    text = "".join(traceback.format_exception(err)) + repr(err) + repr(err.failure)
    assert "TOPSECRET" not in text


def test_translate_leaves_bugs_alone() -> None:
    with pytest.raises(TypeError), translate("http://127.0.0.1:1/a/c/b?sig=xxxxxxxxxxxx"):
        raise TypeError("a bug")


# -- blob_client ------------------------------------------------------------------


def test_blob_client_has_no_sdk_retries(azurite: Azurite, disk, proxy: FaultProxy) -> None:
    container, _ = disk
    url = azurite.sas_url(container, "disk0.vhd", endpoint=proxy.endpoint())
    client = blob_client(url, FAST)
    proxy.reset_next(5)
    with pytest.raises(BlobOpError) as info, translate(url):
        client.get_blob_properties()
    assert info.value.failure.exc_type == "ServiceResponseError"
    assert proxy.stats.requests == 1  # the SDK did not retry behind our back


def test_blob_client_rejects_a_malformed_url() -> None:
    url = "http://127.0.0.1:1/?sig=VERYSECRETVALUE"  # no container, no blob
    with pytest.raises(BlobOpError) as info:
        blob_client(url, FAST)
    assert info.value.failure.kind == "other"
    assert "VERYSECRETVALUE" not in "".join(traceback.format_exception(info.value))


def test_policy_validation_and_backoff() -> None:
    with pytest.raises(ValueError):
        BlobPolicy(request_timeout=0)
    with pytest.raises(ValueError):
        BlobPolicy(retries=-1)
    policy = BlobPolicy(backoff_seconds=0.5)
    transient = BlobFailure("transient", 500, None, True, "x")
    throttled = dataclasses.replace(transient, kind="throttled")
    assert [backoff_delay(policy, n, transient) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff_delay(policy, 1, throttled) == 1.0


# -- upload_block_blob ------------------------------------------------------------


def test_upload_creates_and_overwrites_a_block_blob(azurite: Azurite) -> None:
    container = azurite.container()
    url = azurite.sas_url(container, "status.json")
    upload_block_blob(url, b'{"v": 1}', policy=FAST)
    upload_block_blob(url, b'{"v": 2, "longer": true}', policy=FAST)
    client = azurite.service().get_blob_client(container, "status.json")
    props = client.get_blob_properties()
    assert props.blob_type == "BlockBlob"
    assert props.content_settings.content_type == "application/json"
    assert client.download_blob().readall() == b'{"v": 2, "longer": true}'


def test_upload_retries_through_two_500s(azurite: Azurite, proxy: FaultProxy) -> None:
    container = azurite.container()
    url = azurite.sas_url(container, "status.json", endpoint=proxy.endpoint())
    proxy.fail_next(2, status=500)
    upload_block_blob(url, b"{}", policy=FAST)
    assert (proxy.stats.failures, proxy.stats.forwarded) == (2, 1)
    client = azurite.service().get_blob_client(container, "status.json")
    assert client.download_blob().readall() == b"{}"


def test_upload_gives_up_after_the_retries(azurite: Azurite, proxy: FaultProxy) -> None:
    container = azurite.container()
    url = azurite.sas_url(container, "status.json", endpoint=proxy.endpoint())
    proxy.fail_next(10, status=503, error_code="ServerBusy")
    with pytest.raises(BlobOpError) as info:
        upload_block_blob(url, b"{}", policy=dataclasses.replace(FAST, retries=2))
    err = info.value
    assert err.code is ErrorCode.STATUS_UPLOAD_FAILED
    assert err.failure.kind == "throttled"
    assert proxy.stats.failures == 3
    assert "3 attempt(s)" in str(err)
    assert "sig=" not in str(err)
    assert_clean("".join(traceback.format_exception(err)) + repr(err.failure), url)


def test_upload_does_not_retry_a_rejected_sas(azurite: Azurite, proxy: FaultProxy) -> None:
    container = azurite.container()
    url = azurite.sas_url(container, "status.json", endpoint=proxy.endpoint())
    bad = url.replace("sig=", "sig=AAAA")
    with pytest.raises(BlobOpError) as info:
        upload_block_blob(bad, b"{}", policy=FAST)
    assert info.value.failure.kind == "auth"
    assert proxy.stats.requests == 1
    assert_clean(str(info.value) + repr(info.value.failure), bad)


def test_transport_debug_logs_are_scrubbed(azurite: Azurite, caplog) -> None:
    # urllib3 logs each request line, SAS query included, at DEBUG.
    container = azurite.container()
    url = azurite.sas_url(container, "status.json")
    caplog.set_level(logging.DEBUG)
    upload_block_blob(url, b"{}", policy=FAST)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "sig=REDACTED" in text  # the transport did log the request, scrubbed
    assert_clean(text, url)
