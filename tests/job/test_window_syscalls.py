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
window is a violation. Both transports of the guest path run: without a
proxy (snapshot/blob_wire.py: no Azure SDK in the process, and no time UUID
made at all) and with one configured (the SDK sends every blob request).
libuuid (behind Python's uuid1(), which the Azure SDK uses for request ids)
is exercised on the SDK transport both ways it works on a real host: a real
uuidd serving its socket (Debian's uuid-runtime), and no daemon (the CLI in a
private mount namespace with an empty /run/uuidd), where libuuid rewrites
/var/lib/libuuid/clock.txt on the root filesystem instead.

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


@pytest.mark.root
@pytest.mark.azurite
@pytest.mark.parametrize(
    ("placement", "uuid_source", "transport"),
    [
        ("spool_on_tmpfs", "uuidd", "sdk"),
        ("log_state_spool_on_frozen_fs", "libuuid_clock_file", "sdk"),
        ("spool_on_tmpfs", "uuidd", "wire"),
        ("log_state_spool_on_frozen_fs", "libuuid_clock_file", "wire"),
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
    transport: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every syscall between the first FIFREEZE and the last FITHAW is allowed.

    Two real sources of time UUIDs: a uuidd serving libuuid's socket (the host's
    or one started here), and no daemon (the CLI runs in a private mount
    namespace where /run/uuidd is empty), where libuuid rewrites its clock file
    /var/lib/libuuid/clock.txt on the root filesystem instead. ``transport``:
    ``wire``, no proxy variable (no SDK); ``sdk``, a proxy variable set (the
    SDK sends; NO_PROXY keeps every local peer direct, as an operator's would).
    """
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    if transport == "sdk":
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
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
        f"\n[I1 syscalls, {placement}, {uuid_source}, {transport}] {len(inside)} syscalls in "
        f"the frozen window ({len({c.pid for c in inside})} threads), {sum(sent.values())} "
        f"snapshot requests, {len(reads)} opens for reading, {len(violations)} violations; "
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

    # Stricter than the kernel needs (a read does not block on a frozen
    # filesystem), as docs/freeze.md promises: the window opens no file at all,
    # so it imports nothing either.
    assert not reads, "\n".join(scrub(c.describe()) for c in reads)

    # The job itself: application consistent, with all its telemetry delivered
    # (after the window: a send to the OTLP receiver or Azurite's own endpoint
    # inside it would have been a violation above).
    assert result.returncode == 0, scrub(result.output[-4000:])
    report = result.json
    assert (report["consistency"], report["snapshotTaken"]) == ("application", True), report
    assert report["statusUpload"] == "ok"
    print(f"[I1 syscalls, {placement}] frozen window {report['freezeSeconds'] * 1000:.1f} ms")
    assert otlp_requests == 1
    assert b"filesystems frozen" in jobkit.blob_bytes(azurite, container, logs_blob)
    assert record is not None and record["spool"]["gated"] is (placement != "spool_on_tmpfs")

    # Not vacuous: every planned mount was frozen and thawed inside this window,
    # and each disk's snapshot request went out inside it, to the snapshot endpoint.
    froze = {path for _, path in syscall_trace.ioctl_targets(calls, "FIFREEZE")}
    thawed = {path for _, path in syscall_trace.ioctl_targets(calls, "FITHAW")}
    assert froze == thawed == set(frozen), (froze, thawed)
    assert sorted(t.rsplit("/", 1)[-1] for t in sent) == [f"disk{i}.vhd" for i in range(DISKS)]

    # What is allowed was exercised: with the spool on a tmpfs, the window's log
    # line went to the spool at once (I2); on a frozen filesystem it was held.
    spool_writes = [c for c in inside if c.name == "write" and f"<{spool}/" in c.args]
    assert bool(spool_writes) is (placement == "spool_on_tmpfs"), len(spool_writes)

    # The trace covers the other processes too: the thaw watchdog was traced, and
    # was alive across the window (its pid made syscalls on both sides of it).
    (watchdog,) = [c.pid for c in calls if c.name == "execve" and "freeze/watchdog.py" in c.args]
    watchdog_lines = [c.start for c in calls if c.pid == watchdog]
    assert min(watchdog_lines) < window.start and max(watchdog_lines) > window.end

    # Not vacuous either: libuuid's source of time UUIDs was the one this case
    # is about (outside the window: the SDK's requests make a uuid1()). Without
    # the SDK, no time UUID is ever made: libuuid is never reached at all.
    uuidd_connects = syscall_trace.unix_connects(calls, syscall_trace.UUIDD_SOCKET)
    clock_file = [c for c in calls if "/var/lib/libuuid/clock.txt" in c.args]
    if transport == "wire":
        assert uuidd_connects == [] and clock_file == []
    elif uuid_source == "uuidd":
        assert any(c.result == "0" for c in uuidd_connects), "libuuid never reached uuidd"
    else:
        assert uuidd_connects and all(c.result.startswith("-1 ENOENT") for c in uuidd_connects)


SIXTEEN = 16
_SNAPSHOT_SENDS = frozenset({"send", "sendto", "sendmsg", "sendmmsg", "write", "writev"})


@pytest.mark.root
@pytest.mark.azurite
def test_sixteen_disks_one_thread_sends_them_all_and_nothing_connects_opens_or_starts(
    azurite: Azurite,
    ws: Workspace,
    frozen_fs: tuple[LoopFs, LoopFs],
    uuidd: None,
    strace: str,
) -> None:
    """16 disks under strace: all 16 snapshot requests leave from ONE thread inside the
    window (blob_wire.send_all: one wave, no worker per disk), and inside the window
    not one connect (of any kind, even to the snapshot endpoint), not one open (of any
    file, in any mode), not one thread or process started."""
    ext4, _ = frozen_fs
    trace_path = ws.root / "strace-16.txt"
    with (
        FaultProxy(azurite.host, azurite.port, max_lifetime=120) as proxy,
        syscall_trace.tmpfs_mount(str(ws.root / "run16")) as tmpfs,
    ):
        disks = jobkit.make_disks(
            azurite, SIXTEEN, endpoints=dict.fromkeys(range(SIXTEEN), proxy.endpoint())
        )
        settings = ws.settings(disks, task_id="window-sixteen_1")
        args = [
            "run",
            "--settings",
            settings,
            "--config",
            ws.config(),
            "--mounts",
            ext4.mountpoint,
            "--log-file",
            str(ws.log_path),
            "--state-dir",
            str(ws.state_dir),
            "--spool",
            os.path.join(tmpfs, "spool"),
            "--freeze-timeout",
            "30",
            "--json",
        ]
        traced = [*STRACE_ARGS, "-s", STRACE_STRING_BYTES, "-o", str(trace_path)]
        result = ws.cli(*traced, "--", jobkit.CLI, *args, program=strace, timeout=120)
        mounts = syscall_trace.read_mounts()

    calls = syscall_trace.parse(trace_path.read_text(errors="replace"))
    window = syscall_trace.frozen_window(calls)
    assert window is not None, "no successful FIFREEZE/FITHAW in the trace"
    peers = {f"127.0.0.1:{proxy.port}"}
    violations = syscall_trace.window_violations(
        calls, window, frozen_mounts=[ext4.mountpoint], allowed_peers=peers, mounts=mounts
    )
    if violations:
        pytest.fail("\n".join(scrub(str(v)) for v in violations), pytrace=False)
    inside = [c for c in calls if window.contains(c)]
    stricter = [
        c
        for c in inside
        if c.name in {"connect", "open", "openat", "openat2", "creat"}
        or c.name in {"clone", "clone3", "fork", "vfork", "execve", "execveat"}
    ]
    assert not stricter, "\n".join(scrub(c.describe()) for c in stricter)

    assert result.returncode == 0, scrub(result.output[-4000:])
    report = result.json
    assert (report["consistency"], report["snapshotTaken"]) == ("application", True), report
    sent = syscall_trace.snapshot_request_sends(calls, window, peers)
    names = sorted(t.rsplit("/", 1)[-1] for t in sent)
    assert names == sorted(f"disk{i}.vhd" for i in range(SIXTEEN))
    assert set(sent.values()) == {1}  # one attempt each, no retry
    senders = {c.pid for c in inside if c.name in _SNAPSHOT_SENDS and "comp=snapshot" in c.args}
    print(
        f"\n[I1 syscalls, {SIXTEEN} disks] {len(inside)} syscalls in the window, "
        f"{sum(sent.values())} snapshot requests from {len(senders)} thread(s), "
        f"frozen window {report['freezeSeconds'] * 1000:.1f} ms under strace"
    )
    assert len(senders) == 1, senders


# -- the classifier on its own: one trace with every kind of syscall it judges --------

_MNT = "/tmp/snaprt-ext4-x/mnt"
_PEER = "127.0.0.1:38043"
_SAMPLE = f"""\
100 16:52:42.600000 write(4</var/lib/t/log/extension.log>, "before the window", 17) = 17
101 16:52:42.688000 ioctl(14<{_MNT}>, FIFREEZE <unfinished ...>
100 16:52:42.688100 write(5<pipe:[77]>, "leave_frozen", 12) = 12
101 16:52:42.688200 <... ioctl resumed>) = 0
100 16:52:42.741746 write(4</run/spool/jobs/t_1/log.jsonl>, "{{\\"message\\": \\"filesystems froze"..., 272) = 272
102 16:52:42.742684 connect(16<UNIX-STREAM:[51977]>, {{sa_family=AF_UNIX, sun_path="/run/uuidd/request"}}, 110) = -1 ENOENT (No such file or directory)
102 16:52:42.742962 write(11</var/lib/libuuid/clock.txt>, "clock: 0d5b tv: 0000001796403162 00742928 adj: 00000000\\n", 56) = 56
102 16:52:42.742995 ftruncate(11</var/lib/libuuid/clock.txt>, 56) = 0
103 16:52:42.748228 sendto(13<TCP:[127.0.0.1:47642->{_PEER}]>, "PUT /devstoreaccount1/c1/disk0.vhd?comp=snapshot&timeout=10&se=2026"..., 553, 0, NULL, 0 <unfinished ...>
104 16:52:42.748300 sendto(12<TCP:[127.0.0.1:47643->{_PEER}]>, "PUT /devstoreaccount1/c1/job.Status.txt?se=2026-12-04T18%3A52%3A41Z"..., 900, 0, NULL, 0) = 900
103 16:52:42.748317 <... sendto resumed>) = 553
105 16:52:42.748400 connect(17<TCP:[51990]>, {{sa_family=AF_INET, sin_port=htons(4318), sin_addr=inet_addr("127.0.0.1")}}, 16) = 0
105 16:52:42.748500 connect(18<TCP:[51991]>, {{sa_family=AF_INET, sin_port=htons(38043), sin_addr=inet_addr("127.0.0.1")}}, 16) = 0
105 16:52:42.748600 sendto(19<TCP:[127.0.0.1:47644->127.0.0.1:4318]>, "POST /v1/traces HTTP/1.1\\r\\n", 27, 0, NULL, 0) = 27
100 16:52:42.749000 openat(AT_FDCWD</>, "/usr/lib/python3.11/json/__init__.py", O_RDONLY|O_CLOEXEC) = 20</usr/lib/python3.11/json/__init__.py>
100 16:52:42.749100 openat(21<{_MNT}>, "state/x.tmp", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0600) = 22<{_MNT}/state/x.tmp>
100 16:52:42.749200 rename("/var/lib/t/state/a.tmp", "/var/lib/t/state/a") = 0
100 16:52:42.749300 vfork( <unfinished ...>
100 16:52:42.749400 <... vfork resumed>) = 4242
4242 16:52:42.749500 execve("/bin/true", ["/bin/true"], 0x7ffe /* 4 vars */) = 0
100 16:52:42.749600 clone3({{flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM, exit_signal=0}}, 88) = 4243
106 16:52:42.749700 write(7</dev/shm/ok>, "x", 1) = 1
106 16:52:42.749800 futex(0x7fd978000ba0, FUTEX_WAKE_PRIVATE, 1) = 1
101 16:52:42.758157 ioctl(14<{_MNT}>, FITHAW <unfinished ...>
106 16:52:42.758200 fsync(8<{_MNT}/late>) = 0
101 16:52:42.758530 <... ioctl resumed>) = 0
100 16:52:42.759000 write(4</var/lib/t/log/extension.log>, "after the window", 16) = 16
"""  # noqa: E501 - real strace lines, kept whole


def test_classifier_flags_each_kind_of_window_violation() -> None:
    """The rules of tests/support/syscall_trace.py, line by line, without root."""
    mounts = [
        syscall_trace.Mount("/", "ext4"),
        syscall_trace.Mount("/dev/shm", "tmpfs"),
        syscall_trace.Mount("/run", "tmpfs"),
        syscall_trace.Mount(_MNT, "ext4"),
    ]
    calls = syscall_trace.parse(_SAMPLE)
    window = syscall_trace.frozen_window(calls)
    assert window is not None
    # From the FIFREEZE's entry (line 1) to the FITHAW's return (line 25), its
    # unfinished/resumed halves joined; the writes before and after are outside.
    assert (window.start, window.end) == (1, 25)
    assert syscall_trace.ioctl_targets(calls, "FITHAW")[0][0].result == "0"
    violations = syscall_trace.window_violations(
        calls, window, frozen_mounts=[_MNT], allowed_peers=[_PEER], mounts=mounts
    )
    freezable = (
        "write to ext4 / (a filesystem a VM's job freezes: this write would block there "
        "until the thaw)"
    )
    frozen = f"write to the frozen filesystem {_MNT}"
    assert [(v.call.start, v.reason) for v in violations] == [
        # libuuid inside the window: uuidd's socket (even a failed connect), then its
        # clock file through a descriptor opened before the freeze.
        (5, "connect (AF_UNIX) to something other than a snapshot endpoint"),
        (6, freezable),
        (7, freezable),
        (9, "a PUT that is not a snapshot request"),  # the status blob, same endpoint
        (11, "connect (AF_INET) to something other than a snapshot endpoint"),
        (13, "send on a TCP socket to 127.0.0.1:4318 (not a snapshot endpoint)"),
        (15, f"open for writing: {frozen}"),  # relative to a dirfd on the frozen mount
        (16, f"rename: {freezable}"),
        (17, "a process started inside the window"),
        (19, "a program executed inside the window"),
        (20, "a thread started inside the window"),
        (24, frozen),  # entered before the FITHAW returned
    ]
    # Allowed (the pipe, the tmpfs spool, the snapshot request and a connect to its
    # endpoint, a read-only open, /dev/shm, a futex) and outside (lines 0 and 26).
    assert [c.start for c in syscall_trace.window_opens_for_read(calls, window)] == [14]
    assert syscall_trace.snapshot_request_sends(calls, window, [_PEER]) == {
        "/devstoreaccount1/c1/disk0.vhd": 1
    }
    assert len(syscall_trace.unix_connects(calls, syscall_trace.UUIDD_SOCKET)) == 1


def test_parser_reads_strace_line_shapes() -> None:
    """Padding, results with parentheses, quoted ") = ", a call its process never finished."""
    trace = (
        "1 10:00:00.000001 close(3</x>)         = -1 EBADF (Bad file descriptor)\n"
        "1 10:00:00.000002 getpid()          = 7\n"
        '1 10:00:00.000003 write(4</a>, "x) = y", 6) = 6\n'
        "strace: Process 2 attached\n"
        "2 10:00:00.000004 read(3</b>,  <unfinished ...>\n"
        "1 10:00:00.000005 --- SIGCHLD {si_signo=SIGCHLD} ---\n"
        "2 10:00:00.000006 +++ killed by SIGKILL +++\n"
    )
    assert [(c.name, c.args, c.result, c.start, c.end) for c in syscall_trace.parse(trace)] == [
        ("close", "3</x>", "-1 EBADF (Bad file descriptor)", 0, 0),
        ("getpid", "", "7", 1, 1),
        ("write", '4</a>, "x) = y", 6', "6", 2, 2),
        ("read", "3</b>, ", "<unfinished>", 4, -1),
    ]
