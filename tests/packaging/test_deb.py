"""The .deb (scripts/build-deb.sh): built reproducibly, installed offline with dpkg -i,
the runtime and the sidecar run from the installed paths, purged without a trace.

The wheelhouse is the extension zip's (scripts/extension_package.py, from the
wheels cached under .tools/extension/). The install is real, on this host
(dpkg's database, /opt, /etc, /lib/systemd), in a network namespace with no
network at all; no unit is enabled or started (PID 1 here is not systemd, and
the install must not need it). The test refuses to run over an existing
install or existing paths of the package, and holds a lock so two runs never
install at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshot_runtime import __version__
from tests.support.handlerkit import REPO
from tests.support.jobkit import Workspace
from tests.support.loopfs import LoopFs
from tests.support.requirements import require, require_root

BUILD_ZIP = [sys.executable, str(REPO / "scripts" / "extension_package.py"), "build"]
BUILD_DEB = ["bash", str(REPO / "scripts" / "build-deb.sh")]
PREFIX = Path("/opt/snapshot-runtime")
VENV_BIN = PREFIX / ".venv" / "bin"
UNIT = Path("/lib/systemd/system/snapshot-sidecar.service")
DEFAULTS = Path("/etc/default/snapshot-sidecar")
# Every path the package or its maintainer scripts create (the runtime's own
# /var/lib/snapshot-runtime is shared with the extension and never touched).
OWNED = [
    PREFIX,
    UNIT,
    DEFAULTS,
    Path("/etc/logrotate.d/snapshot-runtime"),
    Path("/usr/bin/snapshot-runtime"),
    Path("/usr/bin/snapshot-sidecar"),
    Path("/usr/share/doc/snapshot-runtime"),
    Path("/var/lib/snapshot-sidecar"),
    Path("/var/log/snapshot-sidecar"),
    Path("/etc/systemd/system/multi-user.target.wants/snapshot-sidecar.service"),
]
SEARCH_ROOTS = [
    "/opt",
    "/etc",
    "/lib/systemd",
    "/usr/bin",
    "/usr/share/doc",
    "/var/lib",
    "/var/log",
]


def _run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def _build_deb(zip_path: Path, out: Path) -> Path:
    proc = _run([*BUILD_DEB, "--from-zip", str(zip_path), "-o", str(out)], timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (deb,) = out.glob("*.deb")
    return deb


@pytest.fixture(scope="module")
def extension_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zip")
    proc = _run([*BUILD_ZIP, "-o", str(out)], timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (zip_path,) = out.glob("*.zip")
    return zip_path


@pytest.fixture(scope="module")
def deb(extension_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(shutil.which("dpkg-deb") is not None, "needs dpkg-deb")
    return _build_deb(extension_zip, tmp_path_factory.mktemp("deb"))


def _arch() -> str:
    return _run(["dpkg", "--print-architecture"]).stdout.strip()


def test_two_builds_are_byte_identical_and_carry_this_machine_s_wheels(
    deb: Path, extension_zip: Path, tmp_path: Path
) -> None:
    again = _build_deb(extension_zip, tmp_path)
    assert again.name == deb.name == f"snapshot-runtime_{__version__}-1_{_arch()}.deb"
    assert hashlib.sha256(deb.read_bytes()).digest() == hashlib.sha256(again.read_bytes()).digest()

    info = _run(["dpkg-deb", "--field", str(deb)]).stdout
    assert f"Version: {__version__}-1" in info
    assert "Depends: python3 (>= 3.10)" in info
    listing = _run(["dpkg-deb", "--contents", str(deb)]).stdout.splitlines()
    # mode owner size date time path [-> target]
    fields = [line.split() for line in listing]
    entries = {f[5]: f for f in fields}
    # Root-owned, one date (the commit's), no other machine's binary wheel.
    assert {f[1] for f in fields} == {"root/root"}
    assert len({(f[3], f[4]) for f in fields}) == 1
    assert entries["./usr/bin/snapshot-sidecar"][6:] == [
        "->",
        "/opt/snapshot-runtime/.venv/bin/snapshot-sidecar",
    ]
    wheels = [Path(name).name for name in entries if name.endswith(".whl")]
    other = "aarch64" if _arch() == "amd64" else "x86_64"
    assert wheels and not [w for w in wheels if other in w]
    assert any(w.startswith("snapshot_runtime-") for w in wheels)
    assert any(w.startswith("pip-") for w in wheels)
    for path in (
        "./lib/systemd/system/snapshot-sidecar.service",
        "./etc/default/snapshot-sidecar",
        "./etc/logrotate.d/snapshot-runtime",
        "./opt/snapshot-runtime/wheelhouse/requirements.txt",
    ):
        assert path in entries, path
    conffiles = _run(["dpkg-deb", "--info", str(deb), "conffiles"]).stdout.split()
    assert conffiles == ["/etc/default/snapshot-sidecar", "/etc/logrotate.d/snapshot-runtime"]


def _leftovers() -> set[str]:
    """Every path named like the package's under the roots it writes to."""
    found = _run(
        [
            "find",
            *SEARCH_ROOTS,
            "-xdev",
            "(",
            "-name",
            "*snapshot-sidecar*",
            "-o",
            "-name",
            "snapshot-runtime*",
            ")",
            "-not",
            "-path",
            "/var/lib/snapshot-runtime*",
        ]
    ).stdout
    return {line for line in found.splitlines() if line}


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    with open("/run/lock/snapshot-runtime-deb-test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _package_status() -> str:
    proc = _run(["dpkg-query", "--show", "--showformat=${db:Status-Status}", "snapshot-runtime"])
    return proc.stdout.strip() if proc.returncode == 0 else "not-installed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _installed_sidecar_args(spool: Path, state: Path, port: int) -> list[str]:
    """The installed unit's ExecStart program with the installed /etc/default options,
    on a private spool and state and a free loopback port."""
    unit = UNIT.read_text()
    exec_start = unit.split("ExecStart=", 1)[1].split("\n\n", 1)[0]
    program = exec_start.replace("\\\n", " ").split()[0]
    assert program == str(VENV_BIN / "snapshot-sidecar")
    shown = _run(["sh", "-c", f'. {DEFAULTS} && printf %s "$SNAPSHOT_SIDECAR_ARGS"']).stdout
    installed = shlex.split(shown)
    assert installed == ["--listen", "127.0.0.1:9756"]  # the shipped default: loopback
    return [
        program,
        "--spool",
        str(spool),
        "--state-dir",
        str(state),
        *installed,
        "--listen",  # the last one wins: a free port, not the host's 9756
        f"127.0.0.1:{port}",
        "--poll-interval",
        "0.1",
    ]


@pytest.mark.root
def test_dpkg_install_offline_run_both_from_installed_paths_then_purge_leaves_nothing(
    deb: Path, ws: Workspace, ext4: LoopFs, tmp_path: Path
) -> None:
    require_root()
    unshare = shutil.which("unshare")
    require(unshare is not None, "needs unshare (util-linux)")
    with _install_lock():
        assert _package_status() == "not-installed", "snapshot-runtime is installed on this host"
        existing = [str(p) for p in OWNED if p.exists() or p.is_symlink()]
        assert not existing, f"refusing to install over existing paths: {existing}"
        before = _leftovers()
        try:
            _install_run_purge(deb, ws, ext4, tmp_path, str(unshare))
        finally:
            if _package_status() != "not-installed":
                _run(["dpkg", "--purge", "snapshot-runtime"], timeout=120)
        assert _package_status() == "not-installed"
        left = [str(p) for p in OWNED if p.exists() or p.is_symlink()]
        assert not left, f"left after purge: {left}"
        assert _leftovers() == before


def _install_run_purge(
    deb: Path, ws: Workspace, ext4: LoopFs, tmp_path: Path, unshare: str
) -> None:
    # No network at all, an index that could not be reached anyway, no systemd.
    env = {
        **os.environ,
        "PIP_NO_INDEX": "1",
        "PIP_INDEX_URL": "http://192.0.2.1:9/simple",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    proc = _run([unshare, "--net", "--", "dpkg", "-i", str(deb)], env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning" not in proc.stderr.lower(), proc.stderr
    assert _package_status() == "installed"

    # The venv was built from the host's Debian python3, not copied from the build.
    cfg = (PREFIX / ".venv" / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg, cfg
    assert os.path.realpath("/usr/bin/snapshot-runtime") == str(VENV_BIN / "snapshot-runtime")
    assert (Path("/var/lib/snapshot-sidecar").stat().st_mode & 0o777) == 0o700
    # Installed again over itself (the upgrade path: prerm upgrade, then postinst
    # builds the next venv while the old one waits aside): one working venv, no leftovers.
    first_python = (VENV_BIN / "python").resolve()
    again = _run([unshare, "--net", "--", "dpkg", "-i", str(deb)], env=env, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(p.name for p in PREFIX.iterdir()) == [".venv", "wheelhouse"]
    assert (VENV_BIN / "python").resolve() == first_python

    # The installed unit, now that its ExecStart exists: systemd's own checker.
    verify = _run(["systemd-analyze", "verify", str(UNIT)], timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    version = _run(["/usr/bin/snapshot-sidecar", "--version"])
    assert version.stdout.strip() == f"snapshot-sidecar {__version__}", version.stderr

    # The runtime, from the installed venv.
    validate = _run(
        [
            str(VENV_BIN / "snapshot-runtime"),
            "validate",
            "--config",
            ws.config(),
            "--mounts",
            ext4.mountpoint,
        ],
        timeout=120,
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr

    # The sidecar, as the installed unit starts it, with a NOTIFY_SOCKET we own.
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp_path / "notify.sock"
    notify.bind(str(notify_path))
    notify.settimeout(60)
    port = _free_port()
    log = tmp_path / "sidecar.log"
    with log.open("ab") as out:
        sidecar = subprocess.Popen(
            _installed_sidecar_args(tmp_path / "spool", tmp_path / "state", port),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={"NOTIFY_SOCKET": str(notify_path), "PATH": "/usr/bin:/bin"},
        )
    try:
        ready = notify.recv(4096).decode()
        assert "READY=1" in ready.split("\n"), ready
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        build_info = [m for m in metrics.splitlines() if m.startswith("vmsnap_build_info{")]
        assert len(build_info) == 1, metrics[:2000]
        assert f'version="{__version__}"' in build_info[0]
        assert build_info[0].endswith(" 1.0")
        sidecar.send_signal(signal.SIGTERM)
        assert sidecar.wait(30) == 0, log.read_text()
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
            sidecar.wait()
        notify.close()
    # Its key pair in the state dir it was given, the public half published in the spool.
    assert (tmp_path / "state" / "sidecar.key").exists()
    assert (tmp_path / "spool" / "sidecar.pub").read_bytes() == (
        tmp_path / "state" / "sidecar.pub"
    ).read_bytes()

    # What `systemctl enable` leaves (done by hand: no systemd here); purge removes it.
    wants = Path("/etc/systemd/system/multi-user.target.wants")
    wants.mkdir(parents=True, exist_ok=True)
    (wants / UNIT.name).symlink_to(UNIT)
    purge = _run(["dpkg", "--purge", "snapshot-runtime"], timeout=300)
    assert purge.returncode == 0, purge.stdout + purge.stderr
