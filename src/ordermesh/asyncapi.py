"""The AsyncAPI 3.0 document of ordermesh's messaging, serialised deterministically for
``docs/asyncapi.json``.

Built from the code's own constants (the outbox's ``ROUTING_KEYS``, the notification service's
``QUEUES`` and retry policy, the envelope header names of ``messaging.port``, the ``Order``
model), so the committed file can be checked against the code: regenerate it with
``python -m ordermesh.asyncapi > docs/asyncapi.json``; a test fails when they drift.
"""

from __future__ import annotations

import inspect
import json
from types import ModuleType
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from ordermesh import __version__
from ordermesh.config import Settings
from ordermesh.contracts import inventory as inventory_contract
from ordermesh.contracts import payments as payments_contract
from ordermesh.contracts import shipping as shipping_contract
from ordermesh.messaging.port import (
    H_ATTEMPT,
    H_CAUSATION,
    H_DEAD_AT,
    H_ERROR,
    H_OCCURRED,
    H_ORIGINAL_EXCHANGE,
    H_ORIGINAL_ROUTING_KEY,
    H_SCHEMA,
    H_TYPE,
    TRACEPARENT,
    TRACESTATE,
    RetryPolicy,
)
from ordermesh.messaging.rabbitmq import CONTENT_TYPE, RabbitBroker
from ordermesh.messaging.topics import matches
from ordermesh.services.notifications import service as notifications
from ordermesh.services.orders import outbox
from ordermesh.services.orders.schemas import Order

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"
RABBITMQ_HOST = "127.0.0.1:5672"
VHOST = "/"
PERSISTENT = 2  # AMQP delivery mode of every message (RabbitBroker publishes persistently)

# The other services' published messages (each module: EXCHANGE, ROUTING_KEYS, BODIES). Only their
# sending is described until their consumers (the order saga) exist.
CONTRACTS: tuple[ModuleType, ...] = (payments_contract, inventory_contract, shipping_contract)

_SCHEMAS = "#/components/schemas/"
_MESSAGES = "#/components/messages/"
_TRACEPARENT_PATTERN = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


def _ref(target: str) -> dict[str, str]:
    return {"$ref": target}


def _pointer(*parts: str) -> str:
    """A JSON pointer fragment into this document (``~`` and ``/`` escaped)."""
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _published() -> list[tuple[ModuleType, str, type[BaseModel]]]:
    """(contract module, routing key, body model) of every message in ``CONTRACTS``."""
    return [(c, key, c.BODIES[key]) for c in CONTRACTS for key in c.ROUTING_KEYS]


def _message_name(routing_key: str) -> str:
    """The event type published under ``routing_key`` (``order.created`` → ``OrderCreated``)."""
    return next(event for event, key in outbox.ROUTING_KEYS.items() if key == routing_key)


def _exchange_binding(exchange: str) -> dict[str, Any]:
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


def _queue_binding(queue: str) -> dict[str, Any]:
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


def _retry_delays_ms(retry: RetryPolicy) -> list[int]:
    """The distinct delays (one ``{queue}.retry.{ms}`` queue each) the RabbitMQ adapter declares."""
    return sorted({RabbitBroker._delay_ms(retry, attempt) for attempt in range(1, retry.max_attempts)})


def _payload_schemas() -> dict[str, Any]:
    """``Order`` (and what it refers to) as JSON schemas, referring to each other under components."""
    mode: JsonSchemaMode = "serialization"
    bodies: list[type[BaseModel]] = [Order, *(body for _, _, body in _published())]
    models = [(model, mode) for model in bodies]
    _, top = models_json_schema(models, ref_template=_SCHEMAS + "{model}")
    schemas: dict[str, Any] = top["$defs"]
    schemas["Order"]["description"] = (
        "The order resource as of the event (the same JSON as the REST API's `GET /api/orders/{id}`): "
        "`id` and `user_email` are always present."
    )
    return schemas


def _envelope_headers() -> dict[str, Any]:
    """The envelope as it travels: AMQP basic properties plus application headers."""

    def prop(description: str, **schema: Any) -> dict[str, Any]:
        return {"description": f"AMQP property. {description}", **schema}

    def header(description: str, **schema: Any) -> dict[str, Any]:
        return {"description": f"AMQP header. {description}", **schema}

    return {
        "type": "object",
        "description": (
            "The message envelope. The body is the plain JSON payload; the envelope travels in AMQP "
            "basic properties (`message_id`, `type`, `correlation_id`, `content_type`, `timestamp`, "
            "`delivery_mode`) and application headers (`x-ordermesh-*`, W3C trace context). A consumer "
            "fills in missing ones: type = routing key, schema version 1, occurred-at = timestamp or now, "
            "message id = a UUID derived from routing key and body (stable across redeliveries)."
        ),
        "required": ["message_id", "type", "content_type", "timestamp", H_SCHEMA, H_OCCURRED],
        "properties": {
            "message_id": prop(
                "Unique id of the message (the stored event's id): the consumers' inbox deduplicates "
                "on it (delivery is at-least-once).",
                type="string",
            ),
            "type": prop("The message type: the routing key, e.g. `order.created`.", type="string"),
            "correlation_id": prop(
                "The request's correlation id, else the order id: ties together every message of one order.",
                type="string",
            ),
            "content_type": prop("The body's media type.", type="string", const=CONTENT_TYPE),
            "timestamp": prop(
                "When the event occurred, in whole seconds since the Unix epoch.", type="integer", minimum=0
            ),
            "delivery_mode": prop("Persistent.", type="integer", const=PERSISTENT),
            H_TYPE: header(
                "The message type, read only when the `type` property is absent (legacy publishers).",
                type="string",
            ),
            H_SCHEMA: header("Version of the payload schema.", type="integer", minimum=1),
            H_OCCURRED: header(
                "When the event occurred (ISO 8601, with offset); takes precedence over `timestamp`.",
                type="string",
                format="date-time",
            ),
            H_CAUSATION: header("Id of what caused this message (the stored event's id).", type="string"),
            H_ATTEMPT: header(
                "Delivery attempt (absent: 1). Set on retried copies coming back from a delay queue.",
                type="integer",
                minimum=1,
            ),
            H_ERROR: header(
                "On a retried copy: the error the previous attempt raised (at most 2000 characters).",
                type="string",
            ),
            H_ORIGINAL_EXCHANGE: header(
                "On a retried or dead-lettered copy: the exchange it was first published to.", type="string"
            ),
            H_ORIGINAL_ROUTING_KEY: header(
                "On a retried or dead-lettered copy: the routing key it was first published with.",
                type="string",
            ),
            TRACEPARENT: header(
                "W3C Trace Context `traceparent` of the request that caused the event.",
                type="string",
                pattern=_TRACEPARENT_PATTERN,
            ),
            TRACESTATE: header("W3C Trace Context `tracestate`, with `traceparent`.", type="string"),
        },
    }


def _dead_letter_headers() -> dict[str, Any]:
    return {
        "description": (
            "The headers of a dead letter: the original envelope (body and properties unchanged) plus "
            "why, when and from where it was dead-lettered."
        ),
        "allOf": [
            _ref(_SCHEMAS + "EnvelopeHeaders"),
            {
                "type": "object",
                "required": [H_ERROR, H_ATTEMPT, H_ORIGINAL_EXCHANGE, H_ORIGINAL_ROUTING_KEY, H_DEAD_AT],
                "properties": {
                    H_ERROR: {
                        "type": "string",
                        "description": "The handler's error (`Type: message`, at most 2000 characters); "
                        "`malformed envelope: …` for an undecodable envelope.",
                    },
                    H_ATTEMPT: {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Attempts made: `max_attempts`, or fewer for a permanent error.",
                    },
                    H_ORIGINAL_EXCHANGE: {"type": "string", "description": "Exchange it was published to."},
                    H_ORIGINAL_ROUTING_KEY: {
                        "type": "string",
                        "description": "Routing key it was published with.",
                    },
                    H_DEAD_AT: {
                        "type": "string",
                        "format": "date-time",
                        "description": "When it was dead-lettered (ISO 8601, UTC).",
                    },
                },
            },
        ],
    }


def _servers() -> dict[str, Any]:
    broker_file = (Settings().data_dir / "broker.db").as_posix()
    return {
        "rabbitmq": {
            "host": RABBITMQ_HOST,
            "pathname": VHOST,
            "protocol": "amqp",
            "protocolVersion": "0.9.1",
            "title": "RabbitMQ",
            "description": (
                f"RabbitMQ (`ORDERMESH_BROKER_URL=amqp://guest:guest@{RABBITMQ_HOST}/`). Durable topic "
                "exchanges, durable consumer queues, publisher confirms, mandatory routing; retries wait in "
                "`{queue}.retry.{delay_ms}` queues, dead letters go to `{queue}.dlq`. "
                "`?prefix=NAMESPACE` prefixes every exchange and queue name; `?quorum=1` makes the "
                "queues quorum queues."
            ),
        },
        "embedded": {
            "host": "localhost",
            "pathname": "/{path}",
            "protocol": "sqlite",
            "title": "Embedded broker",
            "description": (
                "The embedded broker (`ordermesh.messaging.embedded`), the default when "
                "`ORDERMESH_BROKER_URL` is unset: the same topic exchanges, bindings, queues, envelope, "
                "retries and dead letters on a SQLite file shared by every process that opens it "
                f"(`sqlite:///PATH`, default `{broker_file}` in the data directory), no server. Retries "
                "wait in the queue's own table rows rather than in delay queues; dead letters are kept "
                "in the `mq_dead` table."
            ),
            "variables": {
                "path": {
                    "default": broker_file,
                    "description": "The broker's SQLite file (`ORDERMESH_DATA_DIR`/broker.db).",
                }
            },
        },
    }


def _messages() -> dict[str, Any]:
    messages: dict[str, Any] = {}
    for event, key in outbox.ROUTING_KEYS.items():
        messages[event] = {
            "name": event,
            "title": key,
            "summary": f"`{event}` happened to an order: its state afterwards.",
            "contentType": CONTENT_TYPE,
            "correlationId": _ref("#/components/correlationIds/correlationId"),
            "headers": {
                "allOf": [
                    _ref(_SCHEMAS + "EnvelopeHeaders"),
                    {"type": "object", "properties": {"type": {"const": key}}},
                ]
            },
            "payload": _ref(_SCHEMAS + "Order"),
            "bindings": {
                "amqp": {
                    "bindingVersion": AMQP_BINDING_VERSION,
                    "contentEncoding": "utf-8",
                    "messageType": key,
                }
            },
        }
    for contract, key, body in _published():
        messages[key] = {
            "name": key,
            "title": key,
            "summary": f"Published by the {contract.EXCHANGE} service (`{contract.__name__}`).",
            "description": inspect.cleandoc(body.__doc__ or ""),
            "contentType": CONTENT_TYPE,
            "correlationId": _ref("#/components/correlationIds/correlationId"),
            "headers": {
                "allOf": [
                    _ref(_SCHEMAS + "EnvelopeHeaders"),
                    {"type": "object", "properties": {"type": {"const": key}}},
                ]
            },
            "payload": _ref(_SCHEMAS + body.__name__),
            "bindings": {
                "amqp": {
                    "bindingVersion": AMQP_BINDING_VERSION,
                    "contentEncoding": "utf-8",
                    "messageType": key,
                }
            },
        }
    messages["DeadLetter"] = {
        "name": "DeadLetter",
        "title": "Dead letter",
        "summary": "A message a consumer could not handle, kept for inspection and replay.",
        "description": (
            "After `max_attempts` failed deliveries, or at once for a permanent error (malformed body or "
            "envelope, unknown type, missing field), the consumer's copy of the message is published "
            "(confirmed, through the default exchange) to its queue's `{queue}.dlq` before the original "
            "is acknowledged. `replay` sends it back to that one queue as attempt 1, without "
            f"`{H_ERROR}` and `{H_DEAD_AT}`."
        ),
        "contentType": CONTENT_TYPE,
        "headers": _ref(_SCHEMAS + "DeadLetterHeaders"),
        "payload": {"description": "The original body, byte for byte (an `Order` unless it was malformed)."},
    }
    return messages


def _exchange_channels() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    for event, key in outbox.ROUTING_KEYS.items():
        channels[key] = {
            "address": key,
            "title": f"{outbox.EXCHANGE} / {key}",
            "description": (
                f"Routing key `{key}` on the durable topic exchange `{outbox.EXCHANGE}`: one message per "
                f"`{event}` event."
            ),
            "messages": {event: _ref(_MESSAGES + event)},
            "bindings": _exchange_binding(outbox.EXCHANGE),
        }
    for contract, key, _ in _published():
        channels[key] = {
            "address": key,
            "title": f"{contract.EXCHANGE} / {key}",
            "description": f"Routing key `{key}` on the durable topic exchange `{contract.EXCHANGE}`.",
            "messages": {key: _ref(_pointer("components", "messages", key))},
            "bindings": _exchange_binding(contract.EXCHANGE),
        }
    return channels


def _queue_channels() -> dict[str, Any]:
    retry = notifications.DEFAULT_RETRY
    delays = _retry_delays_ms(retry)
    channels: dict[str, Any] = {}
    for queue, binding_key in notifications.QUEUES.items():
        routed = sorted(key for key in outbox.ROUTING_KEYS.values() if matches(binding_key, key))
        channels[queue] = {
            "address": queue,
            "title": f"queue {queue}",
            "description": (
                f"The notification service's durable queue, bound to exchange `{notifications.EXCHANGE}` "
                f"with binding key `{binding_key}`. A failed delivery is retried up to "
                f"{retry.max_attempts} attempts in all, waiting in `{queue}.retry.{{delay_ms}}` "
                f"(delays {', '.join(f'{ms} ms' for ms in delays)}), then dead-lettered to `{queue}.dlq`."
            ),
            "messages": {_message_name(key): _ref(_MESSAGES + _message_name(key)) for key in routed},
            "bindings": _queue_binding(queue),
            "x-ordermesh-binding": {"bindingKeys": [binding_key], "exchange": notifications.EXCHANGE},
            "x-ordermesh-retry-queues": [f"{queue}.retry.{ms}" for ms in delays],
            "x-ordermesh-dead-letter-queue": f"{queue}.dlq",
        }
        channels[f"{queue}.dlq"] = {
            "address": f"{queue}.dlq",
            "title": f"dead letters of {queue}",
            "description": f"Dead letters of `{queue}`, read by `dead_letters` and sent back by `replay`.",
            "messages": {"DeadLetter": _ref(_MESSAGES + "DeadLetter")},
            "bindings": _queue_binding(f"{queue}.dlq"),
        }
    return channels


def _send(key: str, message: str, description: str) -> dict[str, Any]:
    """A publish operation: persistent, mandatory, confirmed."""
    return {
        "action": "send",
        "title": f"Publish {key}",
        "description": description,
        "channel": _ref(_pointer("channels", key)),
        "messages": [_ref(_pointer("channels", key, "messages", message))],
        "bindings": {
            "amqp": {
                "bindingVersion": AMQP_BINDING_VERSION,
                "deliveryMode": PERSISTENT,
                "mandatory": True,
                "timestamp": True,
            }
        },
    }


def _operations(channels: dict[str, Any]) -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for event, key in outbox.ROUTING_KEYS.items():
        operations[f"send{event}"] = _send(
            key,
            event,
            f"The order service's outbox relay (`{outbox.RELAY_NAME}`) publishes every stored "
            f"`{event}` event, in order, as a persistent mandatory message and waits for the "
            "publisher confirm: an event no queue is bound to is an error, never lost silently.",
        )
    for contract, key, _ in _published():
        operations[f"send_{key}"] = _send(
            key,
            key,
            f"The {contract.EXCHANGE} service's outbox publishes it, in the same transaction as the "
            "change it reports, as a persistent mandatory message, waiting for the publisher confirm.",
        )
    for queue, binding_key in notifications.QUEUES.items():
        operations[f"receive_{queue}"] = {
            "action": "receive",
            "title": f"Consume {queue}",
            "description": (
                f"The notification service consumes `{queue}` (bound with `{binding_key}`), at most "
                f"{notifications.DEFAULT_PREFETCH} unacknowledged messages at once, and mails the order's "
                "customer. A message is acknowledged only after the handler returns; duplicates are "
                f"dropped by the `{notifications.INBOX_CONSUMER}` inbox (delivery is at-least-once)."
            ),
            "channel": _ref(_pointer("channels", queue)),
            "messages": [
                _ref(_pointer("channels", queue, "messages", name)) for name in channels[queue]["messages"]
            ],
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
        }
    return operations


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI document as a dict (a fresh copy on every call)."""
    channels = {**_exchange_channels(), **_queue_channels()}
    schemas = _payload_schemas()
    schemas["EnvelopeHeaders"] = _envelope_headers()
    schemas["DeadLetterHeaders"] = _dead_letter_headers()
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "ordermesh messaging",
            "version": __version__,
            "description": (
                f"Order events on the durable topic exchange `{outbox.EXCHANGE}` (routing keys "
                "`order.<what happened>`, body = the order resource as of the event) and the queues "
                "consuming them. The envelope travels in AMQP properties and headers; the body is plain "
                "JSON. The payment, inventory and shipping services publish on their own exchanges "
                f"({', '.join(f'`{c.EXCHANGE}`' for c in CONTRACTS)}; bodies in `ordermesh.contracts`). "
                "Generated by `python -m ordermesh.asyncapi`."
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": _servers(),
        "channels": channels,
        "operations": _operations(channels),
        "components": {
            "schemas": schemas,
            "messages": _messages(),
            "correlationIds": {
                "correlationId": {
                    "description": "The `correlation_id` property: the request's, else the order id.",
                    "location": "$message.header#/correlation_id",
                }
            },
        },
    }


def asyncapi_json() -> str:
    """The AsyncAPI document as ASCII JSON: sorted keys, two-space indent, trailing newline."""
    return json.dumps(asyncapi_document(), indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def main() -> None:
    print(asyncapi_json(), end="")


if __name__ == "__main__":
    main()
