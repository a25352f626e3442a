"""The kernel seam of a freeze: open a mount, syncfs(2), FIFREEZE, FITHAW, close.

``FreezeIoctl`` is the Protocol ``FreezeSession`` calls; every method raises
``OSError`` and may block (a FIFREEZE can hang in D state: callers run these
on their own threads and bound the wait). ``KernelFreezeIoctl`` is the real
implementation; tests substitute recorders and hangs. ``describe_error`` is
pure and renders an errno the way every freeze message does (``EBUSY (...)``).

* ``open_mount``: ``O_RDONLY|O_DIRECTORY|O_CLOEXEC|O_NONBLOCK``.
* ``syncfs`` is resolved through ``ctypes`` when the object is built, never
  later: dlsym is not something to do while filesystems are frozen.
* EBUSY from FIFREEZE means someone else holds a freeze; EINVAL from FITHAW
  means the filesystem is not frozen. Interpreting them is the caller's.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from typing import Protocol

__all__ = ["FIFREEZE", "FITHAW", "FreezeIoctl", "KernelFreezeIoctl", "describe_error"]

FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)


class FreezeIoctl(Protocol):
    """The kernel effects of a freeze; every method raises OSError."""

    def open_mount(self, mountpoint: str) -> int: ...
    def syncfs(self, fd: int) -> None: ...
    def freeze(self, fd: int) -> None: ...
    def thaw(self, fd: int) -> None: ...
    def close(self, fd: int) -> None: ...


class KernelFreezeIoctl:
    """The real thing: open(2), syncfs(2) via ctypes, ioctl FIFREEZE/FITHAW."""

    def __init__(self) -> None:
        # Resolved here, before any freeze: dlsym is not something to do frozen.
        libc = ctypes.CDLL(None, use_errno=True)
        self._syncfs = libc.syncfs
        self._syncfs.argtypes = [ctypes.c_int]
        self._syncfs.restype = ctypes.c_int

    def open_mount(self, mountpoint: str) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NONBLOCK
        return os.open(mountpoint, flags)

    def syncfs(self, fd: int) -> None:
        if self._syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    def freeze(self, fd: int) -> None:
        fcntl.ioctl(fd, FIFREEZE, 0)

    def thaw(self, fd: int) -> None:
        fcntl.ioctl(fd, FITHAW, 0)

    def close(self, fd: int) -> None:
        os.close(fd)


def describe_error(exc: BaseException) -> str:
    """``EBUSY (Device or resource busy)`` for an OSError, ``repr`` otherwise."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, str(exc.errno))} ({exc.strerror})"
    return repr(exc)
