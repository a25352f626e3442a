"""The guest agent's ``HandlerEnvironment.json``, and the bounded readers every handler file uses.

``HandlerEnvironment.json`` sits in the handler directory (the agent runs every
command with that directory as cwd): a JSON list whose first entry holds
``handlerEnvironment`` = ``{logFolder, configFolder, statusFolder,
heartbeatFile, ...}``. ``parse_handler_environment`` is pure;
``load_handler_environment`` is the thin file shell. Errors are
``ConfigError(HANDLER_ENVIRONMENT_INVALID)`` (``handler_error``); messages quote
paths and key names, never file content.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.core.untrusted_file import read_at_most

__all__ = [
    "HANDLER_ENVIRONMENT_FILE",
    "MAX_SMALL_FILE",
    "HandlerEnvironment",
    "decode_json",
    "handler_error",
    "load_handler_environment",
    "parse_handler_environment",
    "read_capped",
]

HANDLER_ENVIRONMENT_FILE = "HandlerEnvironment.json"


MAX_SMALL_FILE = 64 * 1024


def handler_error(message: str) -> ConfigError:
    return ConfigError(ErrorCode.HANDLER_ENVIRONMENT_INVALID, message)


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
        raise handler_error(f"{HANDLER_ENVIRONMENT_FILE}: handlerEnvironment.{key} must be a path")
    if "\x00" in value:
        raise handler_error(f"{HANDLER_ENVIRONMENT_FILE}: handlerEnvironment.{key} holds a NUL")
    return os.path.normpath(os.path.join(handler_dir, value.strip()))


def parse_handler_environment(doc: object, *, handler_dir: str) -> HandlerEnvironment:
    """Decoded HandlerEnvironment.json -> folders. Pure; relative paths resolve
    against ``handler_dir``."""
    entry = doc[0] if isinstance(doc, list) and doc else doc
    if not isinstance(entry, Mapping):
        raise handler_error(
            f"{HANDLER_ENVIRONMENT_FILE} must be a list holding one object "
            '([{"version": 1.0, "handlerEnvironment": {...}}])'
        )
    env = entry.get("handlerEnvironment")
    if not isinstance(env, Mapping):
        raise handler_error(f"{HANDLER_ENVIRONMENT_FILE} has no handlerEnvironment object")
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


def read_capped(path: str, limit: int) -> bytes:
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


def decode_json(data: bytes) -> object:
    return json.loads(data.decode("utf-8-sig"))


def load_handler_environment(handler_dir: str) -> HandlerEnvironment:
    """Read ``<handler_dir>/HandlerEnvironment.json``; ConfigError if unusable."""
    handler_dir = os.path.abspath(handler_dir)
    path = os.path.join(handler_dir, HANDLER_ENVIRONMENT_FILE)
    try:
        data = read_capped(path, MAX_SMALL_FILE)
    except FileNotFoundError:
        raise handler_error(
            f"{path} does not exist: the guest agent runs handler commands from the "
            "directory holding it (or pass --handler-dir)"
        ) from None
    except OSError as exc:
        raise handler_error(f"{path} cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise handler_error(f"{path} {exc}") from None
    try:
        doc = decode_json(data)
    except UnicodeDecodeError:
        raise handler_error(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise handler_error(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise handler_error(f"{path} holds JSON nested too deeply") from None
    return parse_handler_environment(doc, handler_dir=handler_dir)
