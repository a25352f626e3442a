"""Protected settings: the platform's CMS envelope, decrypted in-process.

The guest agent writes ``protectedSettings`` as base64 of a DER CMS/PKCS#7
``EnvelopedData`` encrypted to the VM's transport certificate, named by
``protectedSettingsCertThumbprint``; the certificate and its key sit in the
agent's folder as ``<THUMBPRINT>.crt`` and ``<THUMBPRINT>.prv`` (PEM). The
reference pipes this through ``base64 -d | openssl cms -decrypt``; here it is
decrypted with the ``cryptography`` library, with no subprocess and no temp
file.

Supported (see docs/extension-handler.md):

* key transport: RSA, PKCS#1 v1.5 (``rsaEncryption``), as the platform sends;
* content encryption: AES-256-CBC (the platform's FIPS 140-3 choice) and
  AES-128-CBC through ``pkcs7_decrypt_der``; 3DES-CBC (``des-ede3-cbc``, the
  platform's long-standing default: the reference's own sample envelope in
  ``HandlerUtil.py`` uses it) and AES-192-CBC through a small, bounded DER
  reader here with the library's primitives (RSA, TripleDES, AES, CBC,
  PKCS#7 unpadding), because the library's CMS decryption accepts only
  AES-128/256-CBC and recipients named by issuer and serial number. The same
  reader serves recipients named by subject key identifier.

CBC envelopes carry no integrity check: tampering shows up as a padding
error, as text that is not JSON, or (for a targeted change) as settings that
fail validation later. Nothing here claims more than that.

Errors are ``ConfigError``: ``CERTIFICATE_NOT_FOUND`` when the certificate or
key cannot be found, read or matched (including a message not encrypted to
that certificate), ``PROTECTED_SETTINGS_INVALID`` when the envelope or its
plaintext is unusable. Messages name files, thumbprints and OIDs; never key
material, ciphertext or plaintext.

``parse_envelope`` and ``thumbprint`` are pure; ``load_certificate_pair``
reads two files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs7

from snapshot_runtime.core.errors import ConfigError, ErrorCode

__all__ = [
    "MAX_CERT_FILE_BYTES",
    "MAX_PROTECTED_SETTINGS_BYTES",
    "SUPPORTED_CONTENT_CIPHERS",
    "CertificatePair",
    "Envelope",
    "decrypt_envelope",
    "decrypt_protected_settings",
    "load_certificate_pair",
    "normalise_thumbprint",
    "parse_envelope",
    "thumbprint",
]

MAX_CERT_FILE_BYTES = 64 * 1024
# Settings files are capped at 1 MiB; the base64 text inside is smaller still.
MAX_PROTECTED_SETTINGS_BYTES = 1024 * 1024

_OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
_OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
_OID_DES_EDE3_CBC = "1.2.840.113549.3.7"
_OID_AES128_CBC = "2.16.840.1.101.3.4.1.2"
_OID_AES192_CBC = "2.16.840.1.101.3.4.1.22"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"

# OID -> (name, key length). The first two go through the library's CMS code.
SUPPORTED_CONTENT_CIPHERS: Mapping[str, tuple[str, int]] = {
    _OID_AES256_CBC: ("aes-256-cbc", 32),
    _OID_AES128_CBC: ("aes-128-cbc", 16),
    _OID_DES_EDE3_CBC: ("des-ede3-cbc", 24),
    _OID_AES192_CBC: ("aes-192-cbc", 24),
}
_LIBRARY_CIPHERS = frozenset({_OID_AES128_CBC, _OID_AES256_CBC})

_THUMBPRINT = re.compile(r"[0-9A-Fa-f]{40}")


def _cert_error(message: str) -> ConfigError:
    return ConfigError(ErrorCode.CERTIFICATE_NOT_FOUND, message)


def _invalid(message: str) -> ConfigError:
    return ConfigError(ErrorCode.PROTECTED_SETTINGS_INVALID, message)


# --- certificates -------------------------------------------------------------


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 of the DER certificate, uppercase hex (the agent's file names)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def normalise_thumbprint(value: object) -> str:
    """A settings thumbprint as the agent names files; ConfigError otherwise.

    Only 40 hex digits are accepted: the value becomes part of a file path.
    """
    if not isinstance(value, str) or not value.strip():
        raise _cert_error(
            "protectedSettingsCertThumbprint is missing: the protected settings cannot be "
            "decrypted without the name of their certificate"
        )
    text = value.strip()
    if not _THUMBPRINT.fullmatch(text):
        raise _cert_error(
            "protectedSettingsCertThumbprint is not a certificate thumbprint "
            "(40 hexadecimal digits, the SHA-1 of the certificate)"
        )
    return text.upper()


@dataclass(frozen=True)
class CertificatePair:
    """The transport certificate and its RSA key. ``repr`` hides the key."""

    thumbprint: str
    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey
    cert_path: str
    key_path: str

    def __repr__(self) -> str:
        return f"CertificatePair(thumbprint={self.thumbprint!r}, cert_path={self.cert_path!r})"


def _read_small_file(path: str, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _cert_error(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise _cert_error(f"{what} {path} cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _cert_error(f"{what} {path} is not a regular file")
        if info.st_size > MAX_CERT_FILE_BYTES:
            raise _cert_error(f"{what} {path} is larger than {MAX_CERT_FILE_BYTES} bytes")
        data = os.read(fd, MAX_CERT_FILE_BYTES + 1)
    except OSError as exc:
        raise _cert_error(f"{what} {path} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CERT_FILE_BYTES:
        raise _cert_error(f"{what} {path} is larger than {MAX_CERT_FILE_BYTES} bytes")
    return data


def _load_certificate(data: bytes, path: str) -> x509.Certificate:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise _cert_error(f"certificate file {path} does not hold a certificate") from None


def _load_private_key(data: bytes, path: str) -> rsa.RSAPrivateKey:
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # Never echo the library's text: it may quote parts of the key file.
        raise _cert_error(
            f"key file {path} does not hold an unencrypted private key (PEM or DER)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _cert_error(f"key file {path} holds a {type(key).__name__}, not an RSA key")
    return key


def load_certificate_pair(cert_dir: str, thumb: str) -> CertificatePair:
    """Load ``<cert_dir>/<THUMB>.crt`` and ``.prv`` and check they belong together.

    ``thumb`` must already be normalised. The certificate's own SHA-1 must
    equal ``thumb`` (a renamed or replaced file is refused) and the key must
    be the certificate's.
    """
    cert_path = os.path.join(cert_dir, f"{thumb}.crt")
    key_path = os.path.join(cert_dir, f"{thumb}.prv")
    if not os.path.lexists(cert_path):
        raise _cert_error(
            f"no certificate for protectedSettingsCertThumbprint {thumb}: {cert_path} "
            "does not exist (the guest agent places it there with the goal state)"
        )
    cert = _load_certificate(_read_small_file(cert_path, "certificate file"), cert_path)
    actual = thumbprint(cert)
    if actual != thumb:
        raise _cert_error(
            f"certificate file {cert_path} holds the certificate with thumbprint {actual}, "
            f"not {thumb}"
        )
    if not os.path.lexists(key_path):
        raise _cert_error(f"the private key of certificate {thumb} is missing: {key_path}")
    key = _load_private_key(_read_small_file(key_path, "key file"), key_path)
    public = cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise _cert_error(f"certificate {thumb} does not hold an RSA public key")
    if public.public_numbers() != key.public_key().public_numbers():
        raise _cert_error(f"key file {key_path} is not the private key of certificate {thumb}")
    return CertificatePair(
        thumbprint=thumb, certificate=cert, private_key=key, cert_path=cert_path, key_path=key_path
    )


# --- a bounded DER reader for EnvelopedData -----------------------------------


class _DerError(ValueError):
    pass


@dataclass(frozen=True)
class _Tlv:
    tag: int
    value: bytes
    raw: bytes  # the whole element, tag and length included


def _tlv(data: bytes, pos: int) -> tuple[_Tlv, int]:
    if pos + 2 > len(data):
        raise _DerError("truncated element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _DerError("multi-byte tags are not used by CMS")
    first = data[pos + 1]
    head = 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise _DerError("indefinite (BER) lengths are not supported; the platform sends DER")
    else:
        count = first & 0x7F
        if count > 4 or pos + 2 + count > len(data):
            raise _DerError("bad length")
        length = int.from_bytes(data[pos + 2 : pos + 2 + count], "big")
        head += count
    end = pos + head + length
    if end > len(data):
        raise _DerError("element runs past the end of the data")
    return _Tlv(tag, data[pos + head : end], data[pos:end]), end


def _children(value: bytes) -> list[_Tlv]:
    items: list[_Tlv] = []
    pos = 0
    while pos < len(value):
        item, pos = _tlv(value, pos)
        items.append(item)
        if len(items) > 256:
            raise _DerError("too many elements")
    return items


def _expect(item: _Tlv, tag: int, what: str) -> _Tlv:
    if item.tag != tag:
        raise _DerError(f"{what}: unexpected tag 0x{item.tag:02x}")
    return item


def _oid(item: _Tlv) -> str:
    _expect(item, 0x06, "object identifier")
    body = item.value
    if not body:
        raise _DerError("empty object identifier")
    arcs: list[int] = []
    current = 0
    for byte in body:
        current = (current << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(current)
            current = 0
    if body[-1] & 0x80:
        raise _DerError("truncated object identifier")
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in (*head, *arcs[1:]))


@dataclass(frozen=True)
class _Recipient:
    issuer_der: bytes | None
    serial: int | None
    subject_key_id: bytes | None
    key_algorithm: str
    encrypted_key: bytes


@dataclass(frozen=True)
class Envelope:
    """What ``parse_envelope`` learns from an EnvelopedData (no secret in ``repr``)."""

    content_cipher_oid: str
    iv: bytes
    recipients: tuple[_Recipient, ...]
    ciphertext: bytes

    @property
    def content_cipher(self) -> str:
        known = SUPPORTED_CONTENT_CIPHERS.get(self.content_cipher_oid)
        return known[0] if known else f"OID {self.content_cipher_oid}"

    def __repr__(self) -> str:
        return (
            f"Envelope(content_cipher={self.content_cipher!r}, "
            f"recipients={len(self.recipients)}, ciphertext_bytes={len(self.ciphertext)})"
        )


def _recipient(item: _Tlv) -> _Recipient | None:
    if item.tag != 0x30:
        return None  # kari/kekri/pwri/ori: not what the platform sends
    parts = _children(item.value)
    if len(parts) != 4:
        raise _DerError("KeyTransRecipientInfo must have four fields")
    rid, algorithm, encrypted = parts[1], parts[2], parts[3]
    issuer = serial = ski = None
    if rid.tag == 0x30:  # IssuerAndSerialNumber
        name, number = _children(rid.value)
        issuer = _expect(name, 0x30, "issuer").raw
        serial = int.from_bytes(_expect(number, 0x02, "serial").value, "big", signed=True)
    elif rid.tag == 0x80:  # [0] SubjectKeyIdentifier
        ski = rid.value
    else:
        raise _DerError("unknown recipient identifier")
    key_algorithm = _oid(_children(_expect(algorithm, 0x30, "key algorithm").value)[0])
    return _Recipient(
        issuer_der=issuer,
        serial=serial,
        subject_key_id=ski,
        key_algorithm=key_algorithm,
        encrypted_key=_expect(encrypted, 0x04, "encryptedKey").value,
    )


def parse_envelope(der: bytes) -> Envelope:
    """The fields of a DER ContentInfo holding EnvelopedData. Pure.

    Raises ``ConfigError(PROTECTED_SETTINGS_INVALID)`` for anything else.
    """
    try:
        top, end = _tlv(der, 0)
        if end != len(der):
            raise _DerError("trailing data after the envelope")
        content_type, explicit = _children(_expect(top, 0x30, "ContentInfo").value)[:2]
        if _oid(content_type) != _OID_ENVELOPED_DATA:
            raise _DerError("not an EnvelopedData message")
        (enveloped,) = _children(_expect(explicit, 0xA0, "content").value)
        fields = _children(_expect(enveloped, 0x30, "EnvelopedData").value)
        index = 1
        if index < len(fields) and fields[index].tag == 0xA0:
            index += 1  # originatorInfo
        infos = _children(_expect(fields[index], 0x31, "recipientInfos").value)
        recipients = tuple(r for r in (_recipient(i) for i in infos) if r is not None)
        content = _children(_expect(fields[index + 1], 0x30, "EncryptedContentInfo").value)
        algorithm = _children(_expect(content[1], 0x30, "content algorithm").value)
        cipher_oid = _oid(algorithm[0])
        iv = _expect(algorithm[1], 0x04, "IV").value if len(algorithm) > 1 else b""
        if len(content) < 3:
            raise _DerError("the envelope carries no encrypted content")
        body = content[2]
        if body.tag == 0x80:
            ciphertext = body.value
        elif body.tag == 0xA0:  # constructed: OCTET STRING chunks
            ciphertext = b"".join(_expect(c, 0x04, "chunk").value for c in _children(body.value))
        else:
            raise _DerError("unexpected encryptedContent encoding")
    except (_DerError, ValueError, IndexError) as exc:
        raise _invalid(f"protectedSettings is not a CMS EnvelopedData message ({exc})") from None
    return Envelope(cipher_oid, iv, recipients, ciphertext)


def _subject_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return None
    return ext.value.digest


def _matches(recipient: _Recipient, cert: x509.Certificate) -> bool:
    if recipient.subject_key_id is not None:
        return recipient.subject_key_id == _subject_key_id(cert)
    return (
        recipient.serial == cert.serial_number
        and recipient.issuer_der == cert.issuer.public_bytes()
    )


def _own_decrypt(envelope: Envelope, pair: CertificatePair) -> bytes:
    """What the library's CMS code does not take: 3DES/AES-192, or a key-id recipient."""
    name, key_length = SUPPORTED_CONTENT_CIPHERS[envelope.content_cipher_oid]
    recipient = next(r for r in envelope.recipients if _matches(r, pair.certificate))
    try:
        key = pair.private_key.decrypt(recipient.encrypted_key, padding.PKCS1v15())
    except ValueError:
        raise _tampered() from None
    if len(key) != key_length:
        raise _tampered()
    algorithm: BlockCipherAlgorithm
    algorithm = TripleDES(key) if name == "des-ede3-cbc" else algorithms.AES(key)
    if len(envelope.iv) * 8 != algorithm.block_size:
        raise _tampered()
    if not envelope.ciphertext or len(envelope.ciphertext) * 8 % algorithm.block_size:
        raise _tampered()
    decryptor = Cipher(algorithm, modes.CBC(envelope.iv)).decryptor()
    padded = decryptor.update(envelope.ciphertext) + decryptor.finalize()
    unpadder = sym_padding.PKCS7(algorithm.block_size).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise _tampered() from None


def _tampered() -> ConfigError:
    return _invalid(
        "protectedSettings could not be decrypted: the envelope is damaged or was altered "
        "(its key or content does not decrypt with the certificate's key)"
    )


def decrypt_envelope(der: bytes, pair: CertificatePair) -> bytes:
    """The plaintext of a DER EnvelopedData encrypted to ``pair``; ConfigError otherwise."""
    envelope = parse_envelope(der)
    if not any(_matches(r, pair.certificate) for r in envelope.recipients):
        raise _cert_error(
            f"protectedSettings is not encrypted to certificate {pair.thumbprint} "
            f"({len(envelope.recipients)} recipient(s), none matches its issuer and serial)"
        )
    mine = [r for r in envelope.recipients if _matches(r, pair.certificate)]
    if mine[0].key_algorithm != _OID_RSA_ENCRYPTION:
        raise _invalid(
            f"protectedSettings uses the key transport OID {mine[0].key_algorithm}, which is "
            "not supported (supported: rsaEncryption, PKCS#1 v1.5, as the platform sends)"
        )
    if envelope.content_cipher_oid not in SUPPORTED_CONTENT_CIPHERS:
        supported = ", ".join(name for name, _ in SUPPORTED_CONTENT_CIPHERS.values())
        raise _invalid(
            f"protectedSettings uses the content cipher {envelope.content_cipher}, "
            f"which is not supported (supported: {supported})"
        )
    by_issuer = any(
        r.subject_key_id is None and _matches(r, pair.certificate) for r in envelope.recipients
    )
    if envelope.content_cipher_oid not in _LIBRARY_CIPHERS or not by_issuer:
        return _own_decrypt(envelope, pair)
    try:
        return pkcs7.pkcs7_decrypt_der(der, pair.certificate, pair.private_key, [])
    except (ValueError, UnsupportedAlgorithm):
        raise _tampered() from None


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
