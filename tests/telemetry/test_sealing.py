"""sealing: the one secret the runtime hands the sidecar (docs/spool.md, credentials.sealed)."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from snapshot_runtime.telemetry.sealing import ALG, generate_keypair, seal, unseal
from snapshot_runtime.telemetry.spool import parse_public_key

SECRET = b'{"logsBlobUri": "https://a.blob.core.windows.net/c/b?sv=1&sig=abc%2Fdef"}'


def test_round_trip_and_format() -> None:
    private_pem, public_raw = generate_keypair()
    assert len(public_raw) == 32
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    sealed = seal(public_raw, SECRET)
    doc = json.loads(sealed)
    assert set(doc) == {"alg", "epk", "nonce", "ct"}
    assert doc["alg"] == ALG == "X25519-HKDF-SHA256-ChaCha20Poly1305"
    assert len(base64.b64decode(doc["epk"])) == 32
    assert len(base64.b64decode(doc["nonce"])) == 12
    assert b"sig=" not in sealed.encode() and b"abc" not in base64.b64decode(doc["ct"])
    assert unseal(private_pem, sealed) == SECRET


def test_every_seal_is_fresh() -> None:
    _, public_raw = generate_keypair()
    one, two = json.loads(seal(public_raw, SECRET)), json.loads(seal(public_raw, SECRET))
    assert one["epk"] != two["epk"] and one["nonce"] != two["nonce"] and one["ct"] != two["ct"]


@pytest.mark.parametrize("field", ["ct", "nonce", "epk"])
def test_tampering_is_detected(field: str) -> None:
    private_pem, public_raw = generate_keypair()
    doc = json.loads(seal(public_raw, SECRET))
    raw = bytearray(base64.b64decode(doc[field]))
    raw[0] ^= 0x01
    doc[field] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(ValueError):
        unseal(private_pem, json.dumps(doc))


def test_wrong_key_is_refused() -> None:
    _, public_raw = generate_keypair()
    other_pem, _ = generate_keypair()
    with pytest.raises(ValueError):
        unseal(other_pem, seal(public_raw, SECRET))


@pytest.mark.parametrize(
    "sealed",
    [
        "not json",
        "[]",
        json.dumps({"alg": "something-else", "epk": "", "nonce": "", "ct": ""}),
        json.dumps({"alg": ALG, "nonce": "AAAA", "ct": "AAAA"}),
        json.dumps({"alg": ALG, "epk": "%%%", "nonce": "AAAA", "ct": "AAAA"}),
        json.dumps(
            {"alg": ALG, "epk": base64.b64encode(b"x" * 32).decode(), "nonce": "AAAA", "ct": ""}
        ),
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
