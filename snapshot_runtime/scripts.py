"""Run one pre- or post-script: checked, executed through its fd, bounded, killable.

Contract
--------
``run_script`` blocks the calling thread until the script (with its retries)
has finished or its budget is used up, plus at most ``kill_grace_seconds``,
the SIGKILL wait and a 100 ms drain. It starts no thread. It never raises for
anything the script or its file does: every outcome is a ``ScriptResult``
carrying an ``ErrorCode``. It raises ``ValueError`` only for misuse (unknown
phase, ``budget_seconds <= 0``, negative ``retries``, ``extra_env`` naming a
contract variable). If the caller is interrupted while a script runs
(KeyboardInterrupt, an exception from a signal handler), the script's
process tree is killed as on a timeout before the exception propagates.
``check_script`` is the same preflight without running anything (``validate``
prints it) and never raises. ``build_script_env`` is pure.

Trust checks, before anything runs
----------------------------------
The path must be absolute. It is opened once with
``O_RDONLY|O_NOFOLLOW|O_CLOEXEC``: a symlink is refused (permission error),
a missing file is ``*_NOT_FOUND``. The open fd is ``fstat``-ed and must pass
``permissions.check_script_mode`` (regular, root-owned, no group/other bits).
Every directory traversed to reach the file, up to ``/``, is ``lstat``-ed and
must pass ``permissions.check_parent_dir_mode``; a symlinked parent is
followed, and must itself be root-owned. A shebang's interpreter must exist
and be executable (for ``#!/usr/bin/env CMD``, CMD must be on the script
PATH); a missing one is reported as ``*_NOT_FOUND``, because the script can
never start.

Execution
---------
The script runs THROUGH the checked fd, so a file swapped in after the check
can never run: the fd is inherited by the child (``pass_fds``) and the child
executes ``/proc/self/fd/N``.

* With a shebang (detected by ``pread``-ing the fd), the kernel executes
  ``/proc/self/fd/N`` and reads the shebang itself. When the owner has no x
  bit or the filesystem is mounted noexec, the runner starts the named
  interpreter itself, exactly as the kernel would (interpreter, its single
  optional argument, the fd path, params): same result, no x bit needed.
* Without a shebang: ``/bin/sh /proc/self/fd/N params...``, as the
  reference runs every script (``sh <path>``).

So ``$0`` (``sys.argv[0]``...) is ``/proc/self/fd/N``. Scripts that need
their own location must use ``SNAPSHOT_SCRIPT_PATH``.

Each attempt starts in a new session (``setsid``): a script's ``kill 0``
cannot reach the runtime. stdin is ``/dev/null``, cwd is ``/``.

Environment contract (``build_script_env``)
-------------------------------------------
Nothing of the runtime's own environment is passed (it may hold secrets).
A script sees exactly::

    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    LANG=C.UTF-8
    HOME=/root
    SNAPSHOT_PHASE=pre|post
    SNAPSHOT_TASK_ID=<task id, "" outside a job>
    SNAPSHOT_ATTEMPT=<1-based attempt number>
    SNAPSHOT_SCRIPT_PATH=<the configured path of the script>

plus the caller's ``extra`` (the job adds ``TRACEPARENT`` and
``SNAPSHOT_MOUNTS``; ``validate`` adds ``SNAPSHOT_DRY_RUN=1``). ``extra`` may
override PATH, LANG and HOME but not the four ``SNAPSHOT_`` contract names.

Budget, retries, completion
---------------------------
``budget_seconds`` is ONE budget for all attempts. A failed attempt
(non-zero exit or a signal) is re-run as a new process, up to ``retries``
more times, immediately (no backoff), while budget remains. Completion is
seen as it happens: a selector waits on the child's pidfd and both pipes,
with no polling delay. ``poll_seconds`` (the config's
ScriptsExecutionPollTimeSeconds, kept for compatibility) only sets how often
a ``script.running`` heartbeat event is emitted while a script runs
(``<= 0``: none).

Timeout: the kill sequence
--------------------------
The runtime makes itself a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``,
process-wide, once, kept for the life of the process), so descendants
orphaned by an exiting parent re-parent to it rather than to init. On
expiry the runner collects the tree by walking ``/proc/<pid>/stat`` ppid
links from the script, plus orphans re-parented to the runtime that started
after the script and carry this attempt's contract environment (this is how
a double-forked, ``setsid()``-ed daemon is still found; one that also wiped
its environment escapes). Then:

1. SIGSTOP every collected process (through pidfds: no pid-reuse race) and
   re-collect until no new process appears, so nothing forks away meanwhile;
2. SIGTERM, then SIGCONT, to all of them;
3. wait up to ``kill_grace_seconds`` for them to exit (pipes keep draining);
4. SIGSTOP/re-collect again (catches processes forked by TERM handlers),
   SIGKILL whatever remains, and wait for it (at most 2 s more);
5. reap only the processes collected here (never ``waitpid(-1)``: the job
   has other children).

Output printed before the timeout is kept. Only a timeout (or an
interruption) kills: when the script exits by itself, its background
descendants are left alone (a pre-script may start a lock holder that the
post-script stops). Orphans adopted by the runtime that die later stay
zombies until the runtime exits.

Output bounds
-------------
Both pipes are drained concurrently in the same loop. Per stream, at most
``output_limit_bytes`` of head and ``output_limit_bytes`` of tail are kept;
the rest is only counted (``output_bytes`` is the true total of both
streams, all attempts). When bytes are omitted, the head and tail are cut to
whole lines (when they hold a line break) so that no secret is left
half-visible, and joined with ``…[N bytes omitted]…``. Attempts after the
first are separated by a ``--- attempt N ---`` line. Text is decoded with
``errors="replace"`` and passed through the redactor. When the script exits
while a background descendant still holds a pipe, the runner drains for at
most 100 ms, closes its ends and returns.

Events
------
``on_event(name, data)`` receives ``script.attempt.start``,
``script.attempt.end``, ``script.running``, ``script.timeout`` and
``script.kill`` with small payloads (phase, attempt, pid, counts, seconds;
never params, output or environment). It is called on the runner's thread;
an exception from it is ignored, since a broken observer must not leave a
script running.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import math
import os
import re
import select
import selectors
import shutil
import signal
import stat
import subprocess
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from snapshot_runtime import permissions, redact
from snapshot_runtime.errors import ErrorCode

__all__ = [
    "DEFAULT_SHELL",
    "SAFE_PATH",
    "SCRIPT_PATH_ENV",
    "AttemptResult",
    "Phase",
    "ScriptCheck",
    "ScriptResult",
    "build_script_env",
    "check_script",
    "run_script",
]

Phase = Literal["pre", "post"]

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = "/bin/sh"
SCRIPT_PATH_ENV = "SNAPSHOT_SCRIPT_PATH"
_CONTRACT_KEYS = frozenset(
    {"SNAPSHOT_PHASE", "SNAPSHOT_TASK_ID", "SNAPSHOT_ATTEMPT", SCRIPT_PATH_ENV}
)
_NO_EXTRA: Mapping[str, str] = types.MappingProxyType({})

_SHEBANG_BYTES = 256  # the kernel's BINPRM_BUF_SIZE
_DRAIN_SECONDS = 0.1
_SIGKILL_WAIT_SECONDS = 2.0
_STOP_ROUNDS = 50
_READ_BYTES = 256 * 1024
_PIPE_BYTES = 1024 * 1024
_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class _Codes:
    failed: ErrorCode
    not_found: ErrorCode
    permission: ErrorCode
    timeout: ErrorCode


_CODES: Mapping[str, _Codes] = types.MappingProxyType(
    {
        "pre": _Codes(
            ErrorCode.PRE_SCRIPT_FAILED,
            ErrorCode.PRE_SCRIPT_NOT_FOUND,
            ErrorCode.PRE_SCRIPT_PERMISSION,
            ErrorCode.PRE_SCRIPT_TIMEOUT,
        ),
        "post": _Codes(
            ErrorCode.POST_SCRIPT_FAILED,
            ErrorCode.POST_SCRIPT_NOT_FOUND,
            ErrorCode.POST_SCRIPT_PERMISSION,
            ErrorCode.POST_SCRIPT_TIMEOUT,
        ),
    }
)


# --- records -----------------------------------------------------------------


@dataclass(frozen=True)
class AttemptResult:
    """One real execution of the script."""

    attempt: int
    exit_code: int | None
    signal: int | None
    timed_out: bool
    started_at: float
    duration_seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


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
class ScriptResult:
    """Outcome of ``run_script``; output and messages are already redacted."""

    phase: Phase
    path: str
    attempts: tuple[AttemptResult, ...]
    ok: bool
    timed_out: bool
    error: ErrorCode | None
    error_message: str | None
    duration_seconds: float
    stdout: str
    stderr: str
    output_bytes: int
    interpreter: str

    @property
    def retries(self) -> int:
        return max(0, len(self.attempts) - 1)

    @property
    def exit_codes(self) -> tuple[int | None, ...]:
        return tuple(a.exit_code for a in self.attempts)


# --- pure decisions ------------------------------------------------------------


def build_script_env(
    *,
    phase: Phase,
    task_id: str,
    attempt: int,
    script_path: str,
    extra: Mapping[str, str] = _NO_EXTRA,
) -> dict[str, str]:
    """The complete environment of a script (see the module docstring)."""
    clash = _CONTRACT_KEYS.intersection(extra)
    if clash:
        raise ValueError(f"extra_env may not set contract variables: {sorted(clash)}")
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
    env.update(extra)
    env.update(
        {
            "SNAPSHOT_PHASE": phase,
            "SNAPSHOT_TASK_ID": task_id,
            "SNAPSHOT_ATTEMPT": str(attempt),
            SCRIPT_PATH_ENV: script_path,
        }
    )
    return env


def _parse_shebang(head: bytes) -> tuple[str, str | None] | None:
    """(interpreter, optional single argument) as the kernel splits it, or None."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace")
    # Only blanks are separators: a CR stays, as the kernel keeps it (CRLF
    # scripts then name a missing interpreter, which the check reports).
    parts = re.split(r"[ \t]+", line.strip(" \t"), maxsplit=1)
    return (parts[0], parts[1] if len(parts) > 1 else None)


def _describe_interpreter(shebang: tuple[str, str | None] | None) -> str:
    if shebang is None:
        return DEFAULT_SHELL
    interpreter, arg = shebang
    return f"shebang:{interpreter}" + (f" {arg}" if arg else "")


def _argv(
    fd: int, shebang: tuple[str, str | None] | None, direct_exec: bool, params: Sequence[str]
) -> list[str]:
    fd_path = f"/proc/self/fd/{fd}"
    if shebang is None:
        return [DEFAULT_SHELL, fd_path, *params]
    if direct_exec:
        return [fd_path, *params]
    interpreter, arg = shebang
    return [interpreter, *([arg] if arg else []), fd_path, *params]


def _env_command(arg: str | None) -> str | None:
    """The command ``#!/usr/bin/env [-S] [-opts] [VAR=x] CMD`` would look up."""
    for word in (arg or "").split():
        if not word.startswith("-") and "=" not in word:
            return word
    return None


def _describe_exit(exit_code: int | None, sig: int | None) -> str:
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "unknown"
        return f"killed by signal {sig} ({name})"
    if exit_code is None:
        return "no exit status (the process could not be reaped)"
    return f"exit code {exit_code}"


def _render_excerpt(head: bytes, tail: bytes, omitted: int) -> str:
    """Decode head/tail; when bytes are omitted, cut both to whole lines."""
    if omitted == 0:
        return (head + tail).decode("utf-8", "replace")
    # A secret cut in two by the omission would be unrecognisable to the
    # redactor; dropping the partial lines at the seam removes both halves.
    cut = head.rfind(b"\n") + 1
    if cut:
        omitted += len(head) - cut
        head = head[:cut]
    cut = tail.find(b"\n") + 1
    if cut:
        omitted += cut
        tail = tail[cut:]
    return (
        head.decode("utf-8", "replace")
        + f"…[{omitted} bytes omitted]…"
        + tail.decode("utf-8", "replace")
    )


@dataclass(frozen=True)
class _Stat:
    ppid: int
    starttime: int


def _parse_stat(text: str) -> _Stat | None:
    # comm may contain spaces and parentheses: fields start after the last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    return _Stat(ppid=int(fields[1]), starttime=int(fields[19]))


def _descendants(table: Mapping[int, _Stat], roots: Iterable[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, st in table.items():
        children.setdefault(st.ppid, []).append(pid)
    found: set[int] = set()
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


# --- file checks (effects) ----------------------------------------------------


@dataclass(frozen=True)
class _Opened:
    fd: int
    path: str
    shebang: tuple[str, str | None] | None
    direct_exec: bool


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
                return f"parent {candidate} is a symlink owned by uid {st.st_uid}, not root"
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


def _inspect(path: str, phase: Phase) -> tuple[ScriptCheck, _Opened | None]:
    """Open and check; on success the caller owns ``_Opened.fd``."""
    codes = _CODES[phase]

    def fail(
        code: ErrorCode,
        message: str,
        uid: int | None = None,
        mode: str | None = None,
        interpreter: str = "",
    ) -> tuple[ScriptCheck, None]:
        return ScriptCheck(False, code, message, path, interpreter, uid, mode), None

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
        shebang = _parse_shebang(os.pread(fd, _SHEBANG_BYTES, 0))
        interpreter = _describe_interpreter(shebang)
        missing = _missing_interpreter(shebang)
        if missing:
            os.close(fd)
            return fail(codes.not_found, missing, uid, mode, interpreter)
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
    return check, _Opened(fd, path, shebang, direct_exec)


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


def check_script(path: str, *, phase: Phase) -> ScriptCheck:
    """Preflight one script file exactly as ``run_script`` would; never raises."""
    check, opened = _inspect(path, phase)
    if opened is not None:
        os.close(opened.fd)
    return check


# --- process tree (effects) ----------------------------------------------------


@functools.cache
def _become_subreaper() -> bool:
    """Idempotent; False where prctl is unavailable (orphans then go to init)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.prctl(
            ctypes.c_int(_PR_SET_CHILD_SUBREAPER),
            ctypes.c_ulong(1),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        )
    except (OSError, AttributeError):
        return False
    return int(rc) == 0


def _read_stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return _parse_stat(f.read())
    except (OSError, ValueError):
        return None


def _scan_proc() -> dict[int, _Stat]:
    table: dict[int, _Stat] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _read_stat(int(entry.name))
            if st is not None:
                table[int(entry.name)] = st
    return table


def _environ_has(pid: int, marker: frozenset[bytes]) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker <= set(f.read().split(b"\0"))
    except OSError:
        return False


def _pidfd_exited(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Member:
    """Selector tag for a pidfd of a process being killed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid


class _Tree:
    """The processes of one script attempt, held by pidfd while being killed."""

    def __init__(self, root: int, marker: frozenset[bytes]) -> None:
        self.root = root
        self.marker = marker
        self.self_pid = os.getpid()
        self.fds: dict[int, int] = {}
        self.exited: set[int] = set()

    def _roots(self, table: Mapping[int, _Stat]) -> set[int]:
        roots = {self.root, *self.fds}
        root_st = table.get(self.root)
        start = root_st.starttime if root_st else 0
        for pid, st in table.items():
            # Orphans that re-parented to us (we are a subreaper) since the
            # script started, recognised by the attempt's contract env.
            if (
                st.ppid == self.self_pid
                and pid not in roots
                and st.starttime >= start
                and _environ_has(pid, self.marker)
            ):
                roots.add(pid)
        return roots

    def stop_all(self) -> None:
        """SIGSTOP the tree and re-collect until no new process shows up."""
        for _ in range(_STOP_ROUNDS):
            table = _scan_proc()
            new = _descendants(table, self._roots(table)) - self.fds.keys()
            if not new:
                return
            for pid in sorted(new):
                self._hold(pid, table[pid].starttime)

    def _hold(self, pid: int, starttime: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return
        st = _read_stat(pid)
        if st is None or st.starttime != starttime:  # gone, or the pid was reused
            os.close(fd)
            return
        self.fds[pid] = fd
        _send(fd, signal.SIGSTOP)

    def alive(self) -> list[int]:
        for pid, fd in self.fds.items():
            if pid not in self.exited and _pidfd_exited(fd):
                self.exited.add(pid)
        return sorted(self.fds.keys() - self.exited)

    def send(self, sig: int) -> None:
        for pid in self.alive():
            _send(self.fds[pid], sig)

    def wait_gone(
        self, sel: selectors.BaseSelector, seconds: float, on_pipe: Callable[[int], None]
    ) -> None:
        """Wait for every process to exit, servicing the pipes meanwhile."""
        pending = {self.fds[pid]: pid for pid in self.alive()}
        for fd, pid in pending.items():
            sel.register(fd, selectors.EVENT_READ, _Member(pid))
        end = time.monotonic() + seconds
        try:
            while pending:
                left = end - time.monotonic()
                if left <= 0:
                    break
                for key, _ in sel.select(left):
                    if isinstance(key.data, _Member):
                        self.exited.add(key.data.pid)
                        sel.unregister(key.fd)
                        pending.pop(key.fd, None)
                    else:
                        on_pipe(key.fd)
        finally:
            for fd in pending:
                sel.unregister(fd)

    def reap(self) -> None:
        for pid, fd in self.fds.items():
            if pid != self.root:  # the root is Popen's to reap
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _send(pidfd: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, sig)


# --- the runner -----------------------------------------------------------------


class _Excerpt:
    """Head and tail of one stream, bounded; the middle is only counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.head = bytearray()
        self.tail = bytearray()
        self.seen = 0
        self.last = b"\n"

    def feed(self, data: bytes | memoryview) -> None:
        if not data:
            return
        self.seen += len(data)
        self.last = bytes(data[-1:])
        room = self.limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.limit:
                del self.tail[: len(self.tail) - self.limit]

    def mark(self, text: str) -> None:
        if self.seen:
            self.feed(("" if self.last == b"\n" else "\n").encode() + text.encode())

    def render(self) -> str:
        return _render_excerpt(
            bytes(self.head), bytes(self.tail), self.seen - len(self.head) - len(self.tail)
        )


class _LaunchError(Exception):
    pass


_EXITED = object()  # selector tag of the script's own pidfd


class _Runner:
    """State of one run_script call: budget, buffers, events."""

    def __init__(
        self,
        opened: _Opened,
        params: Sequence[str],
        *,
        phase: Phase,
        task_id: str,
        extra_env: Mapping[str, str],
        deadline: float,
        kill_grace_seconds: float,
        poll_seconds: float,
        on_event: Callable[[str, dict[str, object]], None] | None,
        output_limit_bytes: int,
    ) -> None:
        self.opened = opened
        self.params = [str(p) for p in params]
        self.phase: Phase = phase
        self.task_id = task_id
        self.extra_env = extra_env
        self.deadline = deadline
        self.grace = kill_grace_seconds
        self.poll = poll_seconds
        self.on_event = on_event
        self.stdout = _Excerpt(output_limit_bytes)
        self.stderr = _Excerpt(output_limit_bytes)
        self.output_bytes = 0
        self.buf = bytearray(_READ_BYTES)
        self.streams: dict[int, _Excerpt] = {}
        self.killed = (0, 0)  # (processes collected, processes that needed SIGKILL)

    def emit(self, name: str, data: dict[str, object]) -> None:
        if self.on_event is not None:
            # A broken observer must never leave a script unkilled or unreaped.
            with contextlib.suppress(Exception):
                self.on_event(name, {"phase": self.phase, **data})

    def attempt(self, n: int) -> AttemptResult:
        env = build_script_env(
            phase=self.phase,
            task_id=self.task_id,
            attempt=n,
            script_path=self.opened.path,
            extra=self.extra_env,
        )
        argv = _argv(self.opened.fd, self.opened.shebang, self.opened.direct_exec, self.params)
        if n > 1:
            for excerpt in (self.stdout, self.stderr):
                excerpt.mark(f"--- attempt {n} ---\n")
        started_at, t0 = time.time(), time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd="/",
                pass_fds=(self.opened.fd,),
                start_new_session=True,
                bufsize=0,
            )
        except (OSError, ValueError) as exc:
            raise _LaunchError(f"could not be started: {exc}") from exc
        self.emit("script.attempt.start", {"attempt": n, "pid": proc.pid})
        marker = frozenset(os.fsencode(f"{k}={env[k]}") for k in _CONTRACT_KEYS)
        timed_out = False
        try:
            try:
                pidfd = os.pidfd_open(proc.pid)
            except OSError as exc:  # kernel < 5.3: refuse rather than run unwatched
                proc.kill()
                raise _LaunchError(f"could not be watched (pidfd_open: {exc})") from exc
            try:
                timed_out = self._watch(proc, pidfd, n, t0, marker)
            except BaseException:
                # Interrupted: never leave the script running behind the caller.
                with selectors.DefaultSelector() as spare:
                    self._kill(proc.pid, spare, n, marker)
                raise
            finally:
                os.close(pidfd)
        finally:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            try:
                rc: int | None = proc.wait(timeout=_SIGKILL_WAIT_SECONDS)
            except subprocess.TimeoutExpired:  # stuck in D state even after SIGKILL
                rc = None
        result = AttemptResult(
            attempt=n,
            exit_code=rc if rc is not None and rc >= 0 else None,
            signal=-rc if rc is not None and rc < 0 else None,
            timed_out=timed_out,
            started_at=started_at,
            duration_seconds=time.monotonic() - t0,
        )
        self.emit(
            "script.attempt.end",
            {
                "attempt": n,
                "pid": proc.pid,
                "exit_code": result.exit_code,
                "signal": result.signal,
                "timed_out": timed_out,
                "duration_seconds": round(result.duration_seconds, 6),
            },
        )
        return result

    def _watch(
        self,
        proc: subprocess.Popen[bytes],
        pidfd: int,
        n: int,
        t0: float,
        marker: frozenset[bytes],
    ) -> bool:
        """Pump both pipes until the script exits (True: it timed out and was killed)."""
        assert proc.stdout is not None and proc.stderr is not None
        with selectors.DefaultSelector() as sel:
            sel.register(pidfd, selectors.EVENT_READ, _EXITED)
            self.streams = {}
            for pipe, excerpt in ((proc.stdout, self.stdout), (proc.stderr, self.stderr)):
                fd = pipe.fileno()
                os.set_blocking(fd, False)
                with contextlib.suppress(OSError):  # fewer wake-ups for chatty scripts
                    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
                self.streams[fd] = excerpt
                sel.register(fd, selectors.EVENT_READ, excerpt)

            def on_pipe(fd: int) -> None:
                if not self._read(fd):
                    sel.unregister(fd)
                    del self.streams[fd]

            exited_at: float | None = None
            timed_out = False
            next_beat = t0 + self.poll if self.poll > 0 else math.inf
            while True:
                now = time.monotonic()
                if exited_at is None:
                    if now >= self.deadline and not _pidfd_exited(pidfd):
                        timed_out = True
                        sel.unregister(pidfd)
                        self._kill(proc.pid, sel, n, marker, on_pipe=on_pipe, elapsed=now - t0)
                        exited_at = time.monotonic()
                        continue
                    if now >= next_beat:
                        self.emit(
                            "script.running",
                            {
                                "attempt": n,
                                "pid": proc.pid,
                                "elapsed_seconds": round(now - t0, 3),
                                "output_bytes": self.output_bytes,
                            },
                        )
                        while next_beat <= now:
                            next_beat += self.poll
                    timeout = min(self.deadline, next_beat) - now
                else:
                    # Exited: a background descendant may hold the pipes for
                    # hours (a lock holder); take what is there and go.
                    if not self.streams or now >= exited_at + _DRAIN_SECONDS:
                        break
                    timeout = exited_at + _DRAIN_SECONDS - now
                for key, _ in sel.select(max(timeout, 0.0)):
                    if key.data is _EXITED:
                        exited_at = time.monotonic()
                        sel.unregister(pidfd)
                    else:
                        on_pipe(key.fd)
        return timed_out

    def _read(self, fd: int) -> bool:
        """Read one chunk; False at EOF."""
        try:
            count = os.readv(fd, [self.buf])
        except BlockingIOError:
            return True
        except OSError:
            return False
        if count == 0:
            return False
        self.streams[fd].feed(memoryview(self.buf)[:count])
        self.output_bytes += count
        return True

    def _kill(
        self,
        root: int,
        sel: selectors.BaseSelector,
        n: int,
        marker: frozenset[bytes],
        *,
        on_pipe: Callable[[int], None] | None = None,
        elapsed: float | None = None,
    ) -> None:
        if elapsed is not None:
            self.emit(
                "script.timeout", {"attempt": n, "pid": root, "elapsed_seconds": round(elapsed, 3)}
            )
        tree = _Tree(root, marker)
        pump = on_pipe or (lambda fd: None)
        try:
            tree.stop_all()
            collected = tree.alive()
            self.emit(
                "script.kill", {"attempt": n, "signal": "SIGTERM", "processes": len(collected)}
            )
            tree.send(signal.SIGTERM)
            tree.send(signal.SIGCONT)
            tree.wait_gone(sel, self.grace, pump)
            tree.stop_all()
            survivors = tree.alive()
            if survivors:
                self.emit(
                    "script.kill", {"attempt": n, "signal": "SIGKILL", "processes": len(survivors)}
                )
                tree.send(signal.SIGKILL)
                tree.wait_gone(sel, _SIGKILL_WAIT_SECONDS, pump)
            tree.reap()
            self.killed = (len(tree.fds), len(survivors))
        finally:
            tree.close()


def run_script(
    path: str,
    params: Sequence[str],
    *,
    phase: Phase,
    retries: int,
    budget_seconds: float,
    task_id: str = "",
    extra_env: Mapping[str, str] | None = None,
    redactor: Callable[[str], str] = redact.scrub,
    kill_grace_seconds: float = 2.0,
    poll_seconds: float = 3.0,
    on_event: Callable[[str, dict[str, object]], None] | None = None,
    output_limit_bytes: int = 64 * 1024,
    _after_check: Callable[[], None] | None = None,
) -> ScriptResult:
    """Check, then run the script with retries within one budget (module docstring).

    ``_after_check`` is a test seam, called between the check and the first
    exec (the window in which a swapped file must not run).
    """
    if phase not in _CODES:
        raise ValueError(f"phase must be 'pre' or 'post', not {phase!r}")
    if not budget_seconds > 0:
        raise ValueError(f"budget_seconds must be > 0, not {budget_seconds!r}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, not {retries!r}")
    extra = dict(extra_env or {})
    build_script_env(phase=phase, task_id=task_id, attempt=1, script_path=path, extra=extra)
    codes = _CODES[phase]
    t0 = time.monotonic()
    check, opened = _inspect(path, phase)
    if _after_check is not None:
        _after_check()
    if opened is None:
        return ScriptResult(
            phase=phase,
            path=path,
            attempts=(),
            ok=False,
            timed_out=False,
            error=check.error,
            error_message=redactor(f"{phase}-script {path}: {check.message}"),
            duration_seconds=time.monotonic() - t0,
            stdout="",
            stderr="",
            output_bytes=0,
            interpreter=check.interpreter,
        )
    _become_subreaper()
    runner = _Runner(
        opened,
        params,
        phase=phase,
        task_id=task_id,
        extra_env=extra,
        deadline=t0 + budget_seconds,
        kill_grace_seconds=kill_grace_seconds,
        poll_seconds=poll_seconds,
        on_event=on_event,
        output_limit_bytes=output_limit_bytes,
    )
    attempts: list[AttemptResult] = []
    launch_error: str | None = None
    try:
        for n in range(1, retries + 2):
            if n > 1 and time.monotonic() >= runner.deadline:
                break
            try:
                attempts.append(runner.attempt(n))
            except _LaunchError as exc:
                launch_error = str(exc)
                break
            if attempts[-1].ok or attempts[-1].timed_out:
                break
    finally:
        os.close(opened.fd)
    last = attempts[-1] if attempts else None
    error: ErrorCode | None = None
    message: str | None = None
    if launch_error is not None:
        error, message = codes.failed, f"{phase}-script {path}: {launch_error}"
    elif last is not None and last.timed_out:
        total, hard = runner.killed
        error = codes.timeout
        message = (
            f"{phase}-script {path} timed out: the {budget_seconds:g}s budget ran out during "
            f"attempt {last.attempt}; killed {total} process(es), {hard} needed SIGKILL"
        )
    elif last is not None and not last.ok:
        error = codes.failed
        message = (
            f"{phase}-script {path} failed after {len(attempts)} attempt(s): "
            f"{_describe_exit(last.exit_code, last.signal)}"
        )
        if len(attempts) <= retries:
            message += " (no budget left for another attempt)"
    return ScriptResult(
        phase=phase,
        path=path,
        attempts=tuple(attempts),
        ok=error is None,
        timed_out=bool(last and last.timed_out),
        error=error,
        error_message=redactor(message) if message else None,
        duration_seconds=time.monotonic() - t0,
        stdout=redactor(runner.stdout.render()),
        stderr=redactor(runner.stderr.render()),
        output_bytes=runner.output_bytes,
        interpreter=check.interpreter,
    )
