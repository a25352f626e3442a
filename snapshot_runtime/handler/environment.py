"""The guest agent's side of the handler protocol: files it writes, files we keep.

* ``HandlerEnvironment.json`` in the handler directory (the agent runs every
  command with that directory as cwd): a JSON list whose first entry holds
  ``handlerEnvironment`` = ``{logFolder, configFolder, statusFolder,
  heartbeatFile, ...}``.
* ``<configFolder>/<N>.settings``: N is the sequence number, from the
  ``ConfigSequenceNumber`` environment variable the agent sets, else the
  newest ``N.settings`` by modification time (ties: the larger N), as the
  reference does.
* ``<handler_dir>/mrseq``: the last sequence number an ``enable`` handled (the
  reference's file of the same name). A second ``enable`` for it (the agent
  re-runs enable after its own restart) changes nothing.
* After decryption the settings file is rewritten without ``protectedSettings``
  (the reference's ``update_settings_file``): same name, mode, owner and
  modification time, so the agent's sequence handling and the "newest file"
  rule see nothing change. ``protectedSettingsCertThumbprint`` stays; a file
  with a thumbprint but no ``protectedSettings`` key is one we sanitised (the
  agent always writes the key, ``null`` when there is nothing protected).
* ``/etc/snapshot-runtime/handler.conf``: the operator's settings for jobs the
  agent starts (the agent's command line cannot carry ``--mounts``).

Parsing (``parse_handler_environment``, ``parse_sequence_number``,
``choose_sequence``, ``sanitised``, ``parse_handler_config``) is pure; the
rest are thin file shells. Every error is ``ConfigError``:
``HANDLER_ENVIRONMENT_INVALID`` for the environment, sequence and handler
config, ``INVALID_SETTINGS`` for an unreadable settings document. Messages
quote paths and key names, never settings content.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from snapshot_runtime.core.atomic_file import write_atomic
from snapshot_runtime.core.defaults import (
    DEFAULT_FREEZE_TIMEOUT,
    DEFAULT_RUN_DIR,
    DEFAULT_STATE_DIR,
)
from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.core.retention import (
    DEFAULT_RETENTION_DAYS,
    DEFAULT_RETENTION_KEEP,
    RetentionPolicy,
)
from snapshot_runtime.core.untrusted_file import read_at_most
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
    "HANDLER_ENVIRONMENT_FILE",
    "LAST_SEQUENCE_FILE",
    "MAX_SETTINGS_BYTES",
    "SEQUENCE_ENV",
    "HandlerConfig",
    "HandlerEnvironment",
    "JobConfig",
    "SettingsFile",
    "choose_sequence",
    "is_sanitised",
    "list_settings_files",
    "load_handler_config",
    "load_handler_environment",
    "merge_job_config",
    "parse_handler_config",
    "parse_handler_environment",
    "parse_sequence_number",
    "read_last_sequence",
    "read_settings_document",
    "rewrite_settings_file",
    "sanitised",
    "write_last_sequence",
]

HANDLER_ENVIRONMENT_FILE = "HandlerEnvironment.json"
SEQUENCE_ENV = "ConfigSequenceNumber"
LAST_SEQUENCE_FILE = "mrseq"
DEFAULT_HANDLER_CONFIG_PATH = "/etc/snapshot-runtime/handler.conf"
# The same defaults as job.DEFAULT_STATE_DIR / DEFAULT_RUN_DIR (a test keeps
# them equal); repeated so that ``enable`` does not import the job's modules.
DEFAULT_HANDLER_STATE_DIR = DEFAULT_STATE_DIR
DEFAULT_HANDLER_RUN_DIR = DEFAULT_RUN_DIR
MAX_SETTINGS_BYTES = 1024 * 1024
_MAX_SMALL_FILE = 64 * 1024
# Far above any real sequence number, far below anything that could overflow.
_MAX_SEQUENCE = 2**31 - 1
_SETTINGS_NAME = re.compile(r"([0-9]{1,10})\.settings")
_HANDLER_SECTION = "handler"


def _env_error(message: str) -> ConfigError:
    return ConfigError(ErrorCode.HANDLER_ENVIRONMENT_INVALID, message)


# --- HandlerEnvironment.json -----------------------------------------------------


@dataclass(frozen=True)
class HandlerEnvironment:
    """The folders the agent gave this handler (absolute paths)."""

    handler_dir: str
    log_folder: str
    config_folder: str
    status_folder: str
    heartbeat_file: str | None = None
    events_folder: str | None = None
    name: str | None = None
    version: str | None = None

    def settings_path(self, seq: int) -> str:
        return os.path.join(self.config_folder, f"{seq}.settings")

    def status_path(self, seq: int) -> str:
        return os.path.join(self.status_folder, f"{seq}.status")

    @property
    def log_path(self) -> str:
        """The reference's log file: ``<logFolder>/extension.log``."""
        return os.path.join(self.log_folder, "extension.log")


def _folder(env: Mapping[str, Any], key: str, handler_dir: str, *, required: bool) -> str | None:
    value = env.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _env_error(f"{HANDLER_ENVIRONMENT_FILE}: handlerEnvironment.{key} must be a path")
    if "\x00" in value:
        raise _env_error(f"{HANDLER_ENVIRONMENT_FILE}: handlerEnvironment.{key} holds a NUL")
    return os.path.normpath(os.path.join(handler_dir, value.strip()))


def parse_handler_environment(doc: object, *, handler_dir: str) -> HandlerEnvironment:
    """Decoded HandlerEnvironment.json -> folders. Pure; relative paths resolve
    against ``handler_dir``."""
    entry = doc[0] if isinstance(doc, list) and doc else doc
    if not isinstance(entry, Mapping):
        raise _env_error(
            f"{HANDLER_ENVIRONMENT_FILE} must be a list holding one object "
            '([{"version": 1.0, "handlerEnvironment": {...}}])'
        )
    env = entry.get("handlerEnvironment")
    if not isinstance(env, Mapping):
        raise _env_error(f"{HANDLER_ENVIRONMENT_FILE} has no handlerEnvironment object")
    log = _folder(env, "logFolder", handler_dir, required=True)
    config = _folder(env, "configFolder", handler_dir, required=True)
    status = _folder(env, "statusFolder", handler_dir, required=True)
    assert log is not None and config is not None and status is not None
    name = entry.get("name")
    version = entry.get("version")
    return HandlerEnvironment(
        handler_dir=handler_dir,
        log_folder=log,
        config_folder=config,
        status_folder=status,
        heartbeat_file=_folder(env, "heartbeatFile", handler_dir, required=False),
        events_folder=_folder(env, "eventsFolder", handler_dir, required=False),
        # The agent writes both (version as the number 1.0); the status
        # documents carry them as the reference does (str(1.0) == "1.0").
        name=name.strip() if isinstance(name, str) and name.strip() else None,
        version=(
            str(version).strip() or None
            if isinstance(version, str | int | float) and not isinstance(version, bool)
            else None
        ),
    )


def _read_capped(path: str, limit: int) -> bytes:
    """A regular file's bytes, at most ``limit``; OSError/ValueError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("is not a regular file")
        data = read_at_most(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"is larger than {limit} bytes")
    return data


def _decode_json(data: bytes) -> object:
    return json.loads(data.decode("utf-8-sig"))


def load_handler_environment(handler_dir: str) -> HandlerEnvironment:
    """Read ``<handler_dir>/HandlerEnvironment.json``; ConfigError if unusable."""
    handler_dir = os.path.abspath(handler_dir)
    path = os.path.join(handler_dir, HANDLER_ENVIRONMENT_FILE)
    try:
        data = _read_capped(path, _MAX_SMALL_FILE)
    except FileNotFoundError:
        raise _env_error(
            f"{path} does not exist: the guest agent runs handler commands from the "
            "directory holding it (or pass --handler-dir)"
        ) from None
    except OSError as exc:
        raise _env_error(f"{path} cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise _env_error(f"{path} {exc}") from None
    try:
        doc = _decode_json(data)
    except UnicodeDecodeError:
        raise _env_error(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _env_error(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise _env_error(f"{path} holds JSON nested too deeply") from None
    return parse_handler_environment(doc, handler_dir=handler_dir)


# --- sequence numbers ----------------------------------------------------------------


@dataclass(frozen=True)
class SettingsFile:
    seq: int
    mtime_ns: int


def parse_sequence_number(text: str, *, source: str = SEQUENCE_ENV) -> int:
    """A sequence number: decimal digits, 0 .. 2^31-1. Pure; ConfigError otherwise."""
    value = text.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise _env_error(f"{source} must be a whole number (the settings file's N), got {text!r}")
    seq = int(value)
    if seq > _MAX_SEQUENCE:
        raise _env_error(f"{source} {seq} is out of range")
    return seq


def choose_sequence(env_value: str | None, candidates: Sequence[SettingsFile]) -> int:
    """The sequence number to act on. Pure.

    The agent's ``ConfigSequenceNumber`` wins when set (whether or not that
    file exists: the caller reports a missing one); otherwise the newest
    settings file, ties broken by the larger N.
    """
    if env_value is not None and env_value.strip():
        return parse_sequence_number(env_value)
    if not candidates:
        raise _env_error(f"{SEQUENCE_ENV} is not set and the config folder holds no N.settings")
    newest = max(candidates, key=lambda c: (c.mtime_ns, c.seq))
    return newest.seq


def list_settings_files(config_folder: str) -> list[SettingsFile]:
    """Every ``N.settings`` in ``config_folder``; ConfigError if it cannot be listed."""
    try:
        names = os.listdir(config_folder)
    except FileNotFoundError:
        raise _env_error(f"config folder {config_folder} does not exist") from None
    except OSError as exc:
        raise _env_error(
            f"config folder {config_folder} cannot be listed: {exc.strerror}"
        ) from None
    found: list[SettingsFile] = []
    for name in names:
        match = _SETTINGS_NAME.fullmatch(name)
        if not match:
            continue
        with contextlib.suppress(OSError):
            info = os.stat(os.path.join(config_folder, name))
            if stat.S_ISREG(info.st_mode):
                found.append(SettingsFile(int(match.group(1)), info.st_mtime_ns))
    return found


def read_last_sequence(handler_dir: str) -> int | None:
    """The last sequence number ``enable`` handled here, or None."""
    try:
        data = _read_capped(os.path.join(handler_dir, LAST_SEQUENCE_FILE), 64)
        return parse_sequence_number(data.decode("ascii"), source=LAST_SEQUENCE_FILE)
    except (OSError, ValueError, ConfigError):
        return None  # absent or unreadable: nothing handled yet


def write_last_sequence(handler_dir: str, seq: int) -> None:
    """Record ``seq`` as handled (atomic). OSError on failure."""
    write_atomic(os.path.join(handler_dir, LAST_SEQUENCE_FILE), f"{seq}\n".encode(), mode=0o600)


# --- the settings file -----------------------------------------------------------------


def read_settings_document(path: str) -> dict[str, Any]:
    """The decoded JSON of a settings file; ConfigError(INVALID_SETTINGS) otherwise."""

    def invalid(message: str) -> ConfigError:
        return ConfigError(ErrorCode.INVALID_SETTINGS, f"settings file {path} {message}")

    try:
        data = _read_capped(path, MAX_SETTINGS_BYTES)
    except OSError as exc:
        raise invalid(f"cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise invalid(str(exc)) from None
    try:
        doc = _decode_json(data)
    except UnicodeDecodeError:
        raise invalid("is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise invalid(
            f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise invalid("holds JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise invalid('must hold a JSON object ({"runtimeSettings": [...]})')
    return doc


def _handler_settings(doc: Mapping[str, Any]) -> Mapping[str, Any] | None:
    runtime = doc.get("runtimeSettings")
    if isinstance(runtime, list) and runtime and isinstance(runtime[0], Mapping):
        handler = runtime[0].get("handlerSettings")
        if isinstance(handler, Mapping):
            return handler
    return None


def is_sanitised(doc: Mapping[str, Any]) -> bool:
    """True for a settings document whose protected settings we already removed."""
    handler = _handler_settings(doc)
    if handler is None or "protectedSettings" in handler:
        return False
    thumb = handler.get("protectedSettingsCertThumbprint")
    return isinstance(thumb, str) and bool(thumb.strip())


def sanitised(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """``doc`` without ``protectedSettings``, or None if it holds none. Pure."""
    handler = _handler_settings(doc)
    if handler is None or handler.get("protectedSettings") is None:
        return None
    copy = json.loads(json.dumps(doc))
    del copy["runtimeSettings"][0]["handlerSettings"]["protectedSettings"]
    result: dict[str, Any] = copy
    return result


def rewrite_settings_file(path: str, doc: Mapping[str, Any]) -> None:
    """Replace ``path`` atomically with ``doc``, keeping its mode, owner and times."""
    info = os.stat(path)
    data = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    write_atomic(path, data, mode=stat.S_IMODE(info.st_mode), like=info)


# --- /etc/snapshot-runtime/handler.conf ------------------------------------------------


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
            raise _env_error(f"{source}: {key} entries must be absolute mount points, got {item!r}")
    return items


def _absolute(value: str, key: str, source: str) -> str:
    text = value.strip()
    if not text.startswith("/"):
        raise _env_error(f"{source}: {key} must be an absolute path")
    return os.path.normpath(text)


def _retention(keep_text: str, days_text: str, source: str) -> RetentionPolicy:
    """``retention_keep`` (whole number) and ``retention_days`` (number); 0 is "no limit"."""
    keep_value = keep_text.strip()
    if not keep_value.isascii() or not keep_value.isdigit() or len(keep_value) > 9:
        raise _env_error(f"{source}: retention_keep must be a whole number (0: no count limit)")
    try:
        days = float(days_text)
    except ValueError:
        raise _env_error(f"{source}: retention_days must be a number (0: no age limit)") from None
    if not (days >= 0 and days <= 36500):  # also refuses nan
        raise _env_error(f"{source}: retention_days must lie between 0 and 36500")
    keep = int(keep_value)
    return RetentionPolicy(keep=keep or None, max_age_days=days or None)


def parse_handler_config(text: str, *, source: str) -> HandlerConfig:
    """INI text with one ``[handler]`` section -> HandlerConfig. Pure."""
    parser = configparser.ConfigParser(interpolation=None, default_section="__none__")
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise _env_error(f"{source} is not a valid INI file: {exc.message}") from None
    unknown_sections = [s for s in parser.sections() if s != _HANDLER_SECTION]
    if unknown_sections:
        raise _env_error(f"{source}: unknown section(s) {unknown_sections}; only [handler]")
    if not parser.has_section(_HANDLER_SECTION):
        return HandlerConfig(source=source)
    section = parser[_HANDLER_SECTION]
    unknown = sorted(set(section) - set(_CONFIG_KEYS))
    if unknown:
        raise _env_error(f"{source}: unknown key(s) {unknown}; known: {list(_CONFIG_KEYS)}")
    include = section.get("include_mounts")
    timeout_text = section.get("freeze_timeout_seconds", "60")
    try:
        timeout = float(timeout_text)
    except ValueError:
        raise _env_error(f"{source}: freeze_timeout_seconds must be a number") from None
    if not 1.0 <= timeout <= 600.0:
        raise _env_error(f"{source}: freeze_timeout_seconds must lie between 1 and 600")
    plugin = section.get("plugin_config", "").strip()
    method = section.get("snapshot_method", "").strip() or None
    if method is not None and method not in SNAPSHOT_METHODS:
        raise _env_error(f"{source}: snapshot_method must be one of {sorted(SNAPSHOT_METHODS)}")

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
            raise _env_error(f"handler config {path} does not exist") from None
        return HandlerConfig()
    except OSError as exc:
        raise _env_error(f"handler config {path} cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _env_error(f"handler config {path} is not a regular file")
        if info.st_uid != 0 and os.geteuid() == 0:
            raise _env_error(f"handler config {path} must be owned by root")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise _env_error(
                f"handler config {path} is writable by group or other; chmod 644 {path}"
            )
        data = os.read(fd, _MAX_SMALL_FILE + 1)
    except OSError as exc:
        raise _env_error(f"handler config {path} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > _MAX_SMALL_FILE:
        raise _env_error(f"handler config {path} is larger than {_MAX_SMALL_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _env_error(f"handler config {path} is not UTF-8 text") from None
    return parse_handler_config(text, source=path)


# --- the effective job configuration ----------------------------------------------------


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
