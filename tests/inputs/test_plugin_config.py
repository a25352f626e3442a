from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.inputs.plugin_config import (
    MAX_CONFIG_BYTES,
    MAX_RETRIES,
    ConfigWarning,
    PluginConfig,
    ScriptSpec,
    load_plugin_config,
    parse_plugin_config,
)
from snapshot_runtime.inputs.plugin_config_file import find_config_path
from tests.support.requirements import require

# The shape of the reference template (MicrosoftAzureBackup/VMSnapshotPluginConfig).
TEMPLATE: dict[str, Any] = {
    "pluginName": "ScriptRunner",
    "preScriptLocation": "/etc/azure/pre.sh",
    "postScriptLocation": "/etc/azure/post.sh",
    "preScriptParams": ["", ""],
    "postScriptParams": ["", ""],
    "preScriptNoOfRetries": 0,
    "postScriptNoOfRetries": 0,
    "timeoutInSeconds": 30,
    "continueBackupOnFailure": True,
    "fsFreezeEnabled": True,
    "ScriptsExecutionPollTimeSeconds": 3,
}
REQUIRED = ("pluginName", "preScriptLocation", "postScriptLocation")


def dump(obj: object) -> bytes:
    return json.dumps(obj, indent=4).encode()


def with_(**changes: Any) -> bytes:
    return dump({**TEMPLATE, **changes})


def refused(data: bytes) -> str:
    with pytest.raises(ConfigError) as info:
        parse_plugin_config(data)
    assert info.value.code is ErrorCode.INCORRECT_JSON_CONFIG
    return info.value.message


def write_config(path: Path, data: bytes, mode: int = 0o600) -> str:
    """A config the loader trusts, but for ``mode``: that needs root as its owner."""
    require(os.geteuid() == 0, "needs root: the loader only trusts a root-owned config")
    path.write_bytes(data)
    os.chmod(path, mode)
    return str(path)


def load_refused(path: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_plugin_config(path)
    assert info.value.code is ErrorCode.INCORRECT_JSON_CONFIG
    return info.value.message


# --- parse: accepted ---------------------------------------------------------


def test_template_parses_exactly() -> None:
    config = parse_plugin_config(dump(TEMPLATE), source="/etc/azure/x.json")
    assert config == PluginConfig(
        plugin_name="ScriptRunner",
        pre=ScriptSpec(path="/etc/azure/pre.sh", params=("", ""), retries=0),
        post=ScriptSpec(path="/etc/azure/post.sh", params=("", ""), retries=0),
        timeout_seconds=30,
        continue_backup_on_failure=True,
        fs_freeze_enabled=True,
        poll_seconds=3,
        app_name=None,
        source_path="/etc/azure/x.json",
        warnings=(),
    )


def test_defaults_when_optional_keys_absent() -> None:
    minimal = {key: TEMPLATE[key] for key in REQUIRED}
    config = parse_plugin_config(dump(minimal))
    assert config == PluginConfig(
        plugin_name="ScriptRunner",
        pre=ScriptSpec(path="/etc/azure/pre.sh", params=(), retries=0),
        post=ScriptSpec(path="/etc/azure/post.sh", params=(), retries=0),
        timeout_seconds=30,  # the template's value, not the reference code's 10
        continue_backup_on_failure=True,
        fs_freeze_enabled=True,
        poll_seconds=3,
        app_name=None,
        source_path="<memory>",
        warnings=(),
    )


def test_every_key_set() -> None:
    config = parse_plugin_config(
        with_(
            preScriptParams=["--db", "orders"],
            postScriptParams=[],
            preScriptNoOfRetries=2,
            postScriptNoOfRetries=10,
            timeoutInSeconds=1800,
            continueBackupOnFailure=False,
            fsFreezeEnabled=False,
            ScriptsExecutionPollTimeSeconds=5,
            appName="orders-db",
        )
    )
    assert config.pre == ScriptSpec("/etc/azure/pre.sh", ("--db", "orders"), 2)
    assert config.post == ScriptSpec("/etc/azure/post.sh", (), 10)
    assert (config.timeout_seconds, config.poll_seconds) == (1800, 5)
    assert not config.continue_backup_on_failure
    assert not config.fs_freeze_enabled
    assert config.app_name == "orders-db"
    assert config.warnings == ()


def test_app_name_null_means_absent() -> None:
    assert parse_plugin_config(with_(appName=None)).app_name is None


def test_boundaries_accepted() -> None:
    assert parse_plugin_config(with_(timeoutInSeconds=1)).timeout_seconds == 1
    assert parse_plugin_config(with_(ScriptsExecutionPollTimeSeconds=1)).poll_seconds == 1


def test_retries_above_cap_are_lowered_with_a_warning() -> None:
    config = parse_plugin_config(with_(preScriptNoOfRetries=50))
    assert config.pre.retries == MAX_RETRIES
    assert config.post.retries == 0
    assert len(config.warnings) == 1
    assert "preScriptNoOfRetries" in config.warnings[0]
    assert "50" in config.warnings[0]
    assert config.warning_codes == (ErrorCode.PLUGIN_CONFIG_VALUE_ADJUSTED,)


def test_unknown_keys_warn_with_hint() -> None:
    config = parse_plugin_config(with_(TimeoutInSecond=60, futureKnob={"a": 1}))
    assert config.timeout_seconds == 30
    assert config.warnings == (
        'unknown key "TimeoutInSecond" ignored; did you mean "timeoutInSeconds"?',
        'unknown key "futureKnob" ignored',
    )
    # Logged and shown by validate, but not a code the job reports.
    assert config.warning_codes == ()


def test_missing_key_mentions_case_typo() -> None:
    data = dict(TEMPLATE)
    data["PluginName"] = data.pop("pluginName")
    message = refused(dump(data))
    assert "pluginName: required key is missing" in message
    assert '"PluginName"; keys are case-sensitive' in message


def test_missing_key_mentions_typo() -> None:
    data = dict(TEMPLATE)
    data["preScriptLocaton"] = data.pop("preScriptLocation")
    assert '(found "preScriptLocaton"; a typo?)' in refused(dump(data))


def test_many_unknown_keys_are_bounded() -> None:
    config = parse_plugin_config(with_(**{f"k{i}": i for i in range(5000)}))
    assert len(config.warnings) == 21
    assert "4980 more" in config.warnings[-1]


def test_trailing_whitespace_in_path_warns() -> None:
    config = parse_plugin_config(with_(postScriptLocation="/etc/azure/post.sh "))
    assert config.post.path == "/etc/azure/post.sh "
    assert any("postScriptLocation" in w for w in config.warnings)


def test_all_problems_reported_at_once() -> None:
    message = refused(with_(timeoutInSeconds=0, fsFreezeEnabled="yes"))
    assert "timeoutInSeconds" in message
    assert "fsFreezeEnabled" in message


def test_param_values_are_never_echoed() -> None:
    message = refused(with_(preScriptParams=["--password", 123456789]))
    assert "preScriptParams[1]" in message
    assert "123456789" not in message


# --- parse: tolerated as the reference tolerates it, with a warning -------------

ADJ = ErrorCode.PLUGIN_CONFIG_VALUE_ADJUSTED
CONV = ErrorCode.PLUGIN_CONFIG_VALUE_CONVERTED


def pre_params(c: PluginConfig) -> object:
    return c.pre.params


def post_retries(c: PluginConfig) -> object:
    return c.post.retries


def pre_retries(c: PluginConfig) -> object:
    return c.pre.retries


def timeout(c: PluginConfig) -> object:
    return c.timeout_seconds


def poll(c: PluginConfig) -> object:
    return c.poll_seconds


def cont(c: PluginConfig) -> object:
    return c.continue_backup_on_failure


def freeze(c: PluginConfig) -> object:
    return c.fs_freeze_enabled


# name, config, (what to read, the value the scripts run with), codes, the
# key and the fix each warning must name (in order).
TOLERATED: list[tuple[str, bytes, tuple[Any, Any], tuple[ErrorCode, ...], tuple[str, ...]]] = [
    # timeoutInSeconds above 1800: the reference clamps silently (#706).
    ("timeout 1801", with_(timeoutInSeconds=1801), (timeout, 1800), (ADJ,),
     ("timeoutInSeconds", "lowered to 1800", "at most 1800")),
    ("timeout 3600", with_(timeoutInSeconds=3600), (timeout, 1800), (ADJ,),
     ("timeoutInSeconds", "3600")),
    ("timeout huge", with_(timeoutInSeconds=10**30), (timeout, 1800), (ADJ,),
     ("timeoutInSeconds", "18 digits")),
    # ScriptsExecutionPollTimeSeconds outside 1..5: the reference uses 3.
    ("poll 0", with_(ScriptsExecutionPollTimeSeconds=0), (poll, 3), (ADJ,),
     ("ScriptsExecutionPollTimeSeconds", "outside 1..5, 3 used", "set it from 1 to 5")),
    ("poll 6", with_(ScriptsExecutionPollTimeSeconds=6), (poll, 3), (ADJ,),
     ("ScriptsExecutionPollTimeSeconds", "6")),
    ("poll -1", with_(ScriptsExecutionPollTimeSeconds=-1), (poll, 3), (ADJ,),
     ("ScriptsExecutionPollTimeSeconds", "-1")),
    # numbers as numeric strings: the reference int()s the poll period, and
    # crashes (timeout, IncorrectPluginhostFile) or hangs (retries) on others.
    ("poll '2'", with_(ScriptsExecutionPollTimeSeconds="2"), (poll, 2), (CONV,),
     ("ScriptsExecutionPollTimeSeconds", '"2" is a string', "without quotes: 2")),
    ("poll '9'", with_(ScriptsExecutionPollTimeSeconds="9"), (poll, 3), (CONV, ADJ),
     ("ScriptsExecutionPollTimeSeconds", "ScriptsExecutionPollTimeSeconds")),
    ("timeout '30'", with_(timeoutInSeconds="30"), (timeout, 30), (CONV,),
     ("timeoutInSeconds", "without quotes: 30")),
    ("timeout ' 45 '", with_(timeoutInSeconds=" 45 "), (timeout, 45), (CONV,),
     ("timeoutInSeconds",)),
    ("timeout '3600'", with_(timeoutInSeconds="3600"), (timeout, 1800), (CONV, ADJ),
     ("timeoutInSeconds", "timeoutInSeconds")),
    ("pre retries '2'", with_(preScriptNoOfRetries="2"), (pre_retries, 2), (CONV,),
     ("preScriptNoOfRetries", "without quotes: 2")),
    ("post retries '1'", with_(postScriptNoOfRetries="1"), (post_retries, 1), (CONV,),
     ("postScriptNoOfRetries",)),
    ("retries 50", with_(preScriptNoOfRetries=50), (pre_retries, MAX_RETRIES), (ADJ,),
     ("preScriptNoOfRetries", f"at most {MAX_RETRIES}")),
    # booleans as strings: the evident value (the reference tests the
    # string's truth, so its "false" means true; see docs/scripts.md).
    ("continue 'true'", with_(continueBackupOnFailure="true"), (cont, True), (CONV,),
     ("continueBackupOnFailure", "used as true", "without quotes: true")),
    ("continue 'false'", with_(continueBackupOnFailure="false"), (cont, False), (CONV,),
     ("continueBackupOnFailure", "used as false")),
    ("freeze 'False'", with_(fsFreezeEnabled="False"), (freeze, False), (CONV,),
     ("fsFreezeEnabled", "without quotes: false")),
    ("freeze ' TRUE '", with_(fsFreezeEnabled=" TRUE "), (freeze, True), (CONV,),
     ("fsFreezeEnabled",)),
    # params as one string: one argument (the reference passed one per character).
    ("params 'a,b'", with_(preScriptParams="a,b"), (pre_params, ("a,b",)), (CONV,),
     ("preScriptParams", "passed as one argument", '["-v", "db1"]')),
    ("params ''", with_(preScriptParams=""), (pre_params, ()), (CONV,),
     ("preScriptParams", "passed as no argument")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "read", "codes", "named"),
    [(d, r, c, n) for _, d, r, c, n in TOLERATED],
    ids=[t[0] for t in TOLERATED],
)
def test_tolerated(
    data: bytes, read: tuple[Any, Any], codes: tuple[ErrorCode, ...], named: tuple[str, ...]
) -> None:
    config = parse_plugin_config(data)
    attribute, expected = read
    assert attribute(config) == expected
    assert config.warning_codes == codes
    assert [w.code for w in config.warning_details] == list(codes)
    assert config.warnings == tuple(w.message for w in config.warning_details)
    text = " | ".join(config.warnings)
    for fragment in named:
        assert fragment in text
    # Each warning names its key first, then what was used and the fix.
    for warning in config.warning_details:
        assert warning.message.split(":", 1)[0] in text
        assert "write it" in warning.message or "set it" in warning.message
        warning.message.encode("ascii")


def test_tolerated_params_string_is_never_echoed() -> None:
    config = parse_plugin_config(with_(preScriptParams="--password=hunter2-secret"))
    assert config.pre.params == ("--password=hunter2-secret",)
    assert "hunter2" not in " ".join(config.warnings)


def test_stock_template_empty_locations_parse() -> None:
    # The template as shipped: both locations "". The reference reports
    # Pre-ScriptNotFound (from its script check), not a config error; the
    # script check here does the same (tests/scripts, tests/job).
    config = parse_plugin_config(with_(preScriptLocation="", postScriptLocation=""))
    assert (config.pre.path, config.post.path) == ("", "")
    assert config.warnings == ()


def test_several_tolerated_values_warn_each_with_distinct_codes() -> None:
    config = parse_plugin_config(
        with_(timeoutInSeconds=3600, fsFreezeEnabled="true", ScriptsExecutionPollTimeSeconds=0)
    )
    assert (config.timeout_seconds, config.fs_freeze_enabled, config.poll_seconds) == (
        1800,
        True,
        3,
    )
    assert config.warning_codes == (ADJ, CONV)
    assert len(config.warning_details) == 3
    assert config.warning_details[1] == ConfigWarning(
        'fsFreezeEnabled: "true" is a string, used as true; write it without quotes: true', CONV
    )


# --- parse: refused ----------------------------------------------------------

NEGATIVE: list[tuple[str, bytes, tuple[str, ...]]] = [
    # type errors, one per key
    ("pluginName number", with_(pluginName=1), ("pluginName", "string")),
    ("pre location list", with_(preScriptLocation=["/a"]), ("preScriptLocation", "string")),
    ("post location null", with_(postScriptLocation=None), ("postScriptLocation", "string")),
    ("post params object", with_(postScriptParams={}), ("postScriptParams", "list")),
    ("param item number", with_(preScriptParams=["a", 1]), ("preScriptParams[1]", "string")),
    ("param item null", with_(postScriptParams=[None]), ("postScriptParams[0]", "null")),
    ("pre retries float", with_(preScriptNoOfRetries=1.0), ("preScriptNoOfRetries", "integer")),
    ("timeout float", with_(timeoutInSeconds=30.0), ("timeoutInSeconds", "30.0")),
    # strings that are no evident value (the tolerated ones are in TOLERATED)
    ("timeout 'abc'", with_(timeoutInSeconds="abc"), ("timeoutInSeconds", '"abc"')),
    ("timeout '3_0'", with_(timeoutInSeconds="3_0"), ("timeoutInSeconds", "from 1 to 1800")),
    ("timeout '30.0'", with_(timeoutInSeconds="30.0"), ("timeoutInSeconds", '"30.0"')),
    ("timeout ''", with_(timeoutInSeconds=""), ("timeoutInSeconds", "a string")),
    ("retries 'two'", with_(preScriptNoOfRetries="two"), ("preScriptNoOfRetries", "at least 0")),
    ("poll 'fast'", with_(ScriptsExecutionPollTimeSeconds="fast"), ("from 1 to 5", '"fast"')),
    ("poll float", with_(ScriptsExecutionPollTimeSeconds=2.0), ("from 1 to 5", "2.0")),
    ("continue 'yes'", with_(continueBackupOnFailure="yes"), ("continueBackupOnFailure",)),
    ("freeze 'no'", with_(fsFreezeEnabled="no"), ("fsFreezeEnabled", "without quotes")),
    ("freeze '1'", with_(fsFreezeEnabled="1"), ("fsFreezeEnabled", "true or false")),
    ("params string with NUL", with_(preScriptParams="a\0"), ("preScriptParams[0]", "NUL")),
    ("timeout null", with_(timeoutInSeconds=None), ("timeoutInSeconds", "null")),
    ("appName number", with_(appName=7), ("appName", "string")),
    ("freeze 1", with_(fsFreezeEnabled=1), ("fsFreezeEnabled", "true or false")),
    # true as an int
    ("timeout true", with_(timeoutInSeconds=True), ("timeoutInSeconds", "boolean")),
    ("retries false", with_(preScriptNoOfRetries=False), ("preScriptNoOfRetries", "boolean")),
    ("poll true", with_(ScriptsExecutionPollTimeSeconds=True), ("ScriptsExecution", "boolean")),
    # out of range
    # timeoutInSeconds <= 0: the reference times the script out at once and
    # leaves it running; refusing stays right, as a number or as a string.
    ("timeout 0", with_(timeoutInSeconds=0), ("timeoutInSeconds", "from 1 to 1800")),
    ("timeout negative", with_(timeoutInSeconds=-5), ("timeoutInSeconds", "-5")),
    ("timeout '0'", with_(timeoutInSeconds="0"), ("timeoutInSeconds", "from 1 to 1800, got 0")),
    ("timeout '-5'", with_(timeoutInSeconds="-5"), ("timeoutInSeconds", "got -5")),
    ("retries '-1'", with_(postScriptNoOfRetries="-1"), ("postScriptNoOfRetries", "at least 0")),
    ("retries -1", with_(postScriptNoOfRetries=-1), ("postScriptNoOfRetries", "at least 0")),
    # values
    ("unknown pluginName", with_(pluginName="scriptrunner"), ("pluginName", "ScriptRunner")),
    ("relative location", with_(postScriptLocation="post.sh"), ("postScriptLocation", "absolute")),
    ("NUL in location", with_(preScriptLocation="/a\0b"), ("preScriptLocation", "NUL")),
    ("NUL in param", with_(preScriptParams=["a\0"]), ("preScriptParams[0]", "NUL")),
    ("long location", with_(preScriptLocation="/" + "a" * 5000), ("preScriptLocation", "PATH_MAX")),
    ("surrogate", b'{"pluginName": "Script\\ud800"}', ("pluginName", "Unicode")),
    # missing required keys
    *[
        (f"missing {key}", dump({k: v for k, v in TEMPLATE.items() if k != key}), (key, "missing"))
        for key in REQUIRED
    ],
    # not a plugin config at all
    ("not JSON", b"pluginName = ScriptRunner", ("not valid JSON", "line 1")),
    ("trailing comma", b'{"pluginName": "ScriptRunner",}', ("not valid JSON",)),
    ("BOM", b"\xef\xbb\xbf" + dump(TEMPLATE), ("byte order mark", "remove the BOM")),
    ("UTF-16", "{}".encode("utf-16"), ("UTF-16",)),
    ("non-UTF-8", b'{"pluginName": "Scr\xffiptRunner"}', ("not valid UTF-8", "offset 19")),
    ("top-level list", dump([TEMPLATE]), ("JSON object", "a list")),
    ("top-level string", b'"ScriptRunner"', ("JSON object", "a string")),
    ("top-level null", b"null", ("JSON object", "null")),
    (
        "duplicate key",
        dump(TEMPLATE)[:-1] + b', "timeoutInSeconds": 60}',
        ('"timeoutInSeconds": duplicate key',),
    ),
    ("nested duplicate", b'{"x": {"a": 1, "a": 2}}', ('"a": duplicate key',)),
    ("NaN", dump(TEMPLATE)[:-1] + b', "timeoutInSeconds": NaN}', ("NaN",)),
    ("Infinity", b'{"timeoutInSeconds": -Infinity}', ("-Infinity",)),
    ("deep list", b"[" * 100_000 + b"]" * 100_000, ("nested too deeply",)),
    ("deep object", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, ("nested too deeply",)),
    ("5000-digit int", b'{"timeoutInSeconds": ' + b"9" * 5000 + b"}", ("not valid JSON",)),
    ("empty file", b"", ("empty",)),
    ("whitespace file", b"  \n", ("empty",)),
    ("over size", b" " * (MAX_CONFIG_BYTES + 1), ("byte limit",)),
]


@pytest.mark.parametrize(
    ("data", "expected"), [(d, e) for _, d, e in NEGATIVE], ids=[n for n, _, _ in NEGATIVE]
)
def test_refused(data: bytes, expected: tuple[str, ...]) -> None:
    message = refused(data)
    for fragment in expected:
        assert fragment in message
    message.encode("ascii")  # safe for any log or status encoding


def test_unclosed_deep_nesting_is_refused() -> None:
    message = refused(b"[" * 100_000)
    assert "Traceback" not in message
    assert "RecursionError" not in message


# --- load ----------------------------------------------------------------------


def test_load_valid(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.json", dump(TEMPLATE))
    config = load_plugin_config(path)
    assert config.source_path == path
    assert config.pre.params == ("", "")


def test_load_400_is_accepted(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.json", dump(TEMPLATE), mode=0o400)
    assert load_plugin_config(path).timeout_seconds == 30


def test_load_refuses_big_file_without_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require(os.geteuid() == 0, "needs root: ownership is checked before size")
    path = tmp_path / "big.json"
    with open(path, "wb") as fh:
        fh.truncate(50 * 1024 * 1024)
    os.chmod(path, 0o600)
    reads: list[int] = []
    real_read = os.read

    def spy(fd: int, n: int) -> bytes:
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", spy)
    message = load_refused(str(path))
    assert "52428800 bytes" in message
    assert "limit" in message
    assert reads == []


def test_load_caps_the_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A file whose st_size understates its content (procfs, a file still growing).
    path = write_config(tmp_path / "c.json", b" " * (MAX_CONFIG_BYTES + 10))
    real_fstat = os.fstat

    def small_fstat(fd: int) -> os.stat_result:
        st = list(real_fstat(fd))
        st[6] = 10  # st_size
        return os.stat_result(st)

    monkeypatch.setattr(os, "fstat", small_fstat)
    assert "byte limit" in load_refused(path)


def test_load_refuses_directory(tmp_path: Path) -> None:
    assert "is a directory" in load_refused(str(tmp_path))


def test_load_refuses_symlink(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_bytes(dump(TEMPLATE))
    os.chmod(target, 0o600)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    message = load_refused(str(link))
    assert "symbolic link" in message
    assert "replace it" in message


@pytest.mark.timeout(10)  # opening a FIFO for reading would block until a writer came
def test_load_refuses_fifo_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "c.json"
    os.mkfifo(fifo, 0o600)
    assert "FIFO" in load_refused(str(fifo))


def test_load_refuses_char_device() -> None:
    assert "character device" in load_refused("/dev/null")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (0o644, "group and other must have no permission"),
        (0o700, "must not be executable"),
        (0o660, "660"),
    ],
)
def test_load_refuses_bad_mode(tmp_path: Path, mode: int, expected: str) -> None:
    path = write_config(tmp_path / "c.json", dump(TEMPLATE), mode=mode)
    message = load_refused(path)
    assert expected in message
    assert message.endswith(f"fix: chmod 600 {path}")


def test_load_refuses_non_root_owner(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "needs root to chown the config to another uid")
    path = write_config(tmp_path / "c.json", dump(TEMPLATE))
    os.chown(path, 1000, 1000)
    message = load_refused(path)
    assert "owned by uid 1000, must be owned by root" in message
    assert message.endswith(f"fix: chown root:root {path} && chmod 600 {path}")


def test_load_missing_file(tmp_path: Path) -> None:
    assert "not found" in load_refused(str(tmp_path / "absent.json"))
    assert "not found" in load_refused(str(tmp_path / "absent" / "c.json"))


def test_load_path_with_nul() -> None:
    assert "not found" in load_refused("/etc/azure/\0.json")


def test_load_reports_parse_errors(tmp_path: Path) -> None:
    # (3600 was the example here; it is lowered to 1800 now, as the reference does.)
    path = write_config(tmp_path / "c.json", with_(timeoutInSeconds=0))
    assert load_refused(path) == "timeoutInSeconds: must be an integer from 1 to 1800, got 0"


# --- find_config_path --------------------------------------------------------


def test_find_config_path_precedence(tmp_path: Path) -> None:
    default = tmp_path / "VMSnapshotScriptPluginConfig.json"
    legacy = tmp_path / "VMSnapshotPluginConfig.json"
    paths = {"default_path": str(default), "legacy_path": str(legacy)}

    assert find_config_path(None, **paths) is None
    assert find_config_path("/explicit.json", **paths) == "/explicit.json"

    legacy.write_text("{}")
    assert find_config_path(None, **paths) == str(legacy)
    assert find_config_path("", **paths) == str(legacy)

    default.write_text("{}")
    assert find_config_path(None, **paths) == str(default)
    assert find_config_path("/explicit.json", **paths) == "/explicit.json"


def test_find_config_path_sees_dangling_symlink(tmp_path: Path) -> None:
    # So the loader reports the broken default instead of using the legacy file.
    default = tmp_path / "default.json"
    default.symlink_to(tmp_path / "nowhere")
    legacy = tmp_path / "legacy.json"
    legacy.write_text("{}")
    found = find_config_path(None, default_path=str(default), legacy_path=str(legacy))
    assert found == str(default)


# --- properties ----------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)

ARG = st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=20)
VALID_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "pluginName": st.just("ScriptRunner"),
    "preScriptLocation": ARG.map(lambda s: "/" + s) | st.just(""),
    "postScriptLocation": st.just("/etc/azure/post.sh"),
    "preScriptParams": st.lists(ARG, max_size=4),
    "postScriptParams": st.lists(ARG, max_size=4),
    "preScriptNoOfRetries": st.integers(-2, 20),
    "postScriptNoOfRetries": st.integers(0, 10),
    "timeoutInSeconds": st.integers(-1, 2000),
    "continueBackupOnFailure": st.booleans(),
    "fsFreezeEnabled": st.booleans(),
    "ScriptsExecutionPollTimeSeconds": st.integers(0, 6),
    "appName": st.none() | ARG,
}
KEYED = st.fixed_dictionaries(
    {},
    optional={key: valid | JSON_VALUES for key, valid in VALID_VALUES.items()},
)


def check_outcome(data: bytes) -> None:
    """PluginConfig within its documented ranges, or ConfigError: nothing else."""
    try:
        config = parse_plugin_config(data)
    except ConfigError as exc:
        assert exc.code is ErrorCode.INCORRECT_JSON_CONFIG
        assert exc.message
        exc.message.encode("utf-8")
        return
    assert isinstance(config, PluginConfig)
    assert config.plugin_name == "ScriptRunner"
    assert 1 <= config.timeout_seconds <= 1800
    assert 1 <= config.poll_seconds <= 5
    for spec in (config.pre, config.post):
        # "" is the shipped template's location: the script check reports it as not found.
        assert spec.path == "" or spec.path.startswith("/")
        assert 0 <= spec.retries <= MAX_RETRIES
        assert all(isinstance(p, str) and "\0" not in p for p in spec.params)
    for warning in config.warnings:
        warning.encode("utf-8")
    assert config.warnings == tuple(w.message for w in config.warning_details)
    assert set(config.warning_codes) <= {
        ErrorCode.PLUGIN_CONFIG_VALUE_ADJUSTED,
        ErrorCode.PLUGIN_CONFIG_VALUE_CONVERTED,
    }


# Enough to cover every key's type branches; the whole file stays under ~10 s.
def examples(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@examples(1000)
@given(st.binary(max_size=512) | st.text(max_size=200).map(str.encode))
def test_any_bytes(data: bytes) -> None:
    check_outcome(data)


@examples(300)
@given(JSON_VALUES)
def test_any_json_value(value: object) -> None:
    check_outcome(json.dumps(value).encode())


@examples(350)
@given(KEYED, st.booleans())
def test_known_keys_with_any_values(obj: dict[str, Any], prefill: bool) -> None:
    # Prefilling the required keys steers half the cases past "missing key",
    # so the per-key checks and the success branch are exercised too.
    base = {k: TEMPLATE[k] for k in REQUIRED} if prefill else {}
    check_outcome(json.dumps({**base, **obj}).encode())


WELL_TYPED = st.fixed_dictionaries(
    {key: VALID_VALUES[key] for key in REQUIRED},
    optional={k: v for k, v in VALID_VALUES.items() if k not in REQUIRED},
)


@examples(200)
@given(WELL_TYPED)
def test_well_typed_configs_follow_the_rules(obj: dict[str, Any]) -> None:
    # An oracle for the ranges: right types in, exactly the documented outcome out.
    # Changed with issue 12: a timeout above 1800 and a poll outside 1..5 are
    # adjusted as the reference does (with a warning), no longer refused.
    timeout = obj.get("timeoutInSeconds", 30)
    poll = obj.get("ScriptsExecutionPollTimeSeconds", 3)
    pre_retries = obj.get("preScriptNoOfRetries", 0)
    data = json.dumps(obj).encode()
    if not (timeout >= 1 and pre_retries >= 0):
        refused(data)
        return
    config = parse_plugin_config(data)
    adjusted = timeout > 1800 or not 1 <= poll <= 5 or pre_retries > MAX_RETRIES
    assert (ErrorCode.PLUGIN_CONFIG_VALUE_ADJUSTED in config.warning_codes) == adjusted
    assert ErrorCode.PLUGIN_CONFIG_VALUE_CONVERTED not in config.warning_codes
    assert config.pre == ScriptSpec(
        obj["preScriptLocation"],
        tuple(obj.get("preScriptParams", ())),
        min(pre_retries, MAX_RETRIES),
    )
    assert config.post == ScriptSpec(
        obj["postScriptLocation"],
        tuple(obj.get("postScriptParams", ())),
        obj.get("postScriptNoOfRetries", 0),
    )
    assert (config.timeout_seconds, config.poll_seconds) == (
        min(timeout, 1800),
        poll if 1 <= poll <= 5 else 3,
    )
    assert config.continue_backup_on_failure is obj.get("continueBackupOnFailure", True)
    assert config.fs_freeze_enabled is obj.get("fsFreezeEnabled", True)
    assert config.app_name == obj.get("appName")


def _as_string_form(value: Any) -> Any:
    """How an operator might have written ``value``: a numeric or boolean string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return value


@examples(200)
@given(WELL_TYPED, st.sets(st.sampled_from(sorted(VALID_VALUES)), max_size=6))
def test_string_forms_run_as_their_evident_value(obj: dict[str, Any], stringify: set[str]) -> None:
    # Quoting numbers and booleans changes nothing but a Converted warning.
    try:
        plain = parse_plugin_config(json.dumps(obj).encode())
    except ConfigError:
        return
    written = {
        k: _as_string_form(v) if k in stringify and not isinstance(v, (str, list)) else v
        for k, v in obj.items()
    }
    config = parse_plugin_config(json.dumps(written).encode())
    fields = ("pre", "post", "timeout_seconds", "continue_backup_on_failure", "fs_freeze_enabled")
    for name in (*fields, "poll_seconds", "app_name"):
        assert getattr(config, name) == getattr(plain, name), name
    converted = written != obj
    assert (ErrorCode.PLUGIN_CONFIG_VALUE_CONVERTED in config.warning_codes) == converted
