"""Collector: ``vmsnap_build_info{version}`` = 1."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from snapshot_sidecar.metrics import FAMILY_BY_NAME

__all__ = ["BuildInfoCollector"]


class BuildInfoCollector:
    name = "build_info"

    def __init__(self, version: str) -> None:
        self._version = version

    def collect(self) -> Iterator[Metric]:
        family = FAMILY_BY_NAME["vmsnap_build_info"]
        metric = GaugeMetricFamily(family.name, family.help, labels=family.labels)
        metric.add_metric([self._version], 1.0)
        yield metric
