"""protected_settings: the platform's CMS envelopes, decrypted in-process.

AES-128/256-CBC envelopes are built exactly as the platform builds them
(PKCS7EnvelopeBuilder: EnvelopedData, RSA PKCS#1 v1.5 key transport, DER,
base64). 3DES and AES-192, which that builder cannot produce, come from the
test's own CMS writer (``handlerkit.encrypt_protected_cms``, checked against
the library on AES), and, when installed, from the openssl command line as a
cross-check (a test-side tool only: the runtime runs no openssl).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.handler.certificates import (
    load_certificate_pair,
    normalise_thumbprint,
    thumbprint,
)
from snapshot_runtime.handler.cms import SUPPORTED_CONTENT_CIPHERS, parse_envelope
from snapshot_runtime.handler.protected_settings import decrypt_protected_settings
from tests.support.handlerkit import (
    TransportCert,
    encrypt_protected,
    encrypt_protected_cms,
    make_transport_cert,
)
from tests.support.requirements import require

SECRET = {"objectStr": "c2VjcmV0LWRpc2stbGlzdA==", "logsBlobUri": "https://x/c/b?sig=TOPSECRETSIG"}


@pytest.fixture(scope="module")
def cert() -> TransportCert:
    return make_transport_cert()


@pytest.fixture(scope="module")
def other() -> TransportCert:
    return make_transport_cert("another VM")


@pytest.fixture
def pair(tmp_path: Path, cert: TransportCert):
    cert.install(tmp_path)
    return load_certificate_pair(str(tmp_path), cert.thumbprint)


def _openssl_envelope(tmp_path: Path, cert: TransportCert, cipher: str, *extra: str) -> str:
    # A cross-check with a second CMS implementation, when the tool is there;
    # encrypt_protected_cms covers the same ciphers without it.
    # Installed by scripts/install-system-deps.sh: skipped locally, a failure in CI.
    require(shutil.which("openssl") is not None, "the openssl command (CMS cross-check)")
    src, out, crt = tmp_path / "in", tmp_path / "out.der", tmp_path / "recip.pem"
    src.write_text(json.dumps(SECRET))
    crt.write_bytes(cert.cert_pem())
    command = ["openssl", "cms", "-encrypt", "-binary", "-outform", "DER", cipher, *extra]
    command += ["-in", str(src), "-out", str(out), str(crt)]
    subprocess.run(command, check=True, capture_output=True)
    return base64.b64encode(out.read_bytes()).decode()


def _ski_cert() -> TransportCert:
    """A certificate with a subject key identifier, for key-id recipients."""
    key = make_transport_cert().key
    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ski")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return TransportCert(certificate, key)


@pytest.mark.parametrize("cipher", [algorithms.AES256, algorithms.AES128])
def test_platform_envelopes_decrypt(pair, cert: TransportCert, cipher) -> None:
    value = encrypt_protected(SECRET, cert, cipher=cipher)
    name = "aes-256-cbc" if cipher is algorithms.AES256 else "aes-128-cbc"
    assert parse_envelope(base64.b64decode(value)).content_cipher == name
    assert decrypt_protected_settings(value, pair) == SECRET
    # Line-wrapped base64 (as some writers emit it) is the same envelope.
    wrapped = "\n".join(value[i : i + 64] for i in range(0, len(value), 64))
    assert decrypt_protected_settings(wrapped, pair) == SECRET


@pytest.mark.parametrize("cipher", ["aes-256-cbc", "aes-128-cbc"])
def test_the_test_cms_writer_agrees_with_the_library(cert: TransportCert, cipher: str) -> None:
    der = base64.b64decode(encrypt_protected_cms(SECRET, cert, cipher=cipher))
    plain = pkcs7.pkcs7_decrypt_der(der, cert.certificate, cert.key, [])
    assert json.loads(plain) == SECRET


@pytest.mark.parametrize("cipher", ["des-ede3-cbc", "aes-192-cbc", "aes-256-cbc", "aes-128-cbc"])
@pytest.mark.parametrize("key_id", [False, True])
def test_every_cbc_cipher_and_recipient_form(tmp_path: Path, cipher: str, key_id: bool) -> None:
    ski_cert = _ski_cert()
    ski_cert.install(tmp_path)
    pair = load_certificate_pair(str(tmp_path), ski_cert.thumbprint)
    value = encrypt_protected_cms(SECRET, ski_cert, cipher=cipher, key_id=key_id)
    assert parse_envelope(base64.b64decode(value)).content_cipher == cipher
    assert decrypt_protected_settings(value, pair) == SECRET


@pytest.mark.parametrize("flag", ["-des3", "-aes192", "-aes256"])
@pytest.mark.parametrize("keyid", [False, True])
def test_openssl_envelopes_cross_check(tmp_path: Path, flag: str, keyid: bool) -> None:
    ski_cert = _ski_cert()
    ski_cert.install(tmp_path / "certs")
    pair = load_certificate_pair(str(tmp_path / "certs"), ski_cert.thumbprint)
    value = _openssl_envelope(tmp_path, ski_cert, flag, *(["-keyid"] if keyid else []))
    assert decrypt_protected_settings(value, pair) == SECRET


def test_supported_cipher_table_is_what_the_docs_say() -> None:
    names = sorted(name for name, _ in SUPPORTED_CONTENT_CIPHERS.values())
    assert names == ["aes-128-cbc", "aes-192-cbc", "aes-256-cbc", "des-ede3-cbc"]
    docs = (Path(__file__).resolve().parents[2] / "docs" / "extension-handler.md").read_text()
    for name in names:
        assert name in docs


def _error(value: str, pair) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        decrypt_protected_settings(value, pair)
    text = str(info.value)
    for secret in ("TOPSECRETSIG", "c2VjcmV0", "secret-disk-list"):
        assert secret not in text
    return info.value


def test_encrypted_to_another_certificate(pair, other: TransportCert) -> None:
    error = _error(encrypt_protected(SECRET, other), pair)
    assert error.code is ErrorCode.CERTIFICATE_NOT_FOUND
    assert "not encrypted to certificate" in error.message


@pytest.mark.parametrize("where", ["content", "key", "iv"])
def test_tampered_envelope(pair, cert: TransportCert, where: str) -> None:
    der = bytearray(base64.b64decode(encrypt_protected(SECRET, cert)))
    envelope = parse_envelope(bytes(der))
    if where == "content":
        der[-1] ^= 0x01
    elif where == "key":
        start = bytes(der).find(envelope.recipients[0].encrypted_key)
        der[start + 10] ^= 0x80
    else:
        start = bytes(der).find(envelope.iv)
        der[start] ^= 0x01
    value = base64.b64encode(bytes(der)).decode()
    try:
        result = decrypt_protected_settings(value, pair)
    except ConfigError as exc:
        assert exc.code is ErrorCode.PROTECTED_SETTINGS_INVALID
        assert "TOPSECRET" not in str(exc)
        return
    # CBC has no integrity: an IV flip changes only the first block, which the
    # JSON check or later validation must catch; it never decrypts unchanged.
    assert result != SECRET


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("not base64!!", "not valid base64"),
        (base64.b64encode(b"\x30\x03\x02\x01\x00").decode(), "not a CMS EnvelopedData"),
        ("", "empty"),
    ],
)
def test_malformed_envelopes(pair, value: str, needle: str) -> None:
    error = _error(value, pair)
    assert error.code is ErrorCode.PROTECTED_SETTINGS_INVALID
    assert needle in error.message


def test_plaintext_that_is_not_json_is_not_quoted(pair, cert: TransportCert) -> None:
    der = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(b"TOPSECRETSIG is not json")
        .add_recipient(cert.certificate)
        .set_content_encryption_algorithm(algorithms.AES256)
        .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    error = _error(base64.b64encode(der).decode(), pair)
    assert "not valid JSON" in error.message


@pytest.mark.parametrize("cipher", ["aes-256-cbc", "des-ede3-cbc"])
def test_oaep_key_transport_is_refused_by_name(pair, cert: TransportCert, cipher: str) -> None:
    error = _error(encrypt_protected_cms(SECRET, cert, cipher=cipher, oaep=True), pair)
    assert error.code is ErrorCode.PROTECTED_SETTINGS_INVALID
    assert "key transport OID 1.2.840.113549.1.1.7" in error.message


def test_gcm_auth_enveloped_data_is_refused(tmp_path: Path, pair, cert: TransportCert) -> None:
    error = _error(_openssl_envelope(tmp_path, cert, "-aes-256-gcm"), pair)
    assert error.code is ErrorCode.PROTECTED_SETTINGS_INVALID


# --- certificates ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "../../etc/passwd", "ABC", "G" * 40])
def test_thumbprint_must_be_forty_hex_digits(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        normalise_thumbprint(value)
    assert info.value.code is ErrorCode.CERTIFICATE_NOT_FOUND


def test_thumbprint_is_upper_sha1(cert: TransportCert) -> None:
    assert thumbprint(cert.certificate) == cert.thumbprint
    assert normalise_thumbprint(cert.thumbprint.lower()) == cert.thumbprint


def test_missing_certificate_and_key(tmp_path: Path, cert: TransportCert) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_certificate_pair(str(tmp_path), cert.thumbprint)
    assert info.value.code is ErrorCode.CERTIFICATE_NOT_FOUND
    cert.install(tmp_path, key=False)
    with pytest.raises(ConfigError, match=r"private key of certificate \w+ is missing"):
        load_certificate_pair(str(tmp_path), cert.thumbprint)


def test_renamed_certificate_is_refused(tmp_path: Path, cert: TransportCert, other) -> None:
    other.install(tmp_path)
    for suffix in (".crt", ".prv"):
        (tmp_path / f"{other.thumbprint}{suffix}").rename(tmp_path / f"{cert.thumbprint}{suffix}")
    with pytest.raises(ConfigError, match=f"thumbprint {other.thumbprint}, not"):
        load_certificate_pair(str(tmp_path), cert.thumbprint)


def test_key_of_another_certificate(tmp_path: Path, cert: TransportCert, other) -> None:
    cert.install(tmp_path, key=False)
    (tmp_path / f"{cert.thumbprint}.prv").write_bytes(other.key_pem())
    with pytest.raises(ConfigError, match="is not the private key"):
        load_certificate_pair(str(tmp_path), cert.thumbprint)


def test_non_rsa_and_garbage_keys(tmp_path: Path, cert: TransportCert) -> None:
    cert.install(tmp_path, key=False)
    prv = tmp_path / f"{cert.thumbprint}.prv"
    prv.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="not an RSA key"):
        load_certificate_pair(str(tmp_path), cert.thumbprint)
    prv.write_text("-----BEGIN PRIVATE KEY-----\nTOPSECRET\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as info:
        load_certificate_pair(str(tmp_path), cert.thumbprint)
    assert "TOPSECRET" not in str(info.value)


def test_traditional_rsa_pem_key_loads(tmp_path: Path, cert: TransportCert) -> None:
    cert.install(tmp_path, key=False)
    (tmp_path / f"{cert.thumbprint}.prv").write_bytes(
        cert.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    pair = load_certificate_pair(str(tmp_path), cert.thumbprint)
    assert decrypt_protected_settings(encrypt_protected(SECRET, cert), pair) == SECRET


def test_reprs_hide_key_and_content(pair, cert: TransportCert) -> None:
    assert "PRIVATE" not in repr(pair) and "RSAPrivateKey" not in repr(pair)
    envelope = parse_envelope(base64.b64decode(encrypt_protected(SECRET, cert)))
    assert "ciphertext_bytes=" in repr(envelope)
    assert repr(envelope.ciphertext)[:20] not in repr(envelope)


def test_random_damage_only_ever_raises_config_error(pair, cert: TransportCert) -> None:
    import random

    rng = random.Random(7)
    original = base64.b64decode(encrypt_protected(SECRET, cert))
    for _ in range(300):
        der = bytearray(original)
        pos = rng.randrange(len(der))
        if rng.random() < 0.7:
            der[pos] ^= 1 << rng.randrange(8)
        else:
            del der[pos : pos + rng.randint(1, 4)]
        try:
            decrypt_protected_settings(base64.b64encode(bytes(der)).decode(), pair)
        except ConfigError as exc:
            assert exc.code in (
                ErrorCode.PROTECTED_SETTINGS_INVALID,
                ErrorCode.CERTIFICATE_NOT_FOUND,
            )
            assert "TOPSECRET" not in str(exc)
