"""Event-sourced aggregates and the repository that loads and saves them.

Domain events are plain dataclasses with a stable ``TYPE`` name and ``SCHEMA_VERSION``; the
repository turns them into stored events and back (through upcasters), so domain modules never
see JSON or a database.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from ordermesh.clock import Clock, SystemClock
from ordermesh.errors import NotFound
from ordermesh.eventstore.model import AppendResult, NewEvent, Snapshot, StoredEvent
from ordermesh.eventstore.port import EventStore
from ordermesh.eventstore.upcasting import Upcasters


@dataclasses.dataclass(frozen=True, slots=True)
class DomainEvent:
    """Base of domain events. Subclasses set ``TYPE`` and may override the codec methods."""

    TYPE: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1

    def to_data(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        return cls(**data)


@dataclasses.dataclass(frozen=True, slots=True)
class EventMeta:
    """Where an event sits in its stream; passed to aggregates so they can keep timestamps."""

    version: int
    occurred_at: datetime


class EventCodec:
    """Maps event type names to classes, running upcasters on the way in."""

    def __init__(self, *classes: type[DomainEvent], upcasters: Upcasters | None = None) -> None:
        self._classes = {c.TYPE: c for c in classes}
        self.upcasters = upcasters or Upcasters()

    def encode(
        self,
        event: DomainEvent,
        metadata: Mapping[str, Any] | None = None,
        occurred_at: datetime | None = None,
    ) -> NewEvent:
        return NewEvent(
            event.TYPE, event.to_data(), event.SCHEMA_VERSION, dict(metadata or {}), occurred_at=occurred_at
        )

    def decode(self, stored: StoredEvent) -> DomainEvent:
        cls = self._classes.get(stored.type)
        if cls is None:
            raise ValueError(f"unknown event type {stored.type!r} at position {stored.position}")
        _, data = self.upcasters.upcast(stored.type, stored.schema_version, stored.data)
        return cls.from_data(data)

    def upcast_data(self, stored: StoredEvent) -> tuple[int, dict[str, Any]]:
        return self.upcasters.upcast(stored.type, stored.schema_version, stored.data)

    def knows(self, event_type: str) -> bool:
        return event_type in self._classes


class Aggregate(Protocol):
    """What the repository needs of an event-sourced aggregate."""

    SNAPSHOT_TYPE: ClassVar[str]
    id: str
    version: int

    def apply(self, event: DomainEvent, meta: EventMeta) -> None: ...

    def pending(self) -> list[tuple[DomainEvent, datetime]]:
        """Events recorded since load, each with the time the command ran."""
        ...

    def mark_saved(self, version: int) -> None: ...

    def to_snapshot(self) -> dict[str, Any]: ...


A = TypeVar("A", bound=Aggregate)
A_co = TypeVar("A_co", bound=Aggregate, covariant=True)


class AggregateFactory(Protocol[A_co]):
    """Usually the aggregate class itself (``blank`` and ``from_snapshot`` as classmethods)."""

    SNAPSHOT_TYPE: str

    def blank(self, aggregate_id: str) -> A_co: ...

    def from_snapshot(self, state: Mapping[str, Any]) -> A_co: ...


class Repository(Generic[A]):
    """Loads aggregates from snapshot + newer events; saves pending events optimistically."""

    def __init__(
        self,
        store: EventStore,
        factory: AggregateFactory[A],
        codec: EventCodec,
        stream_prefix: str,
        snapshot_every: int = 100,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self._factory = factory
        self.codec = codec
        self._prefix = stream_prefix
        self._snapshot_every = snapshot_every
        self._clock = clock or SystemClock()

    def stream_id(self, aggregate_id: str) -> str:
        return f"{self._prefix}{aggregate_id}"

    async def load(
        self, aggregate_id: str, *, version: int | None = None, as_of: datetime | None = None
    ) -> A:
        """The aggregate now, or as it was at ``version`` / at time ``as_of`` (temporal query)."""
        stream_id = self.stream_id(aggregate_id)
        aggregate: A | None = None
        temporal = version is not None or as_of is not None
        if not temporal:
            snap = await self.store.load_snapshot(stream_id)
            # A snapshot of another shape (the code moved on) is ignored, not misread.
            if snap is not None and snap.type == self._factory.SNAPSHOT_TYPE:
                aggregate = self._factory.from_snapshot(snap.state)
        start = aggregate.version + 1 if aggregate else 1
        events = await self.store.read_stream(stream_id, start, version, as_of)
        if aggregate is None:
            if not events:
                raise NotFound(f"{aggregate_id} not found" + (" at that point in time" if temporal else ""))
            aggregate = self._factory.blank(aggregate_id)
        self._replay(aggregate, events)
        return aggregate

    def _replay(self, aggregate: A, events: Sequence[StoredEvent]) -> None:
        for stored in events:
            aggregate.apply(self.codec.decode(stored), EventMeta(stored.version, stored.occurred_at))
            aggregate.version = stored.version

    async def save(self, aggregate: A, metadata: Mapping[str, Any] | None = None) -> AppendResult:
        pending = aggregate.pending()
        expected = aggregate.version - len(pending)
        stream_id = self.stream_id(aggregate.id)
        result = await self.store.append(
            stream_id, [self.codec.encode(e, metadata, at) for e, at in pending], expected
        )
        aggregate.mark_saved(result.version)
        # A snapshot is a cache: written after the commit, so losing one costs only a longer load.
        if result.version // self._snapshot_every > expected // self._snapshot_every:
            await self.store.save_snapshot(
                Snapshot(
                    stream_id,
                    result.version,
                    aggregate.SNAPSHOT_TYPE,
                    aggregate.to_snapshot(),
                    self._clock.now(),
                )
            )
        return result
