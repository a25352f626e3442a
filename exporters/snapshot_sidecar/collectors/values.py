"""Collector: the catalogue's families, rendered from the ledger's committed values.

Counters and histograms come from the sidecar's own persisted state rather than
live prometheus-client objects, which is what lets them survive a restart.
Every known label combination is present (zero-initialised by
``MetricValues``); histogram buckets carry their latest ``trace_id`` exemplar,
which the exposition renders only when OpenMetrics is negotiated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from snapshot_sidecar.metrics import Family, HistogramValue, MetricValues

__all__ = ["ValuesCollector"]


class ValuesCollector:
    """Renders ``source()`` (a ``MetricValues``) on every scrape; never mutates it."""

    name = "values"

    def __init__(self, source: Callable[[], MetricValues]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        values = self._source()
        for family in values.families.values():
            if family.kind == "counter":
                yield self._scalar(CounterMetricFamily, family, values.counters[family.name])
            elif family.kind == "gauge":
                # A gauge without zero-initialised series is absent until set
                # (vmsnap_last_job_info before the first job); build_info is
                # never set here: it has its own collector.
                series = values.gauges[family.name]
                if family.zero_init or series:
                    yield self._scalar(GaugeMetricFamily, family, series)
            else:
                yield self._histogram(family, values.histograms[family.name])

    @staticmethod
    def _scalar(
        metric_type: type[CounterMetricFamily] | type[GaugeMetricFamily],
        family: Family,
        series: dict[tuple[str, ...], float],
    ) -> Metric:
        """A counter or gauge family: one sample per label combination, in key order."""
        metric = metric_type(family.name, family.help, labels=family.labels)
        for key in sorted(series):
            metric.add_metric(list(key), series[key])
        return metric

    @staticmethod
    def _histogram(family: Family, series: dict[tuple[str, ...], HistogramValue]) -> Metric:
        metric = HistogramMetricFamily(family.name, family.help, labels=family.labels)
        bounds = [*(floatToGoString(b) for b in family.buckets), "+Inf"]  # type: ignore[no-untyped-call]
        for key in sorted(series):
            hist = series[key]
            buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
            for index, (bound, count) in enumerate(zip(bounds, hist.cumulative(), strict=True)):
                exemplar = hist.exemplars.get(index)
                if exemplar is None:
                    buckets.append((bound, count))
                else:
                    trace_id, value, ts = exemplar
                    buckets.append((bound, count, Exemplar({"trace_id": trace_id}, value, ts)))
            metric.add_metric(list(key), buckets, hist.sum)
        return metric
