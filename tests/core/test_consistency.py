from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshot_runtime.core.consistency import (
    DECISION_REASONS,
    REASONS,
    ProceedDecision,
    Verdict,
    decide_after_freeze,
    decide_after_pre_script,
    verdict,
)
from snapshot_runtime.core.errors import ErrorCode, Health

E = ErrorCode
DOC = Path(__file__).resolve().parents[2] / "docs" / "consistency.md"

# The base run: valid plugin config, scripts ok, freeze ok, 2 of 2 disks.
BASE: dict[str, Any] = {
    "config_state": "valid",
    "config_error": None,
    "continue_on_failure": True,
    "fs_freeze_enabled": True,
    "pre_error": None,
    "freeze_attempted": True,
    "freeze_ok": True,
    "freeze_error": None,
    "freeze_timed_out": False,
    "snapshot_error": None,
    "disks_ok": 2,
    "disks_total": 2,
    "post_error": None,
    "thaw_error": None,
}
# What a run stopped before the freeze looks like.
STOPPED = {"freeze_attempted": False, "freeze_ok": False, "disks_ok": 0}
ONE_DISK = {"disks_ok": 1, "disks_total": 1}
G, Y, R = Health.GREEN, Health.YELLOW, Health.RED
NO_CONT: dict[str, Any] = {"continue_on_failure": False}
NO_FRZ: dict[str, Any] = {"fs_freeze_enabled": False}
CFG_JSON = E.INCORRECT_JSON_CONFIG
CFG_HOST = E.INCORRECT_PLUGINHOST_FILE
PRE_NF = E.PRE_SCRIPT_NOT_FOUND
PRE_PERM = E.PRE_SCRIPT_PERMISSION
PRE_FAIL = E.PRE_SCRIPT_FAILED
PRE_TO = E.PRE_SCRIPT_TIMEOUT
POST_FAIL = E.POST_SCRIPT_FAILED
POST_TO = E.POST_SCRIPT_TIMEOUT
FRZ = E.FS_FREEZE_FAILED
FRZ_TO = E.FS_FREEZE_TIMEOUT
NOT_OWNED = E.FS_FREEZE_NOT_OWNED
MNT = E.UNABLE_TO_OPEN_MOUNT
THAW = E.THAW_FAILED
SNAP = E.SNAPSHOT_FAILED
PART = E.SNAPSHOT_PARTIALLY_FAILED
RATE = E.SNAPSHOT_RATE_EXCEEDED
LIMIT = E.SNAPSHOT_LIMIT_REACHED
NO_DISKS = E.INVALID_DISK_LIST
ADJ = E.PLUGIN_CONFIG_VALUE_ADJUSTED
CONV = E.PLUGIN_CONFIG_VALUE_CONVERTED
WL_QUIESCE = E.WORKLOAD_QUIESCING_ERROR
WL_TIMEOUT = E.WORKLOAD_QUIESCING_TIMEOUT
WL_UNSUP = E.WORKLOAD_UNSUPPORTED
WL_CONN = E.WORKLOAD_CONNECTION

# id, input overrides, (consistency, reason, error, warnings, snapshot, status, health)
# Each row is a row of docs/consistency.md (test_doc_table_matches checks it).
CASES: list[tuple[str, dict[str, Any], tuple[Any, ...]]] = [
    # --- plugin config and pre-script (freeze ok, 2/2 disks) ---
    ("C01", {"config_state": "absent"},
     ("filesystem", "no_plugin_config", None, (), True, 1, G)),
    ("C02", {"config_state": "invalid", "config_error": CFG_JSON},
     ("filesystem", "plugin_config_invalid", CFG_JSON, (CFG_JSON,), True, 1, Y)),
    ("C03", {"config_state": "invalid", "config_error": CFG_HOST},
     ("filesystem", "plugin_config_invalid", CFG_HOST, (CFG_HOST,), True, 1, Y)),
    ("C04", {"config_state": "invalid", "config_error": CFG_JSON, **NO_CONT},
     ("filesystem", "plugin_config_invalid", CFG_JSON, (CFG_JSON,), True, 1, Y)),
    ("C05", {},
     ("application", "application_consistent", None, (), True, 0, G)),
    ("C06", {"pre_error": PRE_NF},
     ("filesystem", "pre_script_error_continued", PRE_NF, (PRE_NF,), True, 1, Y)),
    ("C07", {"pre_error": PRE_PERM},
     ("filesystem", "pre_script_error_continued", PRE_PERM, (PRE_PERM,), True, 1, Y)),
    ("C08", {"pre_error": PRE_FAIL},
     ("filesystem", "pre_script_error_continued", PRE_FAIL, (PRE_FAIL,), True, 1, Y)),
    ("C09", {"pre_error": PRE_TO},
     ("filesystem", "pre_script_error_continued", PRE_TO, (PRE_TO,), True, 1, Y)),
    ("C10", {**NO_CONT, "pre_error": PRE_NF, **STOPPED},
     ("none", "pre_script_error_cancelled", PRE_NF, (), False, 302, Y)),
    ("C11", {**NO_CONT, "pre_error": PRE_PERM, **STOPPED},
     ("none", "pre_script_error_cancelled", PRE_PERM, (), False, 306, Y)),
    ("C12", {**NO_CONT, "pre_error": PRE_FAIL, **STOPPED},
     ("none", "pre_script_error_cancelled", PRE_FAIL, (), False, 300, Y)),
    ("C13", {**NO_CONT, "pre_error": PRE_TO, **STOPPED},
     ("none", "pre_script_error_cancelled", PRE_TO, (), False, 308, Y)),
    ("C54", {"config_warnings": (CONV,)},
     ("application", "application_consistent", CONV, (CONV,), True, 0, Y)),
    ("C55", {"config_warnings": (ADJ, CONV), "post_error": POST_FAIL},
     ("application", "application_consistent", POST_FAIL, (ADJ, CONV, POST_FAIL), True, 0, Y)),
    ("C56", {"config_warnings": (ADJ,), **NO_CONT, "pre_error": PRE_FAIL, **STOPPED},
     ("none", "pre_script_error_cancelled", PRE_FAIL, (ADJ,), False, 300, Y)),
    # --- fsFreezeEnabled = false ---
    ("C14", {**NO_FRZ, "freeze_attempted": False},
     ("filesystem", "freeze_disabled", None, (), True, 1, G)),
    ("C15", {**NO_FRZ, "pre_error": PRE_FAIL, **STOPPED},
     ("none", "pre_script_error_freeze_disabled", PRE_FAIL, (), False, 300, Y)),
    ("C16", {**NO_FRZ, **NO_CONT, "pre_error": PRE_TO, **STOPPED},
     ("none", "pre_script_error_cancelled", PRE_TO, (), False, 308, Y)),
    ("C17", {**NO_FRZ, "freeze_attempted": False, "post_error": POST_FAIL},
     ("filesystem", "freeze_disabled", POST_FAIL, (POST_FAIL,), True, 1, Y)),
    # --- freeze ---
    ("C18", {"config_state": "absent", "freeze_ok": False, "freeze_error": FRZ, **ONE_DISK},
     ("crash", "freeze_failed_crash_fallback", FRZ, (FRZ,), True, 1, Y)),
    ("C19", {"freeze_ok": False, "freeze_error": FRZ, **ONE_DISK},
     ("crash", "freeze_failed_crash_fallback", FRZ, (FRZ,), True, 1, Y)),
    ("C20", {"freeze_ok": False, "freeze_error": FRZ, "disks_ok": 0},
     ("none", "freeze_failed", FRZ, (), False, 121, Y)),
    ("C21", {"freeze_ok": False, "freeze_error": MNT, "disks_ok": 0},
     ("none", "freeze_failed", MNT, (), False, 123, Y)),
    ("C22", {"freeze_ok": False, "freeze_error": FRZ, "single_disk_crash_fallback": False,
             "disks_ok": 0, "disks_total": 1},
     ("none", "freeze_failed", FRZ, (), False, 121, Y)),
    ("C23", {"freeze_ok": False, "freeze_error": None, "disks_ok": 0},
     ("none", "freeze_failed", FRZ, (), False, 121, Y)),
    ("C24", {"freeze_timed_out": True, **ONE_DISK},
     ("crash", "freeze_timeout", FRZ_TO, (FRZ_TO,), True, 1, Y)),
    ("C25", {"freeze_attempted": False, "freeze_ok": False},
     ("crash", "no_freezable_mounts", None, (), True, 1, G)),
    ("C26", {"config_state": "invalid", "config_error": CFG_JSON, "freeze_ok": False,
             "freeze_error": FRZ, "disks_ok": 0},
     ("none", "freeze_failed", FRZ, (CFG_JSON,), False, 121, Y)),
    ("C27", {"pre_error": PRE_FAIL, "freeze_timed_out": True, **ONE_DISK},
     ("crash", "freeze_timeout", FRZ_TO, (PRE_FAIL, FRZ_TO), True, 1, Y)),
    ("C28", {"pre_error": PRE_NF, "freeze_ok": False, "freeze_error": FRZ, **ONE_DISK},
     ("crash", "freeze_failed_crash_fallback", FRZ, (PRE_NF, FRZ), True, 1, Y)),
    ("C51", {"freeze_timed_out": True},
     ("none", "freeze_timeout_multi_disk", FRZ_TO, (), False, 122, Y)),
    ("C52", {"freeze_timed_out": True, "single_disk_crash_fallback": False, **ONE_DISK},
     ("none", "freeze_timeout_multi_disk", FRZ_TO, (), False, 122, Y)),
    ("C53", {"pre_error": PRE_FAIL, "freeze_timed_out": True, "post_error": POST_FAIL},
     ("none", "freeze_timeout_multi_disk", FRZ_TO, (PRE_FAIL, POST_FAIL),
      False, 122, Y)),
    ("C58", {"freeze_not_owned": True, **ONE_DISK},
     ("crash", "freeze_not_owned", NOT_OWNED, (NOT_OWNED,), True, 1, Y)),
    ("C59", {"freeze_not_owned": True, "disks_ok": 0},
     ("none", "freeze_not_owned_multi_disk", NOT_OWNED, (), False, 124, Y)),
    ("C60", {"freeze_not_owned": True, "single_disk_crash_fallback": False,
             "disks_ok": 0, "disks_total": 1},
     ("none", "freeze_not_owned_multi_disk", NOT_OWNED, (), False, 124, Y)),
    ("C61", {"pre_error": PRE_FAIL, "freeze_not_owned": True, **ONE_DISK},
     ("crash", "freeze_not_owned", NOT_OWNED, (PRE_FAIL, NOT_OWNED), True, 1, Y)),
    ("C62", {"freeze_ok": False, "freeze_error": FRZ, "freeze_not_owned": True, **ONE_DISK},
     ("crash", "freeze_failed_crash_fallback", FRZ, (FRZ,), True, 1, Y)),
    # --- built-in database quiescing (workload.conf) ---
    ("C64", {"workload_error": WL_QUIESCE},
     ("filesystem", "workload_not_quiesced", WL_QUIESCE, (WL_QUIESCE,), True, 1, Y)),
    ("C65", {"workload_error": WL_TIMEOUT},
     ("filesystem", "workload_not_quiesced", WL_TIMEOUT, (WL_TIMEOUT,), True, 1, Y)),
    ("C66", {"workload_error": WL_UNSUP},
     ("filesystem", "workload_not_quiesced", WL_UNSUP, (WL_UNSUP,), True, 1, Y)),
    ("C67", {"workload_error": WL_QUIESCE, "freeze_ok": False, "freeze_error": FRZ, **ONE_DISK},
     ("crash", "freeze_failed_crash_fallback", FRZ, (WL_QUIESCE, FRZ), True, 1, Y)),
    ("C68", {"workload_error": WL_CONN, "disks_ok": 0, "snapshot_error": SNAP},
     ("none", "all_snapshots_failed", SNAP, (WL_CONN,), False, 76, R)),
    # --- snapshot ---
    ("C29", {"disks_ok": 0, "snapshot_error": SNAP},
     ("none", "all_snapshots_failed", SNAP, (), False, 76, R)),
    ("C30", {"disks_ok": 0, "snapshot_error": RATE},
     ("none", "all_snapshots_failed", RATE, (), False, 173, G)),
    ("C31", {"disks_ok": 0, "snapshot_error": LIMIT},
     ("none", "all_snapshots_failed", LIMIT, (), False, 85, R)),
    ("C63", {**STOPPED, "snapshot_error": E.COMMAND_TOO_LATE},
     ("none", "all_snapshots_failed", E.COMMAND_TOO_LATE, (), False, 402, R)),
    ("C32", {"disks_ok": 0, "snapshot_error": None},
     ("none", "all_snapshots_failed", SNAP, (), False, 76, R)),
    ("C33", {"disks_ok": 1, "snapshot_error": PART},
     ("none", "snapshot_partially_failed", PART, (), False, 761, R)),
    ("C34", {"disks_ok": 1, "snapshot_error": RATE},
     ("none", "snapshot_partially_failed", PART, (RATE,), False, 761, R)),
    ("C35", {"freeze_ok": False, "freeze_error": FRZ, "disks_ok": 0, "disks_total": 1,
             "snapshot_error": SNAP},
     ("none", "all_snapshots_failed", SNAP, (FRZ,), False, 76, R)),
    ("C36", {"snapshot_error": RATE},
     ("application", "application_consistent", RATE, (RATE,), True, 0, G)),
    # --- post-script and thaw ---
    ("C37", {"post_error": POST_FAIL},
     ("application", "application_consistent", POST_FAIL, (POST_FAIL,), True, 0, Y)),
    ("C38", {"post_error": POST_TO},
     ("application", "application_consistent", POST_TO, (POST_TO,), True, 0, Y)),
    ("C39", {**NO_CONT, "post_error": POST_FAIL},
     ("application", "application_consistent", POST_FAIL, (POST_FAIL,), True, 0, Y)),
    ("C40", {"config_state": "absent", "post_error": POST_FAIL},
     ("filesystem", "no_plugin_config", POST_FAIL, (POST_FAIL,), True, 1, Y)),
    ("C41", {"thaw_error": THAW},
     ("application", "application_consistent", THAW, (THAW,), True, 0, G)),
    ("C42", {"thaw_error": THAW, "post_error": POST_FAIL},
     ("application", "application_consistent", THAW, (THAW, POST_FAIL), True, 0, Y)),
    ("C43", {**NO_CONT, "pre_error": PRE_FAIL, "post_error": POST_FAIL,
             **STOPPED},
     ("none", "pre_script_error_cancelled", PRE_FAIL, (POST_FAIL,), False, 300, Y)),
    ("C44", {"freeze_ok": False, "freeze_error": FRZ, "disks_ok": 0, "thaw_error": THAW},
     ("none", "freeze_failed", FRZ, (THAW,), False, 121, Y)),
    ("C45", {"disks_ok": 0, "snapshot_error": SNAP, "thaw_error": THAW},
     ("none", "all_snapshots_failed", SNAP, (THAW,), False, 76, R)),
    # --- inputs a decision makes irrelevant, and impossible counts ---
    ("C46", {"config_state": "invalid", "config_error": None},
     ("filesystem", "plugin_config_invalid", CFG_JSON, (CFG_JSON,), True, 1, Y)),
    ("C47", {"config_state": "absent", "pre_error": PRE_FAIL, **NO_FRZ},
     ("filesystem", "no_plugin_config", None, (), True, 1, G)),
    ("C48", {**NO_FRZ, "freeze_ok": False, "freeze_error": FRZ,
             "thaw_error": THAW},
     ("filesystem", "freeze_disabled", None, (), True, 1, G)),
    ("C49", {"disks_ok": 0, "disks_total": 0},
     ("none", "no_disks", NO_DISKS, (), False, 17, G)),
    ("C50", {"disks_ok": 3, "disks_total": 2},
     ("application", "application_consistent", None, (), True, 0, G)),
    ("C57", {"config_state": "invalid", "config_error": CFG_JSON, "config_warnings": (ADJ,)},
     ("filesystem", "plugin_config_invalid", CFG_JSON, (CFG_JSON,), True, 1, Y)),
]  # fmt: skip


def _run(overrides: dict[str, Any]) -> Verdict:
    return verdict(**{**BASE, **overrides})


@pytest.mark.parametrize(("case", "overrides", "expected"), CASES, ids=[c[0] for c in CASES])
def test_case(case: str, overrides: dict[str, Any], expected: tuple[Any, ...]) -> None:
    v = _run(overrides)
    consistency, reason, error, warnings, taken, status, health = expected
    assert v == Verdict(
        consistency=consistency,
        reason=reason,
        error=error,
        warnings=warnings,
        snapshot_taken=taken,
        status_code=status,
        health=health,
    ), case


def _cell(error: ErrorCode | None) -> str:
    return error.value if error is not None else "—"


def _doc_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\|\s*(C\d\d)\s*\|", line)
        if match:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert match.group(1) not in rows, f"duplicate row {match.group(1)}"
            rows[match.group(1)] = cells
    return rows


def test_doc_table_matches_the_test_table() -> None:
    rows = _doc_rows()
    assert sorted(rows) == sorted(c[0] for c in CASES)
    for case, _, (consistency, reason, error, warnings, taken, status, health) in CASES:
        cells = rows[case]
        # Case, Inputs, Consistency, Reason, Error, Warnings, Snapshot, Status, Health, Ref.
        assert len(cells) == 10, case
        expected = [
            consistency,
            f"`{reason}`",
            _cell(error),
            ", ".join(w.value for w in warnings) or "—",
            "yes" if taken else "no",
            str(status),
            health.name.lower(),
        ]
        assert cells[2:9] == expected, case
        assert cells[9], f"{case}: say what the reference does (or 'same')"


def test_every_reason_is_covered_by_a_case() -> None:
    # settings_invalid comes from settings_rejected() and job_already_running from
    # job_refused(), both tested below, not from verdict().
    assert {c[2][1] for c in CASES} == REASONS - {"settings_invalid", "job_already_running"}


# --- the two decisions on their own ---


def test_pre_script_decisions() -> None:
    def decide(**kw: Any) -> ProceedDecision:
        args: dict[str, Any] = {
            "config_state": "valid",
            "config_error": None,
            "continue_on_failure": True,
            "fs_freeze_enabled": True,
            "pre_error": None,
        }
        return decide_after_pre_script(**{**args, **kw})

    assert decide() == ProceedDecision(True, True, "pre_script_ok", None)
    assert decide(config_state="absent") == ProceedDecision(True, True, "no_plugin_config", None)
    assert decide(config_state="invalid", config_error=E.INCORRECT_PLUGINHOST_FILE) == (
        ProceedDecision(True, True, "plugin_config_invalid", E.INCORRECT_PLUGINHOST_FILE)
    )
    assert decide(fs_freeze_enabled=False) == ProceedDecision(True, False, "freeze_disabled", None)
    assert decide(pre_error=E.PRE_SCRIPT_TIMEOUT) == (
        ProceedDecision(True, True, "pre_script_error_continued", E.PRE_SCRIPT_TIMEOUT)
    )
    assert decide(pre_error=E.PRE_SCRIPT_FAILED, continue_on_failure=False) == (
        ProceedDecision(False, False, "pre_script_error_cancelled", E.PRE_SCRIPT_FAILED)
    )
    assert decide(pre_error=E.PRE_SCRIPT_FAILED, fs_freeze_enabled=False) == (
        ProceedDecision(False, False, "pre_script_error_freeze_disabled", E.PRE_SCRIPT_FAILED)
    )


def test_freeze_decisions() -> None:
    ok = decide_after_freeze(freeze_ok=True, freeze_error=None, disk_count=3)
    assert ok == ProceedDecision(True, True, "frozen", None)
    single = decide_after_freeze(freeze_ok=False, freeze_error=E.FS_FREEZE_TIMEOUT, disk_count=1)
    assert single == ProceedDecision(
        True, False, "freeze_failed_crash_fallback", E.FS_FREEZE_TIMEOUT
    )
    multi = decide_after_freeze(freeze_ok=False, freeze_error=None, disk_count=2)
    assert multi == ProceedDecision(False, False, "freeze_failed", E.FS_FREEZE_FAILED)
    no_fallback = decide_after_freeze(
        freeze_ok=False, freeze_error=None, disk_count=1, single_disk_crash_fallback=False
    )
    assert not no_fallback.proceed
    not_owned = decide_after_freeze(
        freeze_ok=True, freeze_error=None, disk_count=1, freeze_not_owned=True
    )
    assert not_owned == ProceedDecision(True, False, "freeze_not_owned", E.FS_FREEZE_NOT_OWNED)
    not_owned_multi = decide_after_freeze(
        freeze_ok=True, freeze_error=None, disk_count=2, freeze_not_owned=True
    )
    assert not_owned_multi == ProceedDecision(
        False, False, "freeze_not_owned_multi_disk", E.FS_FREEZE_NOT_OWNED
    )


# --- properties over every input ---

_codes = st.one_of(st.none(), st.sampled_from(list(ErrorCode)))


@settings(max_examples=1500, deadline=None)
@given(
    config_state=st.sampled_from(["absent", "invalid", "valid"]),
    config_error=_codes,
    continue_on_failure=st.booleans(),
    fs_freeze_enabled=st.booleans(),
    pre_error=_codes,
    freeze_attempted=st.booleans(),
    freeze_ok=st.booleans(),
    freeze_error=_codes,
    freeze_timed_out=st.booleans(),
    snapshot_error=_codes,
    disks_ok=st.integers(-3, 70),
    disks_total=st.integers(-3, 70),
    post_error=_codes,
    thaw_error=_codes,
    single_disk_crash_fallback=st.booleans(),
    config_warnings=st.lists(st.sampled_from([ADJ, CONV]), max_size=3).map(tuple),
    freeze_not_owned=st.booleans(),
    workload_error=_codes,
)
def test_verdict_is_total_and_coherent(**kw: Any) -> None:
    v = verdict(**kw)
    assert v.reason in REASONS
    assert v.snapshot_taken == (v.consistency != "none")
    codes = [*v.warnings, *([v.error] if v.error else [])]
    assert v.health == max((c.health for c in codes), default=Health.GREEN)
    assert len(set(v.warnings)) == len(v.warnings)
    if v.snapshot_taken:
        assert v.status_code == (0 if v.consistency == "application" else 1)
        assert (v.error is None) == (not v.warnings)
        assert v.error is None or v.error in v.warnings
    else:
        assert v.error is not None
        assert v.error not in v.warnings
        assert v.status_code == v.error.code
    # Never success with every disk failed, never a restore point from part of the set.
    if kw["disks_total"] > 0 and kw["disks_ok"] < kw["disks_total"]:
        assert v.consistency == "none"
    if v.consistency == "application":
        assert kw["config_state"] == "valid" and kw["pre_error"] is None
        assert kw["freeze_attempted"] and kw["freeze_ok"] and not kw["freeze_timed_out"]
        # Never a freeze someone else held (issue 11).
        assert not kw["freeze_not_owned"]
        # Never a quiesce that failed, timed out or was not supported (issue 14).
        assert kw["workload_error"] is None
    # A tolerated config is reported, never a stop, and only when it was used
    # (when no other input carries one of its codes).
    others = (
        "config_error",
        "pre_error",
        "freeze_error",
        "snapshot_error",
        "post_error",
        "workload_error",
    )
    if not {kw[k] for k in (*others, "thaw_error")} & {ADJ, CONV}:
        tolerated = set(kw["config_warnings"]) if kw["config_state"] == "valid" else set()
        assert {w for w in (*v.warnings, v.error) if w in (ADJ, CONV)} == tolerated
    if v.consistency == "crash":
        # Only one disk is atomic without a freeze covering every snapshot.
        assert v.reason == "no_freezable_mounts" or (
            kw["disks_total"] == 1 and kw["single_disk_crash_fallback"]
        )


@settings(max_examples=300, deadline=None)
@given(
    config_state=st.sampled_from(["absent", "invalid", "valid"]),
    config_error=_codes,
    continue_on_failure=st.booleans(),
    fs_freeze_enabled=st.booleans(),
    pre_error=_codes,
    freeze_ok=st.booleans(),
    freeze_error=_codes,
    disk_count=st.integers(-1, 70),
)
def test_decisions_are_total(**kw: Any) -> None:
    pre = decide_after_pre_script(
        config_state=kw["config_state"],
        config_error=kw["config_error"],
        continue_on_failure=kw["continue_on_failure"],
        fs_freeze_enabled=kw["fs_freeze_enabled"],
        pre_error=kw["pre_error"],
    )
    after = decide_after_freeze(
        freeze_ok=kw["freeze_ok"], freeze_error=kw["freeze_error"], disk_count=kw["disk_count"]
    )
    for d in (pre, after):
        assert d.reason in DECISION_REASONS
        assert d.proceed or d.error is not None


def test_settings_rejected_is_a_none_verdict_with_the_settings_code() -> None:
    from snapshot_runtime.core.consistency import settings_rejected

    v = settings_rejected(ErrorCode.INVALID_SETTINGS)
    assert (v.consistency, v.reason, v.error, v.snapshot_taken) == (
        "none",
        "settings_invalid",
        ErrorCode.INVALID_SETTINGS,
        False,
    )
    assert v.status_code == 11 and v.reason in REASONS


def test_job_refused_is_a_none_verdict_with_the_lock_code() -> None:
    from snapshot_runtime.core.consistency import job_refused

    v = job_refused(ErrorCode.JOB_ALREADY_RUNNING)
    assert (v.consistency, v.reason, v.error, v.snapshot_taken, v.warnings) == (
        "none",
        "job_already_running",
        ErrorCode.JOB_ALREADY_RUNNING,
        False,
        (),
    )
    assert v.status_code == 14 and v.reason in REASONS
