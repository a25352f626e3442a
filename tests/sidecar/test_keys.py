"""keys: the sidecar's key files across the sealing upgrade (docs/spool.md, credentials.sealed).

The private key is the truth: a version-1 key file serves version 2 as it is,
a missing or foreign ``sidecar.pub`` is re-derived from it (never a new key,
which would strand jobs already sealed to the old one), and a key file that
is not an X25519 key stops the sidecar with one line, not a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from snapshot_sidecar.cli import main as sidecar_main
from snapshot_sidecar.keys import PRIVATE_FILE, PUBLIC_FILE, Keys

from snapshot_runtime.telemetry.sealing import (
    FORMAT_VERSION,
    generate_keypair,
    parse_versions,
    seal,
)
from snapshot_runtime.telemetry.spool_schema import SIDECAR_SEALING_FILE
from tests.support.sealing_v1 import generate_keypair_v1, seal_v1

URL = "https://a.blob.core.windows.net/c/job.log?sv=1&sig=SECRETSIG"


def _old_state(state: Path, *, public: bool = True) -> tuple[bytes, bytes]:
    state.mkdir(mode=0o700)
    private, public_raw = generate_keypair_v1()
    (state / PRIVATE_FILE).write_bytes(private)
    (state / PRIVATE_FILE).chmod(0o600)
    if public:
        (state / PUBLIC_FILE).write_bytes(public_raw)
    return private, public_raw


def test_a_version_1_key_opens_both_versions(tmp_path: Path) -> None:
    private, public_raw = _old_state(tmp_path / "state")
    keys = Keys.load_or_create(tmp_path / "state")
    assert keys.public == public_raw
    assert (tmp_path / "state" / PRIVATE_FILE).read_bytes() == private  # not replaced
    credentials = json.dumps({"logsBlobUri": URL}).encode()
    assert keys.open(seal(public_raw, credentials)) == URL
    assert keys.open(seal_v1(public_raw, credentials)) == URL


@pytest.mark.parametrize("damage", ["missing", "foreign", "short"])
def test_the_public_file_is_derived_from_the_key(tmp_path: Path, damage: str) -> None:
    state = tmp_path / "state"
    private, public_raw = _old_state(state, public=damage != "missing")
    if damage == "foreign":
        (state / PUBLIC_FILE).write_bytes(generate_keypair()[1])
    elif damage == "short":
        (state / PUBLIC_FILE).write_bytes(public_raw[:31])
    keys = Keys.load_or_create(state)
    assert keys.public == public_raw
    assert (state / PUBLIC_FILE).read_bytes() == public_raw
    assert (state / PRIVATE_FILE).read_bytes() == private
    keys.publish(tmp_path / "spool")
    assert (tmp_path / "spool" / PUBLIC_FILE).read_bytes() == public_raw
    # And it says which credentials.sealed versions it opens (docs/spool.md).
    published = parse_versions((tmp_path / "spool" / SIDECAR_SEALING_FILE).read_bytes())
    assert published == {1, FORMAT_VERSION}


def test_a_new_state_gets_a_key_pair(tmp_path: Path) -> None:
    keys = Keys.load_or_create(tmp_path / "state")
    assert (tmp_path / "state" / PUBLIC_FILE).read_bytes() == keys.public
    assert (tmp_path / "state" / PRIVATE_FILE).stat().st_mode & 0o777 == 0o600
    again = Keys.load_or_create(tmp_path / "state")
    assert again.public == keys.public


@pytest.mark.parametrize("content", ["garbage", "ed25519"])
def test_an_unusable_key_file_stops_the_sidecar_in_one_line(
    tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    if content == "garbage":
        data = b"-----BEGIN PRIVATE KEY-----\nNOTAKEY\n-----END PRIVATE KEY-----\n"
    else:
        data = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    (state / PRIVATE_FILE).write_bytes(data)
    with pytest.raises(ValueError, match=PRIVATE_FILE):
        Keys.load_or_create(state)
    argv = ["--state-dir", str(state), "--spool", str(tmp_path / "spool"), "--once"]
    assert sidecar_main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "NOTAKEY" not in err
    lines = [line for line in err.splitlines() if line.startswith("snapshot-sidecar:")]
    assert len(lines) == 1 and PRIVATE_FILE in lines[0], err
    assert (state / PRIVATE_FILE).read_bytes() == data  # never replaced by a new key
    assert not (tmp_path / "spool" / PUBLIC_FILE).exists()  # nothing published
