"""`snapshot-runtime`: the command line.

Commands: ``validate`` (preflight, no freeze), ``run`` (one snapshot job),
``trace`` (a job's spans as a waterfall) and ``recover`` (close the records of
jobs whose runtime died, replaying their spool log lines into the local log).
The environment is read here only (``TRACEPARENT``, ``OTEL_EXPORTER_OTLP_*``;
docs/telemetry.md); everything below takes parameters.
Never prints a traceback: unexpected exceptions are reported as
InternalError with a redacted one-line message.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import textwrap
from collections.abc import Mapping, Sequence
from types import FrameType

from snapshot_runtime import __version__
from snapshot_runtime.core.defaults import (
    DEFAULT_FREEZE_TIMEOUT,
    DEFAULT_LOG_PATH,
    DEFAULT_RETENTION_DAYS,
    DEFAULT_RETENTION_KEEP,
    DEFAULT_RUN_DIR,
    DEFAULT_SPOOL_DIR,
    DEFAULT_SPOOL_MAX_BYTES,
    DEFAULT_STATE_DIR,
)
from snapshot_runtime.core.errors import ErrorCode, SnapshotError

# typing (~2 ms) is not imported for --help: NoReturn is only an annotation.
# mypy treats a name TYPE_CHECKING as true wherever it comes from.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import typing

# Each command imports what it needs when it runs (``--help`` and argument
# errors import none of it): benchmarks/startup.py measures the difference.

__all__ = ["main", "otlp_traces_endpoint", "otlp_traces_protocol"]

# Environment variables read by the CLI (docs/telemetry.md); the OTLP exporter
# itself also reads OTEL_EXPORTER_OTLP_{,TRACES_}{HEADERS,CERTIFICATE,COMPRESSION}.
TRACEPARENT = "TRACEPARENT"
OTEL_SDK_DISABLED = "OTEL_SDK_DISABLED"
OTEL_TRACES_EXPORTER = "OTEL_TRACES_EXPORTER"
OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
OTEL_EXPORTER_OTLP_TIMEOUT = "OTEL_EXPORTER_OTLP_TIMEOUT"
OTEL_EXPORTER_OTLP_TRACES_TIMEOUT = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
OTEL_EXPORTER_OTLP_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
OTEL_EXPORTER_OTLP_TRACES_PROTOCOL = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
DEFAULT_OTLP_TIMEOUT = 5.0
MAX_OTLP_TIMEOUT = 30.0
# A usage error (a bad option, a --settings path that is not a readable file):
# sysexits' EX_USAGE, not argparse's 2, which is a job's ThawFailed/InternalError.
EXIT_USAGE = 64


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors exiting EXIT_USAGE (subcommands inherit it)."""

    def error(self, message: str) -> typing.NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _run_exit_codes() -> str:
    """``run --help``'s epilog: every exit status a job can end with, from ErrorCode."""
    by_status: dict[int, list[str]] = {}
    for code in ErrorCode:
        status = SnapshotError(code, "").exit_code
        by_status.setdefault(status, []).append(code.value)

    def entry(status: int, text: str) -> list[str]:
        return textwrap.wrap(
            text,
            width=79,
            initial_indent=f"  {status:<4} ",
            subsequent_indent=" " * 7,
            break_on_hyphens=False,
        )

    lines = ["exit status:"]
    lines += entry(0, "a snapshot was taken (any consistency: see the summary; warnings included)")
    lines += entry(
        1,
        "no snapshot, with an error code that has no 8-bit number ("
        + ", ".join(sorted(by_status.pop(1, [])))
        + "); or an unexpected error (InternalError on stderr)",
    )
    for status in sorted(by_status):
        lines += entry(status, "no snapshot: " + ", ".join(sorted(by_status[status])))
    lines += [
        f"  {EXIT_USAGE:<4} usage error (bad option, --settings not a readable file): no job ran",
        "  130  interrupted (Ctrl-C); 128+N: stopped by signal N (SIGTERM 143, SIGHUP 129),",
        "       after thawing and running the post-script",
    ]
    return "\n".join(lines)


def otlp_traces_protocol(env: Mapping[str, str]) -> str:
    """``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``. Pure."""
    # Imported here (pure, no OpenTelemetry): only `run` and `validate` need it.
    from snapshot_runtime.telemetry.otlp_settings import otlp_protocol  # noqa: PLC0415

    raw = env.get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "").strip()
    return otlp_protocol(raw or env.get(OTEL_EXPORTER_OTLP_PROTOCOL))


def otlp_traces_endpoint(env: Mapping[str, str]) -> str | None:
    """The OTLP traces endpoint the environment asks for, or None. Pure.

    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is used verbatim;
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` gets ``/v1/traces`` appended for
    http/protobuf and is used as is for grpc (the OTLP spec: gRPC has no path).
    ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off.
    """
    if env.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
        return None
    if env.get(OTEL_TRACES_EXPORTER, "").strip().lower() == "none":
        return None
    traces = env.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "").strip()
    if traces:
        return traces
    base = env.get(OTEL_EXPORTER_OTLP_ENDPOINT, "").strip()
    if base:
        if otlp_traces_protocol(env) == "grpc":
            return base
        return base.rstrip("/") + "/v1/traces"
    return None


def _otlp_timeout(env: Mapping[str, str]) -> float:
    """Seconds (the Python OTLP/HTTP exporter reads these variables as seconds), capped."""
    for name in (OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, OTEL_EXPORTER_OTLP_TIMEOUT):
        raw = env.get(name, "").strip()
        if raw:
            try:
                value = float(raw)
            except ValueError:
                continue
            if value > 0:
                return min(value, MAX_OTLP_TIMEOUT)
    return DEFAULT_OTLP_TIMEOUT


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value!r}")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number of bytes") from None
    if number <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return number


def _count_or_off(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number (0: no limit)") from None
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def _days_or_off(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number of days (0: no limit)") from None
    if not (math.isfinite(number) and number >= 0):
        raise argparse.ArgumentTypeError("must be a number of days, 0 or more")
    return number


def _mount_list(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of mount points")
    return items


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="snapshot-runtime",
        description="Application-consistent snapshots of Linux VMs (Azure VMSnapshot compatible).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="preflight the plugin config and scripts, without freezing")
    v.add_argument(
        "--config", help="plugin config path (default /etc/azure/VMSnapshotScriptPluginConfig.json)"
    )
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.add_argument(
        "--run-scripts", action="store_true", help="run pre then post for real (dry run: no freeze)"
    )
    v.add_argument(
        "--mounts",
        type=_mount_list,
        help="mount points a job would freeze (default: every eligible)",
    )

    r = sub.add_parser(
        "run",
        help="run one snapshot job",
        epilog=_run_exit_codes(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "--settings", required=True, help="handler settings JSON (public + protected settings)"
    )
    r.add_argument("--config", help="plugin config path")
    r.add_argument(
        "--mounts", type=_mount_list, help="freeze only these mount points (comma-separated)"
    )
    r.add_argument("--exclude-mounts", type=_mount_list, default=(), help="never freeze these")
    r.add_argument(
        "--freeze-timeout",
        type=_seconds,
        default=DEFAULT_FREEZE_TIMEOUT,
        help="seconds before a forced thaw (default 60)",
    )
    r.add_argument(
        "--snapshot-deadline",
        type=_seconds,
        help="seconds for all snapshot requests (default freeze timeout - 10)",
    )
    r.add_argument("--log-file", help="JSON-lines job log (default the reference's extension.log)")
    r.add_argument("--no-log-file", action="store_true", help="log to the console only")
    r.add_argument(
        "--state-dir", default=None, help=f"state directory (default {DEFAULT_STATE_DIR})"
    )
    r.add_argument(
        "--status-file", help="local status file (default <state-dir>/status/<taskId>.status)"
    )
    r.add_argument(
        "--run-dir",
        default=None,
        help=f"runtime directory: the single-job lock (default {DEFAULT_RUN_DIR})",
    )
    r.add_argument(
        "--keep-records",
        type=_count_or_off,
        default=DEFAULT_RETENTION_KEEP,
        help="after the job keep at most this many job records and status files in the "
        f"state dir (default {DEFAULT_RETENTION_KEEP}; 0: no count limit)",
    )
    r.add_argument(
        "--keep-days",
        type=_days_or_off,
        default=DEFAULT_RETENTION_DAYS,
        help=f"...and none older than this (default {DEFAULT_RETENTION_DAYS:g}; 0: no age limit)",
    )
    r.add_argument("--no-watchdog", action="store_true", help=argparse.SUPPRESS)
    r.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    r.add_argument("--quiet", action="store_true", help="no console log lines, only the summary")
    r.add_argument(
        "--spool", help=f"the sidecar hand-off directory (default {DEFAULT_SPOOL_DIR}; a tmpfs)"
    )
    r.add_argument(
        "--spool-max-bytes",
        type=_positive_int,
        default=None,  # DEFAULT_SPOOL_MAX_BYTES, resolved by `run`
        help="cap on the whole spool; beyond it log lines and spans are dropped and counted",
    )
    r.add_argument(
        "--no-telemetry",
        action="store_true",
        help="no spans and no spool (the local log file stays)",
    )

    t = sub.add_parser(
        "trace",
        help="show a job's spans as a waterfall (from the local record)",
        description="Find a job by its taskId or its trace id (32 hex digits, as a tracing "
        "backend shows it) and show its spans. Exit 1 when no job is found.",
    )
    t.add_argument("task_id", metavar="TASKID|TRACEID")
    t.add_argument(
        "--state-dir", default=None, help=f"state directory (default {DEFAULT_STATE_DIR})"
    )
    t.add_argument("--spool", help=f"spool directory (default {DEFAULT_SPOOL_DIR})")
    t.add_argument("--json", action="store_true", help="print the record and spans as JSON")
    t.add_argument("--width", type=int, default=None, help="line width (default: the terminal)")
    t.add_argument(
        "--attrs",
        action="store_true",
        help="show every span's attributes under it (which disk, which mount, exit codes)",
    )

    c = sub.add_parser(
        "recover", help="close records of jobs whose runtime died; replay their log lines"
    )
    c.add_argument("--spool", help=f"spool directory (default {DEFAULT_SPOOL_DIR})")
    c.add_argument("--json", action="store_true", help="print one JSON object")

    h = sub.add_parser(
        "handler",
        help="the Azure extension handler commands (install, enable, disable, uninstall, update)",
        add_help=False,
    )
    h.add_argument("handler_args", nargs=argparse.REMAINDER)
    return parser


def _validate(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415 - per command, not for --help

    # Imported per command: `trace` and `recover` need none of the job's
    # dependencies (azure-storage-blob alone costs ~0.5 s to import).
    from snapshot_runtime.job.preflight import preflight  # noqa: PLC0415
    from snapshot_runtime.job.summary import table  # noqa: PLC0415

    report = preflight(
        config_path=args.config, run_scripts=args.run_scripts, include_mounts=args.mounts
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(
            table(
                ["check", "result", "detail"],
                [[c.name, c.status.upper(), c.detail] for c in report.checks],
            )
        )
        for phase, result in report.scripts.items():
            for stream in ("stdout", "stderr"):
                text = getattr(result, stream)
                if text:
                    print(f"\n{phase}-script {stream}:\n{text.rstrip()}")
        print()
        if not report.ok:
            print(f"FAILED: {report.error.value if report.error else ''}")
        elif report.warnings:
            # Yellow, as a job's status health would be: it runs, and says so.
            print("OK with warnings (yellow): " + ", ".join(w.value for w in report.warnings))
        else:
            print("OK")
    return 0 if report.ok else 1


def _settings_usage_error(path: str) -> str | None:
    """Why ``--settings`` cannot be a settings file, or None. A typo is the
    operator's, not a job's: no job record, no unknown.status (EXIT_USAGE)."""
    if not os.path.exists(path):
        return f"--settings {path}: no such file"
    if not os.path.isfile(path):
        return f"--settings {path}: not a regular file"
    if not os.access(path, os.R_OK):
        return f"--settings {path}: not readable"
    return None


def _run(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415 - per command, not for --help

    problem = _settings_usage_error(args.settings)
    if problem is not None:
        print(f"snapshot-runtime run: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from snapshot_runtime.core.interrupt import JobInterrupted  # noqa: PLC0415
    from snapshot_runtime.core.retention import RetentionPolicy  # noqa: PLC0415
    from snapshot_runtime.job.housekeeping import prune_state_dir  # noqa: PLC0415
    from snapshot_runtime.job.records import JobOptions  # noqa: PLC0415
    from snapshot_runtime.job.run import run_job  # noqa: PLC0415
    from snapshot_runtime.job.summary import report_json, report_text  # noqa: PLC0415

    def stop(signum: int, _frame: FrameType | None) -> None:
        # systemd stopping the unit, a hangup: end the job as cleanly as Ctrl-C does.
        raise JobInterrupted(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)

    env = os.environ
    log_path = None if args.no_log_file else (args.log_file or DEFAULT_LOG_PATH)
    options = JobOptions(
        settings_path=args.settings,
        config_path=args.config,
        include_mounts=args.mounts,
        exclude_mounts=tuple(args.exclude_mounts),
        freeze_timeout_seconds=args.freeze_timeout,
        snapshot_deadline_seconds=args.snapshot_deadline,
        log_path=log_path,
        state_dir=args.state_dir or DEFAULT_STATE_DIR,
        status_path=args.status_file,
        run_dir=args.run_dir or DEFAULT_RUN_DIR,
        use_watchdog=not args.no_watchdog,
        console=None if (args.quiet or args.json) else sys.stderr,
        telemetry=not args.no_telemetry,
        spool_dir=args.spool or DEFAULT_SPOOL_DIR,
        spool_max_bytes=args.spool_max_bytes or DEFAULT_SPOOL_MAX_BYTES,
        traceparent=env.get(TRACEPARENT) or None,
        otlp_endpoint=otlp_traces_endpoint(env),
        otlp_timeout_seconds=_otlp_timeout(env),
        otlp_protocol=otlp_traces_protocol(env),
        # One job per machine, shared with the handler's daemon (job.lock).
        single_job_lock=True,
    )
    report = run_job(options)
    # After the job (never in its window): old records and status files go.
    pruned = prune_state_dir(
        options.state_dir,
        RetentionPolicy(keep=args.keep_records or None, max_age_days=args.keep_days or None),
    )
    for error in pruned.errors:
        print(f"snapshot-runtime: housekeeping: not removed: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        print(report_text(report))
    return report.exit_code


def _trace(args: argparse.Namespace) -> int:
    import dataclasses  # noqa: PLC0415
    import json  # noqa: PLC0415 - per command, not for --help
    import shutil  # noqa: PLC0415

    from snapshot_runtime.telemetry.trace_view import load_job, rows, waterfall  # noqa: PLC0415

    state_dir = args.state_dir or DEFAULT_STATE_DIR
    spool_dir = args.spool or DEFAULT_SPOOL_DIR
    view = load_job(args.task_id, state_dir=state_dir, spool_dir=spool_dir)
    if view is None:
        print(
            f"not found: no job with taskId or trace id {args.task_id!r} in "
            f"{os.path.join(state_dir, 'jobs')} or {spool_dir}",
            file=sys.stderr,
        )
        return 1
    if args.json:
        doc = {
            "source": view.source,
            "record": view.record,
            "waterfall": [dataclasses.asdict(r) for r in rows(view.spans)],
            "spans": view.spans,
        }
        print(json.dumps(doc, indent=2, default=str))
    else:
        width = args.width or shutil.get_terminal_size((100, 24)).columns
        print(waterfall(view, width=width, attributes=args.attrs))
    return 0


def _recover(args: argparse.Namespace) -> int:
    import dataclasses  # noqa: PLC0415
    import json  # noqa: PLC0415 - per command, not for --help

    from snapshot_runtime.job.summary import table  # noqa: PLC0415
    from snapshot_runtime.telemetry.spool_recovery import recover_interrupted  # noqa: PLC0415

    found = recover_interrupted(args.spool or DEFAULT_SPOOL_DIR)
    if args.json:
        print(json.dumps({"recovered": [dataclasses.asdict(f) for f in found]}, indent=2))
    elif not found:
        print("no interrupted job in the spool")
    else:
        print(
            table(
                ["task", "spool lines", "replayed", "log file", "note"],
                [
                    [
                        f.task_id or "-",
                        str(f.lines_in_spool),
                        str(f.lines_replayed),
                        f.log_file or "-",
                        f.note or "",
                    ]
                    for f in found
                ],
            )
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import logging  # noqa: PLC0415 - not for --help

    from snapshot_runtime.telemetry.loguru_logger import root_logger  # noqa: PLC0415

    # loguru's default handler writes to stderr outside the freeze gate (I1):
    # the job installs its own gated sinks.
    root_logger().remove()
    # The OTel SDK and exporter log through stdlib logging; without a handler the
    # last-resort handler would print to stderr. Failures are in the job record.
    logging.getLogger("opentelemetry").addHandler(logging.NullHandler())
    logging.getLogger("opentelemetry").propagate = False
    try:
        if args.command == "validate":
            return _validate(args)
        if args.command == "trace":
            return _trace(args)
        if args.command == "recover":
            return _recover(args)
        if args.command == "handler":
            from snapshot_runtime.handler.commands import handler_main  # noqa: PLC0415 - per command

            return handler_main(args.handler_args)
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback: report and exit non-zero
        from snapshot_runtime.core.redact import scrub  # noqa: PLC0415 - not for --help

        print(
            f"{ErrorCode.INTERNAL_ERROR.value}: {scrub(type(exc).__name__ + ': ' + str(exc))}",
            file=sys.stderr,
        )
        return 1
    except BaseException as exc:
        signum = getattr(exc, "signum", None)
        if isinstance(signum, int):  # job.JobInterrupted (not imported for every command)
            return 128 + signum
        raise


if __name__ == "__main__":
    sys.exit(main())
