from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.core.redact import Redactor
from snapshot_runtime.core.ticks import (
    TICKS_AT_UNIX_EPOCH,
    TICKS_PER_SECOND,
    datetime_to_ticks,
    ticks_to_datetime,
)
from snapshot_runtime.inputs.settings import (
    MAX_DISKS,
    MAX_SETTINGS_FILE_BYTES,
    HandlerSettings,
    load_settings_file,
    parse_handler_settings,
)
from tests.support.requirements import require

# Distinctive, so a leak is easy to find. %2B and %3D decode to + and =.
SIG = "SeCrEtSiGnAtUrE0123%2Babc%3D"
LOG_SIG = "LoGsSiGnAtUrE4567%2Fxyz%3D"
STATUS_SIG = "StAtUsSiGnAtUrE89%2Fq%3D"
TICKS = 636458120000000000  # 2017-11-09T08:13:20Z (date -u -d @1510215200)


def sas(host: str, path: str, sig: str = SIG, scheme: str = "https") -> str:
    return (
        f"{scheme}://{host}{path}?sv=2014-02-14&sr=b&sig={sig}"
        "&st=2017-11-09T14%3A23%3A28Z&se=2017-11-09T17%3A38%3A28Z&sp=rw"
    )


DISK0 = sas("acct1.blob.core.windows.net", "/vhds/os.vhd")
DISK1 = sas("acct2.blob.core.windows.net", "/vhds/data-0.vhd", sig="DaTaSiG0000%2B1%3D")
LOGS = sas("coord.blob.core.windows.net", "/bcdrextensionlogs-1/vm.Logs.txt", sig=LOG_SIG)
STATUS = sas("coord.blob.core.windows.net", "/bcdrextensionlogs-1/vm.Status.txt", sig=STATUS_SIG)
ALL_SIGS = [SIG, "DaTaSiG0000%2B1%3D", LOG_SIG, STATUS_SIG]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def object_str(urls: list[Any]) -> str:
    return b64(json.dumps({"blobSASUri": urls}))


def public(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "taskId": "e07354cf-041e-4370-929f-25a319ce8933_1",
        "commandToExecute": "snapshot",
        "commandStartTimeUTCTicks": str(TICKS),
        "vmType": "microsoft.compute/virtualmachines",
        "locale": "en-us",
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not _DROP}


def protected(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "objectStr": object_str([DISK0, DISK1]),
        "logsBlobUri": LOGS,
        "statusBlobUri": STATUS,
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not _DROP}


_DROP = object()


def handler_file(pub: Any = None, prot: Any = None) -> dict[str, Any]:
    return {
        "runtimeSettings": [
            {
                "handlerSettings": {
                    "publicSettings": public() if pub is None else pub,
                    "protectedSettings": protected() if prot is None else prot,
                }
            }
        ]
    }


def flat(pub: Any = None, prot: Any = None) -> dict[str, Any]:
    return {
        "publicSettings": public() if pub is None else pub,
        "protectedSettings": protected() if prot is None else prot,
    }


def config_error(doc: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_handler_settings(doc)
    assert_no_secret(str(info.value))
    return info.value


def assert_no_secret(text: str) -> None:
    for sig in ALL_SIGS:
        assert sig not in text
        assert unquote(sig) not in text
        assert sig[:8] not in text
    assert not re.search(r"(?i)sig(=|%3D)[^)\s]", text)


# --- ticks ------------------------------------------------------------------


def test_ticks_epoch_and_known_value() -> None:
    assert ticks_to_datetime(TICKS_AT_UNIX_EPOCH) == datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert datetime_to_ticks(datetime(1970, 1, 1, tzinfo=timezone.utc)) == TICKS_AT_UNIX_EPOCH
    assert ticks_to_datetime(TICKS) == datetime(2017, 11, 9, 8, 13, 20, tzinfo=timezone.utc)
    assert ticks_to_datetime(0) == datetime(1, 1, 1, tzinfo=timezone.utc)
    assert TICKS_PER_SECOND == 10_000_000


def test_ticks_truncate_below_a_microsecond_and_are_utc_aware() -> None:
    dt = ticks_to_datetime(TICKS + 9)
    assert dt == ticks_to_datetime(TICKS)
    assert dt.utcoffset() == timedelta(0)


@pytest.mark.parametrize("bad", [-1, 3155378976000000000, True])
def test_ticks_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError):
        ticks_to_datetime(bad)


def test_datetime_to_ticks_needs_aware_and_converts_zones() -> None:
    with pytest.raises(ValueError):
        datetime_to_ticks(datetime(2020, 1, 1))
    plus2 = datetime(2020, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    assert datetime_to_ticks(plus2) == datetime_to_ticks(datetime(2020, 1, 1, tzinfo=timezone.utc))


@settings(deadline=None)  # no per-example time limit: a timing, not a behaviour
@given(st.integers(0, 3155378975999999999 // 10).map(lambda us: us * 10))
def test_ticks_round_trip(ticks: int) -> None:
    assert datetime_to_ticks(ticks_to_datetime(ticks)) == ticks


# --- shapes -------------------------------------------------------------------


def test_handler_file_and_flat_shapes_agree() -> None:
    a = parse_handler_settings(handler_file())
    b = parse_handler_settings(flat())
    assert a == b
    assert a.task_id == "e07354cf-041e-4370-929f-25a319ce8933_1"
    assert a.command == "snapshot"
    assert a.command_start_ticks == TICKS
    assert a.command_start_utc == datetime(2017, 11, 9, 8, 13, 20, tzinfo=timezone.utc)
    assert a.vm_type == "microsoft.compute/virtualmachines"
    assert a.locale == "en-us"
    assert a.disk_sas_urls == (DISK0, DISK1)
    assert a.logs_blob_uri == LOGS
    assert a.status_blob_uri == STATUS
    assert dict(a.backup_metadata) == {}


def test_seed_form_escaped_slashes_and_leading_space() -> None:
    # As in the docs: JSON-escaped slashes, and one URL with a leading space.
    escaped = [u.replace("/", "\\/") for u in (DISK0, DISK1)]
    text = '{"blobSASUri": ["' + escaped[0] + '", " ' + escaped[1] + ' "]}'
    parsed = parse_handler_settings(flat(prot=protected(objectStr=b64(text))))
    assert parsed.disk_sas_urls == (DISK0, DISK1)


def test_object_str_quoted_and_wrapped_like_the_reference_tolerates() -> None:
    wrapped = b64("  '" + json.dumps({"blobSASUri": [DISK0]}) + "'\n")
    spaced = "\n".join(wrapped[i : i + 10] for i in range(0, len(wrapped), 10))
    parsed = parse_handler_settings(flat(prot=protected(objectStr=spaced)))
    assert parsed.disk_sas_urls == (DISK0,)


@pytest.mark.parametrize(
    "doc",
    [
        [],
        "settings",
        {"runtimeSettings": []},
        {"runtimeSettings": [{}, {}]},
        {"runtimeSettings": [{"handlerSettings": "x"}]},
        {"somethingElse": {}},
    ],
)
def test_bad_envelopes(doc: object) -> None:
    assert config_error(doc).code is ErrorCode.INVALID_SETTINGS


def test_encrypted_protected_settings_are_refused_without_echo() -> None:
    blob = "MIIByAYJKoZIhvcNAQcDoIIBuTCCAbUCAQAxggFx" + SIG
    err = config_error(flat(prot=blob))
    assert err.code is ErrorCode.PROTECTED_SETTINGS_INVALID
    assert "encrypted protected settings need the handler command" in err.message
    assert "MIIBy" not in str(err)


@pytest.mark.parametrize("prot", [_DROP, None, [], 5])
def test_missing_protected_settings(prot: Any) -> None:
    doc = flat()
    if prot is _DROP:
        del doc["protectedSettings"]
    else:
        doc["protectedSettings"] = prot
    assert config_error(doc).code is ErrorCode.PROTECTED_SETTINGS_INVALID


def test_public_settings_must_be_an_object() -> None:
    err = config_error({"publicSettings": "x", "protectedSettings": protected()})
    assert "publicSettings" in err.message


# --- public fields ------------------------------------------------------------


@pytest.mark.parametrize("task_id", [_DROP, "", "   ", 7, "a" * 257, "task\x00id", "line\nbreak"])
def test_bad_task_id(task_id: Any) -> None:
    err = config_error(flat(pub=public(taskId=task_id)))
    assert err.code is ErrorCode.INVALID_SETTINGS
    assert "taskId" in err.message


def test_task_id_at_the_limit() -> None:
    assert parse_handler_settings(flat(pub=public(taskId="t" * 256))).task_id == "t" * 256


@pytest.mark.parametrize("command", [_DROP, "", "backup", 3])
def test_bad_command(command: Any) -> None:
    err = config_error(flat(pub=public(commandToExecute=command)))
    assert "commandToExecute" in err.message


def test_command_is_case_insensitive() -> None:
    assert parse_handler_settings(flat(pub=public(commandToExecute="TakeSnapShot"))).command == (
        "TakeSnapShot"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [(TICKS, TICKS), (str(TICKS), TICKS), (f"  {TICKS} ", TICKS), ("", None), (_DROP, None)],
)
def test_start_ticks_accepted(value: Any, expected: int | None) -> None:
    parsed = parse_handler_settings(flat(pub=public(commandStartTimeUTCTicks=value)))
    assert parsed.command_start_ticks == expected
    assert (parsed.command_start_utc is None) == (expected is None)


@pytest.mark.parametrize(
    "value",
    [
        "6.36458E+17",  # the docs' example: a spreadsheet rendering
        6.36458e17,
        "-5",
        "0x10",
        True,
        str(datetime_to_ticks(datetime(1999, 12, 31, tzinfo=timezone.utc))),
        str(3155378975999999999 + 1),
        "1" * 30,
        [],
    ],
)
def test_start_ticks_rejected(value: Any) -> None:
    err = config_error(flat(pub=public(commandStartTimeUTCTicks=value)))
    assert err.code is ErrorCode.INVALID_SETTINGS
    assert "commandStartTimeUTCTicks" in err.message


def test_start_ticks_range_edges() -> None:
    low = datetime_to_ticks(datetime(2000, 1, 1, tzinfo=timezone.utc))
    high = 3155378975999999999
    for ticks in (low, high):
        assert parse_handler_settings(flat(pub=public(commandStartTimeUTCTicks=ticks)))


@pytest.mark.parametrize("key", ["vmType", "locale"])
def test_optional_strings(key: str) -> None:
    assert getattr(parse_handler_settings(flat(pub=public(**{key: _DROP}))), _attr(key)) is None
    err = config_error(flat(pub=public(**{key: 5})))
    assert key in err.message


def _attr(key: str) -> str:
    return {"vmType": "vm_type", "locale": "locale"}[key]


# --- the disk list ------------------------------------------------------------


def test_object_str_missing_is_a_disk_list_error() -> None:
    err = config_error(flat(prot=protected(objectStr=_DROP)))
    assert err.code is ErrorCode.INVALID_DISK_LIST
    assert "objectStr" in err.message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("%%%not-base64" + SIG, "not valid base64"),
        (base64.b64encode(b"\xff\xfe\x00").decode(), "UTF-8"),
        (b64('{"blobSASUri": ["' + DISK0 + '"'), "valid JSON"),
        (b64("[1, 2]"), "JSON object"),
        (b64("[" * 100_000 + "]" * 100_000), "JSON"),
        (12, "base64 string"),
    ],
)
def test_object_str_malformed(value: Any, fragment: str) -> None:
    err = config_error(flat(prot=protected(objectStr=value)))
    assert err.code is ErrorCode.INVALID_SETTINGS
    assert "protectedSettings.objectStr" in err.message
    assert fragment in err.message
    assert "blob.core" not in err.message  # nothing of the content is quoted


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({}, "must be a list"),
        ({"blobSASUri": DISK0}, "must be a list"),
        ({"blobSASUri": []}, "empty"),
        ({"blobSASUri": [DISK0, DISK0]}, "duplicates"),
        ({"blobSASUri": [DISK0, DISK0.replace(SIG, "OtHeRsIg000%3D")]}, "duplicates"),
    ],
)
def test_disk_list_errors(obj: object, fragment: str) -> None:
    err = config_error(flat(prot=protected(objectStr=b64(json.dumps(obj)))))
    assert err.code is ErrorCode.INVALID_DISK_LIST
    assert fragment in err.message


def test_disk_cap_says_why() -> None:
    urls = [sas("acct.blob.core.windows.net", f"/vhds/d{i}.vhd") for i in range(MAX_DISKS + 1)]
    err = config_error(flat(prot=protected(objectStr=object_str(urls))))
    assert err.code is ErrorCode.INVALID_DISK_LIST
    assert "64 data disks plus the OS disk" in err.message
    ok = parse_handler_settings(flat(prot=protected(objectStr=object_str(urls[:MAX_DISKS]))))
    assert len(ok.disk_sas_urls) == MAX_DISKS == 65


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (sas("acct.blob.core.windows.net", "/vhds/os.vhd", scheme="http"), "must use https"),
        (sas("acct.blob.core.windows.net", "/vhds/os.vhd", scheme="ftp"), "http(s) URL"),
        ("https:///vhds/os.vhd?sig=" + SIG, "http(s) URL"),
        (sas("acct.blob.core.windows.net", "/vhds"), "container and a blob"),
        (sas("acct.blob.core.windows.net", ""), "container and a blob"),
        ("https://acct.blob.core.windows.net/vhds/os.vhd?sv=1&sp=rw", "no SAS signature"),
        ("https://acct.blob.core.windows.net/vhds/os.vhd?sig=", "no SAS signature"),
        ("https://acct.blob.core.windows.net/vhds/os.vhd", "no SAS signature"),
        (sas("user:" + SIG + "@acct.blob.core.windows.net", "/vhds/os.vhd"), "user information"),
        (sas("acct.blob.core.windows.net", "/vhds/o s.vhd"), "whitespace"),
        (sas("acct.blob.core.windows.net:99999", "/vhds/os.vhd"), "not a valid URL"),
        (sas("[::1", "/vhds/os.vhd"), "not a valid URL"),
        (sas("127.0.0.1:10000", "/container/blob", scheme="http"), "/account/container/blob"),
        ("", "empty"),
        (42, "URL string"),
        (None, "URL string"),
    ],
)
def test_bad_disk_urls(url: Any, fragment: str) -> None:
    err = config_error(flat(prot=protected(objectStr=object_str([DISK0, url]))))
    assert err.code is ErrorCode.INVALID_SETTINGS
    assert "blobSASUri[1]" in err.message
    assert fragment in err.message


def test_emulator_http_path_style_is_accepted() -> None:
    for host in ("127.0.0.1:10000", "localhost:10000", "[::1]:10000"):
        url = sas(host, "/devstoreaccount1/vhds/os.vhd", scheme="http")
        assert parse_handler_settings(flat(prot=protected(objectStr=object_str([url]))))


def test_error_message_shows_the_url_without_sas() -> None:
    url = "https://acct.blob.core.windows.net/vhds?sv=1&sig=" + SIG
    err = config_error(flat(prot=protected(objectStr=object_str([url]))))
    assert "https://acct.blob.core.windows.net/vhds" in err.message


# --- logs and status URIs -------------------------------------------------------


def test_blob_uris_protected_first_then_public() -> None:
    other = sas("pub.blob.core.windows.net", "/c/status.txt", sig="PuBlIcSiG%3D")
    both = parse_handler_settings(flat(pub=public(statusBlobUri=other)))
    assert both.status_blob_uri == STATUS
    fallback = parse_handler_settings(
        flat(pub=public(statusBlobUri=other, logsBlobUri=""), prot=protected(statusBlobUri=_DROP))
    )
    assert fallback.status_blob_uri == other
    assert "PuBlIcSiG%3D" in fallback.secrets
    none = parse_handler_settings(flat(prot=protected(statusBlobUri=_DROP, logsBlobUri="  ")))
    assert none.status_blob_uri is None and none.logs_blob_uri is None


def test_bad_protected_blob_uri_is_not_masked_by_public() -> None:
    err = config_error(
        flat(pub=public(logsBlobUri=LOGS), prot=protected(logsBlobUri="https://x.invalid/c/b"))
    )
    assert "protectedSettings.logsBlobUri" in err.message


# --- backup metadata --------------------------------------------------------------


def test_backup_metadata_key_value_list() -> None:
    obj = {
        "backupMetadata": [{"Key": "taskId", "Value": "t1"}, {"Key": "retry", "Value": 2}],
        "snapshotTaskToken": "ToKeN-abcdef-123456",
    }
    parsed = parse_handler_settings(flat(pub=public(objectStr=b64(json.dumps(obj)))))
    assert dict(parsed.backup_metadata) == {"taskId": "t1", "retry": "2"}
    assert "ToKeN-abcdef-123456" in parsed.secrets
    with pytest.raises(TypeError):
        parsed.backup_metadata["x"] = "y"  # type: ignore[index]


def test_backup_metadata_object_form() -> None:
    obj = {"backupMetadata": {"a_b": "1"}}
    parsed = parse_handler_settings(flat(pub=public(objectStr=b64(json.dumps(obj)))))
    assert dict(parsed.backup_metadata) == {"a_b": "1"}


@pytest.mark.parametrize(
    "meta",
    [
        [{"Key": "bad-key", "Value": "v"}],
        [{"Key": "1abc", "Value": "v"}],
        [{"Key": "k", "Value": "line\nbreak"}],
        [{"Key": "k", "Value": None}],
        [{"Key": "k", "Value": True}],
        [{"Key": "k"}],
        [{"Key": "k", "Value": "a"}, {"Key": "K", "Value": "b"}],
        "not-a-list",
    ],
)
def test_backup_metadata_rejected(meta: Any) -> None:
    obj = {"backupMetadata": meta}
    err = config_error(flat(pub=public(objectStr=b64(json.dumps(obj)))))
    assert "publicSettings.objectStr" in err.message


def test_public_object_str_bad_base64() -> None:
    err = config_error(flat(pub=public(objectStr="***")))
    assert "publicSettings.objectStr is not valid base64" in err.message


# --- secrets (I5) -----------------------------------------------------------------


def test_secrets_cover_every_sas_and_protected_value() -> None:
    parsed = parse_handler_settings(flat())
    for sig in ALL_SIGS:
        assert sig in parsed.secrets
        assert unquote(sig) in parsed.secrets
    for url in (DISK0, DISK1, LOGS, STATUS):
        assert url.split("?", 1)[1] in parsed.secrets
    assert protected()["objectStr"] in parsed.secrets
    assert LOGS in parsed.secrets


def test_repr_and_str_hide_secrets() -> None:
    parsed = parse_handler_settings(flat())
    for text in (repr(parsed), str(parsed), f"{parsed}"):
        assert_no_secret(text)
        assert protected()["objectStr"] not in text
        assert "acct1.blob.core.windows.net/vhds/os.vhd" in text
        assert parsed.task_id in text


def test_redactor_built_from_secrets_scrubs_log_lines() -> None:
    parsed = parse_handler_settings(flat())
    redactor = Redactor(parsed.secrets)
    line = f"PUT {DISK0}&comp=snapshot; decoded sig {unquote(SIG)}; obj {protected()['objectStr']}"
    assert_no_secret(redactor(line))
    assert protected()["objectStr"] not in redactor(line)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_FIELDS = [
    "taskId",
    "commandToExecute",
    "commandStartTimeUTCTicks",
    "vmType",
    "locale",
    "objectStr",
]


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(_FIELDS), value=_json, where=st.sampled_from(["pub", "prot"]))
def test_any_field_value_gives_settings_or_config_error(field: str, value: Any, where: str) -> None:
    doc = (
        flat(pub=public(**{field: value}))
        if where == "pub"
        else flat(prot=protected(**{field: value}))
    )
    before = copy.deepcopy(doc)
    result = outcome(doc)
    if isinstance(result, ConfigError):
        assert_no_secret(str(result))
        assert_settings_error(result)
    else:
        # Whatever one field holds, settings that parse describe a job that can run,
        # their text shows no secret, and every protected string is one to redact.
        assert result.task_id.strip() and "snapshot" in result.command.lower()
        assert 1 <= len(result.disk_sas_urls) <= MAX_DISKS
        assert_no_secret(repr(result))
        prot = doc["protectedSettings"]
        strings = {v.strip() for v in prot.values() if isinstance(v, str) and v.strip()}
        assert strings <= set(result.secrets)
    assert doc == before  # parsing is pure: the input is never modified
    assert same_outcome(outcome(doc), result)  # and deterministic


@settings(max_examples=200, deadline=None)
@given(doc=_json)
def test_any_document_gives_settings_or_config_error(doc: Any) -> None:
    before = copy.deepcopy(doc)
    result = outcome(doc)
    if isinstance(result, ConfigError):
        assert_settings_error(result)
    else:
        assert 1 <= len(result.disk_sas_urls) <= MAX_DISKS
    assert doc == before  # parsing is pure: the input is never modified
    assert same_outcome(outcome(doc), result)  # and deterministic


# The codes a settings document is refused with: no other error escapes the parser.
SETTINGS_ERROR_CODES = {
    ErrorCode.INVALID_SETTINGS,
    ErrorCode.INVALID_DISK_LIST,
    ErrorCode.PROTECTED_SETTINGS_INVALID,
}


def outcome(doc: object) -> HandlerSettings | ConfigError:
    """What parsing ``doc`` gives; any exception but ConfigError fails the test."""
    try:
        return parse_handler_settings(doc)
    except ConfigError as exc:
        return exc


def same_outcome(a: HandlerSettings | ConfigError, b: HandlerSettings | ConfigError) -> bool:
    if isinstance(a, ConfigError) and isinstance(b, ConfigError):
        return (a.code, a.message) == (b.code, b.message)
    return a == b


def assert_settings_error(exc: ConfigError) -> None:
    assert exc.code in SETTINGS_ERROR_CODES, exc.code
    assert exc.message.strip(), "a refusal says why"


# --- the file shell -----------------------------------------------------------------

# Settings files are trusted like the plugin config (root's, 600, no symlink,
# root-only parents): /tmp (sticky, world-writable) is refused, so the file
# tests work in a fresh root-only directory like tests/support/jobkit.py.
SAFE_BASE = "/var/lib/snapshot-runtime-tests"


@pytest.fixture
def safe_dir() -> Iterator[Path]:
    require(os.geteuid() == 0, "needs root: settings files must be root-owned")
    os.makedirs(SAFE_BASE, mode=0o755, exist_ok=True)
    os.chmod(SAFE_BASE, 0o755)
    path = Path(tempfile.mkdtemp(dir=SAFE_BASE))  # 0700, root
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(SAFE_BASE)


def _write_secret(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    return path


def test_load_settings_file(safe_dir: Path) -> None:
    path = _write_secret(safe_dir / "0.settings", json.dumps(handler_file()))
    assert load_settings_file(str(path)) == parse_handler_settings(handler_file())
    bom = _write_secret(
        safe_dir / "1.settings", b"\xef\xbb\xbf" + json.dumps(handler_file()).encode()
    )
    assert isinstance(load_settings_file(str(bom)), HandlerSettings)
    read_only = _write_secret(safe_dir / "2.settings", json.dumps(handler_file()), 0o400)
    assert isinstance(load_settings_file(str(read_only)), HandlerSettings)


def _load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings_file(str(path))
    assert info.value.code is ErrorCode.INVALID_SETTINGS
    assert_no_secret(str(info.value))
    return info.value


def test_load_errors(safe_dir: Path) -> None:
    assert "cannot open" in _load_error(safe_dir / "missing").message
    assert "not a regular file" in _load_error(safe_dir).message
    big = _write_secret(safe_dir / "big.settings", b" " * (MAX_SETTINGS_FILE_BYTES + 1))
    assert "limit" in _load_error(big).message
    broken = _write_secret(safe_dir / "broken.settings", json.dumps(handler_file())[:-5])
    err = _load_error(broken)
    assert "not valid JSON" in err.message and "blob.core" not in err.message
    latin = _write_secret(safe_dir / "latin.settings", b'{"x": "\xff"}')
    assert "not UTF-8" in _load_error(latin).message
    deep = _write_secret(safe_dir / "deep.settings", "[" * 200_000 + "]" * 200_000)
    assert "nested" in _load_error(deep).message


@pytest.mark.parametrize(
    ("mode", "uid", "fix"),
    [
        (0o644, 0, "chmod 600"),  # world-readable: anyone reads every SAS
        (0o604, 0, "chmod 600"),
        (0o620, 0, "chmod 600"),  # group-writable: the group rewrites the job
        (0o640, 0, "chmod 600"),
        (0o700, 0, "chmod 600"),  # executable
        (0o600, 65534, "chown root:root"),  # not root's
    ],
    ids=["world-readable", "other-readable", "group-writable", "group-readable", "exec", "nobody"],
)
def test_untrusted_settings_file_is_refused(safe_dir: Path, mode: int, uid: int, fix: str) -> None:
    path = _write_secret(safe_dir / "0.settings", json.dumps(handler_file()), mode)
    os.chown(path, uid, uid)
    err = _load_error(path)
    assert "protected settings" in err.message, err.message
    assert f"fix: {fix}" in err.message and str(path) in err.message, err.message


def test_symlinked_settings_file_is_refused(safe_dir: Path) -> None:
    real = _write_secret(safe_dir / "real.settings", json.dumps(handler_file()))
    link = safe_dir / "link.settings"
    link.symlink_to(real)
    err = _load_error(link)
    assert "symbolic link" in err.message and f"fix: pass the real path {real}" in err.message


def test_settings_file_under_a_symlinked_parent_is_refused(safe_dir: Path) -> None:
    (safe_dir / "real").mkdir(mode=0o700)
    real = _write_secret(safe_dir / "real" / "0.settings", json.dumps(handler_file()))
    (safe_dir / "alias").symlink_to(safe_dir / "real")
    err = _load_error(safe_dir / "alias" / "0.settings")
    assert f"symbolic link {safe_dir / 'alias'}" in err.message, err.message
    assert f"fix: pass the real path {real}" in err.message


@pytest.mark.parametrize(("mode", "uid"), [(0o777, 0), (0o1777, 65534), (0o775, 0), (0o700, 65534)])
def test_settings_file_in_an_unsafe_directory_is_refused(
    safe_dir: Path, mode: int, uid: int
) -> None:
    parent = safe_dir / "dir"
    parent.mkdir()
    os.chmod(parent, mode)
    os.chown(parent, uid, uid)
    path = _write_secret(parent / "0.settings", json.dumps(handler_file()))
    err = _load_error(path)
    assert "unsafe directory" in err.message and str(parent) in err.message, err.message


def test_settings_file_below_a_root_sticky_directory_is_accepted(safe_dir: Path) -> None:
    # The plugin config's rule (issue 12): a root-owned sticky directory stops other
    # users from replacing root's entries, and the file itself is root's and 0600.
    parent = safe_dir / "sticky"
    parent.mkdir()
    os.chmod(parent, 0o1777)
    path = _write_secret(parent / "0.settings", json.dumps(handler_file()))
    assert load_settings_file(str(path)) == parse_handler_settings(handler_file())


def test_the_handlers_memfd_is_accepted() -> None:
    """The handler passes decrypted settings as /proc/self/fd/N of a memfd
    (mode 777, a procfs symlink): never on a filesystem, so not refused."""
    fd = os.memfd_create("settings-test", os.MFD_CLOEXEC)
    try:
        os.write(fd, json.dumps(handler_file()).encode())
        loaded = load_settings_file(f"/proc/self/fd/{fd}")
        assert loaded == parse_handler_settings(handler_file())
    finally:
        os.close(fd)


def test_load_refuses_a_fifo_without_blocking(safe_dir: Path) -> None:
    fifo = safe_dir / "fifo.settings"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def load() -> None:
        try:
            load_settings_file(str(fifo))
        except ConfigError as exc:
            result.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "load_settings_file blocked on a FIFO"
    assert result and "not a regular file" in str(result[0])
