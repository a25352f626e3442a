"""The trust checks of a script file: open it once, safely, and check the fd.

``inspect_script`` opens and checks; on success the caller owns the returned
``OpenedScript.fd``, through which the script is later executed (so a file
swapped in after the check can never run). ``check_script`` is the same
preflight without running anything (``validate`` prints it). Neither raises:
every problem is a ``ScriptCheck`` with the phase's ``ErrorCode``.
``parse_shebang`` and ``describe_interpreter`` are pure.

Rules, in order:

* An empty path (the shipped template's ``""``) is ``*_NOT_FOUND``, as the
  reference reports it; any other path must be absolute.
* It is opened once with ``O_RDONLY|O_NOFOLLOW|O_CLOEXEC`` (plus
  ``O_NONBLOCK|O_NOCTTY``): a symlink is refused (permission error), a
  missing file is ``*_NOT_FOUND``. An fd below 3 is moved up, so the child's
  stdio cannot shadow it.
* The open fd is ``fstat``-ed and must pass ``permissions.check_script_mode``
  (regular, root-owned, no group/other bits).
* Every directory traversed to reach the file, up to ``/``, is ``lstat``-ed
  and must pass ``permissions.check_parent_dir_mode`` (a root-owned sticky
  directory such as ``/tmp`` passes: the entries below it, root-owned and
  checked in turn, cannot be replaced by others); a symlinked parent is
  followed, and must itself be root-owned.
* A shebang's interpreter must exist and be executable (for
  ``#!/usr/bin/env CMD``, CMD must be on the script PATH); a missing one is
  reported as ``*_NOT_FOUND``, because the script can never start.
* ``direct_exec``: the kernel can exec the fd itself only when the owner has
  the x bit and the filesystem is not mounted noexec.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
import types
from collections.abc import Mapping
from dataclasses import dataclass

from snapshot_runtime.core import permissions
from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.scripts.environment import SAFE_PATH, Phase

__all__ = [
    "DEFAULT_SHELL",
    "SCRIPT_CODES",
    "OpenedScript",
    "ScriptCheck",
    "ScriptCodes",
    "check_script",
    "describe_interpreter",
    "inspect_script",
    "parse_shebang",
]

DEFAULT_SHELL = "/bin/sh"
_SHEBANG_BYTES = 256  # the kernel's BINPRM_BUF_SIZE


@dataclass(frozen=True)
class ScriptCodes:
    """The error codes of one phase's script."""

    failed: ErrorCode
    not_found: ErrorCode
    permission: ErrorCode
    timeout: ErrorCode


SCRIPT_CODES: Mapping[str, ScriptCodes] = types.MappingProxyType(
    {
        "pre": ScriptCodes(
            ErrorCode.PRE_SCRIPT_FAILED,
            ErrorCode.PRE_SCRIPT_NOT_FOUND,
            ErrorCode.PRE_SCRIPT_PERMISSION,
            ErrorCode.PRE_SCRIPT_TIMEOUT,
        ),
        "post": ScriptCodes(
            ErrorCode.POST_SCRIPT_FAILED,
            ErrorCode.POST_SCRIPT_NOT_FOUND,
            ErrorCode.POST_SCRIPT_PERMISSION,
            ErrorCode.POST_SCRIPT_TIMEOUT,
        ),
    }
)


@dataclass(frozen=True)
class ScriptCheck:
    """Preflight verdict on one script file (no execution)."""

    ok: bool
    error: ErrorCode | None
    message: str  # the reason, without the path (callers prefix it)
    path: str
    interpreter: str = ""  # "shebang:/bin/bash", "/bin/sh"; "" when unknown
    owner_uid: int | None = None
    mode: str | None = None  # permissions.describe_mode()


@dataclass(frozen=True)
class OpenedScript:
    """A checked script, held open: the fd is what gets executed."""

    fd: int
    path: str
    shebang: tuple[str, str | None] | None
    direct_exec: bool


def parse_shebang(head: bytes) -> tuple[str, str | None] | None:
    """(interpreter, optional single argument) as the kernel splits it, or None."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace")
    # Only blanks are separators: a CR stays, as the kernel keeps it (CRLF
    # scripts then name a missing interpreter, which the check reports).
    parts = re.split(r"[ \t]+", line.strip(" \t"), maxsplit=1)
    return (parts[0], parts[1] if len(parts) > 1 else None)


def describe_interpreter(shebang: tuple[str, str | None] | None) -> str:
    """How the script runs, for messages: ``shebang:/bin/bash`` or ``/bin/sh``."""
    if shebang is None:
        return DEFAULT_SHELL
    interpreter, arg = shebang
    return f"shebang:{interpreter}" + (f" {arg}" if arg else "")


def _env_command(arg: str | None) -> str | None:
    """The command ``#!/usr/bin/env [-S] [-opts] [VAR=x] CMD`` would look up."""
    for word in (arg or "").split():
        if not word.startswith("-") and "=" not in word:
            return word
    return None


def _parent_problem(path: str) -> str | None:
    """Why some directory on the way to ``path`` is not root-only, or None."""
    st = os.lstat("/")
    problem = permissions.check_parent_dir_mode("/", st.st_mode, st.st_uid)
    if problem:
        return problem
    pending = [p for p in os.path.dirname(path).split("/") if p]
    resolved = "/"
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, part)
        st = os.lstat(candidate)
        if stat.S_ISLNK(st.st_mode):
            # The link lives in ``resolved`` (checked); only its owner could
            # retarget it in a sticky dir, so it must be root's too.
            if st.st_uid != permissions.ROOT_UID:
                return (
                    f"parent {candidate} is a symlink owned by uid {st.st_uid}, not root; "
                    "fix: configure the real path (or make the link root's)"
                )
            hops += 1
            if hops > 40:
                return f"parent {candidate}: too many levels of symbolic links"
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = "/"
            pending[:0] = [p for p in target.split("/") if p]
            continue
        problem = permissions.check_parent_dir_mode(candidate, st.st_mode, st.st_uid)
        if problem:
            return problem
        resolved = candidate
    return None


def inspect_script(path: str, phase: Phase) -> tuple[ScriptCheck, OpenedScript | None]:
    """Open and check; on success the caller owns ``OpenedScript.fd``."""
    codes = SCRIPT_CODES[phase]

    def fail(
        code: ErrorCode,
        message: str,
        uid: int | None = None,
        mode: str | None = None,
        interpreter: str = "",
    ) -> tuple[ScriptCheck, None]:
        return ScriptCheck(False, code, message, path, interpreter, uid, mode), None

    if not path:
        # The stock template ships "" for both locations; the reference
        # reports that as the script not being found, and so do we.
        return fail(
            codes.not_found,
            f"no {phase}-script configured: {phase}ScriptLocation is empty (as in the "
            f"shipped template); set it to the full path of the {phase}-script",
        )
    if not os.path.isabs(path):
        return fail(codes.permission, "is not an absolute path")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return fail(codes.not_found, "does not exist")
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            target = "?"
            with contextlib.suppress(OSError):
                target = os.readlink(path)
            return fail(
                codes.permission,
                f"is a symbolic link (to {target}); symlinks are refused, configure the real path",
            )
        if exc.errno == errno.ENOTDIR:
            return fail(codes.not_found, "does not exist (a parent is not a directory)")
        return fail(codes.permission, f"cannot be opened: {exc.strerror}")
    try:
        if fd < 3:
            # A daemon started with closed stdio gets fd 0-2 here, and the
            # child's stdio would shadow it: sh would run /dev/null.
            low, fd = fd, fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(low)
        st = os.fstat(fd)
        mode, uid = permissions.describe_mode(st.st_mode), st.st_uid
        problem = permissions.check_script_mode(st.st_mode, st.st_uid)
        if problem is None:
            problem = _parent_problem(path)
        if problem:
            os.close(fd)
            return fail(codes.permission, problem, uid, mode)
        shebang = parse_shebang(os.pread(fd, _SHEBANG_BYTES, 0))
        interpreter = describe_interpreter(shebang)
        missing = _missing_interpreter(shebang)
        if missing:
            os.close(fd)
            return fail(codes.not_found, missing, uid, mode, interpreter)
        untrusted = _untrusted_interpreter(shebang)
        if untrusted:
            os.close(fd)
            return fail(codes.permission, untrusted, uid, mode, interpreter)
        direct_exec = bool(st.st_mode & stat.S_IXUSR) and not (
            os.fstatvfs(fd).f_flag & os.ST_NOEXEC
        )
    except OSError as exc:
        os.close(fd)
        return fail(codes.permission, f"cannot be checked: {exc.strerror or exc}")
    check = ScriptCheck(
        ok=True,
        error=None,
        message=f"owner uid {uid}, mode {mode}, runs with {interpreter}",
        path=path,
        interpreter=interpreter,
        owner_uid=uid,
        mode=mode,
    )
    return check, OpenedScript(fd, path, shebang, direct_exec)


def _missing_interpreter(shebang: tuple[str, str | None] | None) -> str | None:
    if shebang is None:
        return None if os.access(DEFAULT_SHELL, os.X_OK) else f"{DEFAULT_SHELL} is missing"
    interpreter, arg = shebang
    if not interpreter:
        return "has an empty shebang line (#!)"
    if not interpreter.startswith("/"):
        return f"shebang interpreter {interpreter!r} is not an absolute path"
    if not (os.path.isfile(interpreter) and os.access(interpreter, os.X_OK)):
        return f"shebang interpreter {interpreter!r} does not exist or is not executable"
    if os.path.basename(interpreter) == "env":
        command = _env_command(arg)
        if command and shutil.which(command, path=SAFE_PATH) is None:
            return f"{command!r} (from the shebang #!{interpreter} {arg}) is not on {SAFE_PATH}"
    return None


def _untrusted_interpreter(shebang: tuple[str, str | None] | None) -> str | None:
    """Why the program that will really run the script is not root-only, or None.

    The script's own 700/root check is worthless if its shebang names a
    program a user can replace: that program runs as root. Checked: the
    interpreter (after symlinks), and for ``#!/usr/bin/env CMD`` the CMD found
    on the script PATH, each with its parent directories.
    """
    programs = [DEFAULT_SHELL] if shebang is None else [shebang[0]]
    if shebang is not None and os.path.basename(shebang[0]) == "env":
        command = _env_command(shebang[1])
        found = shutil.which(command, path=SAFE_PATH) if command else None
        if found:
            programs.append(found)
    for program in programs:
        real = os.path.realpath(program)
        try:
            st = os.stat(real)
        except OSError as exc:
            return f"interpreter {program} cannot be checked: {exc.strerror}"
        problem = permissions.check_interpreter_mode(st.st_mode, st.st_uid)
        if problem is None:
            problem = _parent_problem(real)
        if problem:
            shown = program if real == program else f"{program} (-> {real})"
            return (
                f"interpreter {shown} is not trusted to run as root: {problem}; fix: make "
                f"{real} root-owned and not writable by others, or name a root-owned "
                "interpreter in the shebang (such as /bin/sh)"
            )
    return None


def check_script(path: str, *, phase: Phase) -> ScriptCheck:
    """Preflight one script file exactly as ``run_script`` would; never raises."""
    check, opened = inspect_script(path, phase)
    if opened is not None:
        os.close(opened.fd)
    return check
