"""snapshot_runtime.scripts.runner against real files and real processes.

Scripts live under /var/lib/snapshot-runtime-tests/<random>/ (root-owned,
0755/0700), a path whose every directory is root-only; the sticky-directory
rule (/tmp, 1777) has its own tests below. Speed is measured in benchmarks/script_latency.py, never
asserted here: time bounds in these tests only tell one behaviour from another
(killed at the budget vs. left to run 30 s; seen at once vs. after a poll
period) and leave seconds of slack for a loaded machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.core.redact import Redactor
from snapshot_runtime.scripts import launch, output_capture, proctree
from snapshot_runtime.scripts import trust as script_check
from snapshot_runtime.scripts.environment import build_script_env
from snapshot_runtime.scripts.runner import ScriptResult, run_script
from snapshot_runtime.scripts.trust import check_script
from tests.support.processes import pid_alive
from tests.support.requirements import require
from tests.support.waiting import wait_until

BASE = "/var/lib/snapshot-runtime-tests"
REPO = Path(__file__).resolve().parents[2]

PERMISSION = {"pre": ErrorCode.PRE_SCRIPT_PERMISSION, "post": ErrorCode.POST_SCRIPT_PERMISSION}
NOT_FOUND = {"pre": ErrorCode.PRE_SCRIPT_NOT_FOUND, "post": ErrorCode.POST_SCRIPT_NOT_FOUND}


@pytest.fixture
def sdir() -> Iterator[Path]:
    require(os.geteuid() == 0, "needs root: scripts must be root-owned in a root-only directory")
    os.makedirs(BASE, mode=0o755, exist_ok=True)
    os.chmod(BASE, 0o755)
    path = Path(tempfile.mkdtemp(dir=BASE))  # 0700, root
    yield path
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(BASE)


def make(d: Path, name: str, body: str, mode: int = 0o700) -> str:
    path = d / name
    path.write_text(body)
    os.chmod(path, mode)
    return str(path)


def run(path: str, params: list[str] | None = None, **kw: object) -> ScriptResult:
    kw.setdefault("phase", "pre")
    kw.setdefault("retries", 0)
    kw.setdefault("budget_seconds", 10.0)
    return run_script(path, params or [], **kw)


# --- pure parts -------------------------------------------------------------------


def test_build_script_env_is_exactly_the_contract() -> None:
    env = build_script_env(
        phase="post", task_id="t-1", attempt=2, script_path="/etc/azure/post.sh",
        extra={"TRACEPARENT": "00-abc-def-01", "SNAPSHOT_MOUNTS": "/,/data"},
    )  # fmt: skip
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/root",
        "SNAPSHOT_PHASE": "post",
        "SNAPSHOT_TASK_ID": "t-1",
        "SNAPSHOT_ATTEMPT": "2",
        "SNAPSHOT_SCRIPT_PATH": "/etc/azure/post.sh",
        "TRACEPARENT": "00-abc-def-01",
        "SNAPSHOT_MOUNTS": "/,/data",
    }
    with pytest.raises(ValueError, match="SNAPSHOT_ATTEMPT"):
        build_script_env(
            phase="pre", task_id="", attempt=1, script_path="/x", extra={"SNAPSHOT_ATTEMPT": "9"}
        )


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"echo hi\n", None),
        (b"#!/bin/bash\necho", ("/bin/bash", None)),
        (b"#! /usr/bin/env  python3 -u \n", ("/usr/bin/env", "python3 -u")),
        (b"#!/bin/bash\r\n", ("/bin/bash\r", None)),
        (b"#!\n", ("", None)),
    ],
)
def test_parse_shebang(head: bytes, expected: object) -> None:
    assert script_check.parse_shebang(head) == expected


def test_excerpt_cuts_partial_lines_at_the_seam() -> None:
    text = output_capture.render_excerpt(b"one\ntwo sig=ab", b"cd%3D\nlast\n", 10)
    assert text == "one\n…[26 bytes omitted]…last\n"
    assert output_capture.render_excerpt(b"ab", b"cd", 0) == "abcd"


def test_descendants_follow_ppid_links() -> None:
    st = proctree.ProcStat
    table = {10: st(1, 0), 11: st(10, 0), 12: st(11, 0), 13: st(1, 0), 14: st(13, 0)}
    assert proctree.descendants(table, [10, 99]) == {10, 11, 12}


def test_misuse_raises_value_error() -> None:
    for kw in ({"phase": "mid"}, {"budget_seconds": 0}, {"retries": -1}):
        with pytest.raises(ValueError):
            run("/nonexistent", **kw)
    with pytest.raises(ValueError):
        run("/nonexistent", extra_env={"SNAPSHOT_PHASE": "x"})


# --- running ------------------------------------------------------------------------


def test_success_with_params_env_and_stdout(sdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_SECRET_FOR_TEST", "must-not-leak")
    path = make(
        sdir,
        "ok.sh",
        'printf "[%s]" "$@"; echo " n=$#"\n'
        'echo "phase=$SNAPSHOT_PHASE attempt=$SNAPSHOT_ATTEMPT task=$SNAPSHOT_TASK_ID"\n'
        'echo "path=$SNAPSHOT_SCRIPT_PATH trace=$TRACEPARENT cwd=$(pwd)"\n'
        "env | sort >&2\n"
        "read -r line && echo stdin-had-data\n"
        "exit 0\n",
    )
    r = run(path, ["a b", "", ""], task_id="task-7", extra_env={"TRACEPARENT": "00-x-y-01"})
    assert r.ok and r.error is None and r.error_message is None
    assert r.exit_codes == (0,) and r.retries == 0 and not r.timed_out
    lines = r.stdout.splitlines()
    assert lines[0] == "[a b][][] n=3"
    assert lines[1] == "phase=pre attempt=1 task=task-7"
    assert lines[2] == f"path={path} trace=00-x-y-01 cwd=/"
    assert "stdin-had-data" not in r.stdout  # stdin is /dev/null
    env = dict(line.split("=", 1) for line in r.stderr.splitlines())
    env.pop("PWD", None)  # sh exports it
    assert env == build_script_env(
        phase="pre", task_id="task-7", attempt=1, script_path=path,
        extra={"TRACEPARENT": "00-x-y-01"},
    )  # fmt: skip
    assert r.output_bytes == len(r.stdout.encode()) + len(r.stderr.encode())
    assert r.interpreter == "/bin/sh"
    a = r.attempts[0]
    assert a.attempt == 1 and a.signal is None and abs(a.started_at - time.time()) < 10


def test_fail_then_succeed_is_really_rerun(sdir: Path) -> None:
    path = make(
        sdir, "flaky.sh", 'echo "try $SNAPSHOT_ATTEMPT pid $$"\n[ "$SNAPSHOT_ATTEMPT" -ge 2 ]\n'
    )
    events: list[tuple[str, dict[str, object]]] = []
    r = run(path, retries=3, on_event=lambda n, d: events.append((n, d)))
    assert r.ok and len(r.attempts) == 2 and r.retries == 1
    assert r.exit_codes == (1, 0)
    assert "try 1" in r.stdout and "--- attempt 2 ---" in r.stdout and "try 2" in r.stdout
    pids = {d["pid"] for n, d in events if n == "script.attempt.start"}
    assert len(pids) == 2  # two real processes


def test_always_failing_runs_retries_plus_one_times(sdir: Path) -> None:
    counter = sdir / "counter"
    path = make(sdir, "fail.sh", 'echo run >> "$1"\necho "failing" >&2\nexit 3\n')
    r = run(path, [str(counter)], retries=2)
    assert counter.read_text().count("run") == 3
    assert not r.ok and r.error is ErrorCode.PRE_SCRIPT_FAILED and not r.timed_out
    assert r.exit_codes == (3, 3, 3) and r.retries == 2
    assert r.error_message is not None
    assert "3 attempt(s)" in r.error_message and "exit code 3" in r.error_message


def test_post_failure_by_signal(sdir: Path) -> None:
    path = make(sdir, "killself.sh", "kill -USR1 $$\n")
    r = run(path, phase="post")
    assert r.error is ErrorCode.POST_SCRIPT_FAILED
    assert r.attempts[0].signal == signal.SIGUSR1 and r.exit_codes == (None,)
    assert "SIGUSR1" in (r.error_message or "")


def test_timeout_kills_whole_tree_including_setsid_grandchildren(sdir: Path) -> None:
    pid1, pid2 = sdir / "pid1", sdir / "pid2"
    path = make(
        sdir,
        "hang.sh",
        "echo before-timeout\n"
        'setsid sleep 300 & echo $! > "$1"\n'  # own session, holds our stdout
        '( setsid sleep 301 & echo $! > "$2" )\n'  # double fork: orphan adopted by us
        "sleep 30\n",
    )
    events: list[str] = []
    budget, grace = 1.0, 1.0
    t0 = time.monotonic()
    r = run(
        path, [str(pid1), str(pid2)], retries=2, budget_seconds=budget,
        kill_grace_seconds=grace, on_event=lambda n, d: events.append(n),
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert r.error is ErrorCode.PRE_SCRIPT_TIMEOUT and r.timed_out and not r.ok
    assert len(r.attempts) == 1 and r.attempts[0].timed_out  # no budget left to retry
    # Not before the budget; and killed, not waited for (the script sleeps 30 s).
    assert budget <= elapsed < 10
    assert "before-timeout" in r.stdout
    for f in (pid1, pid2):
        pid = int(f.read_text())
        assert not os.path.exists(f"/proc/{pid}"), f"descendant {pid} survived the timeout"
    assert events[:3] == ["script.attempt.start", "script.timeout", "script.kill"]
    assert "killed 4 process(es)" in (r.error_message or "")


def test_sigterm_ignored_gets_sigkill_after_grace(sdir: Path) -> None:
    path = make(sdir, "stubborn.sh", "trap '' TERM\necho ready\nsleep 30\n")
    kills: list[object] = []

    def on_event(name: str, data: dict[str, object]) -> None:
        if name == "script.kill":
            kills.append(data["signal"])

    t0 = time.monotonic()
    r = run(path, phase="post", budget_seconds=0.5, kill_grace_seconds=0.5, on_event=on_event)
    elapsed = time.monotonic() - t0
    assert r.error is ErrorCode.POST_SCRIPT_TIMEOUT
    assert r.attempts[0].signal == signal.SIGKILL
    assert kills == ["SIGTERM", "SIGKILL"]
    # SIGKILL only after the whole grace; and long before the script's own 30 s.
    assert 1.0 <= elapsed < 10
    assert "ready" in r.stdout


def test_interrupted_caller_kills_the_script(sdir: Path) -> None:
    pidfile = sdir / "pid"
    path = make(sdir, "hang.sh", 'echo $$ > "$1"\nsleep 30 && echo $$\n')

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def interrupt_once_running() -> None:
        # Once the script has written its pid (it is running), not after a guessed delay.
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, "the pid file")
        os.kill(os.getpid(), signal.SIGUSR2)

    old = signal.signal(signal.SIGUSR2, interrupt)
    trigger = threading.Thread(target=interrupt_once_running, daemon=True)
    trigger.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run(path, [str(pidfile)], budget_seconds=60.0, kill_grace_seconds=0.5)
    finally:
        trigger.join(31)
        signal.signal(signal.SIGUSR2, old)
    assert not pid_alive(int(pidfile.read_text()))


def test_background_descendant_holding_pipe_is_left_alone(sdir: Path) -> None:
    pidfile = sdir / "holder"
    path = make(sdir, "lock.sh", 'sleep 30 & echo $! > "$1"\necho started\n')
    t0 = time.monotonic()
    r = run(path, [str(pidfile)])
    elapsed = time.monotonic() - t0
    pid = int(pidfile.read_text())
    try:
        assert r.ok and "started" in r.stdout
        assert elapsed < 10  # did not wait for the holder's EOF (30 s away)
        assert pid_alive(pid)  # success never kills descendants
    finally:
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # we are its subreaper now


def test_completion_is_seen_as_it_happens_not_at_a_poll(sdir: Path) -> None:
    # A runner that polled would return at the earliest one poll period (10 s)
    # after the start. benchmarks/script_latency.py measures the real overhead.
    path = make(sdir, "quick.sh", "sleep 0.05\n")
    for _ in range(3):
        events: list[str] = []
        t0 = time.monotonic()
        r = run(path, poll_seconds=10.0, on_event=lambda n, d, seen=events: seen.append(n))
        elapsed = time.monotonic() - t0
        assert r.ok
        assert elapsed < 5, f"took {elapsed:.2f}s: completion waited for a poll"
        assert "script.running" not in events  # no poll tick came before the exit


def test_heartbeat_follows_poll_seconds(sdir: Path) -> None:
    path = make(sdir, "slowish.sh", "sleep 0.35\n")
    events: list[tuple[str, dict[str, object]]] = []
    r = run(path, poll_seconds=0.1, on_event=lambda n, d: events.append((n, d)))
    assert r.ok
    names = [n for n, _ in events]
    assert names[0] == "script.attempt.start" and names[-1] == "script.attempt.end"
    # One beat per 0.1 s the script ran (at least 0.35 s), however slow the machine.
    ran = r.attempts[0].duration_seconds
    assert 2 <= names.count("script.running") <= ran / 0.1 + 1
    assert all(d["phase"] == "pre" for _, d in events)


def test_observer_exception_is_ignored(sdir: Path) -> None:
    def broken(name: str, data: dict[str, object]) -> None:
        raise RuntimeError("observer bug")

    path = make(sdir, "hang.sh", "sleep 30\n")
    r = run(path, budget_seconds=0.3, kill_grace_seconds=0.5, on_event=broken)
    assert r.error is ErrorCode.PRE_SCRIPT_TIMEOUT


def test_100mb_output_is_bounded(sdir: Path) -> None:
    path = make(sdir, "chatty.sh", "head -c 104857600 /dev/zero | tr '\\0' a\necho tail-end >&2\n")
    probe = (
        "import json\n"
        "from snapshot_runtime.scripts.runner import run_script\n"
        "def hwm():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1]) * 1024\n"
        f"run_script({path!r}, [], phase='pre', retries=0, budget_seconds=5)  # warm up\n"
        "before = hwm()\n"
        f"r = run_script({path!r}, [], phase='pre', retries=0, budget_seconds=60)\n"
        "print(json.dumps({'ok': r.ok, 'bytes': r.output_bytes, 'len': len(r.stdout),\n"
        "    'stdout_head': r.stdout[:3], 'stderr': r.stderr, 'omitted': '…[' in r.stdout,\n"
        "    'growth': hwm() - before}))\n"
    )
    # The warm-up run maps what a first run maps; the budget is generous.
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        timeout=120,
    )
    m = json.loads(out.stdout)
    assert m["ok"] and m["bytes"] == 104857600 + len("tail-end\n")
    assert m["omitted"] and m["len"] <= 2 * 64 * 1024 + 100
    assert m["stdout_head"] == "aaa" and m["stderr"] == "tail-end\n"
    assert m["growth"] < 50 * 2**20  # half the output: it was not all kept (see the benchmark)


def test_invalid_utf8_is_replaced(sdir: Path) -> None:
    path = make(sdir, "bytes.sh", "printf 'ok \\377\\376 done\\n'\nprintf '\\303' >&2\n")
    r = run(path)
    assert r.ok and r.stdout == "ok \ufffd\ufffd done\n" and r.stderr == "\ufffd"


def test_secrets_in_output_are_redacted(sdir: Path) -> None:
    path = make(
        sdir,
        "leak.sh",
        "echo 'https://a.blob.core.windows.net/c/d?sv=2022&sig=abcdEFGH1234%3D&se=1'\n"
        "echo 'DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0S2V5MQ==;' >&2\n"
        "echo 'token=registered-secret-value'\nexit 1\n",
    )
    r = run(path, redactor=Redactor(["registered-secret-value"]))
    blob = r.stdout + r.stderr + (r.error_message or "")
    for secret in ("abcdEFGH1234", "c2VjcmV0S2V5MQ", "registered-secret-value"):
        assert secret not in blob
    assert "sig=REDACTED" in r.stdout and "AccountKey=REDACTED" in r.stderr


# --- trust checks -----------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["pre", "post"])
def test_symlink_is_refused(sdir: Path, phase: str) -> None:
    target = make(sdir, "real.sh", "echo hi\n")
    link = sdir / "link.sh"
    link.symlink_to(target)
    r = run(str(link), phase=phase)
    assert r.error is PERMISSION[phase] and r.attempts == ()
    assert str(link) in (r.error_message or "") and "symbolic link" in (r.error_message or "")


@pytest.mark.parametrize("phase", ["pre", "post"])
def test_world_writable_parent_is_refused(sdir: Path, phase: str) -> None:
    shared = sdir / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    r = run(make(shared, "s.sh", "echo hi\n"), phase=phase)
    assert r.error is PERMISSION[phase]
    assert f"parent directory {shared}" in (r.error_message or "")


def test_parent_under_sticky_tmp_is_accepted_even_through_a_symlink(
    sdir: Path, tmp_path: Path
) -> None:
    # Changed with issue 12 (this test asserted a refusal before): /tmp is
    # sticky and root's, and every entry below it on the way is root's and
    # 0700, so no other user can swap anything. The reference accepts it too.
    require(os.stat("/tmp").st_mode & 0o1777 == 0o1777, "needs /tmp with mode 1777")
    os.chmod(tmp_path, 0o700)
    make(tmp_path, "s.sh", "echo hi\n")
    (sdir / "via").symlink_to(tmp_path)
    check = check_script(str(sdir / "via" / "s.sh"), phase="pre")
    assert check.ok, check.message


def test_non_sticky_world_writable_parent_is_refused_even_through_a_symlink(
    sdir: Path,
) -> None:
    # What the /tmp test above refused before, kept for the dangerous case.
    shared = sdir / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    make(shared, "s.sh", "echo hi\n")
    (sdir / "via").symlink_to(shared)
    check = check_script(str(sdir / "via" / "s.sh"), phase="pre")
    assert not check.ok and check.error is ErrorCode.PRE_SCRIPT_PERMISSION
    assert f"parent directory {shared} has mode 777" in check.message
    assert "not sticky" in check.message and "chmod go-w" in check.message


def test_root_owned_symlinked_parent_is_followed(sdir: Path) -> None:
    real = sdir / "real"
    real.mkdir(mode=0o755)
    make(real, "s.sh", "echo via-link\n")
    (sdir / "alias").symlink_to(real)
    r = run(str(sdir / "alias" / "s.sh"))
    assert r.ok and r.stdout == "via-link\n"


@pytest.mark.parametrize("phase", ["pre", "post"])
def test_mode_755_is_refused(sdir: Path, phase: str) -> None:
    r = run(make(sdir, "s.sh", "echo hi\n", mode=0o755), phase=phase)
    assert r.error is PERMISSION[phase] and "755" in (r.error_message or "")


@pytest.mark.parametrize("phase", ["pre", "post"])
def test_non_root_owner_is_refused(sdir: Path, phase: str) -> None:
    path = make(sdir, "s.sh", "echo hi\n")
    os.chown(path, 1000, 1000)
    r = run(path, phase=phase)
    assert r.error is PERMISSION[phase] and "uid 1000" in (r.error_message or "")
    check = check_script(path, phase=phase)
    assert check.owner_uid == 1000 and check.mode is not None and "700" in check.mode


@pytest.mark.parametrize("phase", ["pre", "post"])
def test_missing_script_is_not_found(sdir: Path, phase: str) -> None:
    r = run(str(sdir / "absent.sh"), phase=phase)
    assert r.error is NOT_FOUND[phase] and r.attempts == () and not r.ok
    assert "does not exist" in (r.error_message or "")


def test_missing_shebang_interpreter_is_reported(sdir: Path) -> None:
    for body, needle in (
        ("#!/usr/bin/no-such-shell\necho\n", "/usr/bin/no-such-shell"),
        ("#!/usr/bin/env no-such-tool-xyz\necho\n", "no-such-tool-xyz"),
        ("#!/bin/sh\r\necho\n", "'/bin/sh\\r'"),
    ):
        check = check_script(make(sdir, "s.sh", body), phase="post")
        assert check.error is ErrorCode.POST_SCRIPT_NOT_FOUND and needle in check.message


@pytest.mark.parametrize("phase", ["pre", "post"])
def test_interpreter_a_user_could_replace_is_refused(sdir: Path, phase: str) -> None:
    # A root-owned 700 script is worthless if its shebang names a program
    # someone else can replace: that program would run as root.
    user_dir = sdir / "userbin"
    user_dir.mkdir(mode=0o755)
    os.chown(user_dir, 1000, 1000)
    interp = user_dir / "tool"
    interp.write_text("#!/bin/sh\ntouch " + str(sdir / "pwned") + "\n")
    interp.chmod(0o755)
    direct = make(sdir, "direct.sh", f"#!{interp}\necho hi\n")
    r = run(direct, phase=phase)
    assert r.error is PERMISSION[phase] and r.attempts == ()
    assert "not trusted to run as root" in (r.error_message or "")
    assert "uid 1000" in (r.error_message or "")
    assert not (sdir / "pwned").exists()

    # Root-owned but group-writable interpreter in a root directory: refused too.
    os.chown(user_dir, 0, 0)
    os.chown(interp, 0, 0)
    interp.chmod(0o775)
    check = check_script(direct, phase=phase)
    assert check.error is PERMISSION[phase] and "writable by group or other" in check.message


def test_env_shebang_command_is_checked_too(sdir: Path) -> None:
    # #!/usr/bin/env CMD resolves CMD on the script PATH; a user-owned CMD
    # there would run as root. /usr/local/bin is first on SAFE_PATH.
    tool = Path("/usr/local/bin") / f"snaprt-test-{os.getpid()}"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    try:
        os.chown(tool, 1000, 1000)
        path = make(sdir, "env.sh", f"#!/usr/bin/env {tool.name}\necho hi\n")
        check = check_script(path, phase="pre")
        assert check.error is ErrorCode.PRE_SCRIPT_PERMISSION
        assert tool.name in check.message and "uid 1000" in check.message
        os.chown(tool, 0, 0)
        assert check_script(path, phase="pre").ok
    finally:
        tool.unlink()


def test_check_script_ok_reports_owner_mode_interpreter(sdir: Path) -> None:
    check = check_script(make(sdir, "s.sh", "#!/bin/bash\necho\n"), phase="pre")
    assert check.ok and check.error is None and check.owner_uid == 0
    assert check.interpreter == "shebang:/bin/bash" and "700" in check.message


# --- execution through the fd --------------------------------------------------------------


@pytest.mark.parametrize("shebang", ["", "#!/bin/sh\n"])
def test_file_swapped_after_check_never_runs(sdir: Path, shebang: str) -> None:
    path = make(sdir, "s.sh", shebang + "echo original\n")
    evil = make(sdir, "evil.sh", shebang + "echo evil\n")
    r = run(path, _after_check=lambda: os.replace(evil, path))
    assert r.ok and r.stdout == "original\n"
    assert run(path).stdout == "evil\n"  # the path itself was replaced


def test_no_shebang_runs_under_sh_with_fd_as_dollar0(sdir: Path) -> None:
    path = make(sdir, "s.sh", 'echo "$0"\necho "$SNAPSHOT_SCRIPT_PATH"\nreadlink /proc/$$/exe\n')
    r = run(path)
    zero, real, exe = r.stdout.splitlines()
    assert zero.startswith("/proc/self/fd/") and real == path
    assert exe == os.path.realpath("/bin/sh") and r.interpreter == "/bin/sh"


def test_shebang_python_runs_under_python(sdir: Path) -> None:
    body = "#!/usr/bin/python3\nimport sys\nprint(sys.argv[0], sys.argv[1:], sys.version_info[0])\n"
    r = run(make(sdir, "s.py", body), ["x", ""])
    assert r.ok, r.error_message
    assert r.stdout.startswith("/proc/self/fd/") and r.stdout.endswith(" ['x', ''] 3\n")
    assert r.interpreter == "shebang:/usr/bin/python3"


def test_shebang_without_x_bit_still_runs_its_interpreter(sdir: Path) -> None:
    path = make(sdir, "s.sh", "#!/bin/bash\necho ${BASH_VERSION:+bash}\n", mode=0o600)
    r = run(path)
    assert r.ok and r.stdout == "bash\n"


def test_unstartable_attempt_is_a_failure_without_attempts(sdir: Path) -> None:
    r = run(make(sdir, "s.sh", "echo\n"), ["nul\0byte"], phase="post")
    assert r.error is ErrorCode.POST_SCRIPT_FAILED and r.attempts == ()
    assert "could not be started" in (r.error_message or "")


def test_runtime_with_closed_stdin_still_runs_the_script(sdir: Path) -> None:
    # The script fd would land on 0 and be shadowed by the child's /dev/null.
    path = make(sdir, "s.sh", "echo from-script\n")
    probe = (
        "import os\nos.close(0)\n"
        "from snapshot_runtime.scripts.runner import run_script\n"
        f"r = run_script({path!r}, [], phase='pre', retries=0, budget_seconds=5)\n"
        "print(r.ok, repr(r.stdout))\n"
    )
    out = _run_probe(probe)
    assert out.returncode == 0, (out.returncode, out.stderr)
    assert out.stdout == "True 'from-script\\n'\n"


def _run_probe(probe: str, *, own_session: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``probe`` in a fresh interpreter that imports this checkout."""
    return subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=own_session,
        timeout=30,
        check=False,
    )


# Each attempt leads a process group of its own: setpgid on Python >= 3.11 (a new
# session would also create a scheduler autogroup, slow to start under CPU load),
# setsid on 3.10. Both spawn modes are tested on whatever Python runs the tests.
GROUP_MODES: dict[str, dict[str, object]] = {
    "process_group": {"process_group": 0},
    "setsid": {"start_new_session": True},
}
# The modes this interpreter's Popen has (process_group= is Python >= 3.11);
# with neither option, both tests below fail.
GROUP_MODE_IDS = [m for m in sorted(GROUP_MODES) if m == "setsid" or sys.version_info >= (3, 11)]


def test_default_group_mode_follows_the_python_version() -> None:
    expected = "process_group" if sys.version_info >= (3, 11) else "setsid"
    used = launch._OWN_GROUP
    assert used == GROUP_MODES[expected]


@pytest.mark.parametrize("mode", GROUP_MODE_IDS)
def test_script_leads_its_own_process_group(
    sdir: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launch, "_OWN_GROUP", GROUP_MODES[mode])
    # /proc/$$/stat: pid (comm) state ppid pgrp session ...; comm is "sh" here.
    path = make(sdir, "group.sh", "echo $$\nawk '{print $5, $6}' /proc/$$/stat\n")
    r = run(path)
    assert r.ok, r
    pid, pgrp, session = (int(x) for x in r.stdout.split())
    assert pgrp == pid and pgrp != os.getpgrp()
    assert (session == pid) is (mode == "setsid")


@pytest.mark.parametrize("mode", GROUP_MODE_IDS)
def test_kill_0_in_a_script_does_not_reach_the_runtime(sdir: Path, mode: str) -> None:
    path = make(sdir, "killall.sh", "echo before\nkill -TERM 0\necho after\n")
    probe = (
        "import json, sys\n"
        "from snapshot_runtime.scripts import launch\n"
        "from snapshot_runtime.scripts.runner import run_script\n"
        f"launch._OWN_GROUP = {GROUP_MODES[mode]!r}\n"
        f"r = run_script({path!r}, [], phase='pre', retries=0, budget_seconds=10)\n"
        "print(json.dumps({'signal': r.attempts[0].signal, 'stdout': r.stdout}))\n"
    )
    # The runtime stands in its own session, so that a leak would hit it, not pytest.
    out = _run_probe(probe, own_session=True)
    assert out.returncode == 0, (out.returncode, out.stderr)
    m = json.loads(out.stdout)
    assert m == {"signal": signal.SIGTERM, "stdout": "before\n"}


# --- one wake-up per exit: the runtime holds the pipes' write ends until the pidfd fires


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_script_pipes_release_and_close_are_idempotent() -> None:
    before = _open_fds()
    pipes = launch.ScriptPipes()
    assert len(_open_fds() - before) == 4
    pipes.release()
    assert pipes.writers == []
    assert os.read(pipes.stdout, 1) == b""  # no writer left: EOF at once
    pipes.close()
    pipes.close()
    assert _open_fds() <= before


def test_exit_wakes_the_runner_once_by_the_pidfd(
    sdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from snapshot_runtime.scripts import attempt

    # What each select returned, as tags: "exited" for the pidfd, "pipe" for either pipe.
    seen: list[list[str]] = []

    class Recording(selectors.DefaultSelector):
        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            ready = super().select(timeout)
            seen.append(["exited" if k.data is attempt._EXITED else "pipe" for k, _ in ready])
            return ready

    monkeypatch.setattr(selectors, "DefaultSelector", Recording)  # attempt.py reads it per call
    # Silent: nothing but the exit (sh's, then its pipes' hang-up) can wake the runner.
    path = make(sdir, "silent.sh", "sleep 0.05\n")
    for _ in range(5):
        seen.clear()
        assert run(path, poll_seconds=0).ok
        # First the pidfd alone (the pipes did not hang up before it: the runtime
        # still held their write ends), then both EOFs at once while draining.
        assert seen[0] == ["exited"], seen
        assert sorted(seen[1]) == ["pipe", "pipe"], seen


def test_script_closing_its_output_early_is_still_waited_for(sdir: Path) -> None:
    marker = sdir / "done"
    path = make(
        sdir, "closer.sh", f'echo out\necho err >&2\nexec >&- 2>&-\nsleep 0.2\ntouch "{marker}"\n'
    )
    r = run(path)
    assert r.ok and r.stdout == "out\n" and r.stderr == "err\n"
    assert marker.exists()  # returned after the exit, not at the pipes' EOF


@pytest.mark.parametrize(
    ("body", "params", "kw"),
    [
        ("echo fine\n", None, {}),
        ("echo failing\nexit 2\n", None, {"retries": 2}),
        ("echo hanging\nsleep 30\n", None, {"budget_seconds": 0.3, "kill_grace_seconds": 0.3}),
        ("echo never\n", ["nul\0byte"], {}),  # cannot be started
    ],
    ids=["ok", "failed-with-retries", "timeout", "launch-error"],
)
def test_no_descriptor_is_left_open(
    sdir: Path, body: str, params: list[str] | None, kw: dict[str, object]
) -> None:
    path = make(sdir, "s.sh", body)
    run(path, params, **kw)  # first run: lazy imports and caches may open files for good
    before = _open_fds()
    r = run(path, params, **kw)
    assert _open_fds() == before, r
