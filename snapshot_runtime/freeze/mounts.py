"""Which filesystems to freeze, and in what order.

Pure module: parsing ``/proc/self/mountinfo`` text and planning the freeze do no
I/O and never raise on odd input; the only effect is ``read_mountinfo``, a thin
file read kept here so callers can pass a fixture path instead.

Selection rules (``plan_freeze``), applied to each mount in this order; the
first rule that matches gives the ``SkippedMount.reason``:

``shadowed``
    Another mount sits on the same mountpoint later in the table; a path lookup
    (ours, the watchdog's, the probe's) reaches only the top one.
``excluded`` / ``not_included``
    The caller's ``exclude`` list, or the ``include`` list (the CLI's
    ``--mounts``) when given. Entries match mountpoints exactly (after
    normalising trailing slashes).
``network_fs``
    NFS, CIFS, Ceph, ... : a FIFREEZE or a sync on them can hang on the server
    (Azure/azure-linux-extensions#1237) and the server's data is not on our
    disks anyway.
``fstype_not_freezable``
    Only ext3, ext4, xfs and btrfs are frozen, as in the reference. tmpfs,
    proc, sysfs, cgroup... have no disk behind them (nothing to make
    consistent); vfat/exfat/iso9660/squashfs and most FUSE filesystems do not
    implement FIFREEZE (EOPNOTSUPP); overlay mounts are frozen through their
    upper filesystem's own mount.
``read_only``
    ``ro`` in the mount or superblock options: no writer can dirty the
    filesystem through this mount, so there is nothing to flush. A read-only
    mount never "claims" a superblock, so a read-write mount of the same
    filesystem later in the table is still chosen.
``bind_duplicate``
    FIFREEZE freezes a superblock, not a mountpoint. A second mount of the same
    ``major:minor`` (bind mounts, btrfs subvolumes, the same device mounted
    twice) is skipped: freezing it again would fail with EBUSY and look like
    "already frozen by someone else".
``not_mounted``
    An ``include`` entry that matches no mountpoint at all. We report instead of
    raising so that a single plan carries every problem (preflight turns this
    reason into a failed check); the job should treat it as
    ``UnableToOpenMount``.

Order: children before parents (deeper mountpoints first), ties broken by
reverse mount order (the reference reverses the mount list); ``/`` is always
last. Freezing ``/`` last keeps the filesystem with the most writers (logs,
journald, fapolicyd in #1868) writable as long as possible, and it is thawed
first (thaw order is the reverse of ``FreezePlan.mounts``).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "FREEZABLE_FSTYPES",
    "NETWORK_FSTYPES",
    "FreezePlan",
    "Mount",
    "SkippedMount",
    "parse_mountinfo",
    "plan_freeze",
    "read_mountinfo",
]

FREEZABLE_FSTYPES = frozenset({"ext3", "ext4", "xfs", "btrfs"})

# Never frozen even if a caller widens ``fstypes``: a stuck server stalls the
# freeze in the kernel, where no timer of ours can interrupt it.
NETWORK_FSTYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "fuse.s3fs",
        "fuse.blobfuse",
        "fuse.blobfuse2",
        "afs",
        "9p",
        "lustre",
        "gpfs",
        "beegfs",
        "ocfs2",
        "gfs2",
    }
)

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of ``/proc/self/mountinfo`` (proc(5))."""

    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mountpoint: str
    options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options or "ro" in self.super_options


@dataclass(frozen=True)
class SkippedMount:
    mountpoint: str
    fstype: str
    reason: str


@dataclass(frozen=True)
class FreezePlan:
    """``mounts`` in freeze order; thaw runs in the reverse order."""

    mounts: tuple[Mount, ...]
    skipped: tuple[SkippedMount, ...]


def read_mountinfo(path: str = "/proc/self/mountinfo") -> str:
    """The mount table as text. Raises OSError."""
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        return fh.read()


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash as \ooo octal.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _parse_line(line: str) -> Mount | None:
    fields = line.split(" ")
    try:
        sep = fields.index("-", 6)
    except ValueError:
        return None
    if len(fields) < sep + 3:
        return None
    try:
        mount_id, parent_id = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    major_minor = fields[2]
    if ":" not in major_minor:
        return None
    return Mount(
        mount_id=mount_id,
        parent_id=parent_id,
        major_minor=major_minor,
        root=_unescape(fields[3]),
        mountpoint=_unescape(fields[4]),
        options=tuple(fields[5].split(",")),
        fstype=_unescape(fields[sep + 1]),
        source=_unescape(fields[sep + 2]),
        super_options=tuple(fields[sep + 3].split(",")) if len(fields) > sep + 3 else (),
    )


def parse_mountinfo(text: str) -> list[Mount]:
    """Every well-formed line, in table order; malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        mount = _parse_line(line)
        if mount is not None:
            mounts.append(mount)
    return mounts


def _normalise(path: str) -> str:
    # posixpath.normpath keeps a leading "//"; a mountpoint never has one.
    norm = posixpath.normpath(path)
    return "/" + norm.lstrip("/") if norm.startswith("//") else norm


def _depth(mountpoint: str) -> int:
    return 0 if mountpoint == "/" else mountpoint.count("/")


def _skip_reason(
    mount: Mount,
    *,
    shadowed: bool,
    include: frozenset[str] | None,
    exclude: frozenset[str],
    fstypes: frozenset[str],
) -> str | None:
    mountpoint = _normalise(mount.mountpoint)
    if shadowed:
        return "shadowed"
    if mountpoint in exclude:
        return "excluded"
    if include is not None and mountpoint not in include:
        return "not_included"
    if mount.fstype in NETWORK_FSTYPES or mount.fstype.split(".")[-1] in NETWORK_FSTYPES:
        return "network_fs"
    if mount.fstype not in fstypes:
        return "fstype_not_freezable"
    if mount.read_only:
        return "read_only"
    return None


def plan_freeze(
    mounts: Sequence[Mount],
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    fstypes: frozenset[str] = FREEZABLE_FSTYPES,
) -> FreezePlan:
    """Select and order the mounts to freeze (see the module docstring)."""
    include_set = frozenset(_normalise(p) for p in include) if include is not None else None
    exclude_set = frozenset(_normalise(p) for p in exclude)
    top_index = {_normalise(m.mountpoint): i for i, m in enumerate(mounts)}
    chosen: list[tuple[int, Mount]] = []
    skipped: list[SkippedMount] = []
    claimed: set[str] = set()
    for index, mount in enumerate(mounts):
        reason = _skip_reason(
            mount,
            shadowed=top_index[_normalise(mount.mountpoint)] != index,
            include=include_set,
            exclude=exclude_set,
            fstypes=fstypes,
        )
        if reason is None and mount.major_minor in claimed:
            reason = "bind_duplicate"
        if reason is not None:
            skipped.append(SkippedMount(mount.mountpoint, mount.fstype, reason))
            continue
        claimed.add(mount.major_minor)
        chosen.append((index, mount))
    if include_set is not None:
        present = set(top_index)
        for entry in sorted(include_set - present):
            skipped.append(SkippedMount(entry, "", "not_mounted"))
    # Deeper first; among equals, later in the table first (reference order).
    chosen.sort(key=lambda item: (-_depth(_normalise(item[1].mountpoint)), -item[0]))
    return FreezePlan(mounts=tuple(m for _, m in chosen), skipped=tuple(skipped))
