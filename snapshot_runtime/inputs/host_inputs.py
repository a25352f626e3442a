"""What the host snapshot path (WireServer ``presnapshot``/``dosnapshot``) needs from the settings.

Pure but for ``read_snapshot_method`` (one small config file). Reference:
/work/shared/reference/host-snapshot.md §2 and §3. ``parse_host_inputs(public,
protected)`` reads:

* public ``objectStr`` (base64 of JSON): ``includedDisks`` (``dataDiskLunList``
  int[] 0..63, unique; ``isOSDiskIncluded`` appends LUN -1; the disk flags;
  ``instantAccessDurationMinutes``), ``snapshotTaskToken`` (else protected
  ``snapshotTaskToken``), ``dynamicConfigsFromCRP`` (``[{Key, Value}]``,
  case-insensitive keys, overriding the first four well-known flags; unknown
  keys are dropped and named in ``ignored``);
* ``customSettings``: a JSON *string* in public settings, else protected:
  ``takeSnapshotFrom``, ``backupTaskId`` (replaces ``taskId`` in host calls),
  ``waDiskLunList``.

Stricter than the reference: a flag must be a JSON boolean (the reference's
``== True`` silently ignores ``"true"``; we refuse it with ``INVALID_SETTINGS``
so the service's mistake is visible), LUNs must be ints in 0..63.

Secrets (I5): ``snapshotTaskToken`` is opaque and bearer-like; it goes to the
host request body and nowhere else. It is in ``HostInputs.secrets`` (added to
the job's ``Redactor`` with the other settings secrets) and never in ``repr``.
"""

from __future__ import annotations

import configparser
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from snapshot_runtime.core.snapshot_mode import ModeInputs
from snapshot_runtime.inputs.settings_values import (
    decode_b64_json,
    invalid_settings,
    json_type_name,
)

__all__ = [
    "OS_DISK_LUN",
    "VMBACKUP_CONF",
    "WELL_KNOWN_FLAGS",
    "HostInputs",
    "parse_host_inputs",
    "read_snapshot_method",
]

OS_DISK_LUN = -1
VMBACKUP_CONF = "/etc/azure/vmbackup.conf"
# An Azure VM has at most 64 data disks: LUNs 0..63.
_MAX_LUN = 63
_MAX_TOKEN = 16 * 1024

# The reference's wellKnownSettingFlags, in its order (sent in full, §2).
WELL_KNOWN_FLAGS: tuple[str, ...] = (
    "isSnapshotTtlEnabled",
    "useMccfToFetchDsasForAllDisks",
    "useMccfForLad",
    "EnableVMSnapshotExtensionPolling",
    "isVmmdBlobIncluded",
)
# dynamicConfigsFromCRP may override these (not isVmmdBlobIncluded).
_CRP_OVERRIDABLE = {name.lower(): name for name in WELL_KNOWN_FLAGS[:4]}

_FLAG_KEYS = (
    "isOSDiskIncluded",
    "isAnyDiskExcluded",
    "isAnyWADiskIncluded",
    "isAnyDirectDriveDiskIncluded",
    "isVmgsBlobIncluded",
    "isVmmdBlobIncluded",
    "isVMADEEnabled",
)


@dataclass(frozen=True)
class HostInputs:
    """The host path's inputs. ``given`` is False when the settings carry none of them."""

    given: bool = False
    included_disks_given: bool = False
    data_luns: tuple[int, ...] = ()
    os_disk_included: bool = False
    any_disk_excluded: bool = False
    wa_disk_included: bool = False
    direct_drive_disk_included: bool = False
    vmgs_blob_included: bool = False
    vmmd_blob_included: bool = False
    ade_enabled: bool = False
    instant_access_minutes: int | None = None
    snapshot_task_token: str = field(default="", repr=False)
    well_known_flags: tuple[tuple[str, object], ...] = tuple(
        (name, False) for name in WELL_KNOWN_FLAGS
    )
    take_snapshot_from: str | None = None
    backup_task_id: str | None = None
    wa_disk_luns: tuple[int, ...] = ()
    ignored: tuple[str, ...] = ()
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def lun_list(self) -> tuple[int, ...]:
        """``diskIds``: the data LUNs, then -1 when the OS disk is included."""
        return self.data_luns + ((OS_DISK_LUN,) if self.os_disk_included else ())

    def mode_inputs(
        self, *, conf_method: str | None = None, configured_mode: str | None = None
    ) -> ModeInputs:
        """The inputs of ``core.snapshot_mode.choose_mode``."""
        luns = set(self.lun_list)
        return ModeInputs(
            custom_settings_mode=self.take_snapshot_from,
            conf_method=conf_method,
            configured_mode=configured_mode,
            wa_disk_included=self.wa_disk_included,
            direct_drive_disk_included=self.direct_drive_disk_included,
            vmgs_blob_included=self.vmgs_blob_included,
            wa_lun_included=bool(luns & set(self.wa_disk_luns)),
            any_disk_excluded=self.any_disk_excluded,
            lun_list_empty=not luns,
        )


def _object_str(settings: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    raw = settings.get("objectStr")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    obj = decode_b64_json(raw, where)
    if not isinstance(obj, Mapping):
        raise invalid_settings(f"{where} must decode to a JSON object, not {json_type_name(obj)}")
    return obj


def _luns(value: object, where: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise invalid_settings(f"{where} must be a list of LUNs, not {json_type_name(value)}")
    luns: list[int] = []
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= _MAX_LUN:
            raise invalid_settings(f"{where}[{index}] must be a LUN, an integer 0..{_MAX_LUN}")
        if item in luns:
            raise invalid_settings(f"{where}[{index}] repeats LUN {item}")
        luns.append(item)
    return tuple(luns)


def _flag(disks: Mapping[str, Any], key: str, where: str) -> bool:
    value = disks.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid_settings(f"{where}.{key} must be a boolean, not {json_type_name(value)}")
    return value


def _custom_settings(public: Mapping[str, Any], protected: Mapping[str, Any]) -> Mapping[str, Any]:
    for where, settings in (("publicSettings", public), ("protectedSettings", protected)):
        raw = settings.get("customSettings")
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        if isinstance(raw, Mapping):
            return raw
        if not isinstance(raw, str):
            raise invalid_settings(
                f"{where}.customSettings must be a JSON string, not {json_type_name(raw)}"
            )
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            raise invalid_settings(f"{where}.customSettings is not valid JSON") from None
        if not isinstance(obj, Mapping):
            raise invalid_settings(
                f"{where}.customSettings must be a JSON object, not {json_type_name(obj)}"
            )
        return obj
    return {}


def _optional_text(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid_settings(f"{where}.{key} must be a string, not {json_type_name(value)}")
    return value.strip() or None


def _token(obj: Mapping[str, Any], protected: Mapping[str, Any]) -> str:
    for where, settings in (
        ("publicSettings.objectStr", obj),
        ("protectedSettings", protected),
    ):
        value = settings.get("snapshotTaskToken")
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise invalid_settings(
                f"{where}.snapshotTaskToken must be a string, not {json_type_name(value)}"
            )
        if len(value) > _MAX_TOKEN or not value.isprintable():
            raise invalid_settings(
                f"{where}.snapshotTaskToken must be printable text of at most {_MAX_TOKEN} "
                "characters"
            )
        return value
    return ""


def _well_known(
    dynamic: object, vmmd: bool, where: str
) -> tuple[tuple[tuple[str, object], ...], list[str]]:
    flags: dict[str, object] = dict.fromkeys(WELL_KNOWN_FLAGS, False)
    flags["isVmmdBlobIncluded"] = vmmd
    ignored: list[str] = []
    if dynamic is None:
        return tuple(flags.items()), ignored
    if not isinstance(dynamic, list):
        raise invalid_settings(
            f"{where} must be a list of {{Key, Value}}, not {json_type_name(dynamic)}"
        )
    for index, item in enumerate(dynamic):
        if not isinstance(item, Mapping) or not isinstance(item.get("Key"), str):
            raise invalid_settings(f"{where}[{index}] must be an object with a string Key")
        canonical = _CRP_OVERRIDABLE.get(item["Key"].lower())
        if canonical is None:
            # Named by position, not by key: an unexpected key is the service's
            # data, not ours to echo.
            ignored.append(f"{where}[{index}]: not an expected setting name")
            continue
        value = item.get("Value")
        if not isinstance(value, bool | str | int | float) and value is not None:
            raise invalid_settings(f"{where}[{index}].Value must be a scalar")
        flags[canonical] = value  # verbatim, as the reference (a string stays a string)
    return tuple(flags.items()), ignored


def parse_host_inputs(public: Mapping[str, Any], protected: Mapping[str, Any]) -> HostInputs:
    """The host path's inputs from decoded settings. Pure; raises ``ConfigError``."""
    where = "publicSettings.objectStr"
    obj = _object_str(public, where)
    custom = _custom_settings(public, protected)
    token = _token(obj, protected)
    disks_raw = obj.get("includedDisks")
    if disks_raw is not None and not isinstance(disks_raw, Mapping):
        raise invalid_settings(
            f"{where}.includedDisks must be an object, not {json_type_name(disks_raw)}"
        )
    disks: Mapping[str, Any] = disks_raw or {}
    dwhere = f"{where}.includedDisks"
    flags = {key: _flag(disks, key, dwhere) for key in _FLAG_KEYS}
    instant = disks.get("instantAccessDurationMinutes")
    if instant is not None and (
        isinstance(instant, bool) or not isinstance(instant, int) or instant < 0
    ):
        raise invalid_settings(
            f"{dwhere}.instantAccessDurationMinutes must be a non-negative integer"
        )
    well_known, ignored = _well_known(
        obj.get("dynamicConfigsFromCRP"),
        flags["isVmmdBlobIncluded"],
        f"{where}.dynamicConfigsFromCRP",
    )
    return HostInputs(
        given=bool(disks_raw is not None or token),
        included_disks_given=disks_raw is not None,
        data_luns=_luns(disks.get("dataDiskLunList"), f"{dwhere}.dataDiskLunList"),
        os_disk_included=flags["isOSDiskIncluded"],
        any_disk_excluded=flags["isAnyDiskExcluded"],
        wa_disk_included=flags["isAnyWADiskIncluded"],
        direct_drive_disk_included=flags["isAnyDirectDriveDiskIncluded"],
        vmgs_blob_included=flags["isVmgsBlobIncluded"],
        vmmd_blob_included=flags["isVmmdBlobIncluded"],
        ade_enabled=flags["isVMADEEnabled"],
        instant_access_minutes=instant,
        snapshot_task_token=token,
        well_known_flags=well_known,
        take_snapshot_from=_optional_text(custom, "takeSnapshotFrom", "customSettings"),
        backup_task_id=_optional_text(custom, "backupTaskId", "customSettings"),
        wa_disk_luns=_luns(custom.get("waDiskLunList"), "customSettings.waDiskLunList"),
        ignored=tuple(ignored),
        secrets=(token, token.strip()) if token.strip() else (),
    )


def read_snapshot_method(path: str = VMBACKUP_CONF) -> str | None:
    """``[SnapshotThread] SnapshotMethod`` from vmbackup.conf; None when absent or unreadable.

    A broken conf file must not stop a backup: the reference reads it the same
    way (ConfigParser, every failure means "not set").
    """
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_string(fh.read(64 * 1024))
    except (OSError, UnicodeDecodeError, configparser.Error):
        return None
    value = parser.get("SnapshotThread", "SnapshotMethod", fallback="").strip()
    return value or None
