"""The snapshot-runtime Grafana dashboards, as code.

Built with grafana-foundation-sdk, pinned to its Grafana 11.6 flavour
(pyproject.toml, test extra), and written as JSON to dashboards/json/ so that
Grafana's file provisioning needs no Python (deploy/grafana/provisioning/).

    .venv/bin/python dashboards/build.py           # (re)write dashboards/json/*.json
    .venv/bin/python dashboards/build.py --check   # exit 1 if the committed JSON differs

Three dashboards, each with a fixed uid (links, alerts and bookmarks use them):

* vmsnap-fleet-freeze   fleet frozen-window quantiles, heatmap with job exemplars, top VMs
* vmsnap-script-health  pre/post-script timeouts, retries, failures by error group, durations
* vmsnap-job-detail     one VM: last success, last job's code, phases, disk latency, consistency,
                        sidecar

Every metric name used here is in the sidecar's catalogue (exporters/metrics.py,
docs/telemetry.md) or is a recording rule in deploy/prometheus/rules/;
tests/test_dashboards.py checks both and that every expression parses.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from grafana_foundation_sdk.builders import bargauge, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

__all__ = ["DASHBOARDS", "JSON_DIR", "main", "render"]

JSON_DIR = Path(__file__).resolve().parent / "json"

# The provisioned datasources (deploy/grafana/provisioning/datasources/vmsnap.yml).
PROMETHEUS_UID = "vmsnap-prometheus"
TAGS = ["vmsnap", "snapshot-runtime"]

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")


def _load_mixin() -> ModuleType:
    # dashboards/ is a folder of scripts, not a package: load the sibling by path.
    spec = importlib.util.spec_from_file_location("vmsnap_mixin", MIXIN_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("vmsnap_mixin", module)
    spec.loader.exec_module(module)
    return module


MIXIN_PY = Path(__file__).resolve().parent / "mixin.py"
mixin = _load_mixin()

# Label selectors shared by the panels, set from the mixin config (_use_config).
# SELECTOR picks the sidecar's raw series out of a shared Prometheus (e.g. the
# scrape job); $job narrows to the scrape jobs picked in the "job" variable.
# Recorded series (cluster:...) were selected by the rules already and are
# aggregated by (job, region, cluster): RECORDED only. region/cluster come
# from scrape relabelling; "All" is ".*", which also matches a target without
# the label.
RECORDED = 'job=~"$job", region=~"$region", cluster=~"$cluster"'
SELECTOR = ""
FLEET = ""
FLEET_VMS = ""
ONE_VM = ""


def _use_selector(selector: str) -> None:
    global SELECTOR, FLEET, FLEET_VMS, ONE_VM
    SELECTOR = selector
    FLEET = f"{selector}, {RECORDED}"
    FLEET_VMS = f'{FLEET}, instance=~"$instance"'
    ONE_VM = f'{selector}, job=~"$job", instance="$instance"'


_use_selector(mixin.load().selector)

# Jobs are sparse (a few a day per VM): per-interval panels use a minimum
# interval long enough for a cell to hold jobs, not one scrape.
SPARSE_INTERVAL = "15m"
# Sidecar self-metrics change any time, but a bar per scrape is noise.
LIVE_INTERVAL = "5m"


# Said in the description of every panel counting jobs per interval.
def sparse_why(interval: str) -> str:
    return (
        f"Counted per interval (increase over $__interval, at least {interval}), not as a "
        "per-second rate: a VM runs a few jobs a day, so a rate would be a near-zero smear "
        "and a short window mostly empty."
    )


# Said in the description of every panel drawing a per-second rate.
RATE_WHY = "Per second, over $__rate_interval (at least four scrapes)."

JOB_DETAIL_URL = "/d/vmsnap-job-detail/?var-instance=${__value.raw}&${__url_time_range}"


# -- small builders --------------------------------------------------------------


class _Ids:
    """Sequential panel ids, so viewPanel=<id> links stay valid across rebuilds."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self) -> int:
        self._next += 1
        return self._next


def query(
    expr: str,
    legend: str = "",
    ref: str = "A",
    *,
    instant: bool = False,
    fmt: PromQueryFormat | None = None,
    exemplar: bool = False,
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    q = q.instant() if instant else q.range()
    if fmt is not None:
        q = q.format(fmt)
    if exemplar:
        q = q.exemplar(True)
    return q


def table_query(expr: str, ref: str) -> prometheus.Dataquery:
    """An instant query in table format, for table_panel."""
    return query(expr, ref=ref, instant=True, fmt=PromQueryFormat.TABLE)


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def stat_panel(
    ids: _Ids,
    title: str,
    description: str,
    target: prometheus.Dataquery,
    *,
    unit: str = "short",
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
    width: int = 4,
    no_value: str = "0",
) -> stat.Panel:
    return (
        stat.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DS)
        .with_target(target)
        .unit(unit)
        .no_value(no_value)
        .thresholds(thresholds(*steps))
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(4)
        .span(width)
    )


def series_panel(
    ids: _Ids,
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    unit: str = "short",
    width: int = 12,
    height: int = 8,
    bars: bool = False,
    stacked: bool = False,
    log_scale: bool = False,
    interval: str | None = None,
) -> timeseries.Panel:
    exprs = [t.build().expr or "" for t in targets]
    if interval not in {None, LIVE_INTERVAL} and any("[$__interval]" in e for e in exprs):
        description = f"{description} {sparse_why(str(interval))}"
    if any("[$__rate_interval]" in e for e in exprs):
        description = f"{description} {RATE_WHY}"
    panel = (
        timeseries.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DS)
        .targets(list(targets))
        .unit(unit)
        .span(width)
        .height(height)
        .legend(
            common_b.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_b.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .span_nulls(False)
    )
    if bars:
        panel = (
            panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80).line_width(1)
        ).bar_alignment(common.BarAlignment.CENTER)
    else:
        panel = (
            panel.draw_style(common.GraphDrawStyle.LINE)
            .line_width(2)
            .show_points(common.VisibilityMode.AUTO)
        )
    if stacked:
        panel = panel.stacking(common_b.StackingConfig().mode(common.StackingMode.NORMAL))
    if log_scale:
        panel = panel.scale_distribution(
            common_b.ScaleDistributionConfig().type(common.ScaleDistribution.LOG).log(10)
        )
    if interval is not None:
        panel = panel.interval(interval)
    return panel


def table_panel(
    ids: _Ids,
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    rename: dict[str, str],
    sort_by: str,
    width: int = 12,
    height: int = 9,
    link_instance: bool = True,
) -> table.Panel:
    """Instant queries in table format, merged on their labels into one row per series."""
    panel = (
        table.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DS)
        .targets(list(targets))
        .span(width)
        .height(height)
        .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize",
                options={"excludeByName": {"Time": True}, "renameByName": rename},
            )
        )
        .sort_by([common_b.TableSortByFieldState().display_name(sort_by).desc(True)])
    )
    if link_instance:
        panel = panel.override_by_name(
            "instance",
            [
                dm.DynamicConfigValue(
                    id_val="links",
                    value=[{"title": "Job detail for ${__value.raw}", "url": JOB_DETAIL_URL}],
                )
            ],
        )
    return panel


def bar_gauge_panel(
    ids: _Ids,
    title: str,
    description: str,
    target: prometheus.Dataquery,
    *,
    color: str,
    unit: str,
    width: int,
    height: int,
) -> bargauge.Panel:
    """Horizontal bars of the last value per series, in one colour."""
    return (
        bargauge.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DS)
        .with_target(target)
        .display_mode(common.BarGaugeDisplayMode.BASIC)
        .orientation(common.VizOrientation.HORIZONTAL)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(thresholds((None, color)))
        .unit(unit)
        .span(width)
        .height(height)
    )


def row(ids: _Ids, title: str) -> dash.Row:
    return dash.Row(title).id(ids())


def label_variable(name: str, label: str, query_: str, *, multi: bool = True) -> dash.QueryVariable:
    var = (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(query_)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
    )
    if multi:
        var = (
            var.multi(True)
            .include_all(True)
            .all_value(".*")
            .current(dm.VariableOption(selected=True, text="All", value="$__all"))
        )
    return var


def datasource_variable() -> dash.DatasourceVariable:
    return (
        dash.DatasourceVariable("datasource")
        .label("Prometheus")
        .type("prometheus")
        .current(dm.VariableOption(selected=True, text="vmsnap-prometheus", value=PROMETHEUS_UID))
    )


def fleet_variables(*, with_instance: bool, multi_instance: bool = True) -> list[Any]:
    variables: list[Any] = [
        datasource_variable(),
        # The scrape job(s): one Prometheus may scrape several fleets' sidecars.
        label_variable("job", "Job", f"label_values(vmsnap_build_info{{{SELECTOR}}}, job)"),
        label_variable(
            "region",
            "Region",
            f'label_values(vmsnap_build_info{{{SELECTOR}, job=~"$job"}}, region)',
        ),
        label_variable(
            "cluster",
            "Cluster",
            f'label_values(vmsnap_build_info{{{SELECTOR}, job=~"$job", region=~"$region"}}, '
            "cluster)",
        ),
    ]
    if with_instance:
        variables.append(
            label_variable(
                "instance",
                "VM",
                f"label_values(vmsnap_build_info{{{FLEET}}}, instance)",
                multi=multi_instance,
            )
        )
    return variables


def window_variable(default: str = "6h") -> dash.CustomVariable:
    return (
        dash.CustomVariable("window")
        .label("Window")
        .description("Rate window: jobs are sparse, so quantiles need hours of them.")
        .values("1h,6h,1d")
        .current(dm.VariableOption(selected=True, text=default, value=default))
    )


def base(uid: str, title: str, description: str) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .time("now-7d", "now")
        .timezone("browser")
        .refresh("5m")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .link(
            dash.DashboardLink("snapshot-runtime")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["vmsnap"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )


# -- Fleet freeze times ----------------------------------------------------------


def fleet_freeze() -> dash.Dashboard:
    ids = _Ids()
    freeze_bucket_range = (
        f"increase(vmsnap_freeze_duration_seconds_bucket{{{FLEET_VMS}}}[$__range])"
    )
    recorded = f"cluster:vmsnap_freeze_duration_seconds_bucket:rate$window{{{RECORDED}}}"
    per_vm = "instance, region, cluster"
    longest = f"topk(15, histogram_quantile(1, sum by ({per_vm}, le) ({freeze_bucket_range})))"
    top_vms = f"and on ({per_vm}) {longest}"
    d = base(
        "vmsnap-fleet-freeze",
        "snapshot-runtime / Fleet freeze times",
        "How long filesystems stay frozen across the fleet: quantiles over time, the "
        "distribution with a trace link per job, and the VMs with the longest windows.",
    )
    for variable in [*fleet_variables(with_instance=True), window_variable()]:
        d = d.with_variable(variable)

    def frozen_window_stat(title: str, description: str, quantile: str) -> stat.Panel:
        return stat_panel(
            ids,
            title,
            description,
            query(
                f"histogram_quantile({quantile}, sum by (le) ({freeze_bucket_range}))",
                instant=True,
            ),
            unit="s",
            steps=((None, "green"), (5, "yellow"), (10, "red")),
            no_value="-",
        )

    d = d.with_row(row(ids, "Fleet"))
    d = d.with_panel(
        stat_panel(
            ids,
            "VMs reporting",
            "Sidecars answering scrapes (vmsnap_build_info).",
            query(f"count(vmsnap_build_info{{{FLEET_VMS}}})", instant=True),
        )
    )
    d = d.with_panel(
        stat_panel(
            ids,
            "Jobs",
            "Snapshot jobs completed in the time range.",
            query(
                f"round(sum(increase(vmsnap_jobs_total{{{FLEET_VMS}}}[$__range])))",
                instant=True,
            ),
        )
    )
    d = d.with_panel(
        stat_panel(
            ids,
            "Successful jobs",
            "Share of jobs in the time range that took a snapshot.",
            query(
                f'sum(increase(vmsnap_jobs_total{{{FLEET_VMS}, outcome="success"}}[$__range]))'
                f" / sum(increase(vmsnap_jobs_total{{{FLEET_VMS}}}[$__range]))",
                instant=True,
            ),
            unit="percentunit",
            steps=((None, "red"), (0.95, "yellow"), (0.99, "green")),
            no_value="-",
        )
    )
    d = d.with_panel(
        frozen_window_stat(
            "p99 frozen window",
            "99th percentile of the frozen window (first FIFREEZE to last FITHAW) over "
            "the time range, interpolated within histogram buckets.",
            "0.99",
        )
    )
    d = d.with_panel(
        frozen_window_stat(
            "Longest frozen window (≤)",
            "Upper bound of the histogram bucket holding the longest frozen window "
            "in the time range.",
            "1",
        )
    )
    d = d.with_panel(
        stat_panel(
            ids,
            "VMs without a success in 26 h",
            "VMs whose last successful snapshot is older than 26 h (or that never had "
            "one). VmsnapNoRecentSuccess alerts on the same condition.",
            query(
                f"count(time() - vmsnap_last_success_timestamp_seconds{{{FLEET_VMS}}}"
                " > 26 * 3600) or vector(0)",
                instant=True,
            ),
            steps=((None, "green"), (1, "red")),
        )
    )

    d = d.with_row(row(ids, "Frozen window"))
    d = d.with_panel(
        series_panel(
            ids,
            "Frozen window p50 / p90 / p99 ($window rate)",
            "Fleet quantiles from the recording rules "
            "cluster:vmsnap_freeze_duration_seconds_bucket:rate<window>, per region and "
            "cluster selection (the VM variable does not apply here).",
            [
                query(f"histogram_quantile(0.50, sum by (le) ({recorded}))", "p50", "A"),
                query(f"histogram_quantile(0.90, sum by (le) ({recorded}))", "p90", "B"),
                query(f"histogram_quantile(0.99, sum by (le) ({recorded}))", "p99", "C"),
            ],
            unit="s",
            log_scale=True,
            height=9,
        )
    )
    d = d.with_panel(
        heatmap.Panel()
        .id(ids())
        .title("Frozen window distribution (click a point: the job's trace)")
        .description(
            "Jobs per frozen-window bucket. The points are exemplars: each carries the "
            "trace_id of a job in that bucket and opens its trace. " + sparse_why(SPARSE_INTERVAL)
        )
        .datasource(DS)
        .with_target(
            query(
                f"sum by (le) (increase(vmsnap_freeze_duration_seconds_bucket{{{FLEET_VMS}}}"
                "[$__interval]))",
                "{{le}}",
                fmt=PromQueryFormat.HEATMAP,
                exemplar=True,
            )
        )
        .interval(SPARSE_INTERVAL)
        .calculate(False)
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .cell_values(heatmap.CellValues().unit("short").decimals(0))
        .color(
            heatmap.HeatmapColorOptions()
            .mode(hm.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(hm.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
        )
        .exemplars_color("rgba(31,96,196,0.9)")
        .filter_values(heatmap.FilterValueRange().le(1e-9))
        .span(12)
        .height(9)
    )
    d = d.with_panel(
        table_panel(
            ids,
            "Top VMs by frozen window",
            "The 15 VMs with the longest frozen window in the time range (bucket upper "
            "bound), with their mean window and job count. Click a VM for its job detail.",
            [
                table_query(longest, "A"),
                table_query(
                    f"(sum by ({per_vm}) (increase(vmsnap_freeze_duration_seconds_sum"
                    f"{{{FLEET_VMS}}}[$__range])) / sum by ({per_vm}) "
                    f"(increase(vmsnap_freeze_duration_seconds_count{{{FLEET_VMS}}}[$__range])))"
                    f" {top_vms}",
                    "B",
                ),
                table_query(
                    f"round(sum by ({per_vm}) (increase(vmsnap_freeze_duration_seconds_count"
                    f"{{{FLEET_VMS}}}[$__range]))) {top_vms}",
                    "C",
                ),
            ],
            rename={
                "Value #A": "longest (≤ s)",
                "Value #B": "mean (s)",
                "Value #C": "jobs",
            },
            sort_by="longest (≤ s)",
            height=10,
        )
    )
    d = d.with_panel(
        series_panel(
            ids,
            "Frozen window, slowest VMs (mean per interval)",
            "Mean frozen window of the 5 VMs with the longest mean over each interval.",
            [
                query(
                    f"topk(5, sum by (instance) (increase(vmsnap_freeze_duration_seconds_sum"
                    f"{{{FLEET_VMS}}}[$__interval])) / sum by (instance) "
                    f"(increase(vmsnap_freeze_duration_seconds_count{{{FLEET_VMS}}}"
                    "[$__interval])))",
                    "{{instance}}",
                )
            ],
            unit="s",
            interval="1h",
            height=10,
        )
    )

    d = d.with_row(row(ids, "Jobs"))
    d = d.with_panel(
        series_panel(
            ids,
            "Jobs by outcome",
            "Completed jobs per interval.",
            [
                query(
                    f"sum by (outcome) (increase(vmsnap_jobs_total{{{FLEET_VMS}}}[$__interval]))",
                    "{{outcome}}",
                )
            ],
            bars=True,
            stacked=True,
            interval="1h",
        )
        .override_by_name("success", [_color("green")])
        .override_by_name("failed", [_color("red")])
    )
    d = d.with_panel(consistency_panel(ids, FLEET_VMS, "1h"))
    d = snapshot_path_panels(d, ids)

    d = d.with_row(row(ids, "Thaw layers and sidecars"))
    d = d.with_panel(
        series_panel(
            ids,
            "Freezes not ended by the runtime",
            "Frozen windows ended by the runtime's own deadline timer, filesystems thawed "
            "by its watchdog (by trigger: eof = the runtime died while frozen, deadline = "
            "it was stuck past the deadline), and by the sidecar's backstop (I4 layers 2 "
            "and 3). Normally 0.",
            [
                # Not thawed_by="watchdog": every watchdog thaw is in its report
                # (C), also when the runtime died and its record never completed.
                query(
                    f"sum by (thawed_by) (increase(vmsnap_freezes_total{{{FLEET_VMS}, "
                    'thawed_by="deadline"}[$__interval]))',
                    "{{thawed_by}}",
                    "A",
                ),
                query(
                    f"sum(increase(vmsnap_backstop_thaws_total{{{FLEET_VMS}}}[$__interval]))",
                    "backstop",
                    "B",
                ),
                query(
                    "sum by (reason) (increase(vmsnap_watchdog_thaws_total"
                    f"{{{FLEET_VMS}}}[$__interval]))",
                    "watchdog ({{reason}})",
                    "C",
                ),
            ],
            bars=True,
            stacked=True,
            interval="1h",
            width=8,
        )
    )
    d = d.with_panel(
        series_panel(
            ids,
            "Sidecars down",
            "Sidecar scrape targets (the selected jobs) that are not answering.",
            [
                query(
                    f"count(up{{{FLEET_VMS}}} == 0) or vector(0)",
                    "down",
                )
            ],
            width=8,
        )
    )
    d = d.with_panel(
        series_panel(
            ids,
            "Log mirror backlog (largest 5)",
            "Job log bytes in the spool not yet mirrored to logsBlobUri.",
            [
                query(
                    f"topk(5, vmsnap_sidecar_log_mirror_backlog_bytes{{{FLEET_VMS}}} > 0)",
                    "{{instance}}",
                )
            ],
            unit="bytes",
            width=8,
        )
    )
    return d


def snapshot_path_panels(d: dash.Dashboard, ids: _Ids) -> dash.Dashboard:
    """Host vs guest snapshot path and the host's fallback rate (docs/host-snapshot.md)."""
    # The host fallback rate counts the host's presnapshot failures, not guest_failed
    # (firstGuestThenHost took the host after every guest snapshot failed).
    fallbacks = (
        "sum(increase(vmsnap_snapshot_fallbacks_total"
        f'{{{FLEET_VMS}, reason!="guest_failed"}}[$__range]))'
    )
    host_jobs = f'sum(increase(vmsnap_snapshot_jobs_total{{{FLEET_VMS}, path="host"}}[$__range]))'
    d = d.with_row(row(ids, "Snapshot path"))
    d = d.with_panel(
        series_panel(
            ids,
            "Snapshot path: host vs guest, and fallbacks",
            "Completed jobs per interval by the path their snapshot took: host (one "
            "WireServer dosnapshot) or guest (blob snapshots), and the jobs that fell back "
            "to the guest because the host's presnapshot failed, by reason "
            "(guest_failed: firstGuestThenHost took the host after every guest "
            "snapshot failed; docs/host-snapshot.md).",
            [
                query(
                    "sum by (path) (increase(vmsnap_snapshot_jobs_total"
                    f"{{{FLEET_VMS}}}[$__interval]))",
                    "{{path}}",
                    "A",
                ),
                query(
                    "sum by (reason) (increase(vmsnap_snapshot_fallbacks_total"
                    f"{{{FLEET_VMS}}}[$__interval]))",
                    "fallback ({{reason}})",
                    "B",
                ),
            ],
            bars=True,
            interval="1h",
            width=16,
        )
    )
    return d.with_panel(
        stat_panel(
            ids,
            "Host fallback rate",
            "Of the jobs that tried the host path in the time range, the share that fell "
            "back to the guest path (presnapshot failed). Alert: VmsnapHostFallbacksRising.",
            query(f"{fallbacks} / clamp_min({fallbacks} + {host_jobs}, 1)", instant=True),
            unit="percentunit",
            steps=((None, "green"), (0.05, "yellow"), (0.1, "red")),
            width=8,
        )
    )


def consistency_panel(ids: _Ids, selector: str, interval: str) -> timeseries.Panel:
    return (
        series_panel(
            ids,
            "Consistency achieved",
            "Completed jobs per interval by the consistency verdict "
            "(docs/consistency.md): application > filesystem > crash > none.",
            [
                query(
                    f"sum by (consistency) (increase(vmsnap_jobs_total{{{selector}}}"
                    "[$__interval])) > 0",
                    "{{consistency}}",
                )
            ],
            bars=True,
            stacked=True,
            interval=interval,
        )
        .override_by_name("application", [_color("green")])
        .override_by_name("filesystem", [_color("blue")])
        .override_by_name("crash", [_color("orange")])
        .override_by_name("none", [_color("red")])
    )


def _color(name: str) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": name})


def _errors_on_right_axis(*, bars: bool, unit: str = "short") -> list[dm.DynamicConfigValue]:
    """Overrides for an error-count (or error-rate) query drawn in red on the right axis."""
    overrides = [
        dm.DynamicConfigValue(id_val="unit", value=unit),
        dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
    ]
    if bars:
        overrides.append(dm.DynamicConfigValue(id_val="custom.drawStyle", value="bars"))
    return [*overrides, _color("red")]


# -- Script health ------------------------------------------------------------------


def script_health() -> dash.Dashboard:
    ids = _Ids()
    d = base(
        "vmsnap-script-health",
        "snapshot-runtime / Script health",
        "Pre/post-scripts across the fleet: timeouts, retries, failures by error group and "
        "durations.",
    )
    for variable in [*fleet_variables(with_instance=True), window_variable()]:
        d = d.with_variable(variable)

    def share(numerator: str, script: str) -> str:
        return (
            f'sum(increase({numerator}{{{FLEET_VMS}, script="{script}"}}[$__range]))'
            f' / sum(increase(vmsnap_script_runs_total{{{FLEET_VMS}, script="{script}"}}'
            "[$__range]))"
        )

    def share_stat(
        title: str,
        description: str,
        numerator: str,
        script: str,
        steps: Sequence[tuple[float | None, str]],
    ) -> stat.Panel:
        return stat_panel(
            ids,
            title,
            description,
            query(share(numerator, script), instant=True),
            unit="percentunit",
            steps=steps,
            no_value="-",
        )

    d = d.with_row(row(ids, "Time range"))
    timeout_steps = ((None, "green"), (0.01, "yellow"), (0.05, "red"))
    retry_steps = ((None, "green"), (0.1, "yellow"))
    d = d.with_panel(
        share_stat(
            "Pre-script timeouts",
            "Share of pre-script runs (every retry is a run) that hit timeoutInSeconds.",
            "vmsnap_script_timeouts_total",
            "pre",
            timeout_steps,
        )
    )
    d = d.with_panel(
        share_stat(
            "Post-script timeouts",
            "Share of post-script runs that hit timeoutInSeconds. Each one may have left "
            "an application quiesced.",
            "vmsnap_script_timeouts_total",
            "post",
            ((None, "green"), (1e-9, "red")),
        )
    )
    d = d.with_panel(
        share_stat(
            "Pre-script retries",
            "Retries per pre-script run.",
            "vmsnap_script_retries_total",
            "pre",
            retry_steps,
        )
    )
    d = d.with_panel(
        share_stat(
            "Post-script retries",
            "Retries per post-script run.",
            "vmsnap_script_retries_total",
            "post",
            retry_steps,
        )
    )
    d = d.with_panel(
        stat_panel(
            ids,
            "Scripts failed",
            "Pre/post-scripts that ended in an error after all their retries.",
            query(
                f"round(sum(increase(vmsnap_script_failures_total{{{FLEET_VMS}}}[$__range])))",
                instant=True,
            ),
            steps=((None, "green"), (1, "orange")),
        )
    )
    d = d.with_panel(
        stat_panel(
            ids,
            "Jobs failed",
            "Jobs that reported an error code (any phase).",
            query(
                f'round(sum(increase(vmsnap_jobs_total{{{FLEET_VMS}, outcome="failed"}}'
                "[$__range])))",
                instant=True,
            ),
            steps=((None, "green"), (1, "red")),
        )
    )

    d = d.with_row(row(ids, "Rates"))
    d = d.with_panel(
        series_panel(
            ids,
            "Timeout share by script (6 h, as alerted)",
            "Timeouts per run over 6 h, from the same recording rules as "
            "VmsnapPreScriptTimeoutRateHigh (threshold 5%, dashed). Region/cluster only.",
            [
                query(
                    f"sum by (script) (cluster:vmsnap_script_timeouts:increase6h{{{RECORDED}}})"
                    f" / sum by (script) (cluster:vmsnap_script_runs:increase6h{{{RECORDED}}})",
                    "{{script}}",
                )
            ],
            unit="percentunit",
        )
        .thresholds(thresholds((None, "transparent"), (0.05, "red")))
        .thresholds_style(
            common_b.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
        )
    )
    d = d.with_panel(
        series_panel(
            ids,
            "Retries per run by script (6 h)",
            "Each retry runs the script again inside the same budget. From the recording "
            "rules cluster:vmsnap_script_*:increase6h; region/cluster only.",
            [
                query(
                    f"sum by (script) (cluster:vmsnap_script_retries:increase6h{{{RECORDED}}})"
                    f" / sum by (script) (cluster:vmsnap_script_runs:increase6h{{{RECORDED}}})",
                    "{{script}}",
                )
            ],
            unit="percentunit",
        )
    )
    d = d.with_panel(
        series_panel(
            ids,
            "Failed jobs by error group",
            "Jobs per interval by the group of the error code they reported "
            "(snapshot_runtime/core/errors.py ERROR_GROUPS). The exact code of each VM's "
            'latest job: vmsnap_last_job_info (Job detail, "Last job").',
            [
                query(
                    f"sum by (group) (increase(vmsnap_job_errors_total{{{FLEET_VMS}}}"
                    "[$__interval])) > 0",
                    "{{group}}",
                )
            ],
            bars=True,
            stacked=True,
            interval="1h",
        )
    )
    d = d.with_panel(
        bar_gauge_panel(
            ids,
            "Error groups in the time range",
            "Jobs by the group of their error code over the whole time range.",
            query(
                f"sort_desc(round(sum by (group) (increase(vmsnap_job_errors_total"
                f"{{{FLEET_VMS}}}[$__range]))) > 0)",
                "{{group}}",
                instant=True,
            ),
            color="orange",
            unit="short",
            width=12,
            height=8,
        )
    )

    d = d.with_row(row(ids, "Durations and VMs"))
    d = d.with_panel(
        series_panel(
            ids,
            "Script duration p50 / p99 ($window rate)",
            "Wall time of a pre- or post-script (one histogram for both), all attempts "
            "included; bounds 10, 60 and 300 s. From the recording rules "
            "cluster:vmsnap_script_duration_seconds_bucket:rate<window>; region/cluster only.",
            [
                query(
                    "histogram_quantile(0.50, sum by (le) ("
                    f"cluster:vmsnap_script_duration_seconds_bucket:rate$window{{{RECORDED}}}))",
                    "p50",
                    "A",
                ),
                query(
                    "histogram_quantile(0.99, sum by (le) ("
                    f"cluster:vmsnap_script_duration_seconds_bucket:rate$window{{{RECORDED}}}))",
                    "p99",
                    "B",
                ),
            ],
            unit="s",
            log_scale=True,
        )
    )
    d = d.with_panel(
        table_panel(
            ids,
            "VMs with script timeouts",
            "VMs whose pre- or post-script timed out in the time range. Click a VM for "
            "its job detail.",
            [
                table_query(
                    "topk(20, round(sum by (instance, region, cluster, script) (increase("
                    f"vmsnap_script_timeouts_total{{{FLEET_VMS}}}[$__range]))) > 0)",
                    "A",
                )
            ],
            rename={"Value": "timeouts"},
            sort_by="timeouts",
        )
    )
    return d


# -- Job detail -------------------------------------------------------------------


def job_detail() -> dash.Dashboard:
    ids = _Ids()
    d = base(
        "vmsnap-job-detail",
        "snapshot-runtime / Job detail",
        "One VM's snapshot jobs: age of the last success, phase breakdown, disk snapshot "
        "latency, consistency over time, and the sidecar's own health.",
    )
    for variable in fleet_variables(with_instance=True, multi_instance=False):
        d = d.with_variable(variable)

    def age_stat(title: str, description: str, timestamp_metric: str) -> stat.Panel:
        """Seconds since a timestamp gauge; 0 (never happened) shows as "never"."""
        return stat_panel(
            ids,
            title,
            description,
            query(
                f"time() - {timestamp_metric}{{{ONE_VM}}} and {timestamp_metric}{{{ONE_VM}}} > 0",
                instant=True,
            ),
            unit="s",
            steps=((None, "green"), (24 * 3600, "yellow"), (26 * 3600, "red")),
            no_value="never",
        )

    def jobs_stat(
        title: str,
        description: str,
        outcome: str,
        steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
    ) -> stat.Panel:
        return stat_panel(
            ids,
            title,
            description,
            query(
                f'round(sum(increase(vmsnap_jobs_total{{{ONE_VM}, outcome="{outcome}"}}'
                "[$__range])))",
                instant=True,
            ),
            steps=steps,
        )

    d = d.with_row(row(ids, "Now"))
    d = d.with_panel(
        age_stat(
            "Since last success",
            "Time since the last successful snapshot job ended. VmsnapNoRecentSuccess "
            "fires past 26 h.",
            "vmsnap_last_success_timestamp_seconds",
        )
    )
    d = d.with_panel(
        age_stat(
            "Since last job",
            "Time since the last job (any outcome) ended.",
            "vmsnap_last_job_timestamp_seconds",
        )
    )
    d = d.with_panel(
        jobs_stat("Successful jobs", "Jobs that took a snapshot, in the time range.", "success")
    )
    d = d.with_panel(
        jobs_stat(
            "Failed jobs",
            "Jobs that took no snapshot, in the time range.",
            "failed",
            steps=((None, "green"), (1, "red")),
        )
    )
    d = d.with_panel(
        stat_panel(
            ids,
            "Sidecar",
            "Whether Prometheus can scrape this VM's snapshot-sidecar.",
            query(f"up{{{ONE_VM}}}", instant=True),
            steps=((None, "red"), (1, "green")),
            no_value="unknown",
        ).mappings(
            [
                dm.ValueMap(
                    options={
                        "0": dm.ValueMappingResult(text="down", color="red"),
                        "1": dm.ValueMappingResult(text="up", color="green"),
                    }
                )
            ]
        )
    )
    d = d.with_panel(
        stat_panel(
            ids,
            "Sidecar version",
            "vmsnap_build_info{version}.",
            query(f"vmsnap_build_info{{{ONE_VM}}}", "{{version}}", instant=True),
            no_value="-",
        ).text_mode(common.BigValueTextMode.NAME)
    )

    d = d.with_row(row(ids, "Jobs"))
    d = d.with_panel(
        series_panel(
            ids,
            "Phase breakdown per job",
            "Seconds spent in each phase per job, over each interval (one job per "
            "interval, normally): vmsnap_phase_seconds_total divided by the jobs. "
            "Phases: snapshot_runtime/core/phases.py; the job's trace has each phase span.",
            [
                query(
                    f"sum by (phase) (increase(vmsnap_phase_seconds_total{{{ONE_VM}}}"
                    "[$__interval])) / ignoring (phase) group_left sum(increase("
                    f"vmsnap_jobs_total{{{ONE_VM}}}[$__interval]))",
                    "{{phase}}",
                )
            ],
            unit="s",
            bars=True,
            stacked=True,
            interval=SPARSE_INTERVAL,
            width=16,
            height=9,
        )
    )
    d = d.with_panel(
        bar_gauge_panel(
            ids,
            "Mean phase duration in the time range",
            "Where a job's time goes: seconds per job in each phase, averaged over the time range.",
            query(
                f"sum by (phase) (increase(vmsnap_phase_seconds_total{{{ONE_VM}}}"
                "[$__range])) / ignoring (phase) group_left sum(increase("
                f"vmsnap_jobs_total{{{ONE_VM}}}[$__range]))",
                "{{phase}}",
                instant=True,
            ),
            color="blue",
            unit="s",
            width=8,
            height=9,
        )
    )
    d = d.with_panel(
        series_panel(
            ids,
            "Frozen window per job (click a point: the job's trace)",
            "Mean frozen window per interval, and the upper bound of the bucket of the "
            "longest one. The points are exemplars carrying the job's trace_id.",
            [
                query(
                    f"sum(increase(vmsnap_freeze_duration_seconds_sum{{{ONE_VM}}}[$__interval]))"
                    f" / sum(increase(vmsnap_freeze_duration_seconds_count{{{ONE_VM}}}"
                    "[$__interval]))",
                    "mean",
                    "A",
                ),
                query(
                    "histogram_quantile(1, sum by (le) (increase("
                    f"vmsnap_freeze_duration_seconds_bucket{{{ONE_VM}}}[$__interval])))",
                    "longest (bucket bound)",
                    "B",
                    exemplar=True,
                ),
            ],
            unit="s",
            interval=SPARSE_INTERVAL,
        )
    )
    d = d.with_panel(
        series_panel(
            ids,
            "Disk snapshot latency",
            "Per disk, retries included: p50/p99 per interval, and failures by kind. "
            "The points are exemplars: the trace of the latest job in that bucket.",
            [
                query(
                    "histogram_quantile(0.50, sum by (le) (increase("
                    f"vmsnap_disk_snapshot_duration_seconds_bucket{{{ONE_VM}}}[$__interval])))",
                    "p50",
                    "A",
                ),
                query(
                    "histogram_quantile(0.99, sum by (le) (increase("
                    f"vmsnap_disk_snapshot_duration_seconds_bucket{{{ONE_VM}}}[$__interval])))",
                    "p99",
                    "B",
                    exemplar=True,
                ),
                query(
                    f"sum by (kind) (increase(vmsnap_disk_snapshot_failures_total{{{ONE_VM}}}"
                    "[$__interval])) > 0",
                    "failed: {{kind}}",
                    "C",
                ),
            ],
            unit="s",
            interval=SPARSE_INTERVAL,
        ).override_by_query("C", _errors_on_right_axis(bars=True))
    )
    d = d.with_panel(consistency_panel(ids, ONE_VM, SPARSE_INTERVAL))
    d = d.with_panel(
        table_panel(
            ids,
            "Error and warning groups in the time range",
            "Error codes reported by failed jobs and warnings reported by any job, by "
            "group (snapshot_runtime/core/errors.py ERROR_GROUPS). The exact codes: "
            '"Last job", the job record and its trace.',
            [
                table_query(
                    f"round(sum by (group) (increase(vmsnap_job_errors_total{{{ONE_VM}}}"
                    "[$__range]))) > 0",
                    "A",
                ),
                table_query(
                    "round(sum by (group) (increase("
                    f"vmsnap_job_warnings_total{{{ONE_VM}}}[$__range]))) > 0",
                    "B",
                ),
            ],
            rename={"Value #A": "failed jobs", "Value #B": "warnings"},
            sort_by="failed jobs",
            link_instance=False,
            width=6,
            height=8,
        )
    )
    d = d.with_panel(
        table_panel(
            ids,
            "Last job",
            "The latest completed job (by end time): its outcome, consistency and exact "
            "error code (none: it reported none), from vmsnap_last_job_info.",
            [table_query(f"vmsnap_last_job_info{{{ONE_VM}}}", "A")],
            rename={"Value": "jobs", "__name__": "metric"},
            sort_by="error",
            link_instance=False,
            width=6,
            height=8,
        )
    )
    d = d.with_panel(
        series_panel(
            ids,
            "Scripts",
            "Script runs (attempts), retries and timeouts per interval.",
            [
                query(
                    f"sum by (script) (increase(vmsnap_script_runs_total{{{ONE_VM}}}"
                    "[$__interval])) > 0",
                    "{{script}} runs",
                    "A",
                ),
                query(
                    f"sum by (script) (increase(vmsnap_script_retries_total{{{ONE_VM}}}"
                    "[$__interval])) > 0",
                    "{{script}} retries",
                    "B",
                ),
                query(
                    f"sum by (script) (increase(vmsnap_script_timeouts_total{{{ONE_VM}}}"
                    "[$__interval])) > 0",
                    "{{script}} timeouts",
                    "C",
                ),
            ],
            bars=True,
            interval=SPARSE_INTERVAL,
            width=24,
            height=7,
        )
    )

    d = d.with_row(row(ids, "Sidecar"))
    d = d.with_panel(
        series_panel(
            ids,
            "Thaw layers",
            "Who ended each frozen window: runtime (normal), deadline, watchdog; the "
            "watchdog's reports by trigger; and backstop thaws by the sidecar.",
            [
                query(
                    f"sum by (thawed_by) (increase(vmsnap_freezes_total{{{ONE_VM}}}"
                    "[$__interval])) > 0",
                    "ended by {{thawed_by}}",
                    "A",
                ),
                query(
                    f"sum by (reason) (increase(vmsnap_watchdog_thaws_total{{{ONE_VM}}}"
                    "[$__interval])) > 0",
                    "watchdog: {{reason}}",
                    "B",
                ),
                query(
                    f"sum(increase(vmsnap_backstop_thaws_total{{{ONE_VM}}}[$__interval])) > 0",
                    "backstop",
                    "C",
                ),
            ],
            bars=True,
            interval=SPARSE_INTERVAL,
            width=8,
        )
    )
    d = d.with_panel(
        series_panel(
            ids,
            "Log mirror",
            "Bytes waiting to be mirrored to logsBlobUri, and failed mirror requests per "
            "second by kind (the sidecar retries continuously, so a rate is what it means).",
            [
                query(f"vmsnap_sidecar_log_mirror_backlog_bytes{{{ONE_VM}}}", "backlog", "A"),
                query(
                    f"sum by (error) (rate(vmsnap_sidecar_log_mirror_errors_total"
                    f"{{{ONE_VM}}}[$__rate_interval])) > 0",
                    "errors/s: {{error}}",
                    "B",
                ),
            ],
            unit="bytes",
            interval=LIVE_INTERVAL,
            width=8,
        ).override_by_query("B", _errors_on_right_axis(bars=False, unit="reqps"))
    )
    d = d.with_panel(
        series_panel(
            ids,
            "Span export",
            "spans.jsonl bytes not yet exported over OTLP, and failed export calls per second "
            "(retried continuously, so a rate is what it means).",
            [
                query(f"vmsnap_sidecar_span_backlog_bytes{{{ONE_VM}}}", "backlog", "A"),
                query(
                    f"rate(vmsnap_sidecar_span_export_errors_total{{{ONE_VM}}}"
                    "[$__rate_interval]) > 0",
                    "export errors/s",
                    "B",
                ),
            ],
            unit="bytes",
            interval=LIVE_INTERVAL,
            width=8,
        ).override_by_query("B", _errors_on_right_axis(bars=False, unit="reqps"))
    )
    d = d.with_panel(
        series_panel(
            ids,
            "Ingestion and losses",
            "Job records ingested, invalid records (the sidecar's log says why), jobs "
            "whose runtime died before completing its record, and spool drops (log "
            "lines, spans).",
            [
                query(
                    f"increase(vmsnap_sidecar_records_ingested_total{{{ONE_VM}}}[$__interval])",
                    "records ingested",
                    "A",
                ),
                query(
                    f"increase(vmsnap_sidecar_records_invalid_total{{{ONE_VM}}}[$__interval]) > 0",
                    "invalid records",
                    "B",
                ),
                query(
                    f"increase(vmsnap_jobs_abandoned_total{{{ONE_VM}}}[$__interval]) > 0",
                    "abandoned jobs",
                    "C",
                ),
                query(
                    f"sum by (kind) (increase(vmsnap_spool_dropped_total{{{ONE_VM}}}"
                    "[$__interval])) > 0",
                    "dropped {{kind}}",
                    "D",
                ),
            ],
            bars=True,
            interval=SPARSE_INTERVAL,
            width=12,
        )
    )
    d = d.with_panel(
        series_panel(
            ids,
            "Sidecar memory and errors",
            "Resident memory of the sidecar process, and errors its loops caught and "
            "survived, by component.",
            [
                query(
                    f"process_resident_memory_bytes{{{ONE_VM}}}",
                    "RSS",
                    "A",
                ),
                query(
                    f"sum by (component) (increase(vmsnap_sidecar_errors_total{{{ONE_VM}}}"
                    "[$__interval])) > 0",
                    "errors: {{component}}",
                    "B",
                ),
            ],
            unit="bytes",
            interval=LIVE_INTERVAL,
            width=12,
        ).override_by_query("B", _errors_on_right_axis(bars=True))
    )
    return d


# -- output -------------------------------------------------------------------------

DASHBOARDS = {
    "vmsnap-fleet-freeze": fleet_freeze,
    "vmsnap-script-health": script_health,
    "vmsnap-job-detail": job_detail,
}


@contextlib.contextmanager
def _use_config(config: Path | None) -> Iterator[None]:
    """Build with the mixin config laid over by ``config`` (then back to the default)."""
    saved = SELECTOR
    _use_selector(mixin.load(config).selector)
    try:
        yield
    finally:
        _use_selector(saved)


def render(uid: str, config: Path | None = None) -> str:
    """The dashboard's JSON text, byte-stable: sorted keys, 2-space indent, final newline."""
    with _use_config(config):
        model = DASHBOARDS[uid]().build()
    doc = json.loads(json.dumps(model, cls=JSONEncoder))
    doc["id"] = None  # provisioning: Grafana assigns the numeric id, the uid is ours
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _outputs(out: Path, config: Path | None) -> Iterator[tuple[Path, str]]:
    for uid in DASHBOARDS:
        yield out / f"{uid}.json", render(uid, config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with dashboards/json/ instead of writing"
    )
    parser.add_argument(
        "--config", type=Path, help="JSON laid over deploy/mixin/config.json (a team's override)"
    )
    parser.add_argument("--out", type=Path, help="where to write (default: dashboards/json/)")
    args = parser.parse_args(argv)
    stale = []
    for path, text in _outputs(args.out or JSON_DIR, args.config):
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print(
            "out of date (run .venv/bin/python dashboards/build.py): " + ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
