"""Freezing filesystems: the mount plan, the FIFREEZE/FITHAW seam, per-mount
lanes, the freeze session, the thaw watchdog and the proof-of-thaw probe."""

from .freezer import Freezer as Freezer
from .freezer import FreezerFactory as FreezerFactory
from .ioctl import KernelFreezeIoctl as KernelFreezeIoctl
from .mounts import FreezePlan as FreezePlan
from .mounts import parse_mountinfo as parse_mountinfo
from .mounts import plan_freeze as plan_freeze
from .mounts import read_mountinfo as read_mountinfo
from .session import WATCHDOG_GRACE_SECONDS as WATCHDOG_GRACE_SECONDS
from .session import FreezeSession as FreezeSession
from .state import FreezeResult as FreezeResult

__all__ = [
    "WATCHDOG_GRACE_SECONDS",
    "FreezePlan",
    "FreezeResult",
    "FreezeSession",
    "Freezer",
    "FreezerFactory",
    "KernelFreezeIoctl",
    "parse_mountinfo",
    "plan_freeze",
    "read_mountinfo",
]
