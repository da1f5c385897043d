"""Read-model metrics: how far each projector has got and how often it failed.

Exported from in-memory projector state at scrape time (a collector, not gauges updated on the
hot path), so serving requests pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ordermesh.readmodel.projection import Projector


class ProjectionCollector(Collector):
    def __init__(self, projectors: Callable[[], Sequence[Projector]]) -> None:
        self._projectors = projectors

    def collect(self) -> Iterator[Metric]:
        position = GaugeMetricFamily(
            "ordermesh_projection_position",
            "last event position applied to the read model",
            labels=["projection"],
        )
        failures = CounterMetricFamily(
            "ordermesh_projection_failures", "pages that failed and were retried", labels=["projection"]
        )
        for p in self._projectors():
            position.add_metric([p.name], p.position)
            failures.add_metric([p.name], p.failures)
        yield position
        yield failures


def register(registry: CollectorRegistry, projectors: Callable[[], Sequence[Projector]]) -> None:
    registry.register(ProjectionCollector(projectors))
