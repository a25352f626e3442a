"""core.retention.files_to_prune: the pure decision (keep N newest, max age, protected)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapshot_runtime.core.retention import RetainedFile, RetentionPolicy, files_to_prune

DAY = 86400.0
NOW = 1_800_000_000.0


def _files(ages_days: list[float]) -> list[RetainedFile]:
    return [RetainedFile(f"f{i}", NOW - age * DAY) for i, age in enumerate(ages_days)]


def test_keeps_the_n_newest_and_lists_the_rest_oldest_first() -> None:
    files = _files([5, 1, 3, 2, 4])  # f1 newest ... f0 oldest
    doomed = files_to_prune(files, RetentionPolicy(keep=2, max_age_days=None), now=NOW)
    assert doomed == ["f0", "f4", "f2"]


def test_max_age_prunes_old_files_even_within_the_count() -> None:
    files = _files([0.5, 10, 40, 100])
    doomed = files_to_prune(files, RetentionPolicy(keep=60, max_age_days=30), now=NOW)
    assert doomed == ["f3", "f2"]


def test_the_newest_file_stays_however_old() -> None:
    """The last job's record is kept even when no job ran for longer than max age."""
    files = _files([400, 500, 600])
    doomed = files_to_prune(files, RetentionPolicy(keep=1, max_age_days=30), now=NOW)
    assert doomed == ["f2", "f1"]


def test_a_protected_name_never_goes_and_still_takes_its_rank() -> None:
    files = _files([9, 1, 2, 3])  # f0 is the oldest but protected (the agent's current seq)
    doomed = files_to_prune(
        files, RetentionPolicy(keep=2, max_age_days=5), now=NOW, protected={"f0"}
    )
    assert doomed == ["f3"]  # f1, f2 kept by count; f0 protected; f3 beyond the count


def test_both_limits_off_prunes_nothing() -> None:
    policy = RetentionPolicy(keep=None, max_age_days=None)
    assert not policy.enabled
    assert files_to_prune(_files([1, 1000, 5000]), policy, now=NOW) == []


def test_equal_times_give_one_order() -> None:
    files = [RetainedFile(name, NOW) for name in ("b", "c", "a")]
    doomed = files_to_prune(files, RetentionPolicy(keep=1, max_age_days=None), now=NOW)
    assert doomed == ["a", "b"]  # "c" ranks first (name breaks the tie); the rest go


@pytest.mark.parametrize(
    ("keep", "days"), [(0, None), (-1, None), (None, 0.0), (None, -1.0), (None, float("nan"))]
)
def test_invalid_policies_are_refused(keep: int | None, days: float | None) -> None:
    with pytest.raises(ValueError):
        RetentionPolicy(keep=keep, max_age_days=days)


@given(
    ages=st.lists(st.floats(min_value=0, max_value=1000), max_size=40),
    keep=st.one_of(st.none(), st.integers(min_value=1, max_value=50)),
    days=st.one_of(st.none(), st.floats(min_value=0.01, max_value=500)),
    protected=st.sets(st.integers(min_value=0, max_value=40), max_size=5),
)
def test_properties(
    ages: list[float], keep: int | None, days: float | None, protected: set[int]
) -> None:
    files = _files(ages)
    names = {f"f{i}" for i in protected}
    doomed = files_to_prune(
        files, RetentionPolicy(keep=keep, max_age_days=days), now=NOW, protected=names
    )
    kept = [f for f in files if f.name not in doomed]
    assert len(set(doomed)) == len(doomed) <= len(files)
    assert not names & set(doomed)
    if files:
        newest = max(files, key=lambda f: (f.mtime, f.name))
        assert newest.name not in doomed
    if keep is not None:
        # Beyond the protected ones, never more than keep survive...
        assert len([f for f in kept if f.name not in names]) <= max(keep, 1)
    if keep is not None and days is None:
        # ...and with no age limit, exactly the keep newest do.
        assert len(kept) >= min(keep, len(files))
    if days is not None:
        cutoff = NOW - days * DAY
        old_survivors = [f for f in kept if f.mtime < cutoff]
        assert all(f.name in names or f is newest for f in old_survivors)
