"""The reference's ``/etc/azure/vmbackup.conf``, parsed (``[SnapshotThread]``).

Operators of the reference tune it through this INI file; the keys that still
mean something here are read so that a VM moved to this runtime keeps its
settings (docs/extension-handler.md has the table and the precedence):

* ``MountsToSkip``: comma-separated mount points never frozen (acted on:
  they join the freeze plan's exclusions);
* ``WriteLog``: ``False`` stops the job's local log file (acted on);
* ``UploadStatusAndLog``: ``False`` stops the status upload to
  ``statusBlobUri`` (acted on; the log mirror is the sidecar's, see the doc);
* ``timeout``: the freeze timeout in seconds (acted on, below handler.conf);
* ``SnapshotMethod``: overrides customSettings ``takeSnapshotFrom`` in the
  reference; parsed and kept, acted on by the host-path work;
* ``LoggingOff``, ``fsfreeze``, ``seqsnapshot``, ``SafeFreezeWaitInSeconds``,
  ``onlyLocalFilesystems``: parsed and kept, not acted on (the doc says why).

The reference's own bookkeeping keys it writes back (``doseq``,
``isanysnapshotfailed``) are known and ignored. Any other key or section is
ignored and listed in ``unknown`` (the caller logs it at debug). A bad value
is ignored (the default applies) and described in ``problems``; the file
never fails a job, as in the reference.

``parse_vmbackup_conf`` and ``parse_custom_settings`` are pure;
``load_vmbackup_conf`` reads the file (root-owned, not group/other-writable,
at most 64 KiB: it decides what is frozen) and never raises.
"""

from __future__ import annotations

import configparser
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from snapshot_runtime.core.untrusted_file import read_at_most

__all__ = [
    "DEFAULT_VMBACKUP_CONF",
    "SNAPSHOT_METHODS",
    "CustomSettings",
    "VmBackupConf",
    "load_vmbackup_conf",
    "parse_custom_settings",
    "parse_vmbackup_conf",
]

DEFAULT_VMBACKUP_CONF = "/etc/azure/vmbackup.conf"
# The reference's CommonVariables snapshot modes.
SNAPSHOT_METHODS = frozenset({"firstHostThenGuest", "firstGuestThenHost", "onlyHost", "onlyGuest"})
_SECTION = "SnapshotThread"
_MAX_BYTES = 64 * 1024
# Keys as ConfigParser stores them (lower case), as the reference reads them.
_KNOWN = frozenset(
    {
        "mountstoskip",
        "writelog",
        "loggingoff",
        "uploadstatusandlog",
        "timeout",
        "snapshotmethod",
        "fsfreeze",
        "seqsnapshot",
        "safefreezewaitinseconds",
        "onlylocalfilesystems",
    }
)
# Written back by the reference itself; meaningless here, not worth a line.
_REFERENCE_STATE = frozenset({"doseq", "isanysnapshotfailed"})
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


@dataclass(frozen=True)
class VmBackupConf:
    """The parsed file; None for a key the file does not set."""

    source: str | None = None
    mounts_to_skip: tuple[str, ...] | None = None
    write_log: bool | None = None
    logging_off: bool | None = None
    upload_status_and_log: bool | None = None
    freeze_timeout_seconds: float | None = None
    snapshot_method: str | None = None
    fsfreeze: bool | None = None
    seq_snapshot: int | None = None
    safe_freeze_wait_seconds: int | None = None
    only_local_filesystems: bool | None = None
    unknown: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class CustomSettings:
    """The public settings' ``customSettings`` keys this runtime reads."""

    take_snapshot_from: str | None = None
    problems: tuple[str, ...] = ()


def _bool(value: str) -> bool | None:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def _int(value: str) -> int | None:
    text = value.strip()
    return int(text) if text.isascii() and text.lstrip("-").isdigit() else None


def parse_vmbackup_conf(text: str, *, source: str) -> VmBackupConf:
    """INI text -> VmBackupConf. Pure; never raises (problems are listed)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        return VmBackupConf(source=source, problems=(f"not a valid INI file: {exc.message}",))
    unknown = [f"[{s}]" for s in parser.sections() if s != _SECTION]
    if not parser.has_section(_SECTION):
        return VmBackupConf(source=source, unknown=tuple(unknown))
    section = parser[_SECTION]
    unknown += [k for k in section if k not in _KNOWN and k not in _REFERENCE_STATE]
    problems: list[str] = []

    def flag(key: str) -> bool | None:
        if key not in section or not section[key].strip():
            return None
        parsed = _bool(section[key])
        if parsed is None:
            problems.append(f"{key} is not True/False; ignored")
        return parsed

    def number(key: str, low: int, high: int) -> int | None:
        if key not in section or not section[key].strip():
            return None
        parsed = _int(section[key])
        if parsed is None or not low <= parsed <= high:
            problems.append(f"{key} must be a whole number in {low}..{high}; ignored")
            return None
        return parsed

    mounts: tuple[str, ...] | None = None
    if "mountstoskip" in section:
        listed = [m.strip() for m in section["mountstoskip"].split(",") if m.strip()]
        relative = [m for m in listed if not m.startswith("/")]
        if relative:
            problems.append(f"MountsToSkip entries must be absolute; ignored {relative}")
        mounts = tuple(os.path.normpath(m) for m in listed if m.startswith("/"))
    logging_off: bool | None = None
    if "loggingoff" in section and section["loggingoff"].strip():
        # The reference reads it as an int: 1 is on, anything else off.
        logging_off = _int(section["loggingoff"]) == 1
    method: str | None = None
    if "snapshotmethod" in section and section["snapshotmethod"].strip():
        method = section["snapshotmethod"].strip()
        if method not in SNAPSHOT_METHODS:
            problems.append(f"SnapshotMethod must be one of {sorted(SNAPSHOT_METHODS)}; ignored")
            method = None
    # The same bounds as handler.conf's freeze_timeout_seconds.
    timeout = number("timeout", 1, 600)
    return VmBackupConf(
        source=source,
        mounts_to_skip=mounts,
        write_log=flag("writelog"),
        logging_off=logging_off,
        upload_status_and_log=flag("uploadstatusandlog"),
        freeze_timeout_seconds=float(timeout) if timeout is not None else None,
        snapshot_method=method,
        fsfreeze=flag("fsfreeze"),
        seq_snapshot=number("seqsnapshot", 0, 2),
        safe_freeze_wait_seconds=number("safefreezewaitinseconds", 1, 3600),
        only_local_filesystems=flag("onlylocalfilesystems"),
        unknown=tuple(unknown),
        problems=tuple(problems),
    )


def parse_custom_settings(value: object) -> CustomSettings:
    """``customSettings`` (a JSON string, as the service sends it, or an
    object) -> CustomSettings. Pure; never raises and never echoes the value."""
    if value is None or value == "":
        return CustomSettings()
    doc: object = value
    if isinstance(value, str):
        try:
            doc = json.loads(value)
        except (ValueError, RecursionError):
            return CustomSettings(problems=("customSettings is not JSON; ignored",))
    if not isinstance(doc, Mapping):
        return CustomSettings(problems=("customSettings is not a JSON object; ignored",))
    method = doc.get("takeSnapshotFrom")
    if method is None:
        return CustomSettings()
    if isinstance(method, str) and method.strip() in SNAPSHOT_METHODS:
        return CustomSettings(take_snapshot_from=method.strip())
    return CustomSettings(
        problems=("customSettings takeSnapshotFrom is not a known mode; ignored",)
    )


def load_vmbackup_conf(path: str = DEFAULT_VMBACKUP_CONF) -> VmBackupConf:
    """The file at ``path`` (absent: an empty record). Never raises: an
    unsafe or unreadable file is ignored and described in ``problems``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return VmBackupConf()
    except OSError as exc:
        return VmBackupConf(source=path, problems=(f"cannot be opened: {exc.strerror}",))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return VmBackupConf(source=path, problems=("is not a regular file; ignored",))
        if info.st_uid != 0 and os.geteuid() == 0:
            return VmBackupConf(source=path, problems=("is not owned by root; ignored",))
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return VmBackupConf(source=path, problems=("is writable by group or other; ignored",))
        data = read_at_most(fd, _MAX_BYTES + 1)
    except OSError as exc:
        return VmBackupConf(source=path, problems=(f"cannot be read: {exc.strerror}",))
    finally:
        os.close(fd)
    if len(data) > _MAX_BYTES:
        return VmBackupConf(source=path, problems=(f"is larger than {_MAX_BYTES} bytes; ignored",))
    return parse_vmbackup_conf(data.decode("utf-8", errors="replace"), source=path)
