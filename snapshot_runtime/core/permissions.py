"""Ownership and mode rules for the plugin config and the scripts.

Pure decisions over (mode, uid) pairs: no I/O. Callers stat (preferably
``fstat`` an fd they already opened) and pass the numbers in.

Rules (reference ScriptRunner, as documented; stricter where noted):

* config (VMSnapshotScriptPluginConfig.json): regular file, owner root, no
  execute bit for the owner, no group or other bits at all (600 or 400).
* scripts: regular file, owner root, no group or other bits (700, 500...).
  Owner bits are not required to include x: scripts without a shebang run
  under /bin/sh as the reference runs them.
* beyond the reference: no symlink (checked by the caller with O_NOFOLLOW),
  and every parent directory owned by root and not writable by group or
  other, unless it is sticky (/tmp): there only an entry's owner may rename
  or remove it, so root's entries below it stay root's.
"""

from __future__ import annotations

import stat

__all__ = [
    "check_config_mode",
    "check_interpreter_mode",
    "check_parent_dir_mode",
    "check_script_mode",
    "describe_mode",
]

ROOT_UID = 0


def describe_mode(mode: int) -> str:
    """``0o100644`` -> ``'644 (-rw-r--r--)'``."""
    return f"{stat.S_IMODE(mode):03o} ({stat.filemode(mode)})"


def _owner_problem(uid: int) -> str | None:
    if uid != ROOT_UID:
        return f"owned by uid {uid}, must be owned by root (uid 0)"
    return None


def check_config_mode(mode: int, uid: int) -> str | None:
    """Why the config file may not be trusted, or None if it may."""
    if not stat.S_ISREG(mode):
        return f"is not a regular file (mode {stat.filemode(mode)})"
    problem = _owner_problem(uid)
    if problem:
        return problem
    if mode & 0o077:
        return f"has mode {describe_mode(mode)}: group and other must have no permission (use 600)"
    if mode & stat.S_IXUSR:
        return f"has mode {describe_mode(mode)}: must not be executable (use 600)"
    return None


def check_script_mode(mode: int, uid: int) -> str | None:
    """Why a script may not be run, or None if it may."""
    if not stat.S_ISREG(mode):
        return f"is not a regular file (mode {stat.filemode(mode)})"
    problem = _owner_problem(uid)
    if problem:
        return problem
    if mode & 0o077:
        return f"has mode {describe_mode(mode)}: group and other must have no permission (use 700)"
    if mode & (stat.S_ISUID | stat.S_ISGID):
        return f"has mode {describe_mode(mode)}: setuid/setgid scripts are refused"
    return None


def check_interpreter_mode(mode: int, uid: int) -> str | None:
    """Why a script's interpreter may not be trusted to run as root, or None.

    The interpreter runs with root's rights, so whoever can replace it owns
    the job: it must be root's and writable by no one else (755 is fine).
    """
    if not stat.S_ISREG(mode):
        return f"is not a regular file (mode {stat.filemode(mode)})"
    problem = _owner_problem(uid)
    if problem:
        return problem
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"has mode {describe_mode(mode)}: writable by group or other"
    return None


def check_parent_dir_mode(path: str, mode: int, uid: int) -> str | None:
    """Why a parent directory lets a non-root user replace the file, or None.

    A root-owned sticky directory (``/tmp``, mode 1777) passes even when
    anyone may write to it: the sticky bit lets only an entry's owner (or
    the directory's owner, root) rename or remove it. The caller checks the
    entries below it in turn (root-owned, not group/other-writable), so
    nothing on the path can be swapped. The reference accepts scripts there.
    Without the sticky bit, group/other write access is refused.
    """
    if not stat.S_ISDIR(mode):
        return f"parent {path} is not a directory"
    if uid != ROOT_UID:
        return f"parent directory {path} is owned by uid {uid}, must be owned by root"
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        return (
            f"parent directory {path} has mode {describe_mode(mode)}: "
            "writable by group or other and not sticky, so the file could be replaced; "
            f"fix: chmod go-w {path} (or move the script to a root-only directory "
            "such as /etc/azure)"
        )
    return None
