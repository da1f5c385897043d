"""What the notification service adds to the kit's ``/readyz`` and ``/metrics``: whether every
queue is consumed, and the handler's counters."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ordermesh.services.notifications.service import Notifications

# The service starts before it subscribes (and is None until then), so the endpoint follows it
# through a getter rather than holding it.
ServiceRef = Callable[[], "Notifications | None"]


class NotificationsCollector(Collector):
    """The handler's counters, read at scrape time (the handler pays nothing per message). Zero
    before the service has subscribed, so the series exist from the first scrape."""

    def __init__(self, service: ServiceRef) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        service = self._service()
        h = service.handler if service is not None else None
        counters = (
            ("sent", "mails sent (and recorded in the inbox)", h.sent if h else 0),
            ("duplicates", "deliveries whose mail was sent before, skipped", h.duplicates if h else 0),
            (
                "ignored",
                "deliveries with a routing key notifications do not mail about",
                h.ignored if h else 0,
            ),
            ("smtp_failures", "mail server failures (the broker retries)", h.failures if h else 0),
        )
        for name, documentation, value in counters:
            yield CounterMetricFamily(f"ordermesh_notifications_{name}", documentation, value=value)


def not_ready_reason(service: Notifications | None) -> str | None:
    if service is None:
        return "not consuming yet (connecting to the broker)"
    if service.stopping:
        return "stopping, no longer consuming"
    if not service.consuming:
        return "subscribing to its queues"
    if service.broker is not None and not service.broker.connected:
        return "the broker connection is down (reconnecting; unacknowledged mail is redelivered)"
    return None


__all__ = ["NotificationsCollector", "not_ready_reason"]
