"""A guest agent in miniature: certificates, encrypted settings, handler directories.

Everything here does what the platform and the agent do, with real
cryptography: an RSA transport certificate saved as ``<THUMB>.crt``/``.prv``
(PEM, as waagent writes them), protected settings encrypted to it as a CMS
EnvelopedData (DER, base64, PKCS#1 v1.5 key transport, AES-CBC content),
and a handler directory with HandlerEnvironment.json, ``config/N.settings``,
``status/`` and a log folder.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from snapshot_runtime.core.ticks import datetime_to_ticks
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TransportCert:
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def thumbprint(self) -> str:
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return hashlib.sha1(der).hexdigest().upper()

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def install(self, cert_dir: Path, *, key: bool = True) -> None:
        """Write ``<THUMB>.crt`` (0644) and ``<THUMB>.prv`` (0600) as the agent does."""
        cert_dir.mkdir(parents=True, exist_ok=True)
        crt = cert_dir / f"{self.thumbprint}.crt"
        crt.write_bytes(self.cert_pem())
        crt.chmod(0o644)
        if key:
            prv = cert_dir / f"{self.thumbprint}.prv"
            prv.write_bytes(self.key_pem())
            prv.chmod(0o600)


def make_transport_cert(
    common_name: str = "Windows Azure CRP Certificate Generator",
) -> TransportCert:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return TransportCert(cert, key)


def encrypt_protected(
    settings: Mapping[str, Any],
    cert: TransportCert,
    *,
    cipher: type[algorithms.AES128] | type[algorithms.AES256] = algorithms.AES256,
) -> str:
    """The platform's form: CMS EnvelopedData to ``cert``, DER, base64."""
    der = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(json.dumps(settings).encode("utf-8"))
        .add_recipient(cert.certificate)
        .set_content_encryption_algorithm(cipher)
        .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    return base64.b64encode(der).decode("ascii")


# --- a CMS EnvelopedData writer for what PKCS7EnvelopeBuilder cannot build ------------
# (3DES and AES-192 content, subject-key-identifier recipients). Checked against
# the library: its AES-256 output must decrypt with pkcs7_decrypt_der.

_CIPHERS = {
    "des-ede3-cbc": ("1.2.840.113549.3.7", 24, 8),
    "aes-128-cbc": ("2.16.840.1.101.3.4.1.2", 16, 16),
    "aes-192-cbc": ("2.16.840.1.101.3.4.1.22", 24, 16),
    "aes-256-cbc": ("2.16.840.1.101.3.4.1.42", 32, 16),
}


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + body


def _der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def encrypt_protected_cms(
    settings: Mapping[str, Any],
    cert: TransportCert,
    *,
    cipher: str,
    key_id: bool = False,
    oaep: bool = False,
) -> str:
    """An EnvelopedData (DER, base64) with any CBC cipher the platform has used.

    ``oaep`` uses RSAES-OAEP key transport, which the platform does not send.
    """
    oid, key_size, block = _CIPHERS[cipher]
    key, iv = os.urandom(key_size), os.urandom(block)
    algorithm = TripleDES(key) if cipher == "des-ede3-cbc" else algorithms.AES(key)
    padder = sym_padding.PKCS7(block * 8).padder()
    padded = padder.update(json.dumps(settings).encode()) + padder.finalize()
    encryptor = Cipher(algorithm, modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    public = cert.certificate.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    if oaep:
        scheme = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
        encrypted_key = public.encrypt(key, scheme)
        transport = _der_oid("1.2.840.113549.1.1.7")
    else:
        encrypted_key = public.encrypt(key, padding.PKCS1v15())
        transport = _der_oid("1.2.840.113549.1.1.1") + b"\x05\x00"
    if key_id:
        ski = x509.SubjectKeyIdentifier.from_public_key(public).digest
        version, rid = 2, _der(0x80, ski)
    else:
        issuer = cert.certificate.issuer.public_bytes()
        version, rid = 0, _der(0x30, issuer + _der_int(cert.certificate.serial_number))
    recipient = _der(
        0x30,
        _der_int(version) + rid + _der(0x30, transport) + _der(0x04, encrypted_key),
    )
    content = _der(
        0x30,
        _der_oid("1.2.840.113549.1.7.1")
        + _der(0x30, _der_oid(oid) + _der(0x04, iv))
        + _der(0x80, ciphertext),
    )
    enveloped = _der(0x30, _der_int(version) + _der(0x31, recipient) + content)
    info = _der(0x30, _der_oid("1.2.840.113549.1.7.3") + _der(0xA0, enveloped))
    return base64.b64encode(info).decode("ascii")


def disk_object_str(urls: list[str]) -> str:
    return base64.b64encode(json.dumps({"blobSASUri": urls}).encode()).decode()


def now_ticks(offset: dt.timedelta = dt.timedelta(0)) -> str:
    return str(datetime_to_ticks(dt.datetime.now(dt.timezone.utc) + offset))


def public_settings(task_id: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "taskId": task_id,
        "commandToExecute": "snapshot",
        "commandStartTimeUTCTicks": now_ticks(),
        "locale": "en-us",
        "vmType": "microsoft.compute/virtualmachines",
    }
    doc.update(extra)
    return doc


@dataclass
class HandlerDir:
    """``/var/lib/waagent/<Publisher.Type-version>/`` as the agent lays it out."""

    root: Path
    log: Path
    cert_dir: Path
    handler_config: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def status(self) -> Path:
        return self.root / "status"

    def settings_path(self, seq: int) -> Path:
        return self.config / f"{seq}.settings"

    def status_path(self, seq: int) -> Path:
        return self.status / f"{seq}.status"

    def write_settings(
        self,
        seq: int,
        public: Mapping[str, Any],
        protected: str | Mapping[str, Any] | None,
        *,
        thumbprint: str | None,
        mtime: float | None = None,
    ) -> Path:
        doc = {
            "runtimeSettings": [
                {
                    "handlerSettings": {
                        "protectedSettingsCertThumbprint": thumbprint,
                        "protectedSettings": protected,
                        "publicSettings": dict(public),
                    }
                }
            ]
        }
        path = self.settings_path(seq)
        path.write_text(json.dumps(doc))
        path.chmod(0o600)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path

    def args(self, command: str) -> list[str]:
        argv = [command, "--handler-dir", str(self.root), "--cert-dir", str(self.cert_dir)]
        if self.handler_config is not None:
            argv += ["--handler-config", str(self.handler_config)]
        return argv

    def run(
        self, command: str, seq: int | None, *, timeout: float = 30
    ) -> tuple[int, str, str, float]:
        """Run a command as the agent does: a process, cwd = handler dir, ConfigSequenceNumber."""
        env = {k: v for k, v in os.environ.items() if k != "ConfigSequenceNumber"}
        env.update(self.extra_env)
        env["PYTHONPATH"] = str(REPO)
        if seq is not None:
            env["ConfigSequenceNumber"] = str(seq)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "snapshot_runtime.handler", *self.args(command)],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started

    def read_status(self, seq: int) -> dict[str, Any]:
        """The status file's top entry, plus ``blob`` (the embedded blob document)."""
        doc = json.loads(self.status_path(seq).read_text())
        assert isinstance(doc, list) and len(doc) == 1
        top: dict[str, Any] = doc[0]
        inner = top["status"]
        top["blob"] = json.loads(inner["substatus"][0]["name"])[0]
        top["message"] = json.loads(inner["formattedMessage"]["message"])["messageStr"]
        return top

    def wait_status(self, seq: int, want: set[str], *, timeout: float = 30) -> dict[str, Any]:
        """Poll until the blob status (the truth; the file may be forced) is in
        ``want`` and is not the interim report ("success" with code 4)."""
        last: dict[str, Any] | None = None

        def reached() -> dict[str, Any] | None:
            nonlocal last
            if self.status_path(seq).exists():
                last = self.read_status(seq)
                blob = last["blob"]["status"]
                if blob["status"] in want and blob["code"] != "4":
                    return last
            return None

        return wait_until(
            reached, timeout, f"status {seq} to reach {want}", interval=0.05, detail=lambda: last
        )


def make_handler_dir(
    base: Path, cert_dir: Path, *, handler_config: Path | None = None
) -> HandlerDir:
    """A handler directory with HandlerEnvironment.json, config/, status/ and a log folder."""
    root = base / "Microsoft.Azure.RecoveryServices.VMSnapshotLinux-1.0.0"
    log = base / "log"
    for d in (root / "config", root / "status", log):
        d.mkdir(parents=True, exist_ok=True)
    env = [
        {
            "name": "Microsoft.Azure.RecoveryServices.VMSnapshotLinux",
            "version": 1.0,
            "handlerEnvironment": {
                "logFolder": str(log),
                "configFolder": str(root / "config"),
                "statusFolder": str(root / "status"),
                "heartbeatFile": str(root / "heartbeat.log"),
            },
        }
    ]
    (root / "HandlerEnvironment.json").write_text(json.dumps(env))
    return HandlerDir(root=root, log=log, cert_dir=cert_dir, handler_config=handler_config)


def write_handler_config(path: Path, **values: str) -> Path:
    lines = ["[handler]", *(f"{k} = {v}" for k, v in values.items())]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


# The reference's status document, key by key and in order (its Status.py):
# the top entry, its "status" object, and one snapshotInfo entry.
TOP_KEYS = ["version", "timestampUTC", "status"]
STATUS_KEYS = [
    "name",
    "operation",
    "status",
    "substatus",
    "code",
    "taskId",
    "formattedMessage",
    "storageDetails",
    "commandStartTimeUTCTicks",
    "telemetryData",
    "uniqueMachineId",
    "snapshotInfo",
    "vmHealthInfo",
]
SNAPSHOT_KEYS = [
    "isSuccessful",
    "snapshotUri",
    "errorMessage",
    "blobUri",
    "directDriveSnapshotIdentifier",
]


# The guest agent's status parser (WALinuxAgent ``parse_ext_status``), as rules:
# a list whose first entry has ``status.status`` in the agent's values (an
# unknown value becomes "error"), an optional ``formattedMessage`` holding
# ``lang`` and ``message``, and substatus entries with a valid ``status``.
AGENT_STATUS_VALUES = frozenset({"transitioning", "error", "success", "warning"})


def agent_status_problems(doc: object) -> list[str]:
    """Why the guest agent would reject (or degrade) a status file; [] if it accepts it."""
    problems: list[str] = []
    if not isinstance(doc, list) or not doc:
        return ["the status must be a non-empty array"]
    entry = doc[0]
    status = entry.get("status") if isinstance(entry, dict) else None
    if not isinstance(status, dict):
        return ["status is missing"]
    if status.get("status") not in AGENT_STATUS_VALUES:
        problems.append(f"status/status {status.get('status')!r} would be reported as error")
    message = status.get("formattedMessage")
    if message is not None and not (
        isinstance(message, dict) and "lang" in message and "message" in message
    ):
        problems.append("formattedMessage lacks lang/message")
    for sub in status.get("substatus") or []:
        if sub is None:
            continue
        if not isinstance(sub, dict) or sub.get("status") not in AGENT_STATUS_VALUES:
            problems.append(f"substatus/status invalid in {sub!r:.80}")
        elif sub.get("formattedMessage") is not None and not (
            isinstance(sub["formattedMessage"], dict)
            and {"lang", "message"} <= set(sub["formattedMessage"])
        ):
            problems.append("substatus formattedMessage lacks lang/message")
    return problems
