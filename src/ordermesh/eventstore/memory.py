"""In-memory event store: the reference behaviour for fast tests."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime

from ordermesh.clock import Clock, SystemClock
from ordermesh.errors import ConcurrencyConflict
from ordermesh.eventstore.model import AppendResult, NewEvent, Snapshot, StoredEvent
from ordermesh.eventstore.signal import HeadSignal


class MemoryEventStore:
    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._all: list[StoredEvent] = []
        self._streams: dict[str, list[StoredEvent]] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._signal = HeadSignal()

    async def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: int) -> AppendResult:
        stream = self._streams.get(stream_id, [])
        if len(stream) != expected_version:
            raise ConcurrencyConflict(stream_id, expected_version, len(stream))
        if not events:
            return AppendResult(expected_version, len(self._all))
        now = self._clock.now()
        # Deep copies stand in for serialisation: callers must not be able to mutate history.
        stored = [
            StoredEvent(
                position=len(self._all) + i,
                stream_id=stream_id,
                version=expected_version + i,
                type=e.type,
                schema_version=e.schema_version,
                data=copy.deepcopy(dict(e.data)),
                metadata=copy.deepcopy(dict(e.metadata)),
                event_id=e.event_id,
                occurred_at=e.occurred_at or now,
            )
            for i, e in enumerate(events, start=1)
        ]
        self._streams[stream_id] = stream + stored
        self._all.extend(stored)
        self._signal.advance(len(self._all))
        return AppendResult(stored[-1].version, stored[-1].position)

    async def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        until: datetime | None = None,
    ) -> list[StoredEvent]:
        stream = self._streams.get(stream_id, [])
        end = len(stream) if to_version is None else min(to_version, len(stream))
        picked = stream[max(from_version, 1) - 1 : end]
        if until is not None:
            picked = [e for e in picked if e.occurred_at <= until]
        return [_copy(e) for e in picked]

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        start = max(after_position, 0)
        return [_copy(e) for e in self._all[start : start + limit]]

    async def head_position(self) -> int:
        return len(self._all)

    async def stream_version(self, stream_id: str) -> int:
        return len(self._streams.get(stream_id, []))

    async def wait_for_events(self, after_position: int, timeout: float) -> None:
        await self._signal.wait(after_position, timeout)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        current = self._snapshots.get(snapshot.stream_id)
        if current is None or current.version < snapshot.version:
            self._snapshots[snapshot.stream_id] = copy.deepcopy(snapshot)

    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        snap = self._snapshots.get(stream_id)
        return copy.deepcopy(snap) if snap else None

    async def close(self) -> None:
        return None


def _copy(event: StoredEvent) -> StoredEvent:
    return copy.deepcopy(event)
