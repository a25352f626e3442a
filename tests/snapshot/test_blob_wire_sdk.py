"""The SDK-free guest path (blob_wire) against the SDK path, on real Azurite.

Without a proxy, ``AzureBlobSnapshotter`` sends every request of a disk
(preflight, first attempt, retries) without azure-storage-blob; with one
(``sdk=True`` here, which a proxy selects) through the SDK. Each case runs
both on the same Azurite (behind the TCP fault proxy where Azurite cannot
fail on demand) and compares what the job records: success, attempts,
failure kind, status, error code and error text. A successful snapshot must
really exist in Azurite; no text may hold the SAS signature or a fragment of it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import pytest

from snapshot_runtime.snapshot import blob_policy, blob_rules, blob_wire
from snapshot_runtime.snapshot.azure_blob import AzureBlobSnapshotter
from snapshot_runtime.snapshot.blob_errors import classify
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.snapshot.results import DiskSnapshot, SnapshotResult
from tests.support.azurite import Azurite
from tests.support.faultproxy import FaultProxy
from tests.support.jobkit import sig_values

pytestmark = pytest.mark.azurite

FAST = BlobPolicy(request_timeout=3.0, connect_timeout=1.0, retries=3, backoff_seconds=0.01)
META = {"backupTaskId": "task-1", "createdBy": "snapshot-runtime"}
SNAPSHOT = "comp=snapshot"
# What is compared between the two paths (timings and URLs are per disk).
Outcome = tuple[bool, int, str | None, int | None, str | None]


def _fragments(url: str, size: int = 8) -> set[str]:
    """Every ``size``-character piece of every form of the URL's signature."""
    return {v[i : i + size] for v in sig_values(url) for i in range(len(v) - size + 1)}


def assert_no_sas(text: str, urls: list[str]) -> None:
    leaked = [f for url in urls for f in _fragments(url) if f in text]
    assert leaked == [], "a SAS signature fragment leaked"


def outcome(disk: DiskSnapshot) -> Outcome:
    return (disk.ok, disk.attempts, disk.failure_kind, disk.status_code, disk.error)


def summary(result: SnapshotResult) -> str:
    """The job's error message, the blob (a fresh one per path) named alike."""
    text = str(result.error_message)
    for disk in result.disks:
        text = text.replace(disk.blob_url, f"<disk {disk.index}>")
    return text


def run(urls: list[str], *, sdk: bool, **kwargs: Any) -> tuple[list[DiskSnapshot], SnapshotResult]:
    kwargs.setdefault("policy", FAST)
    with AzureBlobSnapshotter(urls, metadata=META, sdk=sdk, **kwargs) as snapper:
        preflight = snapper.prepare()
        result = snapper.snapshot_all()
    assert_no_sas(repr(preflight) + repr(result) + str(result.error_message), urls)
    return preflight, result


def both(
    make_url: Callable[[], str], *, arm: Callable[[], None] = lambda: None, **kwargs: Any
) -> tuple[tuple[list[DiskSnapshot], SnapshotResult], ...]:
    """The wire path, then the SDK path, each on a fresh blob with the same faults armed."""
    runs = []
    for sdk in (False, True):
        url = make_url()
        arm()
        runs.append(run([url], sdk=sdk, **kwargs))
    return tuple(runs)


@pytest.fixture
def blob(azurite: Azurite) -> Callable[..., Callable[[], str]]:
    def factory(endpoint: str | None = None) -> Callable[[], str]:
        container = azurite.container()
        count = iter(range(1000))

        def make() -> str:
            name = f"disk{next(count)}.vhd"
            azurite.create_page_blob(container, name)
            return azurite.sas_url(container, name, endpoint=endpoint)

        return make

    return factory


def test_a_snapshot_without_the_sdk_really_exists_with_its_metadata(
    azurite: Azurite, blob: Callable[..., Callable[[], str]]
) -> None:
    make = blob()
    urls = [make(), make()]
    _, result = run(urls, sdk=False)
    assert result.ok and result.ok_count == 2
    service = azurite.service()
    for disk in result.disks:
        container, name = disk.blob_url.rsplit("/", 2)[-2:]
        assert disk.snapshot and disk.snapshot_url == f"{disk.blob_url}?snapshot={disk.snapshot}"
        snap = service.get_blob_client(container, name, snapshot=disk.snapshot)
        props = snap.get_blob_properties()
        assert props.snapshot == disk.snapshot and props.metadata == META
        assert snap.download_blob(offset=0, length=512).readall() == b"\x5a" * 512


def test_no_sdk_is_used_without_a_proxy_and_the_sdk_with_one(
    blob: Callable[..., Callable[[], str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = blob()()
    with AzureBlobSnapshotter([url], policy=FAST) as snapper:
        snapper.prepare()
        assert [d.client for d in snapper._disks] == [None]
        assert snapper.snapshot_all().ok
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # never reached: Azurite is http
    assert blob_policy.proxy_configured()
    with AzureBlobSnapshotter([url], policy=FAST) as snapper:
        snapper.prepare()
        assert [d.fast for d in snapper._disks] == [None]
        assert snapper._disks[0].client is not None


@pytest.mark.parametrize(
    ("status", "code", "attempts"),
    [(500, "InternalError", 3), (503, "ServerBusy", 2)],
)
def test_retried_answers_then_success_as_with_the_sdk(
    blob: Callable[..., Callable[[], str]],
    proxy: FaultProxy,
    status: int,
    code: str,
    attempts: int,
) -> None:
    make = blob(proxy.endpoint())

    def arm() -> None:
        proxy.fail_next(attempts - 1, status=status, error_code=code, match=SNAPSHOT)

    (_, wire), (_, sdk) = both(make, arm=arm)
    assert outcome(wire.disks[0]) == outcome(sdk.disks[0]) == (True, attempts, None, 201, None)


def test_answers_retried_to_the_end_fail_with_the_sdks_text(
    blob: Callable[..., Callable[[], str]], proxy: FaultProxy
) -> None:
    make = blob(proxy.endpoint())

    def arm() -> None:
        proxy.fail_next(100, status=503, error_code="ServerBusy", match=SNAPSHOT)

    (_, wire), (_, sdk) = both(make, arm=arm)
    assert outcome(wire.disks[0]) == outcome(sdk.disks[0])
    assert outcome(wire.disks[0])[:4] == (False, FAST.retries + 1, "throttled", 503)
    assert summary(wire) == summary(sdk)


def test_a_reset_is_retried_as_with_the_sdk(
    blob: Callable[..., Callable[[], str]], proxy: FaultProxy
) -> None:
    make = blob(proxy.endpoint())
    (_, wire), (_, sdk) = both(make, arm=lambda: proxy.reset_next(1, match=SNAPSHOT))
    assert outcome(wire.disks[0]) == outcome(sdk.disks[0]) == (True, 2, None, 201, None)


def test_resets_to_the_end_are_the_same_failure_kind(
    blob: Callable[..., Callable[[], str]], proxy: FaultProxy
) -> None:
    """A transport error's text names the transport's exception (requests' on the SDK
    path, the socket's here): the kind, the count and the retries are the same."""
    make = blob(proxy.endpoint())
    (_, wire), (_, sdk) = both(make, arm=lambda: proxy.reset_next(100, match=SNAPSHOT))
    assert outcome(wire.disks[0])[:4] == outcome(sdk.disks[0])[:4]
    assert outcome(wire.disks[0])[:4] == (False, FAST.retries + 1, "transient", None)


def test_a_forged_sas_fails_the_preflight_with_the_sdks_text(
    blob: Callable[..., Callable[[], str]],
) -> None:
    make = blob()

    def forged() -> str:
        return re.sub(r"sig=[^&]+", "sig=Zm9yZ2VkLXNpZ25hdHVyZS0wMTIzNDU2Nzg5%3D", make())

    (wire_pre, wire), (sdk_pre, sdk) = both(forged)
    assert [outcome(d) for d in wire_pre] == [outcome(d) for d in sdk_pre]
    assert outcome(wire.disks[0]) == outcome(sdk.disks[0])
    ok, attempts, kind, status, error = outcome(wire.disks[0])
    assert (ok, attempts, kind, status) == (False, 0, "auth", 403)
    assert error is not None and error.startswith("preflight: auth (403 ")
    assert summary(wire) == summary(sdk)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [(403, "AuthenticationFailed", "auth"), (404, "BlobNotFound", "not_found")],
)
def test_a_refused_snapshot_request_fails_with_the_sdks_text(
    blob: Callable[..., Callable[[], str]], proxy: FaultProxy, status: int, code: str, kind: str
) -> None:
    """The answer in the window itself (the preflight passed): one attempt, same text,
    the SDK's exception name included (ClientAuthenticationError, ResourceNotFoundError)."""
    make = blob(proxy.endpoint())

    def arm() -> None:
        message = "Server failed to authenticate the request.\nRequestId:x\nTime:y"
        proxy.fail_next(1, status=status, error_code=code, message=message, match=SNAPSHOT)

    (_, wire), (_, sdk) = both(make, arm=arm)
    assert outcome(wire.disks[0]) == outcome(sdk.disks[0])
    assert outcome(wire.disks[0])[:4] == (False, 1, kind, status)
    assert summary(wire) == summary(sdk)


def test_a_missing_blob_fails_the_preflight_with_the_sdks_text(
    azurite: Azurite,
) -> None:
    container = azurite.container()
    names = iter(["gone0.vhd", "gone1.vhd"])
    (wire_pre, wire), (sdk_pre, sdk) = both(lambda: azurite.sas_url(container, next(names)))
    assert [outcome(d) for d in wire_pre] == [outcome(d) for d in sdk_pre]
    assert outcome(wire.disks[0])[:4] == (False, 0, "not_found", 404)
    assert outcome(wire.disks[0]) == outcome(sdk.disks[0])


def test_the_deadline_cuts_both_paths_alike(
    blob: Callable[..., Callable[[], str]], proxy: FaultProxy
) -> None:
    make = blob(proxy.endpoint())
    proxy.set_latency(4.0, match=SNAPSHOT)  # longer than the deadline, shorter than the timeout
    slow = dataclasses.replace(FAST, request_timeout=6.0)
    (_, wire), (_, sdk) = both(make, deadline_seconds=1.0, policy=slow)
    assert outcome(wire.disks[0]) == outcome(sdk.disks[0])
    assert outcome(wire.disks[0])[:3] == (False, 1, "timeout")
    assert wire.deadline_hit and sdk.deadline_hit


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, None),
        (403, "AuthenticationFailed"),
        (403, "AuthorizationFailure"),
        (404, "BlobNotFound"),
        (404, "ContainerNotFound"),
        (409, "SnapshotCountExceeded"),
        (412, "ConditionNotMet"),
        (400, "InvalidHeaderValue"),
    ],
)
def test_the_sdk_exception_name_table_matches_the_sdk(status: int, code: str | None) -> None:
    """blob_rules.sdk_error_name against the SDK's own process_storage_error."""
    from azure.core.exceptions import HttpResponseError, map_error
    from azure.core.pipeline.transport import HttpResponse
    from azure.storage.blob._shared.response_handlers import process_storage_error

    class Answer(HttpResponse):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(None, None)
            self.status_code = status
            self.reason = "Fault"
            self.headers = {"x-ms-error-code": code} if code else {}

        def body(self) -> bytes:
            return b""

    error_map = {401: "auth", 404: "missing", 409: "exists", 304: "unmodified"}
    try:
        try:
            if status in error_map:  # the generated layer's map, as in every SDK operation
                from azure.core import exceptions as e

                map_error(
                    status,
                    Answer(),
                    {
                        401: e.ClientAuthenticationError,
                        404: e.ResourceNotFoundError,
                        409: e.ResourceExistsError,
                        304: e.ResourceNotModifiedError,
                    },
                )
            raise HttpResponseError(response=Answer())
        except HttpResponseError as raw:
            process_storage_error(raw)
    except HttpResponseError as exc:
        sdk_error = exc
    head = f"HTTP/1.1 {status} Fault\r\nContent-Length: 0\r\n"
    head += f"x-ms-error-code: {code}\r\n" if code else ""
    answer = blob_wire._Answer(head_only=True)
    assert answer.feed(f"{head}\r\n".encode())
    wire_error = answer.error()
    assert wire_error.sdk_name == type(sdk_error).__name__
    assert blob_rules.classify_wire(wire_error) == classify(sdk_error)


def test_the_sas_parameters_are_the_sdks() -> None:
    from azure.storage.blob._shared.shared_access_signature import QueryStringConstants

    assert frozenset(QueryStringConstants.to_list()) == blob_policy.SDK_SAS_PARAMETERS


@pytest.mark.parametrize(
    "query",
    [
        "sv=2021-08-06&sr=b&sp=rw&se=2099-01-01T00%3A00%3A00Z&sig=a%2Bb%2Fc%3D",
        "sig=first%3D&sv=2021-08-06&sig=second%3D",  # a repeated sig: the first is sent
        "sv=2021-08-06&sig=a+b&foo=bar&snapshot=2026-01-01",  # unknown ones dropped
        "",
    ],
)
def test_the_sas_query_is_sent_as_the_sdk_sends_it(query: str) -> None:
    from azure.storage.blob._shared.base_client import parse_query

    assert blob_policy.sas_token(query) == (parse_query(query)[1] or "")
