"""The job's status reports: the reference's status file and its ``statusBlobUri`` upload.

``status_snapshots``, ``status_telemetry`` and ``status_file_path`` are pure;
``JobStatusWriter.write`` is the shell: it writes the file atomically, then
uploads the document. Neither failure fails the job: the outcome is recorded
in ``JobState.status_file``/``status_upload`` and logged. Never called inside
the frozen window.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Literal

from snapshot_runtime import __version__
from snapshot_runtime.core.consistency import Verdict
from snapshot_runtime.core.errors import Health
from snapshot_runtime.core.phases import PhaseRecorder
from snapshot_runtime.core.redact import Redactor, strip_sas
from snapshot_runtime.inputs.machine import utcnow
from snapshot_runtime.job.records import JobOptions
from snapshot_runtime.job.state import JobState, workload_facts
from snapshot_runtime.job.status_document import (
    consistency_type,
    render,
    status_document,
    status_file_document,
    write_status_file,
)
from snapshot_runtime.snapshot.failures import BlobOpError
from snapshot_runtime.snapshot.results import DiskSnapshot, SnapshotResult
from snapshot_runtime.telemetry.job_log import JobLog

__all__ = [
    "JobStatusWriter",
    "StatusName",
    "status_file_path",
    "status_snapshots",
    "status_telemetry",
]

StatusName = Literal["transitioning", "success", "error"]


def _safe_name(task_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)[:128] or "unknown"


def status_file_path(options: JobOptions, task_id: str) -> str:
    """``--status-file``, else ``<state-dir>/status/<taskId>.status``."""
    return options.status_path or os.path.join(
        options.state_dir, "status", f"{_safe_name(task_id)}.status"
    )


def status_snapshots(
    disks: Sequence[DiskSnapshot], snapshot: SnapshotResult | None = None
) -> list[dict[str, object]]:
    """The status document's per-disk ``snapshotInfo`` entries.

    The host path reports the host's entries as the reference maps them
    (``HostSnapshotResult.status_entries``, docs/host-snapshot.md).
    """
    # Not a start-up import (docs/startup.md): loaded by the job before any freeze.
    from snapshot_runtime.snapshot.host import HostSnapshotResult  # noqa: PLC0415

    if isinstance(snapshot, HostSnapshotResult):
        return [dict(entry) for entry in snapshot.status_entries]
    return [
        {
            "isSuccessful": d.ok,
            "snapshotUri": d.snapshot_url or "",
            "errorMessage": d.error or "",
            "blobUri": d.blob_url,
            # The guest path has no DirectDrive identifier: null, as the reference.
            "directDriveSnapshotIdentifier": None,
        }
        for d in disks
    ]


def _timedelta_text(phases: PhaseRecorder, name: str) -> str | None:
    """A phase's length as ``str(timedelta)``, the reference's form; None if it never ran."""
    if not any(r.name == name for r in phases.records):
        return None
    return str(timedelta(seconds=phases.seconds(name)))


def status_telemetry(
    state: JobState, phases: PhaseRecorder, final: Verdict | None
) -> dict[str, str]:
    """The status document's ``telemetryData`` name/value pairs.

    The reference's keys (``prePostEnabled``, ``FreezeTime``, ``ThawTime``,
    ``snapshotTimeTaken``, ``consistencyType``, ``extErrorCode``) with its
    value forms, alongside ours (``*Seconds``, ``consistencyReason``, ...).
    """
    data = {
        "extensionVersion": __version__,
        "prePostEnabled": str(state.config_state == "valid"),
        "pluginConfig": state.config_state,
        "freezeSeconds": f"{phases.seconds('freeze'):.6f}",
        "snapshotSeconds": f"{phases.seconds('snapshot'):.6f}",
        "thawSeconds": f"{phases.seconds('thaw'):.6f}",
    }
    # The reference's timedelta strings. Its FreezeTime subtracts a fixed 5 s
    # (its own sleep before starting the binary); ours is the measured time.
    for key, phase in (("FreezeTime", "freeze"), ("ThawTime", "thaw")):
        text = _timedelta_text(phases, phase)
        if text is not None:
            data[key] = text
    snapshot_text = _timedelta_text(phases, "snapshot")
    if snapshot_text is not None:
        data["snapshotTimeTaken"] = snapshot_text
    if state.freeze is not None:
        data["frozenWindowSeconds"] = f"{state.freeze.window_seconds:.6f}"
    if final is not None:
        data["consistencyType"] = consistency_type(final.consistency)
        data["consistencyReason"] = final.reason
        # The reference's name for no error is "success".
        data["extErrorCode"] = final.error.value if final.error else "success"
        data["warnings"] = ",".join(w.value for w in final.warnings)
    if state.status_upload.startswith("failed"):
        data["statusBlobUploadError"] = state.status_upload
    declined = [(d.name, d.reason) for d in state.backends_declined]
    from snapshot_runtime.snapshot.host import host_telemetry  # noqa: PLC0415

    data.update(host_telemetry(state.snapshot, state.backend, declined))
    workload = workload_facts(state.workload)
    if workload is not None:
        # The reference marks a workload as pre/post enabled too.
        data["prePostEnabled"] = "True"
        data["workloadName"] = workload["name"]
        data["workloadQuiesced"] = str(workload["held"])
        data["workloadPromise"] = workload["promise"]
        for key, field_name in (
            ("workloadMethod", "method"),
            ("workloadLogPosition", "log_position"),
            ("workloadWriteStallSeconds", "write_stall_seconds"),
            ("workloadError", "error"),
        ):
            if workload[field_name] is not None:
                data[key] = str(workload[field_name])
    return data


class JobStatusWriter:
    """Writes one job's status reports; records their outcome in ``state``."""

    def __init__(
        self,
        options: JobOptions,
        state: JobState,
        *,
        phases: PhaseRecorder,
        log: JobLog,
        redactor: Redactor,
        machine_id: str,
    ) -> None:
        self.options = options
        self.state = state
        self.phases = phases
        self.log = log
        self.redactor = redactor
        self.machine_id = machine_id

    def write(self, status: StatusName, code: int, message: str, *, final: Verdict | None) -> None:
        """The status file, then the upload to ``statusBlobUri`` (when there is one)."""
        state = self.state
        settings = state.settings
        task_id = state.task_id or "unknown"
        disks = state.snapshot.disks if state.snapshot else ()
        doc = status_document(
            task_id=task_id,
            status=status,
            code=code,
            message=message,
            consistency=final.consistency if final else None,
            command_start_ticks=settings.command_start_ticks if settings else None,
            snapshots=status_snapshots(disks, state.snapshot),
            telemetry=status_telemetry(state, self.phases, final),
            health=final.health if final else Health.GREEN,
            unique_machine_id=self.machine_id,
            now=utcnow(),
            name=self.options.status_name,
            extension_version=self.options.status_version,
            # The reference's extension error code: 0 while none is set (the
            # interim report, a success without warnings), not the status code.
            vm_health_code=final.error.code if final and final.error else 0,
            redact=self.redactor,
        )
        path = status_file_path(self.options, task_id)
        log = self.log.phase("status")
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            file_doc = status_file_document(
                doc, now=utcnow(), vm_type=settings.vm_type if settings else None
            )
            write_status_file(path, file_doc)
            state.status_file = path
        except OSError as exc:
            log.error("status file {} not written: {}", path, exc)
        if settings is None or not settings.status_blob_uri:
            state.status_upload = "skipped: no statusBlobUri"
            return
        if not self.options.upload_status:
            state.status_upload = "skipped: UploadStatusAndLog is off"
            return
        # Not through the Azure SDK (its import alone peaks at 44 MiB): snapshot/block_upload.py;
        # http.client and ssl under it are not start-up imports either (docs/startup.md).
        from snapshot_runtime.snapshot.block_upload import (  # noqa: PLC0415
            upload_block_blob_direct,
        )

        try:
            upload_block_blob_direct(
                settings.status_blob_uri, render(doc), policy=self.options.blob_policy
            )
            state.status_upload = "ok"
            log.info("status '{}' uploaded to {}", status, strip_sas(settings.status_blob_uri))
        except BlobOpError as exc:
            # A status upload failure never fails the snapshot; it is reported.
            state.status_upload = f"failed: {exc.message}"
            log.warning("status upload failed: {}", exc.message)
