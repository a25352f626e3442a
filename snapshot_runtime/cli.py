"""`snapshot-runtime`: the command line.

Commands: ``validate`` (preflight, no freeze) and ``run`` (one snapshot job).
The environment is read here only; everything below takes parameters.
Never prints a traceback: unexpected exceptions are reported as
InternalError with a redacted one-line message.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from loguru import logger

from snapshot_runtime import __version__
from snapshot_runtime.errors import ErrorCode
from snapshot_runtime.job import DEFAULT_STATE_DIR, JobOptions, run_job
from snapshot_runtime.joblog import DEFAULT_LOG_PATH
from snapshot_runtime.preflight import preflight
from snapshot_runtime.redact import scrub
from snapshot_runtime.summary import report_json, report_text, table

__all__ = ["main"]


def _mount_list(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of mount points")
    return items


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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

    r = sub.add_parser("run", help="run one snapshot job")
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
        type=float,
        default=60.0,
        help="seconds before a forced thaw (default 60)",
    )
    r.add_argument(
        "--snapshot-deadline",
        type=float,
        help="seconds for all snapshot requests (default freeze timeout - 10)",
    )
    r.add_argument("--log-file", help="JSON-lines job log (default the reference's extension.log)")
    r.add_argument("--no-log-file", action="store_true", help="log to the console only")
    r.add_argument(
        "--state-dir", default=None, help="state directory (default /var/lib/snapshot-runtime)"
    )
    r.add_argument(
        "--status-file", help="local status file (default <state-dir>/status/<taskId>.status)"
    )
    r.add_argument("--no-watchdog", action="store_true", help=argparse.SUPPRESS)
    r.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    r.add_argument("--quiet", action="store_true", help="no console log lines, only the summary")
    return parser


def _validate(args: argparse.Namespace) -> int:
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
        print("OK" if report.ok else f"FAILED: {report.error.value if report.error else ''}")
    return 0 if report.ok else 1


def _run(args: argparse.Namespace) -> int:
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
        use_watchdog=not args.no_watchdog,
        console=None if (args.quiet or args.json) else sys.stderr,
    )
    report = run_job(options)
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        print(report_text(report))
    return report.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # loguru's default handler writes to stderr outside the freeze gate (I1):
    # the job installs its own gated sinks.
    logger.remove()
    try:
        if args.command == "validate":
            return _validate(args)
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback: report and exit non-zero
        print(
            f"{ErrorCode.INTERNAL_ERROR.value}: {scrub(type(exc).__name__ + ': ' + str(exc))}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
