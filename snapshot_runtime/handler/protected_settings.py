"""Protected settings: the base64 envelope in N.settings, to the settings object.

The guest agent writes ``protectedSettings`` as base64 of a DER CMS/PKCS#7
``EnvelopedData`` encrypted to the VM's transport certificate, named by
``protectedSettingsCertThumbprint``. ``certificates.py`` loads that
certificate and its key; ``cms.py`` reads and decrypts the envelope; this
module bounds and decodes the text and turns the plaintext into the JSON
object the handler validates.

Errors are ``ConfigError(PROTECTED_SETTINGS_INVALID)`` (or whatever
``cms.decrypt_envelope`` raises). Messages never quote the plaintext: it is
the secret.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.handler.certificates import CertificatePair
from snapshot_runtime.handler.cms import decrypt_envelope

__all__ = ["MAX_PROTECTED_SETTINGS_BYTES", "decrypt_protected_settings"]

# Settings files are capped at 1 MiB; the base64 text inside is smaller still.
# Checked before decoding, so nothing larger ever reaches the DER parser.
MAX_PROTECTED_SETTINGS_BYTES = 1024 * 1024


def _invalid(message: str) -> ConfigError:
    return ConfigError(ErrorCode.PROTECTED_SETTINGS_INVALID, message)


def decrypt_protected_settings(value: object, pair: CertificatePair) -> dict[str, Any]:
    """base64 DER envelope -> the protected settings object. ConfigError otherwise."""
    if not isinstance(value, str):
        raise _invalid("protectedSettings must be a base64 string (the encrypted form)")
    compact = "".join(value.split())
    if not compact:
        raise _invalid("protectedSettings is empty")
    if len(compact) > MAX_PROTECTED_SETTINGS_BYTES:
        raise _invalid(f"protectedSettings is larger than {MAX_PROTECTED_SETTINGS_BYTES} bytes")
    try:
        der = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("protectedSettings is not valid base64") from None
    plaintext = decrypt_envelope(der, pair)
    try:
        text = plaintext.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _invalid(
            "decrypted protectedSettings are not UTF-8 text (damaged or altered envelope)"
        ) from None
    try:
        doc = json.loads(text.strip().strip("\x00"))
    except json.JSONDecodeError as exc:
        # Position only: the document is the secret.
        raise _invalid(
            f"decrypted protectedSettings are not valid JSON ({exc.msg} at line {exc.lineno} "
            f"column {exc.colno})"
        ) from None
    except RecursionError:
        raise _invalid("decrypted protectedSettings hold JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise _invalid("decrypted protectedSettings must be a JSON object")
    return doc
