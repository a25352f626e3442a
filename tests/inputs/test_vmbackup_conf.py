"""The reference's /etc/azure/vmbackup.conf and the settings' customSettings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snapshot_runtime.inputs.vmbackup_conf import (
    CustomSettings,
    VmBackupConf,
    load_vmbackup_conf,
    parse_custom_settings,
    parse_vmbackup_conf,
)

# The keys as the reference's docs and troubleshooting pages write them.
REFERENCE_STYLE = """[SnapshotThread]
fsfreeze: True
MountsToSkip = /mnt/resource, /data/scratch/
SafeFreezeWaitInSeconds=600
seqsnapshot = 2
onlyLocalFilesystems = True
WriteLog = False
LoggingOff = 1
UploadStatusAndLog = False
timeout = 90
SnapshotMethod = onlyGuest
doseq = 1
isanysnapshotfailed = False
"""


def test_every_key_the_reference_reads() -> None:
    conf = parse_vmbackup_conf(REFERENCE_STYLE, source="vmbackup.conf")
    assert conf == VmBackupConf(
        source="vmbackup.conf",
        mounts_to_skip=("/mnt/resource", "/data/scratch"),
        write_log=False,
        logging_off=True,
        upload_status_and_log=False,
        freeze_timeout_seconds=90.0,
        snapshot_method="onlyGuest",  # parsed and kept; the host path acts on it
        fsfreeze=True,
        seq_snapshot=2,
        safe_freeze_wait_seconds=600,
        only_local_filesystems=True,
        unknown=(),  # doseq/isanysnapshotfailed: the reference's own state, known
        problems=(),
    )


def test_absent_keys_stay_unset() -> None:
    assert parse_vmbackup_conf("[SnapshotThread]\n", source="x") == VmBackupConf(source="x")
    assert parse_vmbackup_conf("", source="x") == VmBackupConf(source="x")
    empty_skip = parse_vmbackup_conf("[SnapshotThread]\nMountsToSkip =\n", source="x")
    assert empty_skip.mounts_to_skip == ()  # set, to nothing


def test_unknown_keys_and_sections_are_listed_not_fatal() -> None:
    conf = parse_vmbackup_conf(
        "[SnapshotThread]\nMountsToSkip=/a\nfutureKey = 1\n[Monitor]\nRun = yes\n", source="x"
    )
    assert conf.mounts_to_skip == ("/a",)
    assert set(conf.unknown) == {"futurekey", "[Monitor]"}
    assert conf.problems == ()


@pytest.mark.parametrize(
    ("line", "field", "needle"),
    [
        ("WriteLog = maybe", "write_log", "writelog is not True/False"),
        ("timeout = 0", "freeze_timeout_seconds", "timeout must be a whole number in 1..600"),
        ("timeout = 60s", "freeze_timeout_seconds", "timeout must be a whole number"),
        ("seqsnapshot = 3", "seq_snapshot", "seqsnapshot must be"),
        ("SnapshotMethod = sideways", "snapshot_method", "SnapshotMethod must be one of"),
    ],
)
def test_bad_values_are_ignored_with_a_reason(line: str, field: str, needle: str) -> None:
    conf = parse_vmbackup_conf(f"[SnapshotThread]\n{line}\n", source="x")
    assert getattr(conf, field) is None
    assert any(needle in p for p in conf.problems), conf.problems


def test_relative_mounts_are_dropped_and_named() -> None:
    conf = parse_vmbackup_conf("[SnapshotThread]\nMountsToSkip = /ok, relative\n", source="x")
    assert conf.mounts_to_skip == ("/ok",)
    assert any("relative" in p for p in conf.problems)


def test_a_broken_file_is_a_problem_not_an_exception() -> None:
    conf = parse_vmbackup_conf("MountsToSkip = /a\n", source="x")  # no section header
    assert conf.mounts_to_skip is None and conf.problems


def test_custom_settings_as_the_service_sends_them() -> None:
    text = '{"takeSnapshotFrom": "firstHostThenGuest", "isManagedVm": true}'
    assert parse_custom_settings(text) == CustomSettings(take_snapshot_from="firstHostThenGuest")
    assert parse_custom_settings({"takeSnapshotFrom": "onlyHost"}).take_snapshot_from == "onlyHost"
    assert parse_custom_settings(None) == parse_custom_settings("") == CustomSettings()
    assert parse_custom_settings("{}") == CustomSettings()
    assert parse_custom_settings("{not json").problems
    assert parse_custom_settings("[1]").problems
    bad = parse_custom_settings('{"takeSnapshotFrom": "secret-looking-value"}')
    assert bad.take_snapshot_from is None
    assert all("secret-looking-value" not in p for p in bad.problems)  # never echoed


def test_load_missing_file_is_empty(tmp_path: Path) -> None:
    assert load_vmbackup_conf(str(tmp_path / "absent.conf")) == VmBackupConf()


def test_load_reads_a_safe_file(tmp_path: Path) -> None:
    path = tmp_path / "vmbackup.conf"
    path.write_text(REFERENCE_STYLE)
    path.chmod(0o644)
    conf = load_vmbackup_conf(str(path))
    assert conf.source == str(path) and conf.mounts_to_skip == ("/mnt/resource", "/data/scratch")


def test_load_ignores_a_file_others_may_write(tmp_path: Path) -> None:
    path = tmp_path / "vmbackup.conf"
    path.write_text(REFERENCE_STYLE)
    path.chmod(0o666)
    conf = load_vmbackup_conf(str(path))
    assert conf.mounts_to_skip is None
    assert conf.problems == ("is writable by group or other; ignored",)
    if os.geteuid() == 0:
        path.chmod(0o644)
        os.chown(path, 65534, 65534)
        assert load_vmbackup_conf(str(path)).problems == ("is not owned by root; ignored",)
