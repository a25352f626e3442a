"""Replacing a file atomically: readers (and crashes) see the old or the new file.

Status files, settings files, job records, the processed-task list and the
sidecar's state and keys are all written this way: a temporary file in the
same directory is written in full, fsynced, renamed over the target, and the
directory is fsynced so the rename itself survives a power loss.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["write_atomic"]


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o600,
    fsync: bool = True,
    like: os.stat_result | None = None,
) -> None:
    """Replace ``path`` with ``data``.

    ``mode`` is set on the new file. ``like``: keep that stat's owner and
    times (a file another program watches by mtime). ``fsync=False`` skips
    both fsyncs, for tmpfs where they buy nothing. Raises OSError, after
    removing the temporary file.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        try:
            os.fchmod(fd, mode)
            if like is not None and (like.st_uid, like.st_gid) != (os.getuid(), os.getgid()):
                os.fchown(fd, like.st_uid, like.st_gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if like is not None:
            os.utime(tmp, ns=(like.st_atime_ns, like.st_mtime_ns))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
