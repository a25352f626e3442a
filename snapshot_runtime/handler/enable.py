"""``handler enable``: from the agent's N.settings to a running job daemon.

1. HandlerEnvironment.json, the sequence number N, ``handler.conf``
   (``handler_context.load_context``); a new VM identity (restore, clone)
   resets the sequence and task guards (``guards.reset_guards_on_new_identity``);
2. N already handled here (``mrseq``), or N.settings already sanitised: leave
   N.status as it is and exit (the agent re-runs enable after restarting);
3. decrypt ``protectedSettings`` in-process, then rewrite N.settings without
   them (always, whatever follows), parse and validate the settings;
4. guards: the single-job lock (JOB_ALREADY_RUNNING), the processed task ids
   (ALREADY_PROCESSED), the 140-minute limit (COMMAND_TOO_LATE);
5. N.status "success" with code 4 (the reference's interim report,
   ``ExtensionTempTerminalState``), then the daemon (``handler_daemon``);
   enable exits 0.

Every failure is a status (``Reporter.fail``) and raises ``Reported``; N is
remembered as handled (``mrseq``) once a status was written for it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

from snapshot_runtime.core.command_deadline import command_too_late
from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.handler.certificates import load_certificate_pair, normalise_thumbprint
from snapshot_runtime.handler.context import (
    Context,
    HandlerOptions,
    identity_path,
    job_lock,
    load_context,
    processed_tasks,
)
from snapshot_runtime.handler.daemon import spawn_daemon
from snapshot_runtime.handler.guards import reset_guards_on_new_identity
from snapshot_runtime.handler.protected_settings import decrypt_protected_settings
from snapshot_runtime.handler.settings_files import (
    LAST_SEQUENCE_FILE,
    SEQUENCE_ENV,
    is_sanitised,
    read_last_sequence,
    read_settings_document,
    rewrite_settings_file,
    sanitised,
    write_last_sequence,
)
from snapshot_runtime.handler.status import Reported, Reporter
from snapshot_runtime.inputs.machine import read_vm_identity, utcnow
from snapshot_runtime.inputs.settings import HandlerSettings, parse_handler_settings
from snapshot_runtime.job.lock import JobLock
from snapshot_runtime.job.status_document import TEMP_TERMINAL_MESSAGE, StatusValue

__all__ = ["run_enable"]


def _check_identity(ctx: Context) -> None:
    """Reset the sequence and task guards if this VM is a restore or a clone.

    Before the ``mrseq`` check: a restored VM carries its source's ``mrseq``
    and processed task ids, and must not refuse its first job.
    """
    config = ctx.config
    identity = read_vm_identity(
        product_uuid_path=config.product_uuid_file,
        hosting_config_path=config.hosting_environment_config,
    )
    try:
        check = reset_guards_on_new_identity(
            identity.key,
            identity_path=identity_path(config),
            processed=processed_tasks(config),
            sequence_path=os.path.join(ctx.env.handler_dir, LAST_SEQUENCE_FILE),
        )
    except OSError as exc:
        ctx.reporter.log("WARNING", f"VM identity not checked: {exc}")
        return
    if check.current is None:
        ctx.reporter.log("WARNING", "no VM identity readable: guards kept as they are")
    elif check.reset:
        ctx.reporter.log(
            "INFO",
            f"VM identity changed ({check.previous} -> {check.current}): a restore or a "
            "clone; the sequence and task guards were reset",
        )


def _already_handled(ctx: Context, why: str) -> int:
    """Sequence N was handled before: keep its status, unless there is none."""
    reporter = ctx.reporter
    reporter.log("INFO", f"sequence {ctx.seq} {why}: nothing to do")
    if reporter.status_path and not os.path.exists(reporter.status_path):
        reporter.status(
            ErrorCode.ALREADY_PROCESSED,
            f"sequence number {ctx.seq} {why}; nothing to do",
            status="success",
        )
    reporter.out(f"enable: sequence {ctx.seq} {why}: nothing to do")
    return 0


def _decrypt(doc: Mapping[str, Any], opts: HandlerOptions, reporter: Reporter) -> dict[str, Any]:
    """``doc`` with plaintext protected settings; ConfigError on failure."""
    runtime = doc.get("runtimeSettings")
    if not (
        isinstance(runtime, list)
        and len(runtime) == 1
        and isinstance(runtime[0], Mapping)
        and isinstance(runtime[0].get("handlerSettings"), Mapping)
    ):
        raise ConfigError(
            ErrorCode.INVALID_SETTINGS,
            "runtimeSettings must be a list with exactly one entry holding handlerSettings",
        )
    handler = runtime[0]["handlerSettings"]
    protected = handler.get("protectedSettings")
    if isinstance(protected, str):
        thumb = normalise_thumbprint(handler.get("protectedSettingsCertThumbprint"))
        pair = load_certificate_pair(opts.cert_dir, thumb)
        plain = decrypt_protected_settings(protected, pair)
        reporter.log("INFO", f"protected settings decrypted with certificate {thumb}")
    elif protected is None:
        plain = {}  # nothing protected: validation reports the missing disk list
    elif isinstance(protected, Mapping):
        plain = dict(protected)  # already plaintext (not what the agent writes)
    else:
        raise ConfigError(
            ErrorCode.PROTECTED_SETTINGS_INVALID,
            "protectedSettings must be the encrypted base64 string the guest agent writes",
        )
    reporter.redactor.add(_string_leaves(plain))
    return {"runtimeSettings": [{"handlerSettings": {**handler, "protectedSettings": plain}}]}


def _string_leaves(value: object) -> list[str]:
    if isinstance(value, str):
        return [value, value.strip()]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _string_leaves(v)]
    if isinstance(value, list):
        return [s for v in value for s in _string_leaves(v)]
    return []


def _sanitise(path: str, doc: Mapping[str, Any], reporter: Reporter) -> None:
    clean = sanitised(doc)
    if clean is None:
        return
    try:
        rewrite_settings_file(path, clean)
        reporter.log("INFO", f"protectedSettings removed from {path}")
    except OSError as exc:
        reporter.log("ERROR", f"protectedSettings could not be removed from {path}: {exc}")


def _guard(
    ctx: Context, settings: HandlerSettings, lock: JobLock, now: dt.datetime
) -> ConfigError | None:
    """Why this enable must not start a job, or None (with ``lock`` held)."""
    if not lock.try_acquire():
        holder = lock.holder()
        who = (
            f"task {holder.task_id} (sequence {holder.seq}, pid {holder.pid})"
            if holder and holder.task_id
            else "another task"
        )
        return ConfigError(
            ErrorCode.JOB_ALREADY_RUNNING,
            f"a job for {who} is running; this enable for task {settings.task_id} "
            "starts nothing (one freeze at a time)",
        )
    with contextlib.suppress(OSError):  # until the daemon's pid is known: ours
        lock.set_holder(pid=os.getpid(), task_id=settings.task_id, seq=ctx.seq)
    if settings.task_id in processed_tasks(ctx.config):
        return ConfigError(
            ErrorCode.ALREADY_PROCESSED,
            f"task {settings.task_id} was already processed; nothing to do",
        )
    if command_too_late(settings.command_start_utc, now):
        assert settings.command_start_utc is not None
        minutes = (now - settings.command_start_utc).total_seconds() / 60
        return ConfigError(
            ErrorCode.COMMAND_TOO_LATE,
            f"the command started at {settings.command_start_utc:%Y-%m-%dT%H:%M:%SZ}, "
            f"{minutes:.0f} minutes ago: more than the 140 minutes allowed",
        )
    return None


def run_enable(opts: HandlerOptions, out: Callable[[str], None]) -> int:
    """``handler enable``: checks, sanitise, guards, then the daemon (module docstring)."""
    ctx = load_context(opts, out)
    reporter = ctx.reporter
    reporter.log("INFO", f"enable: sequence {ctx.seq} (handler {ctx.env.handler_dir})")
    _check_identity(ctx)
    if read_last_sequence(ctx.env.handler_dir) == ctx.seq:
        return _already_handled(ctx, "was already handled")
    path = ctx.env.settings_path(ctx.seq)
    if not os.path.lexists(path):
        raise reporter.fail(
            ConfigError(
                ErrorCode.HANDLER_ENVIRONMENT_INVALID,
                f"there is no settings file {path} for sequence number {ctx.seq} "
                f"({SEQUENCE_ENV} or the newest N.settings)",
            )
        )
    try:
        doc = read_settings_document(path)
    except ConfigError as exc:
        raise _record(ctx, reporter.fail(exc)) from None
    reporter.learn_public(doc)
    if is_sanitised(doc):
        with contextlib.suppress(OSError):
            write_last_sequence(ctx.env.handler_dir, ctx.seq)
        return _already_handled(ctx, "was already consumed (its protected settings are removed)")
    try:
        plain_doc = _decrypt(doc, opts, reporter)
    except ConfigError as exc:
        raise _record(ctx, reporter.fail(exc)) from None
    finally:
        _sanitise(path, doc, reporter)
    try:
        settings = parse_handler_settings(plain_doc)
    except ConfigError as exc:
        raise _record(ctx, reporter.fail(exc)) from None
    reporter.learn_settings(settings)

    lock = job_lock(ctx.config)
    try:
        refusal = _guard(ctx, settings, lock, utcnow())
        if refusal is not None:
            done: StatusValue = (
                "success" if refusal.code is ErrorCode.ALREADY_PROCESSED else "error"
            )
            raise _record(ctx, reporter.fail(refusal, status=done))
        reporter.status(None, TEMP_TERMINAL_MESSAGE)
        _record(ctx, None)
        try:
            pid = spawn_daemon(ctx, opts, lock, plain_doc, settings.task_id)
        except (OSError, TimeoutError, subprocess.SubprocessError) as exc:
            raise reporter.fail(
                ConfigError(ErrorCode.INTERNAL_ERROR, f"the job daemon could not be started: {exc}")
            ) from None
    finally:
        lock.release()  # the daemon keeps its own descriptor of the lock
    reporter.log("INFO", f"task {settings.task_id}: job handed to daemon pid {pid}")
    out(f"enable: sequence {ctx.seq}, task {settings.task_id}: job started (daemon pid {pid})")
    return 0


def _record(ctx: Context, reported: Reported | None) -> Reported:
    """Remember sequence N as handled once a status was written for it."""
    if reported is not None and reported.exit_code != 0:
        return reported
    try:
        write_last_sequence(ctx.env.handler_dir, ctx.seq)
    except OSError as exc:
        ctx.reporter.log("WARNING", f"{ctx.env.handler_dir}/mrseq not written: {exc.strerror}")
    return reported or Reported(0)
