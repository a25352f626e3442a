"""Mount discovery and the freeze plan: pure functions over mountinfo text."""

from __future__ import annotations

import posixpath

from hypothesis import given
from hypothesis import strategies as st

from snapshot_runtime.freeze.mounts import (
    FREEZABLE_FSTYPES,
    FreezePlan,
    Mount,
    parse_mountinfo,
    plan_freeze,
    read_mountinfo,
)

# A VM-like table: root, nested data disks, a bind mount, btrfs subvolumes of
# one filesystem, pseudo/network/read-only filesystems, escaped names, junk.
MOUNTINFO = r"""22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
23 1 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
1 0 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
30 1 8:2 / /boot rw,relatime shared:7 - ext4 /dev/sda2 rw
31 1 8:17 / /data rw,relatime shared:8 master:2 propagate_from:3 - xfs /dev/sdb1 rw,attr2,inode64
32 31 8:33 / /data/db rw,relatime shared:9 - xfs /dev/sdc1 rw
33 1 8:17 /exports /srv/exports rw,relatime shared:8 - xfs /dev/sdb1 rw,attr2
34 1 0:40 / /tmp rw,nosuid,nodev shared:10 - tmpfs tmpfs rw,size=102400k
35 1 0:41 / /mnt/nfs rw,relatime shared:11 - nfs4 server:/export rw,vers=4.2
36 1 11:0 / /mnt/cdrom ro,relatime shared:12 - iso9660 /dev/sr0 ro
37 1 8:49 / /mnt/ro\040disk ro,relatime shared:13 - ext4 /dev/sdd1 ro
38 1 0:50 /@home /home rw,relatime shared:14 - btrfs /dev/sde1 rw,subvol=/@home
39 1 0:50 /@var /var rw,relatime shared:15 - btrfs /dev/sde1 rw,subvol=/@var
40 1 8:65 / /mnt/my\040data rw - ext4 /dev/sdf1 rw
41 30 8:3 / /boot/efi rw - vfat /dev/sda3 rw,fmask=0077
this is not a mount line
42 1 bad
43 x 8:1 / /bogus rw - ext4 /dev/sda1 rw
44 1 8:1 / /no-separator rw shared:1 ext4 /dev/sda1 rw

45 1 8:1 / /short rw -
"""


def _plan(**kwargs: object) -> FreezePlan:
    return plan_freeze(parse_mountinfo(MOUNTINFO), **kwargs)  # type: ignore[arg-type]


def _skips(plan: FreezePlan) -> dict[str, str]:
    return {s.mountpoint: s.reason for s in plan.skipped}


def test_parse_real_mountinfo() -> None:
    mounts = parse_mountinfo(read_mountinfo())
    assert any(m.mountpoint == "/" for m in mounts)
    assert all(m.fstype and ":" in m.major_minor for m in mounts)
    plan_freeze(mounts)  # the real table plans without error


def test_read_mountinfo_takes_a_path(tmp_path) -> None:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    assert read_mountinfo(str(path)) == MOUNTINFO


def test_parse_fields_optional_fields_and_escapes() -> None:
    mounts = {m.mountpoint: m for m in parse_mountinfo(MOUNTINFO)}
    data = mounts["/data"]
    assert data == Mount(
        mount_id=31,
        parent_id=1,
        major_minor="8:17",
        root="/",
        mountpoint="/data",
        options=("rw", "relatime"),
        fstype="xfs",
        source="/dev/sdb1",
        super_options=("rw", "attr2", "inode64"),
    )
    assert mounts["/srv/exports"].root == "/exports"
    assert "/mnt/my data" in mounts and "/mnt/ro disk" in mounts
    assert mounts["/mnt/ro disk"].read_only


def test_parse_more_escapes_and_missing_super_options() -> None:
    text = "50 1 8:1 /a\\134b /mnt/t\\011ab\\012nl rw - ext4 /dev/x\\040y\n"
    (mount,) = parse_mountinfo(text)
    assert mount.root == "/a\\b"
    assert mount.mountpoint == "/mnt/t\tab\nnl"
    assert mount.source == "/dev/x y"
    assert mount.super_options == ()


def test_malformed_lines_are_skipped() -> None:
    mountpoints = [m.mountpoint for m in parse_mountinfo(MOUNTINFO)]
    for bogus in ("/bogus", "/no-separator", "/short"):
        assert bogus not in mountpoints
    assert len(mountpoints) == 15
    assert parse_mountinfo("") == []
    assert parse_mountinfo("\n\n - \n1 2 3 4 5 6 - \n") == []


def test_plan_order_children_first_root_last() -> None:
    plan = _plan()
    assert [m.mountpoint for m in plan.mounts] == [
        "/mnt/my data",
        "/data/db",
        "/home",
        "/data",
        "/boot",
        "/",
    ]


def test_plan_skip_reasons() -> None:
    assert _skips(_plan()) == {
        "/proc": "fstype_not_freezable",
        "/sys": "fstype_not_freezable",
        "/srv/exports": "bind_duplicate",
        "/tmp": "fstype_not_freezable",
        "/mnt/nfs": "network_fs",
        "/mnt/cdrom": "fstype_not_freezable",
        "/mnt/ro disk": "read_only",
        "/var": "bind_duplicate",
        "/boot/efi": "fstype_not_freezable",
    }


def test_network_fs_never_frozen_even_if_asked() -> None:
    plan = _plan(fstypes=FREEZABLE_FSTYPES | {"nfs4", "tmpfs"})
    assert "/tmp" in [m.mountpoint for m in plan.mounts]
    assert _skips(plan)["/mnt/nfs"] == "network_fs"


def test_one_freeze_per_superblock() -> None:
    plan = _plan()
    numbers = [m.major_minor for m in plan.mounts]
    assert len(numbers) == len(set(numbers))


def test_read_only_mount_does_not_claim_the_superblock() -> None:
    text = (
        "60 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "61 1 8:2 /x /ro-view ro,relatime - ext4 /dev/sdb1 rw\n"
        "62 1 8:2 / /rw-view rw,relatime - ext4 /dev/sdb1 rw\n"
    )
    plan = plan_freeze(parse_mountinfo(text))
    assert [m.mountpoint for m in plan.mounts] == ["/rw-view", "/"]
    assert _skips(plan) == {"/ro-view": "read_only"}


def test_overmounted_mountpoint_is_shadowed() -> None:
    text = (
        "60 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "61 60 8:2 / /data rw - ext4 /dev/sdb1 rw\n"
        "62 61 8:3 / /data rw - xfs /dev/sdc1 rw\n"
    )
    plan = plan_freeze(parse_mountinfo(text))
    assert [(m.mountpoint, m.major_minor) for m in plan.mounts] == [("/data", "8:3"), ("/", "8:1")]
    assert [(s.mountpoint, s.reason) for s in plan.skipped] == [("/data", "shadowed")]


def test_include_limits_and_reports_missing_entries() -> None:
    plan = _plan(include=["/data", "/data/db/", "/nope", "/tmp", "/srv/exports"])
    # /data and /srv/exports share 8:17; /data comes first in the table, so
    # the bind mount is the duplicate.
    assert [m.mountpoint for m in plan.mounts] == ["/data/db", "/data"]
    skips = _skips(plan)
    assert skips["/nope"] == "not_mounted"
    assert skips["/tmp"] == "fstype_not_freezable"
    assert skips["/srv/exports"] == "bind_duplicate"
    assert skips["/"] == skips["/home"] == skips["/proc"] == "not_included"


def test_include_a_bind_mount_alone_freezes_its_superblock() -> None:
    plan = _plan(include=["/srv/exports"])
    assert [m.mountpoint for m in plan.mounts] == ["/srv/exports"]
    assert _skips(plan)["/data"] == "not_included"


def test_include_empty_freezes_nothing() -> None:
    plan = _plan(include=[])
    assert plan.mounts == ()
    assert {s.reason for s in plan.skipped} == {"not_included"}


def test_exclude() -> None:
    plan = _plan(exclude=["/", "/boot/", "/nope"])
    assert [m.mountpoint for m in plan.mounts] == ["/mnt/my data", "/data/db", "/home", "/data"]
    assert _skips(plan)["/"] == _skips(plan)["/boot"] == "excluded"
    assert "/nope" not in _skips(plan)


def test_exclude_wins_over_include() -> None:
    plan = _plan(include=["/data", "/data/db"], exclude=["/data"])
    assert [m.mountpoint for m in plan.mounts] == ["/data/db"]
    assert _skips(plan)["/data"] == "excluded"


_segment = st.sampled_from(["a", "b", "c", "var", "lib"])
_paths = st.lists(st.lists(_segment, min_size=0, max_size=4), min_size=1, max_size=12)


@given(_paths, st.randoms(use_true_random=False))
def test_plan_order_property(paths: list[list[str]], rnd) -> None:
    # Any table: every mount comes before the mounts it is nested in, "/" last,
    # one mount per superblock, and every input mount is either planned or skipped.
    lines = []
    for i, parts in enumerate(paths):
        mountpoint = "/" + "/".join(parts)
        device = f"8:{rnd.randint(0, 4)}"
        fstype = rnd.choice(["ext4", "xfs", "btrfs", "tmpfs", "nfs"])
        opts = rnd.choice(["rw", "ro"])
        lines.append(f"{i + 10} 1 {device} / {mountpoint} {opts} - {fstype} /dev/x rw")
    mounts = parse_mountinfo("\n".join(lines))
    plan = plan_freeze(mounts)
    order = [m.mountpoint for m in plan.mounts]
    for i, inner in enumerate(order):
        for outer in order[:i]:
            assert not (outer != "/" and inner.startswith(outer.rstrip("/") + "/")), order
    if "/" in order:
        assert order[-1] == "/"
    assert len({m.major_minor for m in plan.mounts}) == len(plan.mounts)
    assert len(plan.mounts) + len(plan.skipped) == len(mounts)
    assert all(posixpath.isabs(m) for m in order)
