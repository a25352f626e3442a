"""cms: hostile envelopes stay bounded now that asn1crypto reads them.

asn1crypto parses lazily, so a damaged field fails only when it is first
read; these tests feed structures built to hurt a parser (deep nesting, huge
element counts, oversized input, trailing data) and check each ends as the
same ``ConfigError(PROTECTED_SETTINGS_INVALID)`` with no chained exception,
and, through ``enable``, as a status file with no traceback. They also check
what the library brings that the hand-written reader refused (BER
indefinite lengths) and what it keeps (several recipients).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.handler.certificates import CertificatePair, load_certificate_pair
from snapshot_runtime.handler.cms import (
    MAX_ENVELOPE_BYTES,
    MAX_RECIPIENTS,
    decrypt_envelope,
    parse_envelope,
)
from snapshot_runtime.handler.commands import handler_main
from snapshot_runtime.handler.protected_settings import (
    MAX_PROTECTED_SETTINGS_BYTES,
    decrypt_protected_settings,
)
from tests.support.handlerkit import (
    TransportCert,
    encrypt_protected,
    encrypt_protected_cms,
    make_handler_dir,
    make_transport_cert,
    public_settings,
    write_handler_config,
)
from tests.support.requirements import require

SECRET = {"objectStr": "c2VjcmV0LWRpc2stbGlzdA==", "logsBlobUri": "https://x/c/b?sig=TOPSECRETSIG"}
OID_ENVELOPED_DATA = bytes.fromhex("06092a864886f70d010703")


@pytest.fixture(scope="module")
def cert() -> TransportCert:
    return make_transport_cert()


@pytest.fixture
def pair(tmp_path: Path, cert: TransportCert) -> CertificatePair:
    cert.install(tmp_path)
    return load_certificate_pair(str(tmp_path), cert.thumbprint)


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + body


def _elements(der: bytes) -> list[bytes]:
    """The whole DER elements inside a constructed element's contents."""
    out, pos = [], 0
    while pos < len(der):
        first = der[pos + 1]
        head, size = 2, first
        if first & 0x80:
            count = first & 0x7F
            size = int.from_bytes(der[pos + 2 : pos + 2 + count], "big")
            head += count
        out.append(der[pos : pos + head + size])
        pos += head + size
    return out


def _contents(element: bytes) -> bytes:
    first = element[1]
    return element[2 + (first & 0x7F if first & 0x80 else 0) :]


def _enveloped_parts(der: bytes) -> list[bytes]:
    """[version, recipientInfos, encryptedContentInfo] of a ContentInfo(EnvelopedData)."""
    _, explicit = _elements(_contents(der))
    (enveloped,) = _elements(_contents(explicit))
    return _elements(_contents(enveloped))


def _content_info(*enveloped_fields: bytes) -> bytes:
    return _der(0x30, OID_ENVELOPED_DATA + _der(0xA0, _der(0x30, b"".join(enveloped_fields))))


def _refused(der: bytes, pair: CertificatePair, needle: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        decrypt_protected_settings(base64.b64encode(der).decode(), pair)
    error = info.value
    assert error.code is ErrorCode.PROTECTED_SETTINGS_INVALID
    assert needle in error.message
    # No chained library exception: nothing a traceback could print but ours.
    assert error.__cause__ is None and error.__suppress_context__
    assert "TOPSECRET" not in str(error)
    return error


def test_deep_indefinite_nesting_is_refused(pair: CertificatePair) -> None:
    # The classic recursion bomb: 50,000 nested indefinite-length SEQUENCEs.
    depth = 50_000
    _refused(b"\x30\x80" * depth + b"\x00\x00" * depth, pair, "cannot be read")
    # The same inside a well-formed ContentInfo header.
    inner = b"\x30\x80" * depth + b"\x00\x00" * depth
    _refused(_content_info(inner), pair, "cannot be read")


def _nest(depth: int) -> bytes:
    inner = b"\x04\x00"
    for _ in range(depth):
        inner = _der(0x30, inner)
    return inner


@pytest.mark.parametrize("where", ["content", "recipient", "encrypted_content_info"])
def test_deep_definite_nesting_is_refused(pair, cert: TransportCert, where: str) -> None:
    version, infos, content = _enveloped_parts(base64.b64decode(encrypt_protected(SECRET, cert)))
    nest = _nest(20_000)
    if where == "content":
        der = _der(0x30, OID_ENVELOPED_DATA + _der(0xA0, nest))
    elif where == "recipient":
        der = _content_info(version, _der(0x31, nest), content)
    else:
        der = _content_info(version, infos, nest)
    _refused(der, pair, "cannot be read")


def test_oversized_envelopes_are_refused_before_parsing(pair: CertificatePair) -> None:
    big = _content_info(_der(0x04, b"\x00" * MAX_ENVELOPE_BYTES))
    with pytest.raises(ConfigError, match="larger than") as info:
        parse_envelope(big)
    assert info.value.code is ErrorCode.PROTECTED_SETTINGS_INVALID
    too_long = "A" * (MAX_PROTECTED_SETTINGS_BYTES + 4)
    with pytest.raises(ConfigError, match="larger than") as info:
        decrypt_protected_settings(too_long, pair)
    assert info.value.code is ErrorCode.PROTECTED_SETTINGS_INVALID


def test_too_many_recipients_are_refused(pair: CertificatePair, cert: TransportCert) -> None:
    version, infos, content = _enveloped_parts(base64.b64decode(encrypt_protected(SECRET, cert)))
    (mine,) = _elements(_contents(infos))
    crowd = _der(0x31, mine * (MAX_RECIPIENTS + 1))
    _refused(_content_info(version, crowd, content), pair, f"more than {MAX_RECIPIENTS}")
    # The worst case of the same within the size cap: the smallest elements.
    tiny = _der(0x31, b"\x30\x00" * ((MAX_ENVELOPE_BYTES - 2048) // 2))
    _refused(_content_info(version, tiny, content), pair, "recipients")


def test_trailing_data_and_truncation_are_refused(pair: CertificatePair, cert) -> None:
    der = base64.b64decode(encrypt_protected(SECRET, cert))
    _refused(der + b"\x00\x00", pair, "cannot be read")
    _refused(der[:-1], pair, "cannot be read")


def test_missing_content_and_iv_are_named(pair: CertificatePair, cert: TransportCert) -> None:
    version, infos, content = _enveloped_parts(
        base64.b64decode(encrypt_protected_cms(SECRET, cert, cipher="des-ede3-cbc"))
    )
    content_type, algorithm, _ = _elements(_contents(content))
    no_body = _der(0x30, content_type + algorithm)
    _refused(_content_info(version, infos, no_body), pair, "no encrypted content")
    oid, _iv = _elements(_contents(algorithm))
    no_iv = _der(0x30, content_type + _der(0x30, oid) + _der(0x80, b"\x00" * 16))
    _refused(_content_info(version, infos, no_iv), pair, "no IV for des-ede3-cbc")


def _recipient_for(cert: TransportCert, content_key: bytes) -> bytes:
    """A KeyTransRecipientInfo (issuer and serial, rsaEncryption) for ``cert``."""
    public = cert.certificate.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    serial = cert.certificate.serial_number
    rid = _der(
        0x30,
        cert.certificate.issuer.public_bytes()
        + _der(0x02, serial.to_bytes(serial.bit_length() // 8 + 1, "big")),
    )
    rsa_encryption = _der(0x30, bytes.fromhex("06092a864886f70d0101010500"))
    encrypted = _der(0x04, public.encrypt(content_key, padding.PKCS1v15()))
    return _der(0x30, _der(0x02, b"\x00") + rid + rsa_encryption + encrypted)


@pytest.mark.parametrize("cipher", ["aes-256-cbc", "des-ede3-cbc"])
def test_several_recipients_pick_ours(
    pair: CertificatePair, cert: TransportCert, cipher: str
) -> None:
    other = make_transport_cert("another VM")
    version, theirs, content = _enveloped_parts(
        base64.b64decode(encrypt_protected_cms(SECRET, other, cipher=cipher))
    )
    (their_info,) = _elements(_contents(theirs))
    only_theirs = _content_info(version, _der(0x31, their_info * 3), content)
    with pytest.raises(ConfigError) as info:
        decrypt_envelope(only_theirs, pair)
    assert info.value.code is ErrorCode.CERTIFICATE_NOT_FOUND
    assert "3 recipient(s)" in info.value.message
    # The same content key, also wrapped for us, listed after theirs.
    their_key = _elements(_contents(their_info))[-1]
    content_key = other.key.decrypt(_contents(their_key), padding.PKCS1v15())
    both = _der(0x31, their_info + _recipient_for(cert, content_key))
    der = _content_info(version, both, content)
    assert len(parse_envelope(der).recipients) == 2
    assert json.loads(decrypt_envelope(der, pair)) == SECRET


def _indefinite(element: bytes) -> bytes:
    """The same constructed element with a BER indefinite length."""
    return bytes([element[0], 0x80]) + _contents(element) + b"\x00\x00"


@pytest.mark.parametrize("cipher", ["aes-256-cbc", "des-ede3-cbc"])
def test_ber_indefinite_lengths_are_read(pair, cert: TransportCert, cipher: str) -> None:
    # openssl cms -stream writes these; the hand-written reader refused them,
    # and the library's pkcs7_decrypt_der (strict DER) calls them damaged.
    der = base64.b64decode(encrypt_protected_cms(SECRET, cert, cipher=cipher))
    content_type, explicit = _elements(_contents(der))
    (enveloped,) = _elements(_contents(explicit))
    ber = _indefinite(_der(0x30, content_type + _indefinite(_der(0xA0, _indefinite(enveloped)))))
    assert ber != der
    assert decrypt_protected_settings(base64.b64encode(ber).decode(), pair) == SECRET


@pytest.mark.parametrize("flag", ["-aes256", "-des3"])
def test_openssl_streamed_envelopes_decrypt(tmp_path: Path, pair, cert, flag: str) -> None:
    # A second CMS implementation writing BER (-stream: indefinite lengths,
    # chunked content). Installed by scripts/install-system-deps.sh.
    require(shutil.which("openssl") is not None, "the openssl command (CMS cross-check)")
    src, out, crt = tmp_path / "in", tmp_path / "out.ber", tmp_path / "recip.pem"
    src.write_text(json.dumps(SECRET))
    crt.write_bytes(cert.cert_pem())
    command = ["openssl", "cms", "-encrypt", "-binary", "-stream", "-outform", "DER", flag]
    subprocess.run(
        [*command, "-in", str(src), "-out", str(out), str(crt)], check=True, capture_output=True
    )
    ber = out.read_bytes()
    assert ber[:2] == b"\x30\x80"  # indefinite length: really BER
    assert decrypt_protected_settings(base64.b64encode(ber).decode(), pair) == SECRET


def test_enable_reports_a_hostile_envelope_without_traceback(
    tmp_path: Path, cert: TransportCert, monkeypatch, capsys
) -> None:
    cert.install(tmp_path / "waagent")
    conf = write_handler_config(
        tmp_path / "handler.conf",
        state_dir=str(tmp_path / "state"),
        run_dir=str(tmp_path / "run"),
        include_mounts=str(tmp_path / "never-mounted"),
    )
    handler = make_handler_dir(tmp_path, tmp_path / "waagent", handler_config=conf)
    depth = 50_000
    bomb = base64.b64encode(_content_info(b"\x30\x80" * depth + b"\x00\x00" * depth)).decode()
    handler.write_settings(0, public_settings("task-h"), bomb, thumbprint=cert.thumbprint)
    monkeypatch.setenv("ConfigSequenceNumber", "0")
    assert handler_main(handler.args("enable")) == 0
    out = capsys.readouterr()
    status = handler.read_status(0)
    code = ErrorCode.PROTECTED_SETTINGS_INVALID
    assert status["status"]["code"] == str(code.code)
    assert status["message"].startswith(f"{code.value}: ")
    assert "not a CMS EnvelopedData" in status["message"]
    texts = [out.out, out.err]
    texts += [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    for text in texts:
        assert "Traceback" not in text
        assert "RecursionError" not in text
    assert not (tmp_path / "state").exists()  # no job ever started
