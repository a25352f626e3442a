"""A job's input and output records: ``JobOptions`` (validated) and ``JobReport``.

Pure data: no I/O. ``JobOptions`` rejects bad timeouts and sizes with
``ValueError`` when it is built, before any phase runs; ``JobReport`` is the
frozen result ``run_job`` returns (rendered by ``summary``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from snapshot_runtime import __version__
from snapshot_runtime.core.defaults import (
    DEFAULT_FREEZE_TIMEOUT,
    DEFAULT_LOG_PATH,
    DEFAULT_RUN_DIR,
    DEFAULT_SNAPSHOT_BACKENDS,
    DEFAULT_SPOOL_MAX_BYTES,
    DEFAULT_STATE_DIR,
    REFERENCE_NAME,
)
from snapshot_runtime.core.errors import ErrorCode, SnapshotError
from snapshot_runtime.core.phases import PhaseRecord
from snapshot_runtime.snapshot.blob_policy import BlobPolicy

if TYPE_CHECKING:
    # Only named in the report's fields: a job's start-up (JobOptions, before
    # its first phase) must not import the freezer, the script runner or the
    # workload quiescers for them (issue 15, docs/startup.md).
    from snapshot_runtime.freeze.state import FreezeResult
    from snapshot_runtime.job.workload import WorkloadOutcome
    from snapshot_runtime.scripts.runner import ScriptResult
    from snapshot_runtime.snapshot.results import DiskSnapshot, SnapshotResult

__all__ = [
    "SNAPSHOT_DEADLINE_MARGIN",
    "GuestAttempt",
    "JobOptions",
    "JobReport",
]

# Snapshot requests must finish before the freeze deadline thaws underneath them.
SNAPSHOT_DEADLINE_MARGIN = 10.0


@dataclass(frozen=True)
class GuestAttempt:
    """firstGuestThenHost: the guest path's window and result before the host fallback.

    Kept for the record and the report; the verdict comes from the host's
    window and snapshot (docs/host-snapshot.md, docs/consistency.md).
    """

    backend: str
    freeze_attempted: bool
    freeze_ok: bool
    freeze: FreezeResult | None
    snapshot: SnapshotResult | None


@dataclass(frozen=True)
class JobOptions:
    settings_path: str
    config_path: str | None = None
    include_mounts: tuple[str, ...] | None = None
    exclude_mounts: tuple[str, ...] = ()
    freeze_timeout_seconds: float = DEFAULT_FREEZE_TIMEOUT
    snapshot_deadline_seconds: float | None = None
    log_path: str | None = DEFAULT_LOG_PATH
    state_dir: str = DEFAULT_STATE_DIR
    status_path: str | None = None
    run_dir: str = DEFAULT_RUN_DIR
    use_watchdog: bool = True
    mountinfo_path: str = "/proc/self/mountinfo"
    blob_policy: BlobPolicy = field(default_factory=BlobPolicy)
    # Snapshot backends by registry name, in order of preference: the first
    # whose decide() accepts is used (docs/snapshot-backends.md).
    snapshot_backends: tuple[str, ...] = DEFAULT_SNAPSHOT_BACKENDS
    console: TextIO | None = None
    # Telemetry (docs/telemetry.md). spool_dir None: <run_dir>/spool.
    telemetry: bool = True
    spool_dir: str | None = None
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    traceparent: str | None = None
    otlp_endpoint: str | None = None
    otlp_timeout_seconds: float = 5.0
    # OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL: "http/protobuf" or "grpc" (the grpc extra).
    otlp_protocol: str = "http/protobuf"
    recover: bool = True
    # The status documents' name and version: HandlerEnvironment.json's when
    # the agent runs us, else the reference's published name and our version.
    status_name: str = REFERENCE_NAME
    status_version: str = __version__
    # vmbackup.conf UploadStatusAndLog=False: no statusBlobUri upload.
    upload_status: bool = True
    # Take the single-job lock (<run_dir>/handler.lock, job.lock) for the whole
    # job; refused: JobAlreadyRunning, nothing run. The handler's daemon
    # already holds it (False there); `snapshot-runtime run` sets it.
    single_job_lock: bool = False

    def __post_init__(self) -> None:
        for name in ("freeze_timeout_seconds", "otlp_timeout_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if self.snapshot_deadline_seconds is not None and not (
            math.isfinite(self.snapshot_deadline_seconds) and self.snapshot_deadline_seconds > 0
        ):
            raise ValueError("snapshot_deadline_seconds must be a positive number of seconds")
        if self.spool_max_bytes <= 0:
            raise ValueError("spool_max_bytes must be positive")
        if not self.snapshot_backends:
            raise ValueError("snapshot_backends must name at least one backend")

    def spool_path(self) -> str:
        return self.spool_dir or os.path.join(self.run_dir, "spool")

    def snapshot_deadline(self) -> float:
        """Default: the freeze timeout minus a 10 s margin; half of it for short ones."""
        if self.snapshot_deadline_seconds is not None:
            return self.snapshot_deadline_seconds
        timeout = self.freeze_timeout_seconds
        return max(timeout - SNAPSHOT_DEADLINE_MARGIN, min(1.0, timeout / 2))


@dataclass(frozen=True)
class JobReport:
    task_id: str
    consistency: str
    consistency_reason: str
    error_code: str | None
    error_message: str | None
    warnings: tuple[str, ...]
    status_code: int
    health: int
    snapshot_taken: bool
    phases: tuple[PhaseRecord, ...]
    freeze_seconds: float
    freeze: FreezeResult | None
    disks: tuple[DiskSnapshot, ...]
    pre_script: ScriptResult | None
    post_script: ScriptResult | None
    plugin_config: str  # "absent" | "invalid" | "valid"
    status_file: str | None
    status_upload: str
    started_at: float
    duration_seconds: float
    trace_id: str | None = None
    spool_job_dir: str | None = None
    snapshot_backend: str | None = None
    backends_declined: tuple[tuple[str, str], ...] = ()  # (name, reason), in order
    # workload.conf quiescing: what was held, the log position, the stall (docs/workloads.md).
    workload: WorkloadOutcome | None = None
    # firstGuestThenHost fell back to the host: the guest window's figures
    # (job.state.guest_attempt_facts); the fields above are the host's.
    guest_attempt: GuestAttempt | None = None

    @property
    def exit_code(self) -> int:
        """0 when a snapshot was taken (any consistency), non-zero otherwise."""
        if self.snapshot_taken:
            return 0
        if self.error_code is None:
            return 1
        return SnapshotError(ErrorCode(self.error_code), "").exit_code
