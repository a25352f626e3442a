"""sealing: the one secret the runtime hands the sidecar (docs/spool.md, credentials.sealed).

``seal`` writes version 2 (PyNaCl's SealedBox); ``unseal`` opens version 2
and version 1, the hand-rolled format of the previous runtime, whose writer
is kept unchanged in tests/support/sealing_v1.py.
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.public import PrivateKey, SealedBox

from snapshot_runtime.telemetry.sealing import (
    ALG_V1,
    ALG_V2,
    FORMAT_VERSION,
    generate_keypair,
    seal,
    unseal,
)
from snapshot_runtime.telemetry.spool import parse_public_key
from tests.support.sealing_v1 import ALG, generate_keypair_v1, seal_v1

SECRET = b'{"logsBlobUri": "https://a.blob.core.windows.net/c/b?sv=1&sig=abc%2Fdef"}'


def _raw_private(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def test_round_trip_and_format() -> None:
    private_pem, public_raw = generate_keypair()
    assert len(public_raw) == 32
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    sealed = seal(public_raw, SECRET)
    doc = json.loads(sealed)
    assert set(doc) == {"version", "alg", "box"}
    assert doc["version"] == FORMAT_VERSION == 2
    assert doc["alg"] == ALG_V2 == "X25519-XSalsa20Poly1305-SealedBox"
    box = base64.b64decode(doc["box"])
    assert len(box) == 32 + 16 + len(SECRET)  # ephemeral key, MAC, ciphertext
    assert b"sig=" not in sealed.encode() and b"abc" not in box
    assert unseal(private_pem, sealed) == SECRET


def test_version_2_is_a_standard_sealed_box() -> None:
    # Any libsodium crypto_box_seal_open opens it with the key file's raw key.
    private_pem, public_raw = generate_keypair()
    box = base64.b64decode(json.loads(seal(public_raw, SECRET))["box"])
    private = PrivateKey(_raw_private(private_pem))
    assert bytes(private.public_key) == public_raw
    assert SealedBox(private).decrypt(box) == SECRET
    # And a box sealed by plain PyNaCl opens through unseal.
    other = json.dumps(
        {
            "version": 2,
            "alg": ALG_V2,
            "box": base64.b64encode(SealedBox(private.public_key).encrypt(SECRET)).decode(),
        }
    )
    assert unseal(private_pem, other) == SECRET


def test_version_1_format_still_opens() -> None:
    private_pem, public_raw = generate_keypair()
    sealed = seal_v1(public_raw, SECRET)
    doc = json.loads(sealed)
    assert set(doc) == {"alg", "epk", "nonce", "ct"}
    assert doc["alg"] == ALG == ALG_V1 == "X25519-HKDF-SHA256-ChaCha20Poly1305"
    assert len(base64.b64decode(doc["epk"])) == 32
    assert len(base64.b64decode(doc["nonce"])) == 12
    assert b"sig=" not in sealed.encode() and b"abc" not in base64.b64decode(doc["ct"])
    assert unseal(private_pem, sealed) == SECRET


def test_a_version_1_key_file_needs_no_new_key() -> None:
    # The sidecar's key file as version 1 made it (PKCS8 PEM of a cryptography
    # X25519 key) is a valid PyNaCl key: version 2 seals to it and opens with it.
    old_pem, old_public = generate_keypair_v1()
    assert bytes(PrivateKey(_raw_private(old_pem)).public_key) == old_public
    assert unseal(old_pem, seal(old_public, SECRET)) == SECRET
    assert unseal(old_pem, seal_v1(old_public, SECRET)) == SECRET
    # And the other way: a key made now is what a version-1 sidecar reads.
    new_pem, new_public = generate_keypair()
    key = serialization.load_pem_private_key(new_pem, password=None)
    assert (
        key.public_key().public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        == new_public
    )


def test_every_seal_is_fresh() -> None:
    _, public_raw = generate_keypair()
    one = base64.b64decode(json.loads(seal(public_raw, SECRET))["box"])
    two = base64.b64decode(json.loads(seal(public_raw, SECRET))["box"])
    assert one[:32] != two[:32] and one[32:] != two[32:]  # ephemeral key and ciphertext
    one_v1, two_v1 = (
        json.loads(seal_v1(public_raw, SECRET)),
        json.loads(seal_v1(public_raw, SECRET)),
    )
    assert one_v1["epk"] != two_v1["epk"] and one_v1["nonce"] != two_v1["nonce"]
    assert one_v1["ct"] != two_v1["ct"]


@pytest.mark.parametrize("where", [0, 31, 32, 47, 48, -1])
def test_tampering_is_detected(where: int) -> None:
    # Ephemeral key (0..31), MAC (32..47), ciphertext (48..).
    private_pem, public_raw = generate_keypair()
    doc = json.loads(seal(public_raw, SECRET))
    raw = bytearray(base64.b64decode(doc["box"]))
    raw[where] ^= 0x01
    doc["box"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(ValueError):
        unseal(private_pem, json.dumps(doc))


@pytest.mark.parametrize("field", ["ct", "nonce", "epk"])
def test_tampering_is_detected_in_version_1(field: str) -> None:
    private_pem, public_raw = generate_keypair()
    doc = json.loads(seal_v1(public_raw, SECRET))
    raw = bytearray(base64.b64decode(doc[field]))
    raw[0] ^= 0x01
    doc[field] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(ValueError):
        unseal(private_pem, json.dumps(doc))


@pytest.mark.parametrize("writer", [seal, seal_v1])
def test_wrong_key_is_refused(writer) -> None:
    _, public_raw = generate_keypair()
    other_pem, _ = generate_keypair()
    with pytest.raises(ValueError):
        unseal(other_pem, writer(public_raw, SECRET))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    "sealed",
    [
        "not json",
        "[]",
        json.dumps({"alg": "something-else", "epk": "", "nonce": "", "ct": ""}),
        json.dumps({"alg": ALG_V1, "nonce": "AAAA", "ct": "AAAA"}),
        json.dumps({"alg": ALG_V1, "epk": "%%%", "nonce": "AAAA", "ct": "AAAA"}),
        json.dumps({"alg": ALG_V1, "epk": _b64(b"x" * 32), "nonce": "AAAA", "ct": ""}),
        # version 2: missing, non-base64, too short a box; unknown versions; mixed tags
        json.dumps({"version": 2, "alg": ALG_V2}),
        json.dumps({"version": 2, "alg": ALG_V2, "box": "%%%"}),
        json.dumps({"version": 2, "alg": ALG_V2, "box": _b64(b"x" * 47)}),
        json.dumps({"version": 2, "alg": ALG_V2, "box": 17}),
        json.dumps({"version": 3, "alg": ALG_V2, "box": _b64(b"x" * 64)}),
        json.dumps({"version": 2, "alg": ALG_V1, "epk": "", "nonce": "", "ct": ""}),
        json.dumps({"alg": ALG_V2, "box": _b64(b"x" * 64)}),
    ],
)
def test_bad_format_is_a_value_error(sealed: str) -> None:
    private_pem, _ = generate_keypair()
    with pytest.raises(ValueError):
        unseal(private_pem, sealed)


def test_bad_keys_are_value_errors() -> None:
    with pytest.raises(ValueError):
        seal(b"short", SECRET)
    with pytest.raises(ValueError):
        seal(b"\x00" * 32, SECRET)  # a low-order point libsodium refuses
    with pytest.raises(ValueError):
        unseal(b"not a pem", seal(generate_keypair()[1], SECRET))
    ed_pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError):
        unseal(ed_pem, seal(generate_keypair()[1], SECRET))


def test_sidecar_pub_forms_the_runtime_accepts() -> None:
    private_pem, public_raw = generate_keypair()
    pem = (
        serialization.load_pem_private_key(private_pem, password=None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for form in (public_raw, base64.b64encode(public_raw) + b"\n", pem):
        assert parse_public_key(form) == public_raw
    for bad in (
        b"",
        b"x" * 31,
        b"!!not base64!!",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    ):
        assert parse_public_key(bad) is None
