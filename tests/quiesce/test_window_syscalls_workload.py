"""I1 with a workload held: no database I/O inside the frozen window, by the kernel's view.

The real console script runs a job (one disk on Azurite behind a FaultProxy, the
MariaDB data directory on a real loop ext4 that is frozen) with workload.conf
naming the live server, under ``strace -f -yy``. The quiesce's session talks to
mysqld over its Unix socket before the first FIFREEZE and after the last FITHAW,
and not once in between (tests/support/syscall_trace.py judges every syscall of
the window: any write or send on a socket but the snapshot endpoint is a violation).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from snapshot_runtime.core.redact import scrub
from snapshot_runtime.inputs.workload_conf import WORKLOAD_CONF_ENV
from tests.support import jobkit, syscall_trace
from tests.support.azurite import Azurite
from tests.support.databases import MariaDb
from tests.support.faultproxy import FaultProxy
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs, loop_filesystem
from tests.support.requirements import require

pytestmark = [pytest.mark.root, pytest.mark.azurite]


def test_the_held_quiesce_does_no_io_inside_the_frozen_window(
    azurite: Azurite,
    ws: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with loop_filesystem("ext4", size_mb=256) as ext4:
        _run_traced(azurite, ws, ext4, tmp_path, monkeypatch)


def _run_traced(
    azurite: Azurite,
    ws: Workspace,
    ext4: LoopFs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    strace = shutil.which("strace")
    require(strace is not None, "needs strace: scripts/install-system-deps.sh")
    assert strace is not None
    db = MariaDb(os.path.join(ext4.mountpoint, "mysql"), str(tmp_path / "run"))
    conf = tmp_path / "workload.conf"
    conf.write_text(f"[workload]\nworkload_name = mariadb\ncredString = -u root -S {db.socket}\n")
    os.chmod(conf, 0o600)
    monkeypatch.setenv(WORKLOAD_CONF_ENV, str(conf))
    trace_path = ws.root / "strace.txt"
    with (
        db.install().start(),
        FaultProxy(azurite.host, azurite.port, max_lifetime=120) as proxy,
        # The spool on a tmpfs, as /run is on a VM (the window's log line goes there).
        syscall_trace.tmpfs_mount(str(ws.root / "run")) as tmpfs,
    ):
        disks = jobkit.make_disks(azurite, 1, endpoints={0: proxy.endpoint()})
        settings = ws.settings(disks, task_id="window-workload_1")
        args = [
            "run",
            "--settings",
            settings,
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
        traced = ["-f", "-tt", "-yy", "-e", "trace=all", "-qq", "-s", "100", "-o", str(trace_path)]
        result = ws.cli(*traced, "--", jobkit.CLI, *args, program=strace, timeout=120)
        mounts = syscall_trace.read_mounts()
    calls = syscall_trace.parse(trace_path.read_text(errors="replace"))
    window = syscall_trace.frozen_window(calls)
    assert window is not None, "no successful FIFREEZE/FITHAW in the trace"
    violations = syscall_trace.window_violations(
        calls,
        window,
        frozen_mounts=[ext4.mountpoint],
        allowed_peers={f"127.0.0.1:{proxy.port}"},
        mounts=mounts,
    )
    if violations:
        pytest.fail(
            f"{len(violations)} syscall(s) the frozen window does not allow:\n"
            + "\n".join(scrub(str(v)) for v in violations),
            pytrace=False,
        )
    assert result.returncode == 0, scrub(result.output[-4000:])
    report = result.json
    assert report["consistency"] == "application", report
    # Not vacuous: the session really talked to mysqld on both sides of the window.
    to_mysqld = [
        c for c in calls if c.name in ("sendto", "write", "sendmsg") and "UNIX-STREAM" in c.args
    ]
    before = [c for c in to_mysqld if c.start < window.start]
    after = [c for c in to_mysqld if c.start > window.end]
    inside = [c for c in to_mysqld if window.contains(c)]
    assert before and after, (len(before), len(after))
    assert inside == []
    print(
        f"\n[I1 workload] {len([c for c in calls if window.contains(c)])} syscalls in the "
        f"window, 0 to mysqld; {len(before)} unix-socket sends before, {len(after)} after"
    )
