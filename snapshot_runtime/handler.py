"""`snapshot-runtime handler ...`: the Azure extension handler commands.

The guest agent runs ``install``, ``enable``, ``disable``, ``uninstall`` and
``update`` (HandlerManifest.json) from the handler directory, with
``ConfigSequenceNumber`` in the environment. ``daemon`` is internal: ``enable``
starts it.

``enable`` (the reference's handle.py ``enable`` + the start of ``daemon``):

1. HandlerEnvironment.json, the sequence number N, ``handler.conf``;
2. N already handled here (``mrseq``), or N.settings already sanitised: leave
   N.status as it is and exit (the agent re-runs enable after restarting);
3. decrypt ``protectedSettings`` in-process, then rewrite N.settings without
   them (always, whatever follows), parse and validate the settings;
4. guards: the single-job lock (JOB_ALREADY_RUNNING), the processed task ids
   (ALREADY_PROCESSED), the 140-minute limit (COMMAND_TOO_LATE);
5. N.status "transitioning" (code 4), then the daemon: a new session, stdio on
   /dev/null, the lock's descriptor inherited, the decrypted settings written
   to its stdin pipe (never argv, environment or disk); enable exits 0.

The daemon reads the settings from the pipe into an anonymous memory file
(``memfd``) that ``run_job`` opens as ``/proc/self/fd/N``, runs the job with
``status_path = <statusFolder>/N.status`` and ``log_path =
<logFolder>/extension.log``, records the task id as processed, and exits;
the lock goes with it.

Every failure writes N.status with a defined code and a one-line message
(never a traceback, never a secret) and exits 0, as the reference does: the
status file is the report. A non-zero exit and a line on stderr happen only
when no status file can be written (no usable HandlerEnvironment.json and no
``<handler dir>/status`` folder, or no sequence number at all).
``install``/``disable``/``uninstall``/``update`` write no status file (they
would overwrite enable's result for the same N); they log and exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from snapshot_runtime import __version__
from snapshot_runtime.errors import ConfigError, ErrorCode, Health
from snapshot_runtime.handler_env import (
    SEQUENCE_ENV,
    HandlerConfig,
    HandlerEnvironment,
    choose_sequence,
    is_sanitised,
    list_settings_files,
    load_handler_config,
    load_handler_environment,
    read_last_sequence,
    read_settings_document,
    rewrite_settings_file,
    sanitised,
    write_last_sequence,
)
from snapshot_runtime.job_guard import JobLock, ProcessedTasks, command_too_late
from snapshot_runtime.protected_settings import (
    decrypt_protected_settings,
    load_certificate_pair,
    normalise_thumbprint,
)
from snapshot_runtime.redact import Redactor, scrub
from snapshot_runtime.settings import HandlerSettings, parse_handler_settings
from snapshot_runtime.status import (
    TEMP_TERMINAL_CODE,
    StatusValue,
    status_document,
    status_file_document,
    write_status_file,
)

__all__ = ["DEFAULT_CERT_DIR", "HandlerOptions", "handler_main"]

DEFAULT_CERT_DIR = "/var/lib/waagent"
LOCK_FILE = "handler.lock"
PROCESSED_FILE = os.path.join("handler", "processed-tasks.json")
COMMANDS = ("install", "enable", "disable", "uninstall", "update")
# The daemon must have read its settings by then; it does so first thing.
HANDOFF_TIMEOUT_SECONDS = 30.0
_MAX_HANDOFF_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class HandlerOptions:
    """Everything a handler command needs; built from argv and the environment once."""

    command: str
    handler_dir: str
    cert_dir: str = DEFAULT_CERT_DIR
    handler_config: str | None = None
    sequence_env: str | None = None
    seq: int | None = None  # daemon only
    lock_fd: int | None = None  # daemon only
    python: str = sys.executable


class _Reported(Exception):
    """A failure already written to a status file; carries the exit code."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _machine_id() -> str:
    with contextlib.suppress(OSError), open("/etc/machine-id", encoding="ascii") as fh:
        return fh.read().strip()
    return socket.gethostname()


# --- reporting: the status file and the log --------------------------------------------


class _Reporter:
    """Status file and log lines for one command on one sequence number."""

    def __init__(
        self,
        *,
        command: str,
        status_path: str | None,
        log_path: str | None,
        seq: int | None,
        out: Callable[[str], None],
        err: Callable[[str], None] | None = None,
    ) -> None:
        self.command = command
        self.status_path = status_path
        self.log_path = log_path
        self.seq = seq
        self.out = out
        self.err = err or _print_error
        self.redactor = Redactor()
        self.task_id: str | None = None
        self.ticks: int | None = None
        self.vm_type: str | None = None

    def learn_public(self, doc: Mapping[str, Any]) -> None:
        """Best-effort task id, start ticks and VM type for status documents."""
        runtime = doc.get("runtimeSettings")
        entry = runtime[0] if isinstance(runtime, list) and runtime else None
        handler = entry.get("handlerSettings") if isinstance(entry, Mapping) else None
        public = handler.get("publicSettings") if isinstance(handler, Mapping) else None
        if not isinstance(public, Mapping):
            return
        task = public.get("taskId")
        if isinstance(task, str) and task.strip() and len(task) <= 256 and task.isprintable():
            self.task_id = task
        ticks = public.get("commandStartTimeUTCTicks")
        if isinstance(ticks, str) and ticks.strip().isdigit() and len(ticks.strip()) <= 19:
            self.ticks = int(ticks.strip())
        elif isinstance(ticks, int) and not isinstance(ticks, bool):
            self.ticks = ticks
        vm_type = public.get("vmType")
        self.vm_type = vm_type if isinstance(vm_type, str) else None

    def learn_settings(self, settings: HandlerSettings) -> None:
        self.redactor.add(settings.secrets)
        self.task_id = settings.task_id
        self.ticks = settings.command_start_ticks
        self.vm_type = settings.vm_type

    def log(self, level: str, message: str) -> None:
        if not self.log_path:
            return
        line = {
            "time": _utcnow().isoformat(timespec="microseconds"),
            "level": level,
            "message": self.redactor(message),
            "task_id": self.task_id or "",
            "trace_id": "",
            "span_id": "",
            "phase": "handler",
            "command": self.command,
            "sequence_number": self.seq,
            "pid": os.getpid(),
        }
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            os.makedirs(os.path.dirname(self.log_path), mode=0o755, exist_ok=True)
            fd = os.open(
                self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640
            )
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            self.err(f"warning: log {self.log_path} not written: {exc.strerror}")

    def status(
        self,
        code: ErrorCode | None,
        message: str,
        *,
        status: StatusValue | None = None,
    ) -> bool:
        """Write the status file; ``code`` None is the transitioning report."""
        if self.status_path is None:
            return False
        number = TEMP_TERMINAL_CODE if code is None else code.code
        value: StatusValue = status or ("transitioning" if code is None else "error")
        text = self.redactor(message if code is None else f"{code.value}: {message}")
        now = _utcnow()
        doc = status_document(
            task_id=self.task_id or "unknown",
            status=value,
            code=number,
            message=text,
            consistency=None,
            command_start_ticks=self.ticks,
            snapshots=(),
            telemetry={
                "extensionVersion": __version__,
                "handlerCommand": self.command,
                "extErrorCode": code.value if code else "",
            },
            health=code.health if code else Health.GREEN,
            unique_machine_id=_machine_id(),
            now=now,
            extension_version=__version__,
            redact=self.redactor,
        )
        try:
            os.makedirs(os.path.dirname(self.status_path), mode=0o755, exist_ok=True)
            write_status_file(
                self.status_path, status_file_document(doc, now=now, vm_type=self.vm_type)
            )
        except OSError as exc:
            self.err(f"{ErrorCode.STATUS_UPLOAD_FAILED.value}: {self.status_path}: {exc.strerror}")
            return False
        self.log("INFO" if code in (None, ErrorCode.ALREADY_PROCESSED) else "ERROR", text)
        return True

    def fail(self, exc: ConfigError, *, status: StatusValue = "error") -> _Reported:
        """Report ``exc`` in the status file (or on stderr) and say how to exit."""
        line = self.redactor(str(exc))
        if self.status(exc.code, exc.message, status=status):
            self.err(f"{self.command}: sequence {self.seq}: {line}")
            return _Reported(0)
        self.err(line)
        self.log("ERROR", line)
        return _Reported(1)


# --- locating the files ---------------------------------------------------------------


def _fallback_reporter(opts: HandlerOptions, out: Callable[[str], None]) -> _Reporter:
    """Where to report when HandlerEnvironment.json is unusable: the agent's
    conventional ``<handler dir>/status`` for the sequence number it gave (or
    the newest ``<handler dir>/config/N.settings``), when those exist."""
    status_dir = os.path.join(opts.handler_dir, "status")
    seq: int | None = None
    with contextlib.suppress(ConfigError):
        candidates = (
            list_settings_files(os.path.join(opts.handler_dir, "config"))
            if not (opts.sequence_env or "").strip()
            else []
        )
        seq = choose_sequence(opts.sequence_env, candidates)
    path = (
        os.path.join(status_dir, f"{seq}.status")
        if seq is not None and os.path.isdir(status_dir)
        else None
    )
    return _Reporter(command=opts.command, status_path=path, log_path=None, seq=seq, out=out)


@dataclass(frozen=True)
class _Context:
    env: HandlerEnvironment
    config: HandlerConfig
    seq: int
    reporter: _Reporter


def _context(opts: HandlerOptions, out: Callable[[str], None]) -> _Context:
    """Environment, sequence number and handler config; raises _Reported."""
    try:
        env = load_handler_environment(opts.handler_dir)
    except ConfigError as exc:
        raise _fallback_reporter(opts, out).fail(exc) from None
    reporter = _Reporter(
        command=opts.command, status_path=None, log_path=env.log_path, seq=None, out=out
    )
    try:
        if opts.seq is not None:
            seq = opts.seq
        else:
            present = (opts.sequence_env or "").strip()
            seq = choose_sequence(
                opts.sequence_env, [] if present else list_settings_files(env.config_folder)
            )
    except ConfigError as exc:
        raise reporter.fail(exc) from None
    reporter.seq = seq
    reporter.status_path = env.status_path(seq)
    try:
        config = load_handler_config(opts.handler_config)
    except ConfigError as exc:
        raise reporter.fail(exc) from None
    return _Context(env=env, config=config, seq=seq, reporter=reporter)


def _lock(config: HandlerConfig) -> JobLock:
    return JobLock(os.path.join(config.run_dir, LOCK_FILE))


def _processed(config: HandlerConfig) -> ProcessedTasks:
    return ProcessedTasks(os.path.join(config.state_dir, PROCESSED_FILE))


# --- enable ---------------------------------------------------------------------------


def _already_handled(ctx: _Context, why: str) -> int:
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


def _decrypt(doc: Mapping[str, Any], opts: HandlerOptions, reporter: _Reporter) -> dict[str, Any]:
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


def _sanitise(path: str, doc: Mapping[str, Any], reporter: _Reporter) -> None:
    clean = sanitised(doc)
    if clean is None:
        return
    try:
        rewrite_settings_file(path, clean)
        reporter.log("INFO", f"protectedSettings removed from {path}")
    except OSError as exc:
        reporter.log("ERROR", f"protectedSettings could not be removed from {path}: {exc}")


def _guard(
    ctx: _Context, settings: HandlerSettings, lock: JobLock, now: dt.datetime
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
    if settings.task_id in _processed(ctx.config):
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


def _spawn_daemon(
    ctx: _Context, opts: HandlerOptions, lock: JobLock, plain_doc: Mapping[str, Any], task: str
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


def _enable(opts: HandlerOptions, out: Callable[[str], None]) -> int:
    ctx = _context(opts, out)
    reporter = ctx.reporter
    reporter.log("INFO", f"enable: sequence {ctx.seq} (handler {ctx.env.handler_dir})")
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

    lock = _lock(ctx.config)
    try:
        refusal = _guard(ctx, settings, lock, _utcnow())
        if refusal is not None:
            done: StatusValue = (
                "success" if refusal.code is ErrorCode.ALREADY_PROCESSED else "error"
            )
            raise _record(ctx, reporter.fail(refusal, status=done))
        reporter.status(None, "Transitioning state in extension")
        _record(ctx, None)
        try:
            pid = _spawn_daemon(ctx, opts, lock, plain_doc, settings.task_id)
        except (OSError, TimeoutError, subprocess.SubprocessError) as exc:
            raise reporter.fail(
                ConfigError(ErrorCode.INTERNAL_ERROR, f"the job daemon could not be started: {exc}")
            ) from None
    finally:
        lock.release()  # the daemon keeps its own descriptor of the lock
    reporter.log("INFO", f"task {settings.task_id}: job handed to daemon pid {pid}")
    out(f"enable: sequence {ctx.seq}, task {settings.task_id}: job started (daemon pid {pid})")
    return 0


def _record(ctx: _Context, reported: _Reported | None) -> _Reported:
    """Remember sequence N as handled once a status was written for it."""
    if reported is not None and reported.exit_code != 0:
        return reported
    try:
        write_last_sequence(ctx.env.handler_dir, ctx.seq)
    except OSError as exc:
        ctx.reporter.log("WARNING", f"{ctx.env.handler_dir}/mrseq not written: {exc.strerror}")
    return reported or _Reported(0)


# --- daemon ---------------------------------------------------------------------------


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


def _daemon(opts: HandlerOptions, out: Callable[[str], None]) -> int:
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
    ctx = _context(opts, out)
    reporter = ctx.reporter
    assert opts.lock_fd is not None
    lock = JobLock.adopt(os.path.join(ctx.config.run_dir, LOCK_FILE), opts.lock_fd)
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


def _run(ctx: _Context, data: bytes, settings: HandlerSettings) -> None:
    from snapshot_runtime.job import JobOptions, run_job  # noqa: PLC0415 - heavy, daemon only

    reporter = ctx.reporter
    # An anonymous memory file: run_job reads a path, and the plaintext must
    # not touch a filesystem. Close-on-exec, so no script inherits it.
    memfd = os.memfd_create("snapshot-runtime-settings", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(memfd, view) :]
        config = ctx.config
        report = run_job(
            JobOptions(
                settings_path=f"/proc/self/fd/{memfd}",
                config_path=config.plugin_config,
                include_mounts=config.include_mounts,
                exclude_mounts=config.exclude_mounts,
                freeze_timeout_seconds=config.freeze_timeout_seconds,
                log_path=ctx.env.log_path,
                state_dir=config.state_dir,
                status_path=ctx.env.status_path(ctx.seq),
                run_dir=config.run_dir,
            )
        )
    finally:
        os.close(memfd)
    try:
        _processed(ctx.config).add(settings.task_id)
    except OSError as exc:
        reporter.log("ERROR", f"task {settings.task_id} not recorded as processed: {exc}")
    reporter.log(
        "INFO",
        f"daemon: task {settings.task_id} done: snapshot_taken={report.snapshot_taken} "
        f"consistency={report.consistency} error={report.error_code or 'none'}",
    )


# --- install, disable, uninstall, update -------------------------------------------------


def _quiet(opts: HandlerOptions, out: Callable[[str], None]) -> int:
    """The lifecycle commands: minimal, logged, always exit 0 unless they fail."""
    reporter: _Reporter | None = None
    with contextlib.suppress(ConfigError):
        env = load_handler_environment(opts.handler_dir)
        reporter = _Reporter(
            command=opts.command, status_path=None, log_path=env.log_path, seq=None, out=out
        )
    try:
        config = load_handler_config(opts.handler_config)
    except ConfigError as exc:
        _print_error(f"{opts.command}: warning: {exc}")
        config = HandlerConfig()
    message = {
        "install": "state directories ready",
        "disable": "nothing runs between jobs; a running job finishes on its own",
        "update": "nothing to migrate",
        "uninstall": "handler state removed",
    }[opts.command]
    try:
        if opts.command == "install":
            os.makedirs(os.path.dirname(_processed(config).path), mode=0o700, exist_ok=True)
            os.makedirs(config.run_dir, mode=0o700, exist_ok=True)
        elif opts.command == "uninstall":
            _uninstall(opts, config)
    except OSError as exc:
        _print_error(f"{opts.command}: {ErrorCode.INTERNAL_ERROR.value}: {exc}")
        if reporter:
            reporter.log("ERROR", f"{opts.command} failed: {exc}")
        return 1
    if reporter:
        reporter.log("INFO", f"{opts.command}: {message}")
    out(f"{opts.command}: {message}")
    return 0


def _uninstall(opts: HandlerOptions, config: HandlerConfig) -> None:
    # The processed task ids stay: during an update the agent runs the old
    # version's uninstall before the new version's enable, and forgetting
    # them there would let a task run twice.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(opts.handler_dir, "mrseq"))
    lock = _lock(config)
    if lock.try_acquire():
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock.path)
        finally:
            lock.release()


# --- entry point ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snapshot-runtime handler",
        description="Azure VM extension handler commands (run by the guest agent).",
    )
    parser.add_argument("command", choices=(*COMMANDS, "daemon"))
    parser.add_argument(
        "--handler-dir",
        default=None,
        help="directory holding HandlerEnvironment.json (default: the current directory)",
    )
    parser.add_argument(
        "--cert-dir",
        default=DEFAULT_CERT_DIR,
        help=f"where <THUMBPRINT>.crt/.prv live (default {DEFAULT_CERT_DIR})",
    )
    parser.add_argument(
        "--handler-config",
        default=None,
        help="handler.conf (default /etc/snapshot-runtime/handler.conf when present)",
    )
    parser.add_argument("--seq", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--lock-fd", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def _print(line: str) -> None:
    """Information for the agent's log (stdout)."""
    with contextlib.suppress(OSError, ValueError):
        print(scrub(line), flush=True)


def _print_error(line: str) -> None:
    """A failure, one line (stderr)."""
    with contextlib.suppress(OSError, ValueError):
        print(scrub(line), file=sys.stderr, flush=True)


def handler_main(argv: Sequence[str]) -> int:
    """Run one handler command; the exit status for the guest agent."""
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:  # usage errors: argparse already printed why
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "daemon" and (args.seq is None or args.lock_fd is None):
        _print_error("daemon is internal: started by enable with --seq and --lock-fd")
        return 2
    opts = HandlerOptions(
        command=args.command,
        handler_dir=os.path.abspath(args.handler_dir or os.getcwd()),
        cert_dir=args.cert_dir,
        handler_config=args.handler_config,
        sequence_env=os.environ.get(SEQUENCE_ENV),
        seq=args.seq,
        lock_fd=args.lock_fd,
    )
    try:
        if opts.command == "enable":
            return _enable(opts, _print)
        if opts.command == "daemon":
            return _daemon(opts, _print)
        return _quiet(opts, _print)
    except _Reported as reported:
        return reported.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback, never a secret
        _print_error(f"{ErrorCode.INTERNAL_ERROR.value}: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(handler_main(sys.argv[1:]))
