"""``run --settings F`` trusts F like the plugin config (issue 11): the real CLI
refuses a settings file others could read or replace, with InvalidSettings (11)
and the fix in the message, before anything is quiesced or snapshotted."""

from __future__ import annotations

import json
import os

import pytest

from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.jobkit import Workspace

pytestmark = [pytest.mark.root, pytest.mark.azurite]


def _settings_text(azurite: Azurite) -> tuple[str, list[str]]:
    disks = jobkit.make_disks(azurite, 1)
    doc = jobkit.settings_doc(disks, task_id="trust_1")
    return json.dumps(doc), disks


@pytest.mark.parametrize("case", ["world-readable", "group-writable", "nobody", "symlink"])
def test_cli_refuses_an_untrusted_settings_file(azurite: Azurite, ws: Workspace, case: str) -> None:
    text, disks = _settings_text(azurite)
    real = ws.write("trust.settings", text, 0o600)
    path, fix = real, "chmod 600"
    if case == "world-readable":
        os.chmod(real, 0o644)
    elif case == "group-writable":
        os.chmod(real, 0o620)
    elif case == "nobody":
        os.chown(real, 65534, 65534)
        fix = "chown root:root"
    else:
        path = str(ws.root / "link.settings")
        os.symlink(real, path)
        fix = f"pass the real path {real}"
    result = ws.cli(*ws.run_args(path, config=ws.config(), mounts=["/not/a/mount"], as_json=False))

    assert result.returncode != 0
    assert "error: InvalidSettings" in result.stdout, result.output
    assert f"fix: {fix}" in result.output, result.output
    assert "Traceback" not in result.output
    status = json.loads((ws.state_dir / "status" / "unknown.status").read_text())
    assert status[0]["status"]["code"] == "11"
    assert f"fix: {fix}" in status[0]["status"]["formattedMessage"]["message"]
    # Refused up front: the pre-script never ran, no snapshot was taken.
    assert not ws.mark("pre.ran").exists()
    assert jobkit.snapshots_of(azurite, jobkit.strip(disks[0])) == []
    secrets = jobkit.secrets_of(disks)
    assert jobkit.leaks(result.output, secrets) == []
    assert jobkit.leaks(ws.log_path.read_text(), secrets) == []


def test_cli_accepts_a_root_600_settings_file(azurite: Azurite, ws: Workspace) -> None:
    text, _disks = _settings_text(azurite)
    path = ws.write("trust.settings", text, 0o600)
    result = ws.cli(*ws.run_args(path, config=ws.config(), mounts=["/not/a/mount"], as_json=False))
    # The settings are accepted: the job gets past them (and fails later, on
    # the mount that is not mounted).
    assert "InvalidSettings" not in result.output, result.output
    assert "task trust_1" in result.stdout, result.output
