"""Status documents in the reference's shapes, and their atomic file write.

``status_document``, ``status_file_document``, ``consistency_number`` and
``render`` are pure. ``write_status_file`` is the only I/O.

The blob shape (uploaded to ``statusBlobUri``; the service reads it)::

    [{"version", "timestampUTC": "\\/Date(<ms>)\\/", "status": {
        "name", "operation", "status", "substatus": [], "code": "<n>", "taskId",
        "formattedMessage": {"lang": "en-US", "message": "<JSON string>"},
        "storageDetails": {...}, "commandStartTimeUTCTicks", "telemetryData": [{Key, Value}],
        "uniqueMachineId", "snapshotInfo": [...], "vmHealthInfo": {...}}}]

``formattedMessage.message`` is itself JSON: ``{messageStr,
snapshotConsistency, jobMessage, isSizeComputationFailed}`` with
``snapshotConsistency`` the ``SnapshotConsistencyType`` number.

The file shape (``<statusFolder>/<seq>.status``; the guest agent reads it) is
the same envelope with an ISO timestamp, null ``telemetryData``,
``snapshotInfo`` and ``vmHealthInfo``, and one substatus whose ``name`` is the
entire rendered blob document.

Decisions:

* ``timestampUTC``: the reference serialises with ``json.dumps`` and then
  substitutes the literal ``\\/Date(ms)\\/`` for a placeholder, so the bytes
  hold a backslash before each ``/`` (the .NET date convention; a JSON parser
  reads ``/Date(ms)/``). The documents hold the decoded ``/Date(ms)/`` and
  ``render`` writes the escaped form, so the bytes match the reference and
  ``json.loads(render(doc)) == doc``. Inside the file's substatus the blob
  JSON is a string, so it appears as ``\\\\/Date(...)\\\\/``, as in the
  reference.
* ``snapshotInfo`` keeps the reference's shape but never a SAS:
  ``snapshotUri`` keeps only the ``snapshot``/``versionid`` query parameters
  that identify the snapshot, ``blobUri`` keeps none. Messages, telemetry
  values and per-disk errors pass ``redact`` (default ``scrub``; give the
  job's ``Redactor`` to remove exact secrets too).
* ``commandStartTimeUTCTicks`` is written as a decimal string, as the
  reference echoes it from the settings; ``code`` is a string too.
* ``snapshotInfo`` is null when there is no snapshot entry (the reference
  passes ``None`` before the snapshot phase).
* Forced "success": for ARM VMs (``vm_type`` ``microsoft.compute/
  virtualmachines``) the reference writes a terminal status as "success" in
  the *file* only. This is the documented contract (reference §5 and §8),
  not a bug to fix: the guest agent reports the file to ARM as the
  extension's provisioning state, and a failed provisioning state marks the
  extension failed on the VM although the service reads the job's outcome
  from the blob. Nothing is hidden: the file keeps the real ``code``, the
  message and, in its substatus, the whole truthful blob document. The blob
  is never forced. With ``vm_type=None`` nothing is forced.
* The reference writes no "transitioning" status: its interim reports (enable,
  and the daemon before the pre-script) are "success" with code 4
  (``ExtensionTempTerminalState``, ``TEMP_TERMINAL_CODE``, message
  ``TEMP_TERMINAL_MESSAGE``), so that the agent reports the extension's enable
  as complete while the daemon works; the service then reads the job's outcome
  from the blob, keyed on the code. The handler and the job write that shape
  too. "transitioning" stays accepted here for callers that want it.
* ``name`` and ``version`` are the extension's as the agent laid out
  HandlerEnvironment.json (``Microsoft.Azure.RecoveryServices.VMSnapshotLinux``,
  ``1.0``), as the reference writes them; without a handler directory the
  reference's published name (``REFERENCE_NAME``) and our version. The
  project's own version stays in ``telemetryData`` (``extensionVersion``).
* ``telemetryData`` ``consistencyType`` uses the reference's words
  (``consistency_type``: applicationConsistent, fileSystemConsistent,
  crashConsistent, none); our reason has its own key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from snapshot_runtime.core import defaults
from snapshot_runtime.core.atomic_file import write_atomic
from snapshot_runtime.core.consistency import Consistency
from snapshot_runtime.core.errors import Health
from snapshot_runtime.core.redact import scrub, strip_sas

__all__ = [
    "ARM_VM_TYPE",
    "REFERENCE_NAME",
    "STATUS_FILE_MODE",
    "TEMP_TERMINAL_CODE",
    "TEMP_TERMINAL_MESSAGE",
    "StatusValue",
    "StorageDetails",
    "consistency_number",
    "consistency_type",
    "render",
    "status_document",
    "status_file_document",
    "write_status_file",
]

StatusValue = Literal["transitioning", "success", "error"]

ARM_VM_TYPE = "microsoft.compute/virtualmachines"
TEMP_TERMINAL_CODE = 4
TEMP_TERMINAL_MESSAGE = "Transitioning state in extension"
# The published extension name (reference VMBackup/manifest.xml).
REFERENCE_NAME = defaults.REFERENCE_NAME
STATUS_FILE_MODE = 0o600

_STATUSES = frozenset({"transitioning", "success", "error"})
_TERMINAL = frozenset({"success", "error"})
_CONSISTENCY_NUMBERS: dict[str | None, int] = {
    None: 0,
    "none": 0,
    "filesystem": 1,
    "application": 2,
    "crash": 3,
}
# The reference's CommonVariables.consistency_* words for telemetryData.
_CONSISTENCY_TYPES: dict[str | None, str] = {
    None: "none",
    "none": "none",
    "filesystem": "fileSystemConsistent",
    "application": "applicationConsistent",
    "crash": "crashConsistent",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MILLISECOND = timedelta(milliseconds=1)
# Query parameters that name a snapshot; every other parameter may be SAS.
_SNAPSHOT_QUERY_KEYS = frozenset({"snapshot", "versionid"})
_DATE_FIELD = re.compile(r'"timestampUTC":"/Date\((-?[0-9]+)\)/"')
# A DirectDrive snapshot's creationTime (host path), escaped the same way.
_DD_DATE_FIELD = re.compile(r'"DateTime":"/Date\((-?[0-9]+)\)/"')


@dataclass(frozen=True)
class StorageDetails:
    """``storageDetails``; the defaults are the reference's before sizing."""

    partition_count: int = 0
    total_used_bytes: int = 0
    storage_space_present: bool = False
    size_computation_failed: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "partitionCount": self.partition_count,
            "totalUsedSizeInBytes": self.total_used_bytes,
            "isStoragespacePresent": self.storage_space_present,
            "isSizeComputationFailed": self.size_computation_failed,
        }


def consistency_number(c: Consistency | None) -> int:
    """``SnapshotConsistencyType``: none 0, filesystem 1, application 2, crash 3."""
    return _CONSISTENCY_NUMBERS.get(c, 0)


def consistency_type(c: Consistency | None) -> str:
    """The reference's ``consistencyType`` word for ``c`` (``none`` when unknown)."""
    return _CONSISTENCY_TYPES.get(c, "none")


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(timezone.utc)


def _public_url(value: object) -> str | None:
    """A blob or snapshot URL without any credential."""
    if not isinstance(value, str) or not value.strip():
        return None
    url = value.strip()
    try:
        parts = urlsplit(url)
        kept = [
            (k, v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if k.lower() in _SNAPSHOT_QUERY_KEYS
        ]
    except ValueError:
        return strip_sas(url)
    netloc = parts.netloc.rpartition("@")[2]  # user info may be a credential
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(kept), ""))


def _is_true(value: object) -> bool:
    # The reference's host path reports isSuccessful as the string 'true'.
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return value is True


def _dd_identifier(ident: object, redact: Callable[[str], str]) -> object:
    """A DirectDrive identifier: the host's object kept as an object (reference §7).

    Its ``token`` is for the service that reads this status (it is not one of
    the job's secrets, so ``redact`` leaves it); ``creationTime.DateTime`` is
    ``/Date(ms)/``, written escaped by ``render``.
    """
    if ident is None or ident == "":
        return None if ident is None else redact(str(ident))
    if not isinstance(ident, Mapping):
        return redact(str(ident))
    return {str(k): v if k != "id" else redact(str(v)) for k, v in ident.items()}


def _snapshot_entry(entry: Mapping[str, object], redact: Callable[[str], str]) -> dict[str, object]:
    error = entry.get("errorMessage")
    ident = entry.get("directDriveSnapshotIdentifier")
    blob = _public_url(entry.get("blobUri"))
    return {
        "isSuccessful": _is_true(entry.get("isSuccessful")),
        "snapshotUri": _public_url(entry.get("snapshotUri")),
        "errorMessage": redact(str(error)) if error is not None else None,
        "blobUri": strip_sas(blob) if blob else None,
        "directDriveSnapshotIdentifier": _dd_identifier(ident, redact),
    }


def status_document(
    *,
    task_id: str,
    status: StatusValue,
    code: int,
    message: str,
    consistency: Consistency | None,
    command_start_ticks: int | None,
    snapshots: Sequence[Mapping[str, object]],
    telemetry: Mapping[str, str],
    health: Health,
    unique_machine_id: str,
    now: datetime,
    operation: str = "Enable",
    name: str = REFERENCE_NAME,
    extension_version: str,
    vm_health_code: int | None = None,
    storage: StorageDetails | None = None,
    job_message: str = "",
    redact: Callable[[str], str] = scrub,
) -> list[dict[str, object]]:
    """The blob status document. Pure; ValueError for a naive ``now``.

    ``vm_health_code`` is ``vmHealthInfo.vmHealthStatusCode`` (the reference
    puts its extension error code there, which may differ from ``code``, e.g.
    a warning on a filesystem-consistent success); default ``code``.
    """
    if status not in _STATUSES:
        raise ValueError(f"status must be one of {sorted(_STATUSES)}")
    stamp = _aware(now)
    details = storage or StorageDetails()
    formatted = json.dumps(
        {
            "messageStr": redact(message),
            "snapshotConsistency": consistency_number(consistency),
            "jobMessage": redact(job_message),
            "isSizeComputationFailed": details.size_computation_failed,
        },
        separators=(",", ":"),
    )
    ms = (stamp - _EPOCH) // _MILLISECOND
    return [
        {
            "version": extension_version,
            "timestampUTC": f"/Date({ms})/",
            "status": {
                "name": name,
                "operation": operation,
                "status": status,
                "substatus": [],
                "code": str(code),
                "taskId": task_id,
                "formattedMessage": {"lang": "en-US", "message": formatted},
                "storageDetails": details.to_json(),
                "commandStartTimeUTCTicks": (
                    str(command_start_ticks) if command_start_ticks is not None else None
                ),
                "telemetryData": [
                    {"Key": str(key), "Value": redact(str(value))}
                    for key, value in telemetry.items()
                ],
                "uniqueMachineId": unique_machine_id,
                "snapshotInfo": [_snapshot_entry(s, redact) for s in snapshots] or None,
                "vmHealthInfo": {
                    "vmHealthState": int(health),
                    "vmHealthStatusCode": code if vm_health_code is None else vm_health_code,
                },
            },
        }
    ]


def status_file_document(
    blob_doc: list[dict[str, object]], *, now: datetime, vm_type: str | None = None
) -> list[dict[str, object]]:
    """The status file document wrapping ``blob_doc``. Pure.

    ValueError if ``blob_doc`` is not one ``status_document`` or ``now`` is naive.
    """
    if len(blob_doc) != 1 or not isinstance(blob_doc[0].get("status"), dict):
        raise ValueError("blob_doc must be a status_document() result")
    top = blob_doc[0]
    inner = top["status"]
    assert isinstance(inner, dict)
    status = inner.get("status")
    if vm_type is not None and vm_type.strip().lower() == ARM_VM_TYPE and status in _TERMINAL:
        status = "success"  # the documented ARM contract; see the module docstring
    stamp = _aware(now)
    return [
        {
            "version": top.get("version"),
            "timestampUTC": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "status": {
                "name": inner.get("name"),
                "operation": inner.get("operation"),
                "status": status,
                "substatus": [
                    {
                        "code": "0",
                        "name": render(blob_doc).decode("ascii"),
                        "status": "success",
                        "formattedMessage": None,
                    }
                ],
                "code": inner.get("code"),
                "taskId": inner.get("taskId"),
                "formattedMessage": inner.get("formattedMessage"),
                "storageDetails": inner.get("storageDetails"),
                "commandStartTimeUTCTicks": inner.get("commandStartTimeUTCTicks"),
                "telemetryData": None,
                "uniqueMachineId": inner.get("uniqueMachineId"),
                "snapshotInfo": None,
                "vmHealthInfo": None,
            },
        }
    ]


def render(doc: object) -> bytes:
    """Compact ASCII JSON, with the reference's ``\\/Date(ms)\\/`` timestamp."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    text = _DATE_FIELD.sub(lambda m: '"timestampUTC":"\\/Date(' + m.group(1) + ')\\/"', text)
    text = _DD_DATE_FIELD.sub(lambda m: '"DateTime":"\\/Date(' + m.group(1) + ')\\/"', text)
    return text.encode("ascii")


def write_status_file(path: str, doc: object) -> None:
    """Write ``render(doc)`` to ``path`` atomically, mode 0600.

    A temp file in the same directory is written, fsynced and renamed over
    ``path``, then the directory is fsynced, so a reader (or a crash) sees the
    old file or the new one, never half of one. Raises OSError (and removes
    the temp file) on failure; ValueError/TypeError if ``doc`` is not JSON.
    """
    write_atomic(path, render(doc), mode=STATUS_FILE_MODE)
