"""snapshot.py against a real Azurite; aggregate() as a pure table.

Wall times are measured in benchmarks/frozen_window.py, never asserted here:
time bounds in these tests only tell parallel from sequential, or a cut at
the deadline from a wait for the read timeout, with seconds of slack.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure.storage.blob import BlobClient

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.snapshot import azure_blob
from snapshot_runtime.snapshot.azure_blob import AzureBlobSnapshotter
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.snapshot.blob_wire import PreparedSnapshot, prepared_snapshot
from snapshot_runtime.snapshot.results import DiskSnapshot, SnapshotResult, aggregate
from tests.support.azurite import Azurite
from tests.support.faultproxy import FaultProxy
from tests.support.jobkit import sig_values
from tests.support.waiting import wait_until

pytestmark = pytest.mark.azurite

FAST = BlobPolicy(request_timeout=3.0, connect_timeout=1.0, retries=3, backoff_seconds=0.01)
META = {"backupTaskId": "task-1", "createdBy": "snapshot-runtime"}


def _failed(result: SnapshotResult) -> int:
    """Disks whose snapshot failed (the result itself only counts the ok ones)."""
    return sum(1 for d in result.disks if not d.ok)


def assert_clean(result: SnapshotResult | list[DiskSnapshot], urls: list[str]) -> None:
    """No SAS signature anywhere in a result's text (I5)."""
    text = repr(result)
    if isinstance(result, SnapshotResult):
        text += str(result.error_message)
    secrets = [v for url in urls for v in sig_values(url)]
    assert secrets
    hits = [s for s in secrets if s in text]
    assert hits == []


@pytest.fixture
def disks(azurite: Azurite) -> Callable[..., list[str]]:
    def make(n: int, *, endpoint: str | None = None) -> list[str]:
        container = azurite.container()
        urls = []
        for i in range(n):
            azurite.create_page_blob(container, f"disk{i}.vhd")
            urls.append(azurite.sas_url(container, f"disk{i}.vhd", endpoint=endpoint))
        return urls

    return make


def run(urls: list[str], **kwargs) -> tuple[list[DiskSnapshot], SnapshotResult, float]:
    kwargs.setdefault("policy", FAST)
    with AzureBlobSnapshotter(urls, metadata=META, **kwargs) as snapper:
        preflight = snapper.prepare()
        t0 = time.monotonic()
        result = snapper.snapshot_all()
        wall = time.monotonic() - t0
    assert_clean(result, urls)
    assert_clean(preflight, urls)
    return preflight, result, wall


def assert_snapshot_exists(azurite: Azurite, disk: DiskSnapshot) -> None:
    path = urlsplit(disk.blob_url).path.split("/")
    container, blob = path[2], "/".join(path[3:])
    service = azurite.service()
    snap = service.get_blob_client(container, blob, snapshot=disk.snapshot)
    props = snap.get_blob_properties()
    assert props.snapshot == disk.snapshot
    assert props.metadata == META
    listed = service.get_container_client(container).list_blobs(
        name_starts_with=blob, include=["snapshots"]
    )
    assert disk.snapshot in {b.snapshot for b in listed}


# -- the happy path --------------------------------------------------------------


def test_four_disks_snapshot_in_parallel_and_exist(azurite: Azurite, disks) -> None:
    urls = disks(4)
    preflight, result, _ = run(urls)
    assert preflight == []
    assert (result.ok, result.error, result.error_message) == (True, None, None)
    assert (result.ok_count, _failed(result), result.deadline_hit) == (4, 0, False)
    for i, disk in enumerate(result.disks):
        assert disk.index == i and disk.ok and disk.attempts == 1
        assert "?" not in disk.blob_url
        assert disk.snapshot_url == f"{disk.blob_url}?snapshot={disk.snapshot}"
        assert_snapshot_exists(azurite, disk)


def test_sixteen_disks(azurite: Azurite, disks) -> None:
    _, result, _ = run(disks(16))
    assert result.ok and result.ok_count == 16
    assert len({d.snapshot for d in result.disks if d.snapshot}) >= 1
    for disk in result.disks[::5]:
        assert_snapshot_exists(azurite, disk)


def test_more_disks_than_workers_queue(disks) -> None:
    _, result, _ = run(disks(6), max_workers=2)
    assert result.ok and result.ok_count == 6


def test_one_disk(disks) -> None:
    _, result, _ = run(disks(1))
    assert result.ok and result.ok_count == 1 and result.disks[0].attempts == 1


def test_slow_disks_do_not_serialise_the_others(disks, proxy: FaultProxy) -> None:
    latency = 3.0
    fast = disks(4)
    slow = disks(2, endpoint=proxy.endpoint())
    proxy.set_latency(latency, match="comp=snapshot")
    _, result, wall = run(fast + slow, policy=dataclasses.replace(FAST, request_timeout=10.0))
    assert result.ok
    fast_d = [d.duration_seconds for d in result.disks[:4]]
    slow_d = [d.duration_seconds for d in result.disks[4:]]
    assert max(fast_d) < latency  # no fast disk waited behind a slow one
    assert min(slow_d) >= latency
    assert wall < 2 * latency  # the two slow requests overlapped: not one after the other


# -- I1: nothing but the snapshot requests inside the freeze ---------------------

_recording: list[tuple[str, str]] | None = None


def _audit(event: str, args: tuple) -> None:
    if _recording is not None and event in {
        "open",
        "import",
        "socket.connect",
        "socket.getaddrinfo",
        "subprocess.Popen",
        "os.system",
        "os.remove",
        "os.rename",
        "os.mkdir",
    }:
        _recording.append((event, repr(args)[:120]))


_hook_installed = False


def test_snapshot_all_does_only_the_requests(disks, caplog: pytest.LogCaptureFixture) -> None:
    global _recording, _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)  # cannot be removed: it records only while asked to
        _hook_installed = True
    urls = disks(4)
    with AzureBlobSnapshotter(urls, policy=FAST, metadata=META) as snapper:
        snapper.prepare()
        threads_before = set(threading.enumerate())
        caplog.set_level(logging.DEBUG)
        caplog.clear()
        _recording = []
        try:
            result = snapper.snapshot_all()
        finally:
            events, _recording = _recording, None
        assert result.ok
        assert events == []  # no file opened, no import, no DNS, no new connection
        assert caplog.records == []  # not a single log record, even at DEBUG
        assert set(threading.enumerate()) <= threads_before  # no thread started


# -- the prepared first attempt (blob_requests.PreparedSnapshot) ------------------


def test_the_in_window_request_does_not_go_through_the_sdk(
    azurite: Azurite, disks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt is the prepared request: the SDK's create_snapshot is never called."""

    def sdk_snapshot(*args: object, **kwargs: object) -> None:
        raise AssertionError("the SDK sent a first-attempt snapshot request")

    monkeypatch.setattr(BlobClient, "create_snapshot", sdk_snapshot)
    _, result, _ = run(disks(3))
    assert result.ok and [d.attempts for d in result.disks] == [1, 1, 1]
    for disk in result.disks:
        assert_snapshot_exists(azurite, disk)  # metadata included


def test_one_worker_per_disk_and_no_connection_in_the_window(disks, proxy: FaultProxy) -> None:
    """By default every disk has a worker (retries, SDK-only disks); the first attempts
    go out in one wave on the connections prepare() opened: snapshot_all opens none."""
    urls = disks(20, endpoint=proxy.endpoint())  # more than the old default of 16 workers
    with AzureBlobSnapshotter(urls, policy=FAST, metadata=META) as snapper:
        snapper.prepare()
        workers = [t for t in threading.enumerate() if t.name.startswith("snapshot-")]
        # prepare() opened one connection per disk (its preflight HEAD warmed it for
        # the snapshot request); the proxy's accept loop counts them a little later.
        wait_until(lambda: proxy.stats.connections >= 20, 10, "the proxy accepted 20 connections")
        before = proxy.stats
        result = snapper.snapshot_all()
        after = proxy.stats
    assert result.ok and result.ok_count == 20
    assert len(workers) == 20
    assert before.requests == 20  # the preflights
    assert before.connections == after.connections == 20
    assert after.requests - before.requests == 20  # one request per disk, nothing else


def test_with_the_sdk_transport_the_sdk_warms_its_own_connection(disks, proxy: FaultProxy) -> None:
    """sdk=True (what a configured proxy selects): every request through the SDK,
    warmed by get_blob_properties on the SDK's connection; the window opens none."""
    urls = disks(3, endpoint=proxy.endpoint())
    with AzureBlobSnapshotter(urls, policy=FAST, metadata=META, sdk=True) as snapper:
        snapper.prepare()
        wait_until(lambda: proxy.stats.connections >= 3, 10, "the proxy accepted 3 connections")
        before = proxy.stats
        result = snapper.snapshot_all()
        after = proxy.stats
    assert result.ok and result.ok_count == 3
    assert before.connections == after.connections == 3
    assert after.requests - before.requests == 3


def test_snapshot_all_sends_first_attempts_itself_and_retries_on_a_worker(
    disks, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One wave from the calling thread (blob_wire.send_all); a failed first attempt
    is retried (PreparedSnapshot.send, not the SDK) on a worker, never by the calling thread."""
    urls = disks(5, endpoint=proxy.endpoint())
    proxy.fail_next(1, status=500, error_code="InternalError", match="comp=snapshot")
    send_all_on: list[str] = []
    sent_on: list[str] = []
    real_send_all = azure_blob.send_all
    real_send = PreparedSnapshot.send

    def recording_send_all(*args: Any, **kwargs: Any) -> Any:
        send_all_on.append(threading.current_thread().name)
        return real_send_all(*args, **kwargs)

    def recording_send(self: PreparedSnapshot, budget: float) -> Any:
        sent_on.append(threading.current_thread().name)
        return real_send(self, budget)

    def no_sdk(*args: object, **kwargs: object) -> None:
        raise AssertionError("the SDK sent a request without a proxy")

    monkeypatch.setattr(azure_blob, "send_all", recording_send_all)
    monkeypatch.setattr(PreparedSnapshot, "send", recording_send)
    monkeypatch.setattr(BlobClient, "create_snapshot", no_sdk)
    monkeypatch.setattr(BlobClient, "get_blob_properties", no_sdk)
    _, result, _ = run(urls)
    assert result.ok and sorted(d.attempts for d in result.disks) == [1, 1, 1, 1, 2]
    assert send_all_on == [threading.current_thread().name]
    assert len(sent_on) == 1 and sent_on[0].startswith("snapshot-")
    assert proxy.stats.failures == 1


def test_a_failed_prepared_attempt_is_retried_through_the_sdk(disks, proxy: FaultProxy) -> None:
    urls = disks(1, endpoint=proxy.endpoint())
    proxy.fail_next(1, status=500, error_code="InternalError", match="comp=snapshot")
    _, result, _ = run(urls)
    assert result.ok and result.disks[0].attempts == 2
    assert proxy.stats.failures == 1


def test_a_prepared_answer_is_classified_like_the_sdks(disks, proxy: FaultProxy) -> None:
    """A 403 on the prepared request: kind auth, its status and code, not retried, no SAS."""
    urls = disks(1, endpoint=proxy.endpoint())
    proxy.fail_next(
        1,
        status=403,
        error_code="AuthorizationPermissionMismatch",
        message="This request is not authorized to perform this operation using this permission.",
        match="comp=snapshot",
    )
    _, result, _ = run(urls)
    disk = result.disks[0]
    outcome = (result.ok, disk.failure_kind, disk.status_code, disk.attempts)
    assert outcome == (False, "auth", 403, 1)
    assert disk.error is not None and "not authorized" in disk.error
    assert_clean(result, urls)


def test_a_prepared_connection_the_peer_closed_is_reopened() -> None:
    """The idle connection opened before the freeze was closed by the server: one
    poll sees it, the request goes out on a new connection (as a retry would)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    first_closed = threading.Event()
    requests_seen: list[bytes] = []

    def serve() -> None:
        first, _ = listener.accept()
        first.close()  # an idle keep-alive the server gave up on
        first_closed.set()
        second, _ = listener.accept()
        with second:
            data = b""
            while b"\r\n\r\n" not in data:
                data += second.recv(4096)
            requests_seen.append(data)
            second.sendall(
                b"HTTP/1.1 201 Created\r\nx-ms-snapshot: 2026-01-01T00:00:00.0000000Z\r\n"
                b"Content-Length: 0\r\n\r\n"
            )

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port}/devstoreaccount1/c/disk.vhd?sv=2024-08-04&sig=abcdefghijkl"
    prepared = prepared_snapshot(
        url, api_version="2025-01-05", request_id="rid-1", metadata=META, policy=FAST
    )
    assert prepared is not None
    try:
        prepared.open()
        assert first_closed.wait(10)
        assert prepared.send(5.0) == {"snapshot": "2026-01-01T00:00:00.0000000Z"}
    finally:
        prepared.close()
        listener.close()
    server.join(10)
    head = requests_seen[0].decode()
    assert head.startswith("PUT /devstoreaccount1/c/disk.vhd?comp=snapshot&timeout=3&sv=")
    assert "x-ms-client-request-id: rid-1" in head and "x-ms-meta-backupTaskId: task-1" in head


def test_the_prepared_request_is_off_where_only_the_sdk_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "https://acct.blob.core.windows.net/c/disk.vhd?sv=2024-08-04&sig=abcdefghijkl"
    kwargs: dict = {"api_version": "2025-01-05", "request_id": "id-1", "policy": FAST}
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert prepared_snapshot(url, metadata=META, **kwargs) is not None
    # A header value the SDK would encode and a raw request cannot carry.
    assert prepared_snapshot(url, metadata={"owner": "zo\u00eb"}, **kwargs) is None
    # A proxy: the SDK's session knows how to reach it.
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert prepared_snapshot(url, metadata=META, **kwargs) is None


# -- failures ---------------------------------------------------------------------


def test_a_wrong_sas_fails_alone(disks) -> None:
    urls = disks(4)
    urls[2] = urls[2].replace("sig=", "sig=AAAA")
    preflight, result, _ = run(urls)
    assert [d.index for d in preflight] == [2]
    assert result.error is ErrorCode.SNAPSHOT_PARTIALLY_FAILED
    assert (result.ok, result.ok_count, _failed(result)) == (False, 3, 1)
    bad = result.disks[2]
    assert (bad.ok, bad.failure_kind, bad.status_code, bad.attempts) == (False, "auth", 403, 0)
    assert bad.error is not None and bad.error.startswith("preflight: ")
    assert "disk 2 " in str(result.error_message)
    assert all(d.ok for i, d in enumerate(result.disks) if i != 2)


def test_all_disks_wrong_is_snapshot_failed(disks) -> None:
    urls = [u.replace("sig=", "sig=AAAA") for u in disks(3)]
    preflight, result, _ = run(urls)
    assert len(preflight) == 3
    assert result.error is ErrorCode.SNAPSHOT_FAILED and _failed(result) == 3


def test_missing_blob_fails_in_preflight(azurite: Azurite, disks) -> None:
    urls = disks(2)
    urls.append(azurite.sas_url(azurite.container(), "nosuch.vhd"))
    preflight, result, _ = run(urls)
    assert [(d.index, d.failure_kind) for d in preflight] == [(2, "not_found")]
    assert result.error is ErrorCode.SNAPSHOT_PARTIALLY_FAILED


def test_sas_without_read_still_snapshots(azurite: Azurite) -> None:
    # Snapshot Blob needs c/w, not r: a preflight 403 for a permission
    # mismatch must not rule the disk out.
    container = azurite.container()
    azurite.create_page_blob(container, "disk0.vhd")
    url = azurite.sas_url(container, "disk0.vhd", permission="cw")
    preflight, result, _ = run([url])
    assert preflight == [] and result.ok


def test_read_only_sas_fails_without_retry(azurite: Azurite) -> None:
    container = azurite.container()
    azurite.create_page_blob(container, "disk0.vhd")
    url = azurite.sas_url(container, "disk0.vhd", permission="r")
    preflight, result, _ = run([url])
    assert preflight == []
    disk = result.disks[0]
    assert (disk.failure_kind, disk.status_code, disk.attempts) == ("auth", 403, 1)
    assert result.error is ErrorCode.SNAPSHOT_FAILED


def test_two_resets_then_success(disks, proxy: FaultProxy) -> None:
    urls = disks(2) + disks(1, endpoint=proxy.endpoint())
    with AzureBlobSnapshotter(urls, policy=FAST) as snapper:
        snapper.prepare()
        proxy.reset_next(2, match="comp=snapshot")
        result = snapper.snapshot_all()
    assert result.ok
    assert [d.attempts for d in result.disks] == [1, 1, 3]
    assert proxy.stats.resets == 2


def test_throttled_everywhere_is_rate_exceeded(disks, proxy: FaultProxy) -> None:
    urls = disks(2, endpoint=proxy.endpoint())
    proxy.fail_next(
        100,
        status=409,
        error_code="SnapshotOperationRateExceeded",
        message="The rate of snapshot blob calls is exceeded.",
        match="comp=snapshot",
    )
    _, result, _ = run(urls, policy=dataclasses.replace(FAST, retries=2))
    assert result.error is ErrorCode.SNAPSHOT_RATE_EXCEEDED
    assert [d.attempts for d in result.disks] == [3, 3]
    assert {d.failure_kind for d in result.disks} == {"throttled"}


def test_snapshot_limit_is_not_retried(disks, proxy: FaultProxy) -> None:
    urls = disks(2, endpoint=proxy.endpoint())
    proxy.fail_next(100, status=409, error_code="SnapshotCountExceeded", match="comp=snapshot")
    _, result, _ = run(urls)
    assert result.error is ErrorCode.SNAPSHOT_LIMIT_REACHED
    assert [d.attempts for d in result.disks] == [1, 1]


def test_a_hanging_disk_is_cut_at_the_deadline(disks, proxy: FaultProxy) -> None:
    urls = disks(3) + disks(1, endpoint=proxy.endpoint())
    # The stuck request would hold its thread for the 10 s read timeout.
    policy = dataclasses.replace(FAST, request_timeout=10.0)
    with AzureBlobSnapshotter(urls, policy=policy, deadline_seconds=1.0) as snapper:
        snapper.prepare()
        proxy.drop()
        t0 = time.monotonic()
        result = snapper.snapshot_all()
        wall = time.monotonic() - t0
        t1 = time.monotonic()
    assert time.monotonic() - t1 < 5.0  # close() does not wait for the stuck thread
    assert 0.95 <= wall < 5.0  # cut at the deadline, not at the read timeout
    assert result.deadline_hit
    assert result.error is ErrorCode.SNAPSHOT_PARTIALLY_FAILED
    stuck = result.disks[3]
    assert (stuck.ok, stuck.failure_kind, stuck.attempts) == (False, "timeout", 1)
    assert 0.9 <= stuck.duration_seconds < 5.0
    assert all(d.ok for d in result.disks[:3])
    assert_clean(result, urls)


def test_misuse() -> None:
    with pytest.raises(ValueError):
        AzureBlobSnapshotter([])
    snapper = AzureBlobSnapshotter(["http://127.0.0.1:1/a/c/b?sig=abcdefghijkl"])
    with pytest.raises(RuntimeError):
        snapper.snapshot_all()
    assert "abcdefghijkl" not in repr(snapper)
    snapper.close()
    snapper.close()
    with pytest.raises(RuntimeError):
        snapper.prepare()


def test_malformed_url_is_a_disk_failure_not_a_crash(disks) -> None:
    urls = [*disks(1), "http://127.0.0.1:1/?sig=abcdefghijkl"]
    preflight, result, _ = run(urls)
    assert [(d.index, d.failure_kind) for d in preflight] == [(1, "other")]
    assert result.error is ErrorCode.SNAPSHOT_PARTIALLY_FAILED


# -- aggregate(): pure ------------------------------------------------------------


def _disk(i: int, kind: str | None) -> DiskSnapshot:
    return DiskSnapshot(
        index=i,
        blob_url=f"https://acct.blob.core.windows.net/vhds/disk{i}.vhd",
        ok=kind is None,
        snapshot=None if kind else "2026-01-01T00:00:00.0000000Z",
        snapshot_url=None,
        attempts=1,
        started_at=0.0,
        duration_seconds=0.1,
        status_code=None,
        error=None if kind is None else f"{kind}: boom",
        failure_kind=kind,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [
        ([None], None),
        ([None, None, None, None], None),
        (["auth"], ErrorCode.SNAPSHOT_FAILED),
        (["auth", "timeout"], ErrorCode.SNAPSHOT_FAILED),
        (["limit", "limit"], ErrorCode.SNAPSHOT_LIMIT_REACHED),
        (["throttled", "throttled"], ErrorCode.SNAPSHOT_RATE_EXCEEDED),
        (["throttled", "limit"], ErrorCode.SNAPSHOT_FAILED),
        (["throttled", "transient"], ErrorCode.SNAPSHOT_FAILED),
        ([None, "auth"], ErrorCode.SNAPSHOT_PARTIALLY_FAILED),
        ([None, "limit"], ErrorCode.SNAPSHOT_PARTIALLY_FAILED),
        ([None, None, "throttled"], ErrorCode.SNAPSHOT_PARTIALLY_FAILED),
        ([], ErrorCode.SNAPSHOT_FAILED),
    ],
)
def test_aggregate_table(kinds: list[str | None], expected: ErrorCode | None) -> None:
    code, message = aggregate([_disk(i, k) for i, k in enumerate(kinds)], deadline_hit=False)
    assert code is expected
    assert (message is None) == (expected is None)


def test_aggregate_message_lists_failing_disks() -> None:
    disks = [_disk(0, None), _disk(1, "auth"), _disk(2, "timeout")]
    code, message = aggregate(disks, deadline_hit=True)
    assert code is ErrorCode.SNAPSHOT_PARTIALLY_FAILED
    assert message is not None
    assert message.startswith("2 of 3 disk(s) failed (deadline reached): disk 1 https://")
    assert "disk2.vhd: timeout: boom" in message
    assert "disk 0 " not in message


def test_aggregate_message_is_bounded() -> None:
    disks = [_disk(i, "transient") for i in range(64)]
    _, message = aggregate(disks, deadline_hit=False)
    assert message is not None and message.endswith("; and 56 more")


def test_a_warm_up_prepare_stopped_waiting_for_keeps_its_connection_to_itself(
    disks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prepare() waits for the warm-ups for a bounded time; a preflight still running
    then holds the disk's connection, so its snapshot request waits for it on a worker
    (never interleaved with the preflight on one socket), and still succeeds."""
    policy = BlobPolicy(request_timeout=0.5, connect_timeout=0.2, retries=0)
    events: list[str] = []
    real_probe, real_send = PreparedSnapshot.probe, PreparedSnapshot.send
    release = threading.Event()

    def slow_probe(self: PreparedSnapshot, budget: float, request_id: str) -> None:
        real_probe(self, budget, request_id)
        release.wait(30)  # past prepare()'s wait: until snapshot_all has started
        events.append("preflight done")

    def send(self: PreparedSnapshot, budget: float) -> Any:
        events.append("snapshot sent")
        return real_send(self, budget)

    real_send_all = azure_blob.send_all

    def send_all_then_release(*args: Any, **kwargs: Any) -> Any:
        yield from real_send_all(*args, **kwargs)
        release.set()

    monkeypatch.setattr(PreparedSnapshot, "probe", slow_probe)
    monkeypatch.setattr(PreparedSnapshot, "send", send)
    monkeypatch.setattr(azure_blob, "send_all", send_all_then_release)
    urls = disks(1)
    with AzureBlobSnapshotter(urls, policy=policy, deadline_seconds=30) as snapper:
        assert snapper.prepare() == []
        result = snapper.snapshot_all()
    assert result.ok and result.disks[0].attempts == 1
    assert events == ["preflight done", "snapshot sent"]
