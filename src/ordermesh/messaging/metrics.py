"""Messaging metrics for ``/metrics``: the outbox relay's, read from its in-memory figures at
scrape time (a collector, not gauges updated on the publishing path), and consumers' (a handler
wrapper, ``ConsumerMetrics.consumed``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ordermesh.messaging.port import Delivery, Handler, PermanentError
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


class ConsumerMetrics:
    """Per-queue handling figures for ``/metrics``: ``consumed(queue, handler)`` wraps a handler.

    ``ordermesh_messages_handled_total{queue, outcome}`` counts deliveries by how the handler
    ended: ``ok``, ``error`` (the broker retries it through the delay queues, or dead-letters
    it after the last attempt) or ``rejected`` (a ``PermanentError``: dead-lettered at once).
    ``ordermesh_message_handling_seconds{queue}`` is the handler's duration. Label children are
    made once per wrapped handler: a delivery pays two metric updates and no label lookup."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "ordermesh_messages_handled",
            "deliveries handled, by outcome (ok, error: retried or dead-lettered, rejected: dead-lettered)",
            ["queue", "outcome"],
            registry=registry,
        )
        self.seconds = Histogram(
            "ordermesh_message_handling_seconds",
            "time a handler took for one delivery",
            ["queue"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def consumed(self, queue: str, handler: Handler) -> Handler:
        ok, error = self.handled.labels(queue, "ok"), self.handled.labels(queue, "error")
        rejected, seconds = self.handled.labels(queue, "rejected"), self.seconds.labels(queue)
        clock = time.perf_counter

        async def measured(delivery: Delivery) -> None:
            start = clock()
            try:
                await handler(delivery)
            except PermanentError:
                rejected.inc()
                raise
            except Exception:
                error.inc()
                raise
            else:
                ok.inc()
            finally:
                seconds.observe(clock() - start)

        return measured
