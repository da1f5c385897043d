"""The event store on SQLite and PostgreSQL.

Appends are one statement, hence one round trip and one transaction: the stream-version check,
the global position and the rows are computed together.

Gap-free positions in commit order:
- PostgreSQL: positions come from a one-row counter (``event_head``) updated in the same
  statement. Its row lock is held until commit, so the next writer reads the counter only after
  the previous one committed, and positions are handed out in commit order with no gap (a failed
  append rolls the counter back too).
- SQLite: the statement runs under SQLite's single write lock and takes ``max(position) + n``.

On PostgreSQL the same statement sends one NOTIFY (``schema:new head``) when it appends, which
wakes subscribers in every process; the payload names the schema, so stores in other schemas of
the same database ignore it. A conflicting append inserts nothing and notifies nobody.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

import orjson

from ordermesh.clock import Clock, SystemClock
from ordermesh.db import SqlDb
from ordermesh.db.port import Row, ts_param, ts_value
from ordermesh.errors import ConcurrencyConflict
from ordermesh.eventstore import schema
from ordermesh.eventstore.model import AppendResult, NewEvent, Snapshot, StoredEvent
from ordermesh.eventstore.signal import HeadSignal

_COLUMNS = "position, stream_id, version, type, schema_version, data, metadata, event_id, occurred_at"
# Rows can be splatted into StoredEvent while the column list matches its fields one for one.
_COLUMNS_ARE_FIELDS = list(StoredEvent._fields) == _COLUMNS.split(", ")

_APPEND_PG = f"""
WITH cur AS (SELECT coalesce(max(version), 0) AS v FROM events WHERE stream_id = $1),
head AS (
    UPDATE event_head SET position = position + $3
    WHERE id = 1 AND (SELECT v FROM cur) = $2
    RETURNING position
),
notify AS (
    SELECT pg_notify('{schema.NOTIFY_CHANNEL}', current_schema() || ':' || position::text) FROM head
)
INSERT INTO events (stream_id, version, position, event_id, type, schema_version, data, metadata, occurred_at)
SELECT $1, $2 + e.ord, head.position - $3 + e.ord, e.event_id, e.type, e.schema_version,
       e.data::jsonb, e.metadata::jsonb, e.occurred_at
FROM head, notify, unnest($4::timestamptz[], $5::text[], $6::text[], $7::int[], $8::text[], $9::text[])
     WITH ORDINALITY AS e(occurred_at, event_id, type, schema_version, data, metadata, ord)
RETURNING position
"""

_APPEND_SQLITE = """
INSERT INTO events (stream_id, version, position, event_id, type, schema_version, data, metadata, occurred_at)
SELECT $1, $2 + e.key + 1, (SELECT coalesce(max(position), 0) FROM events) + e.key + 1,
       json_extract(e.value, '$[0]'), json_extract(e.value, '$[1]'), json_extract(e.value, '$[2]'),
       json_extract(e.value, '$[3]'), json_extract(e.value, '$[4]'), json_extract(e.value, '$[5]')
FROM json_each($3) AS e
WHERE (SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1) = $2
RETURNING position
"""


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class SqlEventStore:
    """Event store over :class:`ordermesh.db.SqlDb`; works for both dialects."""

    def __init__(self, db: SqlDb, clock: Clock | None = None, poll_interval: float = 0.25) -> None:
        self.db = db
        self._dialect = db.dialect
        self._clock = clock or SystemClock()
        # One head query per poll interval while anyone waits, shared by every subscriber.
        self._signal = HeadSignal(self.head_position, poll_interval)
        self._poll_interval = poll_interval
        self._schema = ""

    @classmethod
    async def open(cls, db: SqlDb, clock: Clock | None = None, poll_interval: float = 0.25) -> SqlEventStore:
        await schema.migrate_eventstore(db)
        store = cls(db, clock, poll_interval)
        listen = getattr(db, "listen", None)
        if listen is not None:
            row = await db.fetchrow("SELECT current_schema()")
            store._schema = str(row[0]) if row else ""
            await listen(schema.NOTIFY_CHANNEL, store._on_notify)
        return store

    def _on_notify(self, payload: str) -> None:
        notified_schema, _, position = payload.rpartition(":")
        if notified_schema == self._schema and position.isdigit():
            self._signal.advance(int(position))

    async def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: int) -> AppendResult:
        if not events:
            actual = await self.stream_version(stream_id)
            if actual != expected_version:
                raise ConcurrencyConflict(stream_id, expected_version, actual)
            return AppendResult(actual, await self.head_position())
        now = self._clock.now()
        stamps = [ts_param(self._dialect, e.occurred_at or now) for e in events]
        try:
            if self._dialect == "postgres":
                rows = await self.db.write_fetch(
                    _APPEND_PG,
                    stream_id,
                    expected_version,
                    len(events),
                    stamps,
                    [e.event_id for e in events],
                    [e.type for e in events],
                    [e.schema_version for e in events],
                    [_dumps(e.data) for e in events],
                    [_dumps(e.metadata) for e in events],
                )
            else:
                payload = _dumps(
                    [
                        [e.event_id, e.type, e.schema_version, e.data, e.metadata, stamp]
                        for e, stamp in zip(events, stamps, strict=True)
                    ]
                )
                rows = await self.db.write_fetch(_APPEND_SQLITE, stream_id, expected_version, payload)
        except Exception as exc:
            if _is_unique_violation(exc):
                raise ConcurrencyConflict(stream_id, expected_version) from exc
            raise
        if not rows:
            raise ConcurrencyConflict(stream_id, expected_version, await self.stream_version(stream_id))
        position = max(r[0] for r in rows)
        self._signal.advance(position)
        return AppendResult(expected_version + len(events), position)

    async def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        until: datetime | None = None,
    ) -> list[StoredEvent]:
        sql = f"SELECT {_COLUMNS} FROM events WHERE stream_id = $1 AND version >= $2"
        args: list[Any] = [stream_id, from_version]
        if to_version is not None:
            args.append(to_version)
            sql += f" AND version <= ${len(args)}"
        if until is not None:
            args.append(ts_param(self._dialect, until))
            sql += f" AND occurred_at <= ${len(args)}"
        rows = await self.db.fetch(sql + " ORDER BY version", *args)
        return self._events(rows)

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2",
            after_position,
            limit,
        )
        return self._events(rows)

    async def head_position(self) -> int:
        row = await self.db.fetchrow("SELECT coalesce(max(position), 0) FROM events")
        return int(row[0]) if row else 0

    async def stream_version(self, stream_id: str) -> int:
        row = await self.db.fetchrow(
            "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1", stream_id
        )
        return int(row[0]) if row else 0

    async def wait_for_events(self, after_position: int, timeout: float) -> None:
        # Other processes' appends arrive by NOTIFY (PostgreSQL) or are found by the signal's one
        # poller within a poll interval (SQLite has no cross-process signal).
        await self._signal.wait(after_position, timeout)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self.db.execute(
            """INSERT INTO snapshots (stream_id, version, type, state, taken_at)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (stream_id) DO UPDATE
               SET version = excluded.version, type = excluded.type, state = excluded.state,
                   taken_at = excluded.taken_at
               WHERE snapshots.version < excluded.version""",
            snapshot.stream_id,
            snapshot.version,
            snapshot.type,
            _dumps(snapshot.state),
            ts_param(self._dialect, snapshot.taken_at),
        )

    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        row = await self.db.fetchrow(
            "SELECT stream_id, version, type, state, taken_at FROM snapshots WHERE stream_id = $1",
            stream_id,
        )
        if row is None:
            return None
        return Snapshot(row[0], row[1], row[2], _json(row[3]), ts_value(self._dialect, row[4]))

    async def close(self) -> None:
        self._signal.close()
        await self.db.close()

    def _events(self, rows: Sequence[Row]) -> list[StoredEvent]:
        # The hot loop of every replay: one comprehension, no per-row method calls.
        if self._dialect == "postgres":
            # asyncpg returns timestamptz as aware datetimes, and the PostgreSQL adapter has it
            # parse jsonb with orjson while it decodes the row: such rows need no work at all.
            if _COLUMNS_ARE_FIELDS and rows and not isinstance(rows[0][5], str | bytes):
                records = cast("Sequence[Sequence[Any]]", rows)  # asyncpg Records unpack like tuples
                return list(map(_stored, records))
            return [
                StoredEvent(r[0], r[1], r[2], r[3], r[4], _json(r[5]), _json(r[6]), r[7], r[8]) for r in rows
            ]
        dialect = self._dialect
        return [
            StoredEvent(r[0], r[1], r[2], r[3], r[4], _json(r[5]), _json(r[6]), r[7], ts_value(dialect, r[8]))
            for r in rows
        ]


_stored = StoredEvent._make


def _json(raw: Any) -> Any:
    """A JSON column's value: parsed already by the driver, or JSON text to parse."""
    return orjson.loads(raw) if isinstance(raw, str | bytes) else raw


def _is_unique_violation(exc: Exception) -> bool:
    # asyncpg.UniqueViolationError / sqlite3.IntegrityError, without importing either driver here.
    return getattr(exc, "sqlstate", None) == "23505" or (
        type(exc).__name__ == "IntegrityError" and "UNIQUE" in str(exc)
    )
