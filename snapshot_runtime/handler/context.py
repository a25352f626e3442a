"""What every handler command starts from: its options and its context.

``HandlerOptions`` is built once from argv and the environment (``handler``).
``load_context`` finds HandlerEnvironment.json, the sequence number N and
``handler.conf``, and the ``Reporter`` for N; when one of them is unusable it
reports the failure (``Reported``) where it can: ``<statusFolder>/N.status``,
else the agent's conventional ``<handler dir>/status`` (``fallback_reporter``).
Reads files only; the status/log writes are the reporter's.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from snapshot_runtime.core.errors import ConfigError
from snapshot_runtime.handler.config import HandlerConfig, load_handler_config
from snapshot_runtime.handler.environment import HandlerEnvironment, load_handler_environment
from snapshot_runtime.handler.guards import ProcessedTasks
from snapshot_runtime.handler.settings_files import choose_sequence, list_settings_files
from snapshot_runtime.handler.status import Reporter
from snapshot_runtime.job.lock import JOB_LOCK_FILE, JobLock

__all__ = [
    "DEFAULT_CERT_DIR",
    "IDENTITY_FILE",
    "PROCESSED_FILE",
    "Context",
    "HandlerOptions",
    "fallback_reporter",
    "identity_path",
    "job_lock",
    "load_context",
    "processed_tasks",
]

DEFAULT_CERT_DIR = "/var/lib/waagent"
PROCESSED_FILE = os.path.join("handler", "processed-tasks.json")
# The VM identity the guards belong to (guards.reset_guards_on_new_identity).
IDENTITY_FILE = os.path.join("handler", "vm-identity")


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


def fallback_reporter(opts: HandlerOptions, out: Callable[[str], None]) -> Reporter:
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
    return Reporter(command=opts.command, status_path=path, log_path=None, seq=seq, out=out)


@dataclass(frozen=True)
class Context:
    """One command's HandlerEnvironment.json, sequence number, handler.conf and reporter."""

    env: HandlerEnvironment
    config: HandlerConfig
    seq: int
    reporter: Reporter


def load_context(opts: HandlerOptions, out: Callable[[str], None]) -> Context:
    """Environment, sequence number and handler config; raises ``Reported``."""
    try:
        env = load_handler_environment(opts.handler_dir)
    except ConfigError as exc:
        raise fallback_reporter(opts, out).fail(exc) from None
    reporter = Reporter(
        command=opts.command, status_path=None, log_path=env.log_path, seq=None, out=out
    )
    # The status documents carry the extension's name and version as the agent
    # laid them out, as the reference's do.
    reporter.name = env.name or reporter.name
    reporter.version = env.version or reporter.version
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
    return Context(env=env, config=config, seq=seq, reporter=reporter)


def job_lock(config: HandlerConfig) -> JobLock:
    return JobLock(os.path.join(config.run_dir, JOB_LOCK_FILE))


def processed_tasks(config: HandlerConfig) -> ProcessedTasks:
    return ProcessedTasks(os.path.join(config.state_dir, PROCESSED_FILE))


def identity_path(config: HandlerConfig) -> str:
    return os.path.join(config.state_dir, IDENTITY_FILE)
