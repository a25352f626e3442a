"""The host/guest mode decision: every mode, every source, every disk flag, every presnapshot."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapshot_runtime.core.snapshot_mode import (
    ModeInputs,
    SnapshotMode,
    choose_mode,
    decide_path,
    parse_mode,
)

FHTG = SnapshotMode.FIRST_HOST_THEN_GUEST
FGTH = SnapshotMode.FIRST_GUEST_THEN_HOST
OH = SnapshotMode.ONLY_HOST
OG = SnapshotMode.ONLY_GUEST


@pytest.mark.parametrize(
    ("inputs", "mode", "source"),
    [
        (ModeInputs(), FHTG, "default"),
        (ModeInputs(custom_settings_mode="onlyGuest"), OG, "customSettings"),
        (ModeInputs(custom_settings_mode="firstGuestThenHost"), FGTH, "customSettings"),
        (ModeInputs(custom_settings_mode="onlyHost"), OH, "customSettings"),
        (ModeInputs(custom_settings_mode="firstHostThenGuest"), FHTG, "customSettings"),
        # vmbackup.conf overrides CRP's customSettings (reference §3)...
        (ModeInputs(custom_settings_mode="onlyGuest", conf_method="onlyHost"), OH, "vmbackup.conf"),
        # ...also when customSettings has no takeSnapshotFrom (reference defect 10, fixed).
        (ModeInputs(conf_method="onlyGuest"), OG, "vmbackup.conf"),
        # Our own config wins over both.
        (
            ModeInputs(
                custom_settings_mode="onlyGuest",
                conf_method="onlyHost",
                configured_mode="onlyGuest",
            ),
            OG,
            "config",
        ),
        (ModeInputs(configured_mode="firstGuestThenHost"), FGTH, "config"),
        # Case-insensitive, blanks ignored.
        (ModeInputs(custom_settings_mode="  ONLYguest "), OG, "customSettings"),
        # Blank values are "not given".
        (
            ModeInputs(configured_mode="  ", conf_method="", custom_settings_mode="onlyHost"),
            OH,
            "customSettings",
        ),
    ],
)
def test_configured_mode_precedence(inputs: ModeInputs, mode: SnapshotMode, source: str) -> None:
    choice = choose_mode(inputs)
    assert (choice.mode, choice.source, choice.error) == (mode, source, None)
    assert choice.ignored == ()


def test_unknown_mode_names_are_skipped_and_noted() -> None:
    choice = choose_mode(ModeInputs(configured_mode="hostPlease", conf_method="onlyGuest"))
    assert (choice.mode, choice.source) == (OG, "vmbackup.conf")
    assert choice.ignored == ("config: unknown mode (10 characters)",)
    choice = choose_mode(ModeInputs(custom_settings_mode="bogus"))
    assert (choice.mode, choice.source) == (FHTG, "default")
    assert choice.ignored == ("customSettings: unknown mode (5 characters)",)


HOST_ONLY_FLAGS = [
    "wa_disk_included",
    "direct_drive_disk_included",
    "vmgs_blob_included",
    "wa_lun_included",
]


@pytest.mark.parametrize("flag", HOST_ONLY_FLAGS)
@pytest.mark.parametrize("configured", [None, "onlyGuest", "firstGuestThenHost", "onlyHost"])
def test_host_only_disks_force_only_host_over_every_source(
    flag: str, configured: str | None
) -> None:
    inputs = ModeInputs(
        configured_mode=configured,
        conf_method="onlyGuest",
        custom_settings_mode="onlyGuest",
        lun_list_empty=False,
        **{flag: True},
    )
    choice = choose_mode(inputs)
    assert (choice.mode, choice.source, choice.order, choice.error) == (
        OH,
        "host-only disks",
        ("host",),
        None,
    )
    # The guest path is never taken for such a disk, even when presnapshot fails.
    for status in (None, 200, 555, 557, 500):
        assert decide_path(choice, status, guest_available=True).path == "host"


def test_excluded_disk_with_no_lun_forces_only_guest() -> None:
    choice = choose_mode(
        ModeInputs(any_disk_excluded=True, lun_list_empty=True, configured_mode="onlyHost")
    )
    assert (choice.mode, choice.source, choice.order) == (OG, "excluded disks", ("guest",))
    # With a LUN listed, an excluded disk changes nothing (diskIds names the disks).
    choice = choose_mode(ModeInputs(any_disk_excluded=True, lun_list_empty=False))
    assert (choice.mode, choice.source) == (FHTG, "default")


@pytest.mark.parametrize("flag", HOST_ONLY_FLAGS)
def test_excluded_disk_with_no_lun_and_a_host_only_disk_is_an_error(flag: str) -> None:
    choice = choose_mode(ModeInputs(any_disk_excluded=True, lun_list_empty=True, **{flag: True}))
    assert choice.error == "InvalidDiskList"
    assert choice.order == ()
    decision = decide_path(choice, 200, guest_available=True)
    assert decision.path is None
    assert "excluded" in decision.reason


# (mode, presnapshot status, guest URLs available) -> path
PATH_TABLE: list[tuple[SnapshotMode, int | None, bool, str | None]] = []
for _status, _guest in itertools.product([None, 200, 201, 555, 557, 558, 500, 404], [True, False]):
    _ok = _status in (200, 201)
    PATH_TABLE += [
        (FHTG, _status, _guest, "host" if _ok else ("guest" if _guest else None)),
        (OH, _status, _guest, "host"),
        (OG, _status, _guest, "guest" if _guest else None),
        (FGTH, _status, _guest, "guest" if _guest else "host"),
    ]


@pytest.mark.parametrize(("mode", "status", "guest", "path"), PATH_TABLE)
def test_path_after_presnapshot(
    mode: SnapshotMode, status: int | None, guest: bool, path: str | None
) -> None:
    choice = choose_mode(ModeInputs(configured_mode=mode.value))
    decision = decide_path(choice, status, guest_available=guest)
    assert decision.path == path
    assert mode.value in decision.reason
    if mode is FHTG and status is not None:
        assert str(status) in decision.reason


def test_the_fallback_reason_names_the_presnapshot_answer() -> None:
    decision = decide_path(choose_mode(ModeInputs()), 555, guest_available=True)
    assert decision.path == "guest"
    assert decision.reason == (
        "firstHostThenGuest (firstHostThenGuest (default)): presnapshot answered 555, "
        "guest fallback"
    )


def test_parse_mode() -> None:
    assert parse_mode("onlyhost") is OH
    assert parse_mode(None) is None
    assert parse_mode("only host") is None


flags = st.booleans()
names = st.one_of(st.none(), st.sampled_from([m.value for m in SnapshotMode]), st.text(max_size=8))


@given(
    names,
    names,
    names,
    flags,
    flags,
    flags,
    flags,
    flags,
    flags,
    st.one_of(st.none(), st.integers(100, 599)),
    flags,
)
def test_the_decision_never_raises_and_is_consistent(
    custom: str | None,
    conf: str | None,
    ours: str | None,
    wa: bool,
    dd: bool,
    vmgs: bool,
    wa_lun: bool,
    excluded: bool,
    empty: bool,
    status: int | None,
    guest: bool,
) -> None:
    inputs = ModeInputs(custom, conf, ours, wa, dd, vmgs, wa_lun, excluded, empty)
    choice = choose_mode(inputs)
    decision = decide_path(choice, status, guest_available=guest)
    host_only = wa or dd or vmgs or wa_lun
    # A host-only disk never goes to the guest; an error never goes anywhere.
    if host_only:
        assert decision.path in ("host", None)
    if choice.error is not None:
        assert decision.path is None
    # The chosen path is always one the mode allows.
    if decision.path is not None:
        assert decision.path in choice.order
    assert decision.reason
