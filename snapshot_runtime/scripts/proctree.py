"""The process tree of a script attempt: found through /proc, killed through pidfds.

Effects: reads ``/proc``, signals processes, and (``become_subreaper``) makes
the runtime a child subreaper. Everything blocks the calling thread; nothing
starts a thread. ``parse_stat`` and ``descendants`` are pure.

The runtime makes itself a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``,
process-wide, once, kept for the life of the process), so descendants
orphaned by an exiting parent re-parent to it rather than to init. A tree is
collected by walking ``/proc/<pid>/stat`` ppid links from the script, plus
orphans re-parented to the runtime that started after the script and carry
this attempt's contract environment (``marker``): this is how a
double-forked, ``setsid()``-ed daemon is still found; one that also wiped its
environment escapes.

``kill_tree`` is the kill sequence of a timeout or an interruption:

1. SIGSTOP every collected process (through pidfds: no pid-reuse race) and
   re-collect until no new process appears, so nothing forks away meanwhile;
2. SIGTERM, then SIGCONT, to all of them;
3. wait up to ``grace_seconds`` for them to exit (pipes keep draining through
   ``on_pipe``);
4. SIGSTOP/re-collect again (catches processes forked by TERM handlers),
   SIGKILL whatever remains, and wait for it (at most
   ``SIGKILL_WAIT_SECONDS`` more);
5. reap only the processes collected here (never ``waitpid(-1)``: the job
   has other children). The root is left to its ``Popen`` to reap.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import select
import selectors
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "SIGKILL_WAIT_SECONDS",
    "ProcStat",
    "ProcessTree",
    "become_subreaper",
    "descendants",
    "kill_tree",
    "parse_stat",
    "pidfd_exited",
]

SIGKILL_WAIT_SECONDS = 2.0
_STOP_ROUNDS = 50
_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class ProcStat:
    """The two fields of ``/proc/<pid>/stat`` a tree walk needs."""

    ppid: int
    starttime: int


def parse_stat(text: str) -> ProcStat | None:
    """Parse the text of ``/proc/<pid>/stat``; None when it is truncated."""
    # comm may contain spaces and parentheses: fields start after the last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    return ProcStat(ppid=int(fields[1]), starttime=int(fields[19]))


def descendants(table: Mapping[int, ProcStat], roots: Iterable[int]) -> set[int]:
    """``roots`` (those in ``table``) and every process below them."""
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


@functools.cache
def become_subreaper() -> bool:
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


def _read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return parse_stat(f.read())
    except (OSError, ValueError):
        return None


def _scan_proc() -> dict[int, ProcStat]:
    table: dict[int, ProcStat] = {}
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


def pidfd_exited(fd: int) -> bool:
    """Whether the process behind ``fd`` has exited; never blocks."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Member:
    """Selector tag for a pidfd of a process being killed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid


class ProcessTree:
    """The processes of one script attempt, held by pidfd while being killed."""

    def __init__(self, root: int, marker: frozenset[bytes]) -> None:
        self.root = root
        self.marker = marker
        self.self_pid = os.getpid()
        self.fds: dict[int, int] = {}
        self.exited: set[int] = set()

    def _roots(self, table: Mapping[int, ProcStat]) -> set[int]:
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
            new = descendants(table, self._roots(table)) - self.fds.keys()
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
            if pid not in self.exited and pidfd_exited(fd):
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


def kill_tree(
    root: int,
    marker: frozenset[bytes],
    sel: selectors.BaseSelector,
    *,
    grace_seconds: float,
    on_pipe: Callable[[int], None] | None = None,
    on_signal: Callable[[str, int], None],
) -> tuple[int, int]:
    """Run the kill sequence (module docstring) on the tree rooted at ``root``.

    ``on_signal(name, processes)`` is told before SIGTERM and before a
    SIGKILL. Returns (processes collected, processes that needed SIGKILL).
    """
    tree = ProcessTree(root, marker)
    pump = on_pipe or (lambda fd: None)
    try:
        tree.stop_all()
        collected = tree.alive()
        on_signal("SIGTERM", len(collected))
        tree.send(signal.SIGTERM)
        tree.send(signal.SIGCONT)
        tree.wait_gone(sel, grace_seconds, pump)
        tree.stop_all()
        survivors = tree.alive()
        if survivors:
            on_signal("SIGKILL", len(survivors))
            tree.send(signal.SIGKILL)
            tree.wait_gone(sel, SIGKILL_WAIT_SECONDS, pump)
        tree.reap()
        return (len(tree.fds), len(survivors))
    finally:
        tree.close()
