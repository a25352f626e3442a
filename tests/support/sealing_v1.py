"""The version-1 sealing writer, as the runtime shipped it before PyNaCl (docs/spool.md).

Kept in the tests only: a runtime of the previous version can still be running
a job while the package is upgraded, so the sidecar must go on opening what
this wrote. This is that runtime's code, unchanged (``seal`` and
``generate_keypair`` of snapshot_runtime/telemetry/sealing.py before version 2).
"""

from __future__ import annotations

import base64
import json
import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["ALG", "generate_keypair_v1", "seal_v1"]

ALG = "X25519-HKDF-SHA256-ChaCha20Poly1305"

_INFO = b"snapshot-runtime/sealing/v1"
_KEY_LEN = 32
_NONCE_LEN = 12


def generate_keypair_v1() -> tuple[bytes, bytes]:
    """A key pair as the version-1 sidecar made it: (PKCS8 PEM, raw 32-byte public key)."""
    private = X25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, _raw_public(private.public_key())


def seal_v1(public_key_raw: bytes, plaintext: bytes) -> str:
    try:
        recipient = X25519PublicKey.from_public_bytes(bytes(public_key_raw))
    except ValueError as exc:
        raise ValueError("public key must be 32 raw X25519 bytes") from exc
    ephemeral = X25519PrivateKey.generate()
    epk = _raw_public(ephemeral.public_key())
    key = _derive(ephemeral.exchange(recipient), epk, _raw_public(recipient))
    nonce = os.urandom(_NONCE_LEN)
    ct = ChaCha20Poly1305(key).encrypt(nonce, plaintext, _aad(epk))
    return json.dumps(
        {"alg": ALG, "epk": _b64(epk), "nonce": _b64(nonce), "ct": _b64(ct)},
        sort_keys=True,
    )


def _derive(shared: bytes, epk: bytes, recipient_pk: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=_KEY_LEN, salt=epk + recipient_pk, info=_INFO)
    return hkdf.derive(shared)


def _aad(epk: bytes) -> bytes:
    return ALG.encode("ascii") + b"\x00" + epk


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
