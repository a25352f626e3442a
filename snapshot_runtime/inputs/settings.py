"""Handler settings: the job's inputs, parsed and validated once.

``parse_handler_settings`` is pure: it takes the decoded JSON of a
``<seq>.settings`` file and returns a frozen ``HandlerSettings`` or raises
``ConfigError``. ``load_settings_file`` is the thin shell that reads the file.

Accepted shapes:

* the handler file: ``{"runtimeSettings": [{"handlerSettings": {...}}]}``
  (exactly one runtime setting);
* a flat ``{"publicSettings": {...}, "protectedSettings": {...}}``.

``protectedSettings`` must be the plaintext object. The platform's encrypted
form (a base64 CMS string) is refused with ``PROTECTED_SETTINGS_INVALID``: it
has to be decrypted by the handler command first.

Fields (reference ``ParameterParser``; stricter where noted):

* public ``taskId``: required, 1..256 printable characters.
* public ``commandToExecute``: required, must contain ``snapshot``
  (case-insensitive), as the reference checks.
* public ``commandStartTimeUTCTicks``: optional; .NET ticks (100 ns since
  0001-01-01 UTC) as an int or a string of decimal digits, between
  2000-01-01 and the end of 9999. Exponent forms such as ``"6.36458E+17"``
  (the docs' example, a spreadsheet rendering) are refused: they keep six
  significant digits, an error of up to ~2.8 h, which would make the 140 min
  "command too late" guard meaningless; the reference's ``int()`` cannot
  parse them either.
* public ``vmType``, ``locale``: optional strings.
* public ``objectStr``: optional base64 of JSON; its ``backupMetadata``
  (``[{"Key", "Value"}]`` as the reference sends it, or an object) becomes
  ``backup_metadata``. Keys must be metadata names (they become
  ``x-ms-meta-<Key>`` headers) and values single-line strings.
* protected ``objectStr``: base64 of JSON ``{"blobSASUri": [url, ...]}``, the
  disk list: 1..65 unique blob URLs (an Azure VM has at most 64 data disks
  plus its OS disk). Surrounding whitespace in a URL is tolerated.
* ``logsBlobUri``, ``statusBlobUri``: optional; protected first, public as
  the fallback (the reference reads public first; protected is where the
  service puts them and where a SAS belongs).

Every blob URL is ``https`` (``http`` only for 127.0.0.1/localhost/::1, the
emulator), names a container and a blob, carries a SAS (``sig=``) and no user
info (``blob_urls``). Ticks are converted by ``ticks``, the public
``objectStr`` by ``backup_metadata``, and every value is described without
being echoed (``settings_json``).

Errors are ``ConfigError``: ``INVALID_DISK_LIST`` for a missing, empty,
non-list, oversized or duplicated disk list, ``PROTECTED_SETTINGS_INVALID``
for missing or encrypted protected settings, ``INVALID_SETTINGS`` otherwise.
Messages name the field; a URL appears only through ``strip_sas`` and no
other protected value (nor a part of one) is ever echoed (invariant I5).

``HandlerSettings.secrets`` lists every protected string value, every SAS
query string and every ``sig`` value (raw and percent-decoded), for a
``Redactor``. ``repr`` shows none of them.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.core.permissions import check_config_mode, check_parent_dir_mode
from snapshot_runtime.core.redact import strip_sas
from snapshot_runtime.core.ticks import (
    MAX_TICKS,
    datetime_to_ticks,
    ticks_to_datetime,
)
from snapshot_runtime.core.untrusted_file import read_at_most
from snapshot_runtime.inputs.backup_metadata import parse_backup_metadata
from snapshot_runtime.inputs.blob_urls import sas_secrets, validate_blob_url
from snapshot_runtime.inputs.host_inputs import HostInputs, parse_host_inputs
from snapshot_runtime.inputs.settings_values import (
    decode_b64_json,
    invalid_settings,
    json_type_name,
)

__all__ = [
    "MAX_DISKS",
    "MAX_SETTINGS_FILE_BYTES",
    "MAX_TASK_ID_LENGTH",
    "HandlerSettings",
    "load_settings_file",
    "parse_handler_settings",
]

MAX_SETTINGS_FILE_BYTES = 1024 * 1024
MAX_TASK_ID_LENGTH = 256
# 64 data disks (the largest Azure sizes) plus the OS disk.
MAX_DISKS = 65

_EARLIEST_START = datetime(2000, 1, 1, tzinfo=timezone.utc)
_MIN_START_TICKS = datetime_to_ticks(_EARLIEST_START)
_DIGITS = re.compile(r"[0-9]+")


# --- the result -----------------------------------------------------------------


@dataclass(frozen=True)
class HandlerSettings:
    """One job's validated settings. ``repr`` never shows a SAS or secret."""

    task_id: str
    command: str
    command_start_ticks: int | None
    command_start_utc: datetime | None
    vm_type: str | None
    locale: str | None
    disk_sas_urls: tuple[str, ...] = field(repr=False)
    logs_blob_uri: str | None = field(repr=False)
    status_blob_uri: str | None = field(repr=False)
    backup_metadata: Mapping[str, str] = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)
    # The host snapshot path's inputs (inputs/host_inputs.py, docs/host-snapshot.md).
    host: HostInputs = field(default_factory=HostInputs, repr=False)
    # protectedSettings.workloadPassword (ours): the database password for the
    # workload.conf quiesce, so none needs to sit in a file (docs/workloads.md).
    workload_password: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        # Explicit, so a later field can never leak through the generated repr.
        disks = [strip_sas(u) for u in self.disk_sas_urls]
        logs = strip_sas(self.logs_blob_uri) if self.logs_blob_uri else None
        status = strip_sas(self.status_blob_uri) if self.status_blob_uri else None
        return (
            f"HandlerSettings(task_id={self.task_id!r}, command={self.command!r}, "
            f"command_start_ticks={self.command_start_ticks!r}, vm_type={self.vm_type!r}, "
            f"locale={self.locale!r}, disks={disks!r}, logs_blob_uri={logs!r}, "
            f"status_blob_uri={status!r}, backup_metadata_keys={sorted(self.backup_metadata)!r}, "
            f"secrets=<{len(self.secrets)} hidden>)"
        )

    __str__ = __repr__


# --- parsing --------------------------------------------------------------------


def _disk_list_error(message: str) -> ConfigError:
    return ConfigError(ErrorCode.INVALID_DISK_LIST, message)


def _handler_settings(doc: object) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise invalid_settings(f"settings must be a JSON object, not {json_type_name(doc)}")
    if "runtimeSettings" in doc:
        runtime = doc["runtimeSettings"]
        if not isinstance(runtime, list) or len(runtime) != 1:
            raise invalid_settings("runtimeSettings must be a list with exactly one entry")
        entry = runtime[0]
        if not isinstance(entry, Mapping) or not isinstance(entry.get("handlerSettings"), Mapping):
            raise invalid_settings("runtimeSettings[0].handlerSettings must be an object")
        handler: Mapping[str, Any] = entry["handlerSettings"]
        return handler
    if "publicSettings" in doc or "protectedSettings" in doc:
        return doc
    raise invalid_settings(
        "settings have neither runtimeSettings nor publicSettings/protectedSettings"
    )


def _optional_str(settings: Mapping[str, Any], key: str, where: str) -> str | None:
    value = settings.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid_settings(f"{where}.{key} must be a string, not {json_type_name(value)}")
    value = value.strip()
    return value or None


def _task_id(public: Mapping[str, Any]) -> str:
    value = public.get("taskId")
    if not isinstance(value, str) or not value.strip():
        raise invalid_settings("publicSettings.taskId is required and must be a non-empty string")
    if len(value) > MAX_TASK_ID_LENGTH:
        raise invalid_settings(
            f"publicSettings.taskId is {len(value)} characters long, "
            f"at most {MAX_TASK_ID_LENGTH} are allowed"
        )
    if not value.isprintable():
        raise invalid_settings("publicSettings.taskId contains non-printable characters")
    return value


def _command(public: Mapping[str, Any]) -> str:
    value = public.get("commandToExecute")
    if not isinstance(value, str) or not value.strip():
        raise invalid_settings("publicSettings.commandToExecute is required and must be a string")
    if "snapshot" not in value.lower():
        # The reference runs a snapshot only for this command; anything else is
        # a request this product does not serve.
        raise invalid_settings("publicSettings.commandToExecute must contain 'snapshot'")
    return value


def _start_ticks(public: Mapping[str, Any]) -> int | None:
    value = public.get("commandStartTimeUTCTicks")
    where = "publicSettings.commandStartTimeUTCTicks"
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise invalid_settings(f"{where} must be an integer number of .NET ticks, not a boolean")
    if isinstance(value, int):
        ticks = value
    elif isinstance(value, str):
        text = value.strip()
        if not _DIGITS.fullmatch(text) or len(text) > 19:
            raise invalid_settings(
                f"{where} must be a whole number of .NET ticks written in decimal digits "
                "(exponent forms such as 6.36458E+17 lose hours of precision)"
            )
        ticks = int(text)
    else:
        raise invalid_settings(
            f"{where} must be an integer or a string of digits, not {json_type_name(value)}"
        )
    if not _MIN_START_TICKS <= ticks <= MAX_TICKS:
        raise invalid_settings(
            f"{where} = {ticks} is out of range: it must lie between 2000-01-01 "
            "and 9999-12-31 (.NET ticks are 100 ns since 0001-01-01 UTC)"
        )
    return ticks


def _blob_url(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise invalid_settings(f"{where} must be a URL string, not {json_type_name(value)}")
    return validate_blob_url(value, where)


def _string_leaves(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _string_leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _string_leaves(item)


def _disk_urls(protected: Mapping[str, Any]) -> tuple[str, ...]:
    where = "protectedSettings.objectStr"
    raw = protected.get("objectStr")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise _disk_list_error(f"{where} is missing: it carries the disk list (blobSASUri)")
    obj = decode_b64_json(raw, where)
    if not isinstance(obj, Mapping):
        raise invalid_settings(f"{where} must decode to a JSON object, not {json_type_name(obj)}")
    blobs = obj.get("blobSASUri")
    if not isinstance(blobs, list):
        raise _disk_list_error(
            f"{where}.blobSASUri must be a list of blob URLs, not {json_type_name(blobs)}"
        )
    if not blobs:
        raise _disk_list_error(f"{where}.blobSASUri is empty: there is no disk to snapshot")
    if len(blobs) > MAX_DISKS:
        raise _disk_list_error(
            f"{where}.blobSASUri lists {len(blobs)} disks; at most {MAX_DISKS} are accepted "
            "(an Azure VM has at most 64 data disks plus the OS disk)"
        )
    urls: list[str] = []
    seen: dict[tuple[str, int | None, str], int] = {}
    for index, item in enumerate(blobs):
        url = _blob_url(item, f"{where}.blobSASUri[{index}]")
        parts = urlsplit(url)
        # The same blob under two SAS tokens is still one disk.
        identity = ((parts.hostname or "").lower(), parts.port, parts.path)
        if identity in seen:
            raise _disk_list_error(
                f"{where}.blobSASUri[{index}] ({strip_sas(url)}) duplicates "
                f"blobSASUri[{seen[identity]}]"
            )
        seen[identity] = index
        urls.append(url)
    return tuple(urls)


def _blob_uri(public: Mapping[str, Any], protected: Mapping[str, Any], key: str) -> str | None:
    for where, settings in (("protectedSettings", protected), ("publicSettings", public)):
        value = settings.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        return _blob_url(value, f"{where}.{key}")
    return None


def parse_handler_settings(doc: object) -> HandlerSettings:
    """Validate decoded settings JSON. Pure; raises ``ConfigError``."""
    handler = _handler_settings(doc)
    public = handler.get("publicSettings")
    if not isinstance(public, Mapping):
        raise invalid_settings(f"publicSettings must be an object, not {json_type_name(public)}")
    protected = handler.get("protectedSettings")
    if isinstance(protected, str):
        raise ConfigError(
            ErrorCode.PROTECTED_SETTINGS_INVALID,
            "encrypted protected settings need the handler command to decrypt them "
            "(protectedSettingsCertThumbprint); this parser takes the plaintext object",
        )
    if not isinstance(protected, Mapping):
        raise ConfigError(
            ErrorCode.PROTECTED_SETTINGS_INVALID,
            f"protectedSettings must be an object, not {json_type_name(protected)}",
        )

    task_id = _task_id(public)
    command = _command(public)
    ticks = _start_ticks(public)
    vm_type = _optional_str(public, "vmType", "publicSettings")
    locale = _optional_str(public, "locale", "publicSettings")
    host = parse_host_inputs(public, protected)
    # The host path needs no SAS URL: a job with host inputs may omit blobSASUri.
    disks = () if host.given and not protected.get("objectStr") else _disk_urls(protected)
    logs = _blob_uri(public, protected, "logsBlobUri")
    status = _blob_uri(public, protected, "statusBlobUri")
    metadata, extra = parse_backup_metadata(public)

    secrets: dict[str, None] = {}  # ordered set
    for value in _string_leaves(protected):
        secrets[value] = None
        secrets[value.strip()] = None
    for url in (*disks, logs, status):
        if url:
            secrets.update(dict.fromkeys(sas_secrets(url)))
    secrets.update(dict.fromkeys(extra))
    secrets.update(dict.fromkeys(host.secrets))
    secrets.pop("", None)

    return HandlerSettings(
        task_id=task_id,
        command=command,
        command_start_ticks=ticks,
        command_start_utc=ticks_to_datetime(ticks) if ticks is not None else None,
        vm_type=vm_type,
        locale=locale,
        disk_sas_urls=disks,
        logs_blob_uri=logs,
        status_blob_uri=status,
        backup_metadata=metadata,
        secrets=tuple(secrets),
        host=host,
        workload_password=_workload_password(protected),
    )


def _workload_password(protected: Mapping[str, Any]) -> str | None:
    # A protected string: already among the secrets (every protected leaf is).
    value = protected.get("workloadPassword")
    return value if isinstance(value, str) and value else None


# --- the file shell ---------------------------------------------------------------


# How the handler hands a decrypted settings document to ``run_job``: an
# anonymous memory file (memfd) of this very process, never on a filesystem.
_OWN_FD = re.compile(r"/proc/self/fd/[0-9]+\Z")


def _own_memfd(path: str) -> bool:
    """True for ``/proc/self/fd/N`` naming a memfd this process holds."""
    if not _OWN_FD.match(path):
        return False
    try:
        return os.readlink(path).startswith("/memfd:")
    except OSError:
        return False


def _trust_problem(path: str) -> str | None:
    """Why a directory on the way to ``path`` (absolute, normalised) lets
    someone other than root replace the file, or None.

    A symlinked parent is refused (not followed): whoever owns its target
    decides what is read. A missing component is left to ``open`` to report.
    """
    current = "/"
    for part in ["", *(p for p in os.path.dirname(path).split("/") if p)]:
        current = os.path.join(current, part) if part else "/"
        try:
            st = os.lstat(current)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return (
                f"is reached through the symbolic link {current}, which is refused; "
                f"fix: pass the real path {os.path.realpath(path)}"
            )
        problem = check_parent_dir_mode(current, st.st_mode, st.st_uid)
        if problem:
            return f"is in an unsafe directory: {problem}; fix: chown root:root and chmod 755 it"
    return None


def _open_settings(path: str) -> tuple[int, bool]:
    """An fd on the settings file once its path is trusted, and whether it
    is the handler's memfd (whose owner and mode need no check)."""
    if _own_memfd(path):
        flags = os.O_RDONLY | os.O_CLOEXEC  # a procfs magic link: must be followed
        return os.open(path, flags), True
    absolute = os.path.abspath(path)  # checked and opened: the same path
    problem = _trust_problem(absolute)
    if problem:
        raise invalid_settings(f"settings file {path} {problem}")
    try:
        # NOFOLLOW refuses a symlinked file; NONBLOCK lets a FIFO open (then
        # refused by fstat) instead of hanging until a writer appears.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        return os.open(absolute, flags), False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise invalid_settings(
                f"settings file {path} is a symbolic link, which is refused (whoever owns "
                f"its target could change it); fix: pass the real path "
                f"{os.path.realpath(absolute)}"
            ) from None
        raise


def load_settings_file(path: str) -> HandlerSettings:
    """Read, decode and parse one settings file. Every failure is ``ConfigError``.

    The file carries the protected settings (every SAS), so it is trusted
    like the plugin config: not a symlink, no symlinked or non-root or
    group/other-writable parent directory, a regular file owned by root with
    no group or other permission (600 or 400). The handler's own memfd
    (``/proc/self/fd/N``) is exempt: it never was on a filesystem. Refuses
    files over ``MAX_SETTINGS_FILE_BYTES``. Every refusal is
    ``INVALID_SETTINGS`` with the fix in the message, which never quotes
    the content.
    """
    try:
        fd, memfd = _open_settings(path)
    except OSError as exc:
        raise invalid_settings(f"cannot open settings file {path}: {exc.strerror}") from None
    except ValueError:  # an embedded NUL in the path
        raise invalid_settings("cannot open settings file: its path holds a NUL") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise invalid_settings(f"settings file {path} is not a regular file")
        problem = None if memfd else check_config_mode(info.st_mode, info.st_uid)
        if problem:
            chown = f"chown root:root {path} && " if info.st_uid != 0 else ""
            raise invalid_settings(
                f"settings file {path} {problem}; it holds the protected settings, so it must "
                f"be readable by root alone; fix: {chown}chmod 600 {path}"
            )
        if info.st_size > MAX_SETTINGS_FILE_BYTES:
            raise invalid_settings(
                f"settings file {path} is {info.st_size} bytes, "
                f"larger than the {MAX_SETTINGS_FILE_BYTES}-byte limit"
            )
        data = read_at_most(fd, MAX_SETTINGS_FILE_BYTES + 1)  # the file may grow after fstat
    except OSError as exc:
        raise invalid_settings(f"cannot read settings file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SETTINGS_FILE_BYTES:
        raise invalid_settings(
            f"settings file {path} is larger than {MAX_SETTINGS_FILE_BYTES} bytes"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise invalid_settings(f"settings file {path} is not UTF-8") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid_settings(
            f"settings file {path} is not valid JSON "
            f"({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise invalid_settings(f"settings file {path} holds JSON nested too deeply") from None
    return parse_handler_settings(doc)
