"""The extension zip the guest agent installs: built reproducibly, installed offline.

The zip is built by scripts/extension_package.py from the pinned wheels cached
under .tools/extension/ (`make extension-check` fills the cache; the first
build on a machine needs the package index once). The install runs the way
the agent runs it: the zip unpacked with ``zipfile.extractall`` and every file
made user-executable (WALinuxAgent's ``download`` and ``initialize``), then
``bin/handle.sh install`` from the package directory, in a network namespace
with no network at all, with a Python that has no ensurepip (a minimal
Debian/Ubuntu image without python3-venv). Then a real enable -> job ->
status against Azurite and a loop filesystem.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshot_runtime import __version__
from tests.support.azurite import Azurite
from tests.support.handlerkit import (
    REPO,
    TransportCert,
    agent_status_problems,
    disk_object_str,
    encrypt_protected,
    make_handler_dir,
    make_transport_cert,
    public_settings,
    write_handler_config,
)
from tests.support.jobkit import sig_values
from tests.support.loopfs import loop_filesystem
from tests.support.requirements import require, require_root

BUILD = [sys.executable, str(REPO / "scripts" / "extension_package.py"), "build"]
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
ARCHES = ("x86_64", "aarch64")
# The distribution's own Python of this machine, as a VM would have it: the
# newest supported one in /usr/bin (Debian's python3.11 here).
SYSTEM_PYTHON = next(
    (
        Path(f"/usr/bin/python{v}")
        for v in reversed(PYTHONS)
        if Path(f"/usr/bin/python{v}").exists()
    ),
    Path("/usr/bin/python3.13"),  # none: require() below says what is missing
)


def _build(out: Path) -> Path:
    proc = subprocess.run(
        [*BUILD, "-o", str(out)], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (zip_path,) = out.glob("*.zip")
    return zip_path


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("extension-build"))


def _wheel_tags(name: str) -> tuple[str, str, str, str]:
    """(distribution, python tag, abi tag, platform tag) of a wheel file name."""
    parts = name.removesuffix(".whl").split("-")
    return parts[0], parts[-3], parts[-2], parts[-1]


def test_two_builds_of_one_commit_are_byte_identical(package: Path, tmp_path: Path) -> None:
    again = _build(tmp_path)
    assert again.name == package.name == f"VMSnapshotLinux-{__version__}.zip"
    first, second = package.read_bytes(), again.read_bytes()
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()

    with zipfile.ZipFile(package) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names == sorted(names)
        assert len({i.date_time for i in infos}) == 1  # one fixed date (the commit's)
        modes = {i.filename: (i.external_attr >> 16) & 0o7777 for i in infos}
        assert modes["bin/handle.sh"] == 0o755
        assert {m for n, m in modes.items() if n != "bin/handle.sh"} == {0o644}
        manifest = json.loads(zf.read("HandlerManifest.json"))
        requirements = zf.read("wheelhouse/requirements.txt").decode()
    # The reference's manifest shape: a list of one, name and version as strings.
    assert isinstance(manifest, list) and len(manifest) == 1
    assert manifest[0]["name"] == "VMSnapshotLinux"
    assert manifest[0]["version"] == __version__
    commands = manifest[0]["handlerManifest"]
    for verb in ("install", "enable", "disable", "uninstall", "update"):
        assert commands[f"{verb}Command"] == f"bin/handle.sh {verb}"

    wheels = [n.removeprefix("wheelhouse/") for n in names if n.endswith(".whl")]
    assert f"snapshot_runtime-{__version__}-py3-none-any.whl" in wheels
    assert any(w.startswith("pip-") and w.endswith("-py3-none-any.whl") for w in wheels)
    # A compiled dependency has a wheel for every CPython and machine, none
    # needing a glibc newer than 2.28.
    cffi = [_wheel_tags(w) for w in wheels if w.startswith("cffi-")]
    for py in PYTHONS:
        for arch in ARCHES:
            tag = "cp" + py.replace(".", "")
            assert any(t[1] == tag and arch in t[3] for t in cffi), (tag, arch, cffi)
    for wheel in wheels:
        _, _, _, platform = _wheel_tags(wheel)
        for tag in platform.split("."):
            if tag.startswith("manylinux_2_"):
                assert int(tag.split("_")[2]) <= 28, wheel
    # Every line is pinned and hash-checked: pip on the VM takes nothing else.
    pinned = [line for line in requirements.splitlines() if line and not line.startswith("#")]
    assert pinned and all("==" in line and "--hash=sha256:" in line for line in pinned)
    lock = (REPO / "deploy" / "extension" / "requirements.lock").read_text()
    for line in lock.splitlines():
        if line and not line.startswith("#") and not line.startswith("pip=="):
            assert any(p.startswith(line + " ") for p in pinned), line


def _unpack_as_the_agent_does(zip_path: Path, handler_root: Path) -> None:
    # WALinuxAgent: ZipFile(...).extractall(base_dir) (modes are not restored),
    # then chmod u+x on every file under the base directory.
    zipfile.ZipFile(zip_path).extractall(handler_root)
    for path in handler_root.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _python_without_ensurepip(base: Path) -> Path:
    """A copy of the system Python whose stdlib lacks ensurepip, as on a minimal
    Debian/Ubuntu image without python3-venv: `-m venv` fails unless --without-pip."""
    require(SYSTEM_PYTHON.exists(), f"needs {SYSTEM_PYTHON}")
    version = f"python{SYSTEM_PYTHON.name.removeprefix('python')}"
    stdlib = Path("/usr/lib") / version
    bin_dir, lib = base / "bin", base / "lib" / version
    bin_dir.mkdir(parents=True)
    lib.mkdir(parents=True)
    # A copy, not a symlink: Python finds its prefix from the real executable.
    shutil.copy2(SYSTEM_PYTHON, bin_dir / SYSTEM_PYTHON.name)
    for entry in stdlib.iterdir():
        if entry.name not in {"ensurepip", "site-packages", "dist-packages"}:
            (lib / entry.name).symlink_to(entry)
    python = bin_dir / SYSTEM_PYTHON.name
    probe = subprocess.run(
        [str(python), "-c", "import ensurepip"], capture_output=True, text=True, check=False
    )
    assert probe.returncode != 0 and "No module named 'ensurepip'" in probe.stderr
    return python


def _tools(base: Path, *names: str) -> Path:
    """A PATH directory with only these commands: the Python search sees nothing else."""
    base.mkdir()
    for name in names:
        found = shutil.which(name, path="/usr/bin:/bin")
        assert found is not None, name
        (base / name).symlink_to(found)
    return base


def _agent_env(path: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    return {**env, "PATH": path, **extra}


@pytest.fixture(scope="module")
def cert() -> TransportCert:
    return make_transport_cert()


@pytest.mark.azurite
@pytest.mark.root
def test_offline_install_without_ensurepip_then_a_real_job(
    package: Path, tmp_path: Path, cert: TransportCert, azurite: Azurite
) -> None:
    require_root()
    unshare = shutil.which("unshare")
    require(unshare is not None, "needs unshare (util-linux)")
    python = _python_without_ensurepip(tmp_path / "python")
    tools = _tools(tmp_path / "tools", "rm", "uname")
    with loop_filesystem("ext4") as fs:
        cert.install(tmp_path / "waagent")
        conf = write_handler_config(
            tmp_path / "handler.conf",
            include_mounts=fs.mountpoint,
            freeze_timeout_seconds="30",
            state_dir=str(tmp_path / "state"),
            run_dir=str(tmp_path / "run"),
            vmbackup_conf=str(tmp_path / "etc-azure" / "vmbackup.conf"),
            product_uuid_file=str(tmp_path / "dmi" / "product_uuid"),
            hosting_environment_config=str(tmp_path / "waagent-xml" / "HEC.xml"),
        )
        h = make_handler_dir(tmp_path, tmp_path / "waagent", handler_config=conf)
        _unpack_as_the_agent_does(package, h.root)
        extra = ["--cert-dir", str(h.cert_dir), "--handler-config", str(conf)]

        # install: no network at all (a new network namespace has only a
        # loopback, down), an index that could not be reached anyway, and
        # only the ensurepip-less Python on PATH.
        proc = subprocess.run(
            [str(unshare), "--net", "--", "bin/handle.sh", "install", *extra],
            cwd=h.root,
            env=_agent_env(
                f"{python.parent}:{tools}",
                PIP_INDEX_URL="http://192.0.2.1:9/simple",
                PIP_FIND_LINKS="",
            ),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # Not one try to reach an index: pip would have warned about each
        # retry (and pip falls back to the wheelhouse, so only this shows it).
        assert proc.stderr == "", proc.stderr
        assert f"with {python} (Python {python.name.removeprefix('python')})" in proc.stdout
        assert "install: state directories ready" in proc.stdout
        venv_python = h.root / "venv" / "bin" / "python"
        # The venv is built from the VM's Python, not copied from the build host.
        cfg = (h.root / "venv" / "pyvenv.cfg").read_text()
        assert f"home = {python.parent}" in cfg
        where = subprocess.run(
            [
                str(venv_python),
                "-c",
                "import snapshot_runtime, nacl, cryptography; print(snapshot_runtime.__file__)",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd="/",
            env=_agent_env("/usr/bin:/bin"),
        ).stdout
        assert where.startswith(str(h.root / "venv" / "lib"))  # the zip's wheel, not the repo

        # enable, as the agent runs it, then the job the daemon runs.
        container = azurite.container()
        url = azurite.create_page_blob(container, "osdisk.vhd")
        protected = encrypt_protected({"objectStr": disk_object_str([url])}, cert)
        h.write_settings(0, public_settings("task-pkg"), protected, thumbprint=cert.thumbprint)
        proc = subprocess.run(
            ["bin/handle.sh", "enable", *extra],
            cwd=h.root,
            env=_agent_env(
                f"{python.parent}:/usr/sbin:/usr/bin:/sbin:/bin", ConfigSequenceNumber="0"
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        final = h.wait_status(0, {"success", "error"}, timeout=120)
        assert final["blob"]["status"]["status"] == "success", final["message"]
        info = final["blob"]["status"]["snapshotInfo"]
        assert len(info) == 1 and info[0]["isSuccessful"] is True
        blobs = azurite.service().get_container_client(container).list_blobs(include=["snapshots"])
        assert [b.name for b in blobs if b.snapshot] == ["osdisk.vhd"]
        assert agent_status_problems(json.loads(h.status_path(0).read_text())) == []
        for folder in (h.status, h.log, tmp_path / "state"):
            for path in folder.rglob("*"):
                if path.is_file():
                    text = path.read_text(errors="replace")
                    assert "Traceback" not in text, path
                    assert not any(s in text for s in sig_values(url)), path


@pytest.fixture
def bare_package(tmp_path: Path) -> Iterator[Path]:
    """bin/handle.sh with a wheelhouse that has its requirements but no pip wheel:
    install stops right after choosing the Python, which is what these tests watch."""
    root = tmp_path / "pkg"
    (root / "bin").mkdir(parents=True)
    (root / "wheelhouse").mkdir()
    shutil.copy2(REPO / "deploy" / "extension" / "bin" / "handle.sh", root / "bin" / "handle.sh")
    (root / "wheelhouse" / "requirements.txt").write_text("")
    yield root


def _fake_python(bin_dir: Path, name: str, version: tuple[int, int] | None) -> None:
    """``name`` in bin_dir: the real interpreter if it is that version, else a stand-in
    that fails the version probe as an unsupported Python would."""
    bin_dir.mkdir(exist_ok=True)
    if version == sys.version_info[:2]:
        (bin_dir / name).symlink_to(sys.executable)
    else:
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / name).chmod(0o755)


def _install(package_root: Path, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(package_root / "bin" / "handle.sh"), "install"],
        cwd=package_root,
        env=_agent_env(path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_handle_sh_takes_the_newest_supported_python_before_python3(
    bare_package: Path, tmp_path: Path
) -> None:
    here = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    bin_dir = tmp_path / "bin"
    _fake_python(bin_dir, "python3", sys.version_info[:2])
    _fake_python(bin_dir, here, sys.version_info[:2])
    # A newer name whose interpreter does not answer as a supported CPython
    # (broken, or another implementation): passed over, not fatal.
    _fake_python(bin_dir, "python3.13", (3, 13))
    proc = _install(bare_package, str(bin_dir))
    assert f"with {bin_dir / here} (Python {here.removeprefix('python')})" in proc.stdout
    assert proc.returncode == 1 and "has no pip wheel" in proc.stderr

    # Only python3, and it is an unsupported version: nothing to use.
    (bin_dir / here).unlink()
    (bin_dir / "python3").unlink()
    _fake_python(bin_dir, "python3", (3, 9))
    proc = _install(bare_package, str(bin_dir))
    assert proc.returncode == 3
    assert "no supported Python found" in proc.stderr
    assert "CPython 3.10, 3.11" in proc.stderr and "apt-get install python3" in proc.stderr


def test_handle_sh_names_the_package_to_install_when_there_is_no_python(
    bare_package: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _install(bare_package, str(empty))  # not even coreutils on PATH
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == ""
    for line in ("apt-get install python3", "dnf install python3.11", "zypper install python311"):
        assert line in proc.stderr
    assert not (bare_package / "venv").exists()


def test_wheel_and_sdist_build_cleanly(tmp_path: Path) -> None:
    """`python -m build` (make dist) from the tracked files: both artifacts, no
    deprecation from the build backend, the typed faces and the 3.10 floor inside."""
    src = tmp_path / "src"
    listing = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    # Backend warnings come as "WARNING ..." lines (the byte-compiling notes
    # are lowercase "warning:" and only mean PYTHONDONTWRITEBYTECODE is set).
    assert "deprecat" not in log.lower(), log
    assert not [line for line in log.splitlines() if line.startswith("WARNING")], log
    (sdist,) = out.glob(f"snapshot_runtime-{__version__}.tar.gz")
    (wheel,) = out.glob(f"snapshot_runtime-{__version__}-py3-none-any.whl")
    assert sdist.stat().st_size > 0
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(f"snapshot_runtime-{__version__}.dist-info/METADATA").decode()
    assert "Requires-Python: >=3.10" in meta.splitlines()
    faces = sorted(p.parent.name for p in (REPO / "snapshot_runtime").glob("*/__init__.pyi"))
    assert faces
    for face in faces:
        assert f"snapshot_runtime/{face}/__init__.pyi" in names
    assert {"snapshot_runtime/py.typed", "snapshot_sidecar/py.typed"} <= names


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("python", PYTHONS)
def test_the_wheelhouse_alone_satisfies_every_target(
    package: Path, tmp_path: Path, python: str, arch: str
) -> None:
    """What handle.sh runs on the VM, as pip would resolve it there for each CPython
    and machine (only one of them runs here): no index, hashes required."""
    zipfile.ZipFile(package).extractall(tmp_path / "pkg")
    wheelhouse = tmp_path / "pkg" / "wheelhouse"
    abi = "cp" + python.replace(".", "")
    argv = [sys.executable, "-m", "pip", "install", "--isolated", "--no-index"]
    argv += ["--find-links", str(wheelhouse), "--only-binary=:all:", "--require-hashes"]
    argv += ["--dry-run", "--ignore-installed", "--target", str(tmp_path / "target")]
    argv += ["--python-version", python, "--implementation", "cp", "--abi", abi]
    argv += ["--platform", f"manylinux_2_28_{arch}", "--platform", f"manylinux2014_{arch}"]
    argv += ["--requirement", str(wheelhouse / "requirements.txt")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"snapshot-runtime-{__version__}" in proc.stdout.replace("_", "-")
