"""The saga log: a port, an in-memory adapter and a SQL one (SQLite, PostgreSQL), one contract
suite (tests/contract/test_saga_store.py).

A saga is one row: the whole record as JSON, plus the columns the runner searches by (its state
and its wake-up time: the durable timer that a restart finds again). Every write is a
compare-and-set on ``version``, so two drivers (two processes, or a restart racing a slow
driver) never both move a saga: the loser re-reads and carries on from what the winner wrote.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

import orjson

from ordermesh.db import SqlDb, migrate
from ordermesh.db.port import ts_param
from ordermesh.saga.model import TERMINAL, SagaRecord, State, StepRecord


class SagaStore(Protocol):
    async def create(self, record: SagaRecord) -> SagaRecord:
        """Store a new saga; if one with that id exists, return it unchanged (starting a saga is
        idempotent: the event that starts it may be delivered twice)."""
        ...

    async def get(self, saga_id: str) -> SagaRecord | None: ...

    async def save(self, record: SagaRecord) -> SagaRecord | None:
        """Write ``record`` if the stored version is still ``record.version``; the stored record
        (version + 1), or None when someone else wrote first."""
        ...

    async def due(self, now: datetime, limit: int = 100) -> list[str]:
        """Ids of unfinished sagas whose wake-up time has come (or that have none)."""
        ...

    async def list(self, state: State | None = None, limit: int = 100) -> list[SagaRecord]:
        """Sagas, most recently updated first; of one state when given."""
        ...


def encode(record: SagaRecord) -> bytes:
    doc = record.to_json()
    doc |= {
        "data": record.data,
        "position": record.position,
        "wake_at": None if record.wake_at is None else record.wake_at.isoformat(),
        "all_steps": [s.to_json() for s in record.steps],
    }
    return orjson.dumps(doc)


def decode(raw: bytes | str, version: int) -> SagaRecord:
    doc: dict[str, Any] = orjson.loads(raw)

    def when(key: str) -> datetime:
        return datetime.fromisoformat(str(doc[key]).replace("Z", "+00:00"))

    wake = doc.get("wake_at")
    return SagaRecord(
        saga_id=doc["saga_id"],
        name=doc["name"],
        style=doc["style"],
        state=doc["state"],
        data=doc["data"],
        started_at=when("started_at"),
        deadline_at=when("deadline_at"),
        updated_at=when("updated_at"),
        steps=tuple(StepRecord.from_json(s) for s in doc["all_steps"]),
        position=int(doc["position"]),
        reason=doc.get("reason", ""),
        wake_at=None if wake is None else datetime.fromisoformat(wake),
        version=version,
    )


class MemorySagaStore:
    def __init__(self) -> None:
        self._rows: dict[str, tuple[bytes, int]] = {}

    async def create(self, record: SagaRecord) -> SagaRecord:
        row = self._rows.get(record.saga_id)
        if row is not None:
            return decode(*row)
        stored = replace(record, version=1)
        self._rows[record.saga_id] = (encode(stored), 1)
        return stored

    async def get(self, saga_id: str) -> SagaRecord | None:
        row = self._rows.get(saga_id)
        return None if row is None else decode(*row)

    async def save(self, record: SagaRecord) -> SagaRecord | None:
        row = self._rows.get(record.saga_id)
        if row is None or row[1] != record.version:
            return None
        stored = replace(record, version=record.version + 1)
        self._rows[record.saga_id] = (encode(stored), stored.version)
        return stored

    async def due(self, now: datetime, limit: int = 100) -> list[str]:
        records = [decode(*row) for row in self._rows.values()]
        ready = [r for r in records if r.state not in TERMINAL and (r.wake_at is None or r.wake_at <= now)]
        return [r.saga_id for r in sorted(ready, key=lambda r: r.wake_at or r.updated_at)][:limit]

    async def list(self, state: State | None = None, limit: int = 100) -> list[SagaRecord]:
        records = [decode(*row) for row in self._rows.values()]
        chosen = [r for r in records if state is None or r.state == state]
        return sorted(chosen, key=lambda r: r.updated_at, reverse=True)[:limit]


_DUE_INDEX = (
    "CREATE INDEX IF NOT EXISTS saga_log_due ON saga_log (wake_at) WHERE state IN ('running', 'compensating')"
)
_DDL = {
    "sqlite": [
        """CREATE TABLE IF NOT EXISTS saga_log (
            saga_id text PRIMARY KEY, state text NOT NULL, wake_at integer, updated_at integer NOT NULL,
            version integer NOT NULL, body text NOT NULL)""",
        _DUE_INDEX,
        "CREATE INDEX IF NOT EXISTS saga_log_state ON saga_log (state, updated_at)",
    ],
    "postgres": [
        """CREATE TABLE IF NOT EXISTS saga_log (
            saga_id text PRIMARY KEY, state text NOT NULL, wake_at timestamptz,
            updated_at timestamptz NOT NULL, version bigint NOT NULL, body text NOT NULL)""",
        _DUE_INDEX,
        "CREATE INDEX IF NOT EXISTS saga_log_state ON saga_log (state, updated_at)",
    ],
}


class SqlSagaStore:
    """The saga log in the order service's own database (a table beside its event store)."""

    def __init__(self, db: SqlDb) -> None:
        self.db = db

    @classmethod
    async def open(cls, db: SqlDb) -> SqlSagaStore:
        await migrate(db, _DDL)
        return cls(db)

    def _ts(self, moment: datetime | None) -> Any:
        return None if moment is None else ts_param(self.db.dialect, moment)

    async def create(self, record: SagaRecord) -> SagaRecord:
        stored = replace(record, version=1)
        rows = await self.db.write_fetch(
            "INSERT INTO saga_log (saga_id, state, wake_at, updated_at, version, body) "
            "VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (saga_id) DO NOTHING RETURNING version",
            record.saga_id,
            record.state,
            self._ts(record.wake_at),
            self._ts(record.updated_at),
            encode(stored).decode(),
        )
        if rows:
            return stored
        existing = await self.get(record.saga_id)
        assert existing is not None  # it was there a moment ago: sagas are never deleted
        return existing

    async def get(self, saga_id: str) -> SagaRecord | None:
        row = await self.db.fetchrow("SELECT body, version FROM saga_log WHERE saga_id = $1", saga_id)
        return None if row is None else decode(row[0], int(row[1]))

    async def save(self, record: SagaRecord) -> SagaRecord | None:
        stored = replace(record, version=record.version + 1)
        rows = await self.db.write_fetch(
            "UPDATE saga_log SET state = $2, wake_at = $3, updated_at = $4, version = $5, body = $6 "
            "WHERE saga_id = $1 AND version = $7 RETURNING version",
            record.saga_id,
            record.state,
            self._ts(record.wake_at),
            self._ts(record.updated_at),
            stored.version,
            encode(stored).decode(),
            record.version,
        )
        return stored if rows else None

    async def due(self, now: datetime, limit: int = 100) -> list[str]:
        rows = await self.db.fetch(
            "SELECT saga_id FROM saga_log WHERE state IN ('running', 'compensating') "
            "AND (wake_at IS NULL OR wake_at <= $1) ORDER BY wake_at LIMIT $2",
            self._ts(now),
            limit,
        )
        return [str(r[0]) for r in rows]

    async def list(self, state: State | None = None, limit: int = 100) -> list[SagaRecord]:
        if state is None:
            rows = await self.db.fetch(
                "SELECT body, version FROM saga_log ORDER BY updated_at DESC LIMIT $1", limit
            )
        else:
            rows = await self.db.fetch(
                "SELECT body, version FROM saga_log WHERE state = $1 ORDER BY updated_at DESC LIMIT $2",
                state,
                limit,
            )
        return [decode(r[0], int(r[1])) for r in rows]


__all__ = ["MemorySagaStore", "SagaStore", "SqlSagaStore", "decode", "encode"]
