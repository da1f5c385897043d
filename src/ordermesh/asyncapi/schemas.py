"""The document's JSON schemas: the message bodies (``Order``, the contracts' bodies, from their
pydantic models) and the envelope headers every message and every dead letter carries."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from ordermesh.asyncapi.common import PERSISTENT, SCHEMAS, published, ref
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
)
from ordermesh.messaging.rabbitmq import CONTENT_TYPE
from ordermesh.services.orders.schemas import Order

TRACEPARENT_PATTERN = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


def payload_schemas() -> dict[str, Any]:
    """``Order`` (and what it refers to) as JSON schemas, referring to each other under components."""
    mode: JsonSchemaMode = "serialization"
    bodies: list[type[BaseModel]] = [Order, *(body for _, _, body in published())]
    models = [(model, mode) for model in bodies]
    _, top = models_json_schema(models, ref_template=SCHEMAS + "{model}")
    schemas: dict[str, Any] = top["$defs"]
    schemas["Order"]["description"] = (
        "The order resource as of the event (the same JSON as the REST API's `GET /api/orders/{id}`): "
        "`id` and `user_email` are always present."
    )
    return schemas


def envelope_headers() -> dict[str, Any]:
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
                pattern=TRACEPARENT_PATTERN,
            ),
            TRACESTATE: header("W3C Trace Context `tracestate`, with `traceparent`.", type="string"),
        },
    }


def dead_letter_headers() -> dict[str, Any]:
    return {
        "description": (
            "The headers of a dead letter: the original envelope (body and properties unchanged) plus "
            "why, when and from where it was dead-lettered."
        ),
        "allOf": [
            ref(SCHEMAS + "EnvelopeHeaders"),
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
