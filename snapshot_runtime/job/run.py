"""The snapshot job: settings -> plan -> phases -> job report.

Phases in order: settings, plugin config, interim status (code 4), pre-script,
prepare (everything the frozen window needs: mount fds, the thaw watchdog,
warmed blob connections), freeze, snapshot all disks, thaw, post-script,
final status. Decisions come from pure modules (``consistency``,
``plugin_config``, ``mounts``, ``job_state``); this module only sequences
effects. The parts it sequences live apart:

* ``job_records``: ``JobOptions`` (validated) and ``JobReport``;
* ``job_state``: what the phases learn, and the verdict and report built from it;
* ``frozen_window``: prepare, freeze, snapshot, thaw, and the failure paths;
* ``job_status``: the status file and its ``statusBlobUri`` upload;
* ``job_interrupt``: ``JobInterrupted`` (SIGTERM/SIGHUP from the entry point).

Frozen window (I1): between ``Freezer.freeze()`` and the return of
``Freezer.thaw()`` the job calls nothing but ``Snapshotter.snapshot_all()``
(the backend chosen through ``snapshot.registry``), memory-only bookkeeping
(phase records, spans) and one log line (``frozen_window``); the log gate and
telemetry are window observers (``core.window``), closed for the whole window
so no sink writes to a filesystem that may be frozen. The only
write in the window is the spool's ``log.jsonl`` append, on a never-frozen
tmpfs (held too when the spool turns out to be on a frozen mount).

Telemetry (``telemetry.JobTelemetry``, docs/telemetry.md): spans per phase,
the spool hand-off and the job record; ``JobOptions(telemetry=False)`` turns
spans and the spool off (the local log file stays).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.core.interrupt import JobInterrupted, interrupt_name
from snapshot_runtime.core.phases import PhaseRecorder
from snapshot_runtime.core.redact import Redactor
from snapshot_runtime.core.window import WindowObserver
from snapshot_runtime.inputs.machine import machine_id
from snapshot_runtime.inputs.plugin_config_file import find_config_path
from snapshot_runtime.inputs.settings import HandlerSettings, load_settings_file
from snapshot_runtime.job.lock import JOB_LOCK_FILE, JobLock, LockHolder
from snapshot_runtime.job.records import JobOptions, JobReport
from snapshot_runtime.job.state import (
    JobState,
    build_report,
    final_message,
    job_record_facts,
    job_verdict,
    post_script_due,
    script_error,
)
from snapshot_runtime.telemetry.job_log import JobLog
from snapshot_runtime.telemetry.job_telemetry import JobTelemetry, TelemetryOptions
from snapshot_runtime.telemetry.record import RecordFacts
from snapshot_runtime.telemetry.spool_recovery import recover_interrupted

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from snapshot_runtime.core.consistency import Verdict
    from snapshot_runtime.freeze.freezer import Freezer, FreezerFactory
    from snapshot_runtime.freeze.mounts import FreezePlan
    from snapshot_runtime.job.status_report import JobStatusWriter, StatusName
    from snapshot_runtime.job.workload import WorkloadSession
    from snapshot_runtime.scripts.runner import ScriptResult
    from snapshot_runtime.snapshot.backend import SnapshotterFactory

# Start-up (issue 15, docs/startup.md): what the first phase does not need is
# imported where it is first needed (the plugin config and workload.conf
# readers, the status writer, the mount planner, the freeze session, the
# frozen-window sequence, the script runner, the quiescers, the host mode
# planner, the backend table, the verdict rules): after the first phase and
# always before the first FIFREEZE
# (tests/job/test_startup_imports.py). Never inside the frozen window, where an
# import is file I/O.

__all__ = [
    "run_job",
]


class _Job:
    def __init__(
        self,
        options: JobOptions,
        *,
        span_exporter: SpanExporter | None = None,
        backends: Mapping[str, SnapshotterFactory] | None = None,
        freezer_factory: FreezerFactory | None = None,
    ) -> None:
        self.options = options
        self.backends = backends  # None: registry.BACKENDS, looked up before the freeze
        self.freezer_factory = freezer_factory
        self.redactor = Redactor()
        self.backend_names: tuple[str, ...] = ()  # set by the host mode decision
        self.phases = PhaseRecorder()
        self.state = JobState()
        self.started_at = time.time()
        self.started = time.monotonic()
        self.machine_id = machine_id()
        self.recovered: list[str] = []
        self.final: Verdict | None = None
        self.workload: WorkloadSession | None = None
        # First of all: a second job must not even recover the first's spool.
        self.lock: JobLock | None = None
        self.refused_by: LockHolder | None = None
        self.refused = False
        if options.single_job_lock:
            self.lock = JobLock(os.path.join(options.run_dir, JOB_LOCK_FILE))
            if not self.lock.try_acquire():
                self.refused = True
                self.refused_by = self.lock.holder()
                self.lock = None
        try:
            self._set_up(options, span_exporter)
        except BaseException:
            # run() never comes: do not keep the machine's only job slot.
            if self.lock is not None:
                self.lock.release()
            raise

    def _set_up(self, options: JobOptions, span_exporter: SpanExporter | None) -> None:
        if options.telemetry and options.recover and not self.refused:
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
                    otlp_protocol=options.otlp_protocol,
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

    @functools.cached_property
    def status(self) -> JobStatusWriter:
        """Built at the first status write (the status document's modules: see top)."""
        from snapshot_runtime.job.status_report import JobStatusWriter  # noqa: PLC0415

        return JobStatusWriter(
            self.options,
            self.state,
            phases=self.phases,
            log=self.log,
            redactor=self.redactor,
            machine_id=self.machine_id,
        )

    # -- phases ---------------------------------------------------------

    def load_settings(self) -> bool:
        with self.phases.phase("settings") as ph:
            try:
                settings = load_settings_file(self.options.settings_path)
                if settings.host.given:
                    self.host_mode_backends(settings)
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

    def host_mode_backends(self, settings: HandlerSettings) -> None:
        """The host/guest mode (docs/host-snapshot.md) picks the backends, before any freeze.

        Only for settings carrying host inputs (includedDisks, snapshotTaskToken);
        a contradictory disk request is refused like invalid settings.
        """
        from snapshot_runtime.snapshot.host import plan_host_mode  # noqa: PLC0415 - see top

        choice, names, why = plan_host_mode(settings)
        if not names:
            raise ConfigError(ErrorCode.INVALID_DISK_LIST, why)
        self.backend_names = names
        self.log.phase("settings").info(
            "snapshot mode {} from {} ({}); backends {}",
            choice.mode.value,
            choice.source,
            choice.reason,
            list(names),
        )
        for note in (*choice.ignored, *settings.host.ignored):
            self.log.phase("settings").warning("ignored: {}", note)

    def load_plugin_config(self) -> None:
        from snapshot_runtime.inputs.plugin_config import load_plugin_config  # noqa: PLC0415

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

    def load_workload(self) -> None:
        """workload.conf naming a database replaces the pre/post scripts (docs/workloads.md)."""
        from snapshot_runtime.inputs.workload_conf import (  # noqa: PLC0415 - see top
            DEFAULT_WORKLOAD_CONF,
            WORKLOAD_CONF_ENV,
            load_workload_conf,
        )

        path = os.environ.get(WORKLOAD_CONF_ENV) or DEFAULT_WORKLOAD_CONF
        conf = load_workload_conf(path)
        settings = self.state.settings
        password = settings.workload_password if settings is not None else None
        if conf.active and password and conf.credentials.password is None:
            # The protected setting: never in a file, redacted like every protected value.
            conf = dataclasses.replace(
                conf, credentials=dataclasses.replace(conf.credentials, password=password)
            )
        log = self.log.phase("workload")
        if not conf.active:
            if conf.problem:
                log.warning("workload.conf {}: {}", path, conf.problem)
            return
        self.redactor.add(conf.secrets)
        self.state.workload_conf = conf
        from snapshot_runtime.job.workload import WorkloadSession  # noqa: PLC0415 - see top

        self.workload = WorkloadSession(conf, phases=self.phases, log=self.log)
        self.state.workload = self.workload.outcome
        log.info(
            "workload {} from {}: quiesced before the freeze, released after the thaw "
            "(hold deadline {}s)",
            conf.name,
            path,
            conf.hold_seconds,
        )
        for note in conf.notes:
            log.info("workload.conf: {}", note)
        if conf.error is not None:
            log.error("workload.conf: {} ({}): not quiesced", conf.problem, conf.error.value)
        if self.state.config_state != "absent":
            log.warning(
                "both workload.conf ({}) and a pre/post-script plugin config are configured: "
                "the workload replaces the scripts, which do not run ({})",
                conf.name,
                ErrorCode.WORKLOAD_REPLACES_SCRIPTS.value,
            )

    def plan_mounts(self) -> FreezePlan:
        from snapshot_runtime.freeze.mounts import (  # noqa: PLC0415 - see top
            parse_mountinfo,
            plan_freeze,
            read_mountinfo,
        )

        mounts = parse_mountinfo(read_mountinfo(self.options.mountinfo_path))
        return plan_freeze(
            mounts,
            include=self.options.include_mounts,
            exclude=self.options.exclude_mounts,
        )

    def run_script_phase(self, which: str) -> ScriptResult | None:
        from snapshot_runtime.scripts.runner import run_script  # noqa: PLC0415 - see top

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

    def freeze_and_snapshot(self, freeze_enabled: bool) -> None:
        # Subscription order: telemetry flushes before the gate closes, and the
        # gate releases the held lines before telemetry writes its spans.
        # Before the freeze: FrozenWindowSequence imports the backends' modules.
        from snapshot_runtime.job.frozen_window import FrozenWindowSequence  # noqa: PLC0415
        from snapshot_runtime.snapshot.registry import BACKENDS  # noqa: PLC0415

        observers: list[WindowObserver] = []
        if self.workload is not None:
            # First: it quiesces before the log gate closes, releases after it reopens.
            observers.append(self.workload)
        if self.telemetry is not None:
            observers.append(self.telemetry)
        observers.append(self.log.gate)
        try:
            options = self.options
            if self.backend_names:
                options = dataclasses.replace(options, snapshot_backends=self.backend_names)
            FrozenWindowSequence(
                options,
                self.state,
                log=self.log,
                phases=self.phases,
                backends=self.backends if self.backends is not None else BACKENDS,
                freezer_factory=self.freezer_factory or self.default_freezer,
                observers=observers,
            ).run(freeze_enabled)
        finally:
            if self.telemetry is not None and self.state.snapshot is not None:
                self.telemetry.on_snapshot(self.state.snapshot)

    def default_freezer(self, plan: FreezePlan) -> Freezer:
        """A ``FreezeSession`` whose watchdog reports to the spool (docs/spool.md)."""
        # Called by FrozenWindowSequence to build the freezer, before it freezes.
        from snapshot_runtime.freeze.session import FreezeSession  # noqa: PLC0415

        spool = self.telemetry.spool if self.telemetry else None
        wanted = spool.watchdog_dir if spool is not None else self.options.run_dir
        report_dir: str | None = wanted
        try:
            os.makedirs(wanted, mode=0o700, exist_ok=True)
        except OSError as exc:
            # Only the watchdog's after-the-fact report is lost; the thaw guard is not.
            self.log.phase("prepare").warning("watchdog report directory {}: {}", wanted, exc)
            report_dir = None
        return FreezeSession(
            plan,
            timeout_seconds=self.options.freeze_timeout_seconds,
            use_watchdog=self.options.use_watchdog,
            watchdog_report_dir=report_dir,
        )

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
            if self.lock is not None:
                self.lock.release()

    def refuse(self) -> JobReport:
        """Another job holds the single-job lock: a terminal status, nothing run."""
        holder = self.refused_by
        who = (
            f"task {holder.task_id} (pid {holder.pid})"
            if holder is not None and holder.task_id
            else f"pid {holder.pid}"
            if holder is not None and holder.pid
            else "another task"
        )
        message = (
            f"another job is running: {who} holds the single-job lock; this job for task "
            f"{self.state.task_id} starts nothing (one freeze at a time)"
        )
        from snapshot_runtime.core.consistency import job_refused  # noqa: PLC0415 - see top

        final = job_refused(ErrorCode.JOB_ALREADY_RUNNING)
        self.final = final
        self.log.phase("job").error("{}", message)
        with self.phases.phase("status_end") as ph:
            ph.attributes["status"] = "error"
            self.status.write("error", final.status_code, message, final=final)
            ph.attributes["status_upload"] = self.state.status_upload
        self.end_telemetry(final)
        self.close_telemetry()
        return self.report(final, message)

    # -- telemetry ------------------------------------------------------

    def record_facts(self) -> RecordFacts:
        """The job's part of the record (telemetry adds its own counters)."""
        return job_record_facts(
            self.state,
            final=self.final,
            phases=tuple(self.phases.records),
            started_at=self.started_at,
            now=time.time(),
            pid=os.getpid(),
            redact=self.redactor,
        )

    def end_telemetry(self, final: Verdict | None) -> None:
        """End the root span and export spans (before the "job done" line)."""
        telemetry = self.telemetry
        if telemetry is None or telemetry.ended:
            return
        from snapshot_runtime.telemetry.span_attributes import root_attributes  # noqa: PLC0415

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
        from snapshot_runtime.core.consistency import (  # noqa: PLC0415 - see top
            decide_after_pre_script,
            settings_rejected,
        )

        for line in self.recovered:
            self.log.phase("recover").warning("{}", line)
        if not settings_ok:
            error = self.state.settings_error
            assert error is not None
            final = settings_rejected(error.code)
            self.status.write("error", final.status_code, error.message, final=final)
            self.end_telemetry(final)
            self.close_telemetry()
            return self.report(final, error.message)
        settings = self.state.settings
        assert settings is not None
        if self.refused:
            return self.refuse()
        if self.lock is not None:
            with contextlib.suppress(OSError):  # the text is informative only
                self.lock.set_holder(pid=os.getpid(), task_id=settings.task_id, seq=None)
        self.load_plugin_config()
        self.load_workload()
        from snapshot_runtime.freeze.mounts import FreezePlan  # noqa: PLC0415 - see top
        from snapshot_runtime.job.status_document import (  # noqa: PLC0415
            TEMP_TERMINAL_CODE,
            TEMP_TERMINAL_MESSAGE,
        )

        with self.phases.phase("status_start") as ph:
            # The reference's interim report: "success" with code 4 (status_document).
            ph.attributes["status"] = "success"
            self.status.write("success", TEMP_TERMINAL_CODE, TEMP_TERMINAL_MESSAGE, final=None)
            ph.attributes["status_upload"] = self.state.status_upload
        try:
            config = self.state.config
            # fsFreezeEnabled=false: nothing is frozen, so no mounts to plan,
            # announce to the scripts (SNAPSHOT_MOUNTS) or warn about.
            freezes = config is None or config.fs_freeze_enabled or self.workload is not None
            self.state.plan = self.plan_mounts() if freezes else FreezePlan(mounts=(), skipped=())
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
            if config is not None and self.workload is None:
                self.state.pre = self.run_script_phase("pre")
            decision = decide_after_pre_script(
                config_state=self.state.config_state if self.workload is None else "absent",
                config_error=self.state.config_error,
                continue_on_failure=config.continue_backup_on_failure if config else True,
                fs_freeze_enabled=config.fs_freeze_enabled if config else True,
                pre_error=script_error(self.state.pre),
            )
            if decision.proceed:
                self.freeze_and_snapshot(decision.freeze)
            else:
                self.log.phase("job").error("backup cancelled: {}", decision.reason)
        except (KeyboardInterrupt, JobInterrupted) as exc:
            # Ctrl-C or a stop signal: the filesystems are thawed by now (the
            # freeze's finally); like any cancel after the pre-script, resume
            # the application and leave a terminal status, then stop.
            interrupted = exc
            self.state.interrupted = interrupt_name(exc)
            self.log.phase("job").error(
                "interrupted by {}: thawed; running the post-script, then stopping",
                self.state.interrupted,
            )
        finally:
            if self.workload is not None:
                # Idempotent: already released after the thaw on a normal run.
                self.workload.release()
        if post_script_due(self.state):
            # Even after a cancel: the pre-script may have quiesced the application.
            self.state.post = self.run_script_phase("post")
        final = job_verdict(self.state)
        self.final = final
        message = final_message(self.state, final)
        with self.phases.phase("status_end") as ph:
            status: StatusName = "success" if final.snapshot_taken else "error"
            ph.attributes["status"] = status
            self.status.write(status, final.status_code, message, final=final)
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

    def report(self, final: Verdict, message: str) -> JobReport:
        return build_report(
            self.state,
            final,
            message,
            phases=tuple(self.phases.records),
            started_at=self.started_at,
            duration_seconds=time.monotonic() - self.started,
            trace_id=self.telemetry.trace_id if self.telemetry else None,
            spool_job_dir=self.telemetry.job_dir if self.telemetry else None,
        )


def run_job(
    options: JobOptions,
    *,
    on_report: Callable[[JobReport], None] | None = None,
    span_exporter: SpanExporter | None = None,
    backends: Mapping[str, SnapshotterFactory] | None = None,
    freezer_factory: FreezerFactory | None = None,
) -> JobReport:
    """Run one snapshot job to completion; never raises for job failures.

    ``span_exporter`` receives every span of the job once, after the job
    (after the thaw), in addition to the spool and OTLP (tests, embedders).
    ``backends``: the snapshot backend table (None: ``registry.BACKENDS``), where
    ``options.snapshot_backends`` names are looked up; ``freezer_factory``
    builds the ``Freezer`` for the plan (default: a ``FreezeSession`` with the
    thaw watchdog).
    """
    report = _Job(
        options, span_exporter=span_exporter, backends=backends, freezer_factory=freezer_factory
    ).run()
    if on_report is not None:
        on_report(report)
    return report
