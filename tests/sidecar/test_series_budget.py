"""Issue 16: at most 150 series per VM in the worst case.

A real sidecar (the Rig) ingests spool jobs that between them carry every
label value the runtime can emit -- every outcome, consistency and reason,
every ErrorCode as an error and as a warning, every phase, script, thaw
trigger, disk failure kind, spool loss kind, watchdog reason, both snapshot
paths -- plus values it cannot emit (bounded to ``other``/``Unknown``). The
scrape is then counted per family (exposition lines, comments and
``_created`` excluded) and compared with ``SERIES_COST``, the budget table
docs/telemetry.md publishes. A new label value or bucket changes a family's
count and fails here until its cost is written into the table and paid for
within ``BUDGET`` less ``MARGIN``.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

from prometheus_client.exposition import generate_latest
from snapshot_sidecar.metrics import BLOB_KINDS, FAMILY_BY_NAME, THAWED_BY

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.core.phases import PHASES
from tests.sidecar.conftest import Rig

BUDGET = 150
# What the table must leave free below the budget (the lead's margin for what
# lands next).
MARGIN = 5

# Worst-case series per family (histograms: buckets + +Inf + _sum + _count,
# per label combination). docs/telemetry.md "Series budget" is this table.
SERIES_COST: dict[str, int] = {
    "vmsnap_jobs_total": 8,  # outcome(2) x consistency(4)
    "vmsnap_job_errors_total": 9,  # 9 error groups (core/errors.py ERROR_GROUPS)
    "vmsnap_job_warnings_total": 9,  # 9 error groups
    "vmsnap_last_job_info": 1,  # the latest job's exact code; absent before the first job
    "vmsnap_jobs_abandoned_total": 1,
    "vmsnap_job_duration_seconds": 6,  # 3 buckets
    "vmsnap_freeze_duration_seconds": 10,  # 7 buckets (the SLO thresholds)
    "vmsnap_freezes_total": 3,
    "vmsnap_freeze_timeouts_total": 1,
    "vmsnap_phase_seconds_total": 10,  # 10 phases
    "vmsnap_script_runs_total": 2,
    "vmsnap_script_retries_total": 2,
    "vmsnap_script_timeouts_total": 2,
    "vmsnap_script_failures_total": 2,
    "vmsnap_script_duration_seconds": 6,  # 3 buckets, no script label
    "vmsnap_disk_snapshot_attempts_total": 1,
    "vmsnap_disk_snapshot_failures_total": 4,  # retryable, auth, not_found, other
    "vmsnap_disk_snapshot_duration_seconds": 7,  # 4 buckets
    "vmsnap_last_success_timestamp_seconds": 1,
    "vmsnap_last_job_timestamp_seconds": 1,
    "vmsnap_build_info": 1,
    "vmsnap_spool_dropped_total": 2,
    "vmsnap_watchdog_thaws_total": 3,  # eof, deadline, other
    "vmsnap_backstop_thaws_total": 1,
    "vmsnap_backstop_thaw_attempts_total": 3,
    "vmsnap_sidecar_records_ingested_total": 1,
    "vmsnap_sidecar_records_invalid_total": 1,
    "vmsnap_sidecar_jobs_quarantined_total": 1,
    "vmsnap_sidecar_watchdog_reports_invalid_total": 1,
    "vmsnap_sidecar_log_mirror_bytes_total": 1,
    "vmsnap_sidecar_log_mirror_errors_total": 5,  # retryable, auth, not_found, conflict, other
    "vmsnap_sidecar_log_mirror_abandoned_total": 1,
    "vmsnap_sidecar_log_mirror_backlog_bytes": 1,
    "vmsnap_sidecar_spans_exported_total": 1,
    "vmsnap_sidecar_span_export_errors_total": 1,
    "vmsnap_sidecar_spans_dropped_total": 3,
    "vmsnap_sidecar_span_backlog_bytes": 1,
    "vmsnap_sidecar_spool_jobs": 1,
    "vmsnap_sidecar_ingest_lag_seconds": 1,
    "vmsnap_sidecar_errors_total": 6,  # 5 loops + collector
    "vmsnap_sidecar_state_write_errors_total": 1,
    "process": 3,  # RSS, CPU seconds, open fds
    # The host path (docs/host-snapshot.md).
    "vmsnap_snapshot_jobs_total": 4,  # path(2) x outcome(2)
    "vmsnap_snapshot_runs_total": 2,  # path(2)
    "vmsnap_snapshot_seconds_total": 2,  # path(2)
    # presnapshot_unreachable / presnapshot_failed / guest_failed (firstGuestThenHost)
    "vmsnap_snapshot_fallbacks_total": 3,
    # Workload quiescing (docs/workloads.md): 2 buckets, +Inf, sum, count.
    "vmsnap_workload_write_stall_seconds": 5,
}

# Paid in advance for work landing in parallel (none open now: the host path's
# and the workload stall histogram's series are in SERIES_COST).
RESERVED: dict[str, int] = {}

# Every consistency reason core/consistency.py can put in a record.
REASONS: dict[str, tuple[str, ...]] = {
    "application": ("application_consistent",),
    "filesystem": (
        "freeze_disabled",
        "no_plugin_config",
        "pre_script_error_continued",
    ),
    "crash": (
        "no_freezable_mounts",
        "freeze_not_owned",
        "freeze_failed_crash_fallback",
        "freeze_timeout",
    ),
    "none": (
        "pre_script_error_cancelled",
        "pre_script_error_freeze_disabled",
        "freeze_failed",
        "freeze_timeout_multi_disk",
        "no_disks",
        "all_snapshots_failed",
        "snapshot_partially_failed",
        "job_already_running",
        "settings_invalid",
    ),
}
# One value below, between and above every bucket boundary any family uses.
DURATIONS = (0.001, 0.02, 0.3, 0.7, 3.0, 7.0, 12.0, 25.0, 45.0, 90.0, 200.0, 900.0, 4000.0)
SNAPSHOT_PATHS = ("guest", "host")


def _feed_every_label_value(rig: Rig) -> int:
    """Write jobs and watchdog reports covering every label value; return the job count."""
    codes = [code.value for code in ErrorCode]
    jobs = 0

    def job(**kwargs: object) -> None:
        nonlocal jobs
        rig.gen.job(**kwargs)  # type: ignore[arg-type]
        jobs += 1

    for path in SNAPSHOT_PATHS:
        for consistency, reasons in REASONS.items():
            outcome = "failed" if consistency == "none" else "success"
            for reason in reasons:
                job(
                    outcome=outcome,
                    consistency=consistency,
                    extra={
                        "consistency_reason": reason,
                        "snapshot": {
                            "path": path,
                            "fallback": "presnapshot_unreachable" if path == "guest" else None,
                            "seconds": 0.5,
                        },
                    },
                )
    # Values the runtime cannot emit are bounded, never exposed as is.
    job(outcome="exploded", consistency="quantum", error="NotACode", warnings=["NotACode"])
    for code in codes:
        job(outcome="failed", consistency="none", error=code, warnings=codes)
    for seconds in DURATIONS:
        script = {
            "attempts": 3,
            "retries": 2,
            "timed_out": True,
            "exit_codes": [],
            "seconds": seconds,
            "error": "Pre-ScriptTimeout",
        }
        job(
            duration=seconds,
            freeze_seconds=seconds,
            timed_out=True,
            pre=script,
            post=script,
            phases=[*((phase, seconds) for phase in PHASES), ("not_a_phase", seconds)],
            disks=[
                {"index": i, "ok": False, "seconds": seconds, "attempts": 2, "error_kind": kind}
                for i, kind in enumerate((*BLOB_KINDS, "not_a_kind"))
            ],
            dropped={"log_lines": 3, "spans": 4},
        )
    for thawed_by in (*THAWED_BY, "not_a_trigger"):
        job(thawed_by=thawed_by)
    for reason in ("eof", "deadline", "signal 9", "protocol_error", "not_a_reason"):
        rig.gen.watchdog_report(reason=reason)
    return jobs


def _series_per_family(exposition: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            continue
        sample = line.split("{", 1)[0].split(" ", 1)[0]
        if sample.endswith("_created"):
            continue
        family = sample
        for suffix in ("_bucket", "_sum", "_count"):
            base = sample.removesuffix(suffix)
            if base != sample and base in FAMILY_BY_NAME:
                family = base
        if family.startswith("process_"):
            family = "process"
        counts[family] += 1
    return counts


def test_worst_case_series_per_family_match_the_budget_table(rig: Rig) -> None:
    fresh = rig.sidecar()
    fresh_counts = _series_per_family(generate_latest(rig.registry(fresh)).decode())
    jobs = _feed_every_label_value(rig)
    fresh.close()
    sidecar = rig.sidecar()
    sidecar.run_once()
    assert rig.value(sidecar, "vmsnap_sidecar_records_ingested_total") == jobs
    # "signal 9", "protocol_error" and an unknown text are all "other".
    assert rig.value(sidecar, "vmsnap_watchdog_thaws_total", reason="other") == 3
    counts = _series_per_family(generate_latest(rig.registry(sidecar)).decode())
    # Zero-initialisation already exposes every known combination: feeding
    # every value adds no series (the bound on label values holds), except the
    # last-job info metric, absent before the first job and one series after.
    assert "vmsnap_last_job_info" not in fresh_counts
    assert counts == fresh_counts + Counter({"vmsnap_last_job_info": 1})
    assert dict(counts) == SERIES_COST


def test_the_budget_table_and_the_reserved_additions_fit_in_150_with_the_margin() -> None:
    spent = sum(SERIES_COST.values())
    reserved = sum(RESERVED.values())
    assert spent + reserved <= BUDGET - MARGIN, (
        f"{spent} spent + {reserved} reserved > {BUDGET} - {MARGIN}"
    )


def test_the_documented_budget_table_is_this_table() -> None:
    # docs/telemetry.md "Series budget": each row's count and running total,
    # and the spent line, agree with SERIES_COST.
    doc = (Path(__file__).resolve().parents[2] / "docs" / "telemetry.md").read_text()
    section = doc[doc.index("### Series budget") :]
    section = section[: section.index("\n### ", 1)]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|[^|]*\| (\d+) \|$", section, re.M)
    assert sum(int(count) for count, _, _ in rows) == sum(SERIES_COST.values())
    running = 0
    for count, family, total in rows:
        running += int(count)
        assert int(total) == running, family
    spent = sum(SERIES_COST.values())
    assert f"| **{spent}** | **spent** |" in section


def test_the_worst_case_scrape_fits_in_150_series(rig: Rig) -> None:
    # The budget line on a real scrape, not on the table: every label value fed.
    _feed_every_label_value(rig)
    sidecar = rig.sidecar()
    sidecar.run_once()
    exposed = sum(_series_per_family(generate_latest(rig.registry(sidecar)).decode()).values())
    assert exposed <= BUDGET - MARGIN, exposed


def test_the_last_job_info_names_the_latest_job_by_end_time_with_its_exact_code(
    rig: Rig,
) -> None:
    rig.gen.job("later", outcome="failed", consistency="none", error="Pre-ScriptTimeout")
    sidecar = rig.sidecar()
    sidecar.run_once()
    labels = {"outcome": "failed", "consistency": "none", "error": "Pre-ScriptTimeout"}
    assert rig.value(sidecar, "vmsnap_last_job_info", **labels) == 1
    # A job that ended earlier but is ingested later does not replace it.
    rig.gen.job("earlier", started_at=time.time() - 3600)
    sidecar.run_once()
    assert rig.value(sidecar, "vmsnap_sidecar_records_ingested_total") == 2
    om = generate_latest(rig.registry(sidecar)).decode()
    info = [line for line in om.splitlines() if line.startswith("vmsnap_last_job_info")]
    assert len(info) == 1, info
    assert 'error="Pre-ScriptTimeout"' in info[0]
    # The error counters carry the group, never the code.
    assert rig.value(sidecar, "vmsnap_job_errors_total", group="pre_script") == 1
    assert 'error="Pre-ScriptTimeout"' not in om.replace(info[0], "")
