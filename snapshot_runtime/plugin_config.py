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
* ``load_plugin_config(path)`` is the I/O shell: it opens without following
  a symlink and without blocking on a FIFO, ``fstat``s the open fd, refuses a
  non-regular file, a file not owned by root or not mode 600/400
  (``permissions.check_config_mode``) and a file over ``MAX_CONFIG_BYTES``
  (before reading it), then parses at most ``MAX_CONFIG_BYTES + 1`` bytes.
  Every refusal is the same ``ConfigError`` with a fix in the message.
* ``find_config_path(explicit)``: an explicit path wins, else the default
  path, else the legacy name, else None. Paths are keyword parameters so
  tests never touch /etc.

Keys (names and spelling as in the reference template; case-sensitive):

=================================  ==============  ==============================  ==========
key                                JSON type       rule                            default
=================================  ==============  ==============================  ==========
pluginName                         string          exactly "ScriptRunner"          required
preScriptLocation                  string          non-empty absolute path         required
postScriptLocation                 string          non-empty absolute path         required
preScriptParams                    list of string  each item one argv entry        []
postScriptParams                   list of string  each item one argv entry        []
preScriptNoOfRetries               integer         >= 0; above 10 lowered to 10    0
postScriptNoOfRetries              integer         >= 0; above 10 lowered to 10    0
timeoutInSeconds                   integer         1..1800, per script             30
continueBackupOnFailure            boolean                                         true
fsFreezeEnabled                    boolean                                         true
ScriptsExecutionPollTimeSeconds    integer         1..5                            3
appName                            string or null  telemetry label only            null
=================================  ==============  ==============================  ==========

Rules common to every key: integers must be JSON integers (not ``30.0``, not
``"30"``, not ``true``); booleans must be JSON ``true``/``false`` (not
``"true"``); ``null`` stands for "absent" only for ``appName`` (omit any
other key to get its default). Strings must be valid Unicode; paths and
params must not contain NUL (no argv or path can carry one). Duplicate keys
(at any depth), ``NaN``/``Infinity``, a UTF-8 BOM, non-UTF-8 bytes and a
top-level value other than an object are refused. Unknown keys are not an
error, so a newer template still loads, but each one lands in ``warnings``
with a "did you mean" hint when it is close to a known key.

``timeoutInSeconds`` is one budget per script covering all its attempts
(retries included), not per attempt. The template's ``["", ""]`` params are
kept: the script gets two empty arguments, as under the reference.

Where the reference (ScriptRunner.get_config) differs, on purpose:

* ``timeoutInSeconds`` absent: the reference used 10; we use 30, the value
  the template ships and every documented setup starts from. Above 1800 the
  reference silently used min(value, 1800); we refuse it, so the operator
  learns the script will not get the time they asked for.
* ``ScriptsExecutionPollTimeSeconds`` outside 1..5: the reference silently
  used 3; we refuse it.
* ``NoOfRetries``: the reference never checked it (and its retries re-polled
  the exited process instead of re-running the script, so any value was
  harmless). We refuse negatives and lower values above 10 with a warning
  rather than refusing them, so that existing configs keep working.
* ``pluginName``: the reference took it from the host conf when absent; we
  require it, as the template carries it.
* Value types: the reference type-checks nothing (``timeoutInSeconds`` is
  used as found, params are ``str()``-ed); we refuse wrong types.
"""

from __future__ import annotations

import difflib
import errno
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from snapshot_runtime.errors import ConfigError, ErrorCode
from snapshot_runtime.permissions import check_config_mode
from snapshot_runtime.redact import scrub

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "LEGACY_CONFIG_PATH",
    "MAX_CONFIG_BYTES",
    "MAX_RETRIES",
    "MAX_TIMEOUT_SECONDS",
    "PluginConfig",
    "ScriptSpec",
    "find_config_path",
    "load_plugin_config",
    "parse_plugin_config",
]

DEFAULT_CONFIG_PATH = "/etc/azure/VMSnapshotScriptPluginConfig.json"
# Older docs told operators to copy the template under its repository's name.
LEGACY_CONFIG_PATH = "/etc/azure/VMSnapshotPluginConfig.json"
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
class PluginConfig:
    """A validated plugin config; ``warnings`` lists what was accepted but odd."""

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


class _Refused(Exception):
    """Raised inside the JSON decoder hooks; becomes a ConfigError."""


def _fail(problem: str) -> ConfigError:
    # Callers print "PATH: message", so the message does not repeat the path.
    return ConfigError(ErrorCode.INCORRECT_JSON_CONFIG, problem)


def _quote(text: str) -> str:
    # ASCII-only and bounded: messages go to logs and status whatever the input.
    short = text if len(text) <= _SHOW_CHARS else text[:_SHOW_CHARS] + "..."
    return json.dumps(scrub(short))


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
        self.warnings: list[str] = []

    def _missing(self, key: str) -> None:
        hint = self.hints.get(key)
        found = ""
        if hint is not None:
            why = "keys are case-sensitive" if hint.lower() == key.lower() else "a typo?"
            found = f" (found {_quote(hint)}; {why})"
        self.problems.append(f"{key}: required key is missing{found}")

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
        value = self.text(key, required=True)
        if value is None:
            return ""
        if "\0" in value:
            self.problems.append(f"{key}: must not contain a NUL character")
        elif not value:
            self.problems.append(f"{key}: must be the full path of the script, got an empty string")
        elif not value.startswith("/"):
            self.problems.append(
                f"{key}: must be an absolute path (starting with /), got {_quote(value)}"
            )
        elif len(value.encode("utf-8")) > _PATH_MAX:
            self.problems.append(f"{key}: longer than {_PATH_MAX} bytes (PATH_MAX)")
        elif value != value.rstrip():
            # Kept as written: a file name may end in a space, but it rarely does.
            self.warnings.append(f"{key}: path ends with whitespace, which is part of the path")
        return value

    def params(self, key: str) -> tuple[str, ...]:
        if key not in self.obj:
            return ()
        value = self.obj[key]
        if not isinstance(value, list):
            self.problems.append(
                f'{key}: must be a list of strings such as ["-v", "db1"], got {_describe(value)}'
            )
            return ()
        problems_before = len(self.problems)
        for i, item in enumerate(value):
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
        return tuple(value)

    def integer(self, key: str, *, low: int, high: int | None, default: int) -> int:
        if key not in self.obj:
            return default
        value = self.obj[key]
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        # bool is an int subclass; JSON true is not a number.
        if type(value) is not int:
            self.problems.append(f"{key}: must be an integer {span}, got {_describe(value)}")
            return default
        if value < low or (high is not None and value > high):
            self.problems.append(f"{key}: must be an integer {span}, got {_describe(value)}")
            return default
        return value

    def retries(self, key: str) -> int:
        value = self.integer(key, low=0, high=None, default=0)
        if value > MAX_RETRIES:
            self.warnings.append(
                f"{key}: {_describe(value)} lowered to {MAX_RETRIES}: all attempts share one "
                "timeoutInSeconds budget, so more retries cannot help"
            )
            return MAX_RETRIES
        return value

    def boolean(self, key: str, *, default: bool) -> bool:
        if key not in self.obj:
            return default
        value = self.obj[key]
        if not isinstance(value, bool):
            self.problems.append(
                f"{key}: must be true or false (without quotes), got {_describe(value)}"
            )
            return default
        return value


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
    timeout = r.integer(
        "timeoutInSeconds", low=1, high=MAX_TIMEOUT_SECONDS, default=_DEFAULT_TIMEOUT
    )
    continue_on_failure = r.boolean("continueBackupOnFailure", default=True)
    fs_freeze = r.boolean("fsFreezeEnabled", default=True)
    poll = r.integer(
        "ScriptsExecutionPollTimeSeconds",
        low=_POLL_RANGE[0],
        high=_POLL_RANGE[1],
        default=_DEFAULT_POLL,
    )
    app_name = r.text("appName", required=False, nullable=True)

    if r.problems:
        raise _fail("; ".join(r.problems))
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
        warnings=(*unknown_warnings, *r.warnings),
    )


def find_config_path(
    explicit: str | None,
    *,
    default_path: str = DEFAULT_CONFIG_PATH,
    legacy_path: str = LEGACY_CONFIG_PATH,
) -> str | None:
    """The config to load: ``explicit`` if given (even if missing), else default, else legacy.

    An empty ``explicit`` counts as not given (an empty environment variable).
    ``lexists``: a dangling symlink at the default path is reported by the
    loader, rather than silently falling through to the legacy file.
    """
    if explicit:
        return explicit
    for candidate in (default_path, legacy_path):
        if os.path.lexists(candidate):
            return candidate
    return None


_FILE_KINDS = (
    (stat.S_ISDIR, "is a directory"),
    (stat.S_ISFIFO, "is a FIFO (named pipe)"),
    (stat.S_ISSOCK, "is a socket"),
    (stat.S_ISCHR, "is a character device"),
    (stat.S_ISBLK, "is a block device"),
)


def _open_problem(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "not found; copy the template there or pass the config path explicitly"
    if exc.errno == errno.ELOOP:
        return (
            "is a symbolic link, which is refused (its target could be changed by "
            "whoever owns it); replace it with the regular file itself"
        )
    if exc.errno == errno.ENOTDIR:
        return "not found (a parent in the path is not a directory)"
    return f"cannot be opened: {os.strerror(exc.errno) if exc.errno else exc}"


def load_plugin_config(path: str) -> PluginConfig:
    """Open, check and parse the config at ``path``; raise ConfigError if unusable."""
    try:
        # NOFOLLOW refuses a symlinked file; NONBLOCK lets a FIFO open (then
        # refused by fstat) instead of hanging until a writer appears.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _fail(_open_problem(exc)) from None
    except ValueError:  # an embedded NUL in the path
        raise _fail("not found (the path contains a NUL character)") from None
    try:
        st = os.fstat(fd)
        for is_kind, what in _FILE_KINDS:
            if is_kind(st.st_mode):
                raise _fail(f"{what}, must be a regular file")
        problem = check_config_mode(st.st_mode, st.st_uid)
        if problem:
            chown = f"chown root:root {path} && " if st.st_uid != 0 else ""
            raise _fail(f"{problem}; fix: {chown}chmod 600 {path}")
        if st.st_size > MAX_CONFIG_BYTES:
            raise _fail(
                f"is {st.st_size} bytes, over the {MAX_CONFIG_BYTES}-byte limit for a plugin "
                "config (the template is under 1 KiB); check that the right file is in place",
            )
        data = _read_at_most(fd, MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise _fail(f"cannot be read: {os.strerror(exc.errno) if exc.errno else exc}") from None
    finally:
        os.close(fd)
    return parse_plugin_config(data, source=path)


def _read_at_most(fd: int, limit: int) -> bytes:
    # st_size can lie (a file growing, procfs); the cap holds regardless.
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
