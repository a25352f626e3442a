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
5. N.status "success" code 4 (the reference's interim report), then the
   daemon: a new session, stdio on /dev/null, the lock's descriptor
   inherited, the decrypted settings written to its stdin pipe (never argv,
   environment or disk); enable exits 0.

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

This module is the command surface (argv, dispatch, the lifecycle commands).
The rest: ``handler_context`` (options, environment, N, handler.conf),
``handler_enable``, ``handler_daemon`` (the hand-off and the job),
``handler_status`` (the status file, the extension log, stdout/stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Sequence

from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.handler.config import HandlerConfig, load_handler_config
from snapshot_runtime.handler.context import (
    DEFAULT_CERT_DIR,
    HandlerOptions,
    job_lock,
    processed_tasks,
)
from snapshot_runtime.handler.daemon import run_daemon
from snapshot_runtime.handler.enable import run_enable
from snapshot_runtime.handler.environment import load_handler_environment
from snapshot_runtime.handler.settings_files import SEQUENCE_ENV
from snapshot_runtime.handler.status import Reported, Reporter, print_error, print_line

__all__ = ["handler_main"]

COMMANDS = ("install", "enable", "disable", "uninstall", "update")


# --- install, disable, uninstall, update -------------------------------------------------


def _quiet(opts: HandlerOptions, out: Callable[[str], None]) -> int:
    """The lifecycle commands: minimal, logged, always exit 0 unless they fail."""
    reporter: Reporter | None = None
    with contextlib.suppress(ConfigError):
        env = load_handler_environment(opts.handler_dir)
        reporter = Reporter(
            command=opts.command, status_path=None, log_path=env.log_path, seq=None, out=out
        )
    try:
        config = load_handler_config(opts.handler_config)
    except ConfigError as exc:
        print_error(f"{opts.command}: warning: {exc}")
        config = HandlerConfig()
    message = {
        "install": "state directories ready",
        "disable": "nothing runs between jobs; a running job finishes on its own",
        "update": "nothing to migrate",
        "uninstall": "handler state removed",
    }[opts.command]
    try:
        if opts.command == "install":
            os.makedirs(os.path.dirname(processed_tasks(config).path), mode=0o700, exist_ok=True)
            os.makedirs(config.run_dir, mode=0o700, exist_ok=True)
        elif opts.command == "uninstall":
            _uninstall(opts, config)
    except OSError as exc:
        print_error(f"{opts.command}: {ErrorCode.INTERNAL_ERROR.value}: {exc}")
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
    lock = job_lock(config)
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


def handler_main(argv: Sequence[str]) -> int:
    """Run one handler command; the exit status for the guest agent."""
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:  # usage errors: argparse already printed why
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "daemon" and (args.seq is None or args.lock_fd is None):
        print_error("daemon is internal: started by enable with --seq and --lock-fd")
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
            return run_enable(opts, print_line)
        if opts.command == "daemon":
            return run_daemon(opts, print_line)
        return _quiet(opts, print_line)
    except Reported as reported:
        return reported.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback, never a secret
        print_error(f"{ErrorCode.INTERNAL_ERROR.value}: {type(exc).__name__}: {exc}")
        return 1
