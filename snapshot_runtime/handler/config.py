"""``/etc/snapshot-runtime/handler.conf`` and the job configuration merged from it.

The operator's settings for jobs the agent starts (the agent's command line
cannot carry ``--mounts``), and ``merge_job_config``: handler.conf over the
reference's vmbackup.conf over the settings' customSettings over the defaults,
key by key. ``parse_handler_config`` is pure; errors are
``ConfigError(HANDLER_ENVIRONMENT_INVALID)`` naming the key, never a value.
"""

from __future__ import annotations

import configparser
import os
import stat
from dataclasses import dataclass, field

from snapshot_runtime.core.defaults import (
    DEFAULT_FREEZE_TIMEOUT,
    DEFAULT_RUN_DIR,
    DEFAULT_STATE_DIR,
)
from snapshot_runtime.core.retention import (
    DEFAULT_RETENTION_DAYS,
    DEFAULT_RETENTION_KEEP,
    RetentionPolicy,
)
from snapshot_runtime.handler.environment import MAX_SMALL_FILE, handler_error
from snapshot_runtime.inputs.machine import (
    DEFAULT_HOSTING_CONFIG_PATH,
    DEFAULT_PRODUCT_UUID_PATH,
)
from snapshot_runtime.inputs.vmbackup_conf import (
    DEFAULT_VMBACKUP_CONF,
    SNAPSHOT_METHODS,
    CustomSettings,
    VmBackupConf,
)

__all__ = [
    "DEFAULT_HANDLER_CONFIG_PATH",
    "DEFAULT_HANDLER_RUN_DIR",
    "DEFAULT_HANDLER_STATE_DIR",
    "HandlerConfig",
    "JobConfig",
    "load_handler_config",
    "merge_job_config",
    "parse_handler_config",
]

DEFAULT_HANDLER_CONFIG_PATH = "/etc/snapshot-runtime/handler.conf"


# The same defaults as job.DEFAULT_STATE_DIR / DEFAULT_RUN_DIR (a test keeps
# them equal); repeated so that ``enable`` does not import the job's modules.
DEFAULT_HANDLER_STATE_DIR = DEFAULT_STATE_DIR


DEFAULT_HANDLER_RUN_DIR = DEFAULT_RUN_DIR


_HANDLER_SECTION = "handler"


@dataclass(frozen=True)
class HandlerConfig:
    """Operator settings for jobs the agent starts (``[handler]`` in handler.conf).

    * ``include_mounts``: freeze only these mount points (default: every
      eligible mount); a listed mount that is not mounted fails the freeze.
    * ``exclude_mounts``: never freeze these.
    * ``freeze_timeout_seconds``: forced thaw deadline (default 60).
    * ``plugin_config``: the pre/post-script config (default: the reference's
      ``/etc/azure/VMSnapshotScriptPluginConfig.json`` when present).
    * ``state_dir``, ``run_dir``: the runtime's state (processed task ids) and
      tmpfs directory (the single-job lock).
    * ``snapshot_method``: the snapshot mode (the reference's modes; above
      vmbackup.conf ``SnapshotMethod`` and customSettings ``takeSnapshotFrom``).
      Recorded; the host path acts on it.
    * ``vmbackup_conf``: the reference's config file (default
      ``/etc/azure/vmbackup.conf``).
    * ``product_uuid_file``, ``hosting_environment_config``: where the VM
      identity is read (``inputs.machine.read_vm_identity``).
    * ``retention`` (keys ``retention_keep``, default 60, and
      ``retention_days``, default 90; 0 turns that limit off): old job
      records and this handler's old ``N.status`` files pruned after each job
      (``job.housekeeping``).

    ``explicit`` names the keys the file sets: a key it sets wins over
    vmbackup.conf and customSettings (``merge_job_config``).
    """

    include_mounts: tuple[str, ...] | None = None
    exclude_mounts: tuple[str, ...] = ()
    freeze_timeout_seconds: float = DEFAULT_FREEZE_TIMEOUT
    plugin_config: str | None = None
    state_dir: str = DEFAULT_HANDLER_STATE_DIR
    run_dir: str = DEFAULT_HANDLER_RUN_DIR
    snapshot_method: str | None = None
    vmbackup_conf: str = DEFAULT_VMBACKUP_CONF
    product_uuid_file: str = DEFAULT_PRODUCT_UUID_PATH
    hosting_environment_config: str = DEFAULT_HOSTING_CONFIG_PATH
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    source: str | None = None
    explicit: frozenset[str] = frozenset()


_CONFIG_KEYS = (
    "include_mounts",
    "exclude_mounts",
    "freeze_timeout_seconds",
    "plugin_config",
    "state_dir",
    "run_dir",
    "snapshot_method",
    "vmbackup_conf",
    "product_uuid_file",
    "hosting_environment_config",
    "retention_keep",
    "retention_days",
)


def _mount_list(value: str, key: str, source: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    for item in items:
        if not item.startswith("/"):
            raise handler_error(
                f"{source}: {key} entries must be absolute mount points, got {item!r}"
            )
    return items


def _absolute(value: str, key: str, source: str) -> str:
    text = value.strip()
    if not text.startswith("/"):
        raise handler_error(f"{source}: {key} must be an absolute path")
    return os.path.normpath(text)


def _retention(keep_text: str, days_text: str, source: str) -> RetentionPolicy:
    """``retention_keep`` (whole number) and ``retention_days`` (number); 0 is "no limit"."""
    keep_value = keep_text.strip()
    if not keep_value.isascii() or not keep_value.isdigit() or len(keep_value) > 9:
        raise handler_error(f"{source}: retention_keep must be a whole number (0: no count limit)")
    try:
        days = float(days_text)
    except ValueError:
        raise handler_error(
            f"{source}: retention_days must be a number (0: no age limit)"
        ) from None
    if not (days >= 0 and days <= 36500):  # also refuses nan
        raise handler_error(f"{source}: retention_days must lie between 0 and 36500")
    keep = int(keep_value)
    return RetentionPolicy(keep=keep or None, max_age_days=days or None)


def parse_handler_config(text: str, *, source: str) -> HandlerConfig:
    """INI text with one ``[handler]`` section -> HandlerConfig. Pure."""
    parser = configparser.ConfigParser(interpolation=None, default_section="__none__")
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise handler_error(f"{source} is not a valid INI file: {exc.message}") from None
    unknown_sections = [s for s in parser.sections() if s != _HANDLER_SECTION]
    if unknown_sections:
        raise handler_error(f"{source}: unknown section(s) {unknown_sections}; only [handler]")
    if not parser.has_section(_HANDLER_SECTION):
        return HandlerConfig(source=source)
    section = parser[_HANDLER_SECTION]
    unknown = sorted(set(section) - set(_CONFIG_KEYS))
    if unknown:
        raise handler_error(f"{source}: unknown key(s) {unknown}; known: {list(_CONFIG_KEYS)}")
    include = section.get("include_mounts")
    timeout_text = section.get("freeze_timeout_seconds", "60")
    try:
        timeout = float(timeout_text)
    except ValueError:
        raise handler_error(f"{source}: freeze_timeout_seconds must be a number") from None
    if not 1.0 <= timeout <= 600.0:
        raise handler_error(f"{source}: freeze_timeout_seconds must lie between 1 and 600")
    plugin = section.get("plugin_config", "").strip()
    method = section.get("snapshot_method", "").strip() or None
    if method is not None and method not in SNAPSHOT_METHODS:
        raise handler_error(f"{source}: snapshot_method must be one of {sorted(SNAPSHOT_METHODS)}")

    def path(key: str, default: str) -> str:
        return _absolute(section.get(key, default), key, source)

    retention = _retention(
        section.get("retention_keep", str(DEFAULT_RETENTION_KEEP)),
        section.get("retention_days", f"{DEFAULT_RETENTION_DAYS:g}"),
        source,
    )
    return HandlerConfig(
        include_mounts=(
            _mount_list(include, "include_mounts", source) if include is not None else None
        ),
        exclude_mounts=_mount_list(section.get("exclude_mounts", ""), "exclude_mounts", source),
        freeze_timeout_seconds=timeout,
        plugin_config=_absolute(plugin, "plugin_config", source) if plugin else None,
        state_dir=_absolute(
            section.get("state_dir", DEFAULT_HANDLER_STATE_DIR), "state_dir", source
        ),
        run_dir=_absolute(section.get("run_dir", DEFAULT_HANDLER_RUN_DIR), "run_dir", source),
        snapshot_method=method,
        vmbackup_conf=path("vmbackup_conf", DEFAULT_VMBACKUP_CONF),
        product_uuid_file=path("product_uuid_file", DEFAULT_PRODUCT_UUID_PATH),
        hosting_environment_config=path("hosting_environment_config", DEFAULT_HOSTING_CONFIG_PATH),
        retention=retention,
        source=source,
        explicit=frozenset(section),
    )


def load_handler_config(path: str | None) -> HandlerConfig:
    """``path`` (must exist), or the default path when present, or the defaults.

    The file decides which filesystems a root process freezes: it must be a
    regular file owned by root and writable by nobody else.
    """
    explicit = path is not None
    path = path or DEFAULT_HANDLER_CONFIG_PATH
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if explicit:
            raise handler_error(f"handler config {path} does not exist") from None
        return HandlerConfig()
    except OSError as exc:
        raise handler_error(f"handler config {path} cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise handler_error(f"handler config {path} is not a regular file")
        if info.st_uid != 0 and os.geteuid() == 0:
            raise handler_error(f"handler config {path} must be owned by root")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise handler_error(
                f"handler config {path} is writable by group or other; chmod 644 {path}"
            )
        data = os.read(fd, MAX_SMALL_FILE + 1)
    except OSError as exc:
        raise handler_error(f"handler config {path} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SMALL_FILE:
        raise handler_error(f"handler config {path} is larger than {MAX_SMALL_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise handler_error(f"handler config {path} is not UTF-8 text") from None
    return parse_handler_config(text, source=path)


@dataclass(frozen=True)
class JobConfig:
    """What a job the agent starts runs with, and where each value came from.

    Precedence, per key (docs/extension-handler.md): handler.conf (ours) over
    vmbackup.conf (the reference's) over the settings' customSettings, as the
    reference puts its conf over customSettings; then the default.
    ``*_from`` names the source: "handler.conf", "vmbackup.conf",
    "customSettings" or "default".
    """

    exclude_mounts: tuple[str, ...]
    exclude_mounts_from: str
    freeze_timeout_seconds: float
    freeze_timeout_from: str
    snapshot_method: str | None
    snapshot_method_from: str
    write_log: bool
    upload_status: bool
    vmbackup: VmBackupConf

    def describe(self) -> str:
        """One log line: values and sources (mount points and modes only)."""
        return (
            f"exclude_mounts={list(self.exclude_mounts)} ({self.exclude_mounts_from}), "
            f"freeze_timeout={self.freeze_timeout_seconds:g}s ({self.freeze_timeout_from}), "
            f"snapshot_method={self.snapshot_method or '-'} ({self.snapshot_method_from}), "
            f"write_log={self.write_log}, upload_status={self.upload_status}"
        )


def merge_job_config(
    config: HandlerConfig, vmbackup: VmBackupConf, custom: CustomSettings
) -> JobConfig:
    """handler.conf over vmbackup.conf over customSettings, key by key. Pure."""
    if "exclude_mounts" in config.explicit:
        exclude, exclude_from = config.exclude_mounts, "handler.conf"
    elif vmbackup.mounts_to_skip is not None:
        exclude, exclude_from = vmbackup.mounts_to_skip, "vmbackup.conf"
    else:
        exclude, exclude_from = config.exclude_mounts, "default"
    if "freeze_timeout_seconds" in config.explicit:
        timeout, timeout_from = config.freeze_timeout_seconds, "handler.conf"
    elif vmbackup.freeze_timeout_seconds is not None:
        timeout, timeout_from = vmbackup.freeze_timeout_seconds, "vmbackup.conf"
    else:
        timeout, timeout_from = config.freeze_timeout_seconds, "default"
    method: str | None
    if config.snapshot_method is not None:
        method, method_from = config.snapshot_method, "handler.conf"
    elif vmbackup.snapshot_method is not None:
        method, method_from = vmbackup.snapshot_method, "vmbackup.conf"
    elif custom.take_snapshot_from is not None:
        method, method_from = custom.take_snapshot_from, "customSettings"
    else:
        method, method_from = None, "default"
    return JobConfig(
        exclude_mounts=exclude,
        exclude_mounts_from=exclude_from,
        freeze_timeout_seconds=timeout,
        freeze_timeout_from=timeout_from,
        snapshot_method=method,
        snapshot_method_from=method_from,
        write_log=vmbackup.write_log is not False,
        upload_status=vmbackup.upload_status_and_log is not False,
        vmbackup=vmbackup,
    )
