"""One script run's attempts: launch, pump both pipes until exit, kill at the deadline.

``AttemptRunner.attempt(n)`` runs attempt ``n`` as a new process and blocks
until it has exited, or until the shared ``deadline`` (``time.monotonic``)
passes and its process tree has been killed (``proctree.kill_tree``). It
starts no thread. It raises ``LaunchError`` when the attempt cannot be
started or watched, and re-raises whatever interrupts it (KeyboardInterrupt,
an exception from a signal handler) after killing the tree as on a timeout.

Completion is seen as it happens: a selector waits on the child's pidfd and
both pipes, with no polling delay. The runtime holds the pipes' write ends
until the pidfd reports the exit (``launch.ScriptPipes``), so an exit wakes
the runner once, as ``waitpid`` would, not once per pipe hang-up and again
for the pidfd. ``poll_seconds`` only sets how often a
``script.running`` heartbeat event is emitted (``<= 0``: none). When the
script exits while a background descendant still holds a pipe, the runner
drains for at most ``DRAIN_SECONDS``, closes its ends and returns; only a
timeout (or an interruption) kills, so a successful script's background
descendants are left alone.

Events go to ``on_event(name, data)`` on the runner's thread, ``phase``
added; an exception from it is ignored, since a broken observer must not
leave a script running.
"""

from __future__ import annotations

import contextlib
import math
import os
import selectors
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from snapshot_runtime.scripts.environment import CONTRACT_KEYS, Phase, build_script_env
from snapshot_runtime.scripts.launch import ScriptPipes, open_pidfd, spawn
from snapshot_runtime.scripts.output_capture import OutputCapture
from snapshot_runtime.scripts.proctree import SIGKILL_WAIT_SECONDS, kill_tree, pidfd_exited
from snapshot_runtime.scripts.trust import OpenedScript

__all__ = ["DRAIN_SECONDS", "AttemptResult", "AttemptRunner"]

DRAIN_SECONDS = 0.1

_EXITED = object()  # selector tag of the script's own pidfd


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


class AttemptRunner:
    """State of one run_script call: budget, buffers, events."""

    def __init__(
        self,
        opened: OpenedScript,
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
        self.output = OutputCapture(output_limit_bytes)
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
        if n > 1:
            self.output.mark_attempt(n)
        marker = frozenset(os.fsencode(f"{k}={env[k]}") for k in CONTRACT_KEYS)
        started_at, t0 = time.time(), time.monotonic()
        proc, pipes = spawn(self.opened, self.params, env)
        timed_out = False
        pidfd: int | None = None
        try:
            # Everything from here on is inside the kill guard: an interrupt that
            # lands while the start event is emitted must not orphan the script.
            try:
                self.emit("script.attempt.start", {"attempt": n, "pid": proc.pid})
                pidfd = open_pidfd(proc)
                timed_out = self._watch(proc, pipes, pidfd, n=n, t0=t0, marker=marker)
            except BaseException:
                # Interrupted: never leave the script running behind the caller.
                with selectors.DefaultSelector() as spare:
                    self._kill(proc.pid, spare, n, marker)
                raise
            finally:
                if pidfd is not None:
                    os.close(pidfd)
        finally:
            pipes.close()
            try:
                rc: int | None = proc.wait(timeout=SIGKILL_WAIT_SECONDS)
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
        pipes: ScriptPipes,
        pidfd: int,
        *,
        n: int,
        t0: float,
        marker: frozenset[bytes],
    ) -> bool:
        """Pump both pipes until the script exits (True: it timed out and was killed)."""
        output = self.output
        with selectors.DefaultSelector() as sel:
            sel.register(pidfd, selectors.EVENT_READ, _EXITED)
            for fd, excerpt in output.attach(pipes.stdout, pipes.stderr).items():
                sel.register(fd, selectors.EVENT_READ, excerpt)

            def on_pipe(fd: int) -> None:
                if not output.read(fd):
                    sel.unregister(fd)
                    del output.streams[fd]

            exited_at: float | None = None
            timed_out = False
            next_beat = t0 + self.poll if self.poll > 0 else math.inf
            while True:
                now = time.monotonic()
                if exited_at is None:
                    if now >= self.deadline and not pidfd_exited(pidfd):
                        timed_out = True
                        sel.unregister(pidfd)
                        self._kill(proc.pid, sel, n, marker, on_pipe=on_pipe, elapsed=now - t0)
                        pipes.release()
                        exited_at = time.monotonic()
                        continue
                    if now >= next_beat:
                        self.emit(
                            "script.running",
                            {
                                "attempt": n,
                                "pid": proc.pid,
                                "elapsed_seconds": round(now - t0, 3),
                                "output_bytes": output.output_bytes,
                            },
                        )
                        while next_beat <= now:
                            next_beat += self.poll
                    timeout = min(self.deadline, next_beat) - now
                else:
                    # Exited: a background descendant may hold the pipes for
                    # hours (a lock holder); take what is there and go.
                    if not output.streams or now >= exited_at + DRAIN_SECONDS:
                        break
                    timeout = exited_at + DRAIN_SECONDS - now
                for key, _ in sel.select(max(timeout, 0.0)):
                    if key.data is _EXITED:
                        exited_at = time.monotonic()
                        sel.unregister(pidfd)
                        pipes.release()  # now the pipes can reach EOF
                    else:
                        on_pipe(key.fd)
        return timed_out

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

        def on_signal(name: str, processes: int) -> None:
            self.emit("script.kill", {"attempt": n, "signal": name, "processes": processes})

        self.killed = kill_tree(
            root, marker, sel, grace_seconds=self.grace, on_pipe=on_pipe, on_signal=on_signal
        )
