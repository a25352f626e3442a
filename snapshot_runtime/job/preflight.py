"""`snapshot-runtime validate`: the guest-side preflight, without freezing.

Checks, in order: the plugin config (found, permissions, JSON), each script
(presence, owner/mode, parent directories, interpreter), the timeout budget
against the 1800 s cap and the freeze timeout, and the freeze plan (which
mounts a job would freeze; with fsFreezeEnabled=false, only that nothing is
frozen). With ``run_scripts`` the pre-script then the
post-script run for real, as a dry run (nothing is frozen or snapshotted).

Returns a ``PreflightReport``; the first failing check's error code is the
report's error code. A config the runtime tolerates (a value adjusted or
converted, as the reference does silently) is a ``warn`` check carrying the
warning code a job would report; the report stays ok.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from snapshot_runtime.core.defaults import DEFAULT_FREEZE_TIMEOUT
from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.core.redact import Redactor
from snapshot_runtime.freeze.mounts import FreezePlan, parse_mountinfo, plan_freeze, read_mountinfo
from snapshot_runtime.inputs.plugin_config import (
    MAX_TIMEOUT_SECONDS,
    PluginConfig,
    load_plugin_config,
)
from snapshot_runtime.inputs.plugin_config_file import find_config_path
from snapshot_runtime.inputs.workload_conf import (
    DEFAULT_WORKLOAD_CONF,
    WORKLOAD_CONF_ENV,
    WorkloadConf,
    load_workload_conf,
)
from snapshot_runtime.quiesce.checks import workload_checks
from snapshot_runtime.scripts.runner import ScriptResult, run_script
from snapshot_runtime.scripts.trust import check_script

__all__ = ["Check", "PreflightReport", "preflight"]


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail" | "info"
    detail: str
    error: ErrorCode | None = None


@dataclass
class PreflightReport:
    config_path: str | None
    checks: list[Check] = field(default_factory=list)
    scripts: dict[str, ScriptResult] = field(default_factory=dict)

    @property
    def error(self) -> ErrorCode | None:
        for check in self.checks:
            if check.status == "fail":
                return check.error or ErrorCode.INTERNAL_ERROR
        return None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def warnings(self) -> tuple[ErrorCode, ...]:
        """The distinct codes of the warn checks: yellow, but nothing stops a job."""
        codes = (c.error for c in self.checks if c.status == "warn" and c.error is not None)
        return tuple(dict.fromkeys(codes))

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "errorCode": self.error.value if self.error else None,
            "configPath": self.config_path,
            "checks": [
                {
                    "name": c.name,
                    "status": c.status,
                    "detail": c.detail,
                    "errorCode": c.error.value if c.error else None,
                }
                for c in self.checks
            ],
            "scripts": {
                phase: {
                    "ok": r.ok,
                    "attempts": len(r.attempts),
                    "exitCodes": list(r.exit_codes),
                    "timedOut": r.timed_out,
                    "seconds": round(r.duration_seconds, 6),
                    "errorCode": r.error.value if r.error else None,
                    "error": r.error_message,
                    "stdout": r.stdout,
                    "stderr": r.stderr,
                }
                for phase, r in self.scripts.items()
            },
        }


def _config_checks(report: PreflightReport, explicit: str | None) -> PluginConfig | None:
    path = explicit or find_config_path(None)
    report.config_path = path
    if path is None:
        report.checks.append(
            Check(
                "config",
                "fail",
                "no VMSnapshotScriptPluginConfig.json (nor the legacy "
                "VMSnapshotPluginConfig.json) in /etc/azure: jobs run without scripts "
                "and are at best filesystem-consistent",
                ErrorCode.INCORRECT_JSON_CONFIG,
            )
        )
        return None
    try:
        config = load_plugin_config(path)
    except ConfigError as exc:
        report.checks.append(Check("config", "fail", f"{path}: {exc.message}", exc.code))
        return None
    report.checks.append(Check("config", "ok", f"{path}: owner root, mode 600, valid JSON"))
    for warning in config.warning_details:
        # A coded warning is what a job reports too (status, record, metric).
        detail = f"{warning.code.value}: {warning.message}" if warning.code else warning.message
        report.checks.append(Check("config", "warn", detail, warning.code))
    return config


def _budget_checks(report: PreflightReport, config: PluginConfig, freeze_timeout: float) -> None:
    per_script = config.timeout_seconds
    if config.fs_freeze_enabled:
        worst = (
            f"worst case job: {2 * per_script + freeze_timeout:.0f}s "
            f"(pre + freeze timeout {freeze_timeout:.0f}s + post)"
        )
    else:
        # No freeze, so no freeze timeout: the snapshot requests have their own deadline.
        worst = f"worst case scripts: {2 * per_script:.0f}s (pre + post)"
    report.checks.append(
        Check(
            "budget",
            "ok",
            f"{per_script}s per script (cap {MAX_TIMEOUT_SECONDS}s), covering "
            f"{config.pre.retries + 1} pre / {config.post.retries + 1} post attempt(s); " + worst,
        )
    )
    if config.pre.retries and per_script / (config.pre.retries + 1) < 1:
        report.checks.append(
            Check("budget", "warn", "less than 1 s per pre-script attempt: retries will time out")
        )
    report.checks.append(
        Check(
            "policy",
            "info",
            f"continueBackupOnFailure={str(config.continue_backup_on_failure).lower()}, "
            f"fsFreezeEnabled={str(config.fs_freeze_enabled).lower()}, "
            f"ScriptsExecutionPollTimeSeconds={config.poll_seconds}",
        )
    )


def _workload_checks(
    report: PreflightReport, path: str, freeze_timeout: float
) -> WorkloadConf | None:
    """workload.conf: a named workload replaces the scripts; check what its quiesce needs."""
    conf = load_workload_conf(path)
    if not conf.active:
        if conf.problem:
            report.checks.append(Check("workload", "warn", f"{path}: {conf.problem}"))
        return None
    report.checks.append(
        Check("workload", "info", f"{path}: workload {conf.name} replaces the pre/post scripts")
    )
    for note in conf.notes:
        report.checks.append(Check("workload", "info", note))
    if conf.error is not None:
        report.checks.append(Check("workload", "fail", conf.problem or "", conf.error))
        return conf
    if conf.name == "oracle":
        report.checks.append(
            Check(
                "workload",
                "warn",
                "oracle is recognised but not quiesced by this runtime: jobs freeze and "
                "snapshot, filesystem-consistent",
                ErrorCode.WORKLOAD_UNSUPPORTED,
            )
        )
        return conf
    if conf.hold_seconds <= freeze_timeout:
        report.checks.append(
            Check(
                "workload",
                "warn",
                f"hold deadline {conf.hold_seconds}s is not longer than the freeze timeout "
                f"{freeze_timeout:.0f}s: a slow snapshot loses the hold (510)",
            )
        )
    for check in workload_checks(conf):
        report.checks.append(
            Check(f"workload {check.name}", check.status, check.detail, check.error)
        )
    return conf


def _mount_checks(
    report: PreflightReport, include: tuple[str, ...] | None, mountinfo_path: str
) -> FreezePlan | None:
    try:
        plan = plan_freeze(parse_mountinfo(read_mountinfo(mountinfo_path)), include=include)
    except (OSError, ValueError) as exc:
        report.checks.append(
            Check("freeze plan", "fail", f"mount discovery: {exc}", ErrorCode.UNABLE_TO_OPEN_MOUNT)
        )
        return None
    frozen = ", ".join(f"{m.mountpoint} ({m.fstype})" for m in plan.mounts) or "none"
    report.checks.append(
        Check("freeze plan", "info" if plan.mounts else "warn", f"would freeze: {frozen}")
    )
    for skipped in plan.skipped:
        if skipped.reason == "not_mounted":
            report.checks.append(
                Check(
                    "freeze plan",
                    "fail",
                    f"{skipped.mountpoint}: not a mounted, freezable filesystem",
                    ErrorCode.UNABLE_TO_OPEN_MOUNT,
                )
            )
    return plan


def preflight(
    *,
    config_path: str | None = None,
    run_scripts: bool = False,
    include_mounts: tuple[str, ...] | None = None,
    freeze_timeout: float = DEFAULT_FREEZE_TIMEOUT,
    mountinfo_path: str = "/proc/self/mountinfo",
    workload_conf_path: str | None = None,
) -> PreflightReport:
    report = PreflightReport(config_path=None)
    path = workload_conf_path or os.environ.get(WORKLOAD_CONF_ENV) or DEFAULT_WORKLOAD_CONF
    workload = _workload_checks(report, path, freeze_timeout)
    config: PluginConfig | None = None
    if workload is None:
        config = _config_checks(report, config_path)
    elif config_path or find_config_path(None):
        report.checks.append(
            Check(
                "config",
                "warn",
                "a pre/post-script plugin config is configured too: the workload replaces "
                "it, its scripts do not run",
                ErrorCode.WORKLOAD_REPLACES_SCRIPTS,
            )
        )
    if config is not None:
        for phase, spec in (("pre", config.pre), ("post", config.post)):
            check = check_script(spec.path, phase=phase)  # type: ignore[arg-type]
            report.checks.append(
                Check(
                    f"{phase}-script",
                    "ok" if check.ok else "fail",
                    f"{spec.path}: {check.message}" if spec.path else check.message,
                    check.error,
                )
            )
        _budget_checks(report, config, freeze_timeout)
    plan: FreezePlan | None = None
    if config is not None and not config.fs_freeze_enabled:
        # A job freezes nothing: no freeze plan to show (nor mounts to check).
        report.checks.append(
            Check("freeze", "info", "fsFreezeEnabled=false: a job freezes no filesystem")
        )
    else:
        plan = _mount_checks(report, include_mounts, mountinfo_path)
    # The dry run gives scripts the job's environment, so a script that works
    # here works in a backup (SNAPSHOT_MOUNTS as a job would set it: empty
    # without a freeze).
    mounts = ",".join(m.mountpoint for m in plan.mounts) if plan else ""
    if run_scripts and config is not None and report.ok:
        redactor = Redactor()
        for phase, spec in (("pre", config.pre), ("post", config.post)):
            result = run_script(
                spec.path,
                spec.params,
                phase=phase,  # type: ignore[arg-type]
                retries=spec.retries,
                budget_seconds=float(config.timeout_seconds),
                task_id="validate-dry-run",
                extra_env={"SNAPSHOT_DRY_RUN": "1", "SNAPSHOT_MOUNTS": mounts},
                redactor=redactor,
                poll_seconds=float(config.poll_seconds),
            )
            report.scripts[phase] = result
            codes = ",".join("sig" if c is None else str(c) for c in result.exit_codes)
            report.checks.append(
                Check(
                    f"{phase}-script run",
                    "ok" if result.ok else "fail",
                    f"{len(result.attempts)} attempt(s), exit {codes or '-'}, "
                    f"{result.duration_seconds:.3f}s"
                    + (f": {result.error_message}" if result.error_message else ""),
                    result.error,
                )
            )
    return report
