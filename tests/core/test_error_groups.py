"""The metric group of every error code (issue 16: errors labelled by group)."""

from __future__ import annotations

from snapshot_runtime.core.errors import ERROR_GROUPS, OTHER_ERROR_GROUP, ErrorCode, error_group


def test_every_code_is_in_exactly_one_group() -> None:
    grouped = [code for codes in ERROR_GROUPS.values() for code in codes]
    assert sorted(c.value for c in grouped) == sorted(c.value for c in ErrorCode)


def test_the_group_is_found_by_enum_or_public_name() -> None:
    assert error_group(ErrorCode.PRE_SCRIPT_TIMEOUT) == "pre_script"
    assert error_group("Pre-ScriptTimeout") == "pre_script"
    assert error_group("Post-ScriptTimeout") == "post_script"
    assert error_group("FsFreezeTimeout") == "freeze"
    assert error_group("SnapshotPartiallyFailed") == "snapshot"
    assert error_group("FailedWorkloadConnectionError") == "workload"
    assert error_group("PluginConfigValueAdjusted") == "plugin_config"
    assert error_group("InvalidSettings") == "settings"
    assert error_group("StatusUploadFailed") == "host"
    assert error_group("InternalError") == OTHER_ERROR_GROUP


def test_a_name_this_runtime_does_not_know_is_other() -> None:
    assert error_group("NotACode") == OTHER_ERROR_GROUP
    assert error_group("") == OTHER_ERROR_GROUP


def test_at_most_nine_groups() -> None:
    # Each group costs a series per VM in two counters (errors, warnings).
    assert len(ERROR_GROUPS) == 9
