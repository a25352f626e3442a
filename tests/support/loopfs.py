"""Real loop-mounted ext4/xfs filesystems for freeze tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from tests.support.requirements import require, require_root


@dataclass
class LoopFs:
    image: str
    mountpoint: str
    fstype: str
    device: str


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout


def _force_thaw(mountpoint: str) -> None:
    # A test that fails mid-freeze must never leave the host with a frozen mount.
    subprocess.run(["fsfreeze", "-u", mountpoint], capture_output=True, timeout=10, check=False)


@contextlib.contextmanager
def loop_filesystem(fstype: str = "ext4", size_mb: int | None = None) -> Iterator[LoopFs]:
    """Create, mount and finally unmount a loop filesystem of ``fstype``."""
    require_root()
    mkfs = f"mkfs.{fstype}"
    require(shutil.which(mkfs) is not None, f"needs {mkfs}")
    size = size_mb or (320 if fstype == "xfs" else 64)
    base = tempfile.mkdtemp(prefix=f"snaprt-{fstype}-", dir="/tmp")
    image = os.path.join(base, "disk.img")
    mnt = os.path.join(base, "mnt")
    os.mkdir(mnt)
    with open(image, "wb") as fh:
        fh.truncate(size * 1024 * 1024)
    if fstype == "xfs":
        _run(mkfs, "-q", "-f", image)
    else:
        _run(mkfs, "-q", "-F", "-L", f"t{uuid.uuid4().hex[:8]}", image)
    device = _run("losetup", "--find", "--show", image).strip()
    try:
        _run("mount", "-t", fstype, device, mnt)
        try:
            yield LoopFs(image=image, mountpoint=mnt, fstype=fstype, device=device)
        finally:
            _force_thaw(mnt)
            subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=30, check=False)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, timeout=30, check=False)
        shutil.rmtree(base, ignore_errors=True)
