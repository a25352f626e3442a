"""The sidecar's metric catalogue and its persisted values.

Pure module: no I/O, no prometheus-client objects.

* ``FAMILIES`` is the contract dashboards and alerts use: every metric name,
  its type, help text, label names, the *known* label combinations (all of
  them exposed at 0 from the start, so the first increment shows in
  ``increase()``) and, for histograms, the bucket boundaries. docs/telemetry.md
  "Metrics (sidecar)" documents exactly this table; tests compare the two.
* ``MetricValues`` holds the values: counters and histograms are cumulative and
  persisted (``to_json``/``from_json``) in the sidecar's state file, in the same
  atomic write as the per-job "counted" marks, which is what makes ingestion
  exactly-once across restarts. Gauges marked ``persisted`` (last-success
  timestamps) are kept too; the others are live values set by the workers.

Every label value is bounded: a value outside a family's known set is mapped to
its ``other`` value or dropped, never exposed as is. Labels are paid for from
the budget of 150 series per VM (issue 16, docs/telemetry.md "Series budget"):
error codes are counted by group (``core.errors.error_group``; the exact code of
the latest job is in ``vmsnap_last_job_info``), blob failures by
``blob_failure_group``.

``migrate_legacy_metrics`` carries values persisted by an older sidecar (state
schema 1: a label per error code, per-kind mirror and disk failures, the phase
histogram, finer freeze/script buckets) over to this catalogue.
"""

from __future__ import annotations

import itertools
import math
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from snapshot_runtime.core.errors import ERROR_GROUPS, OTHER_ERROR_GROUP, ErrorCode, error_group
from snapshot_runtime.core.phases import PHASES
from snapshot_runtime.core.snapshot_mode import FALLBACK_REASONS, SNAPSHOT_PATHS
from snapshot_runtime.snapshot.failures import FailureKind

__all__ = [
    "BLOB_FAILURE_GROUPS",
    "CONSISTENCIES",
    "ERROR_GROUP_LABELS",
    "FAMILIES",
    "FAMILY_BY_NAME",
    "FREEZE_BUCKETS",
    "LAST_JOB_ERRORS",
    "MIRROR_ERROR_GROUPS",
    "NO_ERROR",
    "OUTCOMES",
    "SCRIPTS",
    "WATCHDOG_REASONS",
    "WORKLOADS",
    "WORKLOAD_STALL_BUCKETS",
    "Family",
    "HistogramValue",
    "MetricValues",
    "blob_failure_group",
    "migrate_legacy_metrics",
    "mirror_error_group",
]

Kind = Literal["counter", "gauge", "histogram"]
Labels = tuple[str, ...]

OUTCOMES: tuple[str, ...] = ("success", "failed")
CONSISTENCIES: tuple[str, ...] = ("application", "filesystem", "crash", "none")
# Errors and warnings are counted by group (core/errors.py ERROR_GROUPS);
# a name this runtime does not know is "other".
ERROR_GROUP_LABELS: tuple[str, ...] = tuple(ERROR_GROUPS)
# vmsnap_last_job_info's error: the exact code of the latest job, "none" when it
# reported none, "Unknown" for a name this runtime does not know.
NO_ERROR = "none"
UNKNOWN_ERROR = "Unknown"
LAST_JOB_ERRORS: tuple[str, ...] = (NO_ERROR, *(code.value for code in ErrorCode), UNKNOWN_ERROR)
SCRIPTS: tuple[str, ...] = ("pre", "post")
# Workloads whose quiesce blocks commits (workload.conf; PostgreSQL never does).
# The stall histogram has no workload label (one VM runs one database); the
# name is in the job record and its trace.
WORKLOADS: tuple[str, ...] = ("mariadb", "mysql")
THAWED_BY: tuple[str, ...] = ("runtime", "deadline", "watchdog")
BLOB_KINDS: tuple[str, ...] = typing.get_args(FailureKind)
# Blob request failures as the metrics tell them: whether a retry may help
# (throttled, transient, timeout), or the two an operator fixes (the SAS, the
# blob's existence); "limit" and anything else is "other".
BLOB_FAILURE_GROUPS: tuple[str, ...] = ("retryable", "auth", "not_found", "other")
_RETRYABLE_KINDS = frozenset({"throttled", "transient", "timeout"})
# The watchdog's trigger: the runtime died (eof) or overran (deadline); signals
# and protocol errors are "other" (the exact text is in the watchdog report).
WATCHDOG_REASONS: tuple[str, ...] = ("eof", "deadline", "other")
DROPPED_KINDS: tuple[str, ...] = ("log_lines", "spans")
# Log-mirror failures: the blob groups plus "conflict" (the blob grew by bytes
# that are not our log: a foreign writer, alerted on). The sidecar's own stops
# (unseal, block_limit, expired) are "other"; their reason is in the sidecar log.
MIRROR_ERROR_GROUPS: tuple[str, ...] = ("retryable", "auth", "not_found", "conflict", "other")
SPAN_DROP_REASONS: tuple[str, ...] = ("backlog", "expired", "invalid")
BACKSTOP_RESULTS: tuple[str, ...] = ("thawed", "not_frozen", "error")
COMPONENTS: tuple[str, ...] = ("ingest", "mirror", "spans", "backstop", "state", "collector")


def blob_failure_group(kind: str) -> str:
    """A blob request's failure kind (snapshot.failures.FailureKind) as a metric label."""
    if kind in _RETRYABLE_KINDS:
        return "retryable"
    return kind if kind in BLOB_FAILURE_GROUPS else "other"


def mirror_error_group(kind: str) -> str:
    """A log-mirror error (a failure kind, "conflict", or a reason of its own) as a label."""
    return "conflict" if kind == "conflict" else blob_failure_group(kind)


# 100 ms to 60 s. Boundaries sit exactly on the alert/SLO thresholds (1 s, the
# 5 s p99 and 10 s window goals (deploy/mixin/config.json), 30 s, the 60 s
# freeze deadline) so `le` ratios are exact; 60 keeps overruns of the deadline
# in a bucket of their own below +Inf. 0.1 and 0.5 show a healthy window's
# spread; 0.25 and 2.5 were dropped for the series budget (no rule reads them).
FREEZE_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)
# Series budget (issue 16, docs/telemetry.md "Series budget"): a VM takes a
# few snapshots a day, so per-VM histograms are sparse; every bucket is paid on
# every VM. Phases: the dashboards read the seconds spent per phase, a counter
# (vmsnap_phase_seconds_total), one series per phase.
# Pre/post-scripts together (no script label: the per-script counters say which
# one timed out): 10 s splits quick scripts from database flushes, 60 s is the
# usual configured timeout, 300 s a long flush; the plug-in host caps at 1800 s.
SCRIPT_BUCKETS: tuple[float, ...] = (10.0, 60.0, 300.0)
# One disk's snapshot: normally well under a second; 10 s is slow, 60 s the
# request budget.
DISK_BUCKETS: tuple[float, ...] = (0.1, 1.0, 10.0, 60.0)
# No panel reads job-duration quantiles: a minute, five, and the 30 min cap.
JOB_BUCKETS: tuple[float, ...] = (60.0, 300.0, 1800.0)
# Commits blocked by a workload quiesce (MariaDB/MySQL): measured 60-270 ms here;
# 0.25 s splits a healthy stall from a slow one, 1 s is the alerting point. Two
# bounds only (issue 16's budget: 5 series); _sum/_count give the mean.
WORKLOAD_STALL_BUCKETS: tuple[float, ...] = (0.25, 1.0)


@dataclass(frozen=True)
class Family:
    """One metric family of the contract.

    - ``label_values``: per label name, its known values; the zero-initialised
      series are their cartesian product.
    - ``other``: per label name, the value an unknown input is mapped to
      (absent: unknown inputs are dropped).
    - ``persisted``: kept in the state file across restarts (all counters and
      histograms; gauges only when they describe the past).
    """

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    label_values: tuple[tuple[str, ...], ...] = ()
    buckets: tuple[float, ...] = ()
    persisted: bool = True
    other: Mapping[str, str] = field(default_factory=dict)
    zero_init: bool = True

    @property
    def bounded(self) -> bool:
        """Its label values are known (all but build_info, whose version is free)."""
        return all(self.label_values)

    def combos(self) -> list[Labels]:
        if not self.labels:
            return [()]
        return [tuple(c) for c in itertools.product(*self.label_values)]

    def bound(self, labels: Sequence[str]) -> Labels | None:
        """Map raw label values onto the known set; None: drop the observation."""
        out: list[str] = []
        for name, allowed, value in zip(self.labels, self.label_values, labels, strict=True):
            if value in allowed:
                out.append(value)
            elif name in self.other:
                out.append(self.other[name])
            else:
                return None
        return tuple(out)


def _c(name: str, help_: str, **labels: tuple[str, ...]) -> Family:
    return Family(name, "counter", help_, tuple(labels), tuple(labels.values()))


def _h(name: str, help_: str, buckets: tuple[float, ...], **labels: tuple[str, ...]) -> Family:
    return Family(name, "histogram", help_, tuple(labels), tuple(labels.values()), buckets)


def _g(name: str, help_: str, *, persisted: bool = False, **labels: tuple[str, ...]) -> Family:
    return Family(name, "gauge", help_, tuple(labels), tuple(labels.values()), (), persisted)


FAMILIES: tuple[Family, ...] = (
    # -- jobs ---------------------------------------------------------------
    _c(
        "vmsnap_jobs_total",
        "Snapshot jobs completed, by outcome and consistency verdict.",
        outcome=OUTCOMES,
        consistency=CONSISTENCIES,
    ),
    Family(
        "vmsnap_job_errors_total",
        "counter",
        "Completed jobs that reported an error, by the error code's group "
        "(the code itself: vmsnap_last_job_info, the job record, the trace).",
        ("group",),
        (ERROR_GROUP_LABELS,),
        other={"group": OTHER_ERROR_GROUP},
    ),
    Family(
        "vmsnap_job_warnings_total",
        "counter",
        "Warnings reported by completed jobs, by the warning code's group.",
        ("group",),
        (ERROR_GROUP_LABELS,),
        other={"group": OTHER_ERROR_GROUP},
    ),
    Family(
        "vmsnap_last_job_info",
        "gauge",
        "The latest completed job (by end time): 1, labelled with its outcome, "
        "consistency and exact error code (none: no error). Absent before the first job.",
        ("outcome", "consistency", "error"),
        (OUTCOMES, CONSISTENCIES, LAST_JOB_ERRORS),
        persisted=True,
        other={"outcome": "failed", "consistency": "none", "error": UNKNOWN_ERROR},
        zero_init=False,
    ),
    _c(
        "vmsnap_jobs_abandoned_total",
        "Jobs whose runtime process died before writing a complete record.",
    ),
    _h(
        "vmsnap_job_duration_seconds",
        "Wall time of a job, start to end.",
        JOB_BUCKETS,
    ),
    _h(
        "vmsnap_freeze_duration_seconds",
        "The frozen window: first FIFREEZE to last FITHAW (exemplar: trace_id).",
        FREEZE_BUCKETS,
    ),
    _c(
        "vmsnap_freezes_total",
        "Freeze windows, by who ended them (runtime, its deadline timer, the watchdog).",
        thawed_by=THAWED_BY,
    ),
    _c(
        "vmsnap_freeze_timeouts_total",
        "Freeze windows that reached the freeze deadline and were thawed regardless.",
    ),
    _c(
        "vmsnap_phase_seconds_total",
        "Seconds spent in each job phase (skipped phases add nothing).",
        phase=PHASES,
    ),
    # -- scripts --------------------------------------------------------------
    _c(
        "vmsnap_script_runs_total",
        "Pre/post-script attempts (every retry is a run).",
        script=SCRIPTS,
    ),
    _c("vmsnap_script_retries_total", "Pre/post-script retries.", script=SCRIPTS),
    _c("vmsnap_script_timeouts_total", "Pre/post-scripts that hit their timeout.", script=SCRIPTS),
    _c(
        "vmsnap_script_failures_total",
        "Pre/post-scripts that ended in an error after all retries.",
        script=SCRIPTS,
    ),
    _h(
        "vmsnap_script_duration_seconds",
        "Wall time of a pre- or post-script, all attempts included.",
        SCRIPT_BUCKETS,
    ),
    # -- workloads (workload.conf) ----------------------------------------------
    _h(
        "vmsnap_workload_write_stall_seconds",
        "Commits blocked by a workload quiesce, quiesce to release (MariaDB/MySQL).",
        WORKLOAD_STALL_BUCKETS,
    ),
    # -- disks ----------------------------------------------------------------
    _c(
        "vmsnap_disk_snapshot_attempts_total",
        "Snapshot requests sent, retries included.",
    ),
    Family(
        "vmsnap_disk_snapshot_failures_total",
        "counter",
        "Disk snapshots that failed, by failure group (retryable, auth, not_found, other).",
        ("kind",),
        (BLOB_FAILURE_GROUPS,),
        other={"kind": "other"},
    ),
    _h(
        "vmsnap_disk_snapshot_duration_seconds",
        "Duration of one disk's snapshot, retries included.",
        DISK_BUCKETS,
    ),
    # -- timestamps, build ------------------------------------------------------
    _g(
        "vmsnap_last_success_timestamp_seconds",
        "End time of the last successful job (Unix seconds; 0: none yet).",
        persisted=True,
    ),
    _g(
        "vmsnap_last_job_timestamp_seconds",
        "End time of the last completed job (Unix seconds; 0: none yet).",
        persisted=True,
    ),
    Family(
        "vmsnap_build_info",
        "gauge",
        "The sidecar's version (always 1).",
        ("version",),
        ((),),
        persisted=False,
        zero_init=False,
    ),
    # -- spool losses, thaw layers -------------------------------------------------
    _c(
        "vmsnap_spool_dropped_total",
        "Log lines and spans the runtime dropped because the spool was full.",
        kind=DROPPED_KINDS,
    ),
    Family(
        "vmsnap_watchdog_thaws_total",
        "counter",
        "Thaws performed by the runtime's watchdog process (from its reports), by trigger "
        "(eof: the runtime died; deadline; other).",
        ("reason",),
        (WATCHDOG_REASONS,),
        other={"reason": "other"},
    ),
    _c(
        "vmsnap_backstop_thaws_total",
        "Filesystems the sidecar found left frozen by a dead runtime and thawed (I4, layer 3).",
    ),
    _c(
        "vmsnap_backstop_thaw_attempts_total",
        "Backstop FITHAW calls, by result.",
        result=BACKSTOP_RESULTS,
    ),
    # -- sidecar self-metrics --------------------------------------------------------
    _c("vmsnap_sidecar_records_ingested_total", "Complete job records ingested (exactly once)."),
    _c(
        "vmsnap_sidecar_records_invalid_total",
        "Job records that could not be ingested (the reason is in the sidecar log).",
    ),
    _c(
        "vmsnap_sidecar_jobs_quarantined_total",
        "Jobs whose record stayed unreadable after their runtime was gone: no outcome "
        "counted; their log and spans still forwarded.",
    ),
    _c(
        "vmsnap_sidecar_watchdog_reports_invalid_total",
        "Files in the spool's watchdog directory that are not readable reports.",
    ),
    _c("vmsnap_sidecar_log_mirror_bytes_total", "Log bytes mirrored to logsBlobUri."),
    Family(
        "vmsnap_sidecar_log_mirror_errors_total",
        "counter",
        "Failed log-mirror requests and decisions, by group "
        "(retryable, auth, not_found, conflict, other).",
        ("error",),
        (MIRROR_ERROR_GROUPS,),
        other={"error": "other"},
    ),
    _c(
        "vmsnap_sidecar_log_mirror_abandoned_total",
        "Jobs whose log mirroring was stopped for good (the reason is in the sidecar log "
        "and the job's state).",
    ),
    _g(
        "vmsnap_sidecar_log_mirror_backlog_bytes",
        "Log bytes in the spool not yet mirrored.",
    ),
    _c("vmsnap_sidecar_spans_exported_total", "Spans exported over OTLP."),
    _c("vmsnap_sidecar_span_export_errors_total", "Failed OTLP export calls."),
    _c(
        "vmsnap_sidecar_spans_dropped_total",
        "Spans never exported, by reason.",
        reason=SPAN_DROP_REASONS,
    ),
    _g("vmsnap_sidecar_span_backlog_bytes", "spans.jsonl bytes in the spool not yet exported."),
    _g("vmsnap_sidecar_spool_jobs", "Job directories currently in the spool."),
    _g(
        "vmsnap_sidecar_ingest_lag_seconds",
        "Last job: seconds from the record's completion to its ingestion.",
    ),
    _c(
        "vmsnap_sidecar_errors_total",
        "Unexpected errors caught by a sidecar loop (logged, counted, survived).",
        component=COMPONENTS,
    ),
    _c("vmsnap_sidecar_state_write_errors_total", "Failed writes of the sidecar's state file."),
    # -- snapshot path (host / guest), docs/host-snapshot.md --------------------------
    # 10 series in all (4 + 2 + 2 + 2): counters, not a `path` label on the
    # histograms (one label there would double every bucket: +16 series for
    # vmsnap_disk_snapshot_duration_seconds alone). Mean snapshot latency per
    # path: vmsnap_snapshot_seconds_total / vmsnap_snapshot_runs_total.
    _c(
        "vmsnap_snapshot_jobs_total",
        "Completed jobs that chose a snapshot path, by path (host, guest) and outcome.",
        path=SNAPSHOT_PATHS,
        outcome=OUTCOMES,
    ),
    _c(
        "vmsnap_snapshot_runs_total",
        "Snapshot request rounds that ran (one per job: all disks), by path.",
        path=SNAPSHOT_PATHS,
    ),
    _c(
        "vmsnap_snapshot_seconds_total",
        "Time spent in those snapshot request rounds, by path (sum; divide by the runs).",
        path=SNAPSHOT_PATHS,
    ),
    Family(
        "vmsnap_snapshot_fallbacks_total",
        "counter",
        "Jobs whose snapshot path was not their mode's first choice, by reason "
        "(the host's presnapshot failed; or every guest snapshot failed: guest_failed).",
        ("reason",),
        (FALLBACK_REASONS,),
        other={"reason": "presnapshot_failed"},
    ),
)

FAMILY_BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}


@dataclass
class HistogramValue:
    """Non-cumulative bucket counts (len(buckets) + 1 for +Inf), sum, and exemplars."""

    counts: list[float]
    sum: float = 0.0
    # bucket index -> (trace_id, observed value, unix timestamp): the latest one.
    exemplars: dict[int, tuple[str, float, float]] = field(default_factory=dict)

    def observe(self, buckets: Sequence[float], value: float, exemplar: Exemplarish) -> None:
        index = len(buckets)
        for i, bound in enumerate(buckets):
            if value <= bound:
                index = i
                break
        self.counts[index] += 1
        self.sum += value
        if exemplar is not None:
            self.exemplars[index] = (exemplar[0], value, exemplar[1])

    def cumulative(self) -> list[float]:
        return list(itertools.accumulate(self.counts))


# (trace_id, timestamp) of the observation, or None.
Exemplarish = tuple[str, float] | None


class MetricValues:
    """Every family's current values. Not thread-safe: the ledger holds the lock."""

    def __init__(self, families: Sequence[Family] = FAMILIES) -> None:
        self.families = {f.name: f for f in families}
        self.counters: dict[str, dict[Labels, float]] = {}
        self.gauges: dict[str, dict[Labels, float]] = {}
        self.histograms: dict[str, dict[Labels, HistogramValue]] = {}
        for family in families:
            if family.kind == "counter":
                self.counters[family.name] = dict.fromkeys(family.combos(), 0.0)
            elif family.kind == "gauge":
                combos = family.combos() if family.zero_init else []
                self.gauges[family.name] = dict.fromkeys(combos, 0.0)
            else:
                self.histograms[family.name] = {
                    combo: self._empty(family) for combo in family.combos()
                }

    @staticmethod
    def _empty(family: Family) -> HistogramValue:
        return HistogramValue([0.0] * (len(family.buckets) + 1))

    def _family(self, name: str, kind: Kind) -> Family:
        family = self.families[name]
        if family.kind != kind:
            raise TypeError(f"{name} is a {family.kind}, not a {kind}")
        return family

    def inc(self, name: str, labels: Sequence[str] = (), amount: float = 1.0) -> None:
        family = self._family(name, "counter")
        key = family.bound(labels)
        if key is None or amount < 0 or not math.isfinite(amount):
            return
        series = self.counters[name]
        series[key] = series.get(key, 0.0) + amount

    def observe(
        self,
        name: str,
        value: float,
        labels: Sequence[str] = (),
        *,
        exemplar: Exemplarish = None,
    ) -> None:
        family = self._family(name, "histogram")
        key = family.bound(labels)
        if key is None or not math.isfinite(value) or value < 0:
            return
        series = self.histograms[name]
        if key not in series:
            series[key] = self._empty(family)
        series[key].observe(family.buckets, value, exemplar)

    def set(self, name: str, value: float, labels: Sequence[str] = ()) -> None:
        family = self._family(name, "gauge")
        key = family.bound(labels) if family.bounded else tuple(labels)
        if key is None or not math.isfinite(value):
            return
        self.gauges[name][key] = value

    def replace(self, name: str, labels: Sequence[str], value: float = 1.0) -> None:
        """The gauge has this one series only (an info metric about the latest thing)."""
        family = self._family(name, "gauge")
        key = family.bound(labels) if family.bounded else tuple(labels)
        if key is None or not math.isfinite(value):
            return
        self.gauges[name] = {key: value}

    def set_max(self, name: str, value: float, labels: Sequence[str] = ()) -> None:
        """Gauge = max(current, value): for "last ... timestamp" gauges."""
        current = self.gauges[name].get(tuple(labels), 0.0)
        if value > current:
            self.set(name, value, labels)

    def counter(self, name: str, labels: Sequence[str] = ()) -> float:
        return self.counters[name].get(tuple(labels), 0.0)

    def copy(self) -> MetricValues:
        """An independent copy of the values (the catalogue is shared: it is frozen)."""
        other = MetricValues.__new__(MetricValues)
        other.families = self.families
        other.counters = {name: dict(series) for name, series in self.counters.items()}
        other.gauges = {name: dict(series) for name, series in self.gauges.items()}
        other.histograms = {
            name: {
                key: HistogramValue(list(h.counts), h.sum, dict(h.exemplars))
                for key, h in series.items()
            }
            for name, series in self.histograms.items()
        }
        return other

    # -- persistence -------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The persisted families as plain JSON (label tuples as lists)."""
        out: dict[str, Any] = {"counters": {}, "gauges": {}, "histograms": {}}
        for name, series in self.counters.items():
            out["counters"][name] = [[list(k), v] for k, v in series.items() if v]
        for name, gseries in self.gauges.items():
            if self.families[name].persisted:
                out["gauges"][name] = [[list(k), v] for k, v in gseries.items() if v]
        for name, hseries in self.histograms.items():
            out["histograms"][name] = [
                [
                    list(k),
                    {
                        "counts": h.counts,
                        "sum": h.sum,
                        "exemplars": [[i, *e] for i, e in sorted(h.exemplars.items())],
                    },
                ]
                for k, h in hseries.items()
                if any(h.counts)
            ]
        return out

    @classmethod
    def from_json(
        cls, doc: Mapping[str, Any], families: Sequence[Family] = FAMILIES
    ) -> MetricValues:
        """Restore persisted values; unknown families and label values are dropped."""
        values = cls(families)
        for name, rows in _items(doc.get("counters")):
            family = values.families.get(name)
            if family is None or family.kind != "counter":
                continue
            for key, value in _rows(rows, family):
                values.counters[name][key] = float(value)
        for name, rows in _items(doc.get("gauges")):
            family = values.families.get(name)
            if family is None or family.kind != "gauge" or not family.persisted:
                continue
            for key, value in _rows(rows, family):
                values.gauges[name][key] = float(value)
        for name, rows in _items(doc.get("histograms")):
            family = values.families.get(name)
            if family is None or family.kind != "histogram":
                continue
            for key, raw in _rows(rows, family):
                hist = _histogram(raw, family)
                if hist is not None:
                    values.histograms[name][key] = hist
        return values


def _items(section: object) -> Iterable[tuple[str, Any]]:
    return section.items() if isinstance(section, dict) else ()


def _rows(rows: object, family: Family) -> Iterable[tuple[Labels, Any]]:
    if not isinstance(rows, list):
        return
    for row in rows:
        if not (isinstance(row, list) and len(row) == 2 and isinstance(row[0], list)):
            continue
        raw_key = tuple(str(v) for v in row[0])
        if len(raw_key) != len(family.labels):
            continue
        key = family.bound(raw_key) if family.bounded else raw_key
        if key is None:
            continue
        value = row[1]
        if family.kind != "histogram" and not isinstance(value, int | float):
            continue
        yield key, value


def _histogram(raw: object, family: Family) -> HistogramValue | None:
    if not isinstance(raw, dict):
        return None
    counts = raw.get("counts")
    if not isinstance(counts, list) or len(counts) != len(family.buckets) + 1:
        return None  # bucket layout changed: start this series afresh
    hist = HistogramValue([float(c) for c in counts], float(raw.get("sum", 0.0)))
    for entry in raw.get("exemplars", []):
        if isinstance(entry, list) and len(entry) == 4:
            index, trace_id, value, ts = entry
            if isinstance(index, int) and 0 <= index < len(counts):
                hist.exemplars[index] = (str(trace_id), float(value), float(ts))
    return hist


# -- state written by an older sidecar (state schema 1) -------------------------------

# Histogram bounds of schema 1 where they differ; the new bounds are a subset,
# so re-binning is exact.
_LEGACY_BUCKETS: dict[str, tuple[float, ...]] = {
    "vmsnap_freeze_duration_seconds": (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    "vmsnap_script_duration_seconds": (1.0, 10.0, 30.0, 60.0, 300.0, 1800.0),
}


def _legacy_label(name: str, old: Labels) -> Labels | None:
    """A schema-1 series' labels in this catalogue (None: the family is gone)."""
    if name in ("vmsnap_job_errors_total", "vmsnap_job_warnings_total") and len(old) == 1:
        return (old[0] if old[0] in ERROR_GROUP_LABELS else error_group(old[0]),)
    if name == "vmsnap_sidecar_log_mirror_errors_total" and len(old) == 1:
        return (old[0] if old[0] in MIRROR_ERROR_GROUPS else mirror_error_group(old[0]),)
    if name == "vmsnap_disk_snapshot_failures_total" and len(old) == 1:
        return (blob_failure_group(old[0]),)
    if name == "vmsnap_watchdog_thaws_total" and len(old) == 1:
        return (old[0] if old[0] in WATCHDOG_REASONS else "other",)
    if name in (
        "vmsnap_sidecar_log_mirror_abandoned_total",
        "vmsnap_sidecar_records_invalid_total",
        "vmsnap_script_duration_seconds",
        "vmsnap_workload_write_stall_seconds",
    ):
        return ()  # the label was dropped: its series are summed
    return old


def _rebin(counts: list[float], old: tuple[float, ...], new: tuple[float, ...]) -> list[float]:
    """Non-cumulative counts on ``old`` bounds moved onto ``new`` (a subset of them)."""
    out = [0.0] * (len(new) + 1)
    for bound, count in zip((*old, math.inf), counts, strict=True):
        index = next((i for i, b in enumerate(new) if bound <= b), len(new))
        out[index] += count
    return out


def migrate_legacy_metrics(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Schema-1 persisted metrics as this catalogue persists them. Pure.

    Counters are summed into their new label sets (errors by group, mirror and
    disk failures by group, unlabelled abandons and invalid records); the phase
    histogram's ``_sum`` becomes ``vmsnap_phase_seconds_total``; histograms
    whose bounds or labels changed are re-binned and summed. Rows that do not
    fit are left for ``MetricValues.from_json`` to drop.
    """
    counters: dict[str, dict[Labels, float]] = {}
    histograms: dict[str, dict[Labels, dict[str, Any]]] = {}

    def add_counter(name: str, key: Labels, value: float) -> None:
        series = counters.setdefault(name, {})
        series[key] = series.get(key, 0.0) + value

    for name, rows in _items(doc.get("counters")):
        for key, value in _legacy_rows(rows):
            new_key = _legacy_label(name, key)
            if new_key is not None and isinstance(value, int | float):
                add_counter(name, new_key, float(value))
    for name, rows in _items(doc.get("histograms")):
        for key, raw in _legacy_rows(rows):
            if not isinstance(raw, dict) or not isinstance(raw.get("counts"), list):
                continue
            if name == "vmsnap_phase_duration_seconds":
                add_counter("vmsnap_phase_seconds_total", key, float(raw.get("sum", 0.0)))
                continue
            new_key = _legacy_label(name, key)
            family = FAMILY_BY_NAME.get(name)
            if new_key is None or family is None:
                continue
            counts = [float(c) for c in raw["counts"]]
            exemplars = [e for e in raw.get("exemplars", []) if isinstance(e, list) and len(e) == 4]
            old = _LEGACY_BUCKETS.get(name)
            if old is not None and len(counts) == len(old) + 1:
                counts = _rebin(counts, old, family.buckets)
                exemplars = [
                    [_rebin_index(e[0], old, family.buckets), *e[1:]]
                    for e in exemplars
                    if isinstance(e[0], int) and 0 <= e[0] <= len(old)
                ]
            merged = histograms.setdefault(name, {}).get(new_key)
            if merged is None:
                histograms[name][new_key] = {
                    "counts": counts,
                    "sum": float(raw.get("sum", 0.0)),
                    "exemplars": exemplars,
                }
            elif len(merged["counts"]) == len(counts):
                merged["counts"] = [a + b for a, b in zip(merged["counts"], counts, strict=True)]
                merged["sum"] += float(raw.get("sum", 0.0))
                merged["exemplars"] += exemplars
    for series in histograms.values():
        for hist in series.values():
            latest: dict[int, list[Any]] = {}
            for entry in hist["exemplars"]:  # the latest exemplar per bucket
                if entry[0] not in latest or float(entry[3]) >= float(latest[entry[0]][3]):
                    latest[entry[0]] = entry
            hist["exemplars"] = [latest[i] for i in sorted(latest)]
    return {
        "counters": {
            name: [[list(k), v] for k, v in series.items()] for name, series in counters.items()
        },
        "gauges": doc.get("gauges") or {},
        "histograms": {
            name: [[list(k), h] for k, h in series.items()] for name, series in histograms.items()
        },
    }


def _rebin_index(index: int, old: tuple[float, ...], new: tuple[float, ...]) -> int:
    bound = old[index] if index < len(old) else math.inf
    return next((i for i, b in enumerate(new) if bound <= b), len(new))


def _legacy_rows(rows: object) -> Iterable[tuple[Labels, Any]]:
    if not isinstance(rows, list):
        return
    for row in rows:
        if isinstance(row, list) and len(row) == 2 and isinstance(row[0], list):
            yield tuple(str(v) for v in row[0]), row[1]
