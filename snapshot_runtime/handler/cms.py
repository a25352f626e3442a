"""CMS EnvelopedData: the platform's envelope around protectedSettings.

The reference pipes the envelope through ``openssl cms -decrypt``; here it is
read with ``asn1crypto`` (``cms.ContentInfo``) and decrypted with the
``cryptography`` library's primitives, with no subprocess and no temp file.

Supported (see docs/extension-handler.md):

* key transport: RSA, PKCS#1 v1.5 (``rsaEncryption``), as the platform sends;
  recipients named by issuer and serial number or by subject key identifier;
* content encryption: AES-256-CBC (the platform's FIPS 140-3 choice),
  AES-128-CBC, AES-192-CBC and 3DES-CBC (``des-ede3-cbc``, the platform's
  long-standing default: the reference's own sample envelope in
  ``HandlerUtil.py`` uses it);
* DER, and BER with indefinite lengths (what ``openssl cms -stream`` writes).

All of them go one way: asn1crypto reads the fields, the library's RSA,
TripleDES (the ``decrepit`` module), AES, CBC and PKCS#7 unpadding decrypt.
The library's own ``pkcs7_decrypt_der`` is not used, on purpose: it takes only
AES-128/256-CBC, recipients named by issuer and serial, and strict DER, so it
would have to sit beside this path rather than replace it, and it refuses a
BER envelope as if it were damaged (a wrong verdict; cryptography 50). One
path gives every envelope the same checks and the same errors.

CBC envelopes carry no integrity check: tampering shows up as a padding
error, as text that is not JSON, or (for a targeted change) as settings that
fail validation later. Nothing here claims more than that.

Hostile input is bounded before and while parsing: at most
``MAX_ENVELOPE_BYTES`` of DER, no trailing data, at most ``MAX_RECIPIENTS``
recipient infos; asn1crypto itself caps indefinite-length nesting (10
levels) and parses definite lengths without recursion. Any failure to read
the structure is ``ConfigError(PROTECTED_SETTINGS_INVALID)`` naming the part
that could not be read, never the library's text (which may quote bytes).

Errors are ``ConfigError``: ``CERTIFICATE_NOT_FOUND`` for a message not
encrypted to the given certificate, ``PROTECTED_SETTINGS_INVALID`` when the
envelope is unusable. Messages name OIDs and counts; never key material,
ciphertext or plaintext. ``parse_envelope`` is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from asn1crypto import cms, core
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, algorithms, modes

from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.handler.certificates import CertificatePair

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "MAX_RECIPIENTS",
    "SUPPORTED_CONTENT_CIPHERS",
    "Envelope",
    "Recipient",
    "decrypt_envelope",
    "parse_envelope",
]

# Settings files are capped at 1 MiB, and protectedSettings is base64 inside
# them: its DER is at most three quarters of that.
MAX_ENVELOPE_BYTES = 768 * 1024
# The platform sends one recipient; a few more are legitimate CMS. Counting
# them makes asn1crypto split the whole set first: the worst case, the DER cap
# filled with 2-byte elements (390,000 of them), took 0.4-0.8 s on the 2-core
# CI machine (the hand-written reader stopped at the 257th in 3 ms). Bounded
# by the size cap; not worth a second DER walker to bring it lower.
MAX_RECIPIENTS = 256

_OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
_OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
_OID_DES_EDE3_CBC = "1.2.840.113549.3.7"
_OID_AES128_CBC = "2.16.840.1.101.3.4.1.2"
_OID_AES192_CBC = "2.16.840.1.101.3.4.1.22"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"

# OID -> (name, key length).
SUPPORTED_CONTENT_CIPHERS: Mapping[str, tuple[str, int]] = {
    _OID_AES256_CBC: ("aes-256-cbc", 32),
    _OID_AES128_CBC: ("aes-128-cbc", 16),
    _OID_DES_EDE3_CBC: ("des-ede3-cbc", 24),
    _OID_AES192_CBC: ("aes-192-cbc", 24),
}


def _cert_error(message: str) -> ConfigError:
    return ConfigError(ErrorCode.CERTIFICATE_NOT_FOUND, message)


def _invalid(message: str) -> ConfigError:
    return ConfigError(ErrorCode.PROTECTED_SETTINGS_INVALID, message)


class _Malformed(ValueError):
    """A structure asn1crypto read but this module refuses (own words only)."""


@dataclass(frozen=True)
class Recipient:
    """One KeyTransRecipientInfo: who it names and the encrypted content key."""

    issuer_der: bytes | None
    serial: int | None
    subject_key_id: bytes | None
    key_algorithm: str
    encrypted_key: bytes = field(repr=False)

    def matches(self, cert: x509.Certificate) -> bool:
        """Whether this recipient names ``cert`` (by key identifier or issuer and serial)."""
        if self.subject_key_id is not None:
            return self.subject_key_id == _subject_key_id(cert)
        return self.serial == cert.serial_number and self.issuer_der == cert.issuer.public_bytes()


@dataclass(frozen=True)
class Envelope:
    """What ``parse_envelope`` learns from an EnvelopedData (no secret in ``repr``)."""

    content_cipher_oid: str
    iv: bytes
    recipients: tuple[Recipient, ...]
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


def _bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise _Malformed(f"{what} is not an octet string")
    return value


def _recipient(info: cms.RecipientInfo) -> Recipient | None:
    if info.name != "ktri":
        return None  # kari/kekri/pwri/ori: not what the platform sends
    ktri = info.chosen
    rid = ktri["rid"]
    issuer = serial = ski = None
    if rid.name == "issuer_and_serial_number":
        issuer = rid.chosen["issuer"].dump()
        serial = rid.chosen["serial_number"].native
        if not isinstance(serial, int):
            raise _Malformed("a recipient's serial number is not an integer")
    else:  # the only other choice asn1crypto reads: subject_key_identifier
        ski = _bytes(rid.chosen.native, "a recipient's key identifier")
    return Recipient(
        issuer_der=issuer,
        serial=serial,
        subject_key_id=ski,
        key_algorithm=str(ktri["key_encryption_algorithm"]["algorithm"].dotted),
        encrypted_key=_bytes(ktri["encrypted_key"].native, "a recipient's encrypted key"),
    )


def _read(der: bytes) -> Envelope:
    """The asn1crypto walk; raises whatever the library raises on bad input."""
    info = cms.ContentInfo.load(der, strict=True)  # strict: no trailing data
    content_type = str(info["content_type"].dotted)
    if content_type != _OID_ENVELOPED_DATA:
        raise _Malformed(f"content type {content_type}, not EnvelopedData")
    enveloped = info["content"]
    infos = enveloped["recipient_infos"]
    if len(infos) > MAX_RECIPIENTS:
        raise _Malformed(f"more than {MAX_RECIPIENTS} recipients")
    recipients = tuple(r for r in (_recipient(i) for i in infos) if r is not None)
    content = enveloped["encrypted_content_info"]
    algorithm = content["content_encryption_algorithm"]
    cipher_oid = str(algorithm["algorithm"].dotted)
    iv = b""
    # Parameters of other ciphers (RC2, GCM...) have other shapes: not read, so
    # an unsupported cipher is reported by name, not as damage.
    if cipher_oid in SUPPORTED_CONTENT_CIPHERS:
        parameters = algorithm["parameters"]
        if not isinstance(parameters, core.OctetString):
            raise _Malformed(f"no IV for {SUPPORTED_CONTENT_CIPHERS[cipher_oid][0]}")
        iv = _bytes(parameters.native, "the IV")
    body = content["encrypted_content"]
    # A constructed (chunked) encryptedContent is merged by asn1crypto.
    if isinstance(body, core.Void) or body.native is None:
        raise _Malformed("the envelope carries no encrypted content")
    return Envelope(cipher_oid, iv, recipients, _bytes(body.native, "the encrypted content"))


def parse_envelope(der: bytes) -> Envelope:
    """The fields of a DER ContentInfo holding EnvelopedData. Pure.

    Raises ``ConfigError(PROTECTED_SETTINGS_INVALID)`` for anything else.
    """
    if len(der) > MAX_ENVELOPE_BYTES:
        raise _invalid(f"protectedSettings is larger than {MAX_ENVELOPE_BYTES} bytes of DER")
    try:
        return _read(der)
    except _Malformed as exc:
        raise _invalid(f"protectedSettings is not a CMS EnvelopedData message ({exc})") from None
    except Exception:
        # asn1crypto parses lazily, so damage surfaces as ValueError, TypeError,
        # KeyError, IndexError, OverflowError... wherever a field is first read.
        # Every one of them means the same for untrusted bytes: not a usable
        # envelope. Its text is not echoed (it may quote the bytes).
        raise _invalid(
            "protectedSettings is not a CMS EnvelopedData message (its DER structure "
            "cannot be read)"
        ) from None


def _subject_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return None
    return ext.value.digest


def _tampered() -> ConfigError:
    return _invalid(
        "protectedSettings could not be decrypted: the envelope is damaged or was altered "
        "(its key or content does not decrypt with the certificate's key)"
    )


def _decrypt_content(envelope: Envelope, recipient: Recipient, pair: CertificatePair) -> bytes:
    """RSA-unwrap the content key, CBC-decrypt, unpad; every failure reads as tampering."""
    name, key_length = SUPPORTED_CONTENT_CIPHERS[envelope.content_cipher_oid]
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


def decrypt_envelope(der: bytes, pair: CertificatePair) -> bytes:
    """The plaintext of a DER EnvelopedData encrypted to ``pair``; ConfigError otherwise."""
    envelope = parse_envelope(der)
    mine = [r for r in envelope.recipients if r.matches(pair.certificate)]
    if not mine:
        raise _cert_error(
            f"protectedSettings is not encrypted to certificate {pair.thumbprint} "
            f"({len(envelope.recipients)} recipient(s), none matches its issuer and serial)"
        )
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
    return _decrypt_content(envelope, mine[0], pair)
