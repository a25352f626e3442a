"""The host path's inputs: includedDisks, snapshotTaskToken, flags, customSettings, conf."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.core.snapshot_mode import SnapshotMode, choose_mode
from snapshot_runtime.inputs.host_inputs import (
    WELL_KNOWN_FLAGS,
    HostInputs,
    parse_host_inputs,
    read_snapshot_method,
)
from snapshot_runtime.inputs.settings import parse_handler_settings
from tests.support.jobkit import encode_object_str

TOKEN = "tok-3f6b1c2e-SECRET-9a"


def public(obj: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"taskId": "t1", "commandToExecute": "snapshot", **extra}
    if obj is not None:
        doc["objectStr"] = encode_object_str(obj)
    return doc


def test_absent_inputs_are_not_given_and_default() -> None:
    host = parse_host_inputs(public(), {})
    assert host == HostInputs()
    assert host.given is False
    assert host.lun_list == ()
    assert [k for k, _ in host.well_known_flags] == list(WELL_KNOWN_FLAGS)


def test_included_disks_flags_token_and_luns() -> None:
    obj = {
        "snapshotTaskToken": TOKEN,
        "includedDisks": {
            "dataDiskLunList": [2, 0],
            "isOSDiskIncluded": True,
            "isAnyDirectDriveDiskIncluded": True,
            "isVmmdBlobIncluded": True,
            "isVMADEEnabled": True,
            "instantAccessDurationMinutes": 1440,
        },
        "dynamicConfigsFromCRP": [
            {"Key": "ISSNAPSHOTTTLENABLED", "Value": "True"},
            {"Key": "somethingElse", "Value": 1},
        ],
    }
    host = parse_host_inputs(public(obj), {})
    assert host.given and host.included_disks_given
    assert host.lun_list == (2, 0, -1)
    assert host.direct_drive_disk_included and host.vmmd_blob_included and host.ade_enabled
    assert not host.wa_disk_included
    assert host.instant_access_minutes == 1440
    assert host.snapshot_task_token == TOKEN
    assert TOKEN in host.secrets
    assert TOKEN not in repr(host)
    # Canonical spelling kept, value verbatim; unknown keys dropped and noted by position.
    assert host.well_known_flags == (
        ("isSnapshotTtlEnabled", "True"),
        ("useMccfToFetchDsasForAllDisks", False),
        ("useMccfForLad", False),
        ("EnableVMSnapshotExtensionPolling", False),
        ("isVmmdBlobIncluded", True),
    )
    assert host.ignored == (
        "publicSettings.objectStr.dynamicConfigsFromCRP[1]: not an expected setting name",
    )


def test_token_falls_back_to_protected_and_custom_settings_to_protected() -> None:
    custom = json.dumps(
        {"takeSnapshotFrom": "onlyGuest", "backupTaskId": "b-7", "waDiskLunList": [3]}
    )
    host = parse_host_inputs(
        public({"includedDisks": {"dataDiskLunList": [3]}}),
        {"snapshotTaskToken": TOKEN, "customSettings": custom},
    )
    assert host.snapshot_task_token == TOKEN
    assert host.take_snapshot_from == "onlyGuest"
    assert host.backup_task_id == "b-7"
    # waDiskLunList meets the included LUNs: the host is forced.
    choice = choose_mode(host.mode_inputs(conf_method="onlyGuest"))
    assert (choice.mode, choice.source) == (SnapshotMode.ONLY_HOST, "host-only disks")


def test_public_custom_settings_wins_and_conf_overrides_it() -> None:
    host = parse_host_inputs(
        public(customSettings=json.dumps({"takeSnapshotFrom": "firstGuestThenHost"})),
        {"customSettings": json.dumps({"takeSnapshotFrom": "onlyHost"})},
    )
    assert host.take_snapshot_from == "firstGuestThenHost"
    assert choose_mode(host.mode_inputs()).mode is SnapshotMode.FIRST_GUEST_THEN_HOST
    assert choose_mode(host.mode_inputs(conf_method="onlyGuest")).mode is SnapshotMode.ONLY_GUEST


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"includedDisks": []}, "includedDisks"),
        ({"includedDisks": {"dataDiskLunList": [64]}}, "dataDiskLunList[0]"),
        ({"includedDisks": {"dataDiskLunList": [1, 1]}}, "dataDiskLunList[1]"),
        ({"includedDisks": {"dataDiskLunList": [True]}}, "dataDiskLunList[0]"),
        ({"includedDisks": {"isAnyWADiskIncluded": "true"}}, "isAnyWADiskIncluded"),
        ({"includedDisks": {"instantAccessDurationMinutes": -1}}, "instantAccessDurationMinutes"),
        ({"snapshotTaskToken": 12}, "snapshotTaskToken"),
        ({"snapshotTaskToken": "a\nb" + TOKEN}, "snapshotTaskToken"),
        ({"dynamicConfigsFromCRP": {"a": 1}}, "dynamicConfigsFromCRP"),
    ],
)
def test_invalid_inputs_name_the_field_and_never_the_value(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_host_inputs(public(obj), {})
    assert info.value.code is ErrorCode.INVALID_SETTINGS
    assert field in info.value.message
    assert TOKEN not in str(info.value)


def test_custom_settings_must_be_a_json_object() -> None:
    with pytest.raises(ConfigError, match="customSettings is not valid JSON"):
        parse_host_inputs(public(customSettings="{nope"), {})


def test_handler_settings_carry_host_inputs_and_need_no_sas_on_the_host_path() -> None:
    doc = {
        "publicSettings": public(
            {"snapshotTaskToken": TOKEN, "includedDisks": {"isOSDiskIncluded": True}}
        ),
        "protectedSettings": {},
    }
    settings = parse_handler_settings(doc)
    assert settings.disk_sas_urls == ()
    assert settings.host.lun_list == (-1,)
    assert TOKEN in settings.secrets
    assert TOKEN not in repr(settings)
    # Without host inputs the guest disk list is still required.
    with pytest.raises(ConfigError) as info:
        parse_handler_settings({"publicSettings": public(), "protectedSettings": {}})
    assert info.value.code is ErrorCode.INVALID_DISK_LIST


def test_read_snapshot_method(tmp_path: Path) -> None:
    conf = tmp_path / "vmbackup.conf"
    assert read_snapshot_method(str(conf)) is None
    conf.write_text("[SnapshotThread]\nfsfreeze: True\n")
    assert read_snapshot_method(str(conf)) is None
    conf.write_text("[SnapshotThread]\nSnapshotMethod = onlyGuest\n")
    assert read_snapshot_method(str(conf)) == "onlyGuest"
    conf.write_text("not an ini file [")
    assert read_snapshot_method(str(conf)) is None
