"""Idempotency keys with Stripe's semantics, for any transport.

- first request with a key: recorded as in flight, processed, its outcome saved;
- a retry with the same key and the same request: the saved outcome, replayed;
- the same key with a different request: ``IdempotencyKeyReused``;
- the same key while the first is still in flight: ``IdempotencyKeyInUse``.

Keys are scoped per user and kept for 24 hours. A request that crashed mid-flight would hold its
key forever, so an in-flight claim lapses after ``lock_seconds`` and can be taken over.
Server-side failures are not saved: the key is released so the client's retry is processed afresh.

A key row is not enough on its own to survive a crash between the work and ``complete`` (the
claim lapses and the retry would do the work twice): the work must also be findable from the key.
The order service does so by deriving the order's id from the key and recording the key on the
order's first event (``ordermesh.services.orders.commands``), so a row in flight, released or lost
only costs a look-up. After ``KEEP`` a key is forgotten and may be used for a new request.

Outcomes are saved transport-neutrally (:class:`SavedOutcome`): the resource's JSON, or an error
record naming the ``ordermesh.errors`` class, so a key used over REST and retried over gRPC (or
the other way round) replays the same outcome, each transport rendering the error its own way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, Protocol

import orjson

from ordermesh import errors
from ordermesh.clock import Clock, SystemClock
from ordermesh.db import SqlDb, migrate
from ordermesh.db.port import ts_param
from ordermesh.errors import IdempotencyKeyInUse, IdempotencyKeyReused, OrdermeshError
from ordermesh.problems import error_from_problem

KEEP = timedelta(hours=24)

# The classes an error record may name: ordermesh.errors' own, so a record never depends on a
# service's subclass (which is recorded as the errors class it derives from).
_CLASSES: dict[str, type[OrdermeshError]] = {
    name: cls
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, OrdermeshError)
}
# What the caller's request caused, and so a retry would get again; everything else (an
# unreachable database, a bug) is not saved.
_REFUSALS = (
    errors.DomainError,
    errors.NotFound,
    errors.ConcurrencyConflict,
    errors.AuthError,
    errors.IdempotencyError,
)


def is_refusal(exc: OrdermeshError) -> bool:
    """Whether ``exc`` is an outcome to save (not a server-side failure to retry afresh)."""
    return isinstance(exc, _REFUSALS)


@dataclass(frozen=True, slots=True)
class SavedOutcome:
    """``ok``: the body is the resource's JSON. ``error``: the body is an error record,
    ``{"error": <ordermesh.errors class name>, "message": ..., "violations": [...], "details": {...}}``
    (details: the error's own plain attributes, such as a ``ConcurrencyConflict``'s stream id)."""

    kind: Literal["ok", "error"]
    body: bytes

    @classmethod
    def ok(cls, body: bytes) -> SavedOutcome:
        return cls("ok", body)

    @classmethod
    def refused(cls, exc: OrdermeshError) -> SavedOutcome:
        name = next(c.__name__ for c in type(exc).__mro__ if _CLASSES.get(c.__name__) is c)
        violations = exc.violations if isinstance(exc, errors.ValidationError) else ()
        record = {
            "error": name,
            "message": str(exc),
            "violations": [{"field": v.field, "description": v.description} for v in violations],
            "details": {k: v for k, v in vars(exc).items() if v is None or isinstance(v, str | int)},
        }
        return cls("error", orjson.dumps(record))

    def error(self) -> OrdermeshError:
        """The error an ``error`` outcome records, to be raised again (or rendered) by the caller."""
        record: dict[str, Any] = orjson.loads(self.body)
        # A name this version does not know (written by a newer one) is still a refusal.
        cls = _CLASSES.get(str(record.get("error")), errors.DomainError)
        message = str(record.get("message", ""))
        violations = [
            errors.FieldViolation(v["field"], v["description"]) for v in record.get("violations", [])
        ]
        try:
            exc = cls(message, violations) if issubclass(cls, errors.ValidationError) else cls(message)
        except TypeError:  # built from parts (ConcurrencyConflict): the parts are in the details
            exc = cls.__new__(cls)
            Exception.__init__(exc, message)
        for name, value in (record.get("details") or {}).items():
            setattr(exc, name, value)
        return exc


def legacy_outcome(status: int, body: bytes) -> SavedOutcome:
    """An outcome saved by the HTTP-shaped versions (an HTTP status and the response body: the
    resource, or a problem document), as a :class:`SavedOutcome`: the error the problem document
    stands for, as clients read it (so a 409 ``concurrent-change``, which a new order's fresh
    stream cannot meet, comes back as the ``DomainError`` the gRPC replay of it always was)."""
    if status < 400:
        return SavedOutcome.ok(body)
    return SavedOutcome.refused(error_from_problem(status, body))


class IdempotencyStore(Protocol):
    async def begin(self, scope: str, key: str, fingerprint: str) -> SavedOutcome | None:
        """Claim the key (returns None) or return the saved outcome; raises on misuse."""
        ...

    async def complete(self, scope: str, key: str, outcome: SavedOutcome) -> None: ...

    async def release(self, scope: str, key: str) -> None: ...


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    outcome: SavedOutcome | None
    claimed_at: float
    created_at: float


class MemoryIdempotencyStore:
    def __init__(self, clock: Clock | None = None, lock_seconds: float = 60.0) -> None:
        self._clock = clock or SystemClock()
        self._lock_seconds = lock_seconds
        self._entries: dict[tuple[str, str], _Entry] = {}

    async def begin(self, scope: str, key: str, fingerprint: str) -> SavedOutcome | None:
        now = self._clock.now().timestamp()
        entry = self._entries.get((scope, key))
        if entry is not None and now - entry.created_at > KEEP.total_seconds():
            entry = None
        if entry is None:
            self._entries[(scope, key)] = _Entry(fingerprint, None, now, now)
            return None
        if entry.outcome is None and now - entry.claimed_at < self._lock_seconds:
            raise _in_use(key)
        check_fingerprint(entry.fingerprint, fingerprint, key)
        if entry.outcome is not None:
            return entry.outcome
        entry.claimed_at = now
        return None

    async def complete(self, scope: str, key: str, outcome: SavedOutcome) -> None:
        self._entries[(scope, key)].outcome = outcome

    async def release(self, scope: str, key: str) -> None:
        self._entries.pop((scope, key), None)


def _in_use(key: str) -> IdempotencyKeyInUse:
    # Checked before the fingerprint: the first request may still fail and free the key.
    return IdempotencyKeyInUse(f"a request with Idempotency-Key {key!r} is still in progress")


def check_fingerprint(stored: str, given: str, key: str) -> None:
    """``IdempotencyKeyReused`` unless the request under ``key`` is the one first made with it."""
    if stored != given:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was already used with a different request; "
            "use a new key for a new request"
        )


# ``kind`` came with transport-neutral outcomes: rows written before it have ``status`` (HTTP)
# and ``kind`` NULL, and are read as legacy outcomes until they expire. In flight: both NULL.
_DDL = """CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope text NOT NULL, key text NOT NULL, fingerprint text NOT NULL,
    status integer, body {blob}, claimed_at {ts} NOT NULL, created_at {ts} NOT NULL, kind text,
    PRIMARY KEY (scope, key))"""


async def _add_kind_column(db: SqlDb) -> None:
    # SQLite has no ADD COLUMN IF NOT EXISTS; BEGIN IMMEDIATE makes look-then-add one step.
    async with db.transaction() as tx:
        columns = await tx.fetch("SELECT name FROM pragma_table_info('idempotency_keys')")
        if "kind" not in {c[0] for c in columns}:
            await tx.execute("ALTER TABLE idempotency_keys ADD COLUMN kind text")


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
                "postgres": [
                    _DDL.format(blob="bytea", ts="timestamptz"),
                    "ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS kind text",
                ],
                "sqlite": [_DDL.format(blob="BLOB", ts="INTEGER")],
            },
        )
        if db.dialect == "sqlite":
            await _add_kind_column(db)
        return cls(db, clock, lock_seconds)

    def _ts(self, delta: timedelta = timedelta()) -> object:
        return ts_param(self.db.dialect, self._clock.now() - delta)

    async def begin(self, scope: str, key: str, fingerprint: str) -> SavedOutcome | None:
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
                "SELECT fingerprint, kind, status, body, claimed_at < $3 FROM idempotency_keys "
                "WHERE scope = $1 AND key = $2",
                scope,
                key,
                self._ts(self._lock),
            )
            assert row is not None, "the conflicting row is visible inside the transaction"
            saved = row[1] is not None or row[2] is not None
            if not saved and not row[4]:
                raise _in_use(key)
            check_fingerprint(row[0], fingerprint, key)
            if row[1] is not None:
                return SavedOutcome("ok" if row[1] == "ok" else "error", bytes(row[3]))
            if row[2] is not None:
                return legacy_outcome(int(row[2]), bytes(row[3]))
            await tx.execute(
                "UPDATE idempotency_keys SET claimed_at = $3 WHERE scope = $1 AND key = $2", scope, key, now
            )
            return None

    async def complete(self, scope: str, key: str, outcome: SavedOutcome) -> None:
        await self.db.execute(
            "UPDATE idempotency_keys SET kind = $3, body = $4, status = NULL WHERE scope = $1 AND key = $2",
            scope,
            key,
            outcome.kind,
            outcome.body,
        )

    async def release(self, scope: str, key: str) -> None:
        await self.db.execute("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key)
