"""Idempotency-Key storage with Stripe's semantics.

- first request with a key: recorded as in flight, processed, its response saved;
- a retry with the same key and the same request: the saved response, replayed;
- the same key with a different request: ``IdempotencyKeyReused`` (422);
- the same key while the first is still in flight: ``IdempotencyKeyInUse`` (409).

Keys are scoped per user and kept for 24 hours. A request that crashed mid-flight would hold its
key forever, so an in-flight claim lapses after ``lock_seconds`` and can be taken over.
Server errors are not saved: the key is released so the client's retry is processed afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from ordermesh.clock import Clock, SystemClock
from ordermesh.db import SqlDb, migrate
from ordermesh.db.port import ts_param
from ordermesh.errors import IdempotencyKeyInUse, IdempotencyKeyReused

KEEP = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class SavedResponse:
    status: int
    body: bytes


class IdempotencyStore(Protocol):
    async def begin(self, scope: str, key: str, fingerprint: str) -> SavedResponse | None:
        """Claim the key (returns None) or return the saved response; raises on misuse."""
        ...

    async def complete(self, scope: str, key: str, response: SavedResponse) -> None: ...

    async def release(self, scope: str, key: str) -> None: ...


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    response: SavedResponse | None
    claimed_at: float
    created_at: float


class MemoryIdempotencyStore:
    def __init__(self, clock: Clock | None = None, lock_seconds: float = 60.0) -> None:
        self._clock = clock or SystemClock()
        self._lock_seconds = lock_seconds
        self._entries: dict[tuple[str, str], _Entry] = {}

    async def begin(self, scope: str, key: str, fingerprint: str) -> SavedResponse | None:
        now = self._clock.now().timestamp()
        entry = self._entries.get((scope, key))
        if entry is not None and now - entry.created_at > KEEP.total_seconds():
            entry = None
        if entry is None:
            self._entries[(scope, key)] = _Entry(fingerprint, None, now, now)
            return None
        if entry.response is None and now - entry.claimed_at < self._lock_seconds:
            raise _in_use(key)
        _check(entry.fingerprint, fingerprint, key)
        if entry.response is not None:
            return entry.response
        entry.claimed_at = now
        return None

    async def complete(self, scope: str, key: str, response: SavedResponse) -> None:
        self._entries[(scope, key)].response = response

    async def release(self, scope: str, key: str) -> None:
        self._entries.pop((scope, key), None)


def _in_use(key: str) -> IdempotencyKeyInUse:
    # Checked before the fingerprint: the first request may still fail and free the key.
    return IdempotencyKeyInUse(f"a request with Idempotency-Key {key!r} is still in progress")


def _check(stored: str, given: str, key: str) -> None:
    if stored != given:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was already used with a different request; "
            "use a new key for a new request"
        )


_DDL = """CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope text NOT NULL, key text NOT NULL, fingerprint text NOT NULL,
    status integer, body {blob}, claimed_at {ts} NOT NULL, created_at {ts} NOT NULL,
    PRIMARY KEY (scope, key))"""


class SqlIdempotencyStore:
    def __init__(self, db: SqlDb, clock: Clock | None = None, lock_seconds: float = 60.0) -> None:
        self.db = db
        self._clock = clock or SystemClock()
        self._lock = timedelta(seconds=lock_seconds)

    @classmethod
    async def open(
        cls, db: SqlDb, clock: Clock | None = None, lock_seconds: float = 60.0
    ) -> SqlIdempotencyStore:
        await migrate(
            db,
            {
                "postgres": [_DDL.format(blob="bytea", ts="timestamptz")],
                "sqlite": [_DDL.format(blob="BLOB", ts="INTEGER")],
            },
        )
        return cls(db, clock, lock_seconds)

    def _ts(self, delta: timedelta = timedelta()) -> object:
        return ts_param(self.db.dialect, self._clock.now() - delta)

    async def begin(self, scope: str, key: str, fingerprint: str) -> SavedResponse | None:
        async with self.db.transaction() as tx:
            # Expired keys are forgotten, then the claim is one insert that either wins or not.
            await tx.execute(
                "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at < $3",
                scope,
                key,
                self._ts(KEEP),
            )
            now = self._ts()
            won = await tx.fetch(
                "INSERT INTO idempotency_keys (scope, key, fingerprint, claimed_at, created_at) "
                "VALUES ($1, $2, $3, $4, $4) ON CONFLICT DO NOTHING RETURNING key",
                scope,
                key,
                fingerprint,
                now,
            )
            if won:
                return None
            row = await tx.fetchrow(
                "SELECT fingerprint, status, body, claimed_at < $3 FROM idempotency_keys "
                "WHERE scope = $1 AND key = $2",
                scope,
                key,
                self._ts(self._lock),
            )
            assert row is not None, "the conflicting row is visible inside the transaction"
            if row[1] is None and not row[3]:
                raise _in_use(key)
            _check(row[0], fingerprint, key)
            if row[1] is not None:
                return SavedResponse(int(row[1]), bytes(row[2]))
            await tx.execute(
                "UPDATE idempotency_keys SET claimed_at = $3 WHERE scope = $1 AND key = $2", scope, key, now
            )
            return None

    async def complete(self, scope: str, key: str, response: SavedResponse) -> None:
        await self.db.execute(
            "UPDATE idempotency_keys SET status = $3, body = $4 WHERE scope = $1 AND key = $2",
            scope,
            key,
            response.status,
            response.body,
        )

    async def release(self, scope: str, key: str) -> None:
        await self.db.execute("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key)
