"""The backup metadata in public ``objectStr``: what every snapshot is tagged with.

Pure. ``parse_backup_metadata(public)`` decodes ``publicSettings.objectStr``
(base64 of JSON) and returns its ``backupMetadata`` as a read-only mapping,
plus the values to treat as secrets (``snapshotTaskToken``); both are empty
when ``objectStr`` is absent. ``backupMetadata`` is ``[{"Key", "Value"}]``
as the reference sends it, or an object. Keys become ``x-ms-meta-<Key>``
headers, so they must be metadata names (letters, digits, underscores, not
starting with a digit; unique case-insensitively); values are single-line
printable strings of at most 8192 characters (integers are accepted and
turned into strings). Failures are ``ConfigError(INVALID_SETTINGS)`` naming
the field, never quoting a value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from snapshot_runtime.inputs.settings_values import (
    decode_b64_json,
    invalid_settings,
    json_type_name,
)

__all__ = ["parse_backup_metadata"]

# Blob metadata names must be C# identifiers (they become x-ms-meta-* headers).
_METADATA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
_MAX_METADATA_VALUE = 8192


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_backup_metadata(public: Mapping[str, Any]) -> tuple[Mapping[str, str], list[str]]:
    """(metadata, extra secrets) from public objectStr; both empty when absent."""
    where = "publicSettings.objectStr"
    raw = public.get("objectStr")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return MappingProxyType({}), []
    obj = decode_b64_json(raw, where)
    if not isinstance(obj, Mapping):
        raise invalid_settings(f"{where} must decode to a JSON object, not {json_type_name(obj)}")
    extra: list[str] = []
    token = obj.get("snapshotTaskToken")
    if isinstance(token, str) and token:
        # A bearer-like token for the host snapshot path: treat it as secret.
        extra.append(token)
    meta = obj.get("backupMetadata")
    pairs: list[tuple[object, object]]
    if meta is None:
        pairs = []
    elif isinstance(meta, list):
        pairs = []
        for index, item in enumerate(meta):
            if not isinstance(item, Mapping) or "Key" not in item or "Value" not in item:
                raise invalid_settings(
                    f"{where}.backupMetadata[{index}] must be an object with Key and Value"
                )
            pairs.append((item["Key"], item["Value"]))
    elif isinstance(meta, Mapping):
        pairs = list(meta.items())
    else:
        raise invalid_settings(
            f"{where}.backupMetadata must be a list of {{Key, Value}}, not {json_type_name(meta)}"
        )
    result: dict[str, str] = {}
    for key, raw_value in pairs:
        value = str(raw_value) if _is_int(raw_value) else raw_value
        if not isinstance(key, str) or not _METADATA_NAME.fullmatch(key):
            raise invalid_settings(
                f"{where}.backupMetadata has an invalid key: metadata names are letters, "
                "digits and underscores, not starting with a digit"
            )
        if not isinstance(value, str):
            raise invalid_settings(
                f"{where}.backupMetadata[{key!r}] must be a string, not {json_type_name(value)}"
            )
        if len(value) > _MAX_METADATA_VALUE or not value.isprintable():
            raise invalid_settings(
                f"{where}.backupMetadata[{key!r}] must be a single line of printable text "
                f"of at most {_MAX_METADATA_VALUE} characters"
            )
        if key.lower() in (k.lower() for k in result):
            raise invalid_settings(
                f"{where}.backupMetadata repeats the key {key!r} (names are case-insensitive)"
            )
        result[key] = value
    return MappingProxyType(result), extra
