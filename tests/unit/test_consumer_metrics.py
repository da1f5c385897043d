"""Consumer metrics: each delivery counted by outcome and timed, and the error still raised."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from ordermesh.messaging.metrics import ConsumerMetrics
from ordermesh.messaging.port import Delivery, Message, PermanentError


def _delivery() -> Delivery:
    return Delivery(Message.json("order.created", {"id": "o-1"}), "orders", "q")


async def test_outcomes_are_counted_and_errors_pass_through() -> None:
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    outcomes = iter([None, RuntimeError("smtp down"), PermanentError("no user_email")])

    async def handler(_delivery: Delivery) -> None:
        error = next(outcomes)
        if error is not None:
            raise error

    measured = metrics.consumed("notifications.order_created", handler)
    await measured(_delivery())
    with pytest.raises(RuntimeError, match="smtp down"):
        await measured(_delivery())
    with pytest.raises(PermanentError):
        await measured(_delivery())

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"queue": "notifications.order_created", **labels})

    assert value("ordermesh_messages_handled_total", outcome="ok") == 1
    assert value("ordermesh_messages_handled_total", outcome="error") == 1
    assert value("ordermesh_messages_handled_total", outcome="rejected") == 1
    assert value("ordermesh_message_handling_seconds_count") == 3
