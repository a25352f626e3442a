"""Parse and validate the pre/post-script plugin config (VMSnapshotScriptPluginConfig.json).

Contract:

* ``parse_plugin_config(data, source=...)`` is pure. It returns a frozen
  ``PluginConfig`` or raises ``ConfigError(ErrorCode.INCORRECT_JSON_CONFIG)``,
  whatever the bytes are: no other exception type, no traceback. Messages
  name the key and the problem, for example ``timeoutInSeconds: must be an
  integer from 1 to 1800, got 3600``; they do not repeat the file's path,
  which callers print in front ("PATH: message"). Every problem found is
  reported at once, separated by ``; ``. ``source`` becomes
  ``PluginConfig.source_path``.
* ``load_plugin_config(path)`` is the thin shell: ``plugin_config_file``
  opens and checks the file (no symlink, no FIFO, regular, root-owned, mode
  600/400, at most ``MAX_CONFIG_BYTES``); every refusal is the same
  ``ConfigError`` with a fix in the message. Then the bytes are parsed.
* ``find_config_path(explicit)``: an explicit path wins, else the default
  path, else the legacy name, else None. Paths are keyword parameters so
  tests never touch /etc.

The keys (names, JSON types, ranges, defaults), the rules common to all of
them, and where this parser deliberately differs from the reference
(ScriptRunner.get_config) are tabulated for operators in docs/scripts.md; the
code below is the authority (``_KNOWN_KEYS``, ``parse_plugin_config``). In
short: known keys are case-sensitive; ``null`` means "absent" only for
``appName``; duplicate keys, ``NaN``/``Infinity``, a BOM, non-UTF-8 and a
non-object are refused; unknown keys are warnings (with a "did you mean");
``timeoutInSeconds`` is one budget per script covering all its attempts.

Tolerated like the reference (it runs the scripts with these configs, so we
do too), each with a warning that names the key, the value used and the fix
(``ConfigWarning``; its code goes into the job's status and record):

* ``PluginConfigValueAdjusted``: ``timeoutInSeconds`` above 1800 -> 1800;
  ``ScriptsExecutionPollTimeSeconds`` outside 1..5 -> 3; retries above
  ``MAX_RETRIES`` -> ``MAX_RETRIES``.
* ``PluginConfigValueConverted``: a number written as a numeric string
  (``"30"``), a boolean as ``"true"``/``"false"``, script params as one
  string instead of a list (one argument).

An empty script location (the stock template's ``""``) is not a config
error: the script check reports it as ``Pre-ScriptNotFound``, as the
reference does.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.core.redact import ELLIPSIS, redact_then_truncate, scrub
from snapshot_runtime.inputs.plugin_config_file import (
    read_config_file,
)

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_RETRIES",
    "MAX_TIMEOUT_SECONDS",
    "ConfigWarning",
    "PluginConfig",
    "ScriptSpec",
    "load_plugin_config",
    "parse_plugin_config",
]

MAX_CONFIG_BYTES = 1 * 1024 * 1024
MAX_TIMEOUT_SECONDS = 1800
# All attempts share one timeout budget, so more attempts only squeeze each
# one; and a script that fails fast would be re-run against the application
# (re-locking a database, say) dozens of times while the VM waits.
MAX_RETRIES = 10

_PLUGIN_NAME = "ScriptRunner"
_DEFAULT_TIMEOUT = 30
_POLL_RANGE = (1, 5)
_DEFAULT_POLL = 3
_PATH_MAX = 4095  # bytes, Linux PATH_MAX without the NUL
_ARG_MAX = 131071  # bytes, Linux MAX_ARG_STRLEN without the NUL: execve fails beyond
_MAX_UNKNOWN_REPORTED = 20  # bounds warnings (and difflib work) for a hostile file
_SHOW_CHARS = 80
# A number written as a string: digits only, an optional sign, blanks around.
# Not int()'s full grammar: "3_0" and "\u0663" are not evident numbers.
_NUMERIC_STRING = re.compile(r"[ \t]*([+-]?[0-9]{1,18})[ \t]*")
_BOOLEAN_STRINGS = {"true": True, "false": False}
_ADJUSTED = ErrorCode.PLUGIN_CONFIG_VALUE_ADJUSTED
_CONVERTED = ErrorCode.PLUGIN_CONFIG_VALUE_CONVERTED

_KNOWN_KEYS = (
    "pluginName",
    "preScriptLocation",
    "postScriptLocation",
    "preScriptParams",
    "postScriptParams",
    "preScriptNoOfRetries",
    "postScriptNoOfRetries",
    "timeoutInSeconds",
    "continueBackupOnFailure",
    "fsFreezeEnabled",
    "ScriptsExecutionPollTimeSeconds",
    "appName",
)


@dataclass(frozen=True)
class ScriptSpec:
    """One script to run: ``sh``-style argv is ``path`` then ``params``."""

    path: str
    params: tuple[str, ...]
    retries: int  # NoOfRetries: 0 = one attempt


@dataclass(frozen=True)
class ConfigWarning:
    """Something accepted but odd. ``code`` is reported by the job (status,
    record, metric); ``None``: only logged and shown by ``validate``."""

    message: str
    code: ErrorCode | None = None


@dataclass(frozen=True)
class PluginConfig:
    """A validated plugin config; ``warnings`` lists what was accepted but odd.

    ``warning_details`` holds the same warnings with their codes;
    ``warning_codes`` the distinct codes, which the job reports.
    """

    plugin_name: str
    pre: ScriptSpec
    post: ScriptSpec
    timeout_seconds: int  # one budget per script covering all its attempts
    continue_backup_on_failure: bool
    fs_freeze_enabled: bool
    poll_seconds: int  # ScriptsExecutionPollTimeSeconds
    app_name: str | None
    source_path: str
    warnings: tuple[str, ...]
    warning_details: tuple[ConfigWarning, ...] = ()

    @property
    def warning_codes(self) -> tuple[ErrorCode, ...]:
        codes = (w.code for w in self.warning_details if w.code is not None)
        return tuple(dict.fromkeys(codes))


class _Refused(Exception):
    """Raised inside the JSON decoder hooks; becomes a ConfigError."""


def _fail(problem: str) -> ConfigError:
    # Callers print "PATH: message", so the message does not repeat the path.
    return ConfigError(ErrorCode.INCORRECT_JSON_CONFIG, problem)


def _quote(text: str) -> str:
    # ASCII-only and bounded: messages go to logs and status whatever the input.
    # Redacted before it is cut: a cut secret is recognised by no pattern.
    return json.dumps(redact_then_truncate(text, _SHOW_CHARS + len(ELLIPSIS), scrub))


def _describe(value: object) -> str:
    """A short, safe rendering of a JSON value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (a boolean)"
    if isinstance(value, int):
        # Guards str() against the interpreter's integer digit limit.
        return str(value) if abs(value) < 10**18 else "an integer of more than 18 digits"
    if isinstance(value, float):
        return f"{json.dumps(value)} (not an integer)"
    if isinstance(value, str):
        return f"{_quote(value)} (a string)"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__  # pragma: no cover - json yields no other type


def _is_unicode(text: str) -> bool:
    # JSON "\ud800" escapes decode to lone surrogates, which no encoder accepts.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _Refused(f"{_quote(key)}: duplicate key (each key may appear once)")
        seen[key] = value
    return seen


def _refuse_constant(name: str) -> NoReturn:
    raise _Refused(f"{name} is not valid JSON (numbers must be finite)")


def _decode(data: bytes) -> object:
    if len(data) > MAX_CONFIG_BYTES:
        raise _fail(f"is {len(data)} bytes, over the {MAX_CONFIG_BYTES}-byte limit")
    if data.startswith(b"\xef\xbb\xbf"):
        raise _fail(
            "starts with a UTF-8 byte order mark (BOM); remove the BOM "
            "(for example: sed -i '1s/^\\xEF\\xBB\\xBF//' FILE) and save as plain UTF-8",
        )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _fail("is UTF-16 encoded; save it as UTF-8 without a BOM")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(f"is not valid UTF-8 (bad byte at offset {exc.start})") from None
    if not text.strip():
        raise _fail("is empty; copy the template and fill in the script locations")
    try:
        return json.loads(
            text,
            object_pairs_hook=_pairs_without_duplicates,
            parse_constant=_refuse_constant,
        )
    except _Refused as exc:
        raise _fail(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise _fail(
            f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise _fail("is not a plugin config: JSON nested too deeply") from None
    except ValueError as exc:
        # int() refuses integers over sys.get_int_max_str_digits() digits.
        raise _fail(f"is not valid JSON: {exc}") from None


_KIND_NAMES: dict[type, str] = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    list: "a list",
    dict: "an object",
}


class _Reader:
    """Typed access to the top-level object, collecting every problem."""

    def __init__(self, obj: Mapping[str, Any], hints: Mapping[str, str]) -> None:
        self.obj = obj
        self.hints = hints  # known key -> unknown key that looks like a typo of it
        self.problems: list[str] = []
        self.warnings: list[ConfigWarning] = []

    def _missing(self, key: str) -> None:
        hint = self.hints.get(key)
        found = ""
        if hint is not None:
            why = "keys are case-sensitive" if hint.lower() == key.lower() else "a typo?"
            found = f" (found {_quote(hint)}; {why})"
        self.problems.append(f"{key}: required key is missing{found}")

    def _warn(self, code: ErrorCode | None, message: str) -> None:
        self.warnings.append(ConfigWarning(message, code))

    def text(self, key: str, *, required: bool, nullable: bool = False) -> str | None:
        if key not in self.obj:
            if required:
                self._missing(key)
            return None
        value = self.obj[key]
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            self.problems.append(f"{key}: must be a string, got {_describe(value)}")
            return None
        if not _is_unicode(value):
            self.problems.append(f"{key}: must be valid Unicode text (has a lone surrogate)")
            return None
        return value

    def path(self, key: str) -> str:
        """The script's path; ``""`` (the stock template) is kept for the script check.

        The reference reports an empty location as Pre-/Post-ScriptNotFound,
        not as a config error, so the check of the script file reports it.
        """
        value = self.text(key, required=True)
        if not value:
            return ""
        if "\0" in value:
            self.problems.append(f"{key}: must not contain a NUL character")
        elif not value.startswith("/"):
            self.problems.append(
                f"{key}: must be an absolute path (starting with /), got {_quote(value)}"
            )
        elif len(value.encode("utf-8")) > _PATH_MAX:
            self.problems.append(f"{key}: longer than {_PATH_MAX} bytes (PATH_MAX)")
        elif value != value.rstrip():
            # Kept as written: a file name may end in a space, but it rarely does.
            self._warn(None, f"{key}: path ends with whitespace, which is part of the path")
        return value

    def params(self, key: str) -> tuple[str, ...]:
        if key not in self.obj:
            return ()
        value = self.obj[key]
        if isinstance(value, str):
            # The reference iterates the string (one argument per character);
            # the evident meaning is one argument. Params may hold
            # credentials: the warning never echoes the value.
            items: list[Any] = [value] if value else []
            what = "one argument" if value else "no argument"
            self._warn(
                _CONVERTED,
                f"{key}: a string instead of a list, passed as {what}; "
                f'write it as a list of strings, one per argument, such as ["-v", "db1"]',
            )
        elif isinstance(value, list):
            items = value
        else:
            self.problems.append(
                f'{key}: must be a list of strings such as ["-v", "db1"], got {_describe(value)}'
            )
            return ()
        problems_before = len(self.problems)
        for i, item in enumerate(items):
            # Params may hold credentials: describe the type, never echo a value.
            if not isinstance(item, str):
                kind = _KIND_NAMES.get(type(item), "null")
                self.problems.append(f"{key}[{i}]: must be a string (quote it), got {kind}")
            elif not _is_unicode(item):
                self.problems.append(f"{key}[{i}]: must be valid Unicode text")
            elif "\0" in item:
                self.problems.append(f"{key}[{i}]: must not contain a NUL character")
            elif len(item.encode("utf-8")) > _ARG_MAX:
                self.problems.append(f"{key}[{i}]: longer than {_ARG_MAX} bytes (MAX_ARG_STRLEN)")
        if len(self.problems) != problems_before:
            return ()
        return tuple(items)

    def number(self, key: str, span: str) -> int | None:
        """The key's integer, a numeric string's number (with a warning), else None.

        None with a problem recorded when the value is no evident integer;
        None without one when the key is absent.
        """
        if key not in self.obj:
            return None
        value = self.obj[key]
        # bool is an int subclass; JSON true is not a number.
        if type(value) is int:
            return value
        if isinstance(value, str):
            match = _NUMERIC_STRING.fullmatch(value)
            if match is not None:
                number = int(match.group(1))
                self._warn(
                    _CONVERTED,
                    f"{key}: {_quote(value)} is a string, used as the number {number}; "
                    f"write it without quotes: {number}",
                )
                return number
        self.problems.append(f"{key}: must be an integer {span}, got {_describe(value)}")
        return None

    def timeout(self, key: str, *, default: int) -> int:
        value = self.number(key, f"from 1 to {MAX_TIMEOUT_SECONDS}")
        if value is None:
            return default
        if value < 1:
            # The reference times such a script out at once and leaves it
            # running: nothing sensible to run, so refused.
            self.problems.append(
                f"{key}: must be an integer from 1 to {MAX_TIMEOUT_SECONDS}, got {_describe(value)}"
            )
            return default
        if value > MAX_TIMEOUT_SECONDS:
            self._warn(
                _ADJUSTED,
                f"{key}: {_describe(value)} lowered to {MAX_TIMEOUT_SECONDS}, the maximum "
                f"(as the reference does); set it to at most {MAX_TIMEOUT_SECONDS}",
            )
            return MAX_TIMEOUT_SECONDS
        return value

    def poll(self, key: str, *, low: int, high: int, default: int) -> int:
        value = self.number(key, f"from {low} to {high}")
        if value is None:
            return default
        if not low <= value <= high:
            self._warn(
                _ADJUSTED,
                f"{key}: {_describe(value)} is outside {low}..{high}, {default} used "
                f"(as the reference does); set it from {low} to {high}",
            )
            return default
        return value

    def retries(self, key: str) -> int:
        value = self.number(key, "of at least 0")
        if value is None:
            return 0
        if value < 0:
            self.problems.append(f"{key}: must be an integer of at least 0, got {_describe(value)}")
            return 0
        if value > MAX_RETRIES:
            self._warn(
                _ADJUSTED,
                f"{key}: {_describe(value)} lowered to {MAX_RETRIES}: all attempts share one "
                "timeoutInSeconds budget, so more retries cannot help; "
                f"set it to at most {MAX_RETRIES}",
            )
            return MAX_RETRIES
        return value

    def boolean(self, key: str, *, default: bool) -> bool:
        if key not in self.obj:
            return default
        value = self.obj[key]
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLEAN_STRINGS:
            evident = _BOOLEAN_STRINGS[value.strip().lower()]
            word = "true" if evident else "false"
            # The reference tests the string's truth, so "false" counts as
            # true there; the evident meaning is the word's.
            self._warn(
                _CONVERTED,
                f"{key}: {_quote(value)} is a string, used as {word}; "
                f"write it without quotes: {word}",
            )
            return evident
        self.problems.append(
            f"{key}: must be true or false (without quotes), got {_describe(value)}"
        )
        return default


def _unknown_keys(obj: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Warnings for unknown keys, and known key -> the unknown key resembling it."""
    unknown = [key for key in obj if key not in _KNOWN_KEYS]
    lowered = {known.lower(): known for known in _KNOWN_KEYS}
    warnings: list[str] = []
    hints: dict[str, str] = {}
    for key in unknown[:_MAX_UNKNOWN_REPORTED]:
        # Case-folded: "TimeoutInSeconds" is the commonest typo of all.
        close = difflib.get_close_matches(key.lower(), lowered, n=1, cutoff=0.8)
        if close:
            known = lowered[close[0]]
            hints.setdefault(known, key)
            warnings.append(f"unknown key {_quote(key)} ignored; did you mean {_quote(known)}?")
        else:
            warnings.append(f"unknown key {_quote(key)} ignored")
    if len(unknown) > _MAX_UNKNOWN_REPORTED:
        warnings.append(f"... and {len(unknown) - _MAX_UNKNOWN_REPORTED} more unknown keys ignored")
    return warnings, hints


def parse_plugin_config(data: bytes, *, source: str = "<memory>") -> PluginConfig:
    """Validate the config bytes; raise ConfigError(INCORRECT_JSON_CONFIG) if invalid."""
    obj = _decode(data)
    if not isinstance(obj, dict):
        raise _fail(f"must be a JSON object {{...}} at the top level, got {_describe(obj)}")
    unknown_warnings, hints = _unknown_keys(obj)
    r = _Reader(obj, hints)

    plugin_name = r.text("pluginName", required=True)
    if plugin_name is not None and plugin_name != _PLUGIN_NAME:
        r.problems.append(f'pluginName: must be "{_PLUGIN_NAME}", got {_quote(plugin_name)}')
    pre = ScriptSpec(
        path=r.path("preScriptLocation"),
        params=r.params("preScriptParams"),
        retries=r.retries("preScriptNoOfRetries"),
    )
    post = ScriptSpec(
        path=r.path("postScriptLocation"),
        params=r.params("postScriptParams"),
        retries=r.retries("postScriptNoOfRetries"),
    )
    timeout = r.timeout("timeoutInSeconds", default=_DEFAULT_TIMEOUT)
    continue_on_failure = r.boolean("continueBackupOnFailure", default=True)
    fs_freeze = r.boolean("fsFreezeEnabled", default=True)
    poll = r.poll(
        "ScriptsExecutionPollTimeSeconds",
        low=_POLL_RANGE[0],
        high=_POLL_RANGE[1],
        default=_DEFAULT_POLL,
    )
    app_name = r.text("appName", required=False, nullable=True)

    if r.problems:
        raise _fail("; ".join(r.problems))
    details = (*(ConfigWarning(w) for w in unknown_warnings), *r.warnings)
    return PluginConfig(
        plugin_name=_PLUGIN_NAME,
        pre=pre,
        post=post,
        timeout_seconds=timeout,
        continue_backup_on_failure=continue_on_failure,
        fs_freeze_enabled=fs_freeze,
        poll_seconds=poll,
        app_name=app_name,
        source_path=source,
        warnings=tuple(w.message for w in details),
        warning_details=details,
    )


def load_plugin_config(path: str) -> PluginConfig:
    """Open, check and parse the config at ``path``; raise ConfigError if unusable."""
    return parse_plugin_config(read_config_file(path, max_bytes=MAX_CONFIG_BYTES), source=path)
