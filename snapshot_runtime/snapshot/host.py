"""The host snapshot backend: one WireServer ``dosnapshot`` for every disk of the VM.

Implements ``snapshot.backend.Snapshotter`` (docs/snapshot-backends.md,
docs/host-snapshot.md; reference /work/shared/reference/host-snapshot.md):

* ``decide()`` (not frozen): one ``presnapshot``. HTTP 200/201 with a body
  accepts. Otherwise ``HostSnapshotter`` declines with the code as reason
  (``"presnapshot 555: ..."``), and the job falls back to the next backend
  (firstHostThenGuest); ``required=True`` (onlyHost: a disk only the host can
  snapshot, or the configured mode) accepts anyway, there being no other path.
  This is the only ``presnapshot``: none is ever sent inside the window.
* ``prepare()`` (not frozen): builds the complete ``dosnapshot`` body (task id
  or ``customSettings.backupTaskId``, LUN list, well-known flags, token,
  backup metadata, ADE details from ``presnapshot``, instant-access minutes)
  and opens the connection.
* ``snapshot_all()`` (frozen): sends that one request and reads the answer
  within the snapshot deadline (the freeze budget, not the reference's 40 s
  per socket operation); no retry, ever: a failed ``dosnapshot`` is final and
  never falls back to the guest path (a second request could snapshot twice).
  The answer is mapped per disk, in ``diskIds`` order: a disk whose entry is
  missing, unusable, not exactly ``"true"`` or without a snapshot is failed,
  so a partial host failure is ``SnapshotPartiallyFailed`` (verdict none),
  which the reference misses. The throttling and snapshot-count texts map to
  ``throttled`` and ``limit``, so ``aggregate`` yields 173 and 85.
* ``close()``: closes the connection; idempotent.

Secrets (I5): the token and the encryption details go into the request body
only; the DirectDrive token only into ``HostSnapshotResult.status_entries``
(the status report the service reads). Reasons, errors and ``DiskSnapshot``
fields never carry them.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from snapshot_runtime.core.command_deadline import command_too_late
from snapshot_runtime.core.redact import scrub
from snapshot_runtime.core.snapshot_mode import (
    ModeChoice,
    SnapshotMode,
    SnapshotPath,
    choose_mode,
    decide_path,
)
from snapshot_runtime.inputs.host_inputs import VMBACKUP_CONF, read_snapshot_method
from snapshot_runtime.inputs.settings import HandlerSettings
from snapshot_runtime.snapshot.backend import BackendDecision, SnapshotRequest
from snapshot_runtime.snapshot.failures import MAX_MESSAGE, FailureKind
from snapshot_runtime.snapshot.results import DiskSnapshot, SnapshotResult, aggregate
from snapshot_runtime.snapshot.wireserver import (
    DOSNAPSHOT_PATH,
    NO_RESPONSE,
    PRESNAPSHOT_PATH,
    HostAnswer,
    HostDiskInfo,
    PreparedCall,
    PresnapshotInfo,
    build_dosnapshot_body,
    build_presnapshot_body,
    parse_dosnapshot,
    parse_presnapshot,
    wireserver_address,
)

__all__ = [
    "GUEST_BACKEND",
    "GUEST_CREATOR",
    "HOST_BACKEND",
    "HOST_CREATOR",
    "HOST_REQUIRED_BACKEND",
    "PRESNAPSHOT_TIMEOUT",
    "SNAPSHOT_COUNT_TEXT",
    "SNAPSHOT_MODE_ENV",
    "THROTTLED_TEXT",
    "VMBACKUP_CONF_ENV",
    "HostSnapshotResult",
    "HostSnapshotter",
    "fallback_reason",
    "host_status_entry",
    "host_telemetry",
    "mode_backend_names",
    "plan_host_mode",
    "snapshot_path",
]

# Registry names (snapshot/registry.py).
HOST_BACKEND = "host"
HOST_REQUIRED_BACKEND = "host_required"
GUEST_BACKEND = "azure_blob"
HOST_CREATOR = "backupHostService"
SNAPSHOT_MODE_ENV = "SNAPSHOT_RUNTIME_SNAPSHOT_MODE"
VMBACKUP_CONF_ENV = "SNAPSHOT_RUNTIME_VMBACKUP_CONF"
GUEST_CREATOR = "guestExtension"
THROTTLED_TEXT = "The rate of snapshot blob calls is exceeded"
SNAPSHOT_COUNT_TEXT = "The snapshot count against this blob has been exceeded"
# presnapshot is before the freeze; this bounds how long the host may keep the
# job waiting for its answer (the reference: 40 s per socket operation).
PRESNAPSHOT_TIMEOUT = 15.0
# Opening the dosnapshot connection in prepare().
_CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class HostSnapshotResult(SnapshotResult):
    """A ``SnapshotResult`` with what the status report needs from the host path.

    ``status_entries``: the reference's ``snapshotInfo`` entries (§7), one per
    host entry, in the host's order; they hold the DirectDrive token, which
    belongs in the status the service reads and nowhere else.
    """

    presnapshot_code: int | None = None
    dosnapshot_code: int | None = None
    # The one dosnapshot request, for its CLIENT span: where it went, its HTTP
    # status, when it started (time.monotonic()) and how long it took.
    server_address: str | None = None
    server_port: int | None = None
    http_status: int | None = None
    request_started_at: float = 0.0
    status_entries: tuple[Mapping[str, object], ...] = field(default=(), repr=False)


def _blob_uri(uri: str | None, direct_drive: bool) -> str | None:
    """The reference's ``blobUri``: up to ``/snapshots`` (DirectDrive) or ``?``."""
    if not uri:
        return None
    marker = "/snapshots" if direct_drive else "?"
    head, found, _ = uri.partition(marker)
    return head if found else uri


def host_status_entry(info: HostDiskInfo) -> dict[str, object]:
    """One status ``snapshotInfo`` entry from one host entry (reference §7)."""
    dd = info.dd
    ident: dict[str, object] | None = None
    if dd is not None:
        ident = {
            "creationTime": {"DateTime": f"/Date({dd.creation_unix_ms})/", "OffsetMinutes": 0},
            "id": dd.id,
            "token": dd.token,
            "instantAccessDurationMinutes": dd.instant_access_minutes,
        }
    return {
        "isSuccessful": info.is_successful,
        "snapshotUri": None if dd is not None else info.snapshot_uri,
        "errorMessage": info.error_message,
        "blobUri": _blob_uri(info.snapshot_uri, dd is not None),
        "directDriveSnapshotIdentifier": ident,
    }


def _failure_kind(info: HostDiskInfo | None, answer: HostAnswer) -> FailureKind:
    if info is not None and info.error_message:
        if THROTTLED_TEXT in info.error_message:
            return "throttled"
        if SNAPSHOT_COUNT_TEXT in info.error_message:
            return "limit"
    if answer.error == "answer: TimeoutError":
        return "timeout"
    return "other"


def _snapshot_id(info: HostDiskInfo) -> str | None:
    if info.dd is not None:
        return info.dd.id
    uri = info.snapshot_uri or ""
    _, found, stamp = uri.partition("?snapshot=")
    return stamp.partition("&")[0] if found else None


class HostSnapshotter:
    """The host path for one job (module doc). Built without I/O."""

    def __init__(
        self,
        request: SnapshotRequest,
        *,
        address: tuple[str, int] | None = None,
        required: bool = False,
        presnapshot_timeout: float = PRESNAPSHOT_TIMEOUT,
    ) -> None:
        self._request = request
        self._settings = request.settings
        self._host = request.settings.host
        self._address = address
        self._required = required
        self._presnapshot_timeout = presnapshot_timeout
        self._task_id = self._host.backup_task_id or request.settings.task_id
        self.presnapshot: PresnapshotInfo | None = None
        self.presnapshot_error: str | None = None
        self._call: PreparedCall | None = None
        self._closed = False

    @property
    def disk_count(self) -> int | None:
        """The disks the one ``dosnapshot`` asks for: the LUN list.

        None: the list is empty, which asks the host for every disk of the VM,
        a number the guest does not know; the freeze rules then treat it as
        several disks (no single-disk crash fallback), the safe side.
        """
        luns = self._host.lun_list
        return len(luns) if luns else None

    def too_late_by_host_clock(self, start: dt.datetime | None) -> str | None:
        """Why the job is too late by the host's clock, or None (reference §6).

        The host's ``presnapshot`` ``responseTime`` is "now" for the 140-minute
        limit when the host answered with one: a VM whose own clock is wrong
        neither loses nor gains a job by it. Without an answer (a declined
        host, no ``responseTime``) the local clock ``handler.enable`` checked
        stays the only one, as in the reference.
        """
        pre = self.presnapshot
        now = pre.host_time if pre is not None and pre.accepted else None
        if now is None or not command_too_late(start, now):
            return None
        assert start is not None
        minutes = (now - start).total_seconds() / 60
        return (
            f"the command started at {start:%Y-%m-%dT%H:%M:%SZ}, {minutes:.0f} minutes before "
            f"the host's time {now:%Y-%m-%dT%H:%M:%SZ}: more than the 140 minutes allowed"
        )

    def _where(self) -> tuple[str, int]:
        if self._address is None:
            self._address = wireserver_address()
        return self._address

    # -- Snapshotter -----------------------------------------------------------

    def decide(self) -> BackendDecision:
        """One presnapshot, before the freeze: accept on 200/201 with a body."""
        host, port = self._where()
        ade = self._host.ade_enabled
        call = PreparedCall(
            host,
            port,
            PRESNAPSHOT_PATH,
            build_presnapshot_body(self._task_id, self._host.snapshot_task_token, ade_enabled=ade),
        )
        try:
            connected = call.connect(self._presnapshot_timeout)
            # Not connected: send(0) reports the connect error without a second attempt.
            answer = call.send(self._presnapshot_timeout if connected else 0.0)
        finally:
            call.close()
        info = parse_presnapshot(answer, want_ade=ade)
        self.presnapshot = info
        self.presnapshot_error = answer.error
        if info.accepted:
            return BackendDecision.accept()
        why = f"presnapshot {info.code}: " + (answer.error or f"HTTP {answer.http_status}")
        if self._required:
            # onlyHost: no other path can snapshot these disks; dosnapshot decides.
            return BackendDecision.accept()
        return BackendDecision.decline(why)

    def _body(self) -> bytes:
        host = self._host
        settings: list[tuple[str, object]] = list(host.well_known_flags)
        metadata = list(self._settings.backup_metadata.items())
        pre = self.presnapshot
        if host.ade_enabled and pre is not None and pre.encryption_settings:
            settings += [
                ("isOsDiskADEEncrypted", pre.ade_os_encrypted),
                ("areDataDisksADEEncrypted", pre.ade_data_encrypted),
            ]
            metadata.append(("DiskEncryptionSettings", pre.encryption_settings))  # type: ignore[arg-type]
        return build_dosnapshot_body(
            task_id=self._task_id,
            disk_ids=host.lun_list,
            settings=settings,
            token=host.snapshot_task_token,
            metadata=metadata,
            instant_access_minutes=host.instant_access_minutes,
        )

    def prepare(self) -> list[DiskSnapshot]:
        """Build the dosnapshot request and open its connection. No preflight failures."""
        if self._closed:
            raise RuntimeError("HostSnapshotter is closed")
        if self._call is not None:
            raise RuntimeError("prepare() was already called")
        host, port = self._where()
        self._call = PreparedCall(host, port, DOSNAPSHOT_PATH, self._body())
        # A failed connect is not final: send() opens it again (nothing sent yet).
        self._call.connect(min(_CONNECT_TIMEOUT, self._request.deadline_seconds))
        return []

    def snapshot_all(self) -> SnapshotResult:
        """ONE dosnapshot, inside the window, within the deadline; never raises, never retries."""
        if self._call is None:
            raise RuntimeError("prepare() was not called")
        started = time.monotonic()
        answer = self._call.send(self._request.deadline_seconds, dosnapshot=True)
        entries, code = parse_dosnapshot(answer)
        disks = self._disks(entries, code, answer, started)
        error, message = aggregate(disks, deadline_hit=answer.error == "answer: TimeoutError")
        if not disks:
            message = f"dosnapshot answered {code} with no snapshot entry"
        return HostSnapshotResult(
            disks=tuple(disks),
            ok=error is None,
            error=error,
            error_message=message,
            duration_seconds=answer.elapsed_seconds,
            deadline_hit=answer.error == "answer: TimeoutError",
            presnapshot_code=self.presnapshot.code if self.presnapshot else None,
            dosnapshot_code=code,
            server_address=self._where()[0],
            server_port=self._where()[1],
            http_status=answer.http_status,
            request_started_at=started,
            status_entries=tuple(host_status_entry(e) for e in entries if e is not None),
        )

    def _disks(
        self,
        entries: Sequence[HostDiskInfo | None],
        code: int,
        answer: HostAnswer,
        started: float,
    ) -> list[DiskSnapshot]:
        luns: Sequence[int | None] = self._host.lun_list or [None] * len(entries)
        disks = []
        for index, lun in enumerate(luns):
            info = entries[index] if index < len(entries) else None
            label = f"host LUN {lun}" if lun is not None else f"host disk {index}"
            snap = _snapshot_id(info) if info is not None else None
            ok = info is not None and info.ok and snap is not None
            if ok or info is None:
                error = None if ok else self._no_entry(code, answer)
            else:
                text = info.error_message or f"isSuccessful {str(info.is_successful)[:16]!r}"
                error = scrub(text)[:MAX_MESSAGE]
            uri = info.snapshot_uri if info is not None and info.dd is None else None
            disks.append(
                DiskSnapshot(
                    index=index,
                    blob_url=(_blob_uri(info.snapshot_uri, info.dd is not None) if info else None)
                    or label,
                    ok=ok,
                    snapshot=snap if ok else None,
                    snapshot_url=scrub(uri) if ok and uri else None,
                    attempts=1 if answer.sent else 0,
                    started_at=started,
                    duration_seconds=answer.elapsed_seconds,
                    status_code=answer.http_status,
                    error=error,
                    failure_kind=None if ok else _failure_kind(info, answer),
                    lun=lun,
                )
            )
        return disks

    @staticmethod
    def _no_entry(code: int, answer: HostAnswer) -> str:
        if answer.error:
            return f"dosnapshot {code}: {answer.error}"
        return f"dosnapshot {code}: no usable snapshotInfo entry for this disk"

    def close(self) -> None:
        self._closed = True
        if self._call is not None:
            self._call.close()


def mode_backend_names(choice: ModeChoice, *, guest_available: bool) -> tuple[str, ...]:
    """The registry names to try, in order, for a mode (``core.snapshot_mode``).

    ``host`` declines on a failed presnapshot (firstHostThenGuest's fallback);
    ``host_required`` accepts anyway (onlyHost, or firstGuestThenHost without
    guest disk URLs). The guest backend always accepts, so without guest URLs
    it is not named. Empty: no path can serve the job (``choice.error``, or
    onlyGuest without guest disk URLs); the job refuses it before anything.
    """
    if choice.error is not None:
        return ()
    names: list[str] = []
    for path in choice.order:
        if path == "guest":
            if guest_available:
                names.append(GUEST_BACKEND)
        elif choice.mode is SnapshotMode.FIRST_HOST_THEN_GUEST:
            names.append(HOST_BACKEND)
        else:
            names.append(HOST_REQUIRED_BACKEND)
    return tuple(names)


def plan_host_mode(
    settings: HandlerSettings, env: Mapping[str, str] = os.environ
) -> tuple[ModeChoice, tuple[str, ...], str]:
    """(mode, backend names to try, why) for the job, before any freeze (``core.snapshot_mode``).

    No names: no path can serve the job, ``why`` says so.

    Our own configuration is ``SNAPSHOT_RUNTIME_SNAPSHOT_MODE``; vmbackup.conf is
    ``SNAPSHOT_RUNTIME_VMBACKUP_CONF`` or /etc/azure/vmbackup.conf. Reads that
    one file; no network.
    """
    conf = read_snapshot_method(env.get(VMBACKUP_CONF_ENV) or VMBACKUP_CONF)
    choice = choose_mode(
        settings.host.mode_inputs(conf_method=conf, configured_mode=env.get(SNAPSHOT_MODE_ENV))
    )
    guest = bool(settings.disk_sas_urls)
    names = mode_backend_names(choice, guest_available=guest)
    why = choice.reason if names else decide_path(choice, None, guest_available=guest).reason
    return choice, names, why


_DECLINED_PRESNAPSHOT = re.compile(r"presnapshot (\d{3}): ")


def host_telemetry(
    snapshot: SnapshotResult | None,
    backend: str | None,
    declined: Sequence[tuple[str, str]],
) -> dict[str, str]:
    """The reference's telemetry keys (§7): snapshotCreator, hostStatusCodePreSnapshot/DoSnapshot.

    Host path: all three. Guest path after a declined host: the creator and the
    presnapshot code from the decline. A guest-only job: the creator only.
    """
    data: dict[str, str] = {}
    if isinstance(snapshot, HostSnapshotResult):
        data["snapshotCreator"] = HOST_CREATOR
        if snapshot.presnapshot_code is not None:
            data["hostStatusCodePreSnapshot"] = str(snapshot.presnapshot_code)
        if snapshot.dosnapshot_code is not None:
            data["hostStatusCodeDoSnapshot"] = str(snapshot.dosnapshot_code)
        return data
    if backend == GUEST_BACKEND:
        data["snapshotCreator"] = GUEST_CREATOR
        for name, reason in declined:
            m = _DECLINED_PRESNAPSHOT.match(reason)
            if name in (HOST_BACKEND, HOST_REQUIRED_BACKEND) and m:
                data["hostStatusCodePreSnapshot"] = m.group(1)
    return data


def snapshot_path(backend: str | None) -> SnapshotPath | None:
    """The path a job's chosen backend took: ``host`` or ``guest``; None: no backend."""
    if backend in (HOST_BACKEND, HOST_REQUIRED_BACKEND):
        return "host"
    return "guest" if backend is not None else None


def fallback_reason(
    backend: str | None, declined: Sequence[tuple[str, str]], *, guest_failed: bool = False
) -> str | None:
    """Why the job's path is not its mode's first choice (``FALLBACK_REASONS``), or None.

    The guest path after a declined host (firstHostThenGuest): the presnapshot
    reasons; a guest-only job (no host inputs, onlyGuest) did not fall back.
    ``guest_failed``: firstGuestThenHost took the host after every guest
    snapshot failed (a second window).
    """
    if guest_failed and snapshot_path(backend) == "host":
        return "guest_failed"
    if snapshot_path(backend) != "guest":
        return None
    for name, reason in declined:
        if name not in (HOST_BACKEND, HOST_REQUIRED_BACKEND):
            continue
        m = _DECLINED_PRESNAPSHOT.match(reason)
        if m and int(m.group(1)) == NO_RESPONSE:
            return "presnapshot_unreachable"
        return "presnapshot_failed"
    return None
