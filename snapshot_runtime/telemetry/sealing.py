"""Sealed hand-off of one secret from the runtime to the sidecar (docs/spool.md).

The runtime must pass the job's ``logsBlobUri`` (a SAS URL) to the sidecar
through the spool, where no record may hold a secret (I5). It seals it to the
sidecar's X25519 public key: an ephemeral X25519 key pair, ECDH with the
sidecar's static key, HKDF-SHA256 over the shared secret (salt = epk || pk),
then ChaCha20-Poly1305 with a random 96-bit nonce. Only the holder of the
private key can open it; any change to the text is detected.

Pure: no file or network I/O. Shared API (the sidecar imports exactly these
names; keep them stable):

* ``generate_keypair() -> (private_key_pem, public_key_raw)``
* ``seal(public_key_raw, plaintext) -> str`` (JSON ``{"alg","epk","nonce","ct"}``)
* ``unseal(private_key_pem, sealed) -> bytes``; ``ValueError`` on tamper,
  wrong key or bad format.
"""

from __future__ import annotations

import base64
import binascii
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["ALG", "generate_keypair", "seal", "unseal"]

ALG = "X25519-HKDF-SHA256-ChaCha20Poly1305"

_INFO = b"snapshot-runtime/sealing/v1"
_KEY_LEN = 32
_NONCE_LEN = 12


def generate_keypair() -> tuple[bytes, bytes]:
    """A new key pair: (private key PEM, PKCS8 unencrypted; raw 32-byte public key)."""
    private = X25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, _raw_public(private.public_key())


def seal(public_key_raw: bytes, plaintext: bytes) -> str:
    """Encrypt ``plaintext`` so only the holder of the matching private key reads it."""
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


def unseal(private_key_pem: bytes, sealed: str) -> bytes:
    """Open a ``seal`` result; ``ValueError`` on tamper, wrong key or bad format."""
    try:
        private = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError("private key is not an unencrypted PKCS8 PEM") from exc
    if not isinstance(private, X25519PrivateKey):
        raise ValueError("private key is not an X25519 key")
    try:
        doc = json.loads(sealed)
    except (ValueError, TypeError) as exc:
        raise ValueError("sealed text is not JSON") from exc
    if not isinstance(doc, dict) or doc.get("alg") != ALG:
        raise ValueError(f"sealed text is not {ALG}")
    epk = _unb64(doc.get("epk"), "epk")
    nonce = _unb64(doc.get("nonce"), "nonce")
    ct = _unb64(doc.get("ct"), "ct")
    if len(nonce) != _NONCE_LEN:
        raise ValueError("bad nonce length")
    try:
        peer = X25519PublicKey.from_public_bytes(epk)
        shared = private.exchange(peer)
    except ValueError as exc:
        raise ValueError("bad ephemeral public key") from exc
    key = _derive(shared, epk, _raw_public(private.public_key()))
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ct, _aad(epk))
    except InvalidTag as exc:
        raise ValueError("sealed text was tampered with or sealed to another key") from exc


def _derive(shared: bytes, epk: bytes, recipient_pk: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=_KEY_LEN, salt=epk + recipient_pk, info=_INFO)
    return hkdf.derive(shared)


def _aad(epk: bytes) -> bytes:
    return ALG.encode("ascii") + b"\x00" + epk


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, field: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"sealed field {field!r} missing")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"sealed field {field!r} is not base64") from exc
