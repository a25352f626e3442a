"""The job daemon and its hand-off from ``enable``.

``enable`` (``spawn_daemon``) starts ``python -m snapshot_runtime.handler.commands
daemon --seq N --lock-fd FD`` in a new session with stdio on /dev/null,
passes it the lock's descriptor, and writes the decrypted settings to its
stdin pipe (never argv, environment or disk) within
``HANDOFF_TIMEOUT_SECONDS``.

The daemon (``run_daemon``) reads them first thing, into an anonymous memory
file (``memfd``) that ``run_job`` opens as ``/proc/self/fd/N``, runs the job
with ``status_path = <statusFolder>/N.status`` and ``log_path =
<logFolder>/extension.log``, records the task id as processed, and exits;
the lock goes with it. A failure before or around the job is a status
(``Reporter.fail``), never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.handler.config import JobConfig, merge_job_config
from snapshot_runtime.handler.context import (
    Context,
    HandlerOptions,
    load_context,
    processed_tasks,
)
from snapshot_runtime.inputs.settings import HandlerSettings, parse_handler_settings
from snapshot_runtime.inputs.vmbackup_conf import (
    CustomSettings,
    load_vmbackup_conf,
    parse_custom_settings,
)
from snapshot_runtime.job.housekeeping import prune_handler_status, prune_state_dir
from snapshot_runtime.job.lock import JOB_LOCK_FILE, JobLock

__all__ = ["HANDOFF_TIMEOUT_SECONDS", "run_daemon", "spawn_daemon"]

# The daemon must have read its settings by then; it does so first thing.
HANDOFF_TIMEOUT_SECONDS = 30.0
_MAX_HANDOFF_BYTES = 4 * 1024 * 1024


# --- enable's side ----------------------------------------------------------------------


def _write_all(proc: subprocess.Popen[bytes], data: bytes, timeout: float) -> None:
    """Write ``data`` to the child's stdin within ``timeout``; OSError/TimeoutError."""
    assert proc.stdin is not None
    fd = proc.stdin.fileno()
    os.set_blocking(fd, False)
    deadline = time.monotonic() + timeout
    view = memoryview(data)
    try:
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the job daemon did not read its settings in time")
            _, writable, _ = select.select([], [fd], [], remaining)
            if writable:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    continue
    finally:
        proc.stdin.close()


def spawn_daemon(
    ctx: Context, opts: HandlerOptions, lock: JobLock, plain_doc: Mapping[str, Any], task: str
) -> int:
    """Start the daemon, hand it the lock and the settings; its pid."""
    argv = [
        opts.python,
        "-m",
        "snapshot_runtime.handler",
        "daemon",
        "--handler-dir",
        ctx.env.handler_dir,
        "--seq",
        str(ctx.seq),
        "--lock-fd",
        str(lock.fd),
    ]
    if opts.handler_config:
        argv += ["--handler-config", opts.handler_config]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ctx.env.handler_dir,
        start_new_session=True,
        close_fds=True,
        pass_fds=(lock.fd,),
    )
    try:
        with contextlib.suppress(OSError):
            lock.set_holder(pid=proc.pid, task_id=task, seq=ctx.seq)
        _write_all(proc, json.dumps(plain_doc).encode("utf-8"), HANDOFF_TIMEOUT_SECONDS)
    except BaseException:
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        raise
    return proc.pid


# --- the daemon's side ------------------------------------------------------------------


def _read_handoff(fd: int, limit: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the settings did not arrive from enable in time")
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise ValueError("the settings handed over are too large")
        chunks.append(chunk)


def run_daemon(opts: HandlerOptions, out: Callable[[str], None]) -> int:
    """``handler daemon``: take the settings from enable, run the job, exit 0."""
    # Nothing may write to stdout/stderr (they are /dev/null) and loguru's
    # default stderr handler is not freeze-gated (I1): the job installs its own.
    from loguru import logger  # noqa: PLC0415 - the daemon only

    logger.remove()
    problem: str | None = None
    try:
        data = _read_handoff(0, _MAX_HANDOFF_BYTES, HANDOFF_TIMEOUT_SECONDS)
    except (OSError, ValueError) as exc:  # TimeoutError is an OSError
        data, problem = b"", str(exc)
    finally:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    ctx = load_context(opts, out)
    reporter = ctx.reporter
    assert opts.lock_fd is not None
    lock = JobLock.adopt(os.path.join(ctx.config.run_dir, JOB_LOCK_FILE), opts.lock_fd)
    try:
        try:
            if problem is not None:
                raise ValueError(problem)
            settings = parse_handler_settings(json.loads(data.decode("utf-8")))
        except (ValueError, ConfigError) as exc:
            if isinstance(exc, ConfigError):
                message = exc.message
            elif problem is not None:
                message = problem
            else:
                message = "the hand-off from enable is incomplete"
            raise reporter.fail(
                ConfigError(
                    ErrorCode.INTERNAL_ERROR, f"the daemon did not receive its settings: {message}"
                )
            ) from None
        reporter.learn_settings(settings)
        reporter.log("INFO", f"daemon: task {settings.task_id}, sequence {ctx.seq}: job starts")
        try:
            _run(ctx, data, settings)
        except Exception as exc:  # a bug, not a job failure: still a status, no traceback
            raise reporter.fail(
                ConfigError(
                    ErrorCode.INTERNAL_ERROR, f"the job stopped: {type(exc).__name__}: {exc}"
                )
            ) from None
    finally:
        lock.release()
    return 0


def _custom_settings(doc: object) -> CustomSettings:
    """The settings' ``customSettings``: public, else protected (the reference's order)."""
    runtime = doc.get("runtimeSettings") if isinstance(doc, Mapping) else None
    entry = runtime[0] if isinstance(runtime, list) and runtime else None
    handler = entry.get("handlerSettings") if isinstance(entry, Mapping) else None
    if not isinstance(handler, Mapping):
        return CustomSettings()
    for key in ("publicSettings", "protectedSettings"):
        part = handler.get(key)
        if isinstance(part, Mapping) and part.get("customSettings") not in (None, ""):
            return parse_custom_settings(part.get("customSettings"))
    return CustomSettings()


def _job_config(ctx: Context, doc: object) -> JobConfig:
    """handler.conf over vmbackup.conf over customSettings, logged with sources."""
    reporter = ctx.reporter
    vmbackup = load_vmbackup_conf(ctx.config.vmbackup_conf)
    custom = _custom_settings(doc)
    for problem in vmbackup.problems:
        reporter.log("WARNING", f"{vmbackup.source}: {problem}")
    for problem in custom.problems:
        reporter.log("WARNING", f"customSettings: {problem}")
    if vmbackup.unknown:
        reporter.log("DEBUG", f"{vmbackup.source}: ignored unknown keys {list(vmbackup.unknown)}")
    merged = merge_job_config(ctx.config, vmbackup, custom)
    reporter.log("INFO", f"job config: {merged.describe()}")
    return merged


def _run(ctx: Context, data: bytes, settings: HandlerSettings) -> None:
    from snapshot_runtime.job.records import JobOptions  # noqa: PLC0415 - heavy, daemon only
    from snapshot_runtime.job.run import run_job  # noqa: PLC0415 - heavy, daemon only

    reporter = ctx.reporter
    # An anonymous memory file: run_job reads a path, and the plaintext must
    # not touch a filesystem. Close-on-exec, so no script inherits it.
    memfd = os.memfd_create("snapshot-runtime-settings", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(memfd, view) :]
        config = ctx.config
        merged = _job_config(ctx, json.loads(data.decode("utf-8")))
        report = run_job(
            JobOptions(
                settings_path=f"/proc/self/fd/{memfd}",
                config_path=config.plugin_config,
                include_mounts=config.include_mounts,
                exclude_mounts=merged.exclude_mounts,
                freeze_timeout_seconds=merged.freeze_timeout_seconds,
                # vmbackup.conf WriteLog=False: no local log file (the spool,
                # hence the sidecar and logsBlobUri, still get every line).
                log_path=ctx.env.log_path if merged.write_log else None,
                upload_status=merged.upload_status,
                state_dir=config.state_dir,
                status_path=ctx.env.status_path(ctx.seq),
                run_dir=config.run_dir,
                status_name=reporter.name,
                status_version=reporter.version,
            )
        )
    finally:
        os.close(memfd)
    try:
        processed_tasks(ctx.config).add(settings.task_id)
    except OSError as exc:
        reporter.log("ERROR", f"task {settings.task_id} not recorded as processed: {exc}")
    reporter.log(
        "INFO",
        f"daemon: task {settings.task_id} done: snapshot_taken={report.snapshot_taken} "
        f"consistency={report.consistency} error={report.error_code or 'none'}",
    )
    _housekeeping(ctx)


def _housekeeping(ctx: Context) -> None:
    """After the job: old job records and this handler's old N.status files go
    (handler.conf retention_keep / retention_days; docs/operations.md)."""
    policy = ctx.config.retention
    pruned = prune_state_dir(ctx.config.state_dir, policy)
    pruned.extend(prune_handler_status(ctx.env.status_folder, policy, current_seq=ctx.seq))
    if pruned.removed:
        ctx.reporter.log("INFO", f"housekeeping: {len(pruned.removed)} old file(s) removed")
    for error in pruned.errors:
        ctx.reporter.log("WARNING", f"housekeeping: not removed: {error}")
