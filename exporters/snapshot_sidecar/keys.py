"""The sidecar's X25519 key pair: what lets the runtime hand it logsBlobUri (docs/spool.md).

* ``<state-dir>/sidecar.key``: private key, PKCS8 PEM, mode 0600, created once.
* ``<state-dir>/sidecar.pub`` and ``<spool>/sidecar.pub``: the raw 32-byte public
  key. The spool copy is (re)published at every start, atomically (tmp +
  rename), because the spool lives on a tmpfs that a reboot empties.

``Keys.open(sealed)`` returns the logsBlobUri sealed in a credentials.sealed
text of either format version (2, PyNaCl's sealed box, what the runtime
writes; or 1, what the previous runtime wrote), or raises ``ValueError``
(tampered, sealed to another key, malformed). The key files are the same for
both versions: a sidecar upgraded in place keeps its key.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from snapshot_runtime.core.atomic_file import write_atomic
from snapshot_runtime.telemetry.sealing import (
    generate_keypair,
    public_key_of,
    unseal,
    versions_document,
)
from snapshot_runtime.telemetry.spool_schema import (
    MAX_SEALED_BYTES,
    SIDECAR_PUB_FILE,
    SIDECAR_SEALING_FILE,
    SpoolFormatError,
    loads_bounded,
)

__all__ = ["PRIVATE_FILE", "PUBLIC_FILE", "Keys"]

PRIVATE_FILE = "sidecar.key"
PUBLIC_FILE = SIDECAR_PUB_FILE  # the same name in the state directory as in the spool


class Keys:
    def __init__(self, private_pem: bytes, public_raw: bytes) -> None:
        self._private = private_pem
        self.public = public_raw

    @classmethod
    def load_or_create(cls, state_dir: str | os.PathLike[str]) -> Keys:
        """Load the key pair, making one when there is no private key.

        The private key is the truth: ``sidecar.pub`` is derived from it (as
        PyNaCl, which opens version 2, derives it) and rewritten when missing
        or different, never a reason to make a new key, which would strand
        every job already sealed to the old one. ``ValueError`` when the key
        file is not an X25519 private key.
        """
        directory = Path(state_dir)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        private_path = directory / PRIVATE_FILE
        public_path = directory / PUBLIC_FILE
        try:
            private = private_path.read_bytes()
        except FileNotFoundError:
            private, public = generate_keypair()
            write_atomic(private_path, private, mode=0o600)
        else:
            # A key someone made readable by others is still ours, but no longer
            # secret to them: tighten it (and say so in the log at the caller).
            if private_path.stat().st_mode & 0o077:
                os.chmod(private_path, 0o600)
            try:
                public = public_key_of(private)
            except ValueError as exc:
                raise ValueError(f"{private_path}: {exc}") from exc
        try:
            stored = public_path.read_bytes()
        except FileNotFoundError:
            stored = None
        if stored != public:
            write_atomic(public_path, public, mode=0o644)
        return cls(private, public)

    def publish(self, spool: str | os.PathLike[str]) -> Path:
        """Write ``<spool>/sidecar.sealing`` then ``<spool>/sidecar.pub`` (spool dir 0700).

        ``sidecar.sealing`` lists the credentials.sealed versions this sidecar
        opens; a runtime seals only in a version listed there. Written first,
        so a runtime that sees the key also sees what it may seal with it.
        """
        root = Path(spool)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        versions = root / SIDECAR_SEALING_FILE
        try:
            current = versions.read_bytes()
        except FileNotFoundError:
            current = None
        if current != versions_document():
            write_atomic(versions, versions_document(), mode=0o644)
        target = root / PUBLIC_FILE
        with contextlib.suppress(FileNotFoundError):
            if target.read_bytes() == self.public:
                return target
        write_atomic(target, self.public, mode=0o644)
        return target

    def open(self, sealed: str) -> str:
        """The logsBlobUri inside a credentials.sealed text. Raises ValueError."""
        plain = unseal(self._private, sealed)
        try:
            # Anyone can seal to our public key: the plaintext is untrusted too.
            doc = loads_bounded(plain, max_bytes=MAX_SEALED_BYTES)
        except SpoolFormatError as exc:
            raise ValueError(f"sealed credentials are not JSON ({exc.reason})") from None
        url = doc.get("logsBlobUri") if isinstance(doc, dict) else None
        if not isinstance(url, str) or not url:
            raise ValueError("sealed credentials hold no logsBlobUri")
        return url

    def __repr__(self) -> str:  # never print the private key
        return f"Keys(public={self.public.hex()[:16]}...)"
