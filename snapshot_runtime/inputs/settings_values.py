"""Handler-settings values described and decoded without ever echoing them.

Settings carry secrets (SAS URLs, tokens), and any part of them may be one.
So error messages name a value's JSON type (``json_type_name``), never its
content, and ``decode_b64_json`` (base64 of UTF-8 JSON, as the platform
sends ``objectStr``) reports a bad field by position only, never quoting
the decoded text. Pure; failures are ``invalid_settings(...)``, a
``ConfigError(INVALID_SETTINGS)``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

from snapshot_runtime.core.errors import ConfigError, ErrorCode

__all__ = ["decode_b64_json", "invalid_settings", "json_type_name"]


def invalid_settings(message: str) -> ConfigError:
    """The error of an invalid settings field; ``message`` names the field."""
    return ConfigError(ErrorCode.INVALID_SETTINGS, message)


def json_type_name(value: object) -> str:
    """ "a string", "a list"...: describes the input, never its content."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def decode_b64_json(value: object, where: str) -> object:
    """Decode a base64-of-JSON field, never quoting its content in an error."""
    if not isinstance(value, str):
        raise invalid_settings(f"{where} must be a base64 string, not {json_type_name(value)}")
    compact = "".join(value.split())
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_settings(f"{where} is not valid base64") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise invalid_settings(f"{where} does not decode to UTF-8 text") from None
    # The reference strips whitespace and single quotes around the JSON.
    text = text.strip().strip("'")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # Position only: exc.doc would be the secret itself.
        raise invalid_settings(
            f"{where} does not hold valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise invalid_settings(f"{where} holds JSON nested too deeply") from None
