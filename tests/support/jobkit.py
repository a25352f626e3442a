"""Lay out and run whole snapshot jobs on real parts (Azurite, loop filesystems).

A ``Workspace`` is a fresh root-owned directory under
``/var/lib/snapshot-runtime-tests`` (the parent-directory rule refuses
anything under /tmp). It holds the handler settings, the plugin config (600),
the pre/post scripts (700), a ``marks`` directory the scripts write into, and
the job's state dir, log file and watchdog report dir, so nothing lands in
the product's default locations. ``Workspace.run`` runs a job in-process
(``run_job``); ``Workspace.cli`` runs the real console script. Leaving the
``workspace()`` block kills every process it started that is still alive
(by pid, never by name) and removes the directory. Jobs get the workspace's
own state dir, log file, run dir and spool (``--spool`` for the CLI), so
their watchdog reports and spool records never land in /run/snapshot-runtime;
reports found there for a CLI run's pid are removed anyway.

Helpers for what tests look for afterwards: SAS signature values
(``sig_values``), whether a snapshot really exists in Azurite, the status blob's
bytes, JSON-lines logs, and ``Ticker``, a separate process that appends
timestamps to a file so that a frozen filesystem shows up as a gap.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from snapshot_runtime.core.defaults import DEFAULT_RUN_DIR
from snapshot_runtime.core.ticks import TICKS_AT_UNIX_EPOCH, TICKS_PER_SECOND
from snapshot_runtime.job.records import JobOptions, JobReport
from snapshot_runtime.job.run import run_job
from tests.support.azurite import ACCOUNT_KEY, Azurite
from tests.support.processes import stop_process
from tests.support.requirements import require
from tests.support.waiting import wait_until

BASE = "/var/lib/snapshot-runtime-tests"
REPO = Path(__file__).resolve().parents[2]
CLI = str(REPO / ".venv" / "bin" / "snapshot-runtime")
SIDECAR = str(REPO / ".venv" / "bin" / "snapshot-sidecar")
ARM_VM_TYPE = "microsoft.compute/virtualmachines"

# A pre-script that records what it saw, and a post-script that records it ran.
# Both take the marks directory as their first parameter.
PRE_SCRIPT = """\
#!/bin/sh
set -eu
marks="$1"
env > "$marks/pre.env"
tr '\\0' '\\n' < /proc/$$/cmdline > "$marks/pre.cmdline"
date +%s.%N > "$marks/pre.ran"
echo "pre-script phase=$SNAPSHOT_PHASE mounts=${SNAPSHOT_MOUNTS-<unset>}"
"""

POST_SCRIPT = """\
#!/bin/sh
set -eu
marks="$1"
env > "$marks/post.env"
date +%s.%N > "$marks/post.ran"
echo "post-script phase=$SNAPSHOT_PHASE"
"""


def ticks_now() -> int:
    """Now as .NET ticks (100 ns since 0001-01-01 UTC)."""
    return int(time.time() * TICKS_PER_SECOND) + TICKS_AT_UNIX_EPOCH


def encode_object_str(obj: object) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def settings_doc(
    disks: Sequence[str],
    *,
    task_id: str,
    status_url: str | None = None,
    logs_url: str | None = None,
    object_str: str | None = None,
) -> dict[str, Any]:
    """Handler settings in the extension's file shape (plaintext protected settings)."""
    protected: dict[str, Any] = {
        "objectStr": object_str
        if object_str is not None
        else encode_object_str({"blobSASUri": list(disks)})
    }
    if logs_url:
        protected["logsBlobUri"] = logs_url
    if status_url:
        protected["statusBlobUri"] = status_url
    return {
        "runtimeSettings": [
            {
                "handlerSettings": {
                    "publicSettings": {
                        "taskId": task_id,
                        "commandToExecute": "snapshot",
                        "commandStartTimeUTCTicks": str(ticks_now()),
                        "vmType": ARM_VM_TYPE,
                        "locale": "en-us",
                    },
                    "protectedSettings": protected,
                }
            }
        ]
    }


def plugin_config(pre: str, post: str, marks: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "pluginName": "ScriptRunner",
        "preScriptLocation": pre,
        "postScriptLocation": post,
        "preScriptParams": [marks],
        "postScriptParams": [marks],
        "preScriptNoOfRetries": 0,
        "postScriptNoOfRetries": 0,
        "timeoutInSeconds": 10,
        "continueBackupOnFailure": True,
        "fsFreezeEnabled": True,
        "ScriptsExecutionPollTimeSeconds": 1,
    }
    config.update(overrides)
    return config


class Capture(io.StringIO):
    """A console stream for ``JobOptions.console`` whose text survives the job."""

    def close(self) -> None:  # the caller owns this stream; keep it readable
        pass


@dataclass
class CliResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def json(self) -> dict[str, Any]:
        data = json.loads(self.stdout)
        assert isinstance(data, dict)
        return data

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Workspace:
    root: Path
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    cli_pids: list[int] = field(default_factory=list)
    adopted: list[tuple[int, str]] = field(default_factory=list)  # (pid, start time)

    @property
    def marks(self) -> Path:
        return self.root / "marks"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def spool_dir(self) -> Path:
        return self.root / "spool"

    @property
    def log_path(self) -> Path:
        return self.root / "log" / "extension.log"

    def mark(self, name: str) -> Path:
        return self.marks / name

    # -- files ----------------------------------------------------------------

    def write(self, name: str, text: str, mode: int) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chown(path, 0, 0)
        os.chmod(path, mode)
        return str(path)

    def script(self, name: str, body: str, mode: int = 0o700) -> str:
        return self.write(f"scripts/{name}", body, mode)

    def scripts(
        self, *, pre_body: str = PRE_SCRIPT, post_body: str = POST_SCRIPT
    ) -> tuple[str, str]:
        return self.script("pre.sh", pre_body), self.script("post.sh", post_body)

    def config(
        self,
        *,
        pre: str | None = None,
        post: str | None = None,
        mode: int = 0o600,
        name: str = "VMSnapshotScriptPluginConfig.json",
        **overrides: Any,
    ) -> str:
        """A plugin config; the standard scripts unless ``pre``/``post`` are given."""
        if pre is None or post is None:
            std_pre, std_post = self.scripts()
            pre, post = pre or std_pre, post or std_post
        doc = plugin_config(pre, post, str(self.marks), **overrides)
        return self.write(name, json.dumps(doc, indent=2), mode)

    def settings(
        self,
        disks: Sequence[str],
        *,
        task_id: str | None = None,
        status_url: str | None = None,
        logs_url: str | None = None,
        object_str: str | None = None,
        raw: str | None = None,
        name: str = "0.settings",
    ) -> str:
        """Write handler settings (or ``raw`` text as is); returns the path."""
        text = raw
        if text is None:
            doc = settings_doc(
                disks,
                task_id=task_id or f"{uuid.uuid4()}_1",
                status_url=status_url,
                logs_url=logs_url,
                object_str=object_str,
            )
            text = json.dumps(doc)
        return self.write(name, text, 0o600)

    def watchdog_reports(self, runtime_pid: int) -> list[str]:
        """Thaw reports of the watchdog of ``runtime_pid`` (spool, else run dir)."""
        return watchdog_reports(runtime_pid, self.spool_dir / "watchdog", self.run_dir)

    def status_file(self, task_id: str) -> Path:
        return self.state_dir / "status" / f"{task_id}.status"

    # -- running ----------------------------------------------------------------

    def options(self, settings_path: str, **overrides: Any) -> JobOptions:
        kw: dict[str, Any] = {
            "settings_path": settings_path,
            "log_path": str(self.log_path),
            "state_dir": str(self.state_dir),
            "run_dir": str(self.run_dir),
            "spool_dir": str(self.spool_dir),
        }
        kw.update(overrides)
        return JobOptions(**kw)

    def run(self, settings_path: str, **overrides: Any) -> JobReport:
        """One job in this process (``run_job``); never the host's default paths."""
        return run_job(self.options(settings_path, **overrides))

    def run_args(
        self,
        settings_path: str,
        *,
        config: str | None = None,
        mounts: Sequence[str] | None = None,
        as_json: bool = True,
        extra: Sequence[str] = (),
    ) -> list[str]:
        args = [
            "run",
            "--settings",
            settings_path,
            "--log-file",
            str(self.log_path),
            "--state-dir",
            str(self.state_dir),
            "--spool",
            str(self.spool_dir),
            "--run-dir",
            str(self.run_dir),
        ]
        if config is not None:
            args += ["--config", config]
        if mounts is not None:
            args += ["--mounts", ",".join(mounts)]
        if as_json:
            args.append("--json")
        return [*args, *extra]

    def start_cli(self, *args: str, program: str = CLI) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [program, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        self.processes.append(proc)
        self.cli_pids.append(proc.pid)
        return proc

    def cli(self, *args: str, timeout: float = 60.0, program: str = CLI) -> CliResult:
        """Run the real console script to completion."""
        started = time.monotonic()
        proc = self.start_cli(*args, program=program)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            raise AssertionError(
                f"{program} {' '.join(args)} did not finish in {timeout}s:\n{stdout}\n{stderr}"
            ) from None
        return CliResult(
            [program, *args], proc.returncode, stdout, stderr, time.monotonic() - started
        )

    def spawn(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Any helper process; killed (by pid) when the workspace closes."""
        proc = subprocess.Popen(list(argv), **kwargs)
        self.processes.append(proc)
        return proc

    def adopt_pid(self, pid: int) -> None:
        """A process started on our behalf (e.g. a killed runtime's watchdog).

        Remembered with its start time, so that ``close`` never signals a
        different process that reused the pid.
        """
        started = _start_time(pid)
        if started is not None:
            self.adopted.append((pid, started))

    def close(self) -> None:
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                stop_process(proc, sig=signal.SIGKILL, grace=5)
        for pid, started in self.adopted:
            if _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid in self.cli_pids:
            # Belt and braces: reports a CLI run may have left in the default dirs.
            for leftover in watchdog_reports(pid, DEFAULT_RUN_DIR, include_tmp=True):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def workspace() -> Iterator[Workspace]:
    require(os.geteuid() == 0, "needs root: config and scripts must be root-owned")
    os.makedirs(BASE, mode=0o755, exist_ok=True)
    os.chmod(BASE, 0o755)
    run_dir_existed = os.path.isdir(DEFAULT_RUN_DIR)
    ws = Workspace(Path(tempfile.mkdtemp(dir=BASE)))  # 0700, root
    ws.marks.mkdir(mode=0o700)
    try:
        yield ws
    finally:
        ws.close()
        with contextlib.suppress(OSError):
            os.rmdir(BASE)
        if not run_dir_existed:
            with contextlib.suppress(OSError):
                os.rmdir(DEFAULT_RUN_DIR)  # only if a CLI run created it and left it empty


def watchdog_reports(
    runtime_pid: int, *directories: str | Path, include_tmp: bool = False
) -> list[str]:
    """Thaw reports the watchdog of ``runtime_pid`` wrote into ``directories``."""
    found: list[str] = []
    for directory in directories:
        found += glob.glob(os.path.join(directory, f"thaw-watchdog-{runtime_pid}-*.json"))
        if include_tmp:
            found += glob.glob(os.path.join(directory, f".thaw-watchdog-{runtime_pid}-*.tmp"))
    return sorted(found)


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks); None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/*/stat ppid)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


# -- Azurite --------------------------------------------------------------------


def make_disks(
    azurite: Azurite,
    n: int,
    *,
    endpoints: dict[int, str] | None = None,
    container: str | None = None,
) -> list[str]:
    """``n`` page blobs standing in for disks; disk i is reached via ``endpoints[i]``."""
    container = container or azurite.container()
    urls = []
    for i in range(n):
        azurite.create_page_blob(container, f"disk{i}.vhd")
        endpoint = (endpoints or {}).get(i)
        urls.append(azurite.sas_url(container, f"disk{i}.vhd", endpoint=endpoint))
    return urls


def status_blob_url(azurite: Azurite, name: str = "job.Status.txt") -> tuple[str, str, str]:
    """(container, blob, SAS URL) for a status blob."""
    container = azurite.container()
    return container, name, azurite.sas_url(container, name)


def blob_bytes(azurite: Azurite, container: str, blob: str) -> bytes:
    data: bytes = azurite.service().get_blob_client(container, blob).download_blob().readall()
    return data


def _container_blob(blob_url: str) -> tuple[str, str]:
    # Emulator path style: /<account>/<container>/<blob...>
    segments = urlsplit(blob_url).path.split("/")
    return segments[2], "/".join(segments[3:])


def snapshot_exists(azurite: Azurite, blob_url: str, snapshot: str | None) -> bool:
    """True when Azurite lists ``snapshot`` among the snapshots of the blob."""
    if not snapshot:
        return False
    container, blob = _container_blob(blob_url)
    listed = (
        azurite.service()
        .get_container_client(container)
        .list_blobs(name_starts_with=blob, include=["snapshots"])
    )
    return any(b.name == blob and b.snapshot == snapshot for b in listed)


def snapshots_of(azurite: Azurite, blob_url: str) -> list[str]:
    container, blob = _container_blob(blob_url)
    listed = (
        azurite.service()
        .get_container_client(container)
        .list_blobs(name_starts_with=blob, include=["snapshots"])
    )
    return [b.snapshot for b in listed if b.name == blob and b.snapshot]


def strip(url: str) -> str:
    """A blob URL without its SAS query."""
    return url.split("?", 1)[0]


def raw_sig(url: str) -> str:
    """The signature exactly as it appears in the URL."""
    (value,) = [
        v for k, _, v in (p.partition("=") for p in urlsplit(url).query.split("&")) if k == "sig"
    ]
    return value


def sig_values(url: str) -> list[str]:
    """Every form in which a URL's SAS signature could leak: raw, decoded, re-encoded."""
    query = urlsplit(url).query
    values: set[str] = set()
    for key, raw in (p.partition("=")[::2] for p in query.split("&")):
        if key.lower() == "sig" and raw:
            values |= {raw, unquote(raw), quote(unquote(raw), safe="")}
    for key, decoded in parse_qsl(query):  # "+" read as a space, as a form decoder would
        if key.lower() == "sig":
            values |= {decoded, quote(decoded, safe="")}
    return sorted(values)


def secrets_of(urls: Sequence[str]) -> list[str]:
    """The SAS signatures of ``urls`` and the emulator account key."""
    found = {s for url in urls for s in sig_values(url)}
    return sorted(found | {ACCOUNT_KEY})


def protected_values(settings_path: str | Path) -> str:
    """The protected objectStr of a settings file (base64 of the disk list)."""
    doc = json.loads(Path(settings_path).read_text())
    value = doc["runtimeSettings"][0]["handlerSettings"]["protectedSettings"]["objectStr"]
    assert isinstance(value, str)
    return value


def leaks(text: str | bytes, secrets: Sequence[str]) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [s for s in secrets if s in text]


def wrong_signature(url: str) -> str:
    """The same SAS with a well-formed but wrong signature."""
    parts = urlsplit(url)
    pairs = []
    for pair in parts.query.split("&"):
        key, _, _ = pair.partition("=")
        if key.lower() == "sig":
            fake = base64.b64encode(os.urandom(32)).decode()
            pairs.append(f"sig={quote(fake, safe='')}")
        else:
            pairs.append(pair)
    return parts._replace(query="&".join(pairs)).geturl()


# -- status and logs ------------------------------------------------------------


def status_inner(doc: list[dict[str, Any]]) -> dict[str, Any]:
    """``formattedMessage.message`` of a status document, decoded."""
    inner = json.loads(doc[0]["status"]["formattedMessage"]["message"])
    assert isinstance(inner, dict)
    return inner


def read_json_lines(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# -- a writer that shows a freeze --------------------------------------------------

_TICKER = """\
import os, sys, time
path, stop = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
print("ready", flush=True)
while not os.path.exists(stop):
    os.write(fd, f"{time.monotonic():.6f}\\n".encode())
    time.sleep(0.002)
os.close(fd)
"""


class Ticker:
    """A separate process appending CLOCK_MONOTONIC stamps to a file every ~2 ms.

    Each write goes through the page cache, which FIFREEZE blocks
    (sb_start_write), so the frozen window shows up as a gap between stamps.
    """

    def __init__(self, ws: Workspace, directory: str) -> None:
        self.path = os.path.join(directory, f"ticks-{uuid.uuid4().hex[:8]}")
        self.stop_file = str(ws.root / f"stop-{uuid.uuid4().hex[:8]}")
        self.proc = ws.spawn(
            [sys.executable, "-S", "-c", _TICKER, self.path, self.stop_file],
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"
        # Ticking, not just started: a gap can only be measured from a first stamp on.
        wait_until(lambda: len(self.stamps()) >= 2, 30, "the ticker's first stamps")

    def stop(self) -> None:
        Path(self.stop_file).touch()
        self.proc.wait(timeout=30)

    def stamps(self) -> list[float]:
        return [float(x) for x in Path(self.path).read_text().split()]

    def largest_gap(self) -> tuple[float, float]:
        """(gap seconds, monotonic time at which the gap started)."""
        stamps = self.stamps()
        return max(((b - a, a) for a, b in itertools.pairwise(stamps)), default=(0.0, 0.0))
