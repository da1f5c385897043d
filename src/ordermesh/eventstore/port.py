"""The event store port. Every adapter passes ``tests/contract/test_eventstore_contract.py``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from ordermesh.eventstore.model import AppendResult, NewEvent, Snapshot, StoredEvent


class EventStore(Protocol):
    async def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: int) -> AppendResult:
        """Append atomically after ``expected_version`` (``NO_STREAM`` for a new stream).

        Raises ``ConcurrencyConflict`` when the stream's version is not ``expected_version``.
        """
        ...

    async def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        until: datetime | None = None,
    ) -> list[StoredEvent]:
        """Events of one stream in version order, ``from_version`` ≤ v ≤ ``to_version``,
        and if ``until`` is given only those that occurred at or before it."""
        ...

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Events of every stream with position > ``after_position``, in position order."""
        ...

    async def head_position(self) -> int:
        """The position of the last committed event (0 when empty)."""
        ...

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 when it does not exist)."""
        ...

    async def wait_for_events(self, after_position: int, timeout: float) -> None:
        """Return once an event past ``after_position`` may exist, or after ``timeout`` seconds."""
        ...

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` as the stream's latest unless a newer one is already kept."""
        ...

    async def load_snapshot(self, stream_id: str) -> Snapshot | None: ...

    async def close(self) -> None: ...
