"""Sealed hand-off of one secret from the runtime to the sidecar (docs/spool.md).

The runtime must pass the job's ``logsBlobUri`` (a SAS URL) to the sidecar
through the spool, where no record may hold a secret (I5). It seals it to the
sidecar's X25519 public key with libsodium's sealed box (PyNaCl
``SealedBox``: an ephemeral X25519 key, XSalsa20-Poly1305, the nonce derived
from both public keys). Only the holder of the private key can open it; any
change to the text is detected.

Two formats exist (``credentials.sealed`` in docs/spool.md):

* version 2, written by ``seal``: ``{"version": 2, "alg": ALG_V2, "box": b64}``;
* version 1, no ``version`` field: ``{"alg": ALG_V1, "epk", "nonce", "ct"}``,
  the hand-rolled construction this project used before (X25519, HKDF-SHA256
  with salt epk || pk, ChaCha20-Poly1305). ``unseal`` still opens it, so a
  sidecar upgraded while a job of the previous runtime is running loses
  nothing; nothing here writes it any more (tests/support/sealing_v1.py keeps
  the old writer to prove that).

Both use the same key pair: the sidecar's key file (PKCS8 PEM) holds a plain
X25519 private key, whose 32 raw bytes are what PyNaCl's ``PrivateKey``
takes, so an upgrade needs no new key.

Which versions a sidecar opens, it says in ``<spool>/sidecar.sealing``
(``versions_document``; sidecars before version 2 write no such file). The
runtime seals only when the current version is listed (``parse_versions``),
and otherwise uploads the job log itself: an older sidecar is never handed a
text it cannot open.

Pure: no file or network I/O. Shared API (the sidecar imports exactly these
names; keep them stable):

* ``generate_keypair() -> (private_key_pem, public_key_raw)``
* ``seal(public_key_raw, plaintext) -> str`` (version 2)
* ``unseal(private_key_pem, sealed) -> bytes`` (version 2 or 1); ``ValueError``
  on tamper, wrong key or bad format.
* ``public_key_of(private_key_pem) -> bytes``: the raw public key PyNaCl
  derives from the key file (the sidecar checks its files with it).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING

# The crypto libraries (~15 ms of imports) are loaded by the functions that
# use them: the spool reads parse_versions at every job's start, before its
# first phase, and a job seals only once it knows its taskId (issue 15).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

__all__ = [
    "ALG_V1",
    "ALG_V2",
    "FORMAT_VERSION",
    "generate_keypair",
    "parse_versions",
    "public_key_of",
    "seal",
    "unseal",
    "versions_document",
]

FORMAT_VERSION = 2
# Versions ``unseal`` opens; published by the sidecar in SIDECAR_SEALING_FILE.
_OPENS = (1, 2)
ALG_V2 = "X25519-XSalsa20Poly1305-SealedBox"
ALG_V1 = "X25519-HKDF-SHA256-ChaCha20Poly1305"

_V1_INFO = b"snapshot-runtime/sealing/v1"
_V1_KEY_LEN = 32
_V1_NONCE_LEN = 12


def generate_keypair() -> tuple[bytes, bytes]:
    """A new key pair: (private key PEM, PKCS8 unencrypted; raw 32-byte public key).

    PEM, not PyNaCl's raw bytes, because that is the key file's format since
    version 1: both versions of the sidecar read the same file.
    """
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.x25519 import (  # noqa: PLC0415
        X25519PrivateKey,
    )
    from nacl.public import PrivateKey  # noqa: PLC0415

    private = PrivateKey.generate()
    pem = X25519PrivateKey.from_private_bytes(bytes(private)).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, bytes(private.public_key)


def versions_document() -> bytes:
    """What the sidecar publishes in ``<spool>/sidecar.sealing``: the versions it opens."""
    return json.dumps({"versions": list(_OPENS)}).encode() + b"\n"


def parse_versions(data: bytes | None) -> frozenset[int]:
    """The versions a ``sidecar.sealing`` document lists; empty when absent or malformed."""
    if not data:
        return frozenset()
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return frozenset()
    versions = doc.get("versions") if isinstance(doc, dict) else None
    if not isinstance(versions, list):
        return frozenset()
    return frozenset(v for v in versions if isinstance(v, int) and not isinstance(v, bool))


def seal(public_key_raw: bytes, plaintext: bytes) -> str:
    """Encrypt ``plaintext`` so only the holder of the matching private key reads it."""
    from nacl.exceptions import CryptoError  # noqa: PLC0415
    from nacl.public import PublicKey, SealedBox  # noqa: PLC0415

    try:
        box = SealedBox(PublicKey(bytes(public_key_raw))).encrypt(plaintext)
    except CryptoError as exc:  # wrong length, or a key libsodium refuses (low order)
        raise ValueError("public key must be 32 raw X25519 bytes of a usable key") from exc
    return json.dumps(
        {"version": FORMAT_VERSION, "alg": ALG_V2, "box": _b64(box)},
        sort_keys=True,
    )


def unseal(private_key_pem: bytes, sealed: str) -> bytes:
    """Open a sealed text of version 2 or 1; ``ValueError`` on tamper, wrong key or format."""
    from nacl.exceptions import CryptoError  # noqa: PLC0415
    from nacl.public import PrivateKey, SealedBox  # noqa: PLC0415

    private = _load_private(private_key_pem)
    try:
        doc = json.loads(sealed)
    except (ValueError, TypeError) as exc:
        raise ValueError("sealed text is not JSON") from exc
    if not isinstance(doc, dict):
        raise ValueError("sealed text is not a JSON object")
    version, alg = doc.get("version"), doc.get("alg")
    if version == FORMAT_VERSION and alg == ALG_V2:
        box = _unb64(doc.get("box"), "box")
        try:
            return SealedBox(PrivateKey(_raw_private(private))).decrypt(box)
        except CryptoError as exc:  # too short, altered, or sealed to another key
            raise ValueError("sealed text was tampered with or sealed to another key") from exc
    if version is None and alg == ALG_V1:  # version 1 wrote no version field
        return _unseal_v1(private, doc)
    raise ValueError(
        f"sealed text is neither version {FORMAT_VERSION} ({ALG_V2}) nor version 1 ({ALG_V1})"
    )


def public_key_of(private_key_pem: bytes) -> bytes:
    """The raw 32-byte public key of a PEM key file, as PyNaCl (which opens version 2) sees it."""
    from nacl.public import PrivateKey  # noqa: PLC0415

    return bytes(PrivateKey(_raw_private(_load_private(private_key_pem))).public_key)


def _raw_private(private: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    return private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _load_private(private_key_pem: bytes) -> X25519PrivateKey:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.x25519 import (  # noqa: PLC0415
        X25519PrivateKey,
    )

    try:
        private = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError("private key is not an unencrypted PKCS8 PEM") from exc
    if not isinstance(private, X25519PrivateKey):
        raise ValueError("private key is not an X25519 key")
    return private


# --- version 1: decode only ----------------------------------------------------------
# Kept so that credentials sealed by a runtime of the previous version (a job
# that was running while the package was upgraded) still open. Remove once no
# such runtime can exist: one release after version 2 shipped.


def _unseal_v1(private: X25519PrivateKey, doc: dict[str, object]) -> bytes:
    from cryptography.exceptions import InvalidTag  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.x25519 import (  # noqa: PLC0415
        X25519PublicKey,
    )
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # noqa: PLC0415
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: PLC0415

    epk = _unb64(doc.get("epk"), "epk")
    nonce = _unb64(doc.get("nonce"), "nonce")
    ct = _unb64(doc.get("ct"), "ct")
    if len(nonce) != _V1_NONCE_LEN:
        raise ValueError("bad nonce length")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(epk))
    except ValueError as exc:
        raise ValueError("bad ephemeral public key") from exc
    recipient = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    hkdf = HKDF(algorithm=hashes.SHA256(), length=_V1_KEY_LEN, salt=epk + recipient, info=_V1_INFO)
    aad = ALG_V1.encode("ascii") + b"\x00" + epk
    try:
        return ChaCha20Poly1305(hkdf.derive(shared)).decrypt(nonce, ct, aad)
    except InvalidTag as exc:
        raise ValueError("sealed text was tampered with or sealed to another key") from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, field: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"sealed field {field!r} missing")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"sealed field {field!r} is not base64") from exc
