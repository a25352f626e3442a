"""Issue 12: scripts the reference runs, we run; the refusals we keep, and why.

Real files with real modes and owners under /var/lib/snapshot-runtime-tests
(root-owned), and real sticky (1777) and non-sticky (0777) directories made
there. The config-parsing side of the same issue is in
tests/inputs/test_plugin_config.py (TOLERATED); the job and ``validate``
sides are in tests/job/test_reference_configs.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.core.permissions import check_parent_dir_mode
from snapshot_runtime.scripts.runner import ScriptResult, run_script
from snapshot_runtime.scripts.trust import check_script
from tests.support.requirements import require

BASE = "/var/lib/snapshot-runtime-tests"
PERMISSION = {"pre": ErrorCode.PRE_SCRIPT_PERMISSION, "post": ErrorCode.POST_SCRIPT_PERMISSION}
NOT_FOUND = {"pre": ErrorCode.PRE_SCRIPT_NOT_FOUND, "post": ErrorCode.POST_SCRIPT_NOT_FOUND}


@pytest.fixture
def sdir() -> Iterator[Path]:
    require(os.geteuid() == 0, "needs root: scripts must be root-owned, dirs chowned")
    os.makedirs(BASE, mode=0o755, exist_ok=True)
    os.chmod(BASE, 0o755)
    path = Path(tempfile.mkdtemp(dir=BASE))  # 0700, root
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(BASE)


def mkdir(path: Path, mode: int, uid: int = 0) -> Path:
    path.mkdir()
    os.chmod(path, mode)  # chmod, not mkdir(mode=): the umask would drop bits
    os.chown(path, uid, uid)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    return path


def script(d: Path, name: str, body: str = 'echo ran "$@"\n', mode: int = 0o700) -> str:
    path = d / name
    path.write_text(body)
    os.chmod(path, mode)
    return str(path)


def run(path: str, phase: str = "pre") -> ScriptResult:
    return run_script(path, [], phase=phase, retries=0, budget_seconds=10.0)  # type: ignore[arg-type]


# --- sticky world-writable parents: accepted, as the reference does ------------------


@pytest.mark.parametrize("phase", ["pre", "post"])
def test_script_below_a_real_sticky_1777_dir_runs(sdir: Path, phase: str) -> None:
    # /tmp/app/pre.sh with /tmp 1777: app is root's and 0755, the script root's and 0700.
    sticky = mkdir(sdir / "tmp", 0o1777)
    app = mkdir(sticky / "app", 0o755)
    r = run(script(app, f"{phase}.sh"), phase)
    assert r.ok, r.error_message
    assert r.stdout == "ran\n" and len(r.attempts) == 1


def test_script_directly_in_a_real_sticky_1777_dir_runs(sdir: Path) -> None:
    sticky = mkdir(sdir / "tmp", 0o1777)
    check = check_script(script(sticky, "pre.sh"), phase="pre")
    assert check.ok, check.message
    assert run(str(sticky / "pre.sh")).ok


@pytest.mark.parametrize("phase", ["pre", "post"])
def test_same_layout_with_a_non_sticky_0777_dir_is_refused(sdir: Path, phase: str) -> None:
    # Without the sticky bit anyone may rename app away and put their own in its place.
    shared = mkdir(sdir / "tmp", 0o777)
    app = mkdir(shared / "app", 0o755)
    marker = sdir / "ran"
    r = run(script(app, f"{phase}.sh", f"touch {marker}\n"), phase)
    assert r.error is PERMISSION[phase] and r.attempts == () and not marker.exists()
    message = r.error_message or ""
    assert f"parent directory {shared} has mode 777" in message
    assert f"fix: chmod go-w {shared}" in message


def test_entry_below_a_sticky_dir_owned_by_another_user_is_refused(sdir: Path) -> None:
    # The sticky bit protects an entry for its owner: uid 1000 owns app, so
    # uid 1000 could swap the script.
    sticky = mkdir(sdir / "tmp", 0o1777)
    app = mkdir(sticky / "app", 0o755, uid=1000)
    check = check_script(script(app, "pre.sh"), phase="pre")
    assert check.error is ErrorCode.PRE_SCRIPT_PERMISSION
    assert f"parent directory {app} is owned by uid 1000" in check.message


def test_group_writable_entry_below_a_sticky_dir_is_refused(sdir: Path) -> None:
    sticky = mkdir(sdir / "tmp", 0o1777)
    app = mkdir(sticky / "app", 0o775)
    check = check_script(script(app, "pre.sh"), phase="pre")
    assert check.error is ErrorCode.PRE_SCRIPT_PERMISSION
    assert f"parent directory {app} has mode 775" in check.message


def test_script_in_a_sticky_dir_not_owned_by_root_is_refused(sdir: Path) -> None:
    sticky = mkdir(sdir / "tmp", 0o1777)
    path = script(sticky, "pre.sh")
    os.chown(path, 1000, 1000)
    check = check_script(path, phase="pre")
    assert check.error is ErrorCode.PRE_SCRIPT_PERMISSION and "uid 1000" in check.message


def test_sticky_dir_owned_by_another_user_is_refused(sdir: Path) -> None:
    # The directory's owner may remove anything in it, sticky or not.
    sticky = mkdir(sdir / "tmp", 0o1777, uid=1000)
    check = check_script(script(sticky, "pre.sh"), phase="pre")
    assert check.error is ErrorCode.PRE_SCRIPT_PERMISSION
    assert f"parent directory {sticky} is owned by uid 1000" in check.message


def test_user_owned_symlink_in_a_sticky_dir_is_refused(sdir: Path) -> None:
    # uid 1000 may create /tmp/app -> a root directory, and retarget it at
    # will: a link in the path must be root's too, sticky dir or not.
    real = mkdir(sdir / "real", 0o755)
    script(real, "pre.sh")
    sticky = mkdir(sdir / "tmp", 0o1777)
    link = sticky / "app"
    link.symlink_to(real)
    os.lchown(link, 1000, 1000)
    check = check_script(str(link / "pre.sh"), phase="pre")
    assert check.error is ErrorCode.PRE_SCRIPT_PERMISSION
    assert f"parent {link} is a symlink owned by uid 1000" in check.message
    assert "fix: configure the real path" in check.message
    os.lchown(link, 0, 0)
    assert check_script(str(link / "pre.sh"), phase="pre").ok


def test_parent_dir_rule_table() -> None:
    # The pure rule, over the modes the tests above build for real.
    d = stat.S_IFDIR
    assert check_parent_dir_mode("/tmp", d | 0o1777, 0) is None
    assert check_parent_dir_mode("/x", d | 0o1770, 0) is None
    assert check_parent_dir_mode("/x", d | 0o755, 0) is None
    assert "not sticky" in (check_parent_dir_mode("/x", d | 0o777, 0) or "")
    assert "not sticky" in (check_parent_dir_mode("/x", d | 0o775, 0) or "")
    assert "uid 1000" in (check_parent_dir_mode("/x", d | 0o1777, 1000) or "")
    assert "not a directory" in (check_parent_dir_mode("/x", stat.S_IFREG | 0o1777, 0) or "")


# --- the stock template's empty location: not found, as the reference says ----------


@pytest.mark.parametrize("phase", ["pre", "post"])
def test_empty_location_is_not_found_with_the_fix(phase: str) -> None:
    r = run("", phase)
    assert r.error is NOT_FOUND[phase] and r.attempts == () and not r.ok
    message = r.error_message or ""
    assert f"{phase}ScriptLocation is empty" in message
    assert f"set it to the full path of the {phase}-script" in message
    assert check_script("", phase=phase).error is NOT_FOUND[phase]  # type: ignore[arg-type]


# --- the security refusals we keep (the reference allows them) ------------------------


@pytest.mark.parametrize("phase", ["pre", "post"])
def test_symlinked_script_in_a_sticky_dir_is_refused_with_the_fix(sdir: Path, phase: str) -> None:
    # The reference runs `sh /tmp/pre.sh` through the link; whoever owns the
    # link's target directory decides what runs as root.
    sticky = mkdir(sdir / "tmp", 0o1777)
    real = script(sdir, "real.sh")
    link = sticky / f"{phase}.sh"
    link.symlink_to(real)
    r = run(str(link), phase)
    assert r.error is PERMISSION[phase] and r.attempts == ()
    assert "symbolic link" in (r.error_message or "")
    assert "configure the real path" in (r.error_message or "")


@pytest.mark.parametrize(("owner", "mode", "why"), [
    (1000, 0o755, "owned by uid 1000"),
    (0, 0o757, "writable by group or other"),
])  # fmt: skip
def test_untrusted_interpreter_is_refused_with_the_fix(
    sdir: Path, owner: int, mode: int, why: str
) -> None:
    # The reference ignores the shebang (it runs `sh script`); we honour it,
    # so the interpreter it names must be as trusted as the script.
    bindir = mkdir(sdir / "bin", 0o755)
    interp = bindir / "tool"
    marker = sdir / "pwned"
    interp.write_text(f"#!/bin/sh\ntouch {marker}\n")
    os.chmod(interp, mode)
    os.chown(interp, owner, owner)
    r = run(script(sdir, "pre.sh", f"#!{interp}\necho hi\n"))
    assert r.error is ErrorCode.PRE_SCRIPT_PERMISSION and r.attempts == ()
    message = r.error_message or ""
    assert "not trusted to run as root" in message and why in message
    assert f"fix: make {interp} root-owned and not writable by others" in message
    assert not marker.exists()
