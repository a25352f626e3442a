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

The parts, each with its own contract:

* ``script_check``: the trust checks, before anything runs (absolute path,
  no symlink, root-owned 700-style file, root-only parent directories, an
  interpreter that exists); the file stays open and is what runs.
* ``launch``: exec through the checked fd (``/proc/self/fd/N``), shebang or
  ``/bin/sh``, in a process group of its own, stdin ``/dev/null``, cwd ``/``.
* ``script_env``: the environment contract (a fixed PATH/LANG/HOME and the
  ``SNAPSHOT_*`` variables; nothing of the runtime's own environment).
* ``script_attempt``: one attempt, completion seen as it happens (pidfd),
  heartbeats, events, the kill at the deadline.
* ``proctree``: the process tree (subreaper, ``/proc`` walk) and the kill
  sequence (SIGSTOP, SIGTERM+SIGCONT, grace, SIGKILL, reap).
* ``output_capture``: bounded head/tail of both pipes.

The operator's view of all this is docs/scripts.md.

Budget, retries, completion
---------------------------
``budget_seconds`` is ONE budget for all attempts. A failed attempt
(non-zero exit or a signal) is re-run as a new process, up to ``retries``
more times, immediately (no backoff), while budget remains. ``poll_seconds``
(the config's ScriptsExecutionPollTimeSeconds, kept for compatibility) only
sets how often a ``script.running`` heartbeat event is emitted while a
script runs (``<= 0``: none). Output and messages in the result have passed
``redactor``; output of every attempt is kept, bounded by
``output_limit_bytes`` of head and of tail per stream.

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

import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from snapshot_runtime.core import redact
from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.scripts.attempt import AttemptResult, AttemptRunner
from snapshot_runtime.scripts.environment import Phase, build_script_env
from snapshot_runtime.scripts.launch import LaunchError
from snapshot_runtime.scripts.proctree import become_subreaper
from snapshot_runtime.scripts.trust import (
    SCRIPT_CODES,
    inspect_script,
)

__all__ = [
    "ScriptResult",
    "run_script",
]


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
    if phase not in SCRIPT_CODES:
        raise ValueError(f"phase must be 'pre' or 'post', not {phase!r}")
    if not budget_seconds > 0:
        raise ValueError(f"budget_seconds must be > 0, not {budget_seconds!r}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, not {retries!r}")
    extra = dict(extra_env or {})
    build_script_env(phase=phase, task_id=task_id, attempt=1, script_path=path, extra=extra)
    codes = SCRIPT_CODES[phase]
    t0 = time.monotonic()
    check, opened = inspect_script(path, phase)
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
    become_subreaper()
    runner = AttemptRunner(
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
            except LaunchError as exc:
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
        stdout=redactor(runner.output.stdout.render()),
        stderr=redactor(runner.output.stderr.render()),
        output_bytes=runner.output.output_bytes,
        interpreter=check.interpreter,
    )
