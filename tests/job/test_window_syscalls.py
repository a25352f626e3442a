"""I1 proven by the kernel: every syscall of a real job's frozen window, under strace.

The real console script runs a whole job (three disks on Azurite, two real
loop filesystems, ext4 and xfs, really frozen) with telemetry on: spool, job
log, spans exported over OTLP to a real receiver, the log mirrored to its
logsBlobUri and the status blob uploaded. ``strace -f -tt -yy`` follows every
thread of the runtime and of every process it starts (the thaw watchdog, the
scripts); ``-yy`` names the file or the socket peer behind each descriptor.
tests/support/syscall_trace.py finds the window (first FIFREEZE entered to
last FITHAW returned, over all pids) and classifies every syscall entered in
it; its docstring is the list of what is allowed, and why.

The disks are reached through a separate endpoint (a FaultProxy that injects
nothing) so that "the snapshot endpoints" is one TCP peer the status blob,
the log blob and the OTLP receiver do not share: any of those inside the
window is a violation. A real uuidd serves libuuid's socket, as on hosts
that run Debian's uuid-runtime, so a library that asks it for a time UUID
inside the window shows up as a connect.

The trace file is on the (unfrozen) workspace, and is removed with it: it
holds request lines, so it is never printed, and violations are scrubbed
before they are shown (I5).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshot_runtime.core.redact import scrub
from tests.support import jobkit, syscall_trace
from tests.support.azurite import Azurite
from tests.support.faultproxy import FaultProxy
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs, loop_filesystem
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.requirements import require

pytestmark = [pytest.mark.root, pytest.mark.azurite]

DISKS = 3
STRACE_ARGS = ("-f", "-tt", "-yy", "-e", "trace=all", "-qq")
# Enough of each buffer to read an HTTP request line up to "comp=snapshot"
# (the SAS signature comes well after it); bounds what the trace holds.
STRACE_STRING_BYTES = "100"


@pytest.fixture(scope="module")
def frozen_fs() -> Iterator[tuple[LoopFs, LoopFs]]:
    with loop_filesystem("ext4") as ext4, loop_filesystem("xfs") as xfs:
        yield ext4, xfs


@pytest.fixture(scope="module")
def uuidd() -> Iterator[None]:
    with syscall_trace.uuidd_daemon():
        yield


@pytest.fixture
def strace() -> str:
    program = shutil.which("strace")
    require(program is not None, "needs strace: scripts/install-system-deps.sh")
    assert program is not None
    return program


# A shell that covers /run/uuidd with an empty tmpfs in a private mount
# namespace, then execs its arguments: libuuid finds no daemon there.
HIDE_UUIDD = 'mount -t tmpfs -o size=64k,mode=0755 tmpfs "$0" && exec "$@"'


@pytest.mark.parametrize(
    ("placement", "uuid_source"),
    [
        ("spool_on_tmpfs", "uuidd"),
        ("log_state_spool_on_frozen_fs", "libuuid_clock_file"),
    ],
)
def test_frozen_window_syscalls(
    azurite: Azurite,
    ws: Workspace,
    frozen_fs: tuple[LoopFs, LoopFs],
    uuidd: None,
    strace: str,
    placement: str,
    uuid_source: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every syscall between the first FIFREEZE and the last FITHAW is allowed.

    Two real sources of time UUIDs: a uuidd serving libuuid's socket (the host's
    or one started here), and no daemon (the CLI runs in a private mount
    namespace where /run/uuidd is empty), where libuuid rewrites its clock file
    /var/lib/libuuid/clock.txt on the root filesystem instead.
    """
    ext4, xfs = frozen_fs
    frozen = [ext4.mountpoint, xfs.mountpoint]
    assert syscall_trace.uuidd_listening()
    if uuid_source == "uuidd":
        prefix: list[str] = []
    else:
        unshare = shutil.which("unshare")
        require(unshare is not None, "needs unshare (util-linux)")
        assert unshare is not None
        hide = os.path.dirname(syscall_trace.UUIDD_SOCKET)
        prefix = [unshare, "--mount", "--propagation", "private", "--", "/bin/sh", "-c"]
        prefix += [HIDE_UUIDD, hide]
    trace_path = ws.root / "strace.txt"  # the workspace: the host's disk, never frozen here
    with (
        FaultProxy(azurite.host, azurite.port, max_lifetime=120) as proxy,
        OtlpReceiver() as receiver,
        syscall_trace.tmpfs_mount(str(ws.root / "run")) as tmpfs,
    ):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        disks = jobkit.make_disks(
            azurite, DISKS, endpoints=dict.fromkeys(range(DISKS), proxy.endpoint())
        )
        container, _, status_url = jobkit.status_blob_url(azurite)
        logs_blob = "job.Logs.txt"
        logs_url = azurite.sas_url(container, logs_blob)
        task_id = f"window-{placement}_1"
        settings = ws.settings(disks, task_id=task_id, status_url=status_url, logs_url=logs_url)
        if placement == "spool_on_tmpfs":
            spool = os.path.join(tmpfs, "spool")
            log_file, state_dir = str(ws.log_path), str(ws.state_dir)
        else:
            spool = os.path.join(ext4.mountpoint, f"spool-{task_id}")
            log_file = os.path.join(ext4.mountpoint, f"log-{task_id}", "extension.log")
            state_dir = os.path.join(ext4.mountpoint, f"state-{task_id}")
        args = [
            "run",
            "--settings",
            settings,
            "--config",
            ws.config(),
            "--mounts",
            ",".join(frozen),
            "--log-file",
            log_file,
            "--state-dir",
            state_dir,
            "--spool",
            spool,
            "--freeze-timeout",
            "30",  # strace slows every syscall; the window is still well under a second
            "--json",
        ]
        traced = [strace, *STRACE_ARGS, "-s", STRACE_STRING_BYTES, "-o", str(trace_path)]
        command = [*prefix, *traced, "--", jobkit.CLI, *args]
        result = ws.cli(*command[1:], program=command[0], timeout=120)
        otlp_requests = len(receiver.requests)
        record_file = Path(spool, "jobs", task_id, "record.json")
        record = json.loads(record_file.read_text()) if record_file.exists() else None
        mounts = syscall_trace.read_mounts()  # while the tmpfs is mounted

    # The verdict first: a violation is the diagnosis even when it also broke the
    # job (a write to a frozen filesystem blocks until the deadline thaws it).
    calls = syscall_trace.parse(trace_path.read_text(errors="replace"))
    window = syscall_trace.frozen_window(calls)
    assert window is not None, "no successful FIFREEZE/FITHAW in the trace"
    peers = {f"127.0.0.1:{proxy.port}"}
    violations = syscall_trace.window_violations(
        calls, window, frozen_mounts=frozen, allowed_peers=peers, mounts=mounts
    )
    sent = syscall_trace.snapshot_request_sends(calls, window, peers)
    inside = [c for c in calls if window.contains(c)]
    reads = syscall_trace.window_opens_for_read(calls, window)
    print(
        f"\n[I1 syscalls, {placement}, {uuid_source}] {len(inside)} syscalls in the frozen "
        f"window ({len({c.pid for c in inside})} threads), {sum(sent.values())} snapshot "
        f"requests, {len(reads)} opens for reading, {len(violations)} violations; "
        f"{len(calls)} syscalls traced, job {result.seconds:.1f} s under strace"
    )
    if violations:
        # pytest.fail, not an assert: the assertion rewriter would print the raw
        # syscalls, and they may carry request lines (I5).
        pytest.fail(
            f"{len(violations)} syscall(s) the frozen window does not allow:\n"
            + "\n".join(scrub(str(v)) for v in violations),
            pytrace=False,
        )

    # The job itself: application consistent, with all its telemetry delivered
    # (after the window: a send to the OTLP receiver or Azurite's own endpoint
    # inside it would have been a violation above).
    assert result.returncode == 0, scrub(result.output[-4000:])
    report = result.json
    assert (report["consistency"], report["snapshotTaken"]) == ("application", True), report
    assert report["statusUpload"] == "ok"
    assert otlp_requests == 1
    assert b"filesystems frozen" in jobkit.blob_bytes(azurite, container, logs_blob)
    assert record is not None and record["spool"]["gated"] is (placement != "spool_on_tmpfs")

    # Not vacuous: every planned mount was frozen and thawed inside this window,
    # and each disk's snapshot request went out inside it, to the snapshot endpoint.
    froze = {path for _, path in syscall_trace.ioctl_targets(calls, "FIFREEZE")}
    thawed = {path for _, path in syscall_trace.ioctl_targets(calls, "FITHAW")}
    assert froze == thawed == set(frozen), (froze, thawed)
    assert sorted(t.rsplit("/", 1)[-1] for t in sent) == [f"disk{i}.vhd" for i in range(DISKS)]

    # Not vacuous either: libuuid's source of time UUIDs was the one this case
    # is about (outside the window: the SDK's preflight request makes a uuid1()).
    uuidd_connects = syscall_trace.unix_connects(calls, syscall_trace.UUIDD_SOCKET)
    if uuid_source == "uuidd":
        assert any(c.result == "0" for c in uuidd_connects), "libuuid never reached uuidd"
    else:
        assert uuidd_connects and all(c.result.startswith("-1 ENOENT") for c in uuidd_connects)
