"""The plugin config file: where it is, and its bytes once the file is trusted.

The I/O shell of ``plugin_config`` (which parses; ``load_plugin_config``
joins the two). ``find_config_path`` picks the file; ``read_config_file``
opens it without following a symlink and without blocking on a FIFO,
``fstat``s the open fd, refuses a non-regular file, a file not owned by root
or not mode 600/400 (``permissions.check_config_mode``) and a file over
``max_bytes`` (before reading it), then reads at most ``max_bytes + 1``
bytes (``st_size`` can lie). Every refusal is
``ConfigError(INCORRECT_JSON_CONFIG)`` with a fix in the message, which
does not repeat the path (callers print "PATH: message").
"""

from __future__ import annotations

import errno
import os
import stat

from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.core.permissions import check_config_mode
from snapshot_runtime.core.untrusted_file import read_at_most

__all__ = ["DEFAULT_CONFIG_PATH", "LEGACY_CONFIG_PATH", "find_config_path", "read_config_file"]

DEFAULT_CONFIG_PATH = "/etc/azure/VMSnapshotScriptPluginConfig.json"
# Older docs told operators to copy the template under its repository's name.
LEGACY_CONFIG_PATH = "/etc/azure/VMSnapshotPluginConfig.json"


def _fail(problem: str) -> ConfigError:
    return ConfigError(ErrorCode.INCORRECT_JSON_CONFIG, problem)


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


def read_config_file(path: str, *, max_bytes: int) -> bytes:
    """Open and check the config at ``path``; at most ``max_bytes + 1`` of its bytes."""
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
        if st.st_size > max_bytes:
            raise _fail(
                f"is {st.st_size} bytes, over the {max_bytes}-byte limit for a plugin "
                "config (the template is under 1 KiB); check that the right file is in place",
            )
        return read_at_most(fd, max_bytes + 1)
    except OSError as exc:
        raise _fail(f"cannot be read: {os.strerror(exc.errno) if exc.errno else exc}") from None
    finally:
        os.close(fd)
