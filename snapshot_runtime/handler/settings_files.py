"""The agent's ``N.settings`` files, the sequence number, and sanitising.

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

``parse_sequence_number``, ``choose_sequence`` and ``sanitised`` are pure.
Errors: ``HANDLER_ENVIRONMENT_INVALID`` for the sequence, ``INVALID_SETTINGS``
for an unreadable settings document; never settings content in a message.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from snapshot_runtime.core.atomic_file import write_atomic
from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.handler.environment import (
    decode_json,
    handler_error,
    read_capped,
)

__all__ = [
    "LAST_SEQUENCE_FILE",
    "MAX_SETTINGS_BYTES",
    "SEQUENCE_ENV",
    "SettingsFile",
    "choose_sequence",
    "is_sanitised",
    "list_settings_files",
    "parse_sequence_number",
    "read_last_sequence",
    "read_settings_document",
    "rewrite_settings_file",
    "sanitised",
    "write_last_sequence",
]

SEQUENCE_ENV = "ConfigSequenceNumber"


LAST_SEQUENCE_FILE = "mrseq"


MAX_SETTINGS_BYTES = 1024 * 1024


# Far above any real sequence number, far below anything that could overflow.
_MAX_SEQUENCE = 2**31 - 1


_SETTINGS_NAME = re.compile(r"([0-9]{1,10})\.settings")


@dataclass(frozen=True)
class SettingsFile:
    seq: int
    mtime_ns: int


def parse_sequence_number(text: str, *, source: str = SEQUENCE_ENV) -> int:
    """A sequence number: decimal digits, 0 .. 2^31-1. Pure; ConfigError otherwise."""
    value = text.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise handler_error(
            f"{source} must be a whole number (the settings file's N), got {text!r}"
        )
    seq = int(value)
    if seq > _MAX_SEQUENCE:
        raise handler_error(f"{source} {seq} is out of range")
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
        raise handler_error(f"{SEQUENCE_ENV} is not set and the config folder holds no N.settings")
    newest = max(candidates, key=lambda c: (c.mtime_ns, c.seq))
    return newest.seq


def list_settings_files(config_folder: str) -> list[SettingsFile]:
    """Every ``N.settings`` in ``config_folder``; ConfigError if it cannot be listed."""
    try:
        names = os.listdir(config_folder)
    except FileNotFoundError:
        raise handler_error(f"config folder {config_folder} does not exist") from None
    except OSError as exc:
        raise handler_error(
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
        data = read_capped(os.path.join(handler_dir, LAST_SEQUENCE_FILE), 64)
        return parse_sequence_number(data.decode("ascii"), source=LAST_SEQUENCE_FILE)
    except (OSError, ValueError, ConfigError):
        return None  # absent or unreadable: nothing handled yet


def write_last_sequence(handler_dir: str, seq: int) -> None:
    """Record ``seq`` as handled (atomic). OSError on failure."""
    write_atomic(os.path.join(handler_dir, LAST_SEQUENCE_FILE), f"{seq}\n".encode(), mode=0o600)


def read_settings_document(path: str) -> dict[str, Any]:
    """The decoded JSON of a settings file; ConfigError(INVALID_SETTINGS) otherwise."""

    def invalid(message: str) -> ConfigError:
        return ConfigError(ErrorCode.INVALID_SETTINGS, f"settings file {path} {message}")

    try:
        data = read_capped(path, MAX_SETTINGS_BYTES)
    except OSError as exc:
        raise invalid(f"cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise invalid(str(exc)) from None
    try:
        doc = decode_json(data)
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
