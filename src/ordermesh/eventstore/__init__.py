"""Event store: one port, in-memory, SQLite and PostgreSQL adapters."""

from __future__ import annotations

from ordermesh.db import connect
from ordermesh.eventstore.memory import MemoryEventStore
from ordermesh.eventstore.model import NO_STREAM, AppendResult, NewEvent, Snapshot, StoredEvent
from ordermesh.eventstore.port import EventStore
from ordermesh.eventstore.sql import SqlEventStore


async def open_event_store(url: str) -> EventStore:
    """``memory://``, ``sqlite:///path`` or ``postgresql://…``."""
    if url.startswith("memory://"):
        return MemoryEventStore()
    return await SqlEventStore.open(await connect(url))


__all__ = [
    "NO_STREAM",
    "AppendResult",
    "EventStore",
    "MemoryEventStore",
    "NewEvent",
    "Snapshot",
    "SqlEventStore",
    "StoredEvent",
    "open_event_store",
]
