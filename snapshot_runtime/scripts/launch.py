"""Start one attempt of a checked script THROUGH its open fd.

A file swapped in after the check can never run: the checked fd is inherited
by the child (``pass_fds``) and the child executes ``/proc/self/fd/N``.

* With a shebang, the kernel executes ``/proc/self/fd/N`` and reads the
  shebang itself. When the owner has no x bit or the filesystem is mounted
  noexec (``OpenedScript.direct_exec`` is False), the runner starts the named
  interpreter itself, exactly as the kernel would (interpreter, its single
  optional argument, the fd path, params): same result, no x bit needed.
* Without a shebang: ``/bin/sh /proc/self/fd/N params...``, as the
  reference runs every script (``sh <path>``).

So ``$0`` (``sys.argv[0]``...) is ``/proc/self/fd/N``; scripts that need
their own location use ``SNAPSHOT_SCRIPT_PATH``.

Each attempt leads a process group of its own (``setpgid``; a new session,
``setsid``, on Python 3.10, whose ``Popen`` lacks ``process_group``): a
script's ``kill 0`` cannot reach the runtime. stdin is ``/dev/null``, cwd is
``/``, stdout and stderr are the pipes of a ``ScriptPipes``, which ``spawn``
creates and returns and the caller closes whatever happens (on a
``LaunchError`` from ``spawn`` they are closed already). ``spawn`` and
``open_pidfd`` raise ``LaunchError`` (never run a script that cannot be
watched); ``script_argv`` is pure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from snapshot_runtime.scripts.trust import DEFAULT_SHELL, OpenedScript

__all__ = ["LaunchError", "ScriptPipes", "open_pidfd", "script_argv", "spawn"]

# setpgid(0, 0) in the child, not setsid(): a new session also creates a new
# scheduler autogroup (kernel.sched_autogroup_enabled, on by default in many
# distribution kernels), and under CPU contention the child's move into it delays
# the exec the parent waits for by several ms (docs/performance.md, goal 6).
# A process group of its own is what keeps a script's ``kill 0`` away from
# the runtime. Popen has process_group only from Python 3.11; 3.10 keeps
# setsid (vfork stays usable, unlike with preexec_fn=os.setpgrp).
_OWN_GROUP: dict[str, Any] = (
    {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
)


class LaunchError(Exception):
    """The attempt could not be started or watched; the message says why."""


def script_argv(
    fd: int, shebang: tuple[str, str | None] | None, direct_exec: bool, params: Sequence[str]
) -> list[str]:
    """The argv that runs the script held open as ``fd`` (module docstring)."""
    fd_path = f"/proc/self/fd/{fd}"
    if shebang is None:
        return [DEFAULT_SHELL, fd_path, *params]
    if direct_exec:
        return [fd_path, *params]
    interpreter, arg = shebang
    return [interpreter, *([arg] if arg else []), fd_path, *params]


class ScriptPipes:
    """The script's stdout and stderr pipes: the read ends, and the runtime's own
    copies of the write ends until ``release``.

    Holding a write end means the script's exit does not hang the pipes up:
    the runner is woken once, by the pidfd, instead of first by each pipe's
    EOF and then by the pidfd (the kernel closes a process's files before it
    notifies its exit); under CPU contention every extra wake-up waits for a
    scheduler slice. After ``release`` a read reaches EOF as soon as no
    descendant holds the pipe. ``close`` closes whatever is still open and
    may be called again.
    """

    def __init__(self) -> None:
        fds: list[int] = []
        try:
            for _ in range(2):
                fds.extend(os.pipe())  # close-on-exec: only the dup2-ed copies reach the child
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        self.stdout, out_w, self.stderr, err_w = fds
        self.writers = [out_w, err_w]
        self._readers = [self.stdout, self.stderr]

    def release(self) -> None:
        """Close the runtime's write ends: from now on the script's side alone keeps them open."""
        while self.writers:
            os.close(self.writers.pop())

    def close(self) -> None:
        self.release()
        while self._readers:
            os.close(self._readers.pop())


def spawn(
    opened: OpenedScript, params: Sequence[str], env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], ScriptPipes]:
    """Start the script in its own process group, stdout and stderr on new pipes."""
    argv = script_argv(opened.fd, opened.shebang, opened.direct_exec, params)
    try:
        pipes = ScriptPipes()
    except OSError as exc:
        raise LaunchError(f"could not be started: {exc}") from exc
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=pipes.writers[0],
            stderr=pipes.writers[1],
            env=env,
            cwd="/",
            pass_fds=(opened.fd,),
            **_OWN_GROUP,
        )
    except (OSError, ValueError) as exc:
        pipes.close()
        raise LaunchError(f"could not be started: {exc}") from exc
    return proc, pipes


def open_pidfd(proc: subprocess.Popen[bytes]) -> int:
    """A pidfd for the started script; kills it and raises when there is none."""
    try:
        return os.pidfd_open(proc.pid)
    except OSError as exc:  # kernel < 5.3: refuse rather than run unwatched
        proc.kill()
        raise LaunchError(f"could not be watched (pidfd_open: {exc})") from exc
