"""Metrics from ingested spool jobs: values, zero-init, persistence, exactly-once, exemplars."""

from __future__ import annotations

import json

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from snapshot_sidecar.metrics import CONSISTENCIES, FAMILIES, FREEZE_BUCKETS, OUTCOMES, MetricValues
from snapshot_sidecar.spool_reader import SpoolReader
from snapshot_sidecar.state import STATE_FILE

from snapshot_runtime import __version__
from snapshot_runtime.core.errors import ERROR_GROUPS
from snapshot_runtime.core.phases import PHASES
from snapshot_runtime.telemetry.spool_schema import LOG_FILE
from tests.sidecar.conftest import Rig


def _three_jobs(rig: Rig) -> list[str]:
    ok = rig.gen.job("task-ok", freeze_seconds=0.04)
    timeout = rig.gen.job(
        "task-timeout",
        outcome="failed",
        consistency="none",
        error="Pre-ScriptTimeout",
        freeze_seconds=None,
        pre={
            "attempts": 3,
            "retries": 2,
            "timed_out": True,
            "exit_codes": [],
            "seconds": 30.5,
            "error": "Pre-ScriptTimeout",
        },
        post=None,
        disks=[],
    )
    slow = rig.gen.job(
        "task-slow",
        consistency="filesystem",
        warnings=["Post-ScriptExecutionFailed"],
        freeze_seconds=12.0,
        thawed_by="deadline",
        timed_out=True,
        disks=[
            {"index": 0, "ok": True, "seconds": 0.2, "attempts": 1, "error_kind": None},
            {"index": 1, "ok": False, "seconds": 3.0, "attempts": 4, "error_kind": "throttled"},
        ],
        dropped={"log_lines": 7, "spans": 2},
    )
    return [ok.trace_id, timeout.trace_id, slow.trace_id]


def test_metric_values_after_ingesting_jobs(rig: Rig) -> None:
    _three_jobs(rig)
    sidecar = rig.sidecar()
    sidecar.run_once()
    v = lambda name, **labels: rig.value(sidecar, name, **labels)  # noqa: E731

    assert v("vmsnap_jobs_total", outcome="success", consistency="application") == 1
    assert v("vmsnap_jobs_total", outcome="success", consistency="filesystem") == 1
    assert v("vmsnap_jobs_total", outcome="failed", consistency="none") == 1
    assert v("vmsnap_jobs_total", outcome="failed", consistency="crash") == 0
    # Errors and warnings by group; the exact code of the latest job in the info metric.
    assert v("vmsnap_job_errors_total", group="pre_script") == 1
    assert v("vmsnap_job_errors_total", group="post_script") == 0
    assert v("vmsnap_job_warnings_total", group="post_script") == 1
    assert v("vmsnap_job_warnings_total", group="pre_script") == 0
    assert v("vmsnap_script_runs_total", script="pre") == 1 + 3 + 1
    assert v("vmsnap_script_retries_total", script="pre") == 2
    assert v("vmsnap_script_timeouts_total", script="pre") == 1
    assert v("vmsnap_script_timeouts_total", script="post") == 0
    assert v("vmsnap_script_failures_total", script="pre") == 1
    # Pre- and post-scripts in one histogram: five took 0.02 s, the pre-script timeout 30.5 s.
    assert v("vmsnap_script_duration_seconds_count") == 6
    assert v("vmsnap_script_duration_seconds_bucket", le="10.0") == 5
    assert v("vmsnap_script_duration_seconds_bucket", le="60.0") == 6

    # The frozen window: two jobs froze (0.04 s, 12 s); the timeout job never froze.
    assert v("vmsnap_freeze_duration_seconds_count") == 2
    assert v("vmsnap_freeze_duration_seconds_sum") == 12.04
    assert v("vmsnap_freeze_duration_seconds_bucket", le="0.1") == 1
    assert v("vmsnap_freeze_duration_seconds_bucket", le="10.0") == 1
    assert v("vmsnap_freeze_duration_seconds_bucket", le="30.0") == 2
    assert v("vmsnap_freeze_duration_seconds_bucket", le="+Inf") == 2
    assert v("vmsnap_freezes_total", thawed_by="runtime") == 1
    assert v("vmsnap_freezes_total", thawed_by="deadline") == 1
    assert v("vmsnap_freeze_timeouts_total") == 1

    assert v("vmsnap_phase_seconds_total", phase="freeze") == pytest.approx(3 * 0.01)
    assert v("vmsnap_disk_snapshot_attempts_total") == 1 + 1 + 4
    assert v("vmsnap_disk_snapshot_failures_total", kind="retryable") == 1  # throttled
    assert v("vmsnap_disk_snapshot_failures_total", kind="auth") == 0
    assert v("vmsnap_disk_snapshot_duration_seconds_count") == 3
    assert v("vmsnap_spool_dropped_total", kind="log_lines") == 7
    assert v("vmsnap_spool_dropped_total", kind="spans") == 2

    records = [
        SpoolReader(rig.spool).read_record(n) for n in ("task-ok", "task-timeout", "task-slow")
    ]
    ends = [r.ended_at for r in records if r is not None and r.ended_at is not None]
    assert v("vmsnap_last_job_timestamp_seconds") == max(ends)
    latest = max((r for r in records if r is not None), key=lambda r: r.ended_at or 0.0)
    info = {
        "outcome": latest.outcome or "",
        "consistency": latest.consistency or "",
        "error": latest.error or "none",
    }
    assert v("vmsnap_last_job_info", **info) == 1
    assert v("vmsnap_last_success_timestamp_seconds") == max(
        r.ended_at for r in records if r is not None and r.outcome == "success" and r.ended_at
    )
    assert v("vmsnap_build_info", version=__version__) == 1
    assert v("vmsnap_sidecar_records_ingested_total") == 3
    lag = v("vmsnap_sidecar_ingest_lag_seconds")
    assert lag is not None and 0 <= lag < 60
    assert v("vmsnap_sidecar_errors_total", component="collector") == 0


def test_every_known_label_combination_exists_at_zero(rig: Rig) -> None:
    sidecar = rig.sidecar()
    v = lambda name, **labels: rig.value(sidecar, name, **labels)  # noqa: E731
    for outcome in OUTCOMES:
        for consistency in CONSISTENCIES:
            assert v("vmsnap_jobs_total", outcome=outcome, consistency=consistency) == 0
    for group in ERROR_GROUPS:
        assert v("vmsnap_job_errors_total", group=group) == 0
        assert v("vmsnap_job_warnings_total", group=group) == 0
    for phase in PHASES:
        assert v("vmsnap_phase_seconds_total", phase=phase) == 0
    for script in ("pre", "post"):
        for name in (
            "vmsnap_script_runs_total",
            "vmsnap_script_retries_total",
            "vmsnap_script_timeouts_total",
        ):
            assert v(name, script=script) == 0
    for le in [*map(str, FREEZE_BUCKETS), "+Inf"]:
        assert v("vmsnap_freeze_duration_seconds_bucket", le=le) == 0
    assert v("vmsnap_backstop_thaws_total") == 0
    assert v("vmsnap_disk_snapshot_failures_total", kind="auth") == 0
    assert v("vmsnap_last_success_timestamp_seconds") == 0
    # Every family of the catalogue is exposed before any job ran, but the
    # last-job info, which has no job to describe yet.
    text = generate_latest(rig.registry(sidecar)).decode()
    for family in FAMILIES:
        if family.name == "vmsnap_last_job_info":
            assert f"# TYPE {family.name} " not in text
        else:
            assert f"# TYPE {family.name} " in text, family.name


def test_unknown_label_values_are_bounded(rig: Rig) -> None:
    rig.gen.job("t1", outcome="failed", error="SomethingNew", consistency="weird")
    rig.gen.job(
        "t2",
        disks=[{"index": 0, "ok": False, "seconds": 1, "attempts": 1, "error_kind": "cosmic"}],
        phases=[("not_a_phase", 1.0), ("freeze", 0.1)],
    )
    sidecar = rig.sidecar()
    sidecar.run_once()
    text = generate_latest(rig.registry(sidecar)).decode()
    assert "SomethingNew" not in text and "weird" not in text and "cosmic" not in text
    assert "not_a_phase" not in text
    assert rig.value(sidecar, "vmsnap_job_errors_total", group="other") == 1
    assert rig.value(sidecar, "vmsnap_jobs_total", outcome="failed", consistency="none") == 1
    assert rig.value(sidecar, "vmsnap_disk_snapshot_failures_total", kind="other") == 1
    # No per-job label anywhere: the task ids and trace ids are not label values.
    assert "t1" not in text.replace("vmsnap_", "").split("# HELP")[0]


def test_counters_survive_restart_and_nothing_is_counted_twice(rig: Rig) -> None:
    _three_jobs(rig)
    first = rig.sidecar()
    first.run_once()
    before = generate_latest(rig.registry(first)).decode()

    # Restart: a new process on the same state dir, the job dirs still there.
    second = rig.sidecar()
    second.run_once()
    second.run_once()
    assert rig.value(second, "vmsnap_sidecar_records_ingested_total") == 3
    assert rig.value(second, "vmsnap_jobs_total", outcome="success", consistency="application") == 1
    after = generate_latest(rig.registry(second)).decode()

    def stable(text: str) -> list[str]:
        skip = ("process_", "vmsnap_sidecar_ingest_lag")
        return [line for line in text.splitlines() if not line.startswith(skip)]

    assert stable(after) == stable(before)

    # A new job after the restart adds exactly one.
    rig.gen.job("task-new")
    second.run_once()
    third = rig.sidecar()
    third.run_once()
    assert rig.value(third, "vmsnap_sidecar_records_ingested_total") == 4
    assert rig.value(third, "vmsnap_jobs_total", outcome="success", consistency="application") == 2


def test_crash_before_commit_recounts_once(rig: Rig) -> None:
    """The counted mark and the values are one write: lose it, and both are lost."""
    rig.gen.job("a")
    sidecar = rig.sidecar()
    sidecar.run_once()
    saved = (rig.state / STATE_FILE).read_bytes()
    rig.gen.job("b")
    sidecar.run_once()
    assert rig.value(sidecar, "vmsnap_sidecar_records_ingested_total") == 2
    # "Crash" right before the commit that counted b: the state on disk is the old one.
    (rig.state / STATE_FILE).write_bytes(saved)
    restarted = rig.sidecar()
    assert rig.value(restarted, "vmsnap_sidecar_records_ingested_total") == 1
    restarted.run_once()
    assert rig.value(restarted, "vmsnap_sidecar_records_ingested_total") == 2


def test_rerun_of_a_job_directory_is_a_new_run(rig: Rig) -> None:
    job = rig.gen.job("again")
    sidecar = rig.sidecar()
    sidecar.run_once()
    rig.gen.write_record(job, started_at=job.record["started_at"] + 100)
    sidecar.run_once()
    sidecar.run_once()
    assert rig.value(sidecar, "vmsnap_sidecar_records_ingested_total") == 2


def test_incomplete_records_are_not_counted_until_complete(rig: Rig) -> None:
    job = rig.gen.job("running", complete=False)
    sidecar = rig.sidecar()
    sidecar.run_once()
    assert rig.value(sidecar, "vmsnap_sidecar_records_ingested_total") == 0
    rig.gen.complete(job)
    sidecar.run_once()
    assert rig.value(sidecar, "vmsnap_sidecar_records_ingested_total") == 1


def test_exemplar_only_in_openmetrics(rig: Rig) -> None:
    trace_ids = _three_jobs(rig)
    sidecar = rig.sidecar()
    sidecar.run_once()
    registry = rig.registry(sidecar)
    om = generate_openmetrics(registry).decode()
    lines = [line for line in om.splitlines() if line.startswith("vmsnap_freeze_duration_seconds")]
    exemplars = [line for line in lines if "# {trace_id=" in line]
    assert exemplars, om
    assert any(f'trace_id="{trace_ids[0]}"' in line for line in exemplars)
    assert any(f'trace_id="{trace_ids[2]}"' in line for line in exemplars)
    assert '# {trace_id="' not in generate_latest(registry).decode()


def test_invalid_records_are_counted_once(rig: Rig) -> None:
    bad = rig.spool / "jobs" / "future"
    bad.mkdir()
    (bad / "record.json").write_text(json.dumps({"schema_version": 2, "complete": True}))
    broken = rig.spool / "jobs" / "broken"
    broken.mkdir()
    (broken / "record.json").write_text("{not json")
    sidecar = rig.sidecar()
    sidecar.run_once()
    sidecar.run_once()
    # One each (schema, json): the reasons are in the sidecar log, not a label.
    assert rig.value(sidecar, "vmsnap_sidecar_records_invalid_total") == 2
    assert rig.value(sidecar, "vmsnap_sidecar_records_ingested_total") == 0


def test_watchdog_reports_counted_once_across_restarts(rig: Rig) -> None:
    rig.gen.watchdog_report(reason="eof", mounts=["/a", "/b"])
    rig.gen.watchdog_report(reason="signal:SIGTERM", mounts=["/a"])
    sidecar = rig.sidecar()
    sidecar.run_once()
    sidecar.run_once()
    assert rig.value(sidecar, "vmsnap_watchdog_thaws_total", reason="eof") == 2
    assert rig.value(sidecar, "vmsnap_watchdog_thaws_total", reason="other") == 1  # the signal
    again = rig.sidecar()
    again.run_once()
    assert rig.value(again, "vmsnap_watchdog_thaws_total", reason="eof") == 2


def test_torn_last_line_is_not_read(rig: Rig) -> None:
    job = rig.gen.job("torn")
    lines = rig.gen.log_lines(job, 3)
    rig.gen.torn_line(job)
    chunk = SpoolReader(rig.spool).read_lines("torn", LOG_FILE, 0, 1 << 20)
    assert chunk.data == lines and chunk.lines == 3


def test_handled_job_directories_are_removed(rig: Rig) -> None:
    rig.gen.job("done")
    sidecar = rig.sidecar(keep_jobs=False)
    sidecar.run_once()
    assert not (rig.spool / "jobs" / "done").exists()
    sidecar.run_once()
    assert "done" not in sidecar.ledger.state.jobs
    assert rig.value(sidecar, "vmsnap_sidecar_records_ingested_total") == 1


def test_state_round_trip_keeps_histograms_and_exemplars() -> None:
    values = MetricValues()
    values.observe("vmsnap_freeze_duration_seconds", 0.3, exemplar=("ab" * 16, 123.0))
    values.inc("vmsnap_job_errors_total", ("pre_script",), 2)
    values.replace("vmsnap_last_job_info", ("failed", "none", "Pre-ScriptTimeout"))
    values.set_max("vmsnap_last_success_timestamp_seconds", 99.0)
    restored = MetricValues.from_json(json.loads(json.dumps(values.to_json())))
    hist = restored.histograms["vmsnap_freeze_duration_seconds"][()]
    assert hist.counts == values.histograms["vmsnap_freeze_duration_seconds"][()].counts
    assert hist.exemplars == {1: ("ab" * 16, 0.3, 123.0)}  # le="0.5"
    assert restored.counters["vmsnap_job_errors_total"][("pre_script",)] == 2
    assert restored.gauges["vmsnap_last_job_info"] == {("failed", "none", "Pre-ScriptTimeout"): 1}
    assert restored.gauges["vmsnap_last_success_timestamp_seconds"][()] == 99.0


def test_snapshot_path_and_fallbacks_are_counted_with_bounded_labels(rig: Rig) -> None:
    sidecar = rig.sidecar()
    v = lambda name, **labels: rig.value(sidecar, name, **labels)  # noqa: E731
    # Zero-initialised: 4 + 2 + 2 + 3 = 11 series, nothing more.
    for path in ("host", "guest"):
        for outcome in OUTCOMES:
            assert v("vmsnap_snapshot_jobs_total", path=path, outcome=outcome) == 0
        assert v("vmsnap_snapshot_runs_total", path=path) == 0
        assert v("vmsnap_snapshot_seconds_total", path=path) == 0
    fallbacks = ("presnapshot_unreachable", "presnapshot_failed", "guest_failed")
    for reason in fallbacks:
        assert v("vmsnap_snapshot_fallbacks_total", reason=reason) == 0
    text = generate_latest(rig.registry(sidecar)).decode()
    added = [
        line
        for line in text.splitlines()
        if line.startswith(("vmsnap_snapshot_jobs_total{", "vmsnap_snapshot_runs_total{"))
        or line.startswith(("vmsnap_snapshot_seconds_total{", "vmsnap_snapshot_fallbacks_total{"))
    ]
    assert len(added) == 11, added

    rig.gen.job("host-ok", extra={"snapshot": {"path": "host", "fallback": None, "seconds": 0.25}})
    rig.gen.job(
        "fell-back",
        extra={
            "snapshot": {"path": "guest", "fallback": "presnapshot_unreachable", "seconds": 0.5}
        },
    )
    rig.gen.job(
        "too-late",
        outcome="failed",
        consistency="none",
        error="CommandTooLate",
        extra={"snapshot": {"path": "host", "fallback": None, "seconds": None}},
    )
    rig.gen.job(
        "hostile",
        extra={"snapshot": {"path": "moon", "fallback": "cosmic rays", "seconds": "x"}},
    )
    rig.gen.job("old-record")  # no "snapshot" key: written before this field existed
    sidecar.run_once()

    assert v("vmsnap_snapshot_jobs_total", path="host", outcome="success") == 1
    assert v("vmsnap_snapshot_jobs_total", path="host", outcome="failed") == 1
    assert v("vmsnap_snapshot_jobs_total", path="guest", outcome="success") == 1
    assert v("vmsnap_snapshot_runs_total", path="host") == 1  # the too-late job sent nothing
    assert v("vmsnap_snapshot_seconds_total", path="host") == 0.25
    assert v("vmsnap_snapshot_seconds_total", path="guest") == 0.5
    assert v("vmsnap_snapshot_fallbacks_total", reason="presnapshot_unreachable") == 1
    # "cosmic rays" is bounded to the catch-all.
    assert v("vmsnap_snapshot_fallbacks_total", reason="presnapshot_failed") == 1
    text = generate_latest(rig.registry(sidecar)).decode()
    assert "moon" not in text and "cosmic" not in text
    assert v("vmsnap_jobs_total", outcome="success", consistency="application") == 4


def test_a_failing_collector_is_counted_and_the_scrape_goes_on(rig: Rig) -> None:
    from prometheus_client.metrics_core import Metric
    from snapshot_sidecar.collectors import NamedCollector, build_registry, stable_collectors
    from snapshot_sidecar.sidecar import collector_failure_counter

    class Broken:
        name = "broken"

        def collect(self) -> list[Metric]:
            raise RuntimeError("boom")

    sidecar = rig.sidecar()
    ledger = sidecar.ledger
    collectors: list[NamedCollector] = [
        Broken(),
        *stable_collectors(lambda: ledger.published, __version__),
    ]
    registry = build_registry(collectors, on_failure=collector_failure_counter(ledger))
    text = generate_latest(registry).decode()
    # The other collectors were served; no per-collector self-metrics exist.
    assert f'vmsnap_build_info{{version="{__version__}"}} 1.0' in text
    assert "vmsnap_sidecar_collector_" not in text
    # The failure is counted (and persisted): the next scrape shows it.
    assert ledger.published.counter("vmsnap_sidecar_errors_total", ("collector",)) == 1
    generate_latest(registry)
    assert rig.value(sidecar, "vmsnap_sidecar_errors_total", component="collector") == 2
