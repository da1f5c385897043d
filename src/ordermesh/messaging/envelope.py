"""A ``Message`` as one JSON text, for messages kept in a database (parked, or waiting in an
outbox table): every envelope field, plus whatever bookkeeping the keeper adds (``extra``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from ordermesh.messaging.port import Message


def dumps(message: Message, extra: Mapping[str, Any] | None = None) -> str:
    return orjson.dumps(
        {
            **(extra or {}),
            "routing_key": message.routing_key,
            "body": message.body.decode(),
            "type": message.type,
            "message_id": message.message_id,
            "schema_version": message.schema_version,
            "occurred_at": message.occurred_at.isoformat(),
            "correlation_id": message.correlation_id,
            "causation_id": message.causation_id,
            "headers": dict(message.headers),
        }
    ).decode()


def loads(text: str) -> tuple[Message, dict[str, Any]]:
    """The message, and the other keys of the text (the ``extra`` it was written with)."""
    d = orjson.loads(text)
    message = Message(
        routing_key=d.pop("routing_key"),
        body=d.pop("body").encode(),
        type=d.pop("type"),
        message_id=d.pop("message_id"),
        schema_version=d.pop("schema_version"),
        occurred_at=datetime.fromisoformat(d.pop("occurred_at")),
        correlation_id=d.pop("correlation_id"),
        causation_id=d.pop("causation_id"),
        headers=d.pop("headers"),
    )
    return message, d


__all__ = ["dumps", "loads"]
