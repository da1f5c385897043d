"""The embedded broker's tables and how a message maps to and from their rows.

Shared by the broker (publish, dead letters, replay) and the subscription (claim, dead-letter),
so both write and read the envelope with the same columns in the same order.
"""

from __future__ import annotations

from typing import Any

import orjson

from ordermesh.db.port import Row, ts_param, ts_value
from ordermesh.messaging.port import Message

# printf() format, filled in by SQL with the row's deliveries and the limit; the phrase is the
# RabbitMQ adapter's too, so one search finds poison messages on either broker.
OVER_LIMIT = (
    "the embedded broker dead-lettered it: delivered past the queue's delivery limit without an ack "
    "(%d deliveries, limit %d)"
)

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS mq_exchanges (name text PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS mq_bindings (
         exchange text NOT NULL, binding_key text NOT NULL, queue text NOT NULL,
         PRIMARY KEY (exchange, binding_key, queue))""",
    "CREATE TABLE IF NOT EXISTS mq_queues (name text PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS mq_messages (
         seq integer PRIMARY KEY AUTOINCREMENT,
         queue text NOT NULL,
         message_id text NOT NULL, exchange text NOT NULL, routing_key text NOT NULL,
         body blob NOT NULL, type text NOT NULL, schema_version integer NOT NULL,
         occurred_at integer NOT NULL, correlation_id text, causation_id text,
         headers blob NOT NULL,
         attempt integer NOT NULL DEFAULT 1,
         deliveries integer NOT NULL DEFAULT 0,
         visible_at real NOT NULL DEFAULT 0,
         lease_token text)""",
    "CREATE INDEX IF NOT EXISTS mq_messages_queue_seq ON mq_messages (queue, seq)",
    "CREATE INDEX IF NOT EXISTS mq_messages_queue_visible ON mq_messages (queue, visible_at)",
    "CREATE INDEX IF NOT EXISTS mq_messages_lease ON mq_messages (lease_token)",
    """CREATE TABLE IF NOT EXISTS mq_dead (
         seq integer PRIMARY KEY AUTOINCREMENT,
         queue text NOT NULL,
         message_id text NOT NULL, exchange text NOT NULL, routing_key text NOT NULL,
         body blob NOT NULL, type text NOT NULL, schema_version integer NOT NULL,
         occurred_at integer NOT NULL, correlation_id text, causation_id text,
         headers blob NOT NULL,
         attempts integer NOT NULL, error text NOT NULL, dead_at real NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS mq_dead_queue ON mq_dead (queue, message_id)",
]

ENVELOPE = (
    "message_id, exchange, routing_key, body, type, schema_version, occurred_at, "
    "correlation_id, causation_id, headers"
)


def row_message(row: Row, at: int) -> Message:
    """The envelope from ``row[at:at+10]`` (the columns of ``ENVELOPE``), exchange excluded."""
    headers = orjson.loads(row[at + 9])
    return Message(
        routing_key=row[at + 2],
        body=bytes(row[at + 3]),
        type=row[at + 4],
        message_id=row[at],
        schema_version=int(row[at + 5]),
        occurred_at=ts_value("sqlite", row[at + 6]),
        correlation_id=row[at + 7],
        causation_id=row[at + 8],
        headers={str(k): str(v) for k, v in headers.items()},
    )


def envelope_params(exchange: str, message: Message) -> tuple[Any, ...]:
    """The values of the ``ENVELOPE`` columns for ``message`` published to ``exchange``."""
    return (
        message.message_id,
        exchange,
        message.routing_key,
        message.body,
        message.type or message.routing_key,
        message.schema_version,
        ts_param("sqlite", message.occurred_at),
        message.correlation_id,
        message.causation_id,
        orjson.dumps(dict(message.headers)),
    )
