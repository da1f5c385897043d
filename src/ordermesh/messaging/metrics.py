"""Outbox relay metrics for ``/metrics``, read from the relay's in-memory figures at scrape time
(a collector, not gauges updated on the publishing path)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ordermesh.messaging.relay import OutboxRelay


class RelayCollector(Collector):
    def __init__(self, relays: Callable[[], Sequence[OutboxRelay]]) -> None:
        self._relays = relays

    def collect(self) -> Iterator[Metric]:
        position = GaugeMetricFamily(
            "ordermesh_outbox_position",
            "last event position whose messages the broker confirmed",
            labels=["relay"],
        )
        published = CounterMetricFamily(
            "ordermesh_outbox_published", "messages the broker confirmed (replays included)", labels=["relay"]
        )
        parked = GaugeMetricFamily(
            "ordermesh_outbox_parked", "messages waiting for a queue to be bound for them", labels=["relay"]
        )
        failures = CounterMetricFamily(
            "ordermesh_outbox_failures", "batches that failed and were retried", labels=["relay"]
        )
        for relay in self._relays():
            position.add_metric([relay.name], relay.position)
            published.add_metric([relay.name], relay.published)
            parked.add_metric([relay.name], relay.parked)
            failures.add_metric([relay.name], relay.failures)
        yield from (position, published, parked, failures)


def register(registry: CollectorRegistry, relays: Callable[[], Sequence[OutboxRelay]]) -> None:
    registry.register(RelayCollector(relays))
