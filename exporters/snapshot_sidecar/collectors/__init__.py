"""The sidecar's collectors, listed in one explicit table, and the registries.

Nothing registers itself on import: ``build_registry`` builds a private
``CollectorRegistry`` from ``collectors``: ``stable_collectors`` (the
catalogue's values, build info; rendered once per ledger version, see
``snapshot_sidecar.exposition``) and, in ``volatile_registry``, prometheus-client's
process collector (every scrape). Each stable collector runs
wrapped, so one that raises does not break the scrape: it is logged and
counted in ``vmsnap_sidecar_errors_total{component="collector"}`` (through
``on_failure``), the others are served (node_exporter's ``execute()``
pattern). Per-collector success and duration gauges are not exported: they
cost a series per collector on every VM and no panel or alert read them
(issue 16, series budget).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import Metric

from snapshot_sidecar.collectors.build_info import BuildInfoCollector
from snapshot_sidecar.collectors.values import ValuesCollector
from snapshot_sidecar.metrics import MetricValues

__all__ = [
    "PROCESS_METRICS",
    "BuildInfoCollector",
    "NamedCollector",
    "ValuesCollector",
    "build_registry",
    "default_collectors",
    "stable_collectors",
    "volatile_registry",
]

_log = logging.getLogger("snapshot_sidecar.collectors")


class NamedCollector(Protocol):
    name: str

    def collect(self) -> Iterable[Metric]: ...


# The process metrics a panel or an operator reads (memory panel, CPU, fd
# leaks). Virtual memory, max fds and start time cost a series each on every
# VM and answer nothing the others do not (issue 16, series budget).
PROCESS_METRICS: frozenset[str] = frozenset(
    {"process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds"}
)


class _Process:
    """prometheus-client's process collector (RSS, CPU, fds), named for the table."""

    name = "process"

    def __init__(self) -> None:
        self._inner = ProcessCollector(registry=None)

    def collect(self) -> Iterable[Metric]:
        return [m for m in self._inner.collect() if m.name in PROCESS_METRICS]


def default_collectors(source: Callable[[], MetricValues], version: str) -> list[NamedCollector]:
    """Every collector in one list (tests, one uncached registry)."""
    return [*stable_collectors(source, version), _Process()]


def stable_collectors(source: Callable[[], MetricValues], version: str) -> list[NamedCollector]:
    """What changes only with the ledger's version (cacheable)."""
    return [ValuesCollector(source), BuildInfoCollector(version)]


def volatile_registry() -> CollectorRegistry:
    """The process collector alone (changes every scrape; never cached)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Safe(_Process()))
    return registry


class _Safe:
    """A collector whose failure is logged and yields nothing (the scrape goes on)."""

    def __init__(self, inner: NamedCollector) -> None:
        self._inner = inner

    def collect(self) -> Iterator[Metric]:
        try:
            metrics = list(self._inner.collect())
        except Exception:
            _log.exception("collector %s failed", self._inner.name)
            return
        yield from metrics


def _ignore(name: str) -> None:
    """Default ``on_failure``: the failure is logged only."""


class _Executor:
    """Runs every collector; a failing one is logged, reported to ``on_failure``, skipped."""

    def __init__(
        self, collectors: Sequence[NamedCollector], on_failure: Callable[[str], None]
    ) -> None:
        self._collectors = list(collectors)
        self._on_failure = on_failure

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            try:
                metrics = list(collector.collect())
            except Exception:
                _log.exception("collector %s failed", collector.name)
                self._report(collector.name)
                continue
            yield from metrics

    def _report(self, name: str) -> None:
        try:
            self._on_failure(name)
        except Exception:  # counting must not break the scrape either
            _log.exception("counting the failure of collector %s failed", name)


def build_registry(
    collectors: Sequence[NamedCollector], on_failure: Callable[[str], None] = _ignore
) -> CollectorRegistry:
    """A private registry serving ``collectors`` (never the global REGISTRY).

    ``on_failure(collector_name)`` is called when a collector raises (the
    sidecar counts it in ``vmsnap_sidecar_errors_total{component="collector"}``).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Executor(collectors, on_failure))
    return registry
