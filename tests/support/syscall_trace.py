"""Read an ``strace -f -tt -yy`` trace and judge the frozen window from the kernel's view.

An audit hook sees what Python asks for; it does not see a write on a
descriptor opened before the freeze, nor what a C library does on its own
(libuuid talking to uuidd, or rewriting its clock file). strace sees every
syscall of every thread of every traced process, so this module is the
ground truth for I1.

``parse`` turns the trace into ``Syscall`` records (an ``<unfinished ...>``
line and its ``<... resumed>`` line become one record that keeps both
positions). ``frozen_window`` finds the window: from the entry of the first
``FIFREEZE`` ioctl to the completion of the last ``FITHAW``, over all pids.
``window_violations`` classifies every syscall that *enters* inside it.

What a syscall inside the window may do (everything else listed is a violation):

* **write** (write, pwrite*, writev, fsync, fdatasync, syncfs, ftruncate,
  fallocate, sync_file_range, fchmod, fchown, f*xattr, copy_file_range,
  sendfile, splice, tee): only to a pipe, an anonymous inode (eventfd,
  eventpoll...), a socket whose peer is allowed (below), or a file on a
  filesystem type that is never frozen (tmpfs, devtmpfs, proc, sysfs...:
  the tmpfs spool, /dev/null). A file on a frozen mount is a violation; so
  is a file on any other *freezable* filesystem (ext2/3/4, xfs, btrfs): the
  test freezes loop mounts only, but a job on a VM freezes the root
  filesystem too, and there such a write blocks the writer until the thaw.
* **open for writing** (open/openat/openat2/creat with O_WRONLY, O_RDWR,
  O_CREAT, O_TRUNC, O_APPEND or O_TMPFILE) and **path changes** (rename*,
  link*, symlink*, unlink*, mkdir*, rmdir, mknod*, chmod*, chown*, truncate,
  utime*, *setxattr, *removexattr): the same filesystem rule on every path.
  Opens for reading are not violations (reads do not block on a frozen
  filesystem); they are returned separately, for the record.
* **network**: ``connect`` only to an allowed TCP peer (the snapshot
  endpoints); any AF_UNIX or AF_NETLINK connect is a violation, whether or
  not it succeeds (a local daemon socket is I/O the window does not allow).
  send/sendto/sendmsg/sendmmsg/write on a socket only to an allowed peer,
  and an HTTP request line sent there must be a snapshot request
  (``comp=snapshot``): the status blob or a log upload is not.
  ``sync``, ``mount``, ``umount2`` are violations.
* **processes**: no clone/clone3/fork/vfork without CLONE_THREAD (a new
  process), no execve/execveat, and no new thread either (clone with
  CLONE_THREAD): everything the window needs is started before it. Thread
  exits, futexes, polls, reads, clock reads, memory management are fine.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from tests.support.requirements import require

__all__ = [
    "FREEZABLE_FSTYPES",
    "UUIDD_SOCKET",
    "Mount",
    "Syscall",
    "Violation",
    "Window",
    "frozen_window",
    "ioctl_targets",
    "mount_of",
    "parse",
    "read_mounts",
    "snapshot_request_sends",
    "tmpfs_mount",
    "unix_connects",
    "uuidd_daemon",
    "uuidd_listening",
    "window_opens_for_read",
    "window_violations",
]

# As the product's plan (docs/freeze.md), plus ext2 which the kernel also freezes.
FREEZABLE_FSTYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs"})

_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<time>\d\d:\d\d:\d\d\.\d+)\s+(?P<rest>.*)$")
_RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>(?P<tail>.*)$")
_CALL = re.compile(r"^(?P<name>\w+)\((?P<body>.*)$")
_UNFINISHED = " <unfinished ...>"
_RESULT = re.compile(r"\)\s+= ")
# An fd with strace -yy's annotation: 13<TCP:[a:1->b:2]>, 4</path/to/file>, 7<pipe:[123]>.
_SOCKET_FD = re.compile(
    r"(?:^|[\s(,])(?P<fd>\d+)<(?P<proto>[A-Z][A-Za-z0-9-]*):\[(?P<inner>.*?)\]>"
)
_FILE_FD = re.compile(r"(?:^|[\s(,])(?P<fd>\d+|AT_FDCWD)<(?P<ann>[^<>]*)>")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_HTTP_REQUEST = re.compile(r'"(?P<method>GET|PUT|POST|HEAD|DELETE|PATCH|OPTIONS) (?P<target>\S+)')
_INET_ADDR = re.compile(r'sin_port=htons\((?P<port>\d+)\), sin_addr=inet_addr\("(?P<host>[^"]+)"\)')
_INET6_ADDR = re.compile(
    r'sin6_port=htons\((?P<port>\d+)\).*?inet_pton\(AF_INET6, "(?P<host>[^"]+)"'
)
_FAMILY = re.compile(r"sa_family=(?P<family>AF_\w+)")

_FD_WRITES = frozenset(
    {
        "write",
        "writev",
        "pwrite64",
        "pwritev",
        "pwritev2",
        "fsync",
        "fdatasync",
        "syncfs",
        "sync_file_range",
        "ftruncate",
        "fallocate",
        "fchmod",
        "fchown",
        "fsetxattr",
        "fremovexattr",
        "copy_file_range",
        "sendfile",
        "splice",
        "tee",
        "vmsplice",
    }
)
_SENDS = frozenset({"send", "sendto", "sendmsg", "sendmmsg"})
_OPENS = frozenset({"open", "openat", "openat2", "creat"})
_OPEN_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND", "O_TMPFILE")
_PATH_CHANGES = frozenset(
    {
        "rename",
        "renameat",
        "renameat2",
        "link",
        "linkat",
        "symlink",
        "symlinkat",
        "unlink",
        "unlinkat",
        "mkdir",
        "mkdirat",
        "rmdir",
        "mknod",
        "mknodat",
        "chmod",
        "fchmodat",
        "fchmodat2",
        "chown",
        "lchown",
        "fchownat",
        "truncate",
        "utime",
        "utimes",
        "utimensat",
        "futimesat",
        "setxattr",
        "lsetxattr",
        "removexattr",
        "lremovexattr",
    }
)
_GLOBAL_WRITES = frozenset({"sync", "mount", "umount2", "pivot_root", "swapon", "swapoff"})
_NEW_TASKS = frozenset({"clone", "clone3", "fork", "vfork"})
_EXECS = frozenset({"execve", "execveat"})


@dataclass(frozen=True)
class Syscall:
    """One syscall of one thread; ``start``/``end`` are line numbers (0-based) in the trace."""

    pid: int
    time: str
    name: str
    args: str
    result: str
    start: int
    end: int

    def describe(self, width: int = 200) -> str:
        args = self.args if len(self.args) <= width else self.args[:width] + "..."
        return f"[pid {self.pid} {self.time}] {self.name}({args}) = {self.result}"


@dataclass(frozen=True)
class Violation:
    call: Syscall
    reason: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.call.describe()}"


@dataclass(frozen=True)
class Window:
    """From the first FIFREEZE's entry to the last FITHAW's completion (trace lines)."""

    first_freeze: Syscall
    last_thaw: Syscall

    @property
    def start(self) -> int:
        return self.first_freeze.start

    @property
    def end(self) -> int:
        return self.last_thaw.end

    def contains(self, call: Syscall) -> bool:
        # By entry: a call entered before the first FIFREEZE is one the freeze waits for.
        return self.start < call.start < self.end


@dataclass(frozen=True)
class Mount:
    mountpoint: str
    fstype: str


@dataclass
class _Pending:
    time: str
    name: str
    body: str
    start: int


@dataclass
class _Parser:
    calls: list[Syscall] = field(default_factory=list)
    pending: dict[int, _Pending] = field(default_factory=dict)

    def line(self, index: int, text: str) -> None:
        match = _LINE.match(text)
        if match is None:
            return  # "strace: Process N attached" and the like
        pid, time, rest = int(match["pid"]), match["time"], match["rest"]
        if rest.startswith(("---", "+++")):
            return  # signals and exits
        resumed = _RESUMED.match(rest)
        if resumed is not None:
            head = self.pending.pop(pid, None)
            if head is None:
                return  # resumed across the start of the trace
            self._finish(pid, head, head.body + resumed["tail"], index)
            return
        call = _CALL.match(rest)
        if call is None:
            return
        body = call["body"]
        if body.endswith(_UNFINISHED):
            self.pending[pid] = _Pending(time, call["name"], body[: -len(_UNFINISHED)], index)
            return
        self._finish(pid, _Pending(time, call["name"], body, index), body, index)

    def _finish(self, pid: int, head: _Pending, body: str, end: int) -> None:
        # The last ") = " (strace pads short calls: "getpid()          = 7") ends
        # the arguments; a string argument quoting ") = " comes before it.
        results = list(_RESULT.finditer(body))
        if results:
            cut = results[-1]
            args, result = body[: cut.start()], body[cut.end() :]
        else:  # a call cut short by its process's death
            args, result = body.removesuffix(")"), "?"
        self.calls.append(Syscall(pid, head.time, head.name, args, result, head.start, end))

    def finish(self) -> list[Syscall]:
        for pid, head in self.pending.items():  # still blocked when the trace ended
            self.calls.append(
                Syscall(pid, head.time, head.name, head.body, "<unfinished>", head.start, -1)
            )
        return sorted(self.calls, key=lambda c: c.start)


def parse(text: str) -> list[Syscall]:
    """Every syscall in an ``strace -f -tt -yy`` trace, in order of entry."""
    parser = _Parser()
    for index, line in enumerate(text.splitlines()):
        parser.line(index, line)
    return parser.finish()


def ioctl_targets(calls: Iterable[Syscall], request: str) -> list[tuple[Syscall, str]]:
    """Successful ioctls ``request`` (e.g. FIFREEZE) and the path of the fd each hit."""
    found = []
    for call in calls:
        if call.name != "ioctl" or not call.result.startswith("0"):
            continue
        match = _FILE_FD.search(call.args)
        tokens = [t.strip() for t in call.args.split(",")]
        if match is not None and len(tokens) > 1 and tokens[1] == request:
            found.append((call, match["ann"]))
    return found


def frozen_window(calls: Sequence[Syscall]) -> Window | None:
    """The frozen window over all pids, or None when no FIFREEZE/FITHAW succeeded."""
    freezes = [c for c, _ in ioctl_targets(calls, "FIFREEZE")]
    thaws = [c for c, _ in ioctl_targets(calls, "FITHAW")]
    if not freezes or not thaws:
        return None
    return Window(min(freezes, key=lambda c: c.start), max(thaws, key=lambda c: c.end))


# -- filesystems ------------------------------------------------------------------


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def read_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    mounts = []
    with open(mountinfo, encoding="utf-8") as fh:
        for line in fh:
            before, _, after = line.partition(" - ")
            fields = before.split()
            mounts.append(Mount(_unescape_mountinfo(fields[4]), after.split()[0]))
    return mounts


def mount_of(path: str, mounts: Sequence[Mount]) -> Mount | None:
    """The mount an absolute path is on (the longest matching mountpoint, the last mounted)."""
    best: Mount | None = None
    for mount in mounts:
        mp = mount.mountpoint
        under = path == mp or path.startswith(mp.rstrip("/") + "/")
        if under and (best is None or len(mp) >= len(best.mountpoint)):
            best = mount
    return best


# -- classification ---------------------------------------------------------------


@dataclass(frozen=True)
class _Rules:
    frozen: tuple[str, ...]
    mounts: tuple[Mount, ...]
    peers: frozenset[str]

    def path_problem(self, path: str) -> str | None:
        """Why a write to ``path`` may not happen inside the window; None when it may."""
        path = path.removesuffix(" (deleted)")
        if not path.startswith("/"):
            return None  # pipe:[..], anon_inode:[..], socket:[..]: never frozen
        for mp in self.frozen:
            if path == mp or path.startswith(mp.rstrip("/") + "/"):
                return f"write to the frozen filesystem {mp}"
        mount = mount_of(path, self.mounts)
        if mount is not None and mount.fstype in FREEZABLE_FSTYPES:
            return (
                f"write to {mount.fstype} {mount.mountpoint} (a filesystem a VM's job "
                "freezes: this write would block there until the thaw)"
            )
        return None

    def peer_problem(self, proto: str, inner: str) -> str | None:
        """Why a send on a socket ``proto:[inner]`` may not happen; None when it may."""
        if proto in {"TCP", "TCPv6"}:
            _, arrow, peer = inner.partition("->")
            if arrow and peer in self.peers:
                return None
            return f"send on a {proto} socket to {peer or 'no peer'} (not a snapshot endpoint)"
        return f"send on a {proto} socket [{inner}] (not a snapshot endpoint)"


def _resolve(base: str, path: str) -> str:
    if path.startswith("/"):
        return os.path.normpath(path)
    return os.path.normpath(os.path.join(base, path))


def _paths(call: Syscall) -> list[str]:
    """Absolute paths a path-based syscall names, resolved against its dirfd.

    strace -yy shows the directory behind a dirfd (AT_FDCWD</> included); a
    relative path with no dirfd shown is taken relative to "/", the CLI's cwd.
    """
    dirfds = [m["ann"] for m in _FILE_FD.finditer(call.args) if m["ann"].startswith("/")]
    base = dirfds[0] if dirfds else "/"
    return [_resolve(base, p) for p in _QUOTED.findall(call.args) if p]


def _classify(call: Syscall, rules: _Rules) -> str | None:
    name = call.name
    if name in _EXECS:
        return "a program executed inside the window"
    if name in _NEW_TASKS:
        if "CLONE_THREAD" in call.args:
            return "a thread started inside the window"
        return "a process started inside the window"
    if name in _GLOBAL_WRITES:
        return f"{name} inside the window"
    if name == "connect":
        family = _FAMILY.search(call.args)
        address = _INET_ADDR.search(call.args) or _INET6_ADDR.search(call.args)
        if address is not None and f"{address['host']}:{address['port']}" in rules.peers:
            return None
        kind = family["family"] if family else "unknown family"
        return f"connect ({kind}) to something other than a snapshot endpoint"
    if name in _SENDS or name in _FD_WRITES:
        # Every descriptor the call names (sendfile, splice, copy_file_range name two).
        for sock in _SOCKET_FD.finditer(call.args):
            problem = rules.peer_problem(sock["proto"], sock["inner"])
            if problem is not None:
                return problem
        request = _HTTP_REQUEST.search(call.args)
        if request is not None and "comp=snapshot" not in request["target"]:
            return f"a {request['method']} that is not a snapshot request"
        for match in _FILE_FD.finditer(call.args):
            problem = rules.path_problem(match["ann"])
            if problem is not None:
                return problem
        return None
    if name in _OPENS:
        flags = call.args
        if name == "creat" or any(flag in flags for flag in _OPEN_WRITE_FLAGS):
            for path in _paths(call):
                problem = rules.path_problem(path)
                if problem is not None:
                    return f"open for writing: {problem}"
        return None
    if name in _PATH_CHANGES:
        for path in _paths(call):
            problem = rules.path_problem(path)
            if problem is not None:
                return f"{name}: {problem}"
    return None


def window_violations(
    calls: Sequence[Syscall],
    window: Window,
    *,
    frozen_mounts: Sequence[str],
    allowed_peers: Iterable[str],
    mounts: Sequence[Mount] | None = None,
) -> list[Violation]:
    """Every syscall entered inside ``window`` that breaks the rules of the module docstring.

    ``allowed_peers``: "host:port" of the snapshot endpoints, as strace prints them.
    """
    rules = _Rules(
        tuple(os.path.normpath(m) for m in frozen_mounts),
        tuple(mounts if mounts is not None else read_mounts()),
        frozenset(allowed_peers),
    )
    found = []
    for call in calls:
        if window.contains(call):
            reason = _classify(call, rules)
            if reason is not None:
                found.append(Violation(call, reason))
    return found


def unix_connects(calls: Iterable[Syscall], path: str) -> list[Syscall]:
    """Every connect to the AF_UNIX socket ``path``, in or out of the window."""
    return [
        c
        for c in calls
        if c.name == "connect" and "AF_UNIX" in c.args and f'sun_path="{path}"' in c.args
    ]


def window_opens_for_read(calls: Sequence[Syscall], window: Window) -> list[Syscall]:
    """Opens for reading inside the window (not violations): for the record."""
    return [
        c
        for c in calls
        if window.contains(c)
        and c.name in _OPENS
        and c.name != "creat"
        and not any(flag in c.args for flag in _OPEN_WRITE_FLAGS)
    ]


def snapshot_request_sends(
    calls: Sequence[Syscall], window: Window, allowed_peers: Iterable[str]
) -> dict[str, int]:
    """Request targets of snapshot requests sent inside the window to an allowed peer."""
    peers = frozenset(allowed_peers)
    sent: dict[str, int] = {}
    for call in calls:
        if not window.contains(call) or call.name not in (_SENDS | {"write", "writev"}):
            continue
        sock = _SOCKET_FD.search(call.args)
        request = _HTTP_REQUEST.search(call.args)
        if sock is None or request is None or "comp=snapshot" not in request["target"]:
            continue
        if sock["inner"].partition("->")[2] in peers:
            target = request["target"].split("?", 1)[0]
            sent[target] = sent.get(target, 0) + 1
    return sent


# -- the real parts the trace test stands on ----------------------------------------

UUIDD_SOCKET = "/run/uuidd/request"  # libuuid's compiled-in path


def uuidd_listening(path: str = UUIDD_SOCKET) -> bool:
    """True when a uuidd answers on ``path`` (libuuid will then talk to it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except OSError:
            return False
        return True


@contextlib.contextmanager
def uuidd_daemon() -> Iterator[None]:
    """Make sure a real uuidd serves libuuid's socket for the duration.

    Hosts with Debian's uuid-runtime run it (socket-activated by systemd);
    here nothing starts it, so we start one (no fork, no pid file) when none
    answers, and stop it (by pid) and remove what we created afterwards.
    """
    if uuidd_listening():
        yield
        return
    program = shutil.which("uuidd")
    require(
        program is not None, "needs uuidd (Debian's uuid-runtime): scripts/install-system-deps.sh"
    )
    assert program is not None
    directory = os.path.dirname(UUIDD_SOCKET)
    created_dir = not os.path.isdir(directory)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(UUIDD_SOCKET)  # a stale socket nobody answers on (checked above)
    proc = subprocess.Popen(
        [program, "--no-fork", "--no-pid", "--quiet", "--socket", UUIDD_SOCKET],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10.0
        while not uuidd_listening():
            if proc.poll() is not None or time.monotonic() > deadline:
                stderr = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"uuidd did not start listening on {UUIDD_SOCKET}: {stderr}")
            time.sleep(0.02)  # polling the socket with a deadline, not a sync sleep
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(UUIDD_SOCKET)
        if created_dir:
            with contextlib.suppress(OSError):
                os.rmdir(directory)


@contextlib.contextmanager
def tmpfs_mount(path: str, size_mb: int = 16) -> Iterator[str]:
    """A real tmpfs mounted at ``path`` (what /run is in production), unmounted afterwards."""
    require(os.geteuid() == 0, "needs root to mount a tmpfs")
    os.makedirs(path, mode=0o700, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", path],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=30, check=False)
        with contextlib.suppress(OSError):
            os.rmdir(path)
