"""The publishing side of the document: one channel per routing key of every exchange (the
order outbox's ``orders``, and the payments, inventory and shipping contracts' exchanges), the
message each carries, and the ``send`` operation that publishes it."""

from __future__ import annotations

import inspect
from typing import Any

from ordermesh.asyncapi.common import (
    AMQP_BINDING_VERSION,
    PERSISTENT,
    SCHEMAS,
    exchange_binding,
    message_binding,
    message_ref,
    pointer,
    published,
    ref,
)
from ordermesh.contracts.orders import MUST_ARRIVE
from ordermesh.messaging.rabbitmq import CONTENT_TYPE
from ordermesh.services.orders import outbox


def _headers(routing_key: str) -> dict[str, Any]:
    return {
        "allOf": [
            ref(SCHEMAS + "EnvelopeHeaders"),
            {"type": "object", "properties": {"type": {"const": routing_key}}},
        ]
    }


def published_messages() -> dict[str, Any]:
    """Every published message, by its name under ``components/messages``."""
    messages: dict[str, Any] = {}
    for event, key in outbox.ROUTING_KEYS.items():
        messages[event] = {
            "name": event,
            "title": key,
            "summary": f"`{event}` happened to an order: its state afterwards.",
            "contentType": CONTENT_TYPE,
            "correlationId": ref("#/components/correlationIds/correlationId"),
            "headers": _headers(key),
            "payload": ref(SCHEMAS + "Order"),
            "bindings": message_binding(key),
        }
    for contract, key, body in published():
        messages[key] = {
            "name": key,
            "title": key,
            "summary": f"Published by the {contract.EXCHANGE} service (`{contract.__name__}`).",
            "description": inspect.cleandoc(body.__doc__ or ""),
            "contentType": CONTENT_TYPE,
            "correlationId": ref("#/components/correlationIds/correlationId"),
            "headers": _headers(key),
            "payload": ref(SCHEMAS + body.__name__),
            "bindings": message_binding(key),
        }
    return messages


def exchange_channels() -> dict[str, Any]:
    """One channel per routing key, addressed by it, bound to its exchange."""
    channels: dict[str, Any] = {}
    for event, key in outbox.ROUTING_KEYS.items():
        channels[key] = {
            "address": key,
            "title": f"{outbox.EXCHANGE} / {key}",
            "description": (
                f"Routing key `{key}` on the durable topic exchange `{outbox.EXCHANGE}`: one message per "
                f"`{event}` event."
            ),
            "messages": {event: message_ref(event)},
            "bindings": exchange_binding(outbox.EXCHANGE),
        }
    for contract, key, _ in published():
        channels[key] = {
            "address": key,
            "title": f"{contract.EXCHANGE} / {key}",
            "description": f"Routing key `{key}` on the durable topic exchange `{contract.EXCHANGE}`.",
            "messages": {key: message_ref(key)},
            "bindings": exchange_binding(contract.EXCHANGE),
        }
    return channels


def _send(key: str, message: str, description: str) -> dict[str, Any]:
    """A publish operation: persistent, mandatory, confirmed."""
    return {
        "action": "send",
        "title": f"Publish {key}",
        "description": description,
        "channel": ref(pointer("channels", key)),
        "messages": [ref(pointer("channels", key, "messages", message))],
        "bindings": {
            "amqp": {
                "bindingVersion": AMQP_BINDING_VERSION,
                "deliveryMode": PERSISTENT,
                "mandatory": True,
                "timestamp": True,
            }
        },
    }


def send_operations() -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for event, key in outbox.ROUTING_KEYS.items():
        unroutable = (
            "one that no queue takes yet is parked until its consumer is there (`ordermesh outbox "
            "replay` sends it again), never lost silently"
            if key in MUST_ARRIVE
            else "no consumer of this system needs it, so one that no queue takes is dropped from the "
            "bus (the event store keeps it)"
        )
        operations[f"send{event}"] = _send(
            key,
            event,
            f"The order service's outbox relay (`{outbox.RELAY_NAME}`) publishes every stored "
            f"`{event}` event, in order, as a persistent mandatory message and waits for the "
            f"publisher confirm: {unroutable}.",
        )
    for contract, key, _ in published():
        operations[f"send_{key}"] = _send(
            key,
            key,
            f"The {contract.EXCHANGE} service's outbox publishes it, in the same transaction as the "
            "change it reports, as a persistent mandatory message, waiting for the publisher confirm.",
        )
    return operations
