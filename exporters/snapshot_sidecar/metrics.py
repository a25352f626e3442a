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
its ``other`` value (for ``error``: ``Unknown``) or dropped, never exposed as is.
"""

from __future__ import annotations

import itertools
import math
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.core.phases import PHASES
from snapshot_runtime.core.snapshot_mode import FALLBACK_REASONS, SNAPSHOT_PATHS
from snapshot_runtime.snapshot.failures import FailureKind

__all__ = [
    "ABANDON_REASONS",
    "CONSISTENCIES",
    "ERROR_LABELS",
    "FAMILIES",
    "FAMILY_BY_NAME",
    "FREEZE_BUCKETS",
    "MIRROR_ERRORS",
    "OUTCOMES",
    "SCRIPTS",
    "WORKLOADS",
    "WORKLOAD_STALL_BUCKETS",
    "Family",
    "HistogramValue",
    "MetricValues",
]

Kind = Literal["counter", "gauge", "histogram"]
Labels = tuple[str, ...]

OUTCOMES: tuple[str, ...] = ("success", "failed")
CONSISTENCIES: tuple[str, ...] = ("application", "filesystem", "crash", "none")
UNKNOWN_ERROR = "Unknown"
ERROR_LABELS: tuple[str, ...] = (*(code.value for code in ErrorCode), UNKNOWN_ERROR)
SCRIPTS: tuple[str, ...] = ("pre", "post")
# Workloads whose quiesce blocks commits (workload.conf; PostgreSQL never does).
WORKLOADS: tuple[str, ...] = ("mariadb", "mysql")
THAWED_BY: tuple[str, ...] = ("runtime", "deadline", "watchdog")
BLOB_KINDS: tuple[str, ...] = typing.get_args(FailureKind)
WATCHDOG_REASONS: tuple[str, ...] = ("eof", "deadline", "signal", "protocol_error", "other")
DROPPED_KINDS: tuple[str, ...] = ("log_lines", "spans")
# Log-mirror failures: the blob request kinds plus the sidecar's own reasons.
MIRROR_ERRORS: tuple[str, ...] = (
    *BLOB_KINDS,
    "unseal",  # credentials.sealed could not be opened (wrong key, tampered)
    "conflict",  # the blob grew by bytes that are not our log (a foreign writer)
    "block_limit",  # the blob reached the sidecar's block budget (~40,000 blocks)
    "expired",  # gave up: the job's log was not mirrored within --give-up-after
)
# Why mirroring stopped for good: only final failures (mirror.py _FINAL_KINDS,
# any other 4xx as "other") and the sidecar's own stops. Retryable kinds
# (throttled, transient, timeout) and "conflict" never stop it, so they cost no
# series here (they still count in vmsnap_sidecar_log_mirror_errors_total).
ABANDON_REASONS: tuple[str, ...] = (
    "auth", "not_found", "limit", "other", "unseal", "block_limit", "expired",
)  # fmt: skip
SPAN_DROP_REASONS: tuple[str, ...] = ("backlog", "expired", "invalid")
# Why a spool file could not be read (spool_schema.SpoolFormatError.reason, or io).
INVALID_REASONS: tuple[str, ...] = ("json", "schema", "io", "size", "depth")
BACKSTOP_RESULTS: tuple[str, ...] = ("thawed", "not_frozen", "error")
COMPONENTS: tuple[str, ...] = ("ingest", "mirror", "spans", "backstop", "state")

# 100 ms to 60 s. Boundaries sit exactly on the alert/SLO thresholds (1 s, the
# 5 s p99 and 10 s window goals, 30 s, the 60 s freeze deadline) so `le` ratios
# are exact; 60 keeps overruns of the deadline in a bucket of their own below
# +Inf. Below 1 s the 0.1/0.25/0.5 split shows a healthy window's spread; finer
# (10-50 ms) cost a series per VM each and no panel or alert read them.
FREEZE_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Series budget (issue 16, docs/telemetry.md "Series budget"): a VM takes a
# few snapshots a day, so per-VM histograms are sparse; every bucket is paid on
# every VM. Phases: the dashboards read only _sum/_count (mean per phase), so
# the phase histogram keeps its +Inf bucket alone (and the exemplar on it).
PHASE_BUCKETS: tuple[float, ...] = ()
# Scripts run up to the plug-in host's 1800 s cap; 30 and 60 s are the usual
# configured timeouts, 1 and 10 s split quick scripts from database flushes.
SCRIPT_BUCKETS: tuple[float, ...] = (1.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
# One disk's snapshot: normally well under a second; 10 s is slow, 60 s the
# request budget.
DISK_BUCKETS: tuple[float, ...] = (0.1, 1.0, 10.0, 60.0)
# No panel reads job-duration quantiles: a minute, five, and the 30 min cap.
JOB_BUCKETS: tuple[float, ...] = (60.0, 300.0, 1800.0)
# Commits blocked by a workload quiesce (MariaDB/MySQL): measured 60-270 ms here;
# 0.25 s splits a healthy stall from a slow one, 1 s is the alerting point. Two
# bounds only (issue 16's budget: 5 series per workload); _sum/_count give the mean.
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
        "Completed jobs by the error code they reported (the product's error code names).",
        ("error",),
        (ERROR_LABELS,),
        other={"error": UNKNOWN_ERROR},
    ),
    Family(
        "vmsnap_job_warnings_total",
        "counter",
        "Warnings reported by completed jobs, by error code name.",
        ("warning",),
        (ERROR_LABELS,),
        other={"warning": UNKNOWN_ERROR},
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
    _h(
        "vmsnap_phase_duration_seconds",
        "Duration of each job phase.",
        PHASE_BUCKETS,
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
        "Wall time of a pre/post-script, all attempts included.",
        SCRIPT_BUCKETS,
        script=SCRIPTS,
    ),
    # -- workloads (workload.conf) ----------------------------------------------
    Family(
        "vmsnap_workload_write_stall_seconds",
        "histogram",
        "Commits blocked by a workload quiesce, quiesce to release (MariaDB/MySQL).",
        ("workload",),
        (WORKLOADS,),
        WORKLOAD_STALL_BUCKETS,
    ),
    # -- disks ----------------------------------------------------------------
    _c("vmsnap_disk_snapshots_total", "Disk snapshots attempted (one per disk per job)."),
    _c(
        "vmsnap_disk_snapshot_attempts_total",
        "Snapshot requests sent, retries included.",
    ),
    Family(
        "vmsnap_disk_snapshot_failures_total",
        "counter",
        "Disk snapshots that failed, by failure kind.",
        ("kind",),
        (BLOB_KINDS,),
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
        "Thaws performed by the runtime's watchdog process (from its reports), by trigger.",
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
        "Job records that could not be ingested, by reason.",
        reason=INVALID_REASONS,
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
    _c("vmsnap_sidecar_log_mirror_lines_total", "Log lines mirrored to logsBlobUri."),
    _c("vmsnap_sidecar_log_mirror_writes_total", "Blob writes (append blocks, blocks, pages)."),
    _c(
        "vmsnap_sidecar_log_mirror_errors_total",
        "Failed log-mirror requests and decisions, by kind.",
        error=MIRROR_ERRORS,
    ),
    Family(
        "vmsnap_sidecar_log_mirror_abandoned_total",
        "counter",
        "Jobs whose log mirroring was stopped for good, by the error that stopped it.",
        ("error",),
        (ABANDON_REASONS,),
        other={"error": "other"},
    ),
    _g(
        "vmsnap_sidecar_log_mirror_backlog_bytes",
        "Log bytes in the spool not yet mirrored.",
    ),
    _g("vmsnap_sidecar_log_mirror_backlog_jobs", "Jobs with log lines not yet mirrored."),
    _c("vmsnap_sidecar_spans_exported_total", "Spans exported over OTLP."),
    _c("vmsnap_sidecar_span_export_errors_total", "Failed OTLP export calls."),
    _c(
        "vmsnap_sidecar_spans_dropped_total",
        "Spans never exported, by reason.",
        reason=SPAN_DROP_REASONS,
    ),
    _g("vmsnap_sidecar_span_backlog_bytes", "spans.jsonl bytes in the spool not yet exported."),
    _g("vmsnap_sidecar_span_backlog_max_bytes", "The span backlog bound (--span-backlog-bytes)."),
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
        key = tuple(labels) if not family.zero_init else family.bound(labels)
        if key is None or not math.isfinite(value):
            return
        self.gauges[name][key] = value

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
        key = family.bound(raw_key) if family.zero_init else raw_key
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
