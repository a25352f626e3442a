"""Reporting a handler command: the status file, the extension log, stdout/stderr.

``Reporter`` writes the reference's status document for one command on one
sequence number (``<statusFolder>/N.status``) and appends JSON lines to the
extension log (``<logFolder>/extension.log``); every text passes its
``Redactor`` (I5). ``Reporter.fail`` turns a ``ConfigError`` into a status
and the exit code to use, as ``Reported``: 0 once a status file says why, 1
when none could be written (then the line goes to stderr). ``print_line`` and
``print_error`` are the only writers of stdout/stderr, scrubbed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from snapshot_runtime import __version__
from snapshot_runtime.core.errors import ConfigError, ErrorCode, Health
from snapshot_runtime.core.redact import Redactor, scrub
from snapshot_runtime.inputs.machine import machine_id, utcnow
from snapshot_runtime.inputs.settings import HandlerSettings
from snapshot_runtime.job.status_document import (
    REFERENCE_NAME,
    TEMP_TERMINAL_CODE,
    StatusValue,
    status_document,
    status_file_document,
    write_status_file,
)

__all__ = ["Reported", "Reporter", "print_error", "print_line"]


class Reported(Exception):
    """A failure already written to a status file; carries the exit code."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


class Reporter:
    """Status file and log lines for one command on one sequence number."""

    def __init__(
        self,
        *,
        command: str,
        status_path: str | None,
        log_path: str | None,
        seq: int | None,
        out: Callable[[str], None],
        err: Callable[[str], None] | None = None,
    ) -> None:
        self.command = command
        self.status_path = status_path
        self.log_path = log_path
        self.seq = seq
        self.out = out
        self.err = err or print_error
        self.redactor = Redactor()
        self.task_id: str | None = None
        self.ticks: int | None = None
        self.vm_type: str | None = None
        # HandlerEnvironment.json's name and version once known (load_context).
        self.name = REFERENCE_NAME
        self.version = __version__

    def learn_public(self, doc: Mapping[str, Any]) -> None:
        """Best-effort task id, start ticks and VM type for status documents."""
        runtime = doc.get("runtimeSettings")
        entry = runtime[0] if isinstance(runtime, list) and runtime else None
        handler = entry.get("handlerSettings") if isinstance(entry, Mapping) else None
        public = handler.get("publicSettings") if isinstance(handler, Mapping) else None
        if not isinstance(public, Mapping):
            return
        task = public.get("taskId")
        if isinstance(task, str) and task.strip() and len(task) <= 256 and task.isprintable():
            self.task_id = task
        ticks = public.get("commandStartTimeUTCTicks")
        if isinstance(ticks, str) and ticks.strip().isdigit() and len(ticks.strip()) <= 19:
            self.ticks = int(ticks.strip())
        elif isinstance(ticks, int) and not isinstance(ticks, bool):
            self.ticks = ticks
        vm_type = public.get("vmType")
        self.vm_type = vm_type if isinstance(vm_type, str) else None

    def learn_settings(self, settings: HandlerSettings) -> None:
        self.redactor.add(settings.secrets)
        self.task_id = settings.task_id
        self.ticks = settings.command_start_ticks
        self.vm_type = settings.vm_type

    def log(self, level: str, message: str) -> None:
        if not self.log_path:
            return
        line = {
            "time": utcnow().isoformat(timespec="microseconds"),
            "level": level,
            "message": self.redactor(message),
            "task_id": self.task_id or "",
            "trace_id": "",
            "span_id": "",
            "phase": "handler",
            "command": self.command,
            "sequence_number": self.seq,
            "pid": os.getpid(),
        }
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            os.makedirs(os.path.dirname(self.log_path), mode=0o755, exist_ok=True)
            fd = os.open(
                self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640
            )
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            self.err(f"warning: log {self.log_path} not written: {exc.strerror}")

    def status(
        self,
        code: ErrorCode | None,
        message: str,
        *,
        status: StatusValue | None = None,
    ) -> bool:
        """Write the status file; ``code`` None is the interim report.

        The interim report is the reference's: "success" with code 4
        (``ExtensionTempTerminalState``), so the agent reports enable as done
        while the daemon works (docs/extension-handler.md).
        """
        if self.status_path is None:
            return False
        number = TEMP_TERMINAL_CODE if code is None else code.code
        value: StatusValue = status or ("success" if code is None else "error")
        text = self.redactor(message if code is None else f"{code.value}: {message}")
        now = utcnow()
        doc = status_document(
            task_id=self.task_id or "unknown",
            status=value,
            code=number,
            message=text,
            consistency=None,
            command_start_ticks=self.ticks,
            snapshots=(),
            telemetry={
                "extensionVersion": __version__,
                "handlerCommand": self.command,
                "extErrorCode": code.value if code else "success",
            },
            health=code.health if code else Health.GREEN,
            unique_machine_id=machine_id(),
            now=now,
            name=self.name,
            extension_version=self.version,
            vm_health_code=0 if code is None else None,  # no extension error yet
            redact=self.redactor,
        )
        try:
            os.makedirs(os.path.dirname(self.status_path), mode=0o755, exist_ok=True)
            write_status_file(
                self.status_path, status_file_document(doc, now=now, vm_type=self.vm_type)
            )
        except OSError as exc:
            self.err(f"{ErrorCode.STATUS_UPLOAD_FAILED.value}: {self.status_path}: {exc.strerror}")
            return False
        self.log("INFO" if code in (None, ErrorCode.ALREADY_PROCESSED) else "ERROR", text)
        return True

    def fail(self, exc: ConfigError, *, status: StatusValue = "error") -> Reported:
        """Report ``exc`` in the status file (or on stderr) and say how to exit."""
        line = self.redactor(str(exc))
        if self.status(exc.code, exc.message, status=status):
            self.err(f"{self.command}: sequence {self.seq}: {line}")
            return Reported(0)
        self.err(line)
        self.log("ERROR", line)
        return Reported(1)


def print_line(line: str) -> None:
    """Information for the agent's log (stdout)."""
    with contextlib.suppress(OSError, ValueError):
        print(scrub(line), flush=True)


def print_error(line: str) -> None:
    """A failure, one line (stderr)."""
    with contextlib.suppress(OSError, ValueError):
        print(scrub(line), file=sys.stderr, flush=True)
