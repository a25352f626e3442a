"""A host-service (WireServer ``recsvc/snapshot``) emulator: a real HTTP server for tests.

Implements /work/shared/reference/host-snapshot.md §12:

* ``POST /metadata/recsvc/snapshot/presnapshot?api-version=2017-12-01``: 200 with a
  non-empty JSON body carrying ``responseTime`` (an object of UTC ints) and, when
  asked with ``isVMADEEnabled: true``, the ADE fields.
* ``POST /metadata/recsvc/snapshot/dosnapshot?api-version=2017-12-01``: one entry
  per requested LUN in ``diskIds`` order, ``isSuccessful`` the *string*
  ``"true"``/``"false"``. A LUN is either a page blob in Azurite (a real blob
  snapshot is taken) or a disk image file (a real reflink clone is made with the
  FICLONE ioctl, so the snapshot holds the disk's bytes at that instant and a
  test can restore it). A LUN marked ``direct_drive`` is answered DirectDrive
  style: ``/snapshots?snapshotId=`` URI and a ``ddSnapshotIdentifier`` whose
  ``creationTime`` has 7 fractional digits, as .NET writes it.

Faults are scripted per call kind (``Fault``): drop the connection, hang, an HTTP
status with a body, an empty 200, a non-JSON 200, every disk ``"false"``; and per
LUN (``HostScript.failed_luns``: the ``errorMessage`` to answer for that disk,
e.g. the throttling or snapshot-count text). ``HostScript.delay_seconds`` slows an
answer (interruptible: ``close`` releases every waiting handler).

Every call is recorded (``HostCall``) with ``time.monotonic()`` and wall times at
arrival and answer, the headers and the parsed body, so a test can set the call
log against a freeze probe. Headers are checked as the reference sends them
(``Backup: true``, ``Content-type: application/json``, ``UserAgent: VMSnapshot``,
case-insensitive names); a call without them is answered 400 and recorded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from snapshot_runtime.job.status_document import ARM_VM_TYPE
from tests.support.jobkit import Workspace, encode_object_str, ticks_now

PRESNAPSHOT_PATH = "/metadata/recsvc/snapshot/presnapshot"
DOSNAPSHOT_PATH = "/metadata/recsvc/snapshot/dosnapshot"
API_VERSION = "api-version=2017-12-01"

THROTTLED_MESSAGE = "The rate of snapshot blob calls is exceeded."
SNAPSHOT_COUNT_MESSAGE = "The snapshot count against this blob has been exceeded."

# linux/fs.h: _IOW(0x94, 9, int)
FICLONE = 0x40049409

# datetime.UTC is 3.11+; the project stays 3.10-compatible.
_UTC = dt.timezone.utc

CallKind = Literal["presnapshot", "dosnapshot", "other"]
FaultKind = Literal["drop", "hang", "status", "empty", "not_json", "all_false"]


@dataclass(frozen=True)
class BlobDisk:
    """A LUN backed by an Azurite page blob; dosnapshot takes a real blob snapshot."""

    container: str
    blob: str
    direct_drive: bool = False


@dataclass(frozen=True)
class ImageDisk:
    """A LUN backed by a disk image file; dosnapshot reflink-clones it into ``clone_dir``."""

    path: str
    clone_dir: str
    direct_drive: bool = False


Disk = BlobDisk | ImageDisk


@dataclass(frozen=True)
class Fault:
    """How to (mis)answer one kind of call.

    ``drop``: close the connection without an answer. ``hang``: answer nothing
    until the server closes. ``status``: ``status`` with ``body``. ``empty``: 200
    with no body. ``not_json``: 200 with a body that is not JSON. ``all_false``
    (dosnapshot only): take no snapshot, every disk ``"false"``.
    """

    kind: FaultKind
    status: int = 500
    body: bytes = b""


@dataclass
class HostScript:
    """What the emulator does next; a test mutates it between calls."""

    presnapshot: Fault | None = None
    dosnapshot: Fault | None = None
    # LUN -> errorMessage: that disk is answered isSuccessful "false" (no snapshot).
    failed_luns: dict[int, str] = field(default_factory=dict)
    # Seconds to wait before answering, per call kind (interrupted by close()).
    delay_seconds: dict[str, float] = field(default_factory=dict)
    # presnapshot's responseTime; None: now (UTC).
    response_time: dt.datetime | None = None
    # Answered to a presnapshot that asks for ADE details.
    ade_os_encrypted: bool = False
    ade_data_encrypted: bool = False
    disk_encryption_settings: object = None


@dataclass(frozen=True)
class HostCall:
    """One request as received and answered."""

    kind: CallKind
    path: str
    headers: Mapping[str, str]
    body: Any
    raw_body: bytes
    received_monotonic: float
    received_wall: float
    answered_monotonic: float
    answered_status: int | None  # None: dropped or hung


@dataclass(frozen=True)
class TakenSnapshot:
    """A snapshot the emulator made: where its contents are, and what it answered."""

    lun: int
    snapshot_uri: str
    blob_snapshot: str | None  # Azurite snapshot time (BlobDisk)
    clone_path: str | None  # the reflink clone (ImageDisk)
    dd_id: str | None
    task_id: str


def ficlone(source: str, dest: str) -> None:
    """Reflink-clone ``source`` to a new file ``dest`` (FICLONE; XFS reflink=1 or btrfs)."""
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.ioctl(dst, FICLONE, src)
        except OSError:
            os.close(dst)
            os.unlink(dest)
            raise
        os.close(dst)
    finally:
        os.close(src)


def dotnet_time(when: dt.datetime) -> str:
    """``2026-08-06T12:00:05.1234567Z``: 7 fractional digits, as .NET writes them."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}0Z"


class HostService:
    """The emulator. ``with HostService(luns) as host:``; ``host.address`` is ``host:port``."""

    def __init__(
        self,
        luns: Mapping[int, Disk],
        *,
        blob_connection_string: str | None = None,
        blob_endpoint: str | None = None,
    ) -> None:
        self.luns = dict(luns)
        self.script = HostScript()
        self.calls: list[HostCall] = []
        # (kind, monotonic) at arrival, before any scripted delay: "the request is in".
        self.arrivals: list[tuple[CallKind, float]] = []
        self.snapshots: list[TakenSnapshot] = []
        self.blob_connection_string = blob_connection_string
        self.blob_endpoint = blob_endpoint
        self._lock = threading.Lock()
        self._closing = threading.Event()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: the call log is the record

            def do_POST(self) -> None:
                service._handle(self)

            def do_GET(self) -> None:
                service._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle -------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> HostService:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()  # releases hung and delayed handlers
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> HostService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what tests read -------------------------------------------------------

    def calls_of(self, kind: CallKind) -> list[HostCall]:
        with self._lock:
            return [c for c in self.calls if c.kind == kind]

    # -- serving ---------------------------------------------------------------

    def _record(self, call: HostCall) -> None:
        with self._lock:
            self.calls.append(call)

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        received_mono = time.monotonic()
        received_wall = time.time()
        path, _, query = req.path.partition("?")
        kind: CallKind = (
            "presnapshot"
            if path == PRESNAPSHOT_PATH
            else "dosnapshot"
            if path == DOSNAPSHOT_PATH
            else "other"
        )
        with self._lock:
            self.arrivals.append((kind, received_mono))
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in req.headers.items()}
        try:
            body: Any = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None

        def record(status: int | None) -> None:
            self._record(
                HostCall(
                    kind=kind,
                    path=req.path,
                    headers=headers,
                    body=body,
                    raw_body=raw,
                    received_monotonic=received_mono,
                    received_wall=received_wall,
                    answered_monotonic=time.monotonic(),
                    answered_status=status,
                )
            )

        if (
            kind == "other"
            or req.command != "POST"
            or query != API_VERSION
            or headers.get("backup", "").lower() != "true"
            or headers.get("content-type", "").lower() != "application/json"
            or headers.get("useragent") != "VMSnapshot"
            or not isinstance(body, dict)
        ):
            record(400)
            self._answer(req, 400, b'{ "error": "bad request" }')
            return

        delay = self.script.delay_seconds.get(kind, 0.0)
        if delay > 0 and self._closing.wait(delay):
            record(None)
            return
        fault = self.script.presnapshot if kind == "presnapshot" else self.script.dosnapshot
        if fault is not None and fault.kind != "all_false":
            if fault.kind == "drop":
                record(None)
                req.close_connection = True
                with contextlib.suppress(OSError):
                    req.connection.shutdown(2)
                return
            if fault.kind == "hang":
                self._closing.wait(300)
                record(None)
                return
            status = fault.status if fault.kind == "status" else 200
            payload = {"status": fault.body, "empty": b"", "not_json": b"<html>oops</html>"}[
                fault.kind
            ]
            record(status)
            self._answer(req, status, payload)
            return

        if kind == "presnapshot":
            answer = self._presnapshot(body)
        else:
            answer = self._dosnapshot(body, all_false=fault is not None)
        payload = json.dumps(answer).encode()
        record(200)
        self._answer(req, 200, payload)

    @staticmethod
    def _answer(req: BaseHTTPRequestHandler, status: int, payload: bytes) -> None:
        try:
            req.send_response(status)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(payload)))
            req.send_header("Connection", "close")
            req.end_headers()
            req.wfile.write(payload)
        except OSError:
            pass  # the client gave up (its timeout); the call log says when
        req.close_connection = True

    def _presnapshot(self, body: Mapping[str, Any]) -> dict[str, Any]:
        now = self.script.response_time or dt.datetime.now(_UTC)
        answer: dict[str, Any] = {
            "bhsVersion": "1.0.0-emulator",
            "nodeId": "emulator-node",
            "result": "Success",
            "responseTime": {
                "year": now.year,
                "month": now.month,
                "day": now.day,
                "hour": now.hour,
                "minute": now.minute,
                "second": now.second,
            },
        }
        settings = body.get("preSnapshotSettings") or []
        ade = any(
            isinstance(s, Mapping) and s.get("Key") == "isVMADEEnabled" and s.get("Value") is True
            for s in settings
        )
        if ade:
            answer["isOsDiskADEEncrypted"] = self.script.ade_os_encrypted
            answer["areDataDisksADEEncrypted"] = self.script.ade_data_encrypted
            answer["DiskEncryptionSettings"] = self.script.disk_encryption_settings
        return answer

    def _dosnapshot(self, body: Mapping[str, Any], *, all_false: bool) -> dict[str, Any]:
        task_id = str(body.get("taskId", ""))
        disk_ids = body.get("diskIds")
        luns = list(disk_ids) if isinstance(disk_ids, list) and disk_ids else sorted(self.luns)
        metadata = {
            str(m.get("Key")): str(m.get("Value"))
            for m in body.get("snapshotMetadata") or []
            if isinstance(m, Mapping)
        }
        entries = []
        for lun in luns:
            if all_false:
                entries.append(_entry(False, None, "snapshot failed (scripted)", 500))
                continue
            if lun in self.script.failed_luns:
                entries.append(_entry(False, None, self.script.failed_luns[lun], 409))
                continue
            disk = self.luns.get(lun) if isinstance(lun, int) else None
            if disk is None:
                entries.append(_entry(False, None, f"no disk at LUN {lun}", 404))
                continue
            try:
                taken = self._snapshot(lun, disk, task_id, metadata)
            except Exception as exc:
                entries.append(_entry(False, None, f"snapshot failed: {exc}", 500))
                continue
            with self._lock:
                self.snapshots.append(taken)
            entry = _entry(True, taken.snapshot_uri, None, 200)
            if taken.dd_id is not None:
                entry["ddSnapshotIdentifier"] = {
                    "creationTime": dotnet_time(dt.datetime.now(_UTC)),
                    "id": taken.dd_id,
                    "token": f"ddtoken-{uuid.uuid4().hex}",
                    "instantAccessDurationMinutes": body.get("instantAccessDurationMinutes"),
                }
            entries.append(entry)
        return {"snapshotInfo": entries}

    def _snapshot(
        self, lun: int, disk: Disk, task_id: str, metadata: Mapping[str, str]
    ) -> TakenSnapshot:
        dd_id = str(uuid.uuid4()) if disk.direct_drive else None
        if isinstance(disk, BlobDisk):
            from azure.storage.blob import BlobClient

            if self.blob_connection_string is None or self.blob_endpoint is None:
                raise RuntimeError("blob disks need blob_connection_string and blob_endpoint")
            client = BlobClient.from_connection_string(
                self.blob_connection_string, disk.container, disk.blob
            )
            snap = client.create_snapshot(metadata=dict(metadata) or None)
            stamp = str(snap["snapshot"])
            base = f"{self.blob_endpoint}/{disk.container}/{disk.blob}"
            uri = f"{base}/snapshots?snapshotId={dd_id}" if dd_id else f"{base}?snapshot={stamp}"
            return TakenSnapshot(lun, uri, stamp, None, dd_id, task_id)
        clone = os.path.join(disk.clone_dir, f"lun{lun}-{uuid.uuid4().hex[:12]}.img")
        ficlone(disk.path, clone)
        base = f"http://{self.address}/images/lun{lun}"
        stamp = dotnet_time(dt.datetime.now(_UTC))
        uri = f"{base}/snapshots?snapshotId={dd_id}" if dd_id else f"{base}?snapshot={stamp}"
        return TakenSnapshot(lun, uri, None, clone, dd_id, task_id)


def _entry(ok: bool, uri: str | None, error: str | None, status: int) -> dict[str, Any]:
    return {
        "isSuccessful": "true" if ok else "false",
        "snapshotUri": uri,
        "errorMessage": error,
        "statusCode": status,
        "ddSnapshotIdentifier": None,
    }


@contextlib.contextmanager
def host_service(luns: Mapping[int, Disk], **kwargs: Any) -> Iterator[HostService]:
    with HostService(luns, **kwargs) as host:
        yield host


@dataclass(frozen=True)
class ImageDiskFs:
    """An ext4 filesystem on a loop device whose image lives on a reflink-capable fs."""

    image: str  # the disk image (on the XFS store)
    device: str  # the loop device over it
    mountpoint: str  # where the disk's filesystem is mounted (what a job freezes)
    clone_dir: str  # on the same XFS store: where the emulator's clones go

    def disk(self, *, direct_drive: bool = False) -> ImageDisk:
        return ImageDisk(self.image, self.clone_dir, direct_drive=direct_drive)


@contextlib.contextmanager
def image_disk_fs(store_dir: str, size_mb: int = 64) -> Iterator[ImageDiskFs]:
    """A "VM disk": ext4 in an image file under ``store_dir`` (an XFS reflink=1 mount).

    The job freezes ``mountpoint``; the emulator clones ``image`` (FICLONE), and
    a test restores the clone with ``restored(clone)``.
    """
    import subprocess

    base = os.path.join(store_dir, f"disk-{uuid.uuid4().hex[:8]}")
    os.mkdir(base)
    image = os.path.join(base, "disk.img")
    mnt = os.path.join(base, "mnt")
    clones = os.path.join(base, "clones")
    os.mkdir(mnt)
    os.mkdir(clones)
    with open(image, "wb") as fh:
        fh.truncate(size_mb * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True, capture_output=True, timeout=60)
    device = subprocess.run(
        ["losetup", "--find", "--show", image], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["mount", "-t", "ext4", device, mnt], check=True, capture_output=True)
        try:
            yield ImageDiskFs(image=image, device=device, mountpoint=mnt, clone_dir=clones)
        finally:
            subprocess.run(["fsfreeze", "-u", mnt], capture_output=True, check=False)
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


@contextlib.contextmanager
def restored(clone: str) -> Iterator[str]:
    """Mount a cloned ext4 disk image read-only; yields the mountpoint."""
    import subprocess
    import tempfile

    mnt = tempfile.mkdtemp(prefix="restored-")
    device = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", clone],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        # noload: a clone taken while frozen is clean; never replay a journal on it.
        subprocess.run(
            ["mount", "-t", "ext4", "-o", "ro,noload", device, mnt],
            check=True,
            capture_output=True,
        )
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], capture_output=True, check=False)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
        os.rmdir(mnt)


# -- settings for host-path jobs ------------------------------------------------------

TOKEN = "snapTaskTok-4c1d9e77-SECRETVALUE"
KEK = "kek-url-https://vault.example/keys/k1/SECRETKEK"


@dataclass
class Rig:
    """One host-path test setup: workspace, frozen disk, emulator, vmbackup.conf path."""

    ws: Workspace
    disk: ImageDiskFs
    host: HostService
    conf: Path


def host_settings(
    ws: Workspace,
    *,
    luns: list[int],
    guest_disks: list[str] | None = None,
    included: dict[str, Any] | None = None,
    custom: dict[str, Any] | None = None,
    status_url: str | None = None,
    task_id: str | None = None,
    name: str = "0.settings",
) -> tuple[str, str]:
    """Host-path settings (public objectStr: token, includedDisks); returns (path, taskId)."""
    task_id = task_id or f"host-{os.urandom(4).hex()}_1"
    obj = {
        "snapshotTaskToken": TOKEN,
        "includedDisks": {"dataDiskLunList": luns, **(included or {})},
        "backupMetadata": [{"Key": "BackupJob", "Value": "j1"}],
    }
    public: dict[str, Any] = {
        "taskId": task_id,
        "commandToExecute": "snapshot",
        "commandStartTimeUTCTicks": str(ticks_now()),
        "vmType": ARM_VM_TYPE,
        "locale": "en-us",
        "objectStr": encode_object_str(obj),
    }
    if custom is not None:
        public["customSettings"] = json.dumps(custom)
    protected: dict[str, Any] = {}
    if guest_disks:
        protected["objectStr"] = encode_object_str({"blobSASUri": guest_disks})
    if status_url:
        protected["statusBlobUri"] = status_url
    doc = {
        "runtimeSettings": [
            {"handlerSettings": {"publicSettings": public, "protectedSettings": protected}}
        ]
    }
    return ws.settings([], raw=json.dumps(doc), name=name), task_id
