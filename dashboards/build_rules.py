"""The snapshot-runtime Prometheus rules (recording rules and alerts), as code.

Generated from the mixin config (deploy/mixin/config.json, dashboards/mixin.py)
so that the series selector, the thresholds, the runbook base URL and the
Grafana base URL are the same in the rules and in the dashboards
(dashboards/build.py reads the same config):

    .venv/bin/python dashboards/build_rules.py           # (re)write deploy/prometheus/rules/
    .venv/bin/python dashboards/build_rules.py --check   # exit 1 if the committed files differ
    .venv/bin/python dashboards/build_rules.py --config team.json --out /tmp/rules

Every alert has a runbook section in docs/operations.md and firing and
not-firing cases in deploy/prometheus/tests/vmsnap.alerts.test.yml
(tests/test_rules.py checks both).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "RULES_DIR",
    "Alert",
    "Recording",
    "alerts",
    "long_recordings",
    "main",
    "render_alerts",
    "render_rules",
]

RULES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "rules"


def _mixin() -> ModuleType:
    # dashboards/ is a folder of scripts, not a package: load the sibling by path.
    path = Path(__file__).resolve().parent / "mixin.py"
    spec = importlib.util.spec_from_file_location("vmsnap_mixin", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("vmsnap_mixin", module)
    spec.loader.exec_module(module)
    return module


mixin = _mixin()

# Per-VM alerts keep these labels (region/cluster are absent with a static scrape config).
PER_VM = "job, instance, region, cluster"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    severity: str
    summary: str
    description: str
    dashboard: str  # a path from /d/<uid>, made absolute with grafanaBaseUrl
    for_: str | None = None
    comment: str = ""
    # In the 5-minute group (LONG_GROUP): tickets over a day, whose answer may come
    # up to 5 min later. Pages stay in the 1-minute group and read no long window.
    long: bool = False


@dataclass(frozen=True)
class Recording:
    record: str
    expr: str
    comment: str = ""


FAST_GROUP = ("vmsnap-alerts", "1m")
LONG_GROUP = ("vmsnap-alerts-long", "5m")
# A page's short window: covers the LONG_GROUP's interval plus its evaluation time and a
# scrape, so the first event is seen here until the long group's record of it exists.
SHORT = "10m"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _spoken(duration: str) -> str:
    """A Prometheus duration as the annotations say it: "10m" -> "10 min"."""
    units = {"s": "s", "m": "min", "h": "h", "d": "d"}
    return f"{duration[:-1]} {units[duration[-1]]}"


class _Series:
    """``m("vmsnap_x", 'a="b"')`` -> ``vmsnap_x{<selector>, a="b"}``."""

    def __init__(self, selector: str) -> None:
        self.selector = selector

    def __call__(self, metric: str, *matchers: str) -> str:
        return f"{metric}{{{', '.join([self.selector, *matchers])}}}"


class _Selectors:
    """The raw series the alerts and their recordings read, with the mixin's selector."""

    def __init__(self, cfg: Any) -> None:
        m = _Series(cfg.selector)
        self.m = m
        self.frozen = _number(cfg.thresholds.frozen_window_seconds)
        # Selectors with matchers of their own (3.10: no backslash in f-string fields).
        self.post_timeouts = m("vmsnap_script_timeouts_total", 'script="post"')
        self.freeze_count = m("vmsnap_freeze_duration_seconds_count")
        self.frozen_bucket = m(
            "vmsnap_freeze_duration_seconds_bucket", f'le=~"{self.frozen}|{self.frozen}\\\\.0"'
        )
        self.backstop_thaws = m("vmsnap_backstop_thaws_total")
        self.watchdog_thaws = m("vmsnap_watchdog_thaws_total")
        self.failed_jobs = m("vmsnap_jobs_total", 'outcome="failed"')
        # The host's presnapshot failures only: guest_failed (firstGuestThenHost took the
        # host after every guest snapshot failed) is a guest failure, not the host's.
        self.host_fallbacks = m("vmsnap_snapshot_fallbacks_total", 'reason!="guest_failed"')
        self.host_jobs = m("vmsnap_snapshot_jobs_total", 'path="host"')

    def long_frozen(self, window: str) -> str:
        """Jobs whose frozen window exceeded the threshold (a bucket boundary, so exact)."""
        return (
            "(\n"
            f"    increase({self.freeze_count}[{window}])\n"
            "  - ignoring (le)\n"
            f"    increase({self.frozen_bucket}[{window}])\n"
            ") > 0.5"
        )


FLEET = "job, region, cluster"

# Recorded in LONG_GROUP, read by the alerts. instance: series exist only for a VM
# with an event in the window (the rule keeps > 0), so they add no series per VM.
POST_TIMEOUTS_6H = "instance:vmsnap_script_timeouts:increase6h"
LONG_FREEZES_6H = "instance:vmsnap_long_freezes:increase6h"
BACKSTOP_THAWS_6H = "instance:vmsnap_backstop_thaws:increase6h"
WATCHDOG_THAWS_6H = "instance:vmsnap_watchdog_thaws:increase6h"
FAILED_JOBS_1D = "instance:vmsnap_failed_jobs:increase1d"
FLEET_FALLBACKS_1D = "cluster:vmsnap_snapshot_fallbacks:increase1d"
FLEET_HOST_JOBS_1D = "cluster:vmsnap_snapshot_host_jobs:increase1d"


def long_recordings(cfg: Any) -> list[Recording]:
    """What the alerts read over 6 h or a day, evaluated every 5 minutes, not every minute.

    A [6h] or [1d] range reads every sample of every input series in it (1,440 a day at
    60 s scrapes), so reading it every minute was the 1-minute group's main cost.
    """
    s = _Selectors(cfg)
    return [
        Recording(
            POST_TIMEOUTS_6H,
            f"increase({s.post_timeouts}[6h]) > 0",
            "Post-script timeouts only (the pre-script share is cluster-level).",
        ),
        Recording(LONG_FREEZES_6H, s.long_frozen("6h")),
        Recording(BACKSTOP_THAWS_6H, f"increase({s.backstop_thaws}[6h]) > 0"),
        Recording(
            WATCHDOG_THAWS_6H,
            f"sum by ({PER_VM}, reason) (increase({s.watchdog_thaws}[6h])) > 0",
        ),
        Recording(
            FAILED_JOBS_1D,
            f"sum by (job, instance) (increase({s.failed_jobs}[1d])) > 0",
        ),
        Recording(
            FLEET_FALLBACKS_1D,
            f"sum by ({FLEET}) (increase({s.host_fallbacks}[1d]))",
            "VmsnapHostFallbacksRising's operands, each computed once (the alert reads\n"
            "the fallbacks twice).",
        ),
        Recording(FLEET_HOST_JOBS_1D, f"sum by ({FLEET}) (increase({s.host_jobs}[1d]))"),
    ]


def _recorded_or_short(recorded: str, short: str) -> str:
    """A page over a long window, read cheaply every minute.

    The long window comes from LONG_GROUP's record (max over 10 min, so a late
    5-minute evaluation leaves no gap); an event newer than that record comes from
    the raw series over SHORT. The record comes first: its value (the count over the
    whole window) is what the annotations show.
    """
    return f"max_over_time({recorded}[{SHORT}])\nor\n{short}"


_LATE_RECORD = (
    "A record of a 5-minute group (vmsnap.rules.yml), read as its last value over\n"
    f"{_spoken(SHORT)}: the next one is written only when that group's evaluation ends, and\n"
    "a bare selector (5 min lookback) would find nothing in between and restart the\n"
    "for: {for_}."
)


def alerts(cfg: Any) -> list[Alert]:
    s = _Selectors(cfg)
    m = s.m
    t = cfg.thresholds
    frozen = s.frozen
    vm_detail = "/d/vmsnap-job-detail?var-instance={{ $labels.instance }}"
    downgraded_jobs = m("vmsnap_jobs_total", 'outcome="success"', 'consistency=~"filesystem|crash"')
    pre_runs = m("vmsnap_script_runs_total", 'script="pre"')
    conflicts = m("vmsnap_sidecar_log_mirror_errors_total", 'error="conflict"')
    return [
        Alert(
            "VmsnapPreScriptTimeoutRateHigh",
            'last_over_time(cluster:vmsnap_script_timeouts_per_runs:ratio_rate6h{script="pre"}'
            f"[{SHORT}]) > {_number(t.pre_script_timeout_ratio)}",
            "warning",
            "Pre-script timeouts: {{ $value | humanizePercentage }} of pre-script runs in"
            " {{ $labels.cluster }} ({{ $labels.region }}) over 6 h",
            f"More than {_number(t.pre_script_timeout_ratio * 100)}% of pre-script runs in"
            " job={{ $labels.job }} region={{ $labels.region }}\n"
            "cluster={{ $labels.cluster }} hit timeoutInSeconds in the last 6 h. Those jobs"
            " either\nfailed (Pre-ScriptTimeout) or, with continueBackupOnFailure, were taken"
            " without\napplication consistency.",
            "/d/vmsnap-script-health",
            for_="5m",
            comment=_LATE_RECORD.format(for_="5m"),
        ),
        Alert(
            "VmsnapPostScriptTimeout",
            _recorded_or_short(POST_TIMEOUTS_6H, f"increase({s.post_timeouts}[{SHORT}]) > 0"),
            "critical",
            "Post-script timed out on {{ $labels.instance }}",
            "The post-script on {{ $labels.instance }} hit its timeout in the last 6 h and was\n"
            "killed. The application it resumes may still be quiesced (read-only, locks held).",
            vm_detail,
        ),
        Alert(
            "VmsnapFrozenWindowTooLong",
            _recorded_or_short(LONG_FREEZES_6H, s.long_frozen(SHORT)),
            "warning",
            f"Filesystems on {{{{ $labels.instance }}}} stayed frozen longer than {frozen} s",
            '{{ $value | printf "%.0f" }} job(s) on {{ $labels.instance }} kept the filesystems\n'
            f"frozen for more than {frozen} s in the last 6 h. Every write on the VM blocks for"
            " that long.",
            vm_detail,
            comment=f"Jobs whose frozen window exceeded {frozen} s (a bucket boundary, so exact),\n"
            f"over 6 h ({LONG_FREEZES_6H}) or, for the newest, {_spoken(SHORT)}.",
        ),
        Alert(
            "VmsnapFrozenWindowP99High",
            f"last_over_time(cluster:vmsnap_freeze_duration_seconds:p99_rate6h[{SHORT}])"
            f" > {_number(t.frozen_window_p99_seconds)}",
            "warning",
            "p99 frozen window {{ $value | humanizeDuration }} in {{ $labels.cluster }}"
            " ({{ $labels.region }})",
            "The 99th percentile of the frozen window across job={{ $labels.job }}\n"
            "region={{ $labels.region }} cluster={{ $labels.cluster }} has been above"
            f" {_number(t.frozen_window_p99_seconds)} s\n"
            "over the last 6 h: a fleet-wide slowdown, not one VM.",
            "/d/vmsnap-fleet-freeze",
            for_="30m",
            comment=_LATE_RECORD.format(for_="30m"),
        ),
        Alert(
            "VmsnapHostFallbacksRising",
            "(\n"
            f"    {FLEET_FALLBACKS_1D}\n"
            "  /\n"
            f"    ({FLEET_FALLBACKS_1D} + {FLEET_HOST_JOBS_1D})\n"
            f") > {_number(t.host_fallback_ratio)}\n"
            f"and {FLEET_FALLBACKS_1D} >= {t.host_fallback_min_jobs}",
            "warning",
            "Host snapshot fallbacks: {{ $value | humanizePercentage }} of host-path jobs in"
            " {{ $labels.cluster }} ({{ $labels.region }}) over 1 d",
            f"More than {_number(t.host_fallback_ratio * 100)}% of the jobs that tried the host"
            " snapshot path in\njob={{ $labels.job }} region={{ $labels.region }}"
            " cluster={{ $labels.cluster }} fell back to the guest\npath in the last day:"
            " the WireServer's presnapshot failed for them. Snapshots still\nhappen (through"
            " SAS URLs), but the host path is failing fleet-wide.",
            "/d/vmsnap-fleet-freeze",
            for_="30m",
            comment="Fleet-wide (per job/region/cluster), over a day: jobs are daily. Of the jobs\n"
            "that tried the host (fallbacks + host-path jobs), the share that fell back; at\n"
            f"least {t.host_fallback_min_jobs} fallbacks, so one VM's bad day stays quiet.",
            long=True,
        ),
        Alert(
            "VmsnapBackstopThaw",
            _recorded_or_short(BACKSTOP_THAWS_6H, f"increase({s.backstop_thaws}[{SHORT}]) > 0"),
            "critical",
            "The sidecar's backstop had to thaw filesystems on {{ $labels.instance }}",
            "Neither the runtime nor its watchdog thawed the frozen filesystems on\n"
            "{{ $labels.instance }}; the sidecar's backstop did. Writes on that VM were blocked\n"
            "until then.",
            vm_detail,
        ),
        Alert(
            "VmsnapWatchdogThaw",
            _recorded_or_short(
                WATCHDOG_THAWS_6H,
                f"sum by ({PER_VM}, reason) (increase({s.watchdog_thaws}[{SHORT}])) > 0",
            ),
            "critical",
            "The runtime's watchdog had to thaw filesystems on {{ $labels.instance }}"
            " ({{ $labels.reason }})",
            "The snapshot runtime on {{ $labels.instance }} left its filesystems frozen (it\n"
            "died, hung past its freeze deadline or was signalled: reason {{ $labels.reason }})\n"
            "and its watchdog thawed them in the last 6 h. Writes were blocked until then\n"
            "and that job has no consistent snapshot.",
            vm_detail,
        ),
        Alert(
            "VmsnapJobFailed",
            "(\n"
            f"    {m('vmsnap_last_job_timestamp_seconds')}\n"
            f"  > {m('vmsnap_last_success_timestamp_seconds')}\n"
            ")\n"
            "and on (job, instance)\n"
            "(\n"
            f"  max_over_time({FAILED_JOBS_1D}[{SHORT}])\n"
            "  or\n"
            f"  sum by (job, instance) (increase({s.failed_jobs}[{SHORT}])) > 0\n"
            ")",
            "critical",
            "The last snapshot job on {{ $labels.instance }} failed: no restore point",
            "The most recent snapshot job on {{ $labels.instance }} failed (it is newer than\n"
            "the last success) and no job has succeeded since. That day has no restore point.\n"
            "The alert resolves when a later job succeeds.",
            vm_detail,
            comment="The last completed job is newer than the last success, and a job failed in\n"
            "the last day (a VM that never succeeded has last success 0). Resolves on the\n"
            f"next success. The day is {FAILED_JOBS_1D}; the newest {_spoken(SHORT)} are read"
            " raw.",
        ),
        Alert(
            "VmsnapConsistencyDowngraded",
            f"sum by ({PER_VM}) (\n"
            "  increase("
            f"{downgraded_jobs}"
            "[1d])\n"
            ") > 0\n"
            "and on (job, instance)\n"
            f"  sum by (job, instance) (increase({pre_runs}"
            "[1d])) > 0",
            "warning",
            "Snapshots of {{ $labels.instance }} were taken without application consistency",
            "{{ $labels.instance }} runs pre-scripts, yet in the last day a job succeeded\n"
            "with a filesystem- or crash-consistent verdict: the application was not\n"
            "quiesced (a pre-script failed or timed out and continueBackupOnFailure let the\n"
            "job go on). The restore point exists but the application may need recovery.",
            vm_detail,
            comment="A VM that ran pre-scripts in the last day yet had a job succeed with a\n"
            "filesystem or crash verdict. (A workload configured without scripts has no\n"
            "metric of its own yet: not covered.)",
            long=True,
        ),
        Alert(
            "VmsnapNoRecentSuccess",
            "(time() - "
            f"{m('vmsnap_last_success_timestamp_seconds')} > {t.no_success_hours} * 3600)\n"
            "and\n"
            f"max_over_time({m('vmsnap_last_success_timestamp_seconds')}[1h] offset"
            f" {t.no_success_hours - 1}h)",
            "critical",
            "No successful snapshot of {{ $labels.instance }} for {{ $value | humanizeDuration }}",
            "{{ $labels.instance }} has not completed a successful snapshot job in more than\n"
            f"{t.no_success_hours} h: the last daily backup was missed or failed.",
            vm_detail,
            for_="15m",
            comment="The second operand keeps a freshly installed sidecar (never a success:\n"
            f"timestamp 0) quiet until it has been reporting for {t.no_success_hours - 1} h.",
        ),
        Alert(
            "VmsnapJobAbandoned",
            f"increase({m('vmsnap_jobs_abandoned_total')}[1d]) > 0",
            "warning",
            "A snapshot job on {{ $labels.instance }} died without a record",
            "A snapshot runtime process on {{ $labels.instance }} died (killed, OOM, reboot)\n"
            "before writing its job record in the last day. The sidecar counted the job as\n"
            "abandoned; its status may still say transitioning.",
            vm_detail,
            long=True,
        ),
        Alert(
            "VmsnapSpoolDropped",
            f"sum by ({PER_VM}, kind) (increase({m('vmsnap_spool_dropped_total')}[1d])) > 0",
            "warning",
            "The runtime on {{ $labels.instance }} dropped {{ $labels.kind }} (spool full)",
            "In the last day the runtime on {{ $labels.instance }} found its spool full and\n"
            'dropped {{ $value | printf "%.0f" }} {{ $labels.kind }}: the sidecar is not'
            " draining it.",
            vm_detail,
            long=True,
        ),
        Alert(
            "VmsnapRecordsInvalid",
            f"increase({m('vmsnap_sidecar_records_invalid_total')}[1d]) > 0",
            "warning",
            "The sidecar on {{ $labels.instance }} could not ingest job records",
            "In the last day the sidecar on {{ $labels.instance }} could not ingest\n"
            '{{ $value | printf "%.0f" }} job record(s): those jobs are missing from the job'
            " metrics.\nThe sidecar's log names each file and why (json, schema, io, size,"
            " depth).",
            vm_detail,
            long=True,
        ),
        Alert(
            "VmsnapLogMirrorConflict",
            f"increase({conflicts}[1d]) > 0",
            "warning",
            "Another writer changed a job's log blob on {{ $labels.instance }}",
            "A logsBlobUri on {{ $labels.instance }} grew by bytes that are not the job's log\n"
            "in the last day: something else writes to that blob. The sidecar counted the\n"
            "conflict and went on at the blob's end, so the blob holds foreign bytes.",
            vm_detail,
            long=True,
        ),
        Alert(
            "VmsnapLogMirrorAbandoned",
            f"increase({m('vmsnap_sidecar_log_mirror_abandoned_total')}[1d]) > 0",
            "warning",
            "The sidecar gave up mirroring a job's log on {{ $labels.instance }}",
            "In the last day the sidecar on {{ $labels.instance }} stopped mirroring\n"
            '{{ $value | printf "%.0f" }} job log(s) to their logsBlobUri for good.'
            " Those logs are only on\nthe VM. The sidecar's log says why (expired SAS,"
            " missing container, ...).",
            vm_detail,
            long=True,
        ),
        Alert(
            "VmsnapLogMirrorFailing",
            f"sum without (error) (rate({m('vmsnap_sidecar_log_mirror_errors_total')}[15m])) > 0",
            "warning",
            "Log mirroring to logsBlobUri keeps failing on {{ $labels.instance }}",
            "The sidecar on {{ $labels.instance }} has been failing to append job logs to the\n"
            "logsBlobUri for 30 min or more.",
            vm_detail,
            for_="30m",
        ),
        Alert(
            "VmsnapLogMirrorBacklogGrowing",
            "(\n"
            f"    {m('vmsnap_sidecar_log_mirror_backlog_bytes')} > 0\n"
            "  and\n"
            f"    deriv({m('vmsnap_sidecar_log_mirror_backlog_bytes')}[30m]) >= 0\n"
            ")\n"
            f"or {m('vmsnap_sidecar_log_mirror_backlog_bytes')} > 32 * 1024 * 1024",
            "warning",
            "Log mirror backlog not draining on {{ $labels.instance }}"
            " ({{ $value | humanize1024 }}B)",
            "Job log lines waiting to be mirrored on {{ $labels.instance }} have not drained\n"
            "for an hour or exceed 32 MiB. At the spool cap (64 MiB) jobs drop log lines.",
            vm_detail,
            for_="30m",
            comment="Not draining for 30 min (growing or stuck), or past half the 64 MiB spool"
            " cap.",
        ),
        Alert(
            "VmsnapSidecarDown",
            f"{m('up')} == 0",
            "warning",
            "snapshot-sidecar on {{ $labels.instance }} is not answering scrapes",
            "Prometheus could not scrape {{ $labels.instance }} for"
            f" {_spoken(t.sidecar_down_for)}. Snapshots still run\n"
            "and spool their records, but nothing is exported, logs are not mirrored and the\n"
            "backstop thaw is not there.",
            vm_detail,
            for_=t.sidecar_down_for,
        ),
        Alert(
            "VmsnapSidecarMetricsMissing",
            f"{m('up')} == 1\nunless on (job, instance)\n{m('vmsnap_build_info')}",
            "warning",
            "{{ $labels.instance }} answers scrapes but exposes no vmsnap metrics",
            "The scrape target {{ $labels.instance }} is up but has no vmsnap_build_info:\n"
            "something else answers on the sidecar's port, or the sidecar serves an empty\n"
            "registry. Nothing from that VM is exported.",
            vm_detail,
            for_=t.sidecar_down_for,
        ),
        Alert(
            "VmsnapSidecarVanished",
            f"max_over_time({m('vmsnap_build_info')}[1d])\n"
            f"unless on (job, instance)\n{m('vmsnap_build_info')}",
            "warning",
            "The sidecar on {{ $labels.instance }} stopped reporting",
            "{{ $labels.instance }} exposed vmsnap_build_info in the last day but no longer\n"
            "does: the target left service discovery, the sidecar was removed, or its\n"
            "metrics vanished. Its VM may still be taking snapshots no one sees.",
            vm_detail,
            for_=t.sidecar_vanished_for,
            comment="Seen in the last day, not now: catches a target that left service\n"
            "discovery too (then there is no up series to be 0).",
            long=True,
        ),
    ]


def _block(text: str, indent: int) -> list[str]:
    pad = " " * indent
    return [f"{pad}{line}" if line else "" for line in text.split("\n")]


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


ALERTS_HEADER = """\
# GENERATED by dashboards/build_rules.py from deploy/mixin/config.json: edit those,
# then run `.venv/bin/python dashboards/build_rules.py` (tests fail on drift).
#
# Alerts for snapshot-runtime fleets. Every alert has a runbook section in
# docs/operations.md ("## Alerts runbook", one "### <AlertName>" heading each)
# and firing and not-firing cases in deploy/prometheus/tests/vmsnap.alerts.test.yml.
#
# Severity: critical = page (data or an application is at risk now);
#           warning  = ticket (look within a working day).
#
# "In the last 6 h" alerts (pages) fire on the evaluation after the event and
# resolve by themselves 6 h later (up to 15 min more). "In the last day" alerts
# (tickets about daily jobs) use [1d], so the ticket stays open for a working
# day. They rely on the sidecar exporting every counter from 0 (zero-initialised
# series), so that the first event is an increase and not the series appearing
# at 1; increase() also counts an event after a counter reset (a lost sidecar
# state file).
#
# Cost: a [6h] or [1d] range reads every sample of its input series (1,440 a
# day per series at 60 s scrapes), so no rule of the 1-minute group reads one.
# vmsnap-alerts-long (every 5 minutes) reads them: it holds the day's tickets
# (up to 5 min later to fire or resolve; nothing there pages) and records the
# pages' long windows (instance:*, only for VMs with an event). A page reads that
# record, plus the raw series over the last 10 minutes for an event newer than
# the record (docs/operations.md "Scaling to a fleet").
"""


def _alert_lines(cfg: Any, alert: Alert) -> list[str]:
    lines = _rule_head("alert", alert.name, alert.comment, alert.expr)
    if alert.for_:
        lines.append(f"        for: {alert.for_}")
    lines += [
        "        labels:",
        f"          severity: {alert.severity}",
        "        annotations:",
    ]
    lines.append(f"          summary: {_quoted(alert.summary)}")
    lines.append("          description: >-")
    lines.extend(_block(alert.description, 12))
    lines.append(f"          runbook_url: {_quoted(cfg.runbook(alert.name))}")
    lines.append(f"          dashboard: {_quoted(cfg.dashboard(alert.dashboard))}")
    return lines


def _recording_lines(rec: Recording) -> list[str]:
    return _rule_head("record", rec.record, rec.comment, rec.expr)


def _rule_head(key: str, name: str, comment: str, expr: str) -> list[str]:
    """``- alert:``/``- record:``, its comment and its expr: the same for both kinds."""
    lines = [f"      - {key}: {name}"]
    if comment:
        lines.extend(_block("\n".join(f"# {c}" for c in comment.split("\n")), 8))
    if "\n" in expr:
        lines.append("        expr: |")
        lines.extend(_block(expr, 10))
    else:
        lines.append(f"        expr: {expr}")
    return lines


def render_alerts(cfg: Any) -> str:
    every = alerts(cfg)
    lines = [ALERTS_HEADER.rstrip("\n"), "groups:"]
    for (name, interval), members in (
        (FAST_GROUP, [a for a in every if not a.long]),
        (LONG_GROUP, [a for a in every if a.long]),
    ):
        if name == LONG_GROUP[0]:
            lines.append("")
        lines += [f"  - name: {name}", f"    interval: {interval}", "    rules:"]
        blocks: list[list[str]] = []
        if name == LONG_GROUP[0]:
            # First in the group: the alerts below read this evaluation's values.
            blocks += [_recording_lines(r) for r in long_recordings(cfg)]
        blocks += [_alert_lines(cfg, a) for a in members]
        for i, block in enumerate(blocks):
            if i:
                lines.append("")
            lines.extend(block)
    return "\n".join(lines) + "\n"


def render_rules(cfg: Any) -> str:
    m = _Series(cfg.selector)
    freeze_bucket = m("vmsnap_freeze_duration_seconds_bucket")
    script_bucket = m("vmsnap_script_duration_seconds_bucket")
    return f"""\
# GENERATED by dashboards/build_rules.py from deploy/mixin/config.json: edit those,
# then run `.venv/bin/python dashboards/build_rules.py` (tests fail on drift).
#
# Recording rules for snapshot-runtime fleets (sidecar metrics, docs/telemetry.md).
# Every raw series is selected with the mixin's selector ({cfg.selector}).
#
# Names follow level:metric:operations. Levels:
#   cluster:  aggregated by (job, region, cluster)  -- region/cluster come from
#             scrape relabelling (deploy/prometheus/prometheus.azure-sd.yml); with a
#             static config they are simply absent and the series is per job.
#   job:      aggregated by (job) only: the whole fleet behind one scrape job.
#
# Windows are long on purpose: a VM takes a few snapshots a day, so a 5m rate
# is nearly always empty. 1h is the shortest window a fleet graph should use;
# 6h feeds the alerts; 1d is the daily picture.
#
# Classic histograms from prometheus_client expose le="10.0"; Prometheus 3
# normalises that to le="10" at scrape time, 2.x does not. Every le matcher
# here is written to match both.
#
# Cost: a rule over [1d] reads every sample of its input series in that day,
# so the long-window groups run every 5 min, not every minute (a fleet view
# does not need more; at 30 s scrapes and 10,000 VMs the 1d bucket rule reads
# ~430 M samples per evaluation).
groups:
  - name: vmsnap-freeze
    interval: 1m
    rules:
      - record: cluster:vmsnap_freeze_duration_seconds_bucket:rate1h
        expr: sum by (job, region, cluster, le) (rate({freeze_bucket}[1h]))
      - record: cluster:vmsnap_script_duration_seconds_bucket:rate1h
        expr: sum by (job, region, cluster, le) (rate({script_bucket}[1h]))

  - name: vmsnap-freeze-long
    interval: 5m
    rules:
      - record: cluster:vmsnap_freeze_duration_seconds_bucket:rate6h
        expr: sum by (job, region, cluster, le) (rate({freeze_bucket}[6h]))
      - record: cluster:vmsnap_freeze_duration_seconds_bucket:rate1d
        expr: sum by (job, region, cluster, le) (rate({freeze_bucket}[1d]))
      - record: cluster:vmsnap_freeze_duration_seconds:p50_rate6h
        expr: histogram_quantile(0.50, cluster:vmsnap_freeze_duration_seconds_bucket:rate6h)
      - record: cluster:vmsnap_freeze_duration_seconds:p90_rate6h
        expr: histogram_quantile(0.90, cluster:vmsnap_freeze_duration_seconds_bucket:rate6h)
      - record: cluster:vmsnap_freeze_duration_seconds:p99_rate6h
        expr: histogram_quantile(0.99, cluster:vmsnap_freeze_duration_seconds_bucket:rate6h)
      - record: cluster:vmsnap_script_duration_seconds_bucket:rate6h
        expr: sum by (job, region, cluster, le) (rate({script_bucket}[6h]))
      - record: cluster:vmsnap_script_duration_seconds_bucket:rate1d
        expr: sum by (job, region, cluster, le) (rate({script_bucket}[1d]))
      - record: job:vmsnap_freeze_duration_seconds:p99_rate1d
        expr: |
          histogram_quantile(0.99,
            sum by (job, le) (cluster:vmsnap_freeze_duration_seconds_bucket:rate1d))

  - name: vmsnap-jobs
    interval: 5m
    rules:
      - record: cluster:vmsnap_jobs:increase1d
        expr: |
          sum by (job, region, cluster, outcome, consistency) (
            increase({m("vmsnap_jobs_total")}[1d]))
      # By error group (core/errors.py ERROR_GROUPS): the exact code of each VM's
      # latest job is vmsnap_last_job_info.
      - record: cluster:vmsnap_job_errors:increase1d
        expr: |
          sum by (job, region, cluster, group) (
            increase({m("vmsnap_job_errors_total")}[1d]))
      - record: cluster:vmsnap_script_runs:increase6h
        expr: |
          sum by (job, region, cluster, script) (
            increase({m("vmsnap_script_runs_total")}[6h]))
      - record: cluster:vmsnap_script_retries:increase6h
        expr: |
          sum by (job, region, cluster, script) (
            increase({m("vmsnap_script_retries_total")}[6h]))
      - record: cluster:vmsnap_script_timeouts:increase6h
        expr: |
          sum by (job, region, cluster, script) (
            increase({m("vmsnap_script_timeouts_total")}[6h]))
      # Share of script runs that hit the timeout. 0/0 (no runs) is NaN, never > x.
      - record: cluster:vmsnap_script_timeouts_per_runs:ratio_rate6h
        expr: |
          cluster:vmsnap_script_timeouts:increase6h
          / cluster:vmsnap_script_runs:increase6h
"""


def _outputs(cfg: Any, out: Path) -> dict[Path, str]:
    return {
        out / "vmsnap.rules.yml": render_rules(cfg),
        out / "vmsnap.alerts.yml": render_alerts(cfg),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs")
    parser.add_argument("--config", type=Path, help="JSON laid over deploy/mixin/config.json")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: rules/)")
    args = parser.parse_args(argv)
    cfg = mixin.load(args.config)
    out: Path = args.out or RULES_DIR
    drift = []
    for path, text in _outputs(cfg, out).items():
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                drift.append(path.name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if drift:
        print(f"stale: {', '.join(drift)} (run dashboards/build_rules.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
