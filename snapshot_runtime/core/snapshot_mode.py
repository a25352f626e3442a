"""Which snapshot path a job takes: the host (WireServer ``dosnapshot``) or the guest.

Pure module, no I/O; docs/host-snapshot.md tabulates every case and where the
reference (/work/shared/reference/host-snapshot.md §3) differs. Two steps, both
before any freeze:

* ``choose_mode(ModeInputs)`` -> ``ModeChoice``: the configured mode, where it
  came from, and the paths to try in order. Precedence, strongest first:

  1. a disk only the host can snapshot (``isAnyWADiskIncluded``,
     ``isAnyDirectDriveDiskIncluded``, ``isVmgsBlobIncluded``, or a LUN of
     ``customSettings.waDiskLunList`` among the included LUNs) forces
     ``onlyHost``, whatever is configured (the guest path has no URL for it);
  2. ``isAnyDiskExcluded`` with an empty LUN list forces ``onlyGuest`` (a
     ``dosnapshot`` with no ``diskIds`` would snapshot every disk, including the
     excluded one); with a host-only disk as well the request is contradictory:
     ``error`` is set (the reference's code 17, ``InvalidDiskList``). The
     reference intends this but never does it (its ``list.count`` defect);
  3. our own configuration (``JobOptions`` / the runtime's config);
  4. ``vmbackup.conf [SnapshotThread] SnapshotMethod`` (it overrides CRP, as in
     the reference; unlike it, also when ``customSettings`` lacks
     ``takeSnapshotFrom``);
  5. ``customSettings.takeSnapshotFrom``;
  6. the default, ``firstHostThenGuest``.

  Mode names match case-insensitively. An unknown name is skipped (the next
  source decides) and noted in ``ignored`` (by source and length, never the
  value); the reference silently uses the default instead.

* ``decide_path(choice, presnapshot_status, guest_available)`` -> ``PathDecision``:
  after the ``presnapshot`` call (not frozen), host or guest, and why.
  ``firstHostThenGuest`` takes the host only on HTTP 200/201 with a body, else
  falls back to the guest. ``onlyHost`` takes the host whatever ``presnapshot``
  said (there is no other path; the reference does not even ask).
  ``firstGuestThenHost`` takes the guest when the job has guest disk URLs, else
  the host. A failed ``dosnapshot`` is never a reason to fall back: the
  decision is taken once, before the freeze.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "FALLBACK_REASONS",
    "PRESNAPSHOT_ACCEPTED",
    "SNAPSHOT_PATHS",
    "ModeChoice",
    "ModeInputs",
    "ModeSource",
    "PathDecision",
    "SnapshotMode",
    "SnapshotPath",
    "choose_mode",
    "decide_path",
    "parse_mode",
]

SnapshotPath = Literal["host", "guest"]
SNAPSHOT_PATHS: tuple[SnapshotPath, ...] = ("host", "guest")
# Why a job with host inputs ran the guest path after its presnapshot failed
# (firstHostThenGuest): the job record's snapshot.fallback and the sidecar's
# bounded ``reason`` label (docs/telemetry.md). ``presnapshot_unreachable``:
# no answer (555: refused, reset, timeout); ``presnapshot_failed``: any other
# answer (an HTTP error, an empty or unusable 200: 557, 558). Two values: the
# series budget (docs/telemetry.md); the record's declined reason and the
# status's hostStatusCodePreSnapshot keep the exact code. ``guest_failed``:
# firstGuestThenHost took the host after every guest snapshot failed (a
# second frozen window, docs/host-snapshot.md).
FALLBACK_REASONS: tuple[str, ...] = (
    "presnapshot_unreachable",
    "presnapshot_failed",
    "guest_failed",
)
ModeSource = Literal[
    "default", "customSettings", "vmbackup.conf", "config", "host-only disks", "excluded disks"
]

# presnapshot answers that choose the host path (reference §4.3; 557, an empty
# 200, is a failure).
PRESNAPSHOT_ACCEPTED = frozenset({200, 201})


class SnapshotMode(enum.Enum):
    """The reference's four values of ``takeSnapshotFrom`` / ``SnapshotMethod``."""

    FIRST_HOST_THEN_GUEST = "firstHostThenGuest"
    FIRST_GUEST_THEN_HOST = "firstGuestThenHost"
    ONLY_HOST = "onlyHost"
    ONLY_GUEST = "onlyGuest"


_BY_LOWER = {m.value.lower(): m for m in SnapshotMode}

_ORDER: dict[SnapshotMode, tuple[SnapshotPath, ...]] = {
    SnapshotMode.FIRST_HOST_THEN_GUEST: ("host", "guest"),
    SnapshotMode.FIRST_GUEST_THEN_HOST: ("guest", "host"),
    SnapshotMode.ONLY_HOST: ("host",),
    SnapshotMode.ONLY_GUEST: ("guest",),
}


def parse_mode(value: str | None) -> SnapshotMode | None:
    """The mode a string names (case-insensitive, surrounding blanks ignored), else None."""
    if value is None:
        return None
    return _BY_LOWER.get(value.strip().lower())


@dataclass(frozen=True)
class ModeInputs:
    """Everything the mode depends on; every field defaults to "not given"."""

    custom_settings_mode: str | None = None  # customSettings.takeSnapshotFrom
    conf_method: str | None = None  # vmbackup.conf [SnapshotThread] SnapshotMethod
    configured_mode: str | None = None  # our own configuration
    wa_disk_included: bool = False  # includedDisks.isAnyWADiskIncluded
    direct_drive_disk_included: bool = False  # includedDisks.isAnyDirectDriveDiskIncluded
    vmgs_blob_included: bool = False  # includedDisks.isVmgsBlobIncluded
    wa_lun_included: bool = False  # customSettings.waDiskLunList meets the included LUNs
    any_disk_excluded: bool = False  # includedDisks.isAnyDiskExcluded
    lun_list_empty: bool = True  # no data LUN and no OS disk in includedDisks


@dataclass(frozen=True)
class ModeChoice:
    """The mode, its source, the paths to try in order, and why.

    ``error`` is set (and ``order`` empty) when the inputs contradict each other;
    the job then fails before anything is frozen.
    """

    mode: SnapshotMode
    source: ModeSource
    order: tuple[SnapshotPath, ...]
    reason: str
    ignored: tuple[str, ...] = field(default=())
    error: str | None = None


@dataclass(frozen=True)
class PathDecision:
    """The path taken (None: none can be), and why; decided before any freeze."""

    path: SnapshotPath | None
    reason: str


def _host_only_disks(inputs: ModeInputs) -> list[str]:
    named = [
        ("isAnyWADiskIncluded", inputs.wa_disk_included),
        ("isAnyDirectDriveDiskIncluded", inputs.direct_drive_disk_included),
        ("isVmgsBlobIncluded", inputs.vmgs_blob_included),
        ("waDiskLunList", inputs.wa_lun_included),
    ]
    return [name for name, flag in named if flag]


def choose_mode(inputs: ModeInputs) -> ModeChoice:
    """The configured mode by the module's precedence. Pure; never raises."""
    host_only = _host_only_disks(inputs)
    excluded = inputs.any_disk_excluded and inputs.lun_list_empty
    if host_only and excluded:
        mode = SnapshotMode.ONLY_HOST
        return ModeChoice(
            mode=mode,
            source="excluded disks",
            order=(),
            reason=(
                f"a disk is excluded and no LUN is listed, but {', '.join(host_only)} "
                "needs the host path, which would then snapshot every disk"
            ),
            error="InvalidDiskList",
        )
    if host_only:
        mode = SnapshotMode.ONLY_HOST
        return ModeChoice(
            mode, "host-only disks", _ORDER[mode], f"{', '.join(host_only)}: only the host can"
        )
    if excluded:
        mode = SnapshotMode.ONLY_GUEST
        return ModeChoice(
            mode,
            "excluded disks",
            _ORDER[mode],
            "isAnyDiskExcluded with no LUN listed: a dosnapshot without diskIds "
            "would snapshot every disk",
        )
    ignored: list[str] = []
    sources: tuple[tuple[ModeSource, str | None], ...] = (
        ("config", inputs.configured_mode),
        ("vmbackup.conf", inputs.conf_method),
        ("customSettings", inputs.custom_settings_mode),
    )
    for source, value in sources:
        if value is None or not value.strip():
            continue
        mode_or_none = parse_mode(value)
        if mode_or_none is None:
            # Not echoed: customSettings may come from the protected settings (I5).
            ignored.append(f"{source}: unknown mode ({len(value.strip())} characters)")
            continue
        return ModeChoice(
            mode_or_none,
            source,
            _ORDER[mode_or_none],
            f"{mode_or_none.value} from {source}",
            tuple(ignored),
        )
    mode = SnapshotMode.FIRST_HOST_THEN_GUEST
    return ModeChoice(mode, "default", _ORDER[mode], f"{mode.value} (default)", tuple(ignored))


def decide_path(
    choice: ModeChoice, presnapshot_status: int | None, *, guest_available: bool
) -> PathDecision:
    """Host or guest after ``presnapshot`` (None: not asked). Pure; never raises.

    ``guest_available``: the job has guest disk URLs (``blobSASUri``).
    """
    if choice.error is not None:
        return PathDecision(None, choice.reason)
    accepted = presnapshot_status in PRESNAPSHOT_ACCEPTED
    said = "not asked" if presnapshot_status is None else f"answered {presnapshot_status}"
    mode = choice.mode
    if mode is SnapshotMode.ONLY_HOST:
        return PathDecision("host", f"onlyHost ({choice.reason}); presnapshot {said}")
    if mode is SnapshotMode.ONLY_GUEST:
        if guest_available:
            return PathDecision("guest", f"onlyGuest ({choice.reason})")
        return PathDecision(None, f"onlyGuest ({choice.reason}) but no guest disk URL")
    if mode is SnapshotMode.FIRST_GUEST_THEN_HOST:
        if guest_available:
            return PathDecision("guest", f"firstGuestThenHost ({choice.reason})")
        return PathDecision(
            "host", f"firstGuestThenHost ({choice.reason}): no guest disk URL; presnapshot {said}"
        )
    if accepted:
        return PathDecision("host", f"firstHostThenGuest ({choice.reason}): presnapshot {said}")
    if guest_available:
        return PathDecision(
            "guest", f"firstHostThenGuest ({choice.reason}): presnapshot {said}, guest fallback"
        )
    return PathDecision(
        None,
        f"firstHostThenGuest ({choice.reason}): presnapshot {said} and no guest disk URL",
    )
