"""What every part of the AsyncAPI document shares: versions, local references, the AMQP
bindings, and which ``components/messages`` entry each routing key of each exchange is."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from pydantic import BaseModel

from ordermesh.contracts import inventory as inventory_contract
from ordermesh.contracts import payments as payments_contract
from ordermesh.contracts import shipping as shipping_contract
from ordermesh.messaging.port import RetryPolicy
from ordermesh.messaging.rabbitmq.naming import Names
from ordermesh.messaging.topics import matches
from ordermesh.services.orders import outbox

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"
RABBITMQ_HOST = "127.0.0.1:5672"
VHOST = "/"
PERSISTENT = 2  # AMQP delivery mode of every message (RabbitBroker publishes persistently)

# The other services' published messages (each module: EXCHANGE, ROUTING_KEYS, BODIES), consumed
# by the choreographed saga's queues (``ordermesh.asyncapi.consumers``).
CONTRACTS: tuple[ModuleType, ...] = (payments_contract, inventory_contract, shipping_contract)

SCHEMAS = "#/components/schemas/"
MESSAGES = "#/components/messages/"


def ref(target: str) -> dict[str, str]:
    return {"$ref": target}


def pointer(*parts: str) -> str:
    """A JSON pointer fragment into this document (``~`` and ``/`` escaped)."""
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def published() -> list[tuple[ModuleType, str, type[BaseModel]]]:
    """(contract module, routing key, body model) of every message in ``CONTRACTS``."""
    return [(c, key, c.BODIES[key]) for c in CONTRACTS for key in c.ROUTING_KEYS]


def exchange_messages() -> dict[str, dict[str, str]]:
    """Exchange -> routing key -> the name of its message under ``components/messages``: an
    order event is named by its event type (``order.created`` is ``OrderCreated``), a contract
    message by its routing key."""
    exchanges = {outbox.EXCHANGE: {key: event for event, key in outbox.ROUTING_KEYS.items()}}
    for contract in CONTRACTS:
        exchanges[contract.EXCHANGE] = {key: key for key in contract.ROUTING_KEYS}
    return exchanges


def routed(exchange: str, binding_key: str) -> dict[str, str]:
    """Routing key -> message name of every message ``binding_key`` takes from ``exchange``, by
    routing key (a wildcard like ``payment.*`` takes several)."""
    keys = exchange_messages()[exchange]
    return {key: keys[key] for key in sorted(keys) if matches(binding_key, key)}


def message_ref(name: str) -> dict[str, str]:
    return ref(pointer("components", "messages", name))


def exchange_binding(exchange: str) -> dict[str, Any]:
    return {
        "amqp": {
            "bindingVersion": AMQP_BINDING_VERSION,
            "exchange": {
                "autoDelete": False,
                "durable": True,
                "name": exchange,
                "type": "topic",
                "vhost": VHOST,
            },
            "is": "routingKey",
        }
    }


def queue_binding(queue: str) -> dict[str, Any]:
    return {
        "amqp": {
            "bindingVersion": AMQP_BINDING_VERSION,
            "is": "queue",
            "queue": {
                "autoDelete": False,
                "durable": True,
                "exclusive": False,
                "name": queue,
                "vhost": VHOST,
            },
        }
    }


def message_binding(routing_key: str) -> dict[str, Any]:
    return {
        "amqp": {
            "bindingVersion": AMQP_BINDING_VERSION,
            "contentEncoding": "utf-8",
            "messageType": routing_key,
        }
    }


def retry_delays_ms(retry: RetryPolicy) -> list[int]:
    """The distinct delays (one ``{queue}.retry.{ms}`` queue each) the RabbitMQ adapter declares."""
    return sorted({Names.delay_ms(retry, attempt) for attempt in range(1, retry.max_attempts)})
