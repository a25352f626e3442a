"""The consistency verdict and the decisions taken before the snapshot.

Pure module: no I/O, and no function here raises for any combination of
inputs (a hypothesis test holds us to it). docs/consistency.md tabulates
every case, including where the reference behaves differently.

Three decisions, in job order:

* ``decide_after_pre_script``: after the plugin config was loaded and the
  pre-script ran. Proceed to the snapshot? Freeze first?
* ``decide_after_freeze``: after the freeze attempt. Proceed (frozen, or
  crash-consistent on a single disk) or stop?
* ``verdict``: after everything. Replays both decisions from the facts of
  the run, then adds the snapshot, thaw and post-script outcomes.

Inputs that a decision makes irrelevant are ignored, never contradicted:
``continue_on_failure``, ``fs_freeze_enabled`` and ``pre_error`` are read
only when ``config_state == "valid"``; ``config_error`` only when it is
``"invalid"`` (default ``IncorrectJSONConfigFile``); freeze facts and
``thaw_error`` only when a freeze was planned and attempted; snapshot facts
only when the decisions let the job reach the snapshot.

Contracts of ``Verdict``:

* ``snapshot_taken`` is True exactly when ``consistency != "none"``: an
  incomplete disk set is not a restore point.
* ``warnings`` are the codes noted on the run that did not stop it, in
  phase order (config, pre-script, freeze, snapshot, thaw, post-script).
* ``error`` is the job's primary code. Without a snapshot it is the code that
  stopped the job (never in ``warnings``). With a snapshot it is the most
  urgent warning (thaw > freeze > post-script > pre-script > config >
  others), or None when there is none.
* ``status_code`` is 0 for application, 1 for filesystem and crash (the
  reference's success codes), and ``error.code`` for none.
* ``health`` is the worst ``.health`` of ``error`` and ``warnings``; green
  when there is neither.
* ``reason`` is one of ``REASONS`` and explains the consistency level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from snapshot_runtime.core.errors import ErrorCode, Health

__all__ = [
    "DECISION_REASONS",
    "REASONS",
    "ConfigState",
    "Consistency",
    "ProceedDecision",
    "Verdict",
    "decide_after_freeze",
    "decide_after_pre_script",
    "job_refused",
    "settings_rejected",
    "verdict",
]

Consistency = Literal["application", "filesystem", "crash", "none"]
ConfigState = Literal["absent", "invalid", "valid"]

# Verdict.reason: the closed set, each explaining the consistency level.
REASONS: frozenset[str] = frozenset(
    {
        # application
        "application_consistent",
        # filesystem
        "no_plugin_config",
        "plugin_config_invalid",
        "pre_script_error_continued",
        "freeze_disabled",
        "workload_not_quiesced",
        # crash
        "no_freezable_mounts",
        "freeze_failed_crash_fallback",
        "freeze_timeout",
        "freeze_not_owned",
        # none
        "pre_script_error_cancelled",
        "pre_script_error_freeze_disabled",
        "freeze_failed",
        "freeze_timeout_multi_disk",
        "freeze_not_owned_multi_disk",
        "all_snapshots_failed",
        "snapshot_partially_failed",
        "no_disks",
        # none, decided before any of the above: the settings were rejected,
        # or another job holds the single-job lock
        "settings_invalid",
        "job_already_running",
    }
)

# ProceedDecision.reason: the closed set of the two pre-snapshot decisions.
DECISION_REASONS: frozenset[str] = frozenset(
    {
        "no_plugin_config",
        "plugin_config_invalid",
        "pre_script_ok",
        "pre_script_error_continued",
        "freeze_disabled",
        "pre_script_error_cancelled",
        "pre_script_error_freeze_disabled",
        "frozen",
        "freeze_failed_crash_fallback",
        "freeze_failed",
        "freeze_not_owned",
        "freeze_not_owned_multi_disk",
    }
)

_SNAPSHOT_FAILURE_CODES = frozenset(
    {
        ErrorCode.SNAPSHOT_FAILED,
        ErrorCode.SNAPSHOT_RATE_EXCEEDED,
        ErrorCode.SNAPSHOT_LIMIT_REACHED,
        # The host path's 140-minute limit by the host's clock: no snapshot asked for.
        ErrorCode.COMMAND_TOO_LATE,
    }
)

# Phases, in job order; also the key for choosing the primary warning.
_CONFIG, _PRE, _FREEZE, _SNAPSHOT, _THAW, _POST = range(6)
# Most urgent first: a filesystem that may still be frozen, then why the
# consistency is lower than asked, then an application that may not have
# resumed, then the pre-script and config problems that caused a fallback.
_URGENCY = (_THAW, _FREEZE, _POST, _PRE, _CONFIG, _SNAPSHOT)


@dataclass(frozen=True)
class ProceedDecision:
    """Whether the job goes on, and whether the next step runs frozen.

    After the pre-script ``freeze`` means "attempt the freeze"; after the
    freeze it means "the snapshot is taken while frozen". ``error`` is the
    code behind a stop or a fallback (a warning when ``proceed``).
    """

    proceed: bool
    freeze: bool
    reason: str
    error: ErrorCode | None


@dataclass(frozen=True)
class Verdict:
    """The job's outcome; see the module docstring for the contracts."""

    consistency: Consistency
    reason: str
    error: ErrorCode | None
    warnings: tuple[ErrorCode, ...]
    snapshot_taken: bool
    status_code: int
    health: Health


def decide_after_pre_script(
    *,
    config_state: ConfigState,
    config_error: ErrorCode | None,
    continue_on_failure: bool,
    fs_freeze_enabled: bool,
    pre_error: ErrorCode | None,
) -> ProceedDecision:
    """Decide from the plugin config and the pre-script outcome."""
    if config_state == "absent":
        # The normal case for a VM without scripts: nothing to warn about.
        return ProceedDecision(True, True, "no_plugin_config", None)
    if config_state != "valid":
        # The reference proceeds whatever continueBackupOnFailure says (the
        # setting was never read) but hides the code; we report it.
        return ProceedDecision(
            True, True, "plugin_config_invalid", config_error or ErrorCode.INCORRECT_JSON_CONFIG
        )
    if pre_error is None:
        if fs_freeze_enabled:
            return ProceedDecision(True, True, "pre_script_ok", None)
        return ProceedDecision(True, False, "freeze_disabled", None)
    if not continue_on_failure:
        return ProceedDecision(False, False, "pre_script_error_cancelled", pre_error)
    if not fs_freeze_enabled:
        # Without a freeze a failed pre-script leaves nothing consistent about
        # the snapshot; the reference cancels here and so do we.
        return ProceedDecision(False, False, "pre_script_error_freeze_disabled", pre_error)
    return ProceedDecision(True, True, "pre_script_error_continued", pre_error)


def decide_after_freeze(
    *,
    freeze_ok: bool,
    freeze_error: ErrorCode | None,
    disk_count: int,
    single_disk_crash_fallback: bool = True,
    freeze_not_owned: bool = False,
) -> ProceedDecision:
    """Decide from the freeze outcome.

    A single-disk snapshot is atomic, so it is a valid crash-consistent point
    even unfrozen (the documented fallback). Several disks snapshotted one by
    one without a freeze are not consistent with each other: stop.

    ``freeze_not_owned``: the freeze "held", but a mount was already frozen
    by someone else (EBUSY), who may thaw it at any moment: the snapshot is
    not covered by a freeze this job holds, so the same rule applies (crash
    on one disk, stop on several), with ``FsFreezeNotOwned``.
    """
    if freeze_ok and freeze_not_owned:
        if disk_count == 1 and single_disk_crash_fallback:
            return ProceedDecision(True, False, "freeze_not_owned", ErrorCode.FS_FREEZE_NOT_OWNED)
        return ProceedDecision(
            False, False, "freeze_not_owned_multi_disk", ErrorCode.FS_FREEZE_NOT_OWNED
        )
    if freeze_ok:
        return ProceedDecision(True, True, "frozen", None)
    code = freeze_error or ErrorCode.FS_FREEZE_FAILED
    if disk_count == 1 and single_disk_crash_fallback:
        return ProceedDecision(True, False, "freeze_failed_crash_fallback", code)
    return ProceedDecision(False, False, "freeze_failed", code)


class _Noted:
    """Codes noted during one verdict, with the phase that produced each."""

    def __init__(self) -> None:
        self.items: list[tuple[int, ErrorCode]] = []

    def add(self, phase: int, code: ErrorCode | None) -> None:
        if code is not None and all(c is not code for _, c in self.items):
            self.items.append((phase, code))

    def codes(self, *, without: ErrorCode | None = None) -> tuple[ErrorCode, ...]:
        ordered = sorted(self.items, key=lambda item: item[0])
        return tuple(c for _, c in ordered if c is not without)

    def most_urgent(self) -> ErrorCode | None:
        if not self.items:
            return None
        return min(self.items, key=lambda item: _URGENCY.index(item[0]))[1]


def _health(error: ErrorCode | None, warnings: tuple[ErrorCode, ...]) -> Health:
    codes = [*warnings, *([error] if error is not None else [])]
    return max((c.health for c in codes), default=Health.GREEN)


def _stopped(reason: str, error: ErrorCode, noted: _Noted, post_error: ErrorCode | None) -> Verdict:
    # The post-script runs even after a stop (to resume the application);
    # its failure is still worth reporting.
    noted.add(_POST, post_error)
    warnings = noted.codes(without=error)
    return Verdict(
        consistency="none",
        reason=reason,
        error=error,
        warnings=warnings,
        snapshot_taken=False,
        status_code=error.code,
        health=_health(error, warnings),
    )


def verdict(
    *,
    config_state: ConfigState,
    config_error: ErrorCode | None,
    continue_on_failure: bool,
    fs_freeze_enabled: bool,
    pre_error: ErrorCode | None,
    freeze_attempted: bool,
    freeze_ok: bool,
    freeze_error: ErrorCode | None,
    freeze_timed_out: bool,
    snapshot_error: ErrorCode | None,
    disks_ok: int,
    disks_total: int,
    post_error: ErrorCode | None,
    thaw_error: ErrorCode | None,
    single_disk_crash_fallback: bool = True,
    config_warnings: tuple[ErrorCode, ...] = (),
    freeze_not_owned: bool = False,
    workload_error: ErrorCode | None = None,
) -> Verdict:
    """The job's consistency, codes and health from the facts of the run.

    ``workload_error``: the built-in database quiescing (workload.conf) failed,
    timed out (the hold lapsed before the release) or is unsupported (Oracle):
    a warning, and never application-consistent (``workload_not_quiesced``).

    ``freeze_timed_out``: the freeze held, but the deadline thawed the
    filesystems before every snapshot completed (crash on a single disk,
    none on several). ``freeze_not_owned``: a planned mount was already
    frozen by someone else (FIFREEZE: EBUSY); its owner may thaw it at any
    moment, so the job cannot vouch for it: crash on a single disk, none on
    several (``decide_after_freeze``). ``disks_ok`` counts the disks whose
    snapshot succeeded out of ``disks_total``. ``config_warnings``: codes of a
    valid plugin config that was tolerated (a value adjusted or converted);
    they are warnings, never a stop.
    """
    noted = _Noted()
    if config_state == "valid":
        for tolerated in config_warnings:
            noted.add(_CONFIG, tolerated)
    pre = decide_after_pre_script(
        config_state=config_state,
        config_error=config_error,
        continue_on_failure=continue_on_failure,
        fs_freeze_enabled=fs_freeze_enabled,
        pre_error=pre_error,
    )
    if not pre.proceed:
        assert pre.error is not None  # every stop carries its code
        return _stopped(pre.reason, pre.error, noted, post_error)
    noted.add(_CONFIG if config_state == "invalid" else _PRE, pre.error)
    noted.add(_PRE, workload_error)

    # Consistency if every disk is snapshotted; refined by the freeze below.
    consistency: Consistency
    reason: str
    if not pre.freeze:
        consistency, reason = "filesystem", "freeze_disabled"
    elif not freeze_attempted:
        # A freeze was planned but no mount qualified: nothing was frozen. The
        # reference still reported filesystem-consistent (a gap); the disks
        # were only ever crash-consistent.
        consistency, reason = "crash", "no_freezable_mounts"
    else:
        # A thaw failure matters whatever happens next: mounts may stay frozen.
        noted.add(_THAW, thaw_error)
        after = decide_after_freeze(
            freeze_ok=freeze_ok,
            freeze_error=freeze_error,
            disk_count=disks_total,
            single_disk_crash_fallback=single_disk_crash_fallback,
            freeze_not_owned=freeze_not_owned,
        )
        if not after.proceed:
            assert after.error is not None
            return _stopped(after.reason, after.error, noted, post_error)
        noted.add(_FREEZE, after.error)
        if not after.freeze:
            consistency, reason = "crash", after.reason
        elif freeze_timed_out:
            # The deadline thawed before every snapshot completed. One disk is
            # still an atomic, crash-consistent point; several disks taken
            # partly after the thaw are not consistent with each other (the
            # same reason a failed freeze stops a multi-disk job).
            if disks_total == 1 and single_disk_crash_fallback:
                consistency, reason = "crash", "freeze_timeout"
                noted.add(_FREEZE, ErrorCode.FS_FREEZE_TIMEOUT)
            else:
                return _stopped(
                    "freeze_timeout_multi_disk", ErrorCode.FS_FREEZE_TIMEOUT, noted, post_error
                )
        elif pre.reason == "pre_script_ok":
            consistency, reason = "application", "application_consistent"
        else:
            consistency, reason = "filesystem", pre.reason
        if workload_error is not None and consistency == "application":
            # Honest verdicts: no quiesce held across the snapshot, no application claim.
            consistency, reason = "filesystem", "workload_not_quiesced"

    total = max(disks_total, 0)
    ok = min(max(disks_ok, 0), total)
    if total == 0:
        return _stopped("no_disks", ErrorCode.INVALID_DISK_LIST, noted, post_error)
    if ok == 0:
        code = snapshot_error if snapshot_error in _SNAPSHOT_FAILURE_CODES else None
        return _stopped(
            "all_snapshots_failed", code or ErrorCode.SNAPSHOT_FAILED, noted, post_error
        )
    if ok < total:
        # A cause narrower than "partial" (rate, limit) is kept as a warning.
        if snapshot_error not in (ErrorCode.SNAPSHOT_FAILED, ErrorCode.SNAPSHOT_PARTIALLY_FAILED):
            noted.add(_SNAPSHOT, snapshot_error)
        return _stopped(
            "snapshot_partially_failed", ErrorCode.SNAPSHOT_PARTIALLY_FAILED, noted, post_error
        )
    # Every disk succeeded; a snapshot error reported anyway is not hidden.
    noted.add(_SNAPSHOT, snapshot_error)
    noted.add(_POST, post_error)

    warnings = noted.codes()
    error = noted.most_urgent()
    return Verdict(
        consistency=consistency,
        reason=reason,
        error=error,
        warnings=warnings,
        snapshot_taken=True,
        status_code=0 if consistency == "application" else 1,
        health=_health(error, warnings),
    )


def job_refused(error: ErrorCode) -> Verdict:
    """The verdict when another job holds the single-job lock: nothing ran."""
    return Verdict(
        consistency="none",
        reason="job_already_running",
        error=error,
        warnings=(),
        snapshot_taken=False,
        status_code=error.code,
        health=error.health,
    )


def settings_rejected(error: ErrorCode) -> Verdict:
    """The verdict when the handler settings themselves were rejected: no job ran."""
    return Verdict(
        consistency="none",
        reason="settings_invalid",
        error=error,
        warnings=(),
        snapshot_taken=False,
        status_code=error.code,
        health=error.health,
    )
