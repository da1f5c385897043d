"""The consuming side of the document: for every queue of every service (``consumers.CONSUMERS``)
a queue channel (its binding, the messages it takes, its retry and dead-letter queues), a channel
for its dead letters, and the ``receive_<queue>`` operation that consumes it."""

from __future__ import annotations

from typing import Any

from ordermesh.asyncapi.common import (
    AMQP_BINDING_VERSION,
    SCHEMAS,
    message_ref,
    pointer,
    queue_binding,
    ref,
    retry_delays_ms,
    routed,
)
from ordermesh.asyncapi.consumers import CONSUMERS, Consumer
from ordermesh.messaging.port import H_DEAD_AT, H_ERROR
from ordermesh.messaging.rabbitmq import CONTENT_TYPE


def _queues() -> list[tuple[Consumer, str, str, str]]:
    """(consumer, queue, exchange, binding key) of every consumer queue, service by service."""
    return [(c, queue, exchange, key) for c in CONSUMERS for queue, (exchange, key) in c.queues.items()]


def _keys(routing_keys: list[str]) -> str:
    return ", ".join(f"`{key}`" for key in routing_keys)


def queue_channels() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    for consumer, queue, exchange, binding_key in _queues():
        messages = routed(exchange, binding_key)
        delays = retry_delays_ms(consumer.retry)
        retry = consumer.retry
        channels[queue] = {
            "address": queue,
            "title": f"queue {queue}",
            "description": (
                f"The {consumer.service} service's durable queue, declared and consumed {consumer.saga}. "
                f"Bound to exchange `{exchange}` with binding key `{binding_key}`, it takes "
                f"{_keys(list(messages))}. "
                f"A failed delivery is retried up to {retry.max_attempts} attempts in all, waiting in "
                f"`{queue}.retry.{{delay_ms}}` (delays {', '.join(f'{ms} ms' for ms in delays)}), then "
                f"dead-lettered to `{queue}.dlq`."
            ),
            "messages": {name: message_ref(name) for name in messages.values()},
            "bindings": queue_binding(queue),
            "x-ordermesh-binding": {"bindingKeys": [binding_key], "exchange": exchange},
            "x-ordermesh-retry-queues": [f"{queue}.retry.{ms}" for ms in delays],
            "x-ordermesh-dead-letter-queue": f"{queue}.dlq",
        }
        channels[f"{queue}.dlq"] = {
            "address": f"{queue}.dlq",
            "title": f"dead letters of {queue}",
            "description": f"Dead letters of `{queue}`, read by `dead_letters` and sent back by `replay`.",
            "messages": {"DeadLetter": message_ref("DeadLetter")},
            "bindings": queue_binding(f"{queue}.dlq"),
        }
    return channels


def receive_operations(channels: dict[str, Any]) -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for consumer, queue, exchange, binding_key in _queues():
        reactions = "; ".join(
            f"on `{key}` it {consumer.reaction(key)}" for key in routed(exchange, binding_key)
        )
        reactions = reactions[0].upper() + reactions[1:]
        operations[f"receive_{queue}"] = {
            "action": "receive",
            "title": f"Consume {queue}",
            "description": (
                f"The {consumer.service} service consumes `{queue}` (bound with `{binding_key}`) "
                f"{consumer.saga}, at most {consumer.prefetch} unacknowledged messages at once. "
                f"{reactions}. A message is acknowledged only after the handler returns. Duplicates "
                f"(delivery is at-least-once): {consumer.duplicates}."
            ),
            "channel": ref(pointer("channels", queue)),
            "messages": [
                ref(pointer("channels", queue, "messages", name)) for name in channels[queue]["messages"]
            ],
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
            "x-ordermesh-consumer": {
                "inbox": consumer.inbox,
                "module": consumer.module,
                "prefetch": consumer.prefetch,
                "sagaStyles": list(consumer.styles),
            },
        }
    return operations


def dead_letter_message() -> dict[str, Any]:
    return {
        "name": "DeadLetter",
        "title": "Dead letter",
        "summary": "A message a consumer could not handle, kept for inspection and replay.",
        "description": (
            "After `max_attempts` failed deliveries, or at once for a permanent error (malformed body or "
            "envelope, unknown type, missing field, a business refusal), the consumer's copy of the "
            "message is published (confirmed, through the default exchange) to its queue's `{queue}.dlq` "
            f"before the original is acknowledged. `replay` sends it back to that one queue as attempt 1, "
            f"without `{H_ERROR}` and `{H_DEAD_AT}`."
        ),
        "contentType": CONTENT_TYPE,
        "headers": ref(SCHEMAS + "DeadLetterHeaders"),
        "payload": {
            "description": "The original body, byte for byte (one of the queue's messages unless it was "
            "malformed)."
        },
    }
