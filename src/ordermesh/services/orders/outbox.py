"""What the order service tells the world: one message per order event on the ``orders`` topic
exchange, routing key ``order.<what happened>``, body the order resource as of that event (the
same JSON as REST's, so ``order['id']`` and ``order['user_email']`` are always there)."""

from __future__ import annotations

import orjson

from ordermesh.contracts.orders import EXCHANGE, ROUTING_KEYS
from ordermesh.eventstore.model import StoredEvent
from ordermesh.messaging.port import Message
from ordermesh.services.orders.projections import STREAM_PREFIX, OrderStates
from ordermesh.services.orders.service import OrderService

RELAY_NAME = "orders-outbox"


class OrderMessages:
    """Translates stored order events into messages, keeping each order's state as it goes."""

    def __init__(self, service: OrderService) -> None:
        self._orders = OrderStates(service.repository)

    async def __call__(self, event: StoredEvent) -> Message | None:
        key = ROUTING_KEYS.get(event.type)
        if key is None or not event.stream_id.startswith(STREAM_PREFIX):
            return None
        order = await self._orders.after(event)
        return Message(
            routing_key=key,
            body=orjson.dumps(order),
            type=key,
            message_id=event.event_id,
            occurred_at=event.occurred_at,
            correlation_id=str(event.metadata.get("correlation_id") or order["id"]),
            causation_id=event.event_id,
            headers={k: str(v) for k, v in event.metadata.items() if k in ("traceparent", "tracestate")},
        )


__all__ = ["EXCHANGE", "RELAY_NAME", "ROUTING_KEYS", "OrderMessages"]
