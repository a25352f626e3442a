"""A state.json written by the previous sidecar (schema 1) loads, its counts carried over.

Schema 1 labelled errors and warnings by code, mirror and disk failures by
kind, abandons and invalid records by reason, watchdog thaws by five triggers,
kept the phase histogram, script durations per script on six bounds, freeze
durations on nine and the workload stall per workload. Issue 16's series
budget changed those label sets; an upgraded sidecar must neither lose its
counts (a counter that drops looks like a reset to rate()) nor refuse to start.
"""

from __future__ import annotations

import json

from snapshot_sidecar.state import STATE_FILE, STATE_VERSION, Ledger

from tests.sidecar.conftest import Rig

TRACE = "ab" * 16

# As the previous sidecar wrote it (field layout of metrics.MetricValues.to_json).
SCHEMA_1_STATE = {
    "schema": "snapshot-sidecar/state",
    "schema_version": 1,
    "metrics": {
        "counters": {
            "vmsnap_jobs_total": [[["failed", "none"], 3], [["success", "application"], 5]],
            "vmsnap_job_errors_total": [
                [["Pre-ScriptTimeout"], 2],
                [["Pre-ScriptExecutionFailed"], 1],
                [["Unknown"], 4],
            ],
            "vmsnap_job_warnings_total": [[["FsFreezeTimeout"], 1], [["SnapshotFailed"], 2]],
            "vmsnap_sidecar_log_mirror_errors_total": [
                [["throttled"], 1],
                [["timeout"], 2],
                [["auth"], 3],
                [["conflict"], 4],
                [["expired"], 5],
                [["limit"], 6],
            ],
            "vmsnap_sidecar_log_mirror_abandoned_total": [[["auth"], 1], [["expired"], 2]],
            "vmsnap_sidecar_records_invalid_total": [[["json"], 1], [["schema"], 2]],
            "vmsnap_watchdog_thaws_total": [
                [["eof"], 1],
                [["signal"], 2],
                [["protocol_error"], 3],
            ],
            "vmsnap_disk_snapshot_failures_total": [[["throttled"], 1], [["limit"], 2]],
            "vmsnap_disk_snapshots_total": [[[], 9]],
            "vmsnap_sidecar_log_mirror_lines_total": [[[], 77]],
            "vmsnap_sidecar_records_ingested_total": [[[], 8]],
        },
        "gauges": {"vmsnap_last_success_timestamp_seconds": [[[], 1700000000.0]]},
        "histograms": {
            "vmsnap_phase_duration_seconds": [
                [["snapshot"], {"counts": [4], "sum": 1.5, "exemplars": [[0, TRACE, 0.4, 10.0]]}],
                [["freeze"], {"counts": [4], "sum": 0.25, "exemplars": []}],
            ],
            # Bounds 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 (+Inf).
            "vmsnap_freeze_duration_seconds": [
                [
                    [],
                    {
                        "counts": [1, 2, 0, 0, 3, 0, 1, 0, 0, 1],
                        "sum": 100.0,
                        "exemplars": [[1, "11" * 16, 0.2, 5.0], [4, TRACE, 2.0, 7.0]],
                    },
                ]
            ],
            # Bounds 1, 10, 30, 60, 300, 1800 (+Inf), per script.
            "vmsnap_script_duration_seconds": [
                [["pre"], {"counts": [1, 1, 1, 0, 0, 1, 0], "sum": 1000.0, "exemplars": []}],
                [["post"], {"counts": [2, 0, 0, 1, 0, 0, 1], "sum": 2000.0, "exemplars": []}],
            ],
            "vmsnap_workload_write_stall_seconds": [
                [["mariadb"], {"counts": [1, 1, 0], "sum": 0.5, "exemplars": []}],
                [["mysql"], {"counts": [0, 0, 1], "sum": 3.0, "exemplars": []}],
            ],
        },
    },
    "jobs": {"job-a": {"run": "r1", "complete": True, "log": {"status": "done"}}},
    "watchdog_seen": ["w1"],
}


def test_a_schema_1_state_file_loads_with_its_counts_on_the_new_labels(rig: Rig) -> None:
    rig.state.mkdir(parents=True, exist_ok=True)
    (rig.state / STATE_FILE).write_text(json.dumps(SCHEMA_1_STATE))
    sidecar = rig.sidecar()
    assert sidecar.ledger.reset_reason is None  # not set aside as unreadable
    v = lambda name, **labels: rig.value(sidecar, name, **labels)  # noqa: E731

    assert v("vmsnap_jobs_total", outcome="success", consistency="application") == 5
    assert v("vmsnap_sidecar_records_ingested_total") == 8
    assert v("vmsnap_last_success_timestamp_seconds") == 1700000000.0
    # Codes summed into their groups; "Unknown" is "other".
    assert v("vmsnap_job_errors_total", group="pre_script") == 3
    assert v("vmsnap_job_errors_total", group="other") == 4
    assert v("vmsnap_job_warnings_total", group="freeze") == 1
    assert v("vmsnap_job_warnings_total", group="snapshot") == 2
    # Mirror errors: throttled + timeout retryable; expired + limit other.
    assert v("vmsnap_sidecar_log_mirror_errors_total", error="retryable") == 3
    assert v("vmsnap_sidecar_log_mirror_errors_total", error="auth") == 3
    assert v("vmsnap_sidecar_log_mirror_errors_total", error="conflict") == 4
    assert v("vmsnap_sidecar_log_mirror_errors_total", error="other") == 11
    assert v("vmsnap_sidecar_log_mirror_abandoned_total") == 3
    assert v("vmsnap_sidecar_records_invalid_total") == 3
    assert v("vmsnap_watchdog_thaws_total", reason="eof") == 1
    assert v("vmsnap_watchdog_thaws_total", reason="other") == 5
    assert v("vmsnap_disk_snapshot_failures_total", kind="retryable") == 1
    assert v("vmsnap_disk_snapshot_failures_total", kind="other") == 2
    # The phase histogram's sum is the seconds counter.
    assert v("vmsnap_phase_seconds_total", phase="snapshot") == 1.5
    assert v("vmsnap_phase_seconds_total", phase="freeze") == 0.25
    # Freeze: re-binned exactly onto 0.1, 0.5, 1, 5, 10, 30, 60 (cumulative).
    freeze = {"0.1": 1, "0.5": 3, "1.0": 3, "5.0": 6, "10.0": 7, "30.0": 7, "60.0": 7, "+Inf": 8}
    for le, count in freeze.items():
        assert v("vmsnap_freeze_duration_seconds_bucket", le=le) == count, le
    assert v("vmsnap_freeze_duration_seconds_sum") == 100.0
    # Scripts: both summed, re-binned onto 10, 60, 300.
    script = {"10.0": 4, "60.0": 6, "300.0": 6, "+Inf": 8}
    for le, count in script.items():
        assert v("vmsnap_script_duration_seconds_bucket", le=le) == count, le
    assert v("vmsnap_script_duration_seconds_sum") == 3000.0
    assert v("vmsnap_workload_write_stall_seconds_count") == 3
    assert v("vmsnap_workload_write_stall_seconds_sum") == 3.5
    # The exemplars follow their observations to the new buckets.
    hist = sidecar.ledger.published.histograms["vmsnap_freeze_duration_seconds"][()]
    assert hist.exemplars == {1: ("11" * 16, 0.2, 5.0), 3: (TRACE, 2.0, 7.0)}
    # Progress is kept: the job is not counted again, the watchdog report not recounted.
    assert sidecar.ledger.state.jobs["job-a"].run == "r1"
    assert sidecar.ledger.state.watchdog_seen == {"w1"}


def test_the_migrated_state_is_written_back_as_the_current_schema(rig: Rig) -> None:
    rig.state.mkdir(parents=True, exist_ok=True)
    (rig.state / STATE_FILE).write_text(json.dumps(SCHEMA_1_STATE))
    ledger = Ledger(rig.state)
    with ledger.transaction():
        pass
    doc = json.loads((rig.state / STATE_FILE).read_text())
    assert doc["schema_version"] == STATE_VERSION == 2
    counters = doc["metrics"]["counters"]
    assert "vmsnap_disk_snapshots_total" not in counters
    assert "vmsnap_sidecar_log_mirror_lines_total" not in counters
    assert "vmsnap_phase_duration_seconds" not in doc["metrics"]["histograms"]
    # Loading the written file again changes nothing (no second migration).
    again = Ledger(rig.state)
    assert again.state.metrics.counters == ledger.state.metrics.counters
