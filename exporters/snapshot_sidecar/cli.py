"""`snapshot-sidecar`: the long-running exporter on each VM (a systemd service).

    snapshot-sidecar [--spool DIR] [--state-dir DIR] [--listen HOST:PORT]
                     [--tls-cert FILE --tls-key FILE] [--basic-auth-file FILE] [--once]
                     [--no-backstop] [--no-resource-detection]
    snapshot-sidecar --hash-password < password      # a line for --basic-auth-file

The only reader of argv and of the environment (the standard OTEL_* variables
decide span forwarding, see ``span_exporter_from_env``). Exit codes: 0 clean
stop (SIGTERM/SIGINT) or ``--once`` done, 1 cannot start (state dir held by
another sidecar, bad TLS/auth files, address in use), 2 usage.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import logging.handlers
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType

from opentelemetry.sdk.trace.export import SpanExporter

from snapshot_runtime import __version__
from snapshot_runtime.freeze.ioctl import KernelFreezeIoctl
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.telemetry.otlp_settings import otlp_protocol
from snapshot_runtime.telemetry.tracing import OtlpProtocolUnavailable, otlp_span_exporter
from snapshot_sidecar.backstop import Backstop
from snapshot_sidecar.collectors import build_registry, stable_collectors, volatile_registry
from snapshot_sidecar.exposition import CachedExposition
from snapshot_sidecar.keys import Keys
from snapshot_sidecar.mirror import MirrorConfig
from snapshot_sidecar.resource_detection import ResourceRefresher, refresh
from snapshot_sidecar.sd_notify import Notifier, WatchdogPinger, watchdog_interval
from snapshot_sidecar.server import (
    DEFAULT_LISTEN,
    BasicAuth,
    MetricsServer,
    hash_password,
    tls_context,
)
from snapshot_sidecar.sidecar import (
    DEFAULT_SPOOL,
    DEFAULT_STATE_DIR,
    Sidecar,
    SidecarConfig,
    StateDirLocked,
    collector_failure_counter,
    lock_state_dir,
    standard_forwarders,
)
from snapshot_sidecar.spans import SpanConfig
from snapshot_sidecar.spool_reader import SpoolReader
from snapshot_sidecar.state import Ledger

__all__ = ["main", "span_exporter_from_env"]

_log = logging.getLogger("snapshot_sidecar")

# How long a forwarder thread may go without completing a step before the
# systemd watchdog pings stop (docs/operations.md "Sidecar: the systemd unit").
WORKER_STALE_SECONDS = 1800.0

# How long a thread may hold the GIL while another waits for it (CPython's
# default is 5 ms). A scrape's thread takes the GIL again after each socket
# call; behind a busy ingest, mirror or spans thread each of those waits cost
# up to the whole interval, several times per scrape: the /metrics p99 while
# ingesting (issue 15, benchmarks/sidecar_metrics.py). 0.5 ms bounds each wait
# at a cost of more (cheap) thread switches for the busy thread.
GIL_SWITCH_INTERVAL_SECONDS = 0.0005

# The standard variables (OpenTelemetry SDK configuration spec).
OTEL_SDK_DISABLED = "OTEL_SDK_DISABLED"
OTEL_TRACES_EXPORTER = "OTEL_TRACES_EXPORTER"
OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
OTEL_EXPORTER_OTLP_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
OTEL_EXPORTER_OTLP_TRACES_PROTOCOL = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"


def span_exporter_from_env(env: Mapping[str, str]) -> SpanExporter | None:
    """The OTLP exporter when the environment asks for one, else None.

    Forwarding is on when OTEL_EXPORTER_OTLP_ENDPOINT or
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, or OTEL_TRACES_EXPORTER names
    ``otlp``; off when OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none.
    OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL picks ``grpc`` (the grpc extra,
    imported only then) or ``http/protobuf`` (default). Everything else
    (endpoint, headers, timeout, certificates, compression) the exporter reads
    from the standard variables itself. Raises ``OtlpProtocolUnavailable``
    when grpc is asked for and not installed.
    """
    if env.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
        return None
    exporters = {e.strip().lower() for e in env.get(OTEL_TRACES_EXPORTER, "").split(",") if e}
    if "none" in exporters:
        return None
    wanted = (
        "otlp" in exporters
        or bool(env.get(OTEL_EXPORTER_OTLP_ENDPOINT))
        or bool(env.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT))
    )
    if not wanted:
        return None
    raw = env.get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "").strip()
    return otlp_span_exporter(otlp_protocol(raw or env.get(OTEL_EXPORTER_OTLP_PROTOCOL)))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="snapshot-sidecar",
        description="Ingest the snapshot runtime's spool: /metrics, log mirroring, "
        "span forwarding, thaw backstop.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--spool", default=DEFAULT_SPOOL, help=f"spool directory ({DEFAULT_SPOOL})")
    p.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR, help=f"persistent state ({DEFAULT_STATE_DIR})"
    )
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        help=f"HOST:PORT for /metrics (default {DEFAULT_LISTEN}: loopback only)",
    )
    p.add_argument("--tls-cert", help="PEM certificate (chain) for HTTPS on /metrics")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--basic-auth-file", help="user:scrypt$... lines (see --hash-password)")
    p.add_argument("--once", action="store_true", help="one pass of everything, then exit")
    p.add_argument("--poll-interval", type=float, default=1.0, help="seconds between passes")
    p.add_argument("--keep-jobs", action="store_true", help="never delete handled job directories")
    p.add_argument(
        "--mirror-batch-bytes",
        type=int,
        default=256 * 1024,
        help="write a running job's log once this much is waiting (256 KiB)",
    )
    p.add_argument(
        "--mirror-max-bytes",
        type=int,
        default=16 * 1024 * 1024,
        help="largest single blob write (16 MiB, at most 100 MiB; capped at 4 MiB "
        "except for append blobs on service version 2022-11-02 or later)",
    )
    p.add_argument(
        "--mirror-flush-seconds",
        type=float,
        default=60.0,
        help="write waiting log lines at least this often (60)",
    )
    p.add_argument(
        "--blob-timeout", type=float, default=30.0, help="blob request read timeout (30 s)"
    )
    p.add_argument(
        "--give-up-after",
        type=float,
        default=24 * 3600.0,
        help="stop retrying a completed job's log/spans after this many seconds (1 day)",
    )
    p.add_argument(
        "--span-backlog-bytes",
        type=int,
        default=16 * 1024 * 1024,
        help="most span bytes kept waiting for the collector (16 MiB)",
    )
    p.add_argument("--no-backstop", action="store_true", help="do not thaw left-frozen mounts")
    p.add_argument(
        "--no-resource-detection",
        action="store_true",
        help="never ask Azure IMDS for the VM's resource attributes (cached daily otherwise)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--log-file",
        help="append logs here instead of stderr; reopened after logrotate moves it",
    )
    p.add_argument(
        "--hash-password",
        action="store_true",
        help="read a password (stdin or prompt), print a hash line for --basic-auth-file",
    )
    return p


def _hash_password_main(user: str = "prometheus") -> int:
    password = (
        getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    )
    if not password:
        print("snapshot-sidecar: empty password", file=sys.stderr)
        return 2
    print(f"{user}:{hash_password(password)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.hash_password:
        return _hash_password_main()
    # WatchedFileHandler reopens the path once logrotate has renamed it (its
    # `create` rule), so no line is lost and none lands in a rotated file late.
    handler: logging.Handler = (
        logging.handlers.WatchedFileHandler(args.log_file, encoding="utf-8")
        if args.log_file
        else logging.StreamHandler(sys.stderr)
    )
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[handler],
    )
    if bool(args.tls_cert) != bool(args.tls_key):
        print("snapshot-sidecar: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        lock_fd = lock_state_dir(args.state_dir)
    except StateDirLocked as exc:
        print(f"snapshot-sidecar: {exc}", file=sys.stderr)
        return 1
    try:
        return _run(args, dict(os.environ))
    finally:
        os.close(lock_fd)


def _refresh_once(state_dir: str, spool: str) -> None:
    try:
        refresh(state_dir, spool)
    except OSError as exc:
        _log.warning("Azure resource cache not written: %s", exc)


def _run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    stop = threading.Event()
    ledger = Ledger(args.state_dir)
    if ledger.reset_reason:
        _log.error("%s", ledger.reset_reason)
    try:
        keys = Keys.load_or_create(args.state_dir)
    except ValueError as exc:  # an unusable key file: say which, in one line
        print(f"snapshot-sidecar: {exc}", file=sys.stderr)
        return 1
    keys.publish(args.spool)
    refresher = None
    if not args.no_resource_detection:
        refresher = ResourceRefresher(args.state_dir, args.spool, stop)
        if args.once:
            _refresh_once(args.state_dir, args.spool)
    reader = SpoolReader(args.spool)
    mirror_config = MirrorConfig(
        min_batch=args.mirror_batch_bytes,
        max_batch=args.mirror_max_bytes,
        flush_seconds=args.mirror_flush_seconds,
        give_up_seconds=args.give_up_after,
        policy=BlobPolicy(
            request_timeout=args.blob_timeout, connect_timeout=5.0, retries=3, backoff_seconds=0.5
        ),
    )
    span_config = SpanConfig(
        backlog_bytes=args.span_backlog_bytes, give_up_seconds=args.give_up_after
    )
    config = SidecarConfig(
        poll_seconds=args.poll_interval,
        keep_jobs=args.keep_jobs,
        mirror=mirror_config,
        spans=span_config,
    )
    try:
        exporter = span_exporter_from_env(env)
    except OtlpProtocolUnavailable as exc:
        # Still start: the thaw backstop and /metrics matter more than spans (I4).
        _log.error("spans not forwarded: %s", exc)
        exporter = None
    notifier = Notifier(env)
    interval = None if args.once else watchdog_interval(env)
    # The main loop with no completed pass for a whole WatchdogSec is hung. A
    # forwarder's step mirrors every pending job, each bounded by its blob
    # timeouts and retries: after a long outage a step may take many minutes
    # and still be making progress, so a worker gets WORKER_STALE_SECONDS.
    watchdog = (
        WatchdogPinger(
            notifier,
            interval,
            stale_after=2 * interval,
            worker_stale_after=max(2 * interval, WORKER_STALE_SECONDS),
        )
        if interval is not None
        else None
    )
    sidecar = Sidecar(
        reader=reader,
        ledger=ledger,
        forwarders=standard_forwarders(reader, ledger, keys, config, exporter=exporter, stop=stop),
        backstop=None if args.no_backstop else Backstop(KernelFreezeIoctl()),
        config=config,
        stop=stop,
        watchdog=watchdog,
    )
    if args.once:
        sidecar.run_once()
        sidecar.close()
        return 0

    exposition = CachedExposition(
        build_registry(
            stable_collectors(lambda: ledger.published, __version__),
            on_failure=collector_failure_counter(ledger),
        ),
        volatile_registry(),
        lambda: ledger.version,
    )
    try:
        server = MetricsServer(
            exposition,
            args.listen,
            tls=tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None,
            auth=BasicAuth.from_file(args.basic_auth_file) if args.basic_auth_file else None,
        )
    except (OSError, ValueError) as exc:
        print(f"snapshot-sidecar: cannot serve /metrics: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    # Each commit is rendered on its own thread: a scrape only copies bytes.
    exposition.start_renderer(ledger.changed, stop)
    server.start()
    if refresher is not None:
        refresher.start()  # IMDS at most daily, off the start-up path
    _log.info(
        "snapshot-sidecar %s: spool %s, state %s, /metrics on %s, spans %s",
        __version__,
        args.spool,
        args.state_dir,
        server.url,
        "forwarded over OTLP" if exporter is not None else "not forwarded (no OTLP endpoint)",
    )

    def ready() -> None:
        notifier.notify(f"READY=1\nMAINPID={os.getpid()}")

    try:
        # READY=1 once /metrics answers and the first ingest pass is done.
        sidecar.run(on_started=ready)
    finally:
        notifier.notify("STOPPING=1")
        server.close()
        if exporter is not None:
            exporter.shutdown()
        notifier.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
