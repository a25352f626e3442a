"""Snapshot every disk blob inside the frozen window, all disks in parallel.

The ``azure_blob`` backend (``backend.Snapshotter``): one Snapshot Blob
request per disk. Four calls, in this order (it is also a context manager)::

    snapper.decide()         always "use": SAS URLs are all it needs
    snapper.prepare()        before the freeze: clients, threads, warm connections
    snapper.snapshot_all()   inside the freeze: the snapshot requests, nothing else
    snapper.close()          after the thaw

Why parallel, when the reference snapshots up to four disks one by one: the
cost that matters is the frozen window, during which every write on the VM
blocks. Sequential requests make it the *sum* of the disks' latencies (and the
sum of their timeouts when Storage is slow); in parallel it is the slowest
disk. There is no cross-blob atomicity either way, so the order buys nothing.

Contracts:

* Two transports. With no proxy configured (the usual case) every request
  of a disk goes over ``blob_wire``, without azure-storage-blob: the SDK
  (with azure-core, requests, urllib3) is ~35 MiB of a guest job's peak RSS
  (52 MiB against the 35 MiB goal, docs/startup.md), and this module imports
  none of it then. The preflight is a HEAD on the disk's prepared
  connection, the retries ``PreparedSnapshot.send``, classified and worded
  by ``blob_rules`` exactly as the SDK's failures (``blob_errors``). With a
  proxy (``blob_policy.proxy_configured``), or for a disk ``blob_wire`` cannot
  express (non-ASCII metadata), the disk's every request goes through the SDK
  (``blob_requests.blob_client``), imported in ``prepare``.
* I1 - ``snapshot_all`` performs no file writes, no logging, no imports, no
  thread creation and no new connections on the happy path: ``prepare`` has
  imported everything, started the worker threads, drawn each disk's
  ``x-ms-client-request-id`` and built each disk's snapshot request
  (``blob_wire.PreparedSnapshot``: request bytes, a connection opened and
  warmed by the preflight) or, on the SDK transport, one ``BlobClient`` (one
  ``requests`` session) per disk, warmed by a ``get_blob_properties``.
  (Left to the SDK, that id is a ``uuid1()`` made per request: libuuid then
  asks uuidd over /run/uuidd/request or, with no daemon, rewrites
  /var/lib/libuuid/clock.txt, a write that blocks on a frozen root
  filesystem; tests/job/test_window_syscalls.py saw both.) A retry after a
  reset, or a connection the server closed while idle, does open a new TCP
  connection (and, for a host name, a DNS lookup): that is what the prepared
  client needs to reach Storage.
* I5 - URLs in results are ``strip_sas`` forms; error texts are scrubbed by
  pattern and by the exact signature of the disk's SAS.
* Blocking - ``prepare`` blocks for at most about ``connect_timeout +
  request_timeout``; ``snapshot_all`` returns by ``deadline_seconds`` even when
  requests hang (a disk still running then is reported failed, kind
  ``timeout``, and its thread is left to finish within one read timeout).
* Threads - ``snapshot_all`` sends every disk's prepared first attempt
  itself, all at once, and reads every answer on its own thread
  (``blob_wire.send_all``, one ``poll`` loop): one wave whatever the disk
  count, and no thread hand-off per disk (64 disks, 50 ms storage latency, 2
  cores: the runtime's CPU in the window 19-22 ms with a thread per disk,
  6-8 ms from one thread; benchmarks/frozen_window.py). One pool of
  ``min(max_workers, disks)`` daemon threads, started in ``prepare``, does
  the rest: the preflight, the retries after a failed first attempt (through
  the same policy as the SDK's, backoff included), a disk whose idle
  connection was dropped, and every attempt of a disk on the SDK transport
  (a proxy, non-ASCII metadata). Every disk has its own connection or
  client, used by one thread at a time.
  The snapshotter's methods must be called from one thread.
* Raises - ``snapshot_all`` and ``prepare`` report request failures in their
  results and never raise them; calling out of order raises ``RuntimeError``.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from snapshot_runtime.core.redact import Redactor, strip_sas
from snapshot_runtime.snapshot.backend import BackendDecision
from snapshot_runtime.snapshot.blob_policy import BlobPolicy, proxy_configured
from snapshot_runtime.snapshot.blob_retry import call_with_retries
from snapshot_runtime.snapshot.blob_rules import WIRE_ERRORS, Classifier, sas_redactor
from snapshot_runtime.snapshot.blob_wire import (
    PreparedSnapshot,
    SendOutcome,
    prepared_snapshot,
    send_all,
)
from snapshot_runtime.snapshot.failures import BlobFailure, BlobOpError
from snapshot_runtime.snapshot.results import DiskSnapshot, SnapshotResult, aggregate
from snapshot_runtime.snapshot.worker_pool import WorkerPool

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient

__all__ = [
    "AzureBlobSnapshotter",
]

# Preflight failures that a snapshot request would meet too: the SAS is not
# accepted at all, or the blob is not there. A permission mismatch is not one
# of them: a SAS with c/w but without r cannot read properties but can snapshot.
_DEFINITIVE_CODES = frozenset({"authenticationfailed", "authorizationfailure"})


@dataclass
class _Disk:
    """Per-disk state built in prepare(); written only by the owning thread."""

    index: int
    blob_url: str
    redact: Redactor
    # x-ms-client-request-id of this disk's snapshot request, the same on each
    # of our retries: drawn before the freeze (uuid4: getrandom(2), no file).
    request_id: str
    # Exactly one of the two once prepared (unless the URL was refused): the
    # request sent without the SDK (blob_wire), or the SDK's client.
    fast: PreparedSnapshot | None = None
    client: BlobClient | None = None
    errors: Classifier = WIRE_ERRORS  # blob_errors.SDK_ERRORS with a client
    preflight: DiskSnapshot | None = None
    # Held while a thread uses the connection or client: a warm-up prepare()
    # stopped waiting for must not share the socket with the snapshot request.
    busy: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Progress:
    # Written by the worker, read by snapshot_all at the deadline: plain
    # attribute stores, atomic under the GIL.
    started_at: float | None = None
    attempts: int = 0


class AzureBlobSnapshotter:
    """Snapshots a VM's disk blobs, given their SAS URLs, inside a freeze.

    - sas_urls: one SAS URL per disk, in disk order (the index in results).
    - policy: timeouts and retry budget per request.
    - deadline_seconds: ``snapshot_all`` returns by then, whatever happens.
    - max_workers: worker threads (preflight, retries, SDK-only disks; more
      queue); ``None``, the default, is one per disk. Prepared first attempts
      are all sent at once from the calling thread, whatever this is.
    - metadata: ``x-ms-meta-*`` set on every snapshot.
    - clock: monotonic seconds; must advance in real time (deadlines use it).
    - sdk: True sends every request through azure-storage-blob, False
      through ``blob_wire`` where it can; None, the default: the SDK only
      when a proxy is configured (``blob_policy.proxy_configured``).
    """

    def __init__(
        self,
        sas_urls: Sequence[str],
        *,
        policy: BlobPolicy = BlobPolicy(),  # noqa: B008 - frozen, immutable default
        deadline_seconds: float = 60.0,
        max_workers: int | None = None,
        metadata: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sdk: bool | None = None,
    ) -> None:
        if not sas_urls:
            raise ValueError("no disks to snapshot")
        if max_workers is None:
            max_workers = len(sas_urls)
        if deadline_seconds <= 0 or max_workers < 1:
            raise ValueError("deadline_seconds must be positive and max_workers at least 1")
        self._urls = tuple(sas_urls)
        self._policy = policy
        self._deadline_seconds = deadline_seconds
        self._max_workers = max_workers
        self._metadata = dict(metadata or {})
        self._clock = clock
        self._sdk = sdk
        # Drops the SDK's and urllib3's log records on a worker (I1); only the
        # SDK transport logs anything.
        self._quiet: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
        self._disks: list[_Disk] = []
        self._pool: WorkerPool | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"AzureBlobSnapshotter(disks={len(self._urls)}, deadline={self._deadline_seconds}s)"

    # -- before the freeze -------------------------------------------------

    def decide(self) -> BackendDecision:
        """Always usable: the disks' SAS URLs are everything a request needs."""
        return BackendDecision.accept()

    def prepare(self) -> list[DiskSnapshot]:
        """Build clients, start the threads, warm each connection. Before the freeze.

        Returns the disks that failed their preflight for good (the SAS is
        rejected, or the blob does not exist). Those are not attempted inside
        the freeze; they are reported failed in ``snapshot_all``'s result.
        """
        if self._closed:
            raise RuntimeError("AzureBlobSnapshotter is closed")
        if self._pool is not None:
            raise RuntimeError("prepare() was already called")
        now = self._clock()
        use_sdk = proxy_configured() if self._sdk is None else self._sdk
        for index, url in enumerate(self._urls):
            disk = _Disk(index, strip_sas(url), sas_redactor(url), str(uuid.uuid4()))
            if not use_sdk:
                disk.fast = prepared_snapshot(
                    url, request_id=disk.request_id, metadata=self._metadata, policy=self._policy
                )
            if disk.fast is None:
                self._sdk_client(disk, url, now)
            self._disks.append(disk)
        self._pool = WorkerPool(min(self._max_workers, len(self._disks)), "snapshot")

        done: queue.SimpleQueue[int] = queue.SimpleQueue()
        pending = [d for d in self._disks if d.preflight is None]
        for disk in pending:
            self._pool.submit(functools.partial(self._warm, disk, done))
        # Bounded: each warm-up is one request with the policy's timeouts.
        budget = self._policy.connect_timeout + self._policy.request_timeout + 1.0
        waiting_until = time.monotonic() + budget
        for _ in pending:
            try:
                done.get(timeout=max(0.0, waiting_until - time.monotonic()))
            except queue.Empty:
                break
        return [d.preflight for d in self._disks if d.preflight is not None]

    def _sdk_client(self, disk: _Disk, url: str, now: float) -> None:
        """Put ``disk`` on the SDK transport: imported here, before the freeze."""
        # Here, not at the top: the SDK's ~35 MiB only for a job that needs it
        # (docs/startup.md).
        from snapshot_runtime.snapshot.blob_errors import SDK_ERRORS  # noqa: PLC0415
        from snapshot_runtime.snapshot.blob_requests import (  # noqa: PLC0415
            blob_client,
            silenced_transport_logs,
        )

        self._quiet = silenced_transport_logs
        disk.errors = SDK_ERRORS
        try:
            disk.client = blob_client(url, self._policy)
        except BlobOpError as exc:
            disk.preflight = self._failed(disk, exc.failure, attempts=0, started_at=now)

    def _probe(self, disk: _Disk, probe_id: str) -> None:
        if disk.client is not None:
            disk.client.get_blob_properties(client_request_id=probe_id)
            return
        assert disk.fast is not None
        # Connect, then the preflight on that connection: it is warm (TLS
        # included) for the snapshot request in the window.
        disk.fast.open()
        disk.fast.probe(self._policy.request_timeout, probe_id)

    def _warm(self, disk: _Disk, done: queue.SimpleQueue[int]) -> None:
        started = self._clock()
        # Our own id: left to the SDK it is a uuid1(), and libuuid keeps a
        # per-thread fd on its clock file that a finished worker leaks.
        probe_id = str(uuid.uuid4())
        try:
            with disk.busy:
                self._probe(disk, probe_id)
        except Exception as exc:
            failure = disk.errors.classify(exc, disk.redact)
            code = (failure.error_code or "").lower()
            if failure.kind == "not_found" or (
                failure.kind == "auth" and code in _DEFINITIVE_CODES
            ):
                # attempts=0: no snapshot request was made for this disk.
                disk.preflight = self._failed(
                    disk, failure, attempts=0, started_at=started, prefix="preflight: "
                )
            # Anything else (a read-only permission mismatch, a reset, a
            # timeout) may not hold for the snapshot request: try it anyway.
        finally:
            done.put(disk.index)

    # -- inside the freeze -------------------------------------------------

    def snapshot_all(self) -> SnapshotResult:
        """Snapshot every disk in parallel; return by the deadline. Inside the freeze."""
        if self._pool is None or self._closed:
            raise RuntimeError("snapshot_all() needs prepare() first, and not after close()")
        start = self._clock()
        deadline = start + self._deadline_seconds
        stop = threading.Event()
        results: queue.SimpleQueue[DiskSnapshot] = queue.SimpleQueue()
        outcomes: dict[int, DiskSnapshot] = {
            d.index: d.preflight for d in self._disks if d.preflight is not None
        }
        todo = [d for d in self._disks if d.preflight is None]
        progress = {d.index: _Progress() for d in todo}

        def on_worker(disk: _Disk, first_error: BaseException | None = None) -> None:
            assert self._pool is not None
            self._pool.submit(
                functools.partial(
                    self._run_disk,
                    disk,
                    deadline,
                    stop,
                    progress[disk.index],
                    results,
                    first_error=first_error,
                )
            )

        # Disks on the SDK transport: every attempt on a worker.
        for disk in todo:
            if disk.fast is None:
                on_worker(disk)
        # Every prepared first attempt from this thread, in one wave (blob_wire);
        # a disk whose warm-up still holds its connection goes to a worker,
        # which waits for it.
        prepared: list[_Disk] = []
        for disk in todo:
            if disk.fast is None:
                continue
            if disk.busy.acquire(blocking=False):
                prepared.append(disk)
            else:
                on_worker(disk)
        for disk in prepared:
            progress[disk.index].started_at = start
            progress[disk.index].attempts = 1  # all sent at once, answered or not
        outcomes_sent = send_all(
            [d.fast for d in prepared if d.fast is not None],
            deadline=deadline,
            request_timeout=self._policy.request_timeout,
            clock=self._clock,
        )
        held = {d.index: d for d in prepared}
        for sent in outcomes_sent:
            disk = prepared[sent.position]
            held.pop(disk.index).busy.release()  # before a worker may need it
            if not sent.sent:
                # Its connection was gone, nothing was sent: a worker connects again.
                progress[disk.index].attempts = 0
                on_worker(disk)
                continue
            if sent.error is not None:
                on_worker(disk, sent.error)  # classified and retried there, as always
            else:
                outcomes[disk.index] = self._succeeded(disk, sent, start)
        for disk in held.values():  # unanswered at the deadline
            disk.busy.release()

        deadline_hit = False
        while len(outcomes) < len(self._disks):
            remaining = deadline - self._clock()
            if remaining <= 0:
                deadline_hit = True
                break
            try:
                outcome = results.get(timeout=remaining)
            except queue.Empty:
                deadline_hit = True
                break
            outcomes[outcome.index] = outcome
        # Late finishers must not start new attempts or backoffs.
        stop.set()

        end = self._clock()
        for disk in todo:
            if disk.index not in outcomes:
                p = progress[disk.index]
                began = p.started_at if p.started_at is not None else start
                failure = BlobFailure(
                    "timeout",
                    None,
                    None,
                    True,
                    f"timeout: still running at the {self._deadline_seconds:g}s deadline",
                )
                outcomes[disk.index] = self._failed(
                    disk, failure, attempts=p.attempts, started_at=began, ended_at=end
                )
        disks = tuple(outcomes[i] for i in range(len(self._disks)))
        code, message = aggregate(disks, deadline_hit=deadline_hit)
        return SnapshotResult(
            disks=disks,
            ok=code is None,
            error=code,
            error_message=message,
            duration_seconds=end - start,
            deadline_hit=deadline_hit,
        )

    def _run_disk(
        self,
        disk: _Disk,
        deadline: float,
        stop: threading.Event,
        progress: _Progress,
        results: queue.SimpleQueue[DiskSnapshot],
        *,
        first_error: BaseException | None = None,
    ) -> None:
        """One disk on a worker: every attempt, or the retries after ``first_error``.

        ``first_error``: how the first attempt, sent by ``send_all``, failed; it
        is replayed as attempt 1 so that ``call_with_retries`` classifies it,
        counts it and backs off exactly as for an attempt made here.
        """
        if progress.started_at is None:
            progress.started_at = self._clock()
        started = progress.started_at
        client, fast = disk.client, disk.fast
        server_timeout = max(1, int(self._policy.request_timeout))
        replay = [first_error] if first_error is not None else []

        def snap(budget: float) -> dict[str, Any]:
            if replay:
                raise replay.pop()  # attempt 1, made by send_all (progress counts it)
            progress.attempts += 1
            with disk.busy:
                if fast is not None:
                    return fast.send(budget)  # reconnects when the connection is gone
                assert client is not None
                reply: dict[str, Any] = client.create_snapshot(
                    metadata=self._metadata or None,
                    timeout=server_timeout,
                    read_timeout=budget,
                    connection_timeout=min(self._policy.connect_timeout, budget),
                    client_request_id=disk.request_id,  # not a uuid1() in the window
                )
                return reply

        try:
            with self._quiet():
                outcome = call_with_retries(
                    snap,
                    errors=disk.errors,
                    policy=self._policy,
                    redact=disk.redact,
                    deadline=deadline,
                    clock=self._clock,
                    stop=stop,
                )
            if outcome.failure is None and outcome.value is not None:
                stamp = str(outcome.value.get("snapshot") or "")
                result = DiskSnapshot(
                    index=disk.index,
                    blob_url=disk.blob_url,
                    ok=True,
                    snapshot=stamp,
                    snapshot_url=f"{disk.blob_url}?snapshot={stamp}",
                    attempts=outcome.attempts,
                    started_at=started,
                    duration_seconds=self._clock() - started,
                    status_code=201,  # Snapshot Blob answers 201 Created
                    error=None,
                    failure_kind=None,
                )
            else:
                failure = outcome.failure or BlobFailure("other", None, None, False, "other")
                result = self._failed(disk, failure, attempts=outcome.attempts, started_at=started)
        except Exception as exc:  # a bug, not a request failure: still report the disk
            failure = disk.errors.classify(exc, disk.redact)
            result = self._failed(disk, failure, attempts=progress.attempts, started_at=started)
        results.put(result)

    def _succeeded(self, disk: _Disk, sent: SendOutcome, started: float) -> DiskSnapshot:
        stamp = str((sent.value or {}).get("snapshot") or "")
        return DiskSnapshot(
            index=disk.index,
            blob_url=disk.blob_url,
            ok=True,
            snapshot=stamp,
            snapshot_url=f"{disk.blob_url}?snapshot={stamp}",
            attempts=1,
            started_at=started,
            duration_seconds=sent.ended_at - started,
            status_code=201,  # Snapshot Blob answers 201 Created
            error=None,
            failure_kind=None,
        )

    def _failed(
        self,
        disk: _Disk,
        failure: BlobFailure,
        *,
        attempts: int,
        started_at: float,
        ended_at: float | None = None,
        prefix: str = "",
    ) -> DiskSnapshot:
        end = self._clock() if ended_at is None else ended_at
        suffix = f" after {attempts} attempt(s)" if attempts > 1 else ""
        return DiskSnapshot(
            index=disk.index,
            blob_url=disk.blob_url,
            ok=False,
            snapshot=None,
            snapshot_url=None,
            attempts=attempts,
            started_at=started_at,
            duration_seconds=max(0.0, end - started_at),
            status_code=failure.status_code,
            error=disk.redact(f"{prefix}{failure.message}{suffix}"),
            failure_kind=failure.kind,
        )

    # -- after the thaw ----------------------------------------------------

    def close(self, wait_seconds: float = 0.5) -> None:
        """Stop the threads (waiting a little) and close every client. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait_seconds)
        for disk in self._disks:
            # A thread still stuck past the deadline sees its socket closed.
            if disk.fast is not None:
                disk.fast.close()
            if disk.client is not None:
                disk.client.close()

    def __enter__(self) -> AzureBlobSnapshotter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
