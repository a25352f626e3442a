"""The VM's transport certificate and its key, as the guest agent leaves them.

``protectedSettingsCertThumbprint`` names the certificate the protected
settings are encrypted to; the agent keeps it and its key in its folder as
``<THUMBPRINT>.crt`` and ``<THUMBPRINT>.prv`` (PEM; DER is accepted too).
``load_certificate_pair`` reads both, refuses a renamed or replaced file (the
certificate's own SHA-1 must be the thumbprint) and a key that is not the
certificate's. Decryption is in ``cms.py``.

Errors are ``ConfigError(CERTIFICATE_NOT_FOUND)``. Messages name files and
thumbprints; never key material (the library's own text, which may quote the
key file, is never echoed).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from snapshot_runtime.core.errors import ConfigError, ErrorCode

__all__ = [
    "MAX_CERT_FILE_BYTES",
    "CertificatePair",
    "load_certificate_pair",
    "normalise_thumbprint",
    "thumbprint",
]

MAX_CERT_FILE_BYTES = 64 * 1024

_THUMBPRINT = re.compile(r"[0-9A-Fa-f]{40}")


def _cert_error(message: str) -> ConfigError:
    return ConfigError(ErrorCode.CERTIFICATE_NOT_FOUND, message)


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
