"""Every adapter says so when it dead-letters a message: one WARNING in the RabbitMQ adapter's
words, naming the queue, the message, the attempts and the error, with the order (the message's
correlation id) as a field. The in-memory and embedded brokers here; the RabbitMQ adapter's own
tests cover its line."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ordermesh.messaging.embedded import EmbeddedBroker
from ordermesh.messaging.memory import MemoryBroker
from ordermesh.messaging.port import Broker, Delivery, Message, PermanentError, RetryPolicy
from tests.helpers import dead_letters


@pytest.fixture(params=["memory", "embedded"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    opened: Broker
    if request.param == "memory":
        opened = MemoryBroker()
    else:
        opened = await EmbeddedBroker.open(str(tmp_path / "broker.db"), poll_interval=0.01, close_grace=0.05)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.mark.parametrize(
    ("failure", "attempts"),
    [(PermanentError("order.created: no total"), 1), (RuntimeError("the database is gone"), 2)],
)
async def test_a_dead_letter_is_one_warning_naming_its_order(
    broker: Broker, failure: Exception, attempts: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def fails(delivery: Delivery) -> None:
        raise failure

    retry = RetryPolicy(max_attempts=2, initial=0.01, multiplier=1.0, maximum=0.01)
    await broker.subscribe("payments.order_created", "orders", ["order.created"], fails, retry=retry)
    message = Message.json("order.created", {"id": "o-1"}, correlation_id="o-1")
    await broker.publish("orders", [message])
    await dead_letters(broker, None, 1)

    (line,) = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    error = f"{type(failure).__name__}: {failure}"
    assert line.levelname == "WARNING" and line.name.startswith("ordermesh.messaging.")
    queue = "queue payments.order_created"
    assert (
        line.getMessage()
        == f"{queue}: dead-lettered {message.message_id} after {attempts} attempt(s): {error}"
    )
    fields = {k: getattr(line, k) for k in ("order_id", "message_id", "routing_key", "queue", "attempts")}
    assert fields == {
        "order_id": "o-1",
        "message_id": message.message_id,
        "routing_key": "order.created",
        "queue": "payments.order_created",
        "attempts": attempts,
    }
