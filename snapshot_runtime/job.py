"""The snapshot job: settings -> plan -> phases -> job report.

Phases in order: settings, plugin config, "transitioning" status, pre-script,
prepare (everything the frozen window needs: mount fds, the thaw watchdog,
warmed blob connections), freeze, snapshot all disks, thaw, post-script,
final status. Decisions come from pure modules (``consistency``,
``plugin_config``, ``mounts``); this module only sequences effects.

Frozen window (I1): between ``FreezeSession.freeze()`` and the return of
``FreezeSession.thaw()`` this module calls nothing but
``DiskSnapshotter.snapshot_all()``, memory-only bookkeeping (phase records,
spans) and one log line; the log gate is closed for the whole window so no
sink writes to a filesystem that may be frozen. The only write in the window
is the spool's ``log.jsonl`` append, on a never-frozen tmpfs (held too when
the spool turns out to be on a frozen mount).

Telemetry (``telemetry.JobTelemetry``, docs/telemetry.md): spans per phase,
the spool hand-off and the job record; ``JobOptions(telemetry=False)`` turns
spans and the spool off (the local log file stays).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TextIO

from snapshot_runtime import __version__
from snapshot_runtime.blobs import BlobOpError, BlobPolicy, upload_block_blob
from snapshot_runtime.consistency import (
    ProceedDecision,
    Verdict,
    decide_after_freeze,
    decide_after_pre_script,
    settings_rejected,
    verdict,
)
from snapshot_runtime.errors import ConfigError, ErrorCode, FreezeError, Health, SnapshotError
from snapshot_runtime.freeze import FreezeResult, FreezeSession
from snapshot_runtime.joblog import DEFAULT_LOG_PATH, JobLog
from snapshot_runtime.mounts import FreezePlan, parse_mountinfo, plan_freeze, read_mountinfo
from snapshot_runtime.paths import DEFAULT_RUN_DIR, DEFAULT_STATE_DIR
from snapshot_runtime.phases import PhaseRecord, PhaseRecorder
from snapshot_runtime.plugin_config import PluginConfig, find_config_path, load_plugin_config
from snapshot_runtime.record import RecordFacts
from snapshot_runtime.redact import Redactor, strip_sas
from snapshot_runtime.scripts import ScriptResult, run_script
from snapshot_runtime.settings import HandlerSettings, load_settings_file
from snapshot_runtime.snapshot import DiskSnapshot, DiskSnapshotter, SnapshotResult
from snapshot_runtime.spool import DEFAULT_MAX_BYTES, recover_interrupted
from snapshot_runtime.status import (
    render,
    status_document,
    status_file_document,
    write_status_file,
)
from snapshot_runtime.telemetry import JobTelemetry, TelemetryOptions, root_attributes

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "DEFAULT_RUN_DIR",
    "DEFAULT_STATE_DIR",
    "JobInterrupted",
    "JobOptions",
    "JobReport",
    "run_job",
]

StatusName = Literal["transitioning", "success", "error"]

DEFAULT_FREEZE_TIMEOUT = 60.0
# Snapshot requests must finish before the freeze deadline thaws underneath them.
SNAPSHOT_DEADLINE_MARGIN = 10.0


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
    console: TextIO | None = None
    # Telemetry (docs/telemetry.md). spool_dir None: <run_dir>/spool.
    telemetry: bool = True
    spool_dir: str | None = None
    spool_max_bytes: int = DEFAULT_MAX_BYTES
    traceparent: str | None = None
    otlp_endpoint: str | None = None
    otlp_timeout_seconds: float = 5.0
    recover: bool = True

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

    @property
    def exit_code(self) -> int:
        """0 when a snapshot was taken (any consistency), non-zero otherwise."""
        if self.snapshot_taken:
            return 0
        if self.error_code is None:
            return 1
        return SnapshotError(ErrorCode(self.error_code), "").exit_code


@dataclass
class _State:
    """Everything the phases learn, gathered for the verdict and the report."""

    task_id: str = ""
    settings: HandlerSettings | None = None
    settings_error: ConfigError | None = None
    config: PluginConfig | None = None
    config_state: str = "absent"
    config_error: ErrorCode | None = None
    config_message: str | None = None
    pre: ScriptResult | None = None
    post: ScriptResult | None = None
    plan: FreezePlan | None = None
    decision: ProceedDecision | None = None
    freeze_attempted: bool = False
    freeze_ok: bool = False
    freeze_error: ErrorCode | None = None
    freeze_message: str | None = None
    freeze_deadline_at: float | None = None  # epoch seconds, set before the first FIFREEZE
    freeze: FreezeResult | None = None
    snapshot: SnapshotResult | None = None
    preflight_failures: list[DiskSnapshot] = field(default_factory=list)
    status_upload: str = "skipped"
    status_file: str | None = None
    interrupted: str | None = None  # the signal that stopped the job


class JobInterrupted(BaseException):
    """A stop signal (SIGTERM, SIGHUP) turned into an exception by the entry point.

    A ``BaseException``, like ``KeyboardInterrupt``: nothing in the job catches
    it by accident. The job thaws, runs the post-script, writes a terminal
    status, then re-raises it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _signal_name(exc: BaseException) -> str:
    if isinstance(exc, JobInterrupted):
        try:
            return signal.Signals(exc.signum).name
        except ValueError:
            return f"signal {exc.signum}"
    return "SIGINT"


def _machine_id() -> str:
    with contextlib.suppress(OSError), open("/etc/machine-id", encoding="ascii") as fh:
        return fh.read().strip()
    return socket.gethostname()


def _script_error(result: ScriptResult | None) -> ErrorCode | None:
    return None if result is None or result.ok else result.error


class _Job:
    def __init__(self, options: JobOptions, *, span_exporter: SpanExporter | None = None) -> None:
        self.options = options
        self.redactor = Redactor()
        self.phases = PhaseRecorder()
        self.state = _State()
        self.started_at = time.time()
        self.started = time.monotonic()
        self.machine_id = _machine_id()
        self.recovered: list[str] = []
        self.final: Verdict | None = None
        if options.telemetry and options.recover:
            # Before our own log exists: replayed lines precede this job's lines.
            try:
                for found in recover_interrupted(options.spool_path()):
                    self.recovered.append(
                        f"interrupted job {found.task_id}: {found.lines_in_spool} spool line(s), "
                        f"{found.lines_replayed} replayed into {found.log_file or '-'}"
                        + (f" ({found.note})" if found.note else "")
                    )
            except Exception as exc:  # recovery must never stop a new job
                self.recovered.append(f"recovery failed: {type(exc).__name__}: {exc}")
        self.log = JobLog(
            path=options.log_path,
            task_id="",
            redactor=self.redactor,
            console=options.console,
        )
        self.telemetry: JobTelemetry | None = None
        if options.telemetry:
            self.telemetry = JobTelemetry(
                TelemetryOptions(
                    spool_dir=options.spool_path(),
                    max_bytes=options.spool_max_bytes,
                    state_dir=options.state_dir,
                    log_path=options.log_path,
                    blob_policy=options.blob_policy,
                    traceparent=options.traceparent,
                    otlp_endpoint=options.otlp_endpoint,
                    otlp_timeout_seconds=options.otlp_timeout_seconds,
                    span_exporter=span_exporter,
                    host_name=socket.gethostname(),
                    host_id=self.machine_id,
                ),
                log=self.log,
                phases=self.phases,
                redactor=self.redactor,
                facts=self.record_facts,
                started_at=self.started_at,
                started_monotonic=self.started,
            )

    # -- phases ---------------------------------------------------------

    def load_settings(self) -> bool:
        with self.phases.phase("settings") as ph:
            try:
                settings = load_settings_file(self.options.settings_path)
            except ConfigError as exc:
                self.state.settings_error = exc
                ph.fail(exc.code, exc.message)
                self.log.phase("settings").error("settings rejected: {}", exc)
                return False
            self.redactor.add(settings.secrets)
            self.state.settings = settings
            self.state.task_id = settings.task_id
            ph.attributes["disk_count"] = len(settings.disk_sas_urls)
            if self.telemetry is not None:
                self.telemetry.begin(settings.task_id, logs_blob_uri=settings.logs_blob_uri)
            self.log.logger = self.log.logger.bind(task_id=settings.task_id)
            self.log.phase("settings").info(
                "task {} command {}: {} disk(s)",
                settings.task_id,
                settings.command,
                len(settings.disk_sas_urls),
            )
            return True

    def load_plugin_config(self) -> None:
        log = self.log.phase("plugin_config")
        with self.phases.phase("plugin_config") as ph:
            explicit = self.options.config_path
            path = explicit if explicit else find_config_path(None)
            if path is None:
                self.state.config_state = "absent"
                ph.skip("no plugin config: scripts disabled")
                log.info("no VMSnapshotScriptPluginConfig.json: no pre/post scripts")
                return
            try:
                self.state.config = load_plugin_config(path)
            except ConfigError as exc:
                self.state.config_state = "invalid"
                self.state.config_error = exc.code
                self.state.config_message = exc.message
                ph.warn(exc.code, exc.message)
                log.warning("plugin config {} rejected: {}", path, exc.message)
                return
            self.state.config_state = "valid"
            for warning in self.state.config.warnings:
                log.warning("plugin config: {}", warning)
            log.info(
                "plugin config {}: timeout {}s, continueBackupOnFailure={}, fsFreezeEnabled={}",
                path,
                self.state.config.timeout_seconds,
                self.state.config.continue_backup_on_failure,
                self.state.config.fs_freeze_enabled,
            )

    def plan_mounts(self) -> FreezePlan:
        mounts = parse_mountinfo(read_mountinfo(self.options.mountinfo_path))
        return plan_freeze(
            mounts,
            include=self.options.include_mounts,
            exclude=self.options.exclude_mounts,
        )

    def run_script_phase(self, which: str) -> ScriptResult | None:
        config = self.state.config
        assert config is not None
        spec = config.pre if which == "pre" else config.post
        log = self.log.phase(f"{which}_script")
        plan = self.state.plan
        mounts = ",".join(m.mountpoint for m in plan.mounts) if plan else ""

        def on_event(event: str, data: dict[str, object]) -> None:
            log.debug("{} {}", event, data)

        extra_env = {"SNAPSHOT_MOUNTS": mounts}
        with self.phases.phase(f"{which}_script") as ph:
            traceparent = (
                self.telemetry.traceparent() if self.telemetry else self.options.traceparent
            )
            if traceparent:
                extra_env["TRACEPARENT"] = traceparent
            result = run_script(
                spec.path,
                spec.params,
                phase="pre" if which == "pre" else "post",
                retries=spec.retries,
                budget_seconds=float(config.timeout_seconds),
                task_id=self.state.task_id,
                extra_env=extra_env,
                redactor=self.redactor,
                poll_seconds=float(config.poll_seconds),
                on_event=on_event,
            )
            if self.telemetry is not None:
                self.telemetry.on_script(which, result)
            if result.ok:
                log.info(
                    "{}-script ok after {} attempt(s) in {:.3f}s",
                    which,
                    len(result.attempts),
                    result.duration_seconds,
                )
            else:
                ph.fail(result.error, result.error_message)
                log.error("{}-script failed: {}", which, result.error_message)
            for stream in ("stdout", "stderr"):
                text = getattr(result, stream)
                if text.strip():
                    log.info("{}-script {}: {}", which, stream, text.rstrip())
            return result

    def write_status(
        self, status: StatusName, code: int, message: str, *, final: Verdict | None
    ) -> None:
        settings = self.state.settings
        task_id = self.state.task_id or "unknown"
        disks = self.state.snapshot.disks if self.state.snapshot else ()
        snapshots = [
            {
                "isSuccessful": d.ok,
                "snapshotUri": d.snapshot_url or "",
                "errorMessage": d.error or "",
                "blobUri": d.blob_url,
                "directDriveSnapshotIdentifier": "",
            }
            for d in disks
        ]
        doc = status_document(
            task_id=task_id,
            status=status,
            code=code,
            message=message,
            consistency=final.consistency if final else None,
            command_start_ticks=settings.command_start_ticks if settings else None,
            snapshots=snapshots,
            telemetry=self.telemetry_data(final),
            health=final.health if final else Health.GREEN,
            unique_machine_id=self.machine_id,
            now=_utcnow(),
            extension_version=__version__,
            vm_health_code=final.error.code if final and final.error else None,
            redact=self.redactor,
        )
        path = self.options.status_path or os.path.join(
            self.options.state_dir, "status", f"{_safe_name(task_id)}.status"
        )
        log = self.log.phase("status")
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            file_doc = status_file_document(
                doc, now=_utcnow(), vm_type=settings.vm_type if settings else None
            )
            write_status_file(path, file_doc)
            self.state.status_file = path
        except OSError as exc:
            log.error("status file {} not written: {}", path, exc)
        if settings is None or not settings.status_blob_uri:
            self.state.status_upload = "skipped: no statusBlobUri"
            return
        try:
            upload_block_blob(
                settings.status_blob_uri, render(doc), policy=self.options.blob_policy
            )
            self.state.status_upload = "ok"
            log.info("status '{}' uploaded to {}", status, strip_sas(settings.status_blob_uri))
        except BlobOpError as exc:
            # A status upload failure never fails the snapshot; it is reported.
            self.state.status_upload = f"failed: {exc.message}"
            log.warning("status upload failed: {}", exc.message)

    def telemetry_data(self, final: Verdict | None) -> dict[str, str]:
        data = {
            "extensionVersion": __version__,
            "prePostEnabled": str(self.state.config_state == "valid"),
            "pluginConfig": self.state.config_state,
            "freezeSeconds": f"{self.phases.seconds('freeze'):.6f}",
            "snapshotSeconds": f"{self.phases.seconds('snapshot'):.6f}",
            "thawSeconds": f"{self.phases.seconds('thaw'):.6f}",
        }
        if self.state.freeze is not None:
            data["frozenWindowSeconds"] = f"{self.state.freeze.window_seconds:.6f}"
        if final is not None:
            data["consistencyType"] = final.consistency
            data["consistencyReason"] = final.reason
            data["extErrorCode"] = final.error.value if final.error else ""
            data["warnings"] = ",".join(w.value for w in final.warnings)
        if self.state.status_upload.startswith("failed"):
            data["statusBlobUploadError"] = self.state.status_upload
        return data

    def freeze_and_snapshot(self, freeze_enabled: bool) -> None:
        settings = self.state.settings
        assert settings is not None and self.state.plan is not None
        log = self.log.phase("prepare")
        snapshotter = DiskSnapshotter(
            settings.disk_sas_urls,
            policy=self.options.blob_policy,
            deadline_seconds=self.options.snapshot_deadline(),
            metadata=dict(settings.backup_metadata),
        )
        session: FreezeSession | None = None
        try:
            with self.phases.phase("prepare") as ph:
                failures = snapshotter.prepare()
                self.state.preflight_failures = failures
                for failure in failures:
                    log.warning("disk {} failed preflight: {}", failure.blob_url, failure.error)
                if freeze_enabled:
                    session = self._prepare_freeze()
                ph.attributes["mounts"] = [m.mountpoint for m in self.state.plan.mounts]
                ph.attributes["mount_count"] = len(self.state.plan.mounts)
                ph.attributes["disk_count"] = len(settings.disk_sas_urls)
                log.info(
                    "ready: {} mount(s) to freeze {}, {} disk(s)",
                    len(self.state.plan.mounts),
                    [m.mountpoint for m in self.state.plan.mounts],
                    len(settings.disk_sas_urls),
                )
            if session is not None:
                self._frozen_window(session, snapshotter, len(settings.disk_sas_urls))
            elif self.state.freeze_attempted:
                self._after_failed_freeze(snapshotter, len(settings.disk_sas_urls))
            else:
                self._snapshot_phase(snapshotter)
        finally:
            # Thaw first (a no-op after a normal window), then release the held logs (I1).
            if session is not None and self.state.freeze is None:
                self.state.freeze = session.thaw()
            self.log.gate.open()
            snapshotter.close()
        self._log_freeze_outcome()

    def _prepare_freeze(self) -> FreezeSession | None:
        """A ready FreezeSession, or None when there is nothing (or no way) to freeze.

        Records a freeze failure when a requested mount is not mounted or a
        mount cannot be opened: the verdict then decides (crash-consistent
        fallback on a single disk, no snapshot on several).
        """
        plan = self.state.plan
        assert plan is not None
        log = self.log.phase("prepare")
        missing = [s.mountpoint for s in plan.skipped if s.reason == "not_mounted"]
        if missing:
            self._record_freeze_failure(
                ErrorCode.UNABLE_TO_OPEN_MOUNT,
                f"not a mounted, freezable filesystem: {', '.join(missing)}",
            )
            return None
        if not plan.mounts:
            log.warning("no eligible filesystem to freeze: snapshot without a freeze")
            return None
        report_dir = self.options.run_dir
        spool = self.telemetry.spool if self.telemetry else None
        if spool is not None:
            report_dir = spool.watchdog_dir  # docs/spool.md: the sidecar reads it there
        os.makedirs(report_dir, mode=0o700, exist_ok=True)
        session = FreezeSession(
            plan,
            timeout_seconds=self.options.freeze_timeout_seconds,
            use_watchdog=self.options.use_watchdog,
            watchdog_report_dir=report_dir,
        )
        try:
            session.prepare()
        except FreezeError as exc:
            self.state.freeze = session.thaw()
            self._record_freeze_failure(exc.code, exc.message)
            return None
        return session

    def _record_freeze_failure(self, code: ErrorCode, message: str) -> None:
        self.state.freeze_attempted = True
        self.state.freeze_ok = False
        self.state.freeze_error = code
        self.state.freeze_message = message
        self.log.phase("freeze").error("freeze not possible: {}", message)

    def _after_failed_freeze(self, snapshotter: DiskSnapshotter, disks: int) -> None:
        after = decide_after_freeze(
            freeze_ok=False, freeze_error=self.state.freeze_error, disk_count=disks
        )
        if after.proceed:
            self._snapshot_phase(snapshotter)

    def _snapshot_phase(self, snapshotter: DiskSnapshotter) -> None:
        with self.phases.phase("snapshot") as ph:
            result = snapshotter.snapshot_all()
            self.state.snapshot = result
            ph.attributes["disk_count"] = len(result.disks)
            ph.attributes["disks_ok"] = result.ok_count
            if result.error:
                ph.fail(result.error, result.error_message)
        if self.telemetry is not None:
            self.telemetry.on_snapshot(result)

    def _frozen_window(
        self, session: FreezeSession, snapshotter: DiskSnapshotter, disks: int
    ) -> None:
        # I1: from here to session.thaw(): no file writes, no imports, no network but
        # the snapshot requests. Logs are held in memory by the closed gate.
        self.state.freeze_attempted = True
        # Last spool write before the window: the record names the mounts about
        # to be frozen and the deadline, so the sidecar's backstop knows exactly
        # what a runtime that dies now (with its watchdog) leaves frozen.
        self.state.freeze_deadline_at = time.time() + self.options.freeze_timeout_seconds
        if self.telemetry is not None:
            self.telemetry.flush()
        self.log.gate.close()
        plan = self.state.plan
        with self.phases.phase("freeze") as ph:
            if plan is not None:
                ph.attributes["mounts"] = [m.mountpoint for m in plan.mounts]
                ph.attributes["mount_count"] = len(plan.mounts)
            self.state.freeze_ok = session.freeze()
            if not self.state.freeze_ok:
                partial = session.thaw()
                self.state.freeze = partial
                self.state.freeze_error = partial.error or ErrorCode.FS_FREEZE_FAILED
                self.state.freeze_message = partial.error_message
                ph.fail(self.state.freeze_error, partial.error_message)
            else:
                # Held in memory for the local log; appended to the tmpfs spool at
                # once (the line a SIGKILL inside the window must not lose, I2).
                self.log.phase("freeze").info(
                    "filesystems frozen: snapshot of {} disk(s) started", disks
                )
        after = decide_after_freeze(
            freeze_ok=self.state.freeze_ok,
            freeze_error=self.state.freeze_error,
            disk_count=disks,
        )
        if after.proceed:
            self._snapshot_phase(snapshotter)
        if self.state.freeze is None:
            with self.phases.phase("thaw") as ph:
                self.state.freeze = session.thaw()
                ph.attributes["frozen_window_seconds"] = self.state.freeze.window_seconds
                ph.attributes["thawed_by"] = self.state.freeze.thawed_by
                ph.attributes["freeze_timed_out"] = self.state.freeze.timed_out
                if self.state.freeze.error:
                    ph.fail(self.state.freeze.error, self.state.freeze.error_message)
        self.log.gate.open()

    def _log_freeze_outcome(self) -> None:
        result = self.state.freeze
        log = self.log.phase("thaw")
        if result is None:
            return
        log.info(
            "frozen window {:.3f}s over {} mount(s), thawed by {}",
            result.window_seconds,
            sum(1 for m in result.mounts if m.frozen),
            result.thawed_by,
        )
        for mount in result.mounts:
            if mount.already_frozen:
                log.warning("{} was already frozen by someone else: left as is", mount.mountpoint)
            if mount.error:
                log.error("{}: {}", mount.mountpoint, mount.error)
            if mount.probe_ok is False:
                log.error("{} is not writable after thaw: {}", mount.mountpoint, mount.probe_error)
            elif mount.probe_ok:
                log.info("{} accepts writes again (proof of thaw)", mount.mountpoint)
        if result.timed_out:
            log.error("freeze deadline passed: thawed before the snapshots completed")
        if self.state.snapshot is not None:
            for disk in self.state.snapshot.disks:
                if disk.ok:
                    log.info(
                        "disk {} snapshot {} in {:.3f}s ({} attempt(s))",
                        disk.blob_url,
                        disk.snapshot,
                        disk.duration_seconds,
                        disk.attempts,
                    )
                else:
                    log.error("disk {} failed: {}", disk.blob_url, disk.error)

    # -- the whole job --------------------------------------------------

    def run(self) -> JobReport:
        try:
            return self._run()
        except BaseException:
            self.end_telemetry(None)
            self.close_telemetry()
            raise
        finally:
            self.log.close()

    # -- telemetry ------------------------------------------------------

    def record_facts(self) -> RecordFacts:
        """The job's part of the record (telemetry adds its own counters)."""
        snap = self.state.snapshot
        freeze = self.state.freeze
        plan = self.state.plan
        return RecordFacts(
            task_id=self.state.task_id,
            started_at=self.started_at,
            updated_at=time.time(),
            pid=os.getpid(),
            ended_at=time.time(),
            verdict=self.final,
            phases=tuple(self.phases.records),
            freeze=freeze,
            mountpoints=tuple(m.mountpoint for m in plan.mounts) if plan else (),
            freezing=self.state.freeze_deadline_at is not None,
            freeze_deadline_at=self.state.freeze_deadline_at,
            pre=self.state.pre,
            post=self.state.post,
            disks=snap.disks if snap else tuple(self.state.preflight_failures),
            redact=self.redactor,
        )

    def end_telemetry(self, final: Verdict | None) -> None:
        """End the root span and export spans (before the "job done" line)."""
        telemetry = self.telemetry
        if telemetry is None or telemetry.ended:
            return
        self.final = final
        freeze = self.state.freeze
        snap = self.state.snapshot
        settings = self.state.settings
        try:
            telemetry.end_job(
                final,
                root_attributes=root_attributes(
                    verdict=final,
                    frozen_window_seconds=freeze.window_seconds if freeze else 0.0,
                    mounts=[m.mountpoint for m in freeze.mounts if m.frozen] if freeze else [],
                    disk_count=len(settings.disk_sas_urls) if settings else 0,
                    disks_ok=snap.ok_count if snap else 0,
                ),
                task_id=self.state.task_id,
            )
        except Exception as exc:  # telemetry never fails a job
            self.log.phase("telemetry").warning("telemetry failed: {}", exc)

    def close_telemetry(self) -> None:
        """Mirror the log and write the final record (after the "job done" line)."""
        telemetry = self.telemetry
        if telemetry is None or telemetry.finished:
            return
        settings = self.state.settings
        try:
            telemetry.close(
                task_id=self.state.task_id,
                logs_blob_uri=settings.logs_blob_uri if settings else None,
            )
        except Exception as exc:  # telemetry never fails a job
            self.log.phase("telemetry").warning("telemetry hand-off failed: {}", exc)

    def _run(self) -> JobReport:
        settings_ok = self.load_settings()
        for line in self.recovered:
            self.log.phase("recover").warning("{}", line)
        if not settings_ok:
            error = self.state.settings_error
            assert error is not None
            final = settings_rejected(error.code)
            self.write_status("error", final.status_code, error.message, final=final)
            self.end_telemetry(final)
            self.close_telemetry()
            return self.report(final, error.message)
        settings = self.state.settings
        assert settings is not None
        self.load_plugin_config()
        with self.phases.phase("status_start") as ph:
            ph.attributes["status"] = "transitioning"
            self.write_status("transitioning", 4, "Transitioning state in extension", final=None)
            ph.attributes["status_upload"] = self.state.status_upload
        try:
            self.state.plan = self.plan_mounts()
        except (OSError, ValueError) as exc:
            self.state.plan = FreezePlan(mounts=(), skipped=())
            self.state.freeze_message = f"mount discovery failed: {exc}"
        if self.telemetry is not None and self.telemetry.check_spool_frozen(self.state.plan):
            self.log.phase("prepare").warning(
                "spool {} is on a filesystem being frozen: its writes wait for the thaw",
                self.telemetry.options.spool_dir,
            )
        config = self.state.config
        interrupted: BaseException | None = None
        try:
            if config is not None:
                self.state.pre = self.run_script_phase("pre")
            decision = decide_after_pre_script(
                config_state=self.state.config_state,  # type: ignore[arg-type]
                config_error=self.state.config_error,
                continue_on_failure=config.continue_backup_on_failure if config else True,
                fs_freeze_enabled=config.fs_freeze_enabled if config else True,
                pre_error=_script_error(self.state.pre),
            )
            self.state.decision = decision
            if decision.proceed:
                self.freeze_and_snapshot(decision.freeze)
            else:
                self.log.phase("job").error("backup cancelled: {}", decision.reason)
        except (KeyboardInterrupt, JobInterrupted) as exc:
            # Ctrl-C or a stop signal: the filesystems are thawed by now (the
            # freeze's finally); like any cancel after the pre-script, resume
            # the application and leave a terminal status, then stop.
            interrupted = exc
            self.state.interrupted = _signal_name(exc)
            self.log.phase("job").error(
                "interrupted by {}: thawed; running the post-script, then stopping",
                self.state.interrupted,
            )
        if config is not None:
            # The post-script runs whenever scripts are configured, even after a
            # cancel: the pre-script may have quiesced the application.
            self.state.post = self.run_script_phase("post")
        final = self.verdict()
        self.final = final
        message = self.final_message(final)
        with self.phases.phase("status_end") as ph:
            status: StatusName = "success" if final.snapshot_taken else "error"
            ph.attributes["status"] = status
            self.write_status(status, final.status_code, message, final=final)
            ph.attributes["status_upload"] = self.state.status_upload
        self.end_telemetry(final)
        level = "info" if final.snapshot_taken and not final.warnings else "warning"
        self.log.phase("job").log(
            level.upper(),
            "job done: consistency={} reason={} error={} in {:.3f}s",
            final.consistency,
            final.reason,
            final.error.value if final.error else "none",
            time.monotonic() - self.started,
        )
        self.close_telemetry()
        if interrupted is not None:
            raise interrupted
        return self.report(final, message)

    def verdict(self) -> Verdict:
        config = self.state.config
        snap = self.state.snapshot
        freeze = self.state.freeze
        disks_total = len(self.state.settings.disk_sas_urls) if self.state.settings else 0
        return verdict(
            config_state=self.state.config_state,  # type: ignore[arg-type]
            config_error=self.state.config_error,
            continue_on_failure=config.continue_backup_on_failure if config else True,
            fs_freeze_enabled=config.fs_freeze_enabled if config else True,
            pre_error=_script_error(self.state.pre),
            freeze_attempted=self.state.freeze_attempted,
            freeze_ok=self.state.freeze_ok,
            freeze_error=self.state.freeze_error
            or (freeze.error if freeze and freeze.timed_out else None),
            freeze_timed_out=bool(freeze and freeze.timed_out),
            snapshot_error=snap.error if snap else None,
            disks_ok=snap.ok_count if snap else 0,
            disks_total=disks_total,
            post_error=_script_error(self.state.post),
            thaw_error=freeze.error if freeze and freeze.error is ErrorCode.THAW_FAILED else None,
        )

    def final_message(self, final: Verdict) -> str:
        if self.state.interrupted:
            return f"Enable failed: interrupted by {self.state.interrupted} ({final.reason})"
        if final.snapshot_taken and final.consistency == "application":
            return "Enable Succeeded with App Consistent Snapshot"
        if final.snapshot_taken:
            return f"Enable Succeeded with {final.consistency} consistent snapshot ({final.reason})"
        details = [
            m
            for m in (
                self.state.snapshot.error_message if self.state.snapshot else None,
                self.state.freeze_message,
                self.state.pre.error_message if self.state.pre else None,
            )
            if m
        ]
        return f"Enable failed: {final.reason}" + (f": {details[0]}" if details else "")

    def report(self, final: Verdict, message: str) -> JobReport:
        snap = self.state.snapshot
        freeze = self.state.freeze
        return JobReport(
            task_id=self.state.task_id,
            consistency=final.consistency,
            consistency_reason=final.reason,
            error_code=final.error.value if final.error else None,
            error_message=None if final.snapshot_taken and not final.error else message,
            warnings=tuple(w.value for w in final.warnings),
            status_code=final.status_code,
            health=int(final.health),
            snapshot_taken=final.snapshot_taken,
            phases=tuple(self.phases.records),
            freeze_seconds=freeze.window_seconds if freeze else 0.0,
            freeze=freeze,
            disks=snap.disks if snap else tuple(self.state.preflight_failures),
            pre_script=self.state.pre,
            post_script=self.state.post,
            plugin_config=self.state.config_state,
            status_file=self.state.status_file,
            status_upload=self.state.status_upload,
            started_at=self.started_at,
            duration_seconds=time.monotonic() - self.started,
            trace_id=self.telemetry.trace_id if self.telemetry else None,
            spool_job_dir=self.telemetry.job_dir if self.telemetry else None,
        )


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _safe_name(task_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)[:128] or "unknown"


def run_job(
    options: JobOptions,
    *,
    on_report: Callable[[JobReport], None] | None = None,
    span_exporter: SpanExporter | None = None,
) -> JobReport:
    """Run one snapshot job to completion; never raises for job failures.

    ``span_exporter`` receives every span of the job once, after the job
    (after the thaw), in addition to the spool and OTLP (tests, embedders).
    """
    report = _Job(options, span_exporter=span_exporter).run()
    if on_report is not None:
        on_report(report)
    return report
